/**
 * Image files for fitting and evaluation: listing a folder (or a list), fingerprinting a
 * training set, and turning files into batches of model inputs with the one shared
 * preprocessing function. Unreadable files are reported and skipped, never fatal on their own.
 */
import { createHash } from 'node:crypto';
import { lstat, readdir, readFile, stat } from 'node:fs/promises';
import { basename, extname, resolve } from 'node:path';
import { preprocessImage } from '../models/preprocess.js';
import type { Normalization } from '../models/types.js';

export const IMAGE_EXTENSIONS = new Set(['.jpg', '.jpeg', '.png', '.webp', '.tif', '.tiff', '.bmp', '.gif', '.avif', '.heic']);

export function isImageFile(path: string): boolean {
  return IMAGE_EXTENSIONS.has(extname(path).toLowerCase());
}

/** Why a listed path is not a regular file (for the skip report), or null when it is one. */
async function notRegularFile(path: string, s?: { isFile(): boolean; isDirectory(): boolean; isSymbolicLink(): boolean }): Promise<string | null> {
  if (s && !s.isSymbolicLink()) return s.isFile() ? null : s.isDirectory() ? 'a folder, not an image file' : 'not a regular file';
  let target;
  try {
    target = await stat(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return 'broken symbolic link (its target does not exist)';
    if (code === 'ELOOP') return 'symbolic link loop';
    return `cannot read (${code ?? (err as Error).message})`;
  }
  return target.isFile() ? null : target.isDirectory() ? 'symbolic link to a folder, not an image file' : 'not a regular file';
}

/**
 * Expands folders (non-recursive, image extensions only) and explicit files into a sorted,
 * de-duplicated list. A path that does not exist is an error naming it (with `onSkip`, a dangling
 * symbolic link is reported there instead, as in a folder).
 *
 * Only regular files (or symbolic links to one) are images: with `onSkip`, anything else —
 * a folder named `x.jpg`, a dangling link, a FIFO — is reported there and left out. Without
 * `onSkip` such entries stay in the list (callers then report them when reading fails).
 */
export async function listImages(paths: string[], onSkip?: (s: SkippedFile) => void): Promise<string[]> {
  const out = new Set<string>();
  const skipped = new Map<string, string>();
  const consider = async (file: string, s?: Parameters<typeof notRegularFile>[1]) => {
    if (!onSkip) return void out.add(file);
    const why = await notRegularFile(file, s);
    if (why === null) out.add(file);
    else skipped.set(file, why);
  };
  for (const p of paths) {
    let s;
    try {
      s = await stat(p);
    } catch (err) {
      // A dangling link or a link loop named on the command line (a shell glob names them too) is
      // skipped like one found in a folder; anything else that cannot be looked at is an error.
      if (onSkip && (await lstat(p).catch(() => null))?.isSymbolicLink()) {
        await consider(resolve(p));
        continue;
      }
      const code = (err as NodeJS.ErrnoException).code;
      throw new Error(code === 'ENOENT' || code === 'ENOTDIR' ? `${p}: no such file or folder` : `${p}: cannot read (${code ?? (err as Error).message})`);
    }
    if (s.isDirectory()) {
      let entries;
      try {
        entries = await readdir(p, { withFileTypes: true });
      } catch (err) {
        throw new Error(`${p}: cannot list the folder (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
      }
      for (const e of entries) if (isImageFile(e.name)) await consider(resolve(p, e.name), e);
    } else await consider(resolve(p), s);
  }
  for (const [file, reason] of [...skipped].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) if (!out.has(file)) onSkip!({ file, reason });
  // Plain byte order, as the reference implementation sorts.
  return [...out].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
}

/** Files read at once by `trainingDigest` (a large folder must not run out of file handles). */
const DIGEST_CONCURRENCY = 8;

/** sha256 of one file's bytes, hex. */
export function sha256Hex(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

/**
 * The training-set digest from (file, sha256 of its bytes) pairs: sha256 over the sorted list of
 * (file name, file sha256). `trainingDigest` reads the files; the fit hashes the bytes it decodes.
 */
export function digestOfHashes(entries: Iterable<readonly [file: string, sha256: string]>): string {
  const h = createHash('sha256');
  const named = [...entries].map(([f, d]) => [basename(f), d] as const);
  named.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : 0));
  for (const [name, digest] of named) h.update(`${name}\0${digest}\n`);
  return h.digest('hex');
}

/**
 * sha256 over the sorted list of (file name, file sha256): identifies a training set. Reads a
 * few files at a time; a file that cannot be read is an error naming it.
 */
export async function trainingDigest(files: string[]): Promise<string> {
  const hashes = new Array<readonly [string, string]>(files.length);
  let next = 0;
  const worker = async () => {
    while (next < files.length) {
      const i = next++;
      const f = files[i]!;
      let bytes: Buffer;
      try {
        bytes = await readFile(f);
      } catch (err) {
        throw new Error(`cannot read image ${f}: ${readFailure(err)}`, { cause: err });
      }
      hashes[i] = [f, sha256Hex(bytes)];
    }
  };
  await Promise.all(Array.from({ length: Math.min(DIGEST_CONCURRENCY, files.length) }, worker));
  return digestOfHashes(hashes);
}

const READ_WHY: Record<string, string> = {
  ENOENT: 'it does not exist (ENOENT)',
  EISDIR: 'it is a folder (EISDIR)',
  EACCES: 'permission denied (EACCES)',
  EMFILE: 'too many open files (EMFILE)',
  EIO: 'input/output error (EIO)',
};

/** A file-system read error as a short reason (the caller names the file). */
function readFailure(err: unknown): string {
  const code = (err as NodeJS.ErrnoException).code;
  return (code && READ_WHY[code]) ?? code ?? (err as Error).message;
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

/** "N skipped: a: why; b: why" for an error message: the first `max` files, then "; …". */
export function describeSkipped(skipped: readonly SkippedFile[], max = Infinity): string {
  const listed = skipped.slice(0, max).map((k) => `${k.file}: ${k.reason}`).join('; ');
  return `${skipped.length} skipped: ${listed}${skipped.length > max ? '; …' : ''}`;
}

export interface BatchOptions {
  size: number;
  normalization: Normalization;
  batchSize: number;
  shrinkOnLoad?: boolean;
  /** Files decoded at once (sharp decodes on libuv's thread pool). */
  concurrency?: number;
  onSkip?: (s: SkippedFile) => void;
  /** Called with the bytes of every file that was read and decoded (e.g. to hash what was used). */
  onUsed?: (file: string, bytes: Buffer) => void;
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
      let bytes: Buffer;
      try {
        bytes = await readFile(file);
      } catch (err) {
        throw new Error(`cannot read image ${file}: ${readFailure(err)}`, { cause: err });
      }
      const img = await preprocessImage(bytes, { origin: file, size: opts.size, normalization: opts.normalization, shrinkOnLoad: opts.shrinkOnLoad });
      opts.onUsed?.(file, bytes);
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

