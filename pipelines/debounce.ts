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
 * Requiring the current scan to be anomalous for a raise keeps a freshly cleared slot from being
 * re-raised by a normal scan when the window still holds old anomalous decisions.
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

/** SlotState plus what the debouncer needs to remember between scans. */
export interface DebounceState extends SlotState {
  /** Consecutive normal decisions at the end of the history (may exceed the window). */
  normalStreak: number;
  /** Score and regions last reported by 'raised'/'updated'; null while ok. */
  reported: { score: number; regions: Box[] } | null;
}

export type SlotTransition = 'raised' | 'updated' | 'cleared' | null;

export interface StepResult {
  state: DebounceState;
  transition: SlotTransition;
}

export function validateDebounceOptions(options: DebounceOptions): Required<DebounceOptions> {
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
  return { ...options, updateScoreChange };
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
        state: { ...next, state: 'anomalous', since: decision.at, reported: { score: decision.score, regions } },
        transition: 'raised',
      };
    }
    return { state: next, transition: null };
  }

  if (!decision.anomalous) {
    if (normalStreak >= opts.clearAfter) {
      return { state: { ...next, state: 'ok', since: decision.at, reported: null }, transition: 'cleared' };
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
