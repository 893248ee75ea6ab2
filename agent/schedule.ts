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
 * A cron schedule follows the wall clock (it names times of day) but never replays the slots a
 * wall-clock jump skipped: a late slot is skipped with one log line, and a clock stepped back
 * is followed within a minute.
 *
 * capFps and latestFrame measure intervals, so they default to the monotonic clock
 * (performance.now): a wall clock stepped back must not hold frames back until it catches up,
 * nor one stepped forward make every waiting frame look stale.
 */
import cron, { type ScheduledTask } from 'node-cron';
import { filter, interval, map, Observable, sample, type MonoTypeOperatorFunction, type OperatorFunction } from 'rxjs';
import type { Frame } from '../pipelines/types.js';
import { MAX_TIMER_MS } from './sources/backoff.js';
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

/** The lowest maxFps whose frame interval a timer can wait: one frame every ~24.8 days. */
export const MIN_MAX_FPS = 1000 / MAX_TIMER_MS;

function validateMaxFps(maxFps: unknown, where: string): number {
  if (typeof maxFps !== 'number' || !(maxFps > 0) || !Number.isFinite(maxFps)) {
    throw new Error(`${where}.maxFps must be a positive number, got ${JSON.stringify(maxFps)}`);
  }
  if (maxFps < MIN_MAX_FPS) {
    throw new Error(`${where}.maxFps must be at least ${MIN_MAX_FPS.toPrecision(3)} (one frame every ~24.8 days), got ${maxFps}; use a cron schedule for rarer scans`);
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
  const fields = { camera: options.camera };
  return new Observable<number>((subscriber) => {
    // node-cron finds the matches (wall clock, time zone, DST) but does not run the timer: its
    // runner walks every slot between the last run and now after a wall-clock jump, logging
    // each as missed — 86,400 lines and a 7 s stall for a seconds schedule after a 1-day step,
    // minutes of stall for a month (a box without RTC whose clock NTP sets at boot). Here a
    // slot due more than CRON_LATE_MS ago is skipped with one line, the next is taken from
    // now, and a clock stepped back is noticed at the next wake-up (at most CRON_MAX_WAIT_MS).
    const task: ScheduledTask = cron.createTask(expression, () => undefined, { timezone: options.timezone });
    let timer: NodeJS.Timeout | undefined;
    let next = 0;
    const nextMatch = () => task.getNextRuns(1)[0]!.getTime();
    const arm = () => {
      timer = setTimeout(beat, Math.min(CRON_MAX_WAIT_MS, Math.max(0, next - Date.now())));
    };
    const beat = () => {
      try {
        const now = Date.now();
        if (now < next) {
          // Woken early: long waits are cut short, so that a clock stepped back (whose next
          // match from now is earlier) is noticed. Otherwise the slot stays (a later one found
          // from a time inside the slot's own DST-repeated hour must not replace it).
          next = Math.min(next, nextMatch());
          arm();
          return;
        }
        const late = now - next;
        if (late <= CRON_LATE_MS) {
          subscriber.next(clock());
        } else {
          log?.('warn', `schedule: the scan due at ${new Date(next).toISOString()} is ${(late / 1000).toFixed(1)} s late (wall clock stepped forward, or the process was blocked); skipped, and any others missed since`, fields);
        }
        if (subscriber.closed) return;
        next = nextMatch();
        arm();
      } catch (err) {
        subscriber.error(err);
      }
    };
    try {
      next = nextMatch();
    } catch (err) {
      void task.destroy();
      throw err;
    }
    arm();
    return () => {
      if (timer) clearTimeout(timer);
      timer = undefined;
      void task.destroy();
    };
  });
}

/** A cron slot due longer ago than this when its timer fires is skipped (node-cron's tolerance). */
const CRON_LATE_MS = 1000;
/** Longest single wait of a cron schedule: a wall clock stepped back is noticed within it. */
const CRON_MAX_WAIT_MS = 60_000;

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
