/** Evaluation metrics: image and pixel AUROC, AP, PR-AUC (trapezoid), AUPRO; region labelling. */
export { type MetricValue, definedMetric, undefinedMetric, metricOrNull, formatMetric } from './result.js';
export { type CurvePoint } from './curve.js';
export { type MetricCurves } from './sweep.js';
export { imageMetrics, type ImageMetrics, type ImageMetricsOptions } from './image.js';
export {
  PixelMetricsAccumulator,
  pixelMetrics,
  type PixelMetrics,
  type PixelMetricsOptions,
  type PixelComputeOptions,
  type PixelMetricsProfile,
  type PixelSample,
} from './pixel.js';
export {
  labelRegions,
  regionBoxes,
  type Connectivity,
  type RegionLabels,
  type RegionBox,
  type RegionInfo,
} from './regions.js';
