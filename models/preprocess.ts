/**
 * The one preprocessing path shared by fit, infer, the evaluator and the agent:
 * decode (image-decode.ts) → optional crop → exact triangle resize to size×size ignoring the
 * aspect ratio (resize.ts) → value / 255 → (value − mean) / std per channel → NCHW float32.
 * With shrink-on-load off this reproduces the reference `inputs.bin` (shared reference README,
 * "Preprocessing") to float32 rounding.
 */
import { decodeImage, type RawImage } from './image-decode.js';
import { assertBoxInside, axisCoefficients, type PixelBox } from './resize.js';
import { lookupRgbIntoPlanes, resizeRgbIntoPlanes } from './resize-kernel.js';
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

/**
 * Crops, resizes and normalises one decoded image into a [3, size, size] float32 tensor.
 * Writes into `out` at `outOffset` when given (fill a batch without copies) and returns `out`;
 * otherwise returns a new array of 3 · size² values.
 *
 * Hot in the agent (every slot of every frame), hence two shapes of the same maths, both
 * WebAssembly kernels (resize-kernel.ts): a box already at the model's size maps each 8-bit value
 * through a 256-entry table per channel; any other box is resized and normalised into the three
 * planes.
 */
export function toModelInput(img: RawImage, opts: ModelInputOptions, out?: Float32Array, outOffset = 0): Float32Array {
  const { size, normalization } = opts;
  const where = `toModelInput(${img.origin})`;
  if (!Number.isInteger(size) || size < 1) throw new RangeError(`${where}: size must be a positive integer, got ${size}`);
  checkNormalization(normalization, where);
  if (img.channels !== 3 || img.data.length !== img.width * img.height * 3) {
    throw new RangeError(`${where}: expected ${img.width}×${img.height} RGB pixels, got ${img.data.length} bytes with ${img.channels} channels`);
  }
  const box = opts.box ?? { x: 0, y: 0, width: img.width, height: img.height };
  assertBoxInside(box, img.width, img.height, where);
  const plane = size * size;
  const target = out ?? new Float32Array(3 * plane);
  if (!Number.isInteger(outOffset) || outOffset < 0 || outOffset + 3 * plane > target.length) {
    throw new RangeError(`${where}: output offset ${outOffset} + ${3 * plane} values does not fit a buffer of ${target.length}`);
  }

  if (box.width === size && box.height === size) {
    lookupRgbIntoPlanes(img.data, img.width, box, size, normalizationTable(normalization), target, outOffset);
    return target;
  }

  // (v / 255 − mean) / std as one multiply-add per value, in float64 until the final store.
  const { mean, std } = normalization;
  const scale = [1 / (255 * std[0]), 1 / (255 * std[1]), 1 / (255 * std[2])] as const;
  const offset = [-mean[0] / std[0], -mean[1] / std[1], -mean[2] / std[2]] as const;
  resizeRgbIntoPlanes(img.data, img.width, box, axisCoefficients(box.width, size), axisCoefficients(box.height, size), scale, offset, target, outOffset);
  return target;
}

let lastTable: { mean: number[]; std: number[]; table: Float32Array } | null = null;

/** (v / 255 − mean) / std for v = 0…255, per channel (R at 0, G at 256, B at 512); cached for the last normalisation seen. */
function normalizationTable(n: Normalization): Float32Array {
  const same = lastTable && [0, 1, 2].every((c) => lastTable!.mean[c] === n.mean[c] && lastTable!.std[c] === n.std[c]);
  if (!same) {
    const table = new Float32Array(768);
    for (let c = 0; c < 3; c++) for (let v = 0; v < 256; v++) table[c * 256 + v] = (v / 255 - n.mean[c]) / n.std[c];
    lastTable = { mean: [...n.mean], std: [...n.std], table };
  }
  return lastTable!.table;
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
