/**
 * Where a backbone comes from on a user's machine: a file the user points to (`--backbone`
 * or SHELFWATCH_BACKBONE), else the verified copy in the cache, fetched from an official
 * location on first use. A cached copy whose sha256 no longer matches (damaged on disk, cut
 * short, an older file) is fetched again and replaced atomically when fetching is allowed;
 * otherwise the error says that `shelfwatch backbone fetch` replaces it. A file the user points
 * to is never replaced: a wrong one is an error.
 */
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { BUILTIN_BACKBONES, loadBackbone, readDescriptor, BackboneError, type LoadedBackbone } from '../models/backbone.js';
import type { BackboneDescriptor } from '../models/types.js';
import { cacheDir, resolveCacheDir } from './cache-dir.js';
import { DownloadError, downloadVerified, sha256File } from './download.js';

export const DEFAULT_BACKBONE = 'mobilenetv2-12-int8';

export interface BackboneSelection {
  /** A local ONNX file (skips the cache and the download). */
  file?: string;
  /** A built-in id or a descriptor JSON path. */
  descriptor?: string;
  /** Fetch into the cache when missing (default true). */
  fetch?: boolean;
  onDownloadProgress?: (received: number, total?: number) => void;
  env?: NodeJS.ProcessEnv;
}

export async function resolveDescriptor(spec: string | undefined): Promise<BackboneDescriptor> {
  const id = spec ?? DEFAULT_BACKBONE;
  const builtin = BUILTIN_BACKBONES[id];
  if (builtin) return builtin;
  if (id.endsWith('.json')) return readDescriptor(id);
  throw new BackboneError(`unknown backbone '${id}': use one of ${Object.keys(BUILTIN_BACKBONES).join(', ')} or a descriptor .json file`);
}

/** Where the descriptor's file is cached; creates nothing (`backbone info` only reads). */
export function cachedBackbonePath(d: BackboneDescriptor, env: NodeJS.ProcessEnv = process.env): string {
  return join(resolveCacheDir({ env }), 'backbones', d.fileName ?? `${d.id}.onnx`);
}

/** Download (or reuse) the descriptor's file in the cache, verified against its sha256. */
export async function fetchBackbone(
  d: BackboneDescriptor,
  opts: { env?: NodeJS.ProcessEnv; urls?: string[]; onProgress?: (r: number, t?: number) => void; signal?: AbortSignal } = {},
) {
  const urls = opts.urls ?? d.urls ?? [];
  if (urls.length === 0) throw new BackboneError(`backbone ${d.id} has no download location: pass the file with --backbone <file>`);
  cacheDir({ env: opts.env }); // created here, where a failure says which directory and why
  return downloadVerified({ urls, sha256: d.sha256, dest: cachedBackbonePath(d, opts.env), onProgress: opts.onProgress, signal: opts.signal });
}

/** The cached file: absent, verified, present with another sha256, or unreadable (loadBackbone then says why). */
async function cachedState(path: string, sha256: string): Promise<{ state: 'missing' | 'ok' | 'unreadable' } | { state: 'damaged'; digest: string }> {
  const info = await stat(path).catch((err: NodeJS.ErrnoException) => (err.code === 'ENOENT' ? null : undefined));
  if (info === null) return { state: 'missing' };
  if (info === undefined || !info.isFile()) return { state: 'unreadable' };
  const digest = await sha256File(path).catch(() => null);
  if (digest === null) return { state: 'unreadable' };
  return digest === sha256 ? { state: 'ok' } : { state: 'damaged', digest };
}

export async function selectBackbone(sel: BackboneSelection = {}): Promise<LoadedBackbone> {
  const env = sel.env ?? process.env;
  const d = await resolveDescriptor(sel.descriptor);
  const file = sel.file ?? env.SHELFWATCH_BACKBONE;
  if (file) return loadBackbone(file, d);
  if (sel.fetch !== false) cacheDir({ env }); // it may be written to: a failure says which directory and why
  const cached = cachedBackbonePath(d, env);
  const found = await cachedState(cached, d.sha256);
  if (found.state === 'missing' || found.state === 'damaged') {
    const damaged = found.state === 'damaged' ? `the cached ${cached} is damaged (sha256 ${found.digest}, expected ${d.sha256})` : null;
    if (sel.fetch === false) {
      throw new BackboneError(
        damaged
          ? `backbone ${d.id}: ${damaged}: run \`shelfwatch backbone fetch\` to replace it`
          : `backbone ${d.id} is not in the cache (${cached}): run \`shelfwatch backbone fetch\``,
      );
    }
    try {
      // downloadVerified replaces a stale file only once the new one is verified (atomic rename).
      await fetchBackbone(d, { env, onProgress: sel.onDownloadProgress });
    } catch (err) {
      if (!(err instanceof DownloadError)) {
        if (damaged && err instanceof BackboneError) throw new BackboneError(`backbone ${d.id}: ${damaged}, and it cannot be fetched again: ${err.message}`, { cause: err });
        throw err;
      }
      // A box without internet access (or behind a proxy) needs the file brought in by hand.
      throw new BackboneError(
        `${damaged ? `backbone ${d.id}: ${damaged}; fetching it again failed.\n` : ''}${err.message}\n` +
          `without access to those URLs, copy ${d.id}.onnx (sha256 ${d.sha256}) onto this machine and ` +
          `pass --backbone <file>, set SHELFWATCH_BACKBONE=<file>, or place it at ${cached}${damaged ? ' (replacing the damaged file)' : ''}`,
        { cause: err },
      );
    }
  }
  return loadBackbone(cached, d);
}
