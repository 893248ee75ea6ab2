/**
 * Camera sources: build one from its config shape, and combine it with the camera's schedule
 * into the stream of frames to scan.
 */
import { Observable, type MonoTypeOperatorFunction } from 'rxjs';
import type { Frame } from '../../pipelines/types.js';
import { capFps, latestFrame, scanTrigger, type ScanSpec } from '../schedule.js';
import { FfmpegStreamSource, type FfmpegStreamOptions } from './ffmpeg-stream.js';
import { FolderWatchSource, type FolderWatchOptions } from './folder-watch.js';
import { HttpSnapshotSource } from './http-snapshot.js';
import { ReplaySource, type ReplayOptions } from './replay.js';
import type { CameraSource, Clock, SourceSpec } from './types.js';

export type CreateSourceOptions = FfmpegStreamOptions & FolderWatchOptions & ReplayOptions;

export function createSource(cameraId: string, spec: SourceSpec, options: CreateSourceOptions = {}): CameraSource {
  switch (spec.type) {
    case 'http-snapshot':
      return new HttpSnapshotSource(cameraId, spec, options);
    case 'stream':
      return new FfmpegStreamSource(cameraId, spec, options);
    case 'folder':
      return new FolderWatchSource(cameraId, spec, options);
    case 'replay':
      return new ReplaySource(cameraId, spec, options);
    default: {
      const type = (spec as { type?: unknown }).type;
      throw new Error(`camera ${cameraId}: unknown source type ${JSON.stringify(type)} (expected http-snapshot, stream, folder or replay)`);
    }
  }
}

export interface CameraFeedSpec extends ScanSpec {
  id: string;
  source: SourceSpec;
}

/** `clock` (the wall clock) stamps frames and trigger ticks; frame rates and ages use the monotonic clock. */
export interface CameraFeedOptions extends CreateSourceOptions {
  /** Stream sources with a schedule: skip the latest frame if older than this at scan time. Default 3 frame periods + 10 s. */
  maxFrameAgeMs?: number;
  /** Time zone for cron expressions. */
  timezone?: string;
}

export interface CameraFeed {
  source: CameraSource;
  /** The frames to scan (cold; subscribe to start the camera). */
  scans$: Observable<Frame>;
}

/**
 * A camera's source plus its scan policy:
 * - http-snapshot: one GET per cron tick, or every 1/maxFps s when continuous (one is required);
 * - stream: the latest frame at each cron tick; every frame capped at maxFps when continuous;
 *   every frame ffmpeg outputs (at `fps`) when neither is given;
 * - folder: the latest file at each cron tick; when continuous, every file, but at most maxFps:
 *   of files that come sooner than 1/maxFps after the last one scanned, the newest is scanned
 *   once 1/maxFps has passed and the others are skipped (the newest file is never lost);
 * - replay: the latest file at each cron tick; when continuous, every file, paced to at most
 *   maxFps (the replay waits max(intervalMs, 1/maxFps) between files, nothing is skipped);
 * - folder/replay with neither: every file.
 */
export function createCameraFeed(camera: CameraFeedSpec, options: CameraFeedOptions = {}): CameraFeed {
  const triggerOptions = { clock: options.clock, timezone: options.timezone, logger: options.logger, camera: camera.id };
  const continuous = camera.source.type !== 'http-snapshot' && camera.schedule === undefined && camera.continuous !== undefined;
  // Validates maxFps (and "not both") before pacedReplay divides by it.
  if (continuous && camera.source.type === 'replay') scanTrigger(camera, triggerOptions);
  const source = createSource(camera.id, continuous ? pacedReplay(camera.source, camera.continuous!.maxFps) : camera.source, options);
  if (source.mode === 'pull') {
    return { source, scans$: source.poll(scanTrigger(camera, triggerOptions)) };
  }
  if (camera.schedule !== undefined) {
    const trigger$ = scanTrigger(camera, triggerOptions);
    const fps = camera.source.type === 'stream' ? (camera.source.fps ?? 1) : undefined;
    const maxAgeMs = options.maxFrameAgeMs ?? (fps !== undefined ? 3000 / fps + 10_000 : undefined);
    return { source, scans$: source.frames$.pipe(latestFrame(trigger$, { maxAgeMs })) };
  }
  if (continuous) {
    scanTrigger(camera, triggerOptions); // validates maxFps and "not both"
    const maxFps = camera.continuous!.maxFps;
    switch (camera.source.type) {
      case 'stream':
        return { source, scans$: source.frames$.pipe(capFps(maxFps)) };
      case 'folder':
        return { source, scans$: source.frames$.pipe(capFpsKeepLatest(maxFps)) };
      // replay: paced by the source itself (pacedReplay), so that no file of the sequence is skipped.
    }
  }
  return { source, scans$: source.frames$ };
}

/** A continuous replay waits at least 1/maxFps between files: `intervalMs` raised to it. */
function pacedReplay(spec: SourceSpec, maxFps: number): SourceSpec {
  if (spec.type !== 'replay') return spec;
  const intervalMs = spec.intervalMs ?? 1000;
  // A bad intervalMs is left for ReplaySource to report, not hidden behind the cap.
  if (!(intervalMs >= 0)) return spec;
  return { ...spec, intervalMs: Math.max(intervalMs, 1000 / maxFps) };
}

const monotonic: Clock = () => performance.now();

/**
 * At most `maxFps` values per second, never losing the newest: a value that comes sooner than
 * 1/maxFps after the last one let through is held (replacing any value already held) and let
 * through once 1/maxFps has passed. Completion waits for the held value. For sources whose next
 * value may be long in coming (a drop folder): `capFps` would drop the last file of a burst until
 * another one arrives. `clock`: a monotonic ms clock (default performance.now).
 */
export function capFpsKeepLatest<T>(maxFps: number, clock: Clock = monotonic): MonoTypeOperatorFunction<T> {
  if (typeof maxFps !== 'number' || !(maxFps > 0) || !Number.isFinite(maxFps)) {
    throw new Error(`capFpsKeepLatest: maxFps must be a positive number, got ${JSON.stringify(maxFps)}`);
  }
  const minGap = 1000 / maxFps;
  return (source) =>
    new Observable<T>((subscriber) => {
      let last = -Infinity;
      let held: { value: T } | undefined;
      let timer: NodeJS.Timeout | undefined;
      let sourceDone = false;
      const flush = () => {
        timer = undefined;
        const wait = last + minGap - clock();
        // Timers may fire a fraction of a millisecond early by this clock: wait out the rest.
        if (wait > 0) {
          timer = setTimeout(flush, Math.ceil(wait));
          return;
        }
        if (held) {
          const { value } = held;
          held = undefined;
          last = clock();
          subscriber.next(value);
        }
        if (sourceDone) subscriber.complete();
      };
      const subscription = source.subscribe({
        next: (value) => {
          if (timer === undefined && clock() - last >= minGap) {
            last = clock();
            subscriber.next(value);
            return;
          }
          held = { value };
          timer ??= setTimeout(flush, Math.max(0, Math.ceil(last + minGap - clock())));
        },
        error: (err) => subscriber.error(err),
        complete: () => {
          sourceDone = true;
          if (timer === undefined) subscriber.complete();
        },
      });
      return () => {
        subscription.unsubscribe();
        if (timer) clearTimeout(timer);
      };
    });
}

export { Backoff, type BackoffOptions } from './backoff.js';
export { classifyInput, ffmpegArgs, ffmpegMajorVersion, FfmpegStreamSource, parseFfmpegMajor, type FfmpegStreamOptions, type StreamInputKind } from './ffmpeg-stream.js';
export { DEFAULT_IMAGE_PATTERN, globToRegExp } from './file-pattern.js';
export { FolderWatchSource, type FolderWatchOptions } from './folder-watch.js';
export { DEFAULT_SNAPSHOT_MAX_BYTES, DEFAULT_SNAPSHOT_TIMEOUT_MS, HttpSnapshotSource } from './http-snapshot.js';
export { checkImage, detectImageFormat, type ImageFormat } from './image-magic.js';
export { JpegSplitter, type JpegSplitterStats } from './jpeg-splitter.js';
export { listImageFiles, ReplaySource, type ReplayOptions } from './replay.js';
export { SourceTracker } from './status.js';
export * from './types.js';
