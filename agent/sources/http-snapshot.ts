/**
 * `http-snapshot` source: one GET of a camera's snapshot URL per scan. A pull source — the
 * schedule drives it through `poll(trigger$)`; `snapshot()` takes one frame on demand.
 *
 * Every request has one deadline covering connect, headers and body, so a camera that accepts
 * and then hangs (or trickles bytes) cannot stall a scan. The body must be an image by its magic
 * bytes: a camera that answers with its HTML login page is reported as such. Redirects are
 * followed on the camera's own host only. Passwords (userinfo or query) never reach logs.
 */
import { Observable } from 'rxjs';
import type { Frame } from '../../pipelines/types.js';
import { Backoff, MAX_TIMER_MS } from './backoff.js';
import { basicAuthorization, DigestAuth, parseChallenge, splitCredentials, type Credentials } from './http-auth.js';
import { headerProblem } from './http-headers.js';
import { checkImage } from './image-magic.js';
import { redactUrl } from '../redact.js';
import { SourceTracker } from './status.js';
import { silentLogger, type HttpSnapshotSpec, type PullSource, type SourceOptions, type SourceStatus } from './types.js';

export const DEFAULT_SNAPSHOT_TIMEOUT_MS = 5000;
export const DEFAULT_SNAPSHOT_MAX_BYTES = 20 * 1024 * 1024;
/** Redirects followed per snapshot; cameras use one (`/snapshot.jpg` → `/cgi-bin/…`), a loop many. */
export const MAX_SNAPSHOT_REDIRECTS = 5;

class AbortedError extends Error {
  constructor() {
    super('snapshot aborted');
    this.name = 'AbortError';
  }
}

export class HttpSnapshotSource implements PullSource {
  readonly kind = 'http-snapshot' as const;
  readonly mode = 'pull' as const;
  readonly origin: string;
  readonly status$: Observable<SourceStatus>;
  private readonly url: string;
  private readonly credentials?: Credentials;
  private readonly timeoutMs: number;
  private readonly maxBytes: number;
  private readonly headers: Record<string, string>;
  private readonly tracker: SourceTracker;
  private readonly options: SourceOptions;
  /** Answer to the camera's last challenge, reused until it is refused. */
  private auth?: { kind: 'basic' } | { kind: 'digest'; digest: DigestAuth };

  constructor(
    readonly camera: string,
    spec: HttpSnapshotSpec,
    options: SourceOptions = {},
  ) {
    const { url, credentials, redacted } = splitCredentials(spec.url);
    this.url = url;
    this.credentials = credentials;
    this.origin = redacted;
    this.timeoutMs = spec.timeoutMs ?? DEFAULT_SNAPSHOT_TIMEOUT_MS;
    this.maxBytes = spec.maxBytes ?? DEFAULT_SNAPSHOT_MAX_BYTES;
    // Beyond MAX_TIMER_MS every request would time out after 1 ms.
    if (!(this.timeoutMs > 0 && this.timeoutMs <= MAX_TIMER_MS)) throw new Error(`camera ${camera}: http-snapshot timeoutMs must be > 0 and <= ${MAX_TIMER_MS}, got ${spec.timeoutMs}`);
    if (!(this.maxBytes > 0 && Number.isFinite(this.maxBytes))) throw new Error(`camera ${camera}: http-snapshot maxBytes must be a finite number > 0, got ${spec.maxBytes}`);
    this.headers = checkHeaders(camera, spec.headers ?? {});
    this.options = options;
    this.tracker = new SourceTracker(camera, 'http-snapshot', options.clock ?? Date.now, options.logger ?? silentLogger);
    this.status$ = this.tracker.status$;
  }

  status(): SourceStatus {
    return this.tracker.status();
  }

  async snapshot(signal?: AbortSignal): Promise<Frame> {
    const deadline = new AbortController();
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      deadline.abort();
    }, this.timeoutMs);
    const onAbort = () => deadline.abort();
    signal?.addEventListener('abort', onAbort, { once: true });
    try {
      if (signal?.aborted) throw new AbortedError();
      const data = await this.fetchImage(deadline.signal);
      return this.tracker.frame(data, this.origin);
    } catch (err) {
      if (signal?.aborted && !timedOut) throw new AbortedError();
      const error = timedOut ? new Error(`GET ${this.origin} timed out after ${this.timeoutMs} ms`) : describeFetchError(err, this.origin);
      this.tracker.error(error, { url: this.origin });
      throw error;
    } finally {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
    }
  }

  poll(trigger$: Observable<unknown>): Observable<Frame> {
    return new Observable<Frame>((subscriber) => {
      const backoff = new Backoff(this.options.backoff);
      let inFlight: AbortController | undefined;
      let retry: NodeJS.Timeout | undefined;
      let triggersDone = false;
      this.tracker.setState('starting');

      const attempt = () => {
        const ac = new AbortController();
        inFlight = ac;
        this.snapshot(ac.signal).then(
          (frame) => {
            inFlight = undefined;
            if (ac.signal.aborted) return;
            backoff.reset();
            subscriber.next(frame);
            if (triggersDone) subscriber.complete();
          },
          () => {
            inFlight = undefined;
            if (ac.signal.aborted) return;
            if (triggersDone) return subscriber.complete();
            // Retry on our own rather than wait for the next scan, which may be minutes away;
            // triggers that come while a retry is pending are folded into it.
            const delay = backoff.next();
            this.tracker.reconnecting(delay);
            retry = setTimeout(() => {
              retry = undefined;
              attempt();
            }, delay);
          },
        );
      };

      const triggers = trigger$.subscribe({
        next: () => {
          if (inFlight || retry) {
            this.tracker.log('debug', 'scan folded into the pending snapshot', { pending: inFlight ? 'request' : 'retry' });
            return;
          }
          attempt();
        },
        error: (err) => subscriber.error(err),
        complete: () => {
          triggersDone = true;
          if (retry) {
            clearTimeout(retry);
            retry = undefined;
          }
          if (!inFlight) subscriber.complete();
        },
      });

      return () => {
        triggers.unsubscribe();
        inFlight?.abort();
        if (retry) clearTimeout(retry);
        this.tracker.stop();
      };
    });
  }

  private async fetchImage(signal: AbortSignal): Promise<Buffer> {
    let url = this.url;
    let res: Response;
    for (let redirects = 0; ; redirects++) {
      res = await this.request(url, signal);
      if (res.status === 401 && this.credentials) {
        // First contact, or the camera refused a reused challenge (stale nonce): answer the new one.
        const challenge = parseChallenge(res.headers.get('www-authenticate') ?? '');
        await res.body?.cancel();
        if (challenge?.scheme === 'digest') this.auth = { kind: 'digest', digest: new DigestAuth(challenge, this.credentials) };
        else if (challenge?.scheme === 'basic') this.auth = { kind: 'basic' };
        else throw new Error(`GET ${this.origin} answered HTTP 401 with an unsupported challenge ${JSON.stringify(res.headers.get('www-authenticate'))}`);
        res = await this.request(url, signal);
      }
      if (![301, 302, 303, 307, 308].includes(res.status)) break;
      await res.body?.cancel().catch(() => {});
      url = this.redirectTarget(url, res.headers.get('location'), redirects);
    }
    if (res.status < 200 || res.status > 299) {
      await res.body?.cancel().catch(() => {});
      const hint = res.status === 401 || res.status === 403 ? ' (check the credentials / Authorization header)' : '';
      throw new Error(`GET ${this.origin} answered HTTP ${res.status} ${res.statusText}${hint}`.trimEnd());
    }
    const declared = Number(res.headers.get('content-length'));
    if (declared > this.maxBytes) {
      await res.body?.cancel().catch(() => {});
      throw new Error(`GET ${this.origin}: body of ${declared} bytes exceeds maxBytes ${this.maxBytes}`);
    }
    const data = await readLimited(res, this.maxBytes, this.origin);
    checkImage(data, `GET ${this.origin}`, res.headers.get('content-type'));
    return data;
  }

  /**
   * Redirects are followed by hand, and only on the camera's own host (http → https allowed):
   * fetch would send the configured headers (API keys) to any host a camera points at, and
   * report a loop only as "redirect count exceeded".
   */
  private redirectTarget(from: string, location: string | null, redirects: number): string {
    if (!location) throw new Error(`GET ${this.origin} answered a redirect without a Location header`);
    let to: URL;
    try {
      to = new URL(location, from);
    } catch {
      throw new Error(`GET ${this.origin} redirected to an invalid URL ${JSON.stringify(redactUrl(location))}`);
    }
    const where = redactUrl(to.href);
    if (redirects >= MAX_SNAPSHOT_REDIRECTS) throw new Error(`GET ${this.origin}: more than ${MAX_SNAPSHOT_REDIRECTS} redirects (a loop?), the last to ${where}`);
    const start = new URL(this.url);
    const sameHost = to.hostname === start.hostname;
    const schemeOk = to.protocol === start.protocol || (start.protocol === 'http:' && to.protocol === 'https:');
    if (!sameHost || !schemeOk) {
      const why = to.protocol !== 'http:' && to.protocol !== 'https:' ? 'not an http(s) URL' : !sameHost ? 'another host' : 'a downgrade to http';
      throw new Error(`GET ${this.origin} redirected to ${where}, ${why}; not followed — put the snapshot URL the camera means in the config`);
    }
    return to.href;
  }

  private request(url: string, signal: AbortSignal): Promise<Response> {
    const headers = { ...this.headers };
    if (this.credentials && this.auth?.kind === 'basic') headers.authorization = basicAuthorization(this.credentials);
    if (this.auth?.kind === 'digest') headers.authorization = this.auth.digest.authorization('GET', url);
    return fetch(url, { headers, signal, redirect: 'manual' });
  }
}

async function readLimited(res: Response, maxBytes: number, origin: string): Promise<Buffer> {
  if (!res.body) return Buffer.alloc(0);
  const chunks: Uint8Array[] = [];
  let total = 0;
  const reader = res.body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    total += value.length;
    if (total > maxBytes) {
      await reader.cancel().catch(() => {});
      throw new Error(`GET ${origin}: body exceeds maxBytes ${maxBytes}`);
    }
    chunks.push(value);
  }
  return Buffer.concat(chunks, total);
}

/** Header names and values fetch would reject fail here, naming the header, not on every request. */
function checkHeaders(camera: string, headers: Record<string, string>): Record<string, string> {
  for (const [name, value] of Object.entries(headers)) {
    const what = `camera ${camera}: http-snapshot header ${JSON.stringify(name)}`;
    // The value is not quoted: it is often a secret.
    if (typeof value !== 'string') throw new Error(`${what} must be a string, got ${typeof value}`);
    const problem = headerProblem(name, value);
    if (problem === 'name') throw new Error(`${what} is not a valid header name`);
    if (problem === 'value') throw new Error(`${what} has an invalid value (line break, NUL or a character above U+00FF)`);
  }
  return { ...headers };
}

/** fetch's own errors say "fetch failed"; the cause has the useful part (ECONNREFUSED …). */
function describeFetchError(err: unknown, origin: string): Error {
  if (!(err instanceof Error)) return new Error(`GET ${origin} failed: ${String(err)}`);
  if (err.message.startsWith(`GET ${origin}`)) return err;
  const cause = (err as { cause?: unknown }).cause;
  const detail = cause instanceof Error ? cause.message : err.message;
  return new Error(`GET ${origin} failed: ${detail}`);
}
