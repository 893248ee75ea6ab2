/**
 * The one preprocessing path shared by fit, infer, the evaluator and the agent:
 * decode (image-decode.ts) → optional crop → exact triangle resize to size×size ignoring the
 * aspect ratio (resize.ts) → value / 255 → (value − mean) / std per channel → NCHW float32.
 * With shrink-on-load off this reproduces the reference `inputs.bin` (shared reference README,
 * "Preprocessing") to float32 rounding.
 */
import { decodeImage, type RawImage } from './image-decode.js';
import { assertBoxInside, resizeTriangle, type PixelBox } from './resize.js';
import type { Normalization, PreprocessedImage } from './types.js';

export type { PixelBox } from './resize.js';

/** ImageNet statistics, used by the torchvision-trained backbones. */
export const IMAGENET_NORMALIZATION: Normalization = {
  mean: [0.485, 0.456, 0.406],
  std: [0.229, 0.224, 0.225],
};

export interface ModelInputOptions {
  /** Side of the square model input. */
  size: number;
  normalization: Normalization;
  /** Crop in pixel coordinates of `img` (the decoded image, i.e. after any shrink-on-load). */
  box?: PixelBox;
}

let resized = new Float64Array(0);

/**
 * Crops, resizes and normalises one decoded image into a [3, size, size] float32 tensor.
 * Writes into `out` at `outOffset` when given (fill a batch without copies) and returns `out`;
 * otherwise returns a new array of 3 · size² values.
 */
export function toModelInput(img: RawImage, opts: ModelInputOptions, out?: Float32Array, outOffset = 0): Float32Array {
  const { size, normalization } = opts;
  const where = `toModelInput(${img.origin})`;
  if (!Number.isInteger(size) || size < 1) throw new RangeError(`${where}: size must be a positive integer, got ${size}`);
  checkNormalization(normalization, where);
  if (img.channels !== 3 || img.data.length !== img.width * img.height * 3) {
    throw new RangeError(`${where}: expected ${img.width}×${img.height} RGB pixels, got ${img.data.length} bytes with ${img.channels} channels`);
  }
  if (opts.box) assertBoxInside(opts.box, img.width, img.height, where);
  const plane = size * size;
  const target = out ?? new Float32Array(3 * plane);
  if (!Number.isInteger(outOffset) || outOffset < 0 || outOffset + 3 * plane > target.length) {
    throw new RangeError(`${where}: output offset ${outOffset} + ${3 * plane} values does not fit a buffer of ${target.length}`);
  }

  if (resized.length < 3 * plane) resized = new Float64Array(3 * plane);
  const hwc = resizeTriangle(img, size, size, { box: opts.box, out: resized });

  // HWC 0…255 → normalised NCHW, in float64 until the final store (as the reference does).
  const { mean, std } = normalization;
  for (let c = 0; c < 3; c++) {
    const m = mean[c];
    const s = std[c];
    const base = outOffset + c * plane;
    for (let p = 0, q = c; p < plane; p++, q += 3) target[base + p] = (hwc[q] / 255 - m) / s;
  }
  return target;
}

export interface PreprocessOptions {
  /** Where the bytes came from; every error names it. */
  origin: string;
  size: number;
  normalization: Normalization;
  /**
   * Decode big JPEG/WebP images at a reduced scale (see image-decode.ts). Default true; turn it
   * off to compare with the reference, which decodes at full resolution.
   */
  shrinkOnLoad?: boolean;
  /** Refuse images with more pixels than this; default image-decode's DEFAULT_MAX_PIXELS. */
  maxPixels?: number;
}

/** Decodes an encoded image and turns it into one model input. */
export async function preprocessImage(input: Buffer, opts: PreprocessOptions): Promise<PreprocessedImage> {
  const img = await decodeImage(input, {
    origin: opts.origin,
    maxPixels: opts.maxPixels,
    targetSize: opts.shrinkOnLoad === false ? undefined : opts.size,
  });
  const data = toModelInput(img, { size: opts.size, normalization: opts.normalization });
  return { data, size: opts.size, sourceWidth: img.sourceWidth, sourceHeight: img.sourceHeight };
}

function checkNormalization(n: Normalization, where: string): void {
  for (let c = 0; c < 3; c++) {
    if (!Number.isFinite(n.mean[c])) throw new RangeError(`${where}: normalization.mean[${c}] must be a finite number, got ${n.mean[c]}`);
    if (!Number.isFinite(n.std[c]) || n.std[c] <= 0) throw new RangeError(`${where}: normalization.std[${c}] must be positive, got ${n.std[c]}`);
  }
}
