/**
 * The exact antialiased bilinear (triangle) resize of the PatchCore reference
 * (shared reference README, "Preprocessing"): PIL's BILINEAR coefficients without PIL's 8-bit
 * rounding, identical to torch `interpolate(mode='bilinear', align_corners=False, antialias=True)`.
 * Separable, horizontal pass first, then vertical, accumulated in float64.
 *
 * Per axis with scale = in / out and support = max(scale, 1), output i has
 * center = scale · (i + 0.5), taps j ∈ [max(trunc(center − support + 0.5), 0),
 * min(trunc(center + support + 0.5), in)) and weights max(0, 1 − |(j − center + 0.5) / support|)
 * divided by their sum. Enlarging this is plain bilinear with clamped edges; shrinking widens the
 * triangle by the scale (antialiasing).
 *
 * Coefficient tables are cached per (in, out) because the same sizes repeat (every slot of a
 * camera, every image of a dataset of one size). A sub-box of a larger image can be resized in
 * place: the result equals cropping the box first and resizing the crop.
 */

import { forEachResizedRowRgb } from './resize-kernel.js';

/** Resampling taps of one axis: output i reads `count[i]` inputs from `start[i]`. */
export interface AxisCoefficients {
  inSize: number;
  outSize: number;
  start: Int32Array;
  count: Int32Array;
  /** Normalised weights; output i's are at [i · stride, i · stride + count[i]). */
  weights: Float64Array;
  stride: number;
}

/** An axis-aligned box of whole pixels (same shape as pipelines' Box). */
export interface PixelBox {
  x: number;
  y: number;
  width: number;
  height: number;
}

/** Interleaved 8-bit pixels: row-major, `channels` values per pixel. */
export interface InterleavedImage {
  data: Uint8Array;
  width: number;
  height: number;
  channels: number;
}

/** Computes the coefficients without the cache (tests and benchmarks use it directly). */
export function computeAxisCoefficients(inSize: number, outSize: number): AxisCoefficients {
  if (!Number.isInteger(inSize) || inSize < 1) throw new RangeError(`resize: input length must be a positive integer, got ${inSize}`);
  if (!Number.isInteger(outSize) || outSize < 1) throw new RangeError(`resize: output length must be a positive integer, got ${outSize}`);
  const scale = inSize / outSize;
  const support = Math.max(scale, 1);
  const stride = Math.ceil(support) * 2 + 1;
  const start = new Int32Array(outSize);
  const count = new Int32Array(outSize);
  const weights = new Float64Array(outSize * stride);
  const w = new Float64Array(stride + 1);
  for (let i = 0; i < outSize; i++) {
    const center = scale * (i + 0.5);
    const lo = Math.max(Math.trunc(center - support + 0.5), 0);
    const hi = Math.min(Math.trunc(center + support + 0.5), inSize);
    let sum = 0;
    for (let j = lo; j < hi; j++) {
      const v = Math.max(0, 1 - Math.abs((j - center + 0.5) / support));
      w[j - lo] = v;
      sum += v;
    }
    // Zero weights at either end contribute nothing; dropping them saves work, not precision.
    let a = lo;
    let b = hi;
    while (a < b && w[a - lo] === 0) a++;
    while (b > a && w[b - 1 - lo] === 0) b--;
    start[i] = a;
    count[i] = b - a;
    for (let j = a; j < b; j++) weights[i * stride + (j - a)] = w[j - lo] / sum;
  }
  return { inSize, outSize, start, count, weights, stride };
}

const CACHE_LIMIT = 256;
const cache = new Map<number, AxisCoefficients>();

/** Cached coefficients for resampling `inSize` samples to `outSize`. */
export function axisCoefficients(inSize: number, outSize: number): AxisCoefficients {
  const key = inSize * 1_048_576 + outSize;
  let c = cache.get(key);
  if (c === undefined || c.inSize !== inSize || c.outSize !== outSize) {
    c = computeAxisCoefficients(inSize, outSize);
    // Crops of free-form sizes could grow the cache forever; forget the oldest entry.
    if (cache.size >= CACHE_LIMIT) cache.delete(cache.keys().next().value as number);
    cache.set(key, c);
  }
  return c;
}

/** Check that `box` lies inside a width×height image; throws a RangeError naming `what`. */
export function assertBoxInside(box: PixelBox, width: number, height: number, what: string): void {
  const { x, y, width: w, height: h } = box;
  const desc = `box {x: ${x}, y: ${y}, width: ${w}, height: ${h}}`;
  if (![x, y, w, h].every(Number.isInteger)) throw new RangeError(`${what}: ${desc} must have integer coordinates`);
  if (w < 1 || h < 1) throw new RangeError(`${what}: ${desc} is empty`);
  if (x < 0 || y < 0 || x + w > width || y + h > height) {
    throw new RangeError(`${what}: ${desc} reaches outside the ${width}×${height} image`);
  }
}

let scratch = new Float64Array(0);
let rowScratch = new Float64Array(0);

/**
 * Resizes `src` (or its sub-box `box`) to outWidth×outHeight with the reference triangle filter.
 * Returns interleaved float64 values in the input's range (0…255 for 8-bit), outHeight rows of
 * outWidth pixels of `channels` values, written into `out` when given.
 */
export function resizeTriangle(
  src: InterleavedImage,
  outWidth: number,
  outHeight: number,
  opts: { box?: PixelBox; out?: Float64Array } = {},
): Float64Array {
  const rowLen = outWidth * src.channels;
  const outLen = outHeight * rowLen;
  const out = opts.out ?? new Float64Array(outLen);
  if (out.length < outLen) throw new RangeError(`resize: output buffer holds ${out.length} values, needs ${outLen}`);
  forEachResizedRow(src, outWidth, outHeight, opts.box, (y, row) => out.set(row, y * rowLen));
  return out;
}

/**
 * The same resize, handing each finished output row (interleaved float64, outWidth · channels
 * values, in a buffer reused for the next row) to `onRow` in order, so a caller that transforms
 * the values (normalisation into planes) needs no full-size intermediate image. `onRow` must not
 * resize anything itself (the scratch buffers are shared).
 *
 * An axis whose length does not change has one tap of weight 1 per output, so it is copied
 * rather than filtered: same values, a fraction of the work (slot boxes drawn at the model's
 * size, or images already at it).
 */
export function forEachResizedRow(
  src: InterleavedImage,
  outWidth: number,
  outHeight: number,
  box: PixelBox | undefined,
  onRow: (y: number, row: Float64Array) => void,
): void {
  const { data, width, height, channels: C } = src;
  if (!Number.isInteger(C) || C < 1) throw new RangeError(`resize: channels must be a positive integer, got ${C}`);
  if (data.length !== width * height * C) {
    throw new RangeError(`resize: pixel buffer holds ${data.length} values, expected ${width}×${height}×${C} = ${width * height * C}`);
  }
  const b = box ?? { x: 0, y: 0, width, height };
  assertBoxInside(b, width, height, 'resize');
  const h = axisCoefficients(b.width, outWidth);
  const v = axisCoefficients(b.height, outHeight);
  if (C === 3 && !(b.width === outWidth && b.height === outHeight)) {
    // The hot case (RGB frames and slots): the same sums from the WebAssembly kernels.
    forEachResizedRowRgb(data, width, b, h, v, onRow);
    return;
  }
  const rowLen = outWidth * C;
  if (rowScratch.length !== rowLen) rowScratch = new Float64Array(rowLen);
  const row = rowScratch;
  const sameWidth = b.width === outWidth;

  if (b.height === outHeight) {
    // Vertical identity: each output row is one horizontally resampled source row.
    for (let oy = 0; oy < outHeight; oy++) {
      if (sameWidth) copyRow(data, ((b.y + oy) * width + b.x) * C, rowLen, row, 0);
      else horizontalPass(data, width, C, b.x, b.y + oy, 1, h, row);
      onRow(oy, row);
    }
    return;
  }

  // Horizontal pass over the rows the vertical pass reads (all of them unless enlarging oddly).
  const firstRow = v.start[0];
  const lastRow = v.start[outHeight - 1] + v.count[outHeight - 1];
  const rows = lastRow - firstRow;
  if (scratch.length < rows * rowLen) scratch = new Float64Array(rows * rowLen);
  const tmp = scratch;
  if (sameWidth) {
    for (let r = 0; r < rows; r++) copyRow(data, ((b.y + firstRow + r) * width + b.x) * C, rowLen, tmp, r * rowLen);
  } else horizontalPass(data, width, C, b.x, b.y + firstRow, rows, h, tmp);

  // Vertical pass: tap-major so both the read row and the written row stream through memory;
  // per value the sum still runs over the taps in ascending order, as in the reference.
  const { start, count, weights, stride } = v;
  for (let oy = 0; oy < outHeight; oy++) {
    const n = count[oy];
    const wb = oy * stride;
    let r = (start[oy] - firstRow) * rowLen;
    const w0 = weights[wb];
    for (let x = 0; x < rowLen; x++) row[x] = w0 * tmp[r + x];
    for (let k = 1; k < n; k++) {
      r += rowLen;
      const wk = weights[wb + k];
      for (let x = 0; x < rowLen; x++) row[x] += wk * tmp[r + x];
    }
    onRow(oy, row);
  }
}

function copyRow(data: Uint8Array, from: number, length: number, to: Float64Array, at: number): void {
  for (let i = 0; i < length; i++) to[at + i] = data[from + i];
}

function horizontalPass(
  data: Uint8Array,
  width: number,
  C: number,
  x0: number,
  y0: number,
  rows: number,
  h: AxisCoefficients,
  tmp: Float64Array,
): void {
  const { start, count, weights, stride, outSize } = h;
  for (let r = 0; r < rows; r++) {
    const rowBase = ((y0 + r) * width + x0) * C;
    let o = r * outSize * C;
    for (let i = 0; i < outSize; i++) {
      const wb = i * stride;
      const n = count[i];
      for (let c = 0; c < C; c++) {
        let p = rowBase + start[i] * C + c;
        let a = 0;
        for (let k = 0; k < n; k++) {
          a += weights[wb + k] * data[p];
          p += C;
        }
        tmp[o + c] = a;
      }
      o += C;
    }
  }
}
