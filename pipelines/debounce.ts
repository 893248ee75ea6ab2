/**
 * Per-slot debouncing of anomaly decisions, so that one noisy scan neither raises nor clears an
 * alarm (options mirror the config's `debounce` section):
 *
 *   ok → anomalous ('raised')   when the current scan is anomalous and at least `raiseAfter` of
 *                               the last `window` scans (this one included) were anomalous;
 *   anomalous → ok ('cleared')  after `clearAfter` consecutive normal scans;
 *   anomalous → anomalous ('updated')  when an anomalous scan differs notably from what was last
 *                               reported (at the raise or the last update): the score moved by
 *                               ≥ 10 % of the reported score, or a region appeared that overlaps
 *                               none of the reported regions. At most one transition per scan.
 *
 * Only decisions since the slot was last cleared count toward a raise: a clear drops the history
 * before the normal streak that cleared it, so the anomalous scans of the period that just ended
 * cannot combine with ONE new anomalous scan into a raise (with raiseAfter 3, window 5,
 * clearAfter 2, the scans A A A n n A raise once, clear, and stay ok). Requiring the current scan
 * to be anomalous for a raise also keeps a normal scan from ever raising a slot.
 *
 * Each state also counts its raises (`raises`) and remembers the debouncer run that made the last
 * one (`raisedIn`, from `DebounceOptions.run`). Together with camera and slot they name one
 * anomalous period without relying on the wall clock, which may step backwards (NTP correction,
 * an RTC without battery): events.ts derives the event id from them.
 */
import { Observable, type OperatorFunction } from 'rxjs';
import type { Box, SlotPrediction, SlotState } from './types.js';

export interface DebounceOptions {
  /** Raise after K anomalous decisions ... */
  raiseAfter: number;
  /** ... among the last N scans (N ≥ K). */
  window: number;
  /** Clear after M consecutive normal scans. */
  clearAfter: number;
  /** Relative score change that makes an 'updated' (default 0.10). */
  updateScoreChange?: number;
  /**
   * Tag of this debouncer run, stored with every raise (`raisedIn`) so that periods raised by
   * different runs (an agent restart with fresh states) never share an event id even when the
   * wall clock repeats itself. The agent passes a random tag per start; default ''.
   */
  run?: string;
}

/** One scan's verdict for one slot. */
export interface SlotDecision {
  camera: string;
  slot: string;
  anomalous: boolean;
  score: number;
  /** Capture time of the scan, ms since the epoch. */
  at: number;
  /** Boxes of the anomalous regions, frame coordinates (used for 'updated'). */
  regions?: readonly Box[];
}

/**
 * SlotState plus what the debouncer needs to remember between scans. `history` holds at most the
 * last `window` decisions, and none from before the last clear (step() trims it when it clears).
 * No field was added for that, so states saved by older versions load unchanged; one saved right
 * after a clear by such a version may still hold the ended period's anomalous scans, which then
 * count as before until they leave the window.
 */
export interface DebounceState extends SlotState {
  /** Consecutive normal decisions at the end of the history (may exceed the window). */
  normalStreak: number;
  /** Score and regions last reported by 'raised'/'updated'; null while ok. */
  reported: { score: number; regions: Box[] } | null;
  /**
   * How many times this state was raised; while anomalous, the ordinal of the open period
   * (1 for the first). Never decreases, whatever the clock does. A state restored from before
   * this field existed counts as 0.
   */
  raises: number;
  /** `DebounceOptions.run` at the last raise ('' before any raise). */
  raisedIn: string;
}

export type SlotTransition = 'raised' | 'updated' | 'cleared' | null;

export interface StepResult {
  state: DebounceState;
  transition: SlotTransition;
}

/** Options objects validateDebounceOptions returned (frozen, so they stay valid): step() takes them as they are. */
const validated = new WeakSet<DebounceOptions>();

export function validateDebounceOptions(options: DebounceOptions): Required<DebounceOptions> {
  if (validated.has(options)) return options as Required<DebounceOptions>;
  if (options.run !== undefined && typeof options.run !== 'string') throw new TypeError(`debounce.run must be a string, got ${JSON.stringify(options.run)}`);
  const check = (key: 'raiseAfter' | 'window' | 'clearAfter') => {
    const v = options[key];
    if (!Number.isInteger(v) || v < 1) throw new RangeError(`debounce.${key} must be an integer ≥ 1, got ${String(v)}`);
  };
  check('raiseAfter');
  check('window');
  check('clearAfter');
  if (options.raiseAfter > options.window) {
    throw new RangeError(`debounce.raiseAfter (${options.raiseAfter}) must not exceed debounce.window (${options.window})`);
  }
  const updateScoreChange = options.updateScoreChange ?? 0.1;
  if (!(updateScoreChange > 0)) throw new RangeError(`debounce.updateScoreChange must be > 0, got ${updateScoreChange}`);
  const checked: Required<DebounceOptions> = Object.freeze({ ...options, updateScoreChange, run: options.run ?? '' });
  validated.add(checked);
  return checked;
}

const overlaps = (a: Box, b: Box) =>
  a.x < b.x + b.width && b.x < a.x + a.width && a.y < b.y + b.height && b.y < a.y + a.height;

/** Pure reducer: the state after `decision`, and the transition it caused. Never mutates `state`. */
export function step(state: DebounceState | undefined, decision: SlotDecision, options: DebounceOptions): StepResult {
  const opts = validateDebounceOptions(options);
  const prev: DebounceState = state ?? {
    camera: decision.camera,
    slot: decision.slot,
    state: 'ok',
    since: decision.at,
    lastScore: decision.score,
    history: [],
    normalStreak: 0,
    reported: null,
    raises: 0,
    raisedIn: '',
  };
  if (prev.camera !== decision.camera || prev.slot !== decision.slot) {
    throw new Error(`debounce: decision for ${decision.camera}/${decision.slot} applied to the state of ${prev.camera}/${prev.slot}`);
  }
  const history = [...prev.history, decision.anomalous].slice(-opts.window);
  const normalStreak = decision.anomalous ? 0 : prev.normalStreak + 1;
  const regions = [...(decision.regions ?? [])];
  const next: DebounceState = { ...prev, lastScore: decision.score, history, normalStreak };

  if (prev.state === 'ok') {
    const anomalousCount = history.filter(Boolean).length;
    if (decision.anomalous && anomalousCount >= opts.raiseAfter) {
      return {
        state: {
          ...next,
          state: 'anomalous',
          since: decision.at,
          reported: { score: decision.score, regions },
          raises: (prev.raises ?? 0) + 1,
          raisedIn: opts.run,
        },
        transition: 'raised',
      };
    }
    return { state: next, transition: null };
  }

  if (!decision.anomalous) {
    if (normalStreak >= opts.clearAfter) {
      // Keep only the normal streak that cleared the slot: the anomalous scans of the period that
      // ends must not count toward the next raise (one noisy scan would re-raise it at once).
      const sinceClear = history.slice(-Math.min(normalStreak, history.length));
      return { state: { ...next, history: sinceClear, state: 'ok', since: decision.at, reported: null }, transition: 'cleared' };
    }
    return { state: next, transition: null };
  }

  const reported = prev.reported ?? { score: decision.score, regions: [] };
  const scoreMoved = Math.abs(decision.score - reported.score) >= opts.updateScoreChange * Math.abs(reported.score);
  const newRegion = regions.some((r) => !reported.regions.some((old) => overlaps(r, old)));
  if (scoreMoved || newRegion) {
    return { state: { ...next, reported: { score: decision.score, regions } }, transition: 'updated' };
  }
  return { state: next, transition: null };
}

/** Key of a slot in the debouncer's map. */
export const slotKey = (camera: string, slot: string) => `${camera}/${slot}`;

export interface DebouncedItem<T> {
  item: T;
  decision: SlotDecision;
  /** State before this scan (undefined for the slot's first scan). */
  previous: DebounceState | undefined;
  state: DebounceState;
  transition: SlotTransition;
}

export interface DebounceSlotsOptions extends DebounceOptions {
  /**
   * The per-slot states, keyed by slotKey(camera, slot). Pass a map to restore states saved
   * before a restart or to inspect them; it is updated in place. Default: a fresh map.
   */
  states?: Map<string, DebounceState>;
}

/** The decision of a SlotPrediction: over threshold, raw score, capture time, region boxes. */
export function decisionOf(sp: SlotPrediction): SlotDecision {
  return {
    camera: sp.crop.frame.camera,
    slot: sp.crop.slot,
    anomalous: sp.prediction.isAnomalous,
    score: sp.prediction.score,
    at: sp.crop.frame.capturedAt,
    regions: sp.regions.map((r) => r.box),
  };
}

/**
 * Runs every item through `step` for its slot and emits one DebouncedItem per input (transition
 * null when nothing changed; `filter(d => d.transition !== null)` for events only).
 */
export function debounceSlots<T>(
  options: DebounceSlotsOptions,
  toDecision: (item: T) => SlotDecision,
): OperatorFunction<T, DebouncedItem<T>> {
  validateDebounceOptions(options);
  return (source) =>
    new Observable<DebouncedItem<T>>((subscriber) => {
      const states = options.states ?? new Map<string, DebounceState>();
      return source.subscribe({
        next: (item) => {
          let out: DebouncedItem<T>;
          try {
            const decision = toDecision(item);
            const key = slotKey(decision.camera, decision.slot);
            const previous = states.get(key);
            const { state, transition } = step(previous, decision, options);
            states.set(key, state);
            out = { item, decision, previous, state, transition };
          } catch (err) {
            subscriber.error(err);
            return;
          }
          subscriber.next(out);
        },
        error: (err) => subscriber.error(err),
        complete: () => subscriber.complete(),
      });
    });
}
