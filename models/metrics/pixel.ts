/**
 * Pixel-level metrics over a whole split (pixel AUROC, AP, trapezoid PR-AUC and AUPRO), exact,
 * streaming: images are added one at a time and only their scores are kept.
 *
 * Memory: every pixel's score is kept as a 4-byte order-preserving key (normal pixels in chunks,
 * anomalous pixels with the index of their ground-truth region), so a GoodsAD-sized split of
 * 150 M pixels holds ~600 MB; `compute()` needs a second and briefly a third copy while sorting
 * (bench/metrics.ts measured a 1.8 GiB peak RSS for 150 M pixels).
 *
 * How: normal and anomalous keys are radix-sorted separately (radix.ts), then merged from the
 * top while walking the distinct thresholds in descending order (sweep.ts). Each anomalous pixel
 * carries the weight 1 / (size of its region), so PRO(t) is the running weight sum / regions.
 */
import { isNaNBits, keyOfBits, radixSortSegments, valueOfKey } from './radix.js';
import { labelRegions, type Connectivity } from './regions.js';
import type { MetricValue } from './result.js';
import { ThresholdSweep, type MetricCurves } from './sweep.js';

export interface PixelMetricsOptions {
  /** FPR limit of AUPRO, in (0, 1]; default 0.3 (MVTec AD). */
  fprLimit?: number;
  /** Region connectivity for AUPRO; default 8 (MVTec AD). */
  connectivity?: Connectivity;
  /** Monotonic milliseconds clock; when given, `compute()` reports a time profile. */
  clock?: () => number;
}

export interface PixelComputeOptions {
  /** Also return ROC, PR and PRO curve points, at most this many each. */
  maxCurvePoints?: number;
}

export interface PixelMetricsProfile {
  /** Region labelling inside add(). */
  labelMs: number;
  /** Converting and splitting the scores into normal / anomalous keys inside add(). */
  splitMs: number;
  sortMs: number;
  sweepMs: number;
}

export interface PixelMetrics {
  auroc: MetricValue;
  ap: MetricValue;
  prAucTrapz: MetricValue;
  aupro: MetricValue;
  nImages: number;
  /** Anomalous (mask non-zero) and normal pixels. */
  nPos: number;
  nNeg: number;
  nRegions: number;
  /** Region sizes image by image, within an image in raster order of each region's first pixel. */
  regionSizes: Int32Array;
  /** Number of regions of each image, in the order added. */
  regionsPerImage: Int32Array;
  curves?: MetricCurves;
  profile?: PixelMetricsProfile;
}

const NEG_CHUNK = 1 << 22; // 4 M keys (16 MB) per chunk of normal-pixel keys

export class PixelMetricsAccumulator {
  private readonly fprLimit: number;
  private readonly connectivity: Connectivity;
  private readonly clock: (() => number) | undefined;

  private negChunks: Uint32Array[] = [];
  private negChunk: Uint32Array = new Uint32Array(0);
  private negChunkLen = 0;
  private nNeg = 0;

  private posKeys = new Uint32Array(1 << 16);
  private posRegion = new Uint32Array(1 << 16);
  private nPos = 0;

  private regionSizes = new Int32Array(256);
  private nRegions = 0;
  private regionsPerImage = new Int32Array(256);
  private nImages = 0;

  private labelScratch = new Int32Array(0);
  private labelMs = 0;
  private splitMs = 0;
  private computed = false;

  constructor(options: PixelMetricsOptions = {}) {
    this.fprLimit = options.fprLimit ?? 0.3;
    if (!(this.fprLimit > 0 && this.fprLimit <= 1)) {
      throw new RangeError(`PixelMetricsAccumulator: fprLimit must be in (0, 1], got ${String(options.fprLimit)}`);
    }
    this.connectivity = options.connectivity ?? 8;
    if (this.connectivity !== 4 && this.connectivity !== 8) {
      throw new RangeError(`PixelMetricsAccumulator: connectivity must be 4 or 8, got ${String(options.connectivity)}`);
    }
    this.clock = options.clock;
  }

  get imageCount(): number {
    return this.nImages;
  }

  /**
   * Adds one image: its anomaly map (float32, row-major) and ground-truth mask (non-zero =
   * anomalous), both width × height. `id` names the image in errors (default: its index).
   * @throws on a shape mismatch or a NaN in the map (nothing of the image is kept then).
   */
  add(map: Float32Array, mask: ArrayLike<number>, width: number, height: number, id?: string): void {
    if (this.computed) throw new Error('PixelMetricsAccumulator: add() after compute()');
    const name = id ?? `#${this.nImages}`;
    if (!(map instanceof Float32Array)) {
      throw new TypeError(`pixel metrics: anomaly map of image ${name} must be a Float32Array`);
    }
    if (!Number.isInteger(width) || width <= 0 || !Number.isInteger(height) || height <= 0) {
      throw new RangeError(`pixel metrics: image ${name} has invalid size ${width}×${height}`);
    }
    const n = width * height;
    if (map.length !== n) {
      throw new RangeError(`pixel metrics: anomaly map of image ${name} has ${map.length} values, expected ${width}×${height} = ${n}`);
    }
    if (mask.length !== n) {
      throw new RangeError(`pixel metrics: mask of image ${name} has ${mask.length} values, expected ${width}×${height} = ${n}`);
    }
    const clock = this.clock;
    const t0 = clock?.() ?? 0;
    const bits = new Uint32Array(map.buffer, map.byteOffset, n);

    let anyAnomalous = false;
    for (let i = 0; i < n; i++) {
      if (mask[i] !== 0) {
        anyAnomalous = true;
        break;
      }
    }
    let labels: Int32Array | null = null;
    let count = 0;
    let sizes: Int32Array | null = null;
    if (anyAnomalous) {
      if (this.labelScratch.length < n) this.labelScratch = new Int32Array(n);
      const r = labelRegions(mask, width, height, this.connectivity, this.labelScratch);
      labels = r.labels;
      count = r.count;
      sizes = r.sizes;
    }
    const t1 = clock?.() ?? 0;

    let nPosImage = 0;
    if (sizes !== null) for (let k = 0; k < count; k++) nPosImage += sizes[k];
    const nNegImage = n - nPosImage;
    // Room for the whole image, so the loops below write without bounds checks; lengths are
    // committed only after the image passed (a NaN leaves the accumulator unchanged).
    if (this.negChunk.length - this.negChunkLen < nNegImage) {
      if (this.negChunkLen > 0) this.negChunks.push(this.negChunk.subarray(0, this.negChunkLen));
      this.negChunk = new Uint32Array(Math.max(NEG_CHUNK, nNegImage));
      this.negChunkLen = 0;
    }
    const neg = this.negChunk;
    let o = this.negChunkLen;
    if (labels === null) {
      for (let i = 0; i < n; i++) {
        const b = bits[i];
        if (isNaNBits(b)) throw nanError(name, i, width);
        neg[o++] = keyOfBits(b);
      }
    } else {
      this.reservePositives(nPosImage);
      const posKeys = this.posKeys;
      const posRegion = this.posRegion;
      const base = this.nRegions - 1; // label l → global region base + l
      let p = this.nPos;
      for (let i = 0; i < n; i++) {
        const b = bits[i];
        if (isNaNBits(b)) throw nanError(name, i, width);
        const l = labels[i];
        if (l === 0) {
          neg[o++] = keyOfBits(b);
        } else {
          posKeys[p] = keyOfBits(b);
          posRegion[p++] = base + l;
        }
      }
      this.nPos = p;
    }
    this.negChunkLen = o;
    this.nNeg += nNegImage;
    if (sizes !== null) this.appendRegions(sizes);
    this.appendImage(count);
    if (clock !== undefined) {
      const t2 = clock();
      this.labelMs += t1 - t0;
      this.splitMs += t2 - t1;
    }
  }

  /** Sorts and sweeps; the accumulator's memory is released and it cannot be used afterwards. */
  compute(options: PixelComputeOptions = {}): PixelMetrics {
    if (this.computed) throw new Error('PixelMetricsAccumulator: compute() called twice');
    this.computed = true;
    const clock = this.clock;
    const t0 = clock?.() ?? 0;

    const negSegments = this.negChunks;
    if (this.negChunkLen > 0) negSegments.push(this.negChunk.subarray(0, this.negChunkLen));
    this.negChunks = [];
    this.negChunk = new Uint32Array(0);
    const nNeg = this.nNeg;
    const nPos = this.nPos;
    const negSorted = radixSortSegments(negSegments).keys;
    const posSorted = radixSortSegments([this.posKeys.subarray(0, nPos)], [this.posRegion.subarray(0, nPos)]);
    this.posKeys = new Uint32Array(0);
    this.posRegion = new Uint32Array(0);
    const posKeys = posSorted.keys;
    const posRegion = posSorted.payload!;
    const t1 = clock?.() ?? 0;

    const nRegions = this.nRegions;
    const regionSizes = this.regionSizes.slice(0, nRegions);
    const weight = new Float64Array(nRegions);
    for (let r = 0; r < nRegions; r++) weight[r] = 1 / regionSizes[r];

    const sweep = new ThresholdSweep({
      sampleNoun: 'pixel',
      nPos,
      nNeg,
      nRegions,
      fprLimit: this.fprLimit,
      maxCurvePoints: options.maxCurvePoints,
      maxSteps: nPos + nNeg,
    });
    // Merge the two ascending key arrays from the top: one step per distinct key.
    let i = nPos - 1;
    let j = nNeg - 1;
    while (i >= 0 || j >= 0) {
      const kp = i >= 0 ? posKeys[i] : -1;
      const kn = j >= 0 ? negSorted[j] : -1;
      const key = kp > kn ? kp : kn;
      let dTp = 0;
      let dPro = 0;
      while (i >= 0 && posKeys[i] === key) {
        dPro += weight[posRegion[i]];
        dTp++;
        i--;
      }
      const jStart = j;
      while (j >= 0 && negSorted[j] === key) j--;
      sweep.step(valueOfKey(key), dTp, jStart - j, dPro);
    }
    const r = sweep.finish();
    const t2 = clock?.() ?? 0;

    const out: PixelMetrics = {
      auroc: r.auroc,
      ap: r.ap,
      prAucTrapz: r.prAucTrapz,
      aupro: r.aupro,
      nImages: this.nImages,
      nPos,
      nNeg,
      nRegions,
      regionSizes,
      regionsPerImage: this.regionsPerImage.slice(0, this.nImages),
    };
    if (r.curves) out.curves = r.curves;
    if (clock !== undefined) {
      out.profile = { labelMs: this.labelMs, splitMs: this.splitMs, sortMs: t1 - t0, sweepMs: t2 - t1 };
    }
    return out;
  }

  private reservePositives(extra: number): void {
    const need = this.nPos + extra;
    if (need <= this.posKeys.length) return;
    let cap = this.posKeys.length * 2;
    while (cap < need) cap *= 2;
    const keys = new Uint32Array(cap);
    keys.set(this.posKeys.subarray(0, this.nPos));
    const regions = new Uint32Array(cap);
    regions.set(this.posRegion.subarray(0, this.nPos));
    this.posKeys = keys;
    this.posRegion = regions;
  }

  private appendRegions(sizes: Int32Array): void {
    const need = this.nRegions + sizes.length;
    if (need > this.regionSizes.length) {
      const grown = new Int32Array(Math.max(need, this.regionSizes.length * 2));
      grown.set(this.regionSizes.subarray(0, this.nRegions));
      this.regionSizes = grown;
    }
    this.regionSizes.set(sizes, this.nRegions);
    this.nRegions = need;
  }

  private appendImage(regionCount: number): void {
    if (this.nImages === this.regionsPerImage.length) {
      const grown = new Int32Array(this.regionsPerImage.length * 2);
      grown.set(this.regionsPerImage);
      this.regionsPerImage = grown;
    }
    this.regionsPerImage[this.nImages++] = regionCount;
  }
}

function nanError(name: string, index: number, width: number): Error {
  const x = index % width;
  const y = (index - x) / width;
  return new RangeError(`pixel metrics: anomaly map of image ${name} has NaN at (x=${x}, y=${y})`);
}

export interface PixelSample {
  map: Float32Array;
  mask: ArrayLike<number>;
  width: number;
  height: number;
  id?: string;
}

/** Convenience: pixel metrics of a list of images. */
export function pixelMetrics(
  images: Iterable<PixelSample>,
  options: PixelMetricsOptions & PixelComputeOptions = {},
): PixelMetrics {
  const acc = new PixelMetricsAccumulator(options);
  for (const im of images) acc.add(im.map, im.mask, im.width, im.height, im.id);
  return acc.compute(options);
}
