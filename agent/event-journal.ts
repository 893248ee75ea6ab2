/**
 * Write-ahead for anomaly events: a slot's debounce state and the event it raised reach the disk
 * together, before the event goes to the outbox, so that a crash at any moment neither loses an
 * event nor raises the same anomaly a second time under another id.
 *
 *  1. An output with an event: the slot's new state goes into the map of states, the event's
 *     outbox record (id and payload) into the map of pending events, and both are saved
 *     (agent/debounce-store.ts: one small write, coalesced with any other save).
 *  2. Once that write has finished, the output is released to the extensions; the events
 *     publisher enqueues the event in the outbox.
 *  3. Once the outbox has written the event, it is dropped from the pending map; the next save
 *     (another event's, or one CLEAR_SAVE_MS later) writes that.
 *
 * A restart re-enqueues every event the loaded save still had pending, under its own id: after a
 * crash between 1 and 2 that is the only copy, after one between 2 and 3 it is a re-delivery of a
 * record the outbox also holds or sent (at-least-once, same id). Without the journal, the state
 * and the outbox were written side by side: a crash could keep the state of a raise whose event
 * never reached the disk (the `new` lost), or the event without the state (raised again, under a
 * new id, on restart).
 *
 * What a re-enqueued event lacks is its thumbnail and mask: they are not journalled (tens of KB
 * per event); the retained thumbnail topics keep the previous image until the next update.
 *
 * Outputs are released in the order they came, so a scan without an event waits behind an event
 * still being written: one fdatasync, a millisecond or so, and at most MAX_JOURNAL_WAIT_MS, after
 * which the event goes without waiting, as it did before the journal. Scans without an event
 * update the map of states without a write of their own, as before: a crash loses the scan
 * history since the last save, which the next scans rebuild.
 */
import { slotKey, type DebounceState } from '../pipelines/debounce.js';
import type { ShelfOutput } from '../pipelines/shelf-pipeline.js';
import type { DebounceStore, PendingEvent } from './debounce-store.js';
import { eventRecord } from './extensions/events-publisher.js';

/** How soon the journal writes that released events are no longer pending, when no other save does. */
export const CLEAR_SAVE_MS = 1000;
/**
 * How long an event waits for its journal write before it is released anyway: a disk that hangs
 * (a dying SD card) must not hold every event, and every scan behind it, in memory.
 */
export const MAX_JOURNAL_WAIT_MS = 2000;
/** Pending events kept at most (the oldest go first): a disk that keeps failing must not grow the file without end. */
export const MAX_PENDING_EVENTS = 256;

/** What the journal needs of the store (a DebounceStore). */
export type JournalStore = Pick<DebounceStore, 'save'>;

export interface EventJournalOptions {
  store: JournalStore;
  /** The states as loaded; the journal's own map from then on. */
  states: Map<string, DebounceState>;
  /** The events the loaded save had pending (DebounceStore.pendingEvents()). */
  pending: readonly PendingEvent[];
  /** Hands an output on to the extensions (in order, once its event is journalled). */
  release: (output: ShelfOutput) => void;
  /**
   * Resolves once the outbox has tried to write every message enqueued so far: true when all of
   * them are on disk, false when a write failed (those live in memory only: they stay pending).
   */
  outboxWritten: () => Promise<boolean>;
  /** Default CLEAR_SAVE_MS. */
  clearSaveMs?: number;
  /** Default MAX_JOURNAL_WAIT_MS. */
  maxWaitMs?: number;
  /** Default MAX_PENDING_EVENTS. */
  maxPending?: number;
  /** Told when the journal gives up waiting for a write, or drops a pending event over the cap. */
  warn?: (message: string, fields: Record<string, unknown>) => void;
}

export interface EventJournalStats {
  /** Events written ahead and not yet known to be in the outbox. */
  pending: number;
  /** Events released without their journal write finished (it took longer than maxWaitMs). */
  releasedUnjournalled: number;
  /** Pending events dropped over maxPending (oldest first). */
  droppedPending: number;
}

interface Queued {
  output: ShelfOutput;
  /** The outbox record id of its event, or null. */
  eventId: string | null;
  /** Its event (if any) is journalled: it may be released. */
  journalled: boolean;
}

export class EventJournal {
  private readonly store: JournalStore;
  private readonly states: Map<string, DebounceState>;
  private readonly pending = new Map<string, PendingEvent>();
  private readonly queue: Queued[] = [];
  /** Journal writes whose outputs are not released yet (awaited by flush). */
  private readonly writing = new Set<Promise<void>>();
  private readonly clearSaveMs: number;
  private clearTimer: NodeJS.Timeout | null = null;
  /** Events were dropped from the pending map since the last save was asked for. */
  private dropsUnsaved = false;
  private readonly maxWaitMs: number;
  private readonly maxPending: number;
  private readonly counts = { releasedUnjournalled: 0, droppedPending: 0 };

  constructor(private readonly options: EventJournalOptions) {
    this.store = options.store;
    this.states = options.states;
    for (const p of options.pending) this.pending.set(p.id, p);
    this.clearSaveMs = options.clearSaveMs ?? CLEAR_SAVE_MS;
    this.maxWaitMs = options.maxWaitMs ?? MAX_JOURNAL_WAIT_MS;
    this.maxPending = options.maxPending ?? MAX_PENDING_EVENTS;
  }

  stats(): EventJournalStats {
    return { pending: this.pending.size, ...this.counts };
  }

  /** Events written ahead and not yet known to be in the outbox. */
  pendingEvents(): PendingEvent[] {
    return [...this.pending.values()];
  }

  /**
   * Enqueues the events a crashed run left pending through `publish` (the loaded save's, oldest
   * first), and drops them from the journal once the outbox has them. Returns how many.
   */
  replay(publish: (pending: PendingEvent) => void): number {
    const replayed = [...this.pending.values()];
    for (const p of replayed) publish(p);
    if (replayed.length > 0) this.dropOnceWritten(replayed.map((p) => p.id));
    return replayed.length;
  }

  /** One pipeline output, in pipeline order. */
  push(output: ShelfOutput): void {
    const { camera } = output.item.crop.frame;
    this.states.set(slotKey(camera, output.item.crop.slot), output.debounce);
    const queued: Queued = { output, eventId: null, journalled: output.event === null };
    this.queue.push(queued);
    if (output.event) {
      const record = eventRecord(output.event);
      queued.eventId = record.id;
      this.pending.set(record.id, record);
      this.capPending();
      const written = this.bounded(this.save()).then((outcome) => {
        this.writing.delete(written);
        if (outcome === 'late') {
          this.counts.releasedUnjournalled++;
          this.options.warn?.('the debounce state write is slow; an event goes to the outbox without waiting for it', { event: record.id, waitedMs: this.maxWaitMs });
        }
        queued.journalled = true;
        this.releaseReady();
      });
      this.writing.add(written);
    } else if (this.queue.length === 1) this.releaseReady();
  }

  /**
   * Releases every output still held, waits for the outbox to write their events and saves the
   * states with nothing pending (a clean stop leaves nothing to re-enqueue). Call after the last
   * push.
   */
  async flush(): Promise<void> {
    while (this.writing.size > 0) await Promise.all(this.writing);
    // Every output is released now, every pending event enqueued. A disk that hangs keeps them
    // pending (for the next start) rather than the stop waiting on it.
    if ((await this.bounded(this.options.outboxWritten())) === true) this.pending.clear();
    if (this.clearTimer) clearTimeout(this.clearTimer);
    this.clearTimer = null;
    await this.bounded(this.save());
  }

  /** `promise`, or 'late' after maxWaitMs. */
  private async bounded<T>(promise: Promise<T>): Promise<T | 'late'> {
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<'late'>((resolve) => (timer = setTimeout(() => resolve('late'), this.maxWaitMs)));
    try {
      return await Promise.race([promise, late]);
    } finally {
      clearTimeout(timer);
    }
  }

  private releaseReady(): void {
    const released: string[] = [];
    while (this.queue.length > 0 && this.queue[0]!.journalled) {
      const { output, eventId } = this.queue.shift()!;
      this.options.release(output);
      if (eventId !== null) released.push(eventId);
    }
    if (released.length > 0) this.dropOnceWritten(released);
  }

  private dropOnceWritten(ids: string[]): void {
    void this.options.outboxWritten().then((allOnDisk) => {
      if (!allOnDisk) return; // kept: a restart enqueues them again
      for (const id of ids) this.pending.delete(id);
      this.dropsUnsaved = true;
      this.scheduleClearSave();
    });
  }

  private capPending(): void {
    for (const id of this.pending.keys()) {
      if (this.pending.size <= this.maxPending) return;
      this.pending.delete(id);
      this.counts.droppedPending++;
      this.options.warn?.('too many events pending in the journal; the oldest is no longer kept for a restart', { event: id, maxPending: this.maxPending });
    }
  }

  private scheduleClearSave(): void {
    if (this.clearTimer) return;
    this.clearTimer = setTimeout(() => {
      this.clearTimer = null;
      if (this.dropsUnsaved) void this.save();
    }, this.clearSaveMs);
    this.clearTimer.unref();
  }

  private save(): Promise<void> {
    this.dropsUnsaved = false; // the write serialises the maps when it starts: after the drops
    return this.store.save(this.states, this.pending);
  }
}
