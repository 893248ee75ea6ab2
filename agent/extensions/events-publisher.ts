/**
 * Publishes what the pipeline finds, through the durable outbox (QoS 1):
 *
 *   new/update   <slot>/thumbnail (JPEG, retained), <slot>/mask (PNG, retained), then the event
 *                on <root>/events — in that order, so a consumer reacting to the event finds the
 *                matching thumbnail already retained;
 *   end          the event;
 *   every scan   <slot>/state (retained) — but only when it says something new: on a transition,
 *                on the slot's first scan, or when the last one is older than STATE_REFRESH_MS.
 *                Publishing every scan of a continuous camera would fsync tens of records a
 *                second into the outbox for a score nobody reads.
 *
 * The refresh interval is measured on the monotonic clock: a wall clock stepped back an hour
 * must not silence the state for an hour, nor one stepped forward cause a burst.
 *
 * Message ids are stable (`<event id>:<type>:<frame id>` …), so a re-delivery after a restart is
 * recognisable. With `thumbnails.dir` set the thumbnails are also written there, the newest
 * `thumbnails.keep` of them kept (demo, debugging; agent/thumbnail-folder.ts).
 */
import type { Subscription } from 'rxjs';
import type { AnomalyEvent } from '../../pipelines/events.js';
import type { ShelfOutput } from '../../pipelines/shelf-pipeline.js';
import { ThumbnailFolder } from '../thumbnail-folder.js';
import type { AgentContext, Extension } from './types.js';

/** How long stop() waits for queued thumbnail files (thumbnails.dir). */
const THUMBNAIL_FLUSH_MS = 2000;

/** A slot's retained state is republished at least this often while it is scanned. */
export const STATE_REFRESH_MS = 60_000;

/** The retained `<camera>/<slot>/state` payload: SlotStatePayload plus what HA shows as attributes. */
export interface PublishedSlotState {
  state: 'ok' | 'anomalous';
  score: number;
  since: number;
  eventId: string | null;
  camera: string;
  slot: string;
  product: string | null;
  category: string | null;
  normalizedScore: number;
  threshold: number;
  frameId: string;
  frameTime: number;
  modelId: string;
  modelDigest: string;
}

export function slotStateMessage(output: ShelfOutput): PublishedSlotState {
  const { crop, prediction } = output.item;
  return {
    ...output.state,
    camera: crop.frame.camera,
    slot: crop.slot,
    product: crop.product ?? null,
    category: crop.category ?? null,
    normalizedScore: prediction.normalizedScore,
    threshold: prediction.threshold,
    frameId: crop.frame.id,
    frameTime: crop.frame.capturedAt,
    modelId: crop.model,
    modelDigest: prediction.modelDigest,
  };
}

/** The id of the outbox record that carries an event. */
export function eventMessageId(event: AnomalyEvent): string {
  return `${event.after.id}:${event.type}:${event.after.frameId}`;
}

/** Each event's record, serialised once: the journal writes it ahead, then the publisher sends it. */
const records = new WeakMap<AnomalyEvent, { id: string; payload: string }>();

/** The id and payload of the outbox record that carries an event (on `<root>/events`). */
export function eventRecord(event: AnomalyEvent): { id: string; payload: string } {
  let record = records.get(event);
  if (!record) {
    record = { id: eventMessageId(event), payload: JSON.stringify(event) };
    records.set(event, record);
  }
  return record;
}

export class EventsPublisher implements Extension {
  readonly name = 'events';
  private subscription: Subscription | null = null;
  private readonly lastState = new Map<string, { state: string; at: number }>();
  private folder: ThumbnailFolder | null = null;

  constructor(
    private readonly ctx: AgentContext,
    /** Monotonic ms for the refresh interval (default performance.now). */
    private readonly monotonic: () => number = () => performance.now(),
  ) {}

  start(): void {
    this.subscription = this.ctx.outputs$.subscribe((output) => this.publish(output));
  }

  async stop(): Promise<void> {
    this.subscription?.unsubscribe();
    this.subscription = null;
    // Thumbnail files are a convenience copy: let queued writes finish, but never let a hung
    // disk hold up the shutdown.
    if (this.folder) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([this.folder.idle(), new Promise<void>((ok) => (timer = setTimeout(ok, THUMBNAIL_FLUSH_MS)))]);
      clearTimeout(timer);
    }
  }

  private publish(output: ShelfOutput): void {
    const { ctx } = this;
    const { crop } = output.item;
    const camera = crop.frame.camera;
    const topics = ctx.topics.slot(camera, crop.slot);
    const event = output.event;
    if (event && output.thumbnail && event.type !== 'end') {
      const base = `${event.after.id}:${crop.frame.id}`;
      ctx.publish({ id: `${base}:thumbnail`, topic: topics.thumbnail, payload: output.thumbnail.jpeg, qos: 1, retain: true });
      ctx.publish({ id: `${base}:mask`, topic: topics.mask, payload: output.thumbnail.maskPng, qos: 1, retain: true });
      this.writeThumbnail(event, output.thumbnail.jpeg);
    }
    if (event) {
      ctx.publish({ ...eventRecord(event), topic: ctx.topics.events, qos: 1, retain: false });
      ctx.logger.info('anomaly event', {
        type: event.type,
        eventId: event.after.id,
        camera,
        slot: crop.slot,
        score: event.after.score,
        threshold: event.after.threshold,
        regions: event.after.regions.length,
      });
    }
    const key = `${camera}/${crop.slot}`;
    const now = this.monotonic();
    const last = this.lastState.get(key);
    if (event || !last || last.state !== output.state.state || now - last.at >= STATE_REFRESH_MS) {
      this.lastState.set(key, { state: output.state.state, at: now });
      ctx.publish({ id: `state:${key}:${crop.frame.id}`, topic: topics.state, payload: JSON.stringify(slotStateMessage(output)), qos: 1, retain: true });
    }
  }

  private writeThumbnail(event: AnomalyEvent, jpeg: Buffer): void {
    const { dir, keep } = this.ctx.config.thumbnails;
    if (!dir || event.type === 'end') return;
    this.folder ??= new ThumbnailFolder(dir, keep, (message, fields) => this.ctx.logger.warn(message, fields));
    void this.folder.write(ThumbnailFolder.fileName(event.after.id, event.type, event.after.frameTime), jpeg);
  }
}
