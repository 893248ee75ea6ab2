/**
 * The evaluator's disk cache, so that re-running an evaluation with another coreset ratio, seed
 * or threshold does not pay for the expensive parts again:
 *
 * - TRAIN FEATURES: the patch embeddings of a category's fit images, one file per
 *   (preprocessing key, the backbone descriptor's feature fields, training digest): backbone
 *   sha256, input size, normalisation, crop mode, shrink-on-load, and the descriptor's input
 *   name, taps (tensor, stride, channels, dequantisation), embedDim and pretrainEmbedDim — the
 *   same ONNX file tapped or pooled differently makes other features. A hit skips decoding and
 *   the backbone on every training image (`fitFromFeatures`). On read the entry's feature
 *   dimension and patches per image must be the ones this backbone makes, or it is a miss.
 * - MODEL INPUTS of validation and test images: the float32 [3,S,S] tensor the model gets, plus
 *   where it came from in the image (crop box, sizes), keyed by the sha256 of the file's bytes
 *   (not its path, size or mtime: a file rewritten in place with the same size and mtime is a
 *   miss) and the same preprocessing settings.
 *
 * Every key also holds CACHE_STAMP: the cache format version, PREPROCESS_VERSION, the shelfwatch
 * version and the sharp / libvips versions, so that entries made by other preprocessing code (a
 * new release, a preprocessing fix, another libvips decoding JPEGs differently) are misses
 * instead of stale hits.
 *
 * Exactness: inputs are stored as the very float32 values the model receives. The resize before
 * normalisation is an antialiased triangle filter computed in float64 without rounding to 8 bits
 * (models/resize.ts), so a uint8 or float16 copy would NOT reproduce the inputs — a quantised
 * input moves int8 backbone activations across quantisation steps (shared reference README,
 * "Tolerances and sensitivity"). Storing float32 costs 3·S²·4 bytes (602 KB at 224) per image.
 *
 * File format (both kinds): "SWC1", uint32 LE header length, UTF-8 JSON header, zero padding to a
 * multiple of 4, float32 LE payload. A file that is short, damaged or of another version counts
 * as a miss and is rewritten. Writes go to a temporary file renamed into place, so concurrent
 * runs never read half a file.
 */
import { createHash } from 'node:crypto';
import { mkdir, open, readFile, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import sharp from 'sharp';
import type { EmbeddedImages } from '../models/fit.js';
import type { BackboneDescriptor, FeatureTap } from '../models/types.js';
import { TOOL_VERSION } from '../models/version.js';

const MAGIC = 'SWC1';
/** Bump when what is stored changes meaning (also invalidates every entry). */
export const CACHE_VERSION = 2;

/**
 * Bump when the preprocessing code changes what an image file turns into (models/image-decode.ts
 * decodeImage and its shrink-on-load, models/preprocess.ts toModelInput, models/resize.ts,
 * planogram.ts refineBox in crop mode). It is part of every cache key and is recorded in models
 * fitted by the evaluator (eval-models.ts), so their reuse stops too. Releases are covered
 * anyway: the shelfwatch version is in the cache keys as well.
 */
export const PREPROCESS_VERSION = 1;

/** What every cache key holds besides its own fields: the code and libraries that made the entry. */
export const CACHE_STAMP = Object.freeze({
  cache: CACHE_VERSION,
  preprocess: PREPROCESS_VERSION,
  tool: TOOL_VERSION,
  sharp: sharp.versions.sharp ?? 'unknown',
  vips: sharp.versions.vips,
});

/** Everything that changes what the preprocessing produces. */
export interface PreprocessKey {
  backboneSha256: string;
  inputSize: number;
  normalization: { mean: readonly number[]; std: readonly number[] };
  crop: 'none' | 'auto';
  shrinkOnLoad: boolean;
}

/**
 * The backbone descriptor's fields that change the features beyond the ONNX file and the
 * preprocessing: the input fed, where it is tapped (and how a quantised tap is dequantised) and
 * how the taps are pooled to the embedding.
 */
export interface FeatureKey {
  input: string;
  taps: Array<{ tensor: string; stride: number; channels: number; dequantize: { scale: string; zeroPoint: string } | null }>;
  embedDim: number | null;
  pretrainEmbedDim: number | null;
}

export function featureKeyOf(d: BackboneDescriptor): FeatureKey {
  const tap = (t: FeatureTap) => ({
    tensor: t.tensor,
    stride: t.stride,
    channels: t.channels,
    dequantize: t.dequantize ? { scale: t.dequantize.scale, zeroPoint: t.dequantize.zeroPoint } : null,
  });
  return { input: d.input, taps: d.taps.map(tap), embedDim: d.embedDim ?? null, pretrainEmbedDim: d.pretrainEmbedDim ?? null };
}

/** The shape train features of a backbone have (checked against a cache entry on read). */
export interface FeatureShape {
  patchesPerImage: number;
  dim: number;
}

/** Where a model input came from, in fractions of the decoded (upright) image. */
export interface InputPlacement {
  /** The crop box as fractions of the image (null = the whole image). */
  crop: { x: number; y: number; width: number; height: number } | null;
  sourceWidth: number;
  sourceHeight: number;
  /** Shrink-on-load factor used when decoding (1 = full resolution). */
  shrink: number;
}

export interface CachedInput extends InputPlacement {
  data: Float32Array;
}

export interface CacheCounters {
  featureHits: number;
  featureMisses: number;
  inputHits: number;
  inputMisses: number;
  /** Bytes written this run. */
  bytesWritten: number;
}

export class EvalCache {
  readonly counters: CacheCounters = { featureHits: 0, featureMisses: 0, inputHits: 0, inputMisses: 0, bytesWritten: 0 };

  /** `dir` null = caching off (every lookup misses, nothing is written). */
  constructor(readonly dir: string | null) {}

  static featuresKey(pre: PreprocessKey, features: FeatureKey, trainingDigest: string): string {
    return hashKey({ kind: 'features', stamp: CACHE_STAMP, ...pre, features, trainingDigest });
  }

  /** `contentSha256`: sha256 (hex) of the image file's bytes (see contentDigest). */
  static inputKey(pre: PreprocessKey, contentSha256: string): string {
    return hashKey({ kind: 'input', stamp: CACHE_STAMP, ...pre, contentSha256 });
  }

  /**
   * The cached embeddings of `files` (in this order), or null. An entry made for a different
   * file list (e.g. an image that failed to decode last time now decodes), or whose features do
   * not have the `expect`ed shape, is a miss.
   */
  async readFeatures(key: string, files: readonly string[], expect: FeatureShape): Promise<CachedFeatures | null> {
    const entry = this.dir ? await readEntry(join(this.dir, 'features', `${key}.bin`)) : null;
    const h = entry?.header as Partial<{ files: string[]; skipped: string[]; patchesPerImage: number; dim: number; images: number }> | undefined;
    const ok =
      entry !== null &&
      h !== undefined &&
      Array.isArray(h.files) &&
      Array.isArray(h.skipped) &&
      typeof h.patchesPerImage === 'number' &&
      typeof h.dim === 'number' &&
      typeof h.images === 'number' &&
      h.patchesPerImage === expect.patchesPerImage &&
      h.dim === expect.dim &&
      h.files.length === h.images &&
      entry.data.length === h.images * h.patchesPerImage * h.dim &&
      sameSet([...h.files, ...h.skipped], files);
    if (!ok) {
      this.counters.featureMisses++;
      return null;
    }
    this.counters.featureHits++;
    return {
      embedded: { features: entry.data, images: h.images!, patchesPerImage: h.patchesPerImage!, dim: h.dim! },
      files: h.files!,
      skipped: h.skipped!,
    };
  }

  /** `files` = the images embedded, in order; `skipped` = those of the set that did not decode. */
  async writeFeatures(key: string, files: readonly string[], skipped: readonly string[], embedded: EmbeddedImages): Promise<void> {
    if (!this.dir) return;
    const header = { files, skipped, images: embedded.images, patchesPerImage: embedded.patchesPerImage, dim: embedded.dim };
    this.counters.bytesWritten += await writeEntry(join(this.dir, 'features'), `${key}.bin`, header, embedded.features);
  }

  async readInput(key: string, floats: number): Promise<CachedInput | null> {
    const entry = this.dir ? await readEntry(join(this.dir, 'inputs', `${key}.bin`)) : null;
    const h = entry?.header as Partial<InputPlacement> | undefined;
    if (!entry || !h || entry.data.length !== floats || typeof h.sourceWidth !== 'number' || typeof h.sourceHeight !== 'number' || typeof h.shrink !== 'number' || h.crop === undefined) {
      this.counters.inputMisses++;
      return null;
    }
    this.counters.inputHits++;
    return { data: entry.data, crop: h.crop, sourceWidth: h.sourceWidth, sourceHeight: h.sourceHeight, shrink: h.shrink };
  }

  async writeInput(key: string, input: CachedInput): Promise<void> {
    if (!this.dir) return;
    const { data, ...placement } = input;
    this.counters.bytesWritten += await writeEntry(join(this.dir, 'inputs'), `${key}.bin`, placement, data);
  }
}

/** Train features read back from the cache. */
export interface CachedFeatures {
  embedded: EmbeddedImages;
  /** The images embedded, in the order of `embedded`. */
  files: string[];
  /** Images of the set that could not be decoded when the entry was made. */
  skipped: string[];
}

function sameSet(a: readonly string[], b: readonly string[]): boolean {
  if (a.length !== b.length) return false;
  const s = new Set(a);
  return s.size === a.length && b.every((x) => s.has(x));
}

/** The sha256 (hex) of a file's bytes: what the input cache is keyed on. */
export function contentDigest(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

function hashKey(value: unknown): string {
  return createHash('sha256').update(JSON.stringify(value)).digest('hex').slice(0, 40);
}

async function readEntry(path: string): Promise<{ header: unknown; data: Float32Array } | null> {
  let buf: Buffer;
  try {
    buf = await readFile(path);
  } catch {
    return null;
  }
  if (buf.length < 8 || buf.toString('latin1', 0, 4) !== MAGIC) return null;
  const headerLength = buf.readUInt32LE(4);
  if (8 + headerLength > buf.length) return null;
  let header: unknown;
  try {
    header = JSON.parse(buf.toString('utf8', 8, 8 + headerLength));
  } catch {
    return null;
  }
  const start = align4(8 + headerLength);
  if ((buf.length - start) % 4 !== 0) return null;
  const count = (buf.length - start) / 4;
  const offset = buf.byteOffset + start;
  // readFile of a large file returns an unpooled, aligned buffer; copy only if that ever differs.
  const data = offset % 4 === 0 ? new Float32Array(buf.buffer, offset, count) : new Float32Array(buf.buffer.slice(offset, offset + count * 4));
  return { header, data };
}

async function writeEntry(dir: string, name: string, header: unknown, data: Float32Array): Promise<number> {
  await mkdir(dir, { recursive: true });
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  const head = Buffer.alloc(align4(8 + json.length));
  head.write(MAGIC, 0, 'latin1');
  head.writeUInt32LE(json.length, 4);
  json.copy(head, 8);
  const path = join(dir, name);
  const tmp = `${path}.${process.pid}.${Math.random().toString(36).slice(2)}.tmp`;
  const fh = await open(tmp, 'w');
  try {
    await fh.write(head);
    await fh.write(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
  } catch (e) {
    await fh.close();
    await rm(tmp, { force: true });
    throw e;
  }
  await fh.close();
  await rename(tmp, path);
  return head.length + data.byteLength;
}

function align4(n: number): number {
  return (n + 3) & ~3;
}
