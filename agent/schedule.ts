/**
 * When a camera is scanned: a cron schedule (node-cron 4, 5 fields or 6 with seconds) or
 * `continuous` frames capped at `maxFps`.
 *
 * - `scanTrigger(spec)` is the tick stream that drives a pull source (http-snapshot) or picks the
 *   latest frame of a push source;
 * - `capFps(maxFps)` thins a frame stream to at most maxFps, dropping frames that come too soon;
 * - `latestFrame(trigger$)` keeps only the newest frame of a stream and emits it when the trigger
 *   fires (no buffering: older frames are simply replaced).
 *
 * capFps and latestFrame measure intervals, so they default to the monotonic clock
 * (performance.now): a wall clock stepped back must not hold frames back until it catches up,
 * nor one stepped forward make every waiting frame look stale.
 */
import cron, { type ScheduledTask } from 'node-cron';
import { filter, interval, map, Observable, sample, type MonoTypeOperatorFunction, type OperatorFunction } from 'rxjs';
import type { Frame } from '../pipelines/types.js';
import type { Clock, SourceLogger } from './sources/types.js';

export interface ScanSpec {
  schedule?: string;
  continuous?: { maxFps: number };
}

export interface ScanTriggerOptions {
  clock?: Clock;
  /** IANA time zone for the cron expression; default the system's. */
  timezone?: string;
  logger?: SourceLogger;
  /** Names the camera in errors and logs. */
  camera?: string;
}

/**
 * Throws an Error naming the expression, `where` it came from, and each wrong field.
 * e.g. `invalid cron expression "61 * * * *" (cameras[0].schedule): minute: 61 is a invalid …`
 */
export function validateCron(expression: string, where = 'schedule'): void {
  if (typeof expression !== 'string' || expression.trim() === '') {
    throw new Error(`invalid cron expression ${JSON.stringify(expression)} (${where}): expected 5 fields (minute hour day month weekday) or 6 with seconds first`);
  }
  const result = cron.validateDetailed(expression);
  if (!result.valid) {
    const details = result.errors.map((e) => (e.field === 'expression' ? e.message : `${e.field}: ${e.message}`)).join('; ');
    throw new Error(`invalid cron expression ${JSON.stringify(expression)} (${where}): ${details}`);
  }
}

function validateMaxFps(maxFps: unknown, where: string): number {
  if (typeof maxFps !== 'number' || !(maxFps > 0) || !Number.isFinite(maxFps)) {
    throw new Error(`${where}.maxFps must be a positive number, got ${JSON.stringify(maxFps)}`);
  }
  return maxFps;
}

/**
 * Ticks (the clock's time) at each scan. Cron → one tick per match; continuous → one tick every
 * 1/maxFps seconds (the rate for polling a snapshot camera). Errors at call time on a bad spec.
 */
export function scanTrigger(spec: ScanSpec, clockOrOptions: Clock | ScanTriggerOptions = {}): Observable<number> {
  const options: ScanTriggerOptions = typeof clockOrOptions === 'function' ? { clock: clockOrOptions } : clockOrOptions;
  const clock = options.clock ?? Date.now;
  const where = options.camera ? `camera ${options.camera}` : 'scan';
  if (spec.schedule !== undefined && spec.continuous !== undefined) {
    throw new Error(`${where}: give either schedule or continuous, not both`);
  }
  if (spec.continuous !== undefined) {
    const maxFps = validateMaxFps(spec.continuous.maxFps, `${where} continuous`);
    return interval(1000 / maxFps).pipe(map(() => clock()));
  }
  if (spec.schedule === undefined) throw new Error(`${where}: needs a schedule (cron expression) or continuous: { maxFps }`);
  const expression = spec.schedule;
  validateCron(expression, `${where} schedule`);
  const log = options.logger;
  return new Observable<number>((subscriber) => {
    let task: ScheduledTask | undefined = cron.schedule(expression, () => subscriber.next(clock()), {
      timezone: options.timezone,
      noOverlap: false,
      // node-cron logs to the console by default; route it to the agent's logger.
      logger: log && {
        info: (m) => log('info', `cron: ${m}`, { camera: options.camera }),
        warn: (m) => log('warn', `cron: ${m}`, { camera: options.camera }),
        error: (m) => log('error', `cron: ${m instanceof Error ? m.message : m}`, { camera: options.camera }),
        debug: (m) => log('debug', `cron: ${m instanceof Error ? m.message : m}`, { camera: options.camera }),
      },
    });
    return () => {
      void task?.destroy();
      task = undefined;
    };
  });
}

const monotonic: Clock = () => performance.now();

/**
 * Let through at most `maxFps` values per second: a value that arrives sooner than 1/maxFps
 * after the last one let through is dropped (not delayed — a newer frame will come).
 * `clock`: a monotonic ms clock (default performance.now).
 */
export function capFps<T>(maxFps: number, clock: Clock = monotonic): MonoTypeOperatorFunction<T> {
  const minGap = 1000 / validateMaxFps(maxFps, 'capFps');
  return (source) =>
    new Observable<T>((subscriber) => {
      let last = -Infinity;
      return source.subscribe({
        next: (value) => {
          const now = clock();
          if (now - last < minGap) return;
          last = now;
          subscriber.next(value);
        },
        error: (err) => subscriber.error(err),
        complete: () => subscriber.complete(),
      });
    });
}

export interface LatestFrameOptions {
  /** Skip a frame that arrived longer ago than this at trigger time (a stalled camera), default: no limit. */
  maxAgeMs?: number;
  /** Monotonic ms clock for the age (default performance.now). */
  clock?: Clock;
}

/**
 * The newest frame at each trigger. A frame is emitted at most once: if no new frame arrived
 * since the last trigger, the trigger is skipped. Holds one frame at most.
 */
export function latestFrame(trigger$: Observable<unknown>, options: LatestFrameOptions = {}): OperatorFunction<Frame, Frame> {
  const clock = options.clock ?? monotonic;
  const maxAge = options.maxAgeMs;
  // The age counts from the frame's arrival here on the monotonic clock, not from its
  // capturedAt stamp (wall clock, which may have jumped since).
  return (source) =>
    source.pipe(
      map((frame) => ({ frame, arrivedAt: clock() })),
      sample(trigger$),
      filter(({ arrivedAt }) => maxAge === undefined || clock() - arrivedAt <= maxAge),
      map(({ frame }) => frame),
    );
}
