/**
 * The evaluator's disk cache, so that re-running an evaluation with another coreset ratio, seed
 * or threshold does not pay for the expensive parts again:
 *
 * - TRAIN FEATURES: the patch embeddings of a category's fit images, one file per
 *   (backbone sha256, input size, normalisation, crop mode, shrink-on-load, training digest).
 *   A hit skips decoding and the backbone on every training image (`fitFromFeatures`).
 * - MODEL INPUTS of validation and test images: the float32 [3,S,S] tensor the model gets, plus
 *   where it came from in the image (crop box, sizes), keyed by (path, size, mtime) of the file
 *   and the same preprocessing settings.
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
import type { EmbeddedImages } from '../models/fit.js';

const MAGIC = 'SWC1';
/** Bump when what is stored changes meaning (also invalidates every entry). */
export const CACHE_VERSION = 1;

/** Everything that changes what the preprocessing produces. */
export interface PreprocessKey {
  backboneSha256: string;
  inputSize: number;
  normalization: { mean: readonly number[]; std: readonly number[] };
  crop: 'none' | 'auto';
  shrinkOnLoad: boolean;
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

  static featuresKey(pre: PreprocessKey, trainingDigest: string): string {
    return hashKey({ kind: 'features', v: CACHE_VERSION, ...pre, trainingDigest });
  }

  static inputKey(pre: PreprocessKey, file: string, size: number, mtimeMs: number): string {
    return hashKey({ kind: 'input', v: CACHE_VERSION, ...pre, file, size, mtimeMs });
  }

  /**
   * The cached embeddings of `files` (in this order), or null. An entry made for a different
   * file list (e.g. an image that failed to decode last time now decodes) is a miss.
   */
  async readFeatures(key: string, files: readonly string[]): Promise<CachedFeatures | null> {
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
