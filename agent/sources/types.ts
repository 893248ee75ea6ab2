/**
 * Shared types of the camera sources: the `cameras[].source` config shapes, the per-source status
 * the agent exposes in metrics and MQTT status, and the injected logger/clock.
 */
import type { Observable } from 'rxjs';
import type { Frame } from '../../pipelines/types.js';
import type { BackoffOptions } from './backoff.js';

export type LogLevel = 'trace' | 'debug' | 'info' | 'warn' | 'error';
/** Injected logger: the agent routes it to its JSON-lines logger. */
export type SourceLogger = (level: LogLevel, msg: string, fields?: Record<string, unknown>) => void;
/** Wall clock in ms since the epoch; injected so tests can pin capture times. */
export type Clock = () => number;

export const silentLogger: SourceLogger = () => {};

/** `{ type: http-snapshot, url, timeoutMs, headers }` — one GET per scan. */
export interface HttpSnapshotSpec {
  type: 'http-snapshot';
  url: string;
  /** Whole-request timeout (connect, headers and body), default 5000. */
  timeoutMs?: number;
  /** Extra request headers, e.g. `Authorization`. */
  headers?: Record<string, string>;
  /** Largest accepted body, default 20 MiB. */
  maxBytes?: number;
}

/** `{ type: stream, input, fps, transport, loop }` — ffmpeg reads RTSP, HTTP (MJPEG), V4L2 or a file. */
export interface StreamSpec {
  type: 'stream';
  /** rtsp://…, rtsps://…, http(s)://…, /dev/videoN, or a video file path. */
  input: string;
  /** Frames per second ffmpeg outputs (`-vf fps=N`), default 1. */
  fps?: number;
  /** RTSP transport, default tcp. */
  transport?: 'tcp' | 'udp';
  /** File input only: loop forever (`-stream_loop -1`). */
  loop?: boolean;
  /** File input only: read at native speed (`-re`). Default: same as `loop`. */
  realtime?: boolean;
  /** JPEG quality ffmpeg uses (`-q:v`, 2 best … 31 worst), default 3. */
  quality?: number;
}

/** `{ type: folder, path, pattern, deleteAfter }` — new image files dropped into a directory. */
export interface FolderSpec {
  type: 'folder';
  path: string;
  /** Glob on the file name (`*`, `?`, `{a,b}`, `[abc]`), case-insensitive. Default: common image extensions. */
  pattern?: string;
  deleteAfter?: boolean;
  /** Also emit files already present at start (default false). */
  includeExisting?: boolean;
  /** A file counts as written once its size has not changed for this long (ms), default 1000. */
  stableMs?: number;
}

/** `{ type: replay, files | dir, intervalMs, loop }` — an image sequence, for tests and field validation. */
export interface ReplaySpec {
  type: 'replay';
  files?: string[];
  /** Directory whose image files are replayed in natural name order (frame2 before frame10). */
  dir?: string;
  /** Pause between frames; 0 = as fast as the consumer takes them. Default 1000. */
  intervalMs?: number;
  loop?: boolean;
}

export type SourceSpec = HttpSnapshotSpec | StreamSpec | FolderSpec | ReplaySpec;
export type SourceKind = SourceSpec['type'];

export type SourceState = 'starting' | 'running' | 'reconnecting' | 'failed' | 'stopped';

export interface SourceStatus {
  state: SourceState;
  /** Capture time of the newest frame, ms since the epoch; null before the first. */
  lastFrameAt: number | null;
  frames: number;
  errors: number;
  lastError: string | null;
  /** How many times the source restarted (or retried) after a failure. */
  reconnects: number;
}

export interface SourceOptions {
  logger?: SourceLogger;
  clock?: Clock;
  backoff?: BackoffOptions;
}

/** What every source has: identity and status. */
export interface CameraSourceBase {
  readonly camera: string;
  readonly kind: SourceKind;
  /** Human-readable origin for logs (credentials redacted). */
  readonly origin: string;
  /** Snapshot of the current status. */
  status(): SourceStatus;
  /** Current status, then every change. */
  readonly status$: Observable<SourceStatus>;
}

/** A source that produces frames on its own (stream, folder, replay). */
export interface PushSource extends CameraSourceBase {
  readonly mode: 'push';
  /** Cold: subscribing starts the source, unsubscribing stops it and frees everything. */
  readonly frames$: Observable<Frame>;
}

/** A source that produces a frame when asked (http-snapshot). */
export interface PullSource extends CameraSourceBase {
  readonly mode: 'pull';
  /** Take one frame now; rejects with a clear error (status counts it). */
  snapshot(signal?: AbortSignal): Promise<Frame>;
  /** Cold: one snapshot per trigger; failures are counted and retried with backoff, never thrown. */
  poll(trigger$: Observable<unknown>): Observable<Frame>;
}

export type CameraSource = PushSource | PullSource;
