/**
 * Anomaly events in Frigate's convention: `{ type: 'new' | 'update' | 'end', before, after }`,
 * where before/after are snapshots of the whole event (before is null for 'new'). One event
 * lives from a slot's 'raised' to its 'cleared' and keeps one id throughout.
 *
 * Event ids: `<camera>-<slot>-<start ms>-<8 hex>`, the hash over camera, slot, start time, the
 * debouncer run that raised the period and the slot's raise ordinal in that run (DebounceState
 * `raisedIn` / `raises`). The start time is there for people reading logs; uniqueness does not
 * rest on it: the wall clock may step backwards (NTP correction, an edge box without RTC battery)
 * and stamp a later anomaly of the same slot with the same start time as an earlier one, but its
 * raise ordinal is higher, and after an agent restart the run tag differs (the agent draws a
 * random one per start). The id is a pure function of the debounce state, so re-deliveries keep
 * it: an outbox replay re-sends the stored payload, and a debounce state restored from disk
 * yields the same id for the same open period.
 */
import { createHash } from 'node:crypto';
import { Observable, filter, map, type OperatorFunction } from 'rxjs';
import type { DebouncedItem, DebounceState } from './debounce.js';
import type { Box, SlotCondition, SlotPrediction, SlotState } from './types.js';

export interface EventRegion {
  box: Box;
  /** Area in frame pixels. */
  area: number;
  peak: number;
}

/** The state of one anomaly event at one moment. */
export interface AnomalyEventSnapshot {
  id: string;
  camera: string;
  slot: string;
  product: string | null;
  category: string | null;
  /** Raw score of the scan this snapshot describes. */
  score: number;
  /** Highest raw score seen while the event was open. */
  topScore: number;
  normalizedScore: number;
  threshold: number;
  regions: EventRegion[];
  /** The frame this snapshot (and its thumbnail) describes. */
  frameId: string;
  frameTime: number;
  /** When the slot was raised, ms since the epoch. */
  startTime: number;
  /** When it was cleared; null while the event is open. */
  endTime: number | null;
  /** Model name from the config (Crop.model) and the sha256 of its file. */
  modelId: string;
  modelDigest: string;
  /** Whether a thumbnail/mask of `frameId` is published for this event. */
  thumbnail: boolean;
}

export type AnomalyEventType = 'new' | 'update' | 'end';

export type AnomalyEvent =
  | { type: 'new'; before: null; after: AnomalyEventSnapshot }
  | { type: 'update' | 'end'; before: AnomalyEventSnapshot; after: AnomalyEventSnapshot };

/** The retained per-slot state message. */
export interface SlotStatePayload {
  state: SlotCondition;
  score: number;
  since: number;
  /** The open event while anomalous; null while ok. */
  eventId: string | null;
}

/** What tells one anomalous period of a slot from every other, whatever the wall clock did. */
export interface RaiseKey {
  /** The debouncer run that raised it (DebounceState.raisedIn). */
  run: string;
  /** The slot's raise ordinal within its debounce state (DebounceState.raises). */
  raise: number;
}

/**
 * `<camera>-<slot>-<start ms>-<8 hex>`. The hash covers every part with a separator that cannot
 * occur in ids, so that e.g. camera `a-b` slot `c` and camera `a` slot `b-c` differ, and so that
 * two periods with the same start time (a clock that stepped back) differ by their raise key.
 */
export function eventId(camera: string, slot: string, startTime: number, key: RaiseKey): string {
  const hash = createHash('sha256').update(`${camera}\n${slot}\n${startTime}\n${key.run}\n${key.raise}`).digest('hex').slice(0, 8);
  return `${camera}-${slot}-${startTime}-${hash}`;
}

/** Id and start of the period a debounce state is in (anomalous) or last was in. */
export interface EventPeriod {
  id: string;
  startTime: number;
}

/** The period of `state`: its id follows from the state alone, so a restored state keeps it. */
export function periodOf(state: DebounceState): EventPeriod {
  // `?? ` for states saved before raises/raisedIn existed.
  const key = { run: state.raisedIn ?? '', raise: state.raises ?? 0 };
  return { id: eventId(state.camera, state.slot, state.since, key), startTime: state.since };
}

export function slotStatePayload(state: SlotState, eventId: string | null): SlotStatePayload {
  return { state: state.state, score: state.lastScore, since: state.since, eventId: state.state === 'anomalous' ? eventId : null };
}

export interface EventBuilderOptions {
  /** Whether thumbnails are published with events (config `thumbnails`); default true. */
  thumbnail?: boolean;
}

/** A snapshot of `sp` as part of the event `period`. */
export function snapshotOf(sp: SlotPrediction, period: EventPeriod, thumbnail: boolean, topScore = sp.prediction.score): AnomalyEventSnapshot {
  const { crop, prediction } = sp;
  const { startTime } = period;
  return {
    id: period.id,
    camera: crop.frame.camera,
    slot: crop.slot,
    product: crop.product ?? null,
    category: crop.category ?? null,
    score: prediction.score,
    topScore: Math.max(topScore, prediction.score),
    normalizedScore: prediction.normalizedScore,
    threshold: prediction.threshold,
    regions: sp.regions.map((r) => ({ box: { ...r.box }, area: r.area, peak: r.peak })),
    frameId: crop.frame.id,
    frameTime: crop.frame.capturedAt,
    startTime,
    endTime: null,
    modelId: crop.model,
    modelDigest: prediction.modelDigest,
    thumbnail,
  };
}

/**
 * Turns debounced scans into events, remembering each slot's open event. Feed it EVERY scan
 * (also those without a transition) so that `topScore` sees all anomalous scans.
 *
 * Without a remembered open event (the builder was recreated while the debouncer state was
 * restored), 'updated' becomes a 'new' with the same id (periodOf the restored state), and
 * 'cleared' an 'end' whose `before` is the clearing scan's snapshot with endTime null (and
 * `thumbnail: false`: none was published for that scan). A scan
 * without a transition adopts the restored period silently (no event; `openEvent` then names it,
 * so the retained state carries its id) with a snapshot of that scan (`thumbnail: false`: none
 * was published for it); one adopted from a normal scan is replaced by the next anomalous one,
 * so that the 'end' describes an anomalous scan.
 */
export class EventBuilder {
  private readonly open = new Map<string, AnomalyEventSnapshot>();
  /** Open events adopted from a normal scan (restored state), replaced by the next anomalous scan. */
  private readonly provisional = new Set<string>();
  private readonly thumbnail: boolean;

  constructor(options: EventBuilderOptions = {}) {
    this.thumbnail = options.thumbnail ?? true;
  }

  /** The open event of a slot, if any. */
  openEvent(camera: string, slot: string): AnomalyEventSnapshot | undefined {
    return this.open.get(`${camera}/${slot}`);
  }

  /**
   * The event of one debounced scan, if any. `options.thumbnail`: whether a thumbnail of THIS scan
   * is published with a new/update event (e.g. false when rendering it failed); default the
   * builder's `thumbnail` option. It is kept with the open event, so a later update's `before`
   * and the `end` say the same.
   */
  build(d: DebouncedItem<SlotPrediction>, options: { thumbnail?: boolean } = {}): AnomalyEvent | null {
    const thumbnail = options.thumbnail ?? this.thumbnail;
    const { camera, slot } = d.decision;
    const key = `${camera}/${slot}`;
    const current = this.open.get(key);
    const provisional = this.provisional.delete(key);
    switch (d.transition) {
      case 'raised': {
        const after = snapshotOf(d.item, periodOf(d.state), thumbnail);
        this.open.set(key, after);
        return { type: 'new', before: null, after };
      }
      case 'updated': {
        if (!current) {
          const after = snapshotOf(d.item, periodOf(d.state), thumbnail);
          this.open.set(key, after);
          return { type: 'new', before: null, after };
        }
        const after = snapshotOf(d.item, current, thumbnail, current.topScore);
        this.open.set(key, after);
        return { type: 'update', before: current, after };
      }
      case 'cleared': {
        this.open.delete(key);
        // A clear always follows an anomalous state: `previous` is the period that ends. Without an
        // open event (restored state) the snapshot is made up from this normal scan, for which no
        // thumbnail was published.
        const before = current ?? snapshotOf(d.item, periodOf(d.previous ?? d.state), false);
        return { type: 'end', before, after: { ...before, endTime: d.state.since } };
      }
      case null: {
        if (d.state.state === 'anomalous' && (!current || provisional)) {
          // A period opened before this builder existed (restored debounce state): adopt it.
          if (!current || d.decision.anomalous) {
            const topScore = Math.max(current?.topScore ?? -Infinity, d.state.reported?.score ?? -Infinity, d.decision.score);
            this.open.set(key, snapshotOf(d.item, current ?? periodOf(d.state), false, topScore));
          }
          if (!d.decision.anomalous) this.provisional.add(key);
          return null;
        }
        // Silent anomalous scans still count towards the event's top score.
        if (current && d.decision.anomalous && d.decision.score > current.topScore) {
          this.open.set(key, { ...current, topScore: d.decision.score });
        }
        return null;
      }
    }
  }
}

/** Everything the outside world needs to publish about one scan of one slot. */
export interface SlotOutput {
  item: SlotPrediction;
  /** The event this scan caused, if any. */
  event: AnomalyEvent | null;
  /** The retained state message after this scan. */
  state: SlotStatePayload;
}

/** One SlotOutput per debounced scan. */
export function toSlotOutputs(options: EventBuilderOptions = {}): OperatorFunction<DebouncedItem<SlotPrediction>, SlotOutput> {
  return (source) =>
    new Observable<SlotOutput>((subscriber) => {
      const builder = new EventBuilder(options);
      return source
        .pipe(
          map((d) => {
            const event = builder.build(d);
            const open = builder.openEvent(d.decision.camera, d.decision.slot);
            return { item: d.item, event, state: slotStatePayload(d.state, open?.id ?? null) };
          }),
        )
        .subscribe(subscriber);
    });
}

/** Only the events of the debounced scans. */
export function toEvents(options: EventBuilderOptions = {}): OperatorFunction<DebouncedItem<SlotPrediction>, AnomalyEvent> {
  return (source) =>
    source.pipe(
      toSlotOutputs(options),
      map((o) => o.event),
      filter((e): e is AnomalyEvent => e !== null),
    );
}
