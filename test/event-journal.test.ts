/**
 * The event journal (agent/event-journal.ts) against a real DebounceStore in a temp dir: an event
 * is released only once its state and its outbox record are on disk together, outputs keep their
 * order, the record stays pending until the outbox has written it, and what a crash left pending
 * is replayed under its own id.
 */
import test, { type ExecutionContext } from 'ava';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DEBOUNCE_STATE_FILES, DebounceStore, decodeDebounceStateFile, type DebounceStateFile, type PendingEvent } from '../agent/debounce-store.js';
import { EventJournal } from '../agent/event-journal.js';
import { eventRecord } from '../agent/extensions/events-publisher.js';
import { Logger } from '../agent/logger.js';
import { slotKey, step, type DebounceState } from '../pipelines/debounce.js';
import { EventBuilder, slotStatePayload } from '../pipelines/events.js';
import type { ShelfOutput } from '../pipelines/shelf-pipeline.js';

const OPTS = { raiseAfter: 1, window: 1, clearAfter: 1, run: 'run-a' };

async function tempDir(t: ExecutionContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'shelfwatch-journal-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

const quiet = () => new Logger({ level: 'error', sink: { write: () => undefined } });

/** A store on a fresh temp dir, loaded (nothing saved yet). */
async function loadedStore(t: ExecutionContext): Promise<{ dir: string; store: DebounceStore }> {
  const dir = await tempDir(t);
  const store = new DebounceStore({ dir, logger: quiet() });
  await store.load();
  return { dir, store };
}

/** The newest save on disk, read synchronously (from inside a release callback). */
function onDisk(dir: string): DebounceStateFile | null {
  let best: { seq: number; text: string } | null = null;
  for (const name of DEBOUNCE_STATE_FILES) {
    let bytes: Buffer;
    try {
      bytes = readFileSync(join(dir, name));
    } catch {
      continue;
    }
    const d = decodeDebounceStateFile(bytes);
    if ('seq' in d && (!best || d.seq > best.seq)) best = d;
  }
  return best ? (JSON.parse(best.text) as DebounceStateFile) : null;
}

/** Real scans of real slots: the debounce reducer and the event builder, as the pipeline runs them. */
function scanner() {
  const states = new Map<string, DebounceState>();
  const builder = new EventBuilder({ thumbnail: false });
  let frame = 0;
  return (slot: string, score: number): ShelfOutput => {
    const at = 1000 * ++frame;
    const anomalous = score > 10;
    const key = slotKey('shelf', slot);
    const previous = states.get(key);
    const box = { x: 0, y: 0, width: 10, height: 10 };
    const decision = { camera: 'shelf', slot, anomalous, score, at, regions: anomalous ? [box] : [] };
    const { state, transition } = step(previous, decision, OPTS);
    states.set(key, state);
    const item = {
      crop: { frame: { id: `shelf-${at}`, camera: 'shelf', capturedAt: at }, slot, box, model: 'm' },
      prediction: { score, normalizedScore: score / 20, anomalyMap: null, mask: null, mapSize: 2, threshold: 10, isAnomalous: anomalous, modelDigest: 'd' },
      regions: anomalous ? [{ box, area: 100, peak: 1 }] : [],
    };
    const event = builder.build({ item, decision, previous, state, transition });
    const open = builder.openEvent('shelf', slot);
    return { item, event, state: slotStatePayload(state, open?.id ?? null), thumbnail: null, debounce: state };
  };
}

/** A controllable outbox barrier: each call waits for the test to settle it. */
function outboxGate() {
  const waiting: Array<(ok: boolean) => void> = [];
  return {
    outboxWritten: () => new Promise<boolean>((resolve) => waiting.push(resolve)),
    settle: (ok: boolean) => waiting.splice(0).forEach((resolve) => resolve(ok)),
    waiting: () => waiting.length,
  };
}

const tick = () => new Promise((resolve) => setTimeout(resolve, 20));

test('an event is released only once its state and its record are on disk together; outputs keep their order', async (t) => {
  const { dir, store } = await loadedStore(t);
  const scan = scanner();
  const gate = outboxGate();
  const released: Array<{ output: ShelfOutput; file: DebounceStateFile | null }> = [];
  const journal = new EventJournal({ store, states: new Map(), pending: [], outboxWritten: gate.outboxWritten, release: (output) => released.push({ output, file: onDisk(dir) }) });

  const raise = scan('S1', 20);
  const quietScan = scan('S0', 1);
  t.is(raise.event?.type, 'new');
  journal.push(raise);
  journal.push(quietScan); // no event of its own, but it must not overtake the raise
  t.deepEqual(released, [], 'nothing released before the journal write');
  await store.idle();
  await tick();
  t.deepEqual(released.map((r) => r.output), [raise, quietScan]);
  const file = released[0]!.file!;
  t.like(file.slots['shelf/S1'], { state: 'anomalous', raises: 1 });
  t.deepEqual(file.pending, [eventRecord(raise.event!)]);
  t.deepEqual(journal.pendingEvents(), [eventRecord(raise.event!)], 'pending until the outbox has it');

  // A scan without an event, alone in the queue, goes straight through.
  const next = scan('S0', 2);
  journal.push(next);
  t.is(released.at(-1)!.output, next);
});

test('once the outbox has written the event it is no longer pending, and a save says so; a failed outbox write keeps it', async (t) => {
  const { dir, store } = await loadedStore(t);
  const scan = scanner();
  const gate = outboxGate();
  const journal = new EventJournal({ store, states: new Map(), pending: [], outboxWritten: gate.outboxWritten, release: () => undefined, clearSaveMs: 30 });

  const raise = scan('S1', 20);
  journal.push(raise);
  await store.idle();
  await tick();
  t.is(gate.waiting(), 1, 'waits for the outbox write of the released event');
  gate.settle(false); // the outbox's disk failed: in memory only
  await tick();
  await store.idle();
  t.deepEqual(onDisk(dir)!.pending, [eventRecord(raise.event!)], 'kept: a restart enqueues it again');

  const end = scan('S1', 1);
  t.is(end.event?.type, 'end');
  journal.push(end);
  await store.idle();
  await tick();
  t.deepEqual(onDisk(dir)!.pending, [eventRecord(raise.event!), eventRecord(end.event!)]);
  gate.settle(true);
  await tick();
  t.deepEqual(journal.pendingEvents(), [eventRecord(raise.event!)], 'the end is dropped; the raise waits on its own failed write');
  await new Promise((resolve) => setTimeout(resolve, 60)); // the clear save
  await store.idle();
  t.deepEqual(onDisk(dir)!.pending, [eventRecord(raise.event!)]);
  t.like(onDisk(dir)!.slots['shelf/S1'], { state: 'ok' });

  // A clean stop after the outbox recovered: nothing left pending.
  const flushed = journal.flush();
  await tick();
  gate.settle(true);
  await flushed;
  t.deepEqual(onDisk(dir)!.pending, []);
});

test('flush releases what is held, waits for the outbox and saves the states with nothing pending', async (t) => {
  const { dir, store } = await loadedStore(t);
  const scan = scanner();
  const released: ShelfOutput[] = [];
  let outboxAsked = 0;
  const journal = new EventJournal({
    store,
    states: new Map(),
    pending: [],
    outboxWritten: async () => (outboxAsked++, true),
    release: (output) => released.push(output),
    clearSaveMs: 60_000,
  });
  const outputs = [scan('S1', 20), scan('S0', 1), scan('S2', 30), scan('S0', 2)];
  for (const o of outputs) journal.push(o);
  await journal.flush();
  t.deepEqual(released, outputs);
  t.true(outboxAsked >= 1);
  const file = onDisk(dir)!;
  t.deepEqual(file.pending, []);
  t.like(file.slots['shelf/S2'], { state: 'anomalous' });
  t.like(file.slots['shelf/S0'], { state: 'ok', lastScore: 2 }, 'scans without an event are in the last save too');
});

test('a crash between the journal and the outbox: the next run loads the event as pending and replays it under its own id', async (t) => {
  const dir = await tempDir(t);
  const scan = scanner();
  const raise = scan('S1', 20);
  {
    // Run 1 "crashes" right after the journal write: the outbox never sees the event.
    const store = new DebounceStore({ dir, logger: quiet() });
    await store.load();
    const journal = new EventJournal({ store, states: new Map(), pending: [], outboxWritten: () => new Promise(() => undefined), release: () => undefined });
    journal.push(raise);
    await store.idle();
  }
  const store = new DebounceStore({ dir, logger: quiet() });
  const states = await store.load();
  t.like(states.get('shelf/S1'), { state: 'anomalous' }, 'the state that raised it');
  const pending = store.pendingEvents();
  t.deepEqual(pending, [eventRecord(raise.event!)]);

  let written!: (ok: boolean) => void;
  const journal = new EventJournal({ store, states, pending, outboxWritten: () => new Promise((resolve) => (written = resolve)), release: () => undefined, clearSaveMs: 10 });
  const published: PendingEvent[] = [];
  t.is(journal.replay((p) => published.push(p)), 1);
  t.deepEqual(published, pending, 'the same id and payload as run 1 would have published');
  written(true);
  await new Promise((resolve) => setTimeout(resolve, 40));
  await store.idle();
  t.deepEqual(onDisk(dir)!.pending, [], 'replayed into the outbox: no longer pending');
  t.like(onDisk(dir)!.slots['shelf/S1'], { state: 'anomalous' });
});

test('a journal write that hangs holds events no longer than maxWaitMs: they are released, counted and warned about', async (t) => {
  const scan = scanner();
  const released: ShelfOutput[] = [];
  const warnings: string[] = [];
  // A disk that never answers (a dying card): the save's promise never settles.
  const hung = { save: () => new Promise<void>(() => undefined) };
  const journal = new EventJournal({ store: hung, states: new Map(), pending: [], outboxWritten: async () => true, release: (o) => released.push(o), maxWaitMs: 50, warn: (m) => warnings.push(m) });
  const outputs = [scan('S1', 20), scan('S0', 1), scan('S2', 20)];
  for (const o of outputs) journal.push(o);
  t.deepEqual(released, []);
  await new Promise((resolve) => setTimeout(resolve, 150));
  t.deepEqual(released, outputs, 'released in order after the wait');
  t.like(journal.stats(), { releasedUnjournalled: 2 });
  t.is(warnings.length, 2);
  t.regex(warnings[0]!, /debounce state write is slow/);
});

test('pending events are capped: over maxPending the oldest is dropped, counted and warned about', async (t) => {
  const { dir, store } = await loadedStore(t);
  const scan = scanner();
  const warnings: string[] = [];
  // The outbox's disk keeps failing: nothing is ever dropped as written.
  const journal = new EventJournal({ store, states: new Map(), pending: [], outboxWritten: async () => false, release: () => undefined, maxPending: 3, warn: (m) => warnings.push(m) });
  const events = [scan('S1', 20), scan('S1', 1), scan('S1', 20), scan('S1', 1), scan('S1', 20)];
  for (const o of events) journal.push(o);
  await store.idle();
  t.deepEqual(journal.pendingEvents(), events.slice(2).map((o) => eventRecord(o.event!)));
  t.like(journal.stats(), { pending: 3, droppedPending: 2 });
  t.is(warnings.length, 2);
  t.deepEqual(onDisk(dir)!.pending, journal.pendingEvents());
});

test('flush does not wait on a hung disk longer than maxWaitMs per step; what was not written stays pending', async (t) => {
  const scan = scanner();
  const saved: number[] = [];
  const hung = { save: (_states: unknown, pending?: ReadonlyMap<string, PendingEvent>) => (saved.push(pending?.size ?? 0), new Promise<void>(() => undefined)) };
  const journal = new EventJournal({ store: hung, states: new Map(), pending: [], outboxWritten: () => new Promise(() => undefined), release: () => undefined, maxWaitMs: 30 });
  journal.push(scan('S1', 20));
  await journal.flush(); // returns: a hang here would end the test as never resolved
  t.is(journal.stats().pending, 1, 'the outbox never confirmed it: kept for the next start');
  t.deepEqual(saved, [1, 1]);
});
