/**
 * The metrics of one category's scored test images: image AUROC / AP, pixel AUROC / AP and
 * AUPRO@0.3 for the category, per defect type and per goods id, with the category's curves
 * (`computeMetrics`); and the mean over categories (`meanOf`). Anomaly maps are placed on the
 * pixel-metrics grid (a fixed size, or each mask's own size with 'native') beside the masks.
 */
import { imageMetrics, PixelMetricsAccumulator, undefinedMetric, type MetricValue } from '../models/metrics/index.js';
import type { DatasetCategory } from './dataset.js';
import { placeMap } from './eval-inputs.js';
import { loadMask, type BinaryMask } from './eval-masks.js';
import type { CategoryResult, CurveSet, EvalMode, EvaluateOptions, EvaluationSettings, GroupMetrics, ImageRecord, MeanValue, MetricSet } from './eval-types.js';

/** What computeMetrics reads of the run: its settings, the memory budget and the progress callback. */
export interface MetricsContext {
  settings: Pick<EvaluationSettings, 'inputSize' | 'pixelSize'>;
  o: Pick<EvaluateOptions, 'maxMetricBytes' | 'onProgress'>;
}

/**
 * Peak memory of the pixel metrics per pixel of a category's largest group (the category itself),
 * in bytes — what the memory budget charges. The accumulator (models/metrics/pixel.ts) keeps a
 * 4-byte key per normal pixel and key + region (8 bytes, in arrays grown by doubling) per
 * anomalous pixel; compute() radix-sorts them into two more copies while the segments it consumes
 * are not collected yet, and the previous group's arrays are freed only at V8's next collection.
 * Measured as the growth of the peak RSS during computeMetrics: 14.4 bytes per pixel at 1024²
 * (200 images, 1.3 % anomalous pixels), 15.2 at 224² (2,000 images), 15.9 at 512² with 25 %
 * anomalous pixels, and 15.2 to 17.0 over repeated small runs (48 images at 512², the check in
 * test/evaluate-reuse.test.ts) — the spread is V8's collection timing. 20 leaves headroom; a
 * split made mostly of anomalous pixels would cost more (up to ~30). Before placed maps stopped
 * being kept across groups it was 18.7 at 1024², while the budget charged 4.
 */
export const METRIC_BYTES_PER_PIXEL = 20;

/** Default memory budget of the pixel metrics of one category (EvaluateOptions.maxMetricBytes). */
export const DEFAULT_MAX_METRIC_BYTES = 4 * 2 ** 30;

/**
 * What the pixel metrics of these records will hold: pixels on the metrics grid, and bytes
 * (METRIC_BYTES_PER_PIXEL per pixel, plus 1 byte per pixel of each ground-truth mask, which at a
 * fixed pixel size is kept across the category's groups).
 */
export function metricsMemory(records: readonly ImageRecord[], pixelSize: number | 'native'): { pixels: number; bytes: number } {
  let pixels = 0;
  let maskPixels = 0;
  for (const r of records) {
    const n = pixelSize === 'native' ? r.placement.sourceWidth * r.placement.sourceHeight : pixelSize * pixelSize;
    pixels += n;
    if (r.mask && pixelSize !== 'native') maskPixels += n;
  }
  return { pixels, bytes: pixels * METRIC_BYTES_PER_PIXEL + maskPixels };
}

const gib = (bytes: number) => `${(bytes / 2 ** 30).toFixed(1)} GiB`;

export interface MetricsOutput {
  metrics: MetricSet;
  pixels: CategoryResult['pixels'];
  byDefect: CategoryResult['byDefect'];
  byGoods: Array<GroupMetrics & { goodsId: string }>;
  curves: CurveSet;
}

const CURVE_POINTS = 200;

/** Metrics of one category in one mode over `records` (scored with `maps`); problems are added to `notes`. */
export async function computeMetrics(
  ctx: MetricsContext,
  cat: DatasetCategory,
  mode: EvalMode,
  records: ImageRecord[],
  maps: Map<ImageRecord, Float32Array>,
  notes: string[],
): Promise<MetricsOutput> {
  const { settings } = ctx;
  const size = settings.inputSize;
  const pixelSize = settings.pixelSize;
  const step = `${cat.name} metrics${mode.name === 'category' ? '' : ` (${mode.name})`}`;

  // Memory budget, charged at what the metrics really hold (see METRIC_BYTES_PER_PIXEL).
  const need = metricsMemory(records, pixelSize);
  const maxBytes = ctx.o.maxMetricBytes ?? DEFAULT_MAX_METRIC_BYTES;
  let pixelSkipReason: string | null = null;
  if (need.bytes > maxBytes) {
    pixelSkipReason = `pixel metrics at ${pixelSize === 'native' ? 'native size' : `${pixelSize}×${pixelSize}`} would hold ${(need.pixels / 1e6).toFixed(0)} M pixels (about ${gib(need.bytes)} at ${METRIC_BYTES_PER_PIXEL} bytes per pixel), over the limit of ${gib(maxBytes)}; use a smaller pixel size`;
    notes.push(pixelSkipReason);
  }

  // Placed maps are made again for every group that has the image (placing is cheap next to
  // adding to the accumulator), so that only the accumulator grows with the category. Masks at
  // a fixed pixel size are read once and kept (1 byte per pixel, masked images only: they are
  // costly to decode); native ones are read on every pass. Images without a mask share one
  // all-zero mask per size.
  const maskCache = new Map<ImageRecord, BinaryMask>();
  const zeros = new Map<string, Uint8Array>();
  const zeroMask = (w: number, h: number) => {
    const k = `${w}x${h}`;
    let z = zeros.get(k);
    if (!z) zeros.set(k, (z = new Uint8Array(w * h)));
    return z;
  };
  const sample = async (r: ImageRecord) => {
    const raw = maps.get(r)!;
    let mask: BinaryMask | null = null;
    let w: number;
    let h: number;
    if (pixelSize === 'native') {
      if (r.mask) mask = await loadMask(r.mask);
      w = mask?.width ?? r.placement.sourceWidth;
      h = mask?.height ?? r.placement.sourceHeight;
    } else {
      w = pixelSize;
      h = pixelSize;
      if (r.mask) {
        mask = maskCache.get(r) ?? (await loadMask(r.mask, { width: w, height: h }));
        maskCache.set(r, mask);
      }
    }
    const map = placeMap(raw, size, r.placement.crop, w, h, r.placement.crop ? mapMinimum(raw) : 0);
    return { map, mask: mask?.data ?? zeroMask(w, h), w, h };
  };
  // Masks decode on sharp's thread pool: prepare a few images at once, add them in order.
  const WINDOW = 4;

  const groups: Array<{ kind: 'category' | 'defect' | 'goods'; id: string; images: ImageRecord[] }> = [{ kind: 'category', id: cat.name, images: records }];
  const good = records.filter((r) => r.label === 0);
  for (const d of [...new Set(records.map((r) => r.defect).filter((x): x is string => x !== null))].sort()) {
    groups.push({ kind: 'defect', id: d, images: [...records.filter((r) => r.defect === d), ...good] });
  }
  for (const g of [...new Set(records.map((r) => r.goodsId).filter((x): x is string => x !== null))].sort()) {
    groups.push({ kind: 'goods', id: g, images: records.filter((r) => r.goodsId === g) });
  }
  const totalWork = groups.reduce((s, g) => s + g.images.length, 0);
  let done = 0;

  let categoryMetrics: MetricSet | null = null;
  let pixels: CategoryResult['pixels'] = null;
  let curves: CurveSet = { imageRoc: [], imagePr: [], pixelRoc: [], pixelPr: [], pixelPro: [] };
  const byDefect: MetricsOutput['byDefect'] = [];
  const byGoods: MetricsOutput['byGoods'] = [];
  for (const g of groups) {
    const labels = g.images.map((r) => r.label);
    const scores = g.images.map((r) => r.evalScore);
    const im = imageMetrics(labels, scores, g.kind === 'category' ? { maxCurvePoints: CURVE_POINTS } : {});
    let pixelAuroc: MetricValue;
    let pixelAp: MetricValue;
    let pro: MetricValue;
    if (pixelSkipReason) {
      pixelAuroc = pixelAp = pro = undefinedMetric(pixelSkipReason);
      done += g.images.length;
    } else {
      const acc = new PixelMetricsAccumulator();
      for (let i = 0; i < g.images.length; i += WINDOW) {
        const window = g.images.slice(i, i + WINDOW);
        const samples = await Promise.all(window.map(sample));
        samples.forEach((s, k) => acc.add(s.map, s.mask, s.w, s.h, window[k]!.name));
        done += window.length;
        ctx.o.onProgress?.(step, done, totalWork);
      }
      const pm = acc.compute(g.kind === 'category' ? { maxCurvePoints: CURVE_POINTS } : {});
      pixelAuroc = pm.auroc;
      pixelAp = pm.ap;
      pro = pm.aupro;
      if (g.kind === 'category') {
        pixels = { size: pixelSize === 'native' ? 'native' : `${pixelSize}x${pixelSize}`, anomalous: pm.nPos, normal: pm.nNeg, regions: pm.nRegions };
        if (pm.curves) curves = { ...curves, pixelRoc: pm.curves.roc, pixelPr: pm.curves.pr, pixelPro: pm.curves.pro };
      }
    }
    const metrics: MetricSet = { imageAuroc: im.auroc, imageAp: im.ap, pixelAuroc, pixelAp, pro };
    const counts = { images: g.images.length, anomalous: im.nPos, normal: im.nNeg };
    if (g.kind === 'category') {
      categoryMetrics = metrics;
      if (im.curves) curves = { ...curves, imageRoc: im.curves.roc, imagePr: im.curves.pr };
    } else if (g.kind === 'defect') byDefect.push({ defect: g.id, metrics, ...counts });
    else byGoods.push({ goodsId: g.id, metrics, ...counts });
  }
  return { metrics: categoryMetrics!, pixels, byDefect, byGoods, curves };
}

/** The fill outside a crop: the image's smallest map value (see evaluate.ts, crop mode). */
function mapMinimum(map: Float32Array): number {
  let m = Infinity;
  for (let i = 0; i < map.length; i++) if (map[i]! < m) m = map[i]!;
  return m;
}

/** Mean of the defined values; undefined (with the reasons) when no category has one. */
export function meanOf(values: readonly MetricValue[]): MeanValue {
  const defined = values.filter((v): v is { defined: true; value: number } => v.defined);
  if (defined.length === 0) {
    const reasons = [...new Set(values.map((v) => (v.defined ? '' : v.reason)))].filter(Boolean);
    return { defined: false, reason: values.length === 0 ? 'no category' : `undefined in every category (${reasons.join('; ')})` };
  }
  return { defined: true, value: defined.reduce((s, v) => s + v.value, 0) / defined.length, categories: defined.length, outOf: values.length };
}
