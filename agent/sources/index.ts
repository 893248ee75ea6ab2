/**
 * Camera sources: build one from its config shape, and combine it with the camera's schedule
 * into the stream of frames to scan.
 */
import type { Observable } from 'rxjs';
import type { Frame } from '../../pipelines/types.js';
import { capFps, latestFrame, scanTrigger, type ScanSpec } from '../schedule.js';
import { FfmpegStreamSource, type FfmpegStreamOptions } from './ffmpeg-stream.js';
import { FolderWatchSource, type FolderWatchOptions } from './folder-watch.js';
import { HttpSnapshotSource } from './http-snapshot.js';
import { ReplaySource, type ReplayOptions } from './replay.js';
import type { CameraSource, SourceSpec } from './types.js';

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
 * - folder/replay: the latest file at each cron tick; otherwise every file.
 */
export function createCameraFeed(camera: CameraFeedSpec, options: CameraFeedOptions = {}): CameraFeed {
  const source = createSource(camera.id, camera.source, options);
  const triggerOptions = { clock: options.clock, timezone: options.timezone, logger: options.logger, camera: camera.id };
  if (source.mode === 'pull') {
    return { source, scans$: source.poll(scanTrigger(camera, triggerOptions)) };
  }
  if (camera.schedule !== undefined) {
    const trigger$ = scanTrigger(camera, triggerOptions);
    const fps = camera.source.type === 'stream' ? (camera.source.fps ?? 1) : undefined;
    const maxAgeMs = options.maxFrameAgeMs ?? (fps !== undefined ? 3000 / fps + 10_000 : undefined);
    return { source, scans$: source.frames$.pipe(latestFrame(trigger$, { maxAgeMs })) };
  }
  if (camera.continuous !== undefined && camera.source.type === 'stream') {
    scanTrigger(camera, triggerOptions); // validates maxFps and "not both"
    return { source, scans$: source.frames$.pipe(capFps(camera.continuous.maxFps)) };
  }
  return { source, scans$: source.frames$ };
}

export { Backoff, type BackoffOptions } from './backoff.js';
export { classifyInput, ffmpegArgs, FfmpegStreamSource, type FfmpegStreamOptions, type StreamInputKind } from './ffmpeg-stream.js';
export { DEFAULT_IMAGE_PATTERN, globToRegExp } from './file-pattern.js';
export { FolderWatchSource, type FolderWatchOptions } from './folder-watch.js';
export { DEFAULT_SNAPSHOT_MAX_BYTES, DEFAULT_SNAPSHOT_TIMEOUT_MS, HttpSnapshotSource } from './http-snapshot.js';
export { checkImage, detectImageFormat, type ImageFormat } from './image-magic.js';
export { JpegSplitter, type JpegSplitterStats } from './jpeg-splitter.js';
export { listImageFiles, ReplaySource, type ReplayOptions } from './replay.js';
export { SourceTracker } from './status.js';
export * from './types.js';
