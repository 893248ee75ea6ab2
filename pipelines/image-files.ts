/**
 * Image files for fitting and evaluation: listing a folder (or a list), fingerprinting a
 * training set, and turning files into batches of model inputs with the one shared
 * preprocessing function. Unreadable files are reported and skipped, never fatal on their own.
 */
import { createHash } from 'node:crypto';
import { readdir, readFile, stat } from 'node:fs/promises';
import { basename, extname, resolve } from 'node:path';
import { preprocessImage } from '../models/preprocess.js';
import type { Normalization } from '../models/types.js';

export const IMAGE_EXTENSIONS = new Set(['.jpg', '.jpeg', '.png', '.webp', '.tif', '.tiff', '.bmp', '.gif', '.avif', '.heic']);

export function isImageFile(path: string): boolean {
  return IMAGE_EXTENSIONS.has(extname(path).toLowerCase());
}

/**
 * Expands folders (non-recursive, image extensions only) and explicit files into a sorted,
 * de-duplicated list. A path that does not exist is an error naming it.
 */
export async function listImages(paths: string[]): Promise<string[]> {
  const out = new Set<string>();
  for (const p of paths) {
    let s;
    try {
      s = await stat(p);
    } catch {
      throw new Error(`${p}: no such file or folder`);
    }
    if (s.isDirectory()) {
      for (const name of await readdir(p)) if (isImageFile(name)) out.add(resolve(p, name));
    } else out.add(resolve(p));
  }
  // Plain byte order, as the reference implementation sorts.
  return [...out].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
}

/** sha256 over the sorted list of (file name, file sha256): identifies a training set. */
export async function trainingDigest(files: string[]): Promise<string> {
  const h = createHash('sha256');
  const entries = await Promise.all(files.map(async (f) => [basename(f), createHash('sha256').update(await readFile(f)).digest('hex')] as const));
  entries.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : a[1] < b[1] ? -1 : 1));
  for (const [name, digest] of entries) h.update(`${name}\0${digest}\n`);
  return h.digest('hex');
}

/**
 * Deterministic hold-out: every k-th file (by sorted position) goes to validation so that about
 * `fraction` of the set is held out; at least one file when there are two or more.
 */
export function splitHoldOut<T>(items: T[], fraction: number): { train: T[]; validation: T[] } {
  if (items.length < 2 || fraction <= 0) return { train: items, validation: [] };
  const count = Math.min(items.length - 1, Math.max(1, Math.round(items.length * fraction)));
  const step = items.length / count;
  const picked = new Set<number>();
  for (let i = 0; i < count; i++) picked.add(Math.min(items.length - 1, Math.floor(i * step + step / 2)));
  return { train: items.filter((_, i) => !picked.has(i)), validation: items.filter((_, i) => picked.has(i)) };
}

export interface SkippedFile {
  file: string;
  reason: string;
}

export interface BatchOptions {
  size: number;
  normalization: Normalization;
  batchSize: number;
  shrinkOnLoad?: boolean;
  /** Files decoded at once (sharp decodes on libuv's thread pool). */
  concurrency?: number;
  onSkip?: (s: SkippedFile) => void;
  /** Accumulates decode + preprocess time (ms). */
  timing?: { decodeMs: number };
}

export interface FileBatch {
  data: Float32Array;
  count: number;
  files: string[];
}

/** Yields batches of preprocessed images in file order; unreadable files are skipped and reported. */
export async function* preprocessedBatches(files: string[], opts: BatchOptions): AsyncGenerator<FileBatch> {
  const plane = 3 * opts.size * opts.size;
  const concurrency = Math.max(1, opts.concurrency ?? 4);
  const load = async (file: string): Promise<Float32Array | null> => {
    const t = performance.now();
    try {
      const bytes = await readFile(file);
      const img = await preprocessImage(bytes, { origin: file, size: opts.size, normalization: opts.normalization, shrinkOnLoad: opts.shrinkOnLoad });
      return img.data;
    } catch (e) {
      opts.onSkip?.({ file, reason: (e as Error).message });
      return null;
    } finally {
      if (opts.timing) opts.timing.decodeMs += performance.now() - t;
    }
  };
  // A sliding window of in-flight decodes keeps the CPU busy while the model runs.
  const inflight: Array<Promise<Float32Array | null>> = [];
  let next = 0;
  const fill = () => {
    while (inflight.length < concurrency && next < files.length) inflight.push(load(files[next++]!));
  };
  let batch = new Float32Array(opts.batchSize * plane);
  let names: string[] = [];
  fill();
  let consumed = 0;
  while (inflight.length > 0) {
    const data = await inflight.shift()!;
    const file = files[consumed++]!;
    fill();
    if (!data) continue;
    batch.set(data, names.length * plane);
    names.push(file);
    if (names.length === opts.batchSize) {
      yield { data: batch, count: names.length, files: names };
      batch = new Float32Array(opts.batchSize * plane);
      names = [];
    }
  }
  if (names.length > 0) yield { data: batch, count: names.length, files: names };
}

