/**
 * Where shelfwatch keeps downloaded files (backbones, models fetched by URL).
 *
 * Resolution order:
 *   1. `$SHELFWATCH_CACHE` (a relative value is resolved against the working directory);
 *   2. `$XDG_CACHE_HOME/shelfwatch` — only when XDG_CACHE_HOME is absolute, as the XDG Base
 *      Directory spec says relative values must be ignored;
 *   3. `~/.cache/shelfwatch`.
 * Empty variables count as unset. The directory is created (with parents) on demand.
 */
import { mkdirSync } from 'node:fs';
import { homedir } from 'node:os';
import { isAbsolute, join, resolve } from 'node:path';

export interface CacheDirOptions {
  /** Environment to read; defaults to `process.env`. */
  env?: NodeJS.ProcessEnv;
  /** Home directory for the last fallback; defaults to `os.homedir()`. */
  homeDir?: string;
}

/** The cache directory path, without touching the file system. */
export function resolveCacheDir(options: CacheDirOptions = {}): string {
  const env = options.env ?? process.env;
  const own = env.SHELFWATCH_CACHE;
  if (own) return resolve(own);
  const xdg = env.XDG_CACHE_HOME;
  if (xdg && isAbsolute(xdg)) return join(xdg, 'shelfwatch');
  return join(options.homeDir ?? homedir(), '.cache', 'shelfwatch');
}

/** The cache directory, created if it does not exist yet. */
export function cacheDir(options: CacheDirOptions = {}): string {
  const dir = resolveCacheDir(options);
  try {
    mkdirSync(dir, { recursive: true });
  } catch (err) {
    throw new Error(`cannot create cache directory ${dir}: ${(err as Error).message}`, { cause: err });
  }
  return dir;
}
