/**
 * Verified downloads into a cache: fetch a file from one of several mirror URLs, check its
 * sha256, and only then move it into place.
 *
 * Guarantees:
 * - `dest` is only ever replaced by an atomic rename of a fully written, fsynced, hash-verified
 *   file. Bytes are streamed to `<dest>.part-<random>` in the same directory (same file system,
 *   so the rename is atomic); on any failure that temp file is removed. A failed download
 *   never touches an existing `dest`.
 * - An existing `dest` whose sha256 matches is returned as `cached` without any network use.
 *   An existing `dest` whose hash does NOT match is treated as stale (e.g. an older model
 *   version, or a file damaged on disk): it is re-downloaded and replaced atomically. Until the
 *   new file is verified the stale one stays as it was.
 * - URLs are tried in order; a network/HTTP/size/hash failure moves on to the next one. When all
 *   fail, a `DownloadError` lists every URL with its own reason. Local file-system errors (cannot
 *   create or write the temp file) are not a mirror's fault and are thrown at once.
 *
 * Only Node's http/https modules are used, so the idle timeout, redirects and truncation
 * detection are under our control. Redirects may cross hosts and schemes (GitHub → LFS storage,
 * Hugging Face → CDN); even a downgrade to http is accepted because the sha256 check, not the
 * transport, is what makes the bytes trustworthy.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, open, readdir, rename, rm, stat, type FileHandle } from 'node:fs/promises';
import http, { type ClientRequest, type IncomingMessage } from 'node:http';
import https from 'node:https';
import { basename, dirname, join, resolve } from 'node:path';
import { redactText, redactUrl } from './redact.js';

export interface DownloadOptions {
  /** Mirror URLs, tried in order. Only http: and https: are accepted. */
  urls: string[];
  /** Expected hex sha256 of the file (64 hex digits, any case). */
  sha256: string;
  /** Final path of the file. Its directory is created if missing. */
  dest: string;
  /** Limit for one URL's whole transfer, redirects included (default 10 min). */
  timeoutMs?: number;
  /** Abort a URL when no bytes (nor headers) arrive for this long (default 30 s). */
  idleTimeoutMs?: number;
  /** Refuse bodies larger than this many bytes. */
  maxBytes?: number;
  /** Exact expected size; a different announced or received size fails early. */
  expectedBytes?: number;
  /** Called after every received chunk; `total` is the Content-Length when the server sent one.
   *  An exception thrown here stops the whole download and is rethrown. */
  onProgress?: (received: number, total?: number) => void;
  /** Aborting stops the download, removes the temp file and rejects with `signal.reason`. */
  signal?: AbortSignal;
}

export interface DownloadResult {
  /** Absolute path of the verified file. */
  path: string;
  /** The mirror URL (as listed in `urls`) the bytes came from; null when served from cache. */
  url: string | null;
  bytes: number;
  /** Lower-case hex sha256 of the file. */
  sha256: string;
  cached: boolean;
}

export interface FailedAttempt {
  url: string;
  reason: string;
}

/** Every URL failed; `attempts` holds one reason per URL, in the order tried. */
export class DownloadError extends Error {
  readonly dest: string;
  readonly attempts: readonly FailedAttempt[];

  constructor(dest: string, attempts: readonly FailedAttempt[]) {
    // The message reaches logs and the terminal: no password or signature of a URL in it.
    const lines = attempts.map((a) => `  - ${redactUrl(a.url)}: ${redactText(a.reason)}`);
    super(`download of ${dest} failed from every URL:\n${lines.join('\n')}`);
    this.name = 'DownloadError';
    this.dest = dest;
    this.attempts = attempts;
  }
}

export const DEFAULT_TIMEOUT_MS = 10 * 60_000;
export const DEFAULT_IDLE_TIMEOUT_MS = 30_000;
export const MAX_REDIRECTS = 5;
/** `.part-*` files older than this are leftovers of a killed process and are swept. */
const STALE_PART_AGE_MS = 24 * 3600_000;
const REDIRECT_STATUSES = new Set([301, 302, 303, 307, 308]);
const USER_AGENT = 'shelfwatch-downloader';
/** setTimeout's largest delay. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/** Streaming sha256 of a file, lower-case hex. */
export async function sha256File(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

export async function downloadVerified(options: DownloadOptions): Promise<DownloadResult> {
  const o = normalizeOptions(options);
  o.signal?.throwIfAborted();

  const cached = await findCached(o);
  if (cached) return cached;

  const dir = dirname(o.dest);
  try {
    await mkdir(dir, { recursive: true });
  } catch (err) {
    throw new Error(`cannot create directory ${dir} for ${o.dest}: ${(err as Error).message}`, { cause: err });
  }
  await sweepStaleParts(o.dest);

  const failures: FailedAttempt[] = [];
  for (const url of o.urls) {
    o.signal?.throwIfAborted();
    const outcome = await downloadFrom(url, o);
    if (outcome.kind === 'ok') return outcome.result;
    if (outcome.kind === 'aborted') throw o.signal?.reason ?? new Error('download aborted');
    failures.push({ url, reason: outcome.reason });
  }
  throw new DownloadError(o.dest, failures);
}

// ---------------------------------------------------------------------------------------------

interface Resolved {
  urls: string[];
  sha256: string;
  dest: string;
  timeoutMs: number;
  idleTimeoutMs: number;
  maxBytes?: number;
  expectedBytes?: number;
  onProgress?: (received: number, total?: number) => void;
  signal?: AbortSignal;
}

function normalizeOptions(options: DownloadOptions): Resolved {
  const where = 'downloadVerified';
  const { urls, sha256, dest } = options;
  if (!Array.isArray(urls) || urls.length === 0 || !urls.every((u) => typeof u === 'string')) {
    throw new TypeError(`${where}: urls must be a non-empty array of strings (got ${JSON.stringify(urls)})`);
  }
  if (typeof sha256 !== 'string' || !/^[0-9a-fA-F]{64}$/.test(sha256)) {
    throw new TypeError(`${where}: sha256 must be 64 hex digits (got ${JSON.stringify(sha256)})`);
  }
  if (typeof dest !== 'string' || dest === '') {
    throw new TypeError(`${where}: dest must be a non-empty path (got ${JSON.stringify(dest)})`);
  }
  const duration = (name: string, value: number | undefined, fallback: number): number => {
    if (value === undefined) return fallback;
    if (!Number.isFinite(value) || value <= 0 || value > MAX_TIMER_MS) {
      throw new RangeError(`${where}: ${name} must be a positive number of milliseconds ≤ ${MAX_TIMER_MS} (got ${value})`);
    }
    return value;
  };
  const count = (name: string, value: number | undefined, min: number): number | undefined => {
    if (value === undefined) return undefined;
    if (!Number.isSafeInteger(value) || value < min) {
      throw new RangeError(`${where}: ${name} must be an integer ≥ ${min} (got ${value})`);
    }
    return value;
  };
  const maxBytes = count('maxBytes', options.maxBytes, 1);
  const expectedBytes = count('expectedBytes', options.expectedBytes, 0);
  if (maxBytes !== undefined && expectedBytes !== undefined && expectedBytes > maxBytes) {
    throw new RangeError(`${where}: expectedBytes (${expectedBytes}) exceeds maxBytes (${maxBytes})`);
  }
  return {
    urls: [...urls],
    sha256: sha256.toLowerCase(),
    dest: resolve(dest),
    timeoutMs: duration('timeoutMs', options.timeoutMs, DEFAULT_TIMEOUT_MS),
    idleTimeoutMs: duration('idleTimeoutMs', options.idleTimeoutMs, DEFAULT_IDLE_TIMEOUT_MS),
    maxBytes,
    expectedBytes,
    onProgress: options.onProgress,
    signal: options.signal,
  };
}

/** The verified existing `dest`, or null when it is missing or stale. */
async function findCached(o: Resolved): Promise<DownloadResult | null> {
  let info;
  try {
    info = await stat(o.dest);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new Error(`cannot inspect ${o.dest}: ${(err as Error).message}`, { cause: err });
  }
  if (!info.isFile()) throw new Error(`${o.dest} exists and is not a regular file`);
  if (o.expectedBytes !== undefined && info.size !== o.expectedBytes) return null;
  const digest = await sha256File(o.dest);
  if (digest !== o.sha256) return null;
  return { path: o.dest, url: null, bytes: info.size, sha256: digest, cached: true };
}

/** Remove `<dest>.part-*` files a killed process left behind long ago. Best effort: a young
 *  part file may belong to a concurrent download and is left alone. */
async function sweepStaleParts(dest: string): Promise<void> {
  const dir = dirname(dest);
  const prefix = `${basename(dest)}.part-`;
  let names: string[];
  try {
    names = await readdir(dir);
  } catch {
    return;
  }
  const now = Date.now();
  for (const name of names) {
    if (!name.startsWith(prefix)) continue;
    const path = join(dir, name);
    try {
      const info = await stat(path);
      if (info.isFile() && now - info.mtimeMs > STALE_PART_AGE_MS) await rm(path, { force: true });
    } catch {
      // Gone already or not ours to remove: ignore.
    }
  }
}

type Outcome =
  | { kind: 'ok'; result: DownloadResult }
  | { kind: 'failed'; reason: string }
  | { kind: 'aborted' };

/** A reason for one URL to fail; the next mirror is tried. */
class AttemptFailed extends Error {}

/** Not the mirror's fault (local disk, caller callback): stop trying and rethrow `cause`. */
class Fatal extends Error {
  constructor(readonly original: unknown) {
    super('fatal');
  }
}

async function downloadFrom(listedUrl: string, o: Resolved): Promise<Outcome> {
  let start: URL;
  try {
    start = new URL(listedUrl);
  } catch {
    return { kind: 'failed', reason: 'invalid URL' };
  }
  if (!isHttp(start)) {
    return { kind: 'failed', reason: `unsupported scheme '${start.protocol}' (only http: and https:)` };
  }

  const tmp = `${o.dest}.part-${randomBytes(6).toString('hex')}`;
  const guard = new TransferGuard(o.timeoutMs, o.idleTimeoutMs, o.signal);
  const where = { url: start };
  let file: FileHandle | undefined;
  let tmpCreated = false;
  try {
    const res = await openResponse(start, guard, where);
    const status = res.statusCode ?? 0;
    if (status >= 400) throw new AttemptFailed(`HTTP ${status}${res.statusMessage ? ` ${res.statusMessage}` : ''}`);
    if (status !== 200) throw new AttemptFailed(`unexpected HTTP status ${status} (expected 200)`);

    const announced = parseContentLength(res.headers['content-length']);
    if (announced !== undefined && o.maxBytes !== undefined && announced > o.maxBytes) {
      throw new AttemptFailed(`too large: server announces ${announced} bytes, maxBytes is ${o.maxBytes}`);
    }
    if (announced !== undefined && o.expectedBytes !== undefined && announced !== o.expectedBytes) {
      throw new AttemptFailed(`size mismatch: server announces ${announced} bytes, expected ${o.expectedBytes}`);
    }
    const total = announced ?? o.expectedBytes;

    file = await local(`create ${tmp}`, () => open(tmp, 'wx', 0o644));
    tmpCreated = true;
    const hash = createHash('sha256');
    let received = 0;
    try {
      for await (const chunk of res as AsyncIterable<Buffer>) {
        guard.pauseIdle(); // a slow disk or progress callback is this side's time, not the server's silence
        received += chunk.length;
        if (o.maxBytes !== undefined && received > o.maxBytes) {
          throw new AttemptFailed(`exceeds maxBytes (more than ${o.maxBytes} bytes)`);
        }
        if (o.expectedBytes !== undefined && received > o.expectedBytes) {
          throw new AttemptFailed(`size mismatch: more than the expected ${o.expectedBytes} bytes`);
        }
        hash.update(chunk);
        await local(`write ${tmp}`, () => writeAll(file!, chunk));
        if (o.onProgress) {
          try {
            o.onProgress(received, announced);
          } catch (err) {
            throw new Fatal(err);
          }
        }
        guard.touch();
      }
    } catch (err) {
      if (err instanceof AttemptFailed || err instanceof Fatal || guard.failure) throw err;
      // The connection broke mid-body (Node reports 'aborted' / ECONNRESET).
      if (total !== undefined) throw new AttemptFailed(`truncated (got ${received} of ${total} bytes)`);
      throw new AttemptFailed(`truncated (got ${received} bytes, then: ${(err as Error).message})`);
    }
    if (guard.failure) throw guard.failure;
    if (total !== undefined && received !== total) {
      throw new AttemptFailed(`truncated (got ${received} of ${total} bytes)`);
    }
    const digest = hash.digest('hex');
    if (digest !== o.sha256) {
      // A text body where a binary file was expected is most often a login or error page.
      const type = res.headers['content-type'];
      const hint = type && /^text\//i.test(type) ? ` (the server sent ${type.split(';')[0]!.trim()}, not a binary file)` : '';
      throw new AttemptFailed(`sha256 mismatch: expected ${o.sha256}, got ${digest}${hint}`);
    }
    guard.stop();

    const handle = file;
    await local(`fsync ${tmp}`, () => handle.sync());
    file = undefined;
    await local(`close ${tmp}`, () => handle.close());
    await local(`rename ${tmp} to ${o.dest}`, () => rename(tmp, o.dest));
    tmpCreated = false;
    await syncDirectory(dirname(o.dest));
    return { kind: 'ok', result: { path: o.dest, url: listedUrl, bytes: received, sha256: digest, cached: false } };
  } catch (err) {
    if (err instanceof Fatal) throw err.original;
    if (guard.userAborted) return { kind: 'aborted' };
    let reason: string;
    if (guard.failure) reason = guard.failure.message;
    else if (err instanceof AttemptFailed) reason = err.message;
    else reason = (err as Error).message || String(err);
    // Where a redirect led: often a pre-signed URL whose signature/token must not be printed.
    if (where.url.href !== start.href) reason += ` (at ${redactUrl(where.url.href)})`;
    return { kind: 'failed', reason };
  } finally {
    // A failed attempt may leave a response unread (an error status, a size refused up front, a
    // local write error): destroy it, or its socket stays open and keeps the process alive.
    guard.release();
    await file?.close().catch(() => undefined);
    if (tmpCreated) await rm(tmp, { force: true }).catch(() => undefined);
  }
}

/** Run a local file-system step; its failure is fatal, with the step named. */
async function local<T>(what: string, step: () => Promise<T>): Promise<T> {
  try {
    return await step();
  } catch (err) {
    throw new Fatal(new Error(`cannot ${what}: ${(err as Error).message}`, { cause: err }));
  }
}

async function writeAll(file: FileHandle, chunk: Buffer): Promise<void> {
  let offset = 0;
  while (offset < chunk.length) {
    const { bytesWritten } = await file.write(chunk, offset, chunk.length - offset);
    offset += bytesWritten;
  }
}

/** fsync the directory so the rename itself survives a power cut. Not all platforms allow it. */
async function syncDirectory(dir: string): Promise<void> {
  try {
    const handle = await open(dir, 'r');
    try {
      await handle.sync();
    } finally {
      await handle.close();
    }
  } catch {
    // Best effort.
  }
}

function isHttp(url: URL): boolean {
  return url.protocol === 'http:' || url.protocol === 'https:';
}

function parseContentLength(value: string | undefined): number | undefined {
  if (value === undefined || !/^\d+$/.test(value)) return undefined;
  const n = Number(value);
  return Number.isSafeInteger(n) ? n : undefined;
}

/** GET `start`, following up to MAX_REDIRECTS redirects; `where.url` tracks the current URL. */
async function openResponse(start: URL, guard: TransferGuard, where: { url: URL }): Promise<IncomingMessage> {
  let url = start;
  for (let redirects = 0; ; redirects++) {
    where.url = url;
    const res = await get(url, guard);
    const status = res.statusCode ?? 0;
    if (!REDIRECT_STATUSES.has(status)) return res;
    res.destroy();
    const location = res.headers.location;
    if (!location) throw new AttemptFailed(`HTTP ${status} redirect without a Location header`);
    if (redirects === MAX_REDIRECTS) throw new AttemptFailed(`too many redirects (more than ${MAX_REDIRECTS})`);
    let next: URL;
    try {
      next = new URL(location, url);
    } catch {
      throw new AttemptFailed(`redirect to an invalid Location ${JSON.stringify(redactText(location))}`);
    }
    if (!isHttp(next)) {
      throw new AttemptFailed(`redirect to unsupported scheme '${next.protocol}' (${redactUrl(next.href)})`);
    }
    url = next;
    guard.touch();
  }
}

function get(url: URL, guard: TransferGuard): Promise<IncomingMessage> {
  return new Promise((resolvePromise, reject) => {
    const client = url.protocol === 'https:' ? https : http;
    // agent: false → a fresh connection per request, closed afterwards: downloads are rare and
    // a pooled keep-alive socket would outlive the transfer.
    const req = client.get(
      url,
      { agent: false, headers: { 'user-agent': USER_AGENT, accept: '*/*', 'accept-encoding': 'identity' } },
      (res) => {
        // Errors surface through the body iterator or the guard; never as an unhandled event.
        res.on('error', () => undefined);
        guard.touch();
        guard.track(res);
        resolvePromise(res);
      },
    );
    req.on('error', reject);
    guard.track(req);
  });
}

/** Enforces the whole-transfer and idle timeouts and the caller's abort signal on the streams
 *  of one attempt, by destroying them with a reason. */
class TransferGuard {
  failure: AttemptFailed | undefined;
  userAborted = false;
  private readonly streams: Array<ClientRequest | IncomingMessage> = [];
  private idleTimer: NodeJS.Timeout | undefined;
  private idleCheck: NodeJS.Immediate | undefined;
  /** Bumped by every touch(): lets the idle check see data that arrived after its timer fired. */
  private activity = 0;
  private readonly totalTimer: NodeJS.Timeout;
  private readonly onAbort = (): void => {
    this.userAborted = true;
    this.fail('aborted');
  };

  constructor(
    totalMs: number,
    private readonly idleMs: number,
    private readonly signal: AbortSignal | undefined,
  ) {
    this.totalTimer = setTimeout(() => this.fail(`timed out after ${seconds(totalMs)} (whole transfer)`), totalMs);
    this.touch();
    signal?.addEventListener('abort', this.onAbort, { once: true });
  }

  track(stream: ClientRequest | IncomingMessage): void {
    this.streams.push(stream);
    if (this.failure) stream.destroy(this.failure);
  }

  /** Headers arrived, or a chunk was handled and the next is awaited: restart the idle clock. */
  touch(): void {
    this.activity++;
    this.armIdle();
  }

  /** A chunk arrived and is being handled: the idle clock waits for the next touch(). The
   *  whole-transfer timeout still runs. */
  pauseIdle(): void {
    this.activity++;
    clearTimeout(this.idleTimer);
  }

  private armIdle(): void {
    clearTimeout(this.idleTimer);
    const seen = this.activity;
    this.idleTimer = setTimeout(() => this.idleElapsed(seen), this.idleMs);
  }

  /** The idle clock ran out. If this process was stalled (a GC pause, a starved CPU), the timer
   *  comes due before the event loop has read what the server sent meanwhile: give it one poll
   *  phase first, and only then call the server silent. */
  private idleElapsed(seen: number): void {
    this.idleCheck = setImmediate(() => {
      this.idleCheck = undefined;
      if (this.failure || this.activity !== seen) return; // data came: the clock was restarted
      this.fail(`no data for ${seconds(this.idleMs)}`);
    });
  }

  fail(reason: string): void {
    if (this.failure) return;
    this.failure = new AttemptFailed(reason);
    for (const stream of this.streams) stream.destroy(this.failure);
  }

  stop(): void {
    clearTimeout(this.idleTimer);
    clearImmediate(this.idleCheck);
    clearTimeout(this.totalTimer);
    this.signal?.removeEventListener('abort', this.onAbort);
  }

  /** stop(), and destroy every stream of the attempt (a no-op for those already finished). */
  release(): void {
    this.stop();
    for (const stream of this.streams) stream.destroy();
  }
}

function seconds(ms: number): string {
  return `${Number((ms / 1000).toFixed(3))} s`;
}
