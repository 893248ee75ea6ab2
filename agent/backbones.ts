/**
 * Where a backbone comes from on a user's machine: a file the user points to (`--backbone`
 * or SHELFWATCH_BACKBONE), else the verified copy in the cache, fetched from an official
 * location on first use.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { BUILTIN_BACKBONES, loadBackbone, readDescriptor, BackboneError, type LoadedBackbone } from '../models/backbone.js';
import type { BackboneDescriptor } from '../models/types.js';
import { cacheDir } from './cache-dir.js';
import { DownloadError, downloadVerified } from './download.js';

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

export function cachedBackbonePath(d: BackboneDescriptor, env: NodeJS.ProcessEnv = process.env): string {
  return join(cacheDir({ env }), 'backbones', d.fileName ?? `${d.id}.onnx`);
}

/** Download (or reuse) the descriptor's file in the cache, verified against its sha256. */
export async function fetchBackbone(d: BackboneDescriptor, opts: { env?: NodeJS.ProcessEnv; urls?: string[]; onProgress?: (r: number, t?: number) => void } = {}) {
  const urls = opts.urls ?? d.urls ?? [];
  if (urls.length === 0) throw new BackboneError(`backbone ${d.id} has no download location: pass the file with --backbone <file>`);
  return downloadVerified({ urls, sha256: d.sha256, dest: cachedBackbonePath(d, opts.env), onProgress: opts.onProgress });
}

export async function selectBackbone(sel: BackboneSelection = {}): Promise<LoadedBackbone> {
  const env = sel.env ?? process.env;
  const d = await resolveDescriptor(sel.descriptor);
  const file = sel.file ?? env.SHELFWATCH_BACKBONE;
  if (file) return loadBackbone(file, d);
  const cached = cachedBackbonePath(d, env);
  if (!existsSync(cached)) {
    if (sel.fetch === false) throw new BackboneError(`backbone ${d.id} is not in the cache (${cached}): run \`shelfwatch backbone fetch\``);
    try {
      await fetchBackbone(d, { env, onProgress: sel.onDownloadProgress });
    } catch (err) {
      if (!(err instanceof DownloadError)) throw err;
      // A box without internet access (or behind a proxy) needs the file brought in by hand.
      throw new BackboneError(
        `${err.message}\nwithout access to those URLs, copy ${d.id}.onnx (sha256 ${d.sha256}) onto this machine and ` +
          `pass --backbone <file>, set SHELFWATCH_BACKBONE=<file>, or place it at ${cached}`,
        { cause: err },
      );
    }
  }
  return loadBackbone(cached, d);
}
