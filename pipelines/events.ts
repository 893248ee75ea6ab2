/**
 * Anomaly events in Frigate's convention: `{ type: 'new' | 'update' | 'end', before, after }`,
 * where before/after are snapshots of the whole event (before is null for 'new'). One event
 * lives from a slot's 'raised' to its 'cleared' and keeps one id throughout.
 *
 * The id is derived from camera, slot and the raise time only, so a re-delivery (outbox replay
 * after a restart, or a debouncer state restored from disk) carries the same id and consumers
 * can de-duplicate on it.
 */
import { createHash } from 'node:crypto';
import { Observable, filter, map, type OperatorFunction } from 'rxjs';
import type { DebouncedItem } from './debounce.js';
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

/**
 * `<camera>-<slot>-<start ms>-<8 hex>`. The hash covers the three parts with a separator that
 * cannot occur in ids, so that e.g. camera `a-b` slot `c` and camera `a` slot `b-c` differ.
 */
export function eventId(camera: string, slot: string, startTime: number): string {
  const hash = createHash('sha256').update(`${camera}\n${slot}\n${startTime}`).digest('hex').slice(0, 8);
  return `${camera}-${slot}-${startTime}-${hash}`;
}

export function slotStatePayload(state: SlotState, eventId: string | null): SlotStatePayload {
  return { state: state.state, score: state.lastScore, since: state.since, eventId: state.state === 'anomalous' ? eventId : null };
}

export interface EventBuilderOptions {
  /** Whether thumbnails are published with events (config `thumbnails`); default true. */
  thumbnail?: boolean;
}

/** A snapshot of `sp` as part of the event that started at `startTime`. */
export function snapshotOf(sp: SlotPrediction, startTime: number, thumbnail: boolean, topScore = sp.prediction.score): AnomalyEventSnapshot {
  const { crop, prediction } = sp;
  return {
    id: eventId(crop.frame.camera, crop.slot, startTime),
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
 * restored), 'updated' becomes a 'new' with the same deterministic id, and 'cleared' an 'end'
 * whose `before` is the clearing scan's snapshot with endTime null.
 */
export class EventBuilder {
  private readonly open = new Map<string, AnomalyEventSnapshot>();
  private readonly thumbnail: boolean;

  constructor(options: EventBuilderOptions = {}) {
    this.thumbnail = options.thumbnail ?? true;
  }

  /** The open event of a slot, if any. */
  openEvent(camera: string, slot: string): AnomalyEventSnapshot | undefined {
    return this.open.get(`${camera}/${slot}`);
  }

  build(d: DebouncedItem<SlotPrediction>): AnomalyEvent | null {
    const { camera, slot } = d.decision;
    const key = `${camera}/${slot}`;
    const current = this.open.get(key);
    switch (d.transition) {
      case 'raised': {
        const after = snapshotOf(d.item, d.state.since, this.thumbnail);
        this.open.set(key, after);
        return { type: 'new', before: null, after };
      }
      case 'updated': {
        if (!current) {
          const after = snapshotOf(d.item, d.state.since, this.thumbnail);
          this.open.set(key, after);
          return { type: 'new', before: null, after };
        }
        const after = snapshotOf(d.item, current.startTime, this.thumbnail, current.topScore);
        this.open.set(key, after);
        return { type: 'update', before: current, after };
      }
      case 'cleared': {
        this.open.delete(key);
        const before = current ?? snapshotOf(d.item, d.previous?.since ?? d.state.since, this.thumbnail);
        return { type: 'end', before, after: { ...before, endTime: d.state.since } };
      }
      case null: {
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
