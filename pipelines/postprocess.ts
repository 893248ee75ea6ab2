/**
 * Post-processing of a Prediction: the anomaly mask's connected regions, mapped from the model's
 * input grid (the crop resized to mapSize × mapSize, ignoring aspect ratio) back to frame pixels.
 */
import { labelRuns } from '../models/metrics/regions.js';
import type { Prediction } from '../models/types.js';
import type { Box, Crop, Region, SlotPrediction } from './types.js';

export interface ToRegionsOptions {
  /**
   * Drop regions smaller than this fraction of the map (and so of the crop), e.g. 0.001.
   * Default 0: keep every region, even a single mask cell.
   */
  minAreaFraction?: number;
}

/**
 * Connected regions (8-connectivity) of `prediction.mask`, in frame coordinates of `box`.
 * A map cell (i, j) covers frame pixels [box.x + i·sx, box.x + (i+1)·sx) with sx = box.width/mapSize
 * (likewise y); region boxes are rounded outward to whole pixels and clipped to `box`.
 * `area` is the number of mask cells times sx·sy, rounded. Sorted by peak descending
 * (ties: larger area first, then top-left first).
 */
export function toRegions(prediction: Pick<Prediction, 'mask' | 'anomalyMap' | 'mapSize'>, box: Box, options: ToRegionsOptions = {}): Region[] {
  const { mask, anomalyMap, mapSize } = prediction;
  const cells = mapSize * mapSize;
  if (!Number.isInteger(mapSize) || mapSize < 1) throw new RangeError(`toRegions: mapSize must be an integer ≥ 1, got ${mapSize}`);
  if (mask.length !== cells) throw new RangeError(`toRegions: mask has ${mask.length} values, expected mapSize² = ${cells}`);
  if (anomalyMap.length !== cells) {
    throw new RangeError(`toRegions: anomalyMap has ${anomalyMap.length} values, expected mapSize² = ${cells}`);
  }
  if (!(box.width > 0 && box.height > 0)) throw new RangeError(`toRegions: crop box must have a positive size, got ${JSON.stringify(box)}`);
  const minAreaFraction = options.minAreaFraction ?? 0;
  if (!(minAreaFraction >= 0 && minAreaFraction <= 1)) {
    throw new RangeError(`toRegions: minAreaFraction must be in [0, 1], got ${minAreaFraction}`);
  }

  // Boxes and peaks from the foreground runs: the anomalous cells only, not the whole grid again.
  const runs = labelRuns(mask, mapSize, mapSize, 8);
  const { count, sizes } = runs;
  const minX = new Int32Array(count).fill(mapSize);
  const minY = new Int32Array(count).fill(mapSize);
  const maxX = new Int32Array(count).fill(-1);
  const maxY = new Int32Array(count).fill(-1);
  const peak = new Float64Array(count).fill(-Infinity);
  for (let i = 0; i < runs.length; i++) {
    const l = runs.label[i] - 1;
    const y = runs.row[i];
    const x0 = runs.start[i];
    const x1 = runs.end[i];
    if (x0 < minX[l]) minX[l] = x0;
    if (x1 - 1 > maxX[l]) maxX[l] = x1 - 1;
    if (y < minY[l]) minY[l] = y;
    if (y > maxY[l]) maxY[l] = y;
    const at = y * mapSize;
    let top = peak[l];
    for (let p = at + x0; p < at + x1; p++) if (anomalyMap[p] > top) top = anomalyMap[p];
    peak[l] = top;
  }

  const sx = box.width / mapSize;
  const sy = box.height / mapSize;
  const right = box.x + box.width;
  const bottom = box.y + box.height;
  const regions: Region[] = [];
  for (let l = 0; l < count; l++) {
    if (sizes[l] / cells < minAreaFraction) continue;
    const x0 = Math.max(box.x, Math.floor(box.x + minX[l] * sx));
    const y0 = Math.max(box.y, Math.floor(box.y + minY[l] * sy));
    const x1 = Math.min(right, Math.ceil(box.x + (maxX[l] + 1) * sx));
    const y1 = Math.min(bottom, Math.ceil(box.y + (maxY[l] + 1) * sy));
    regions.push({
      box: { x: x0, y: y0, width: x1 - x0, height: y1 - y0 },
      area: Math.round(sizes[l] * sx * sy),
      peak: peak[l],
    });
  }
  regions.sort((a, b) => b.peak - a.peak || b.area - a.area || a.box.y - b.box.y || a.box.x - b.box.x);
  return regions;
}

/** Pairs a crop with its prediction and the prediction's regions in frame coordinates. */
export function toSlotPrediction(crop: Crop, prediction: Prediction, options: ToRegionsOptions = {}): SlotPrediction {
  return { crop, prediction, regions: toRegions(prediction, crop.box, options) };
}
