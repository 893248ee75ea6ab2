import test from 'ava';
import { from, lastValueFrom, toArray } from 'rxjs';
import { mkdir, mkdtemp, open, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DEBOUNCE_STATE_FILES, DEBOUNCE_STATE_VERSION, DebounceStore, decodeDebounceStateFile, encodeDebounceStateFile, LEGACY_DEBOUNCE_STATE_FILE, readDebounceStateFile } from '../agent/debounce-store.js';
import { Logger } from '../agent/logger.js';
import { debounceSlots, decisionOf, slotKey, step, type DebounceState } from '../pipelines/debounce.js';
import { eventId, toSlotOutputs } from '../pipelines/events.js';
import type { SlotPrediction } from '../pipelines/types.js';

async function tempDir(t: { teardown(fn: () => unknown): void }): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'shelfwatch-debounce-store-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

function capture(): { logger: Logger; lines: () => Array<Record<string, unknown>> } {
  const raw: string[] = [];
  const logger = new Logger({ level: 'debug', sink: { write: (l: string) => raw.push(l) } });
  return { logger, lines: () => raw.map((l) => JSON.parse(l) as Record<string, unknown>) };
}

const OPTS = { raiseAfter: 2, window: 3, clearAfter: 2, run: 'run-a' };

/** The state of a slot after `scans` (score > 10 is anomalous), through the real reducer. */
function stateAfter(camera: string, slot: string, scores: number[]): DebounceState {
  let state: DebounceState | undefined;
  scores.forEach((score, i) => {
    const anomalous = score > 10;
    state = step(state, { camera, slot, anomalous, score, at: 1000 * (i + 1), regions: anomalous ? [{ x: 1, y: 2, width: 3, height: 4 }] : [] }, OPTS).state;
  });
  return state!;
}

function sample(): Map<string, DebounceState> {
  return new Map([
    [slotKey('shelf', 'S0'), stateAfter('shelf', 'S0', [1, 2, 3])],
    [slotKey('shelf', 'S1'), stateAfter('shelf', 'S1', [1, 20, 21, 22])],
    [slotKey('door', 'D1'), stateAfter('door', 'D1', [20, 20, 1, 1])],
  ]);
}

test('round trip: what is saved loads back identical, with the format version in the file', async (t) => {
  const dir = await tempDir(t);
  const states = sample();
  t.is(states.get('shelf/S1')!.state, 'anomalous');
  t.is(states.get('door/D1')!.raises, 1);
  const { logger, lines } = capture();
  const store = new DebounceStore({ dir, logger, clock: () => 1234 });
  await store.save(states);
  t.deepEqual(store.stats(), { writes: 1, failedWrites: 0 });
  const raw = await readFile(join(dir, DEBOUNCE_STATE_FILES[0]));
  t.regex(raw.toString('latin1'), /^shelfwatch-debounce-state seq=1 bytes=\d+ crc32=[0-9a-f]{8}\n\{"version":2,/);
  const file = (await readDebounceStateFile(dir))!;
  t.is(file.version, DEBOUNCE_STATE_VERSION);
  t.is(file.savedAt, 1234);
  t.deepEqual(Object.keys(file.slots).sort(), ['door/D1', 'shelf/S0', 'shelf/S1']);

  const loaded = await new DebounceStore({ dir, logger }).load();
  t.deepEqual(loaded, states);
  t.deepEqual(lines().filter((l) => l.level === 'warn'), []);
});

test('two files in turn: a write cut short by a crash leaves the previous save, which loads; no temp files, no warning', async (t) => {
  const dir = await tempDir(t);
  const { logger, lines } = capture();
  const store = new DebounceStore({ dir, logger });
  const first = sample();
  await store.save(first);
  const second = new Map(first);
  second.set('shelf/S0', { ...first.get('shelf/S0')!, lastScore: 99 });
  await store.save(second);
  t.deepEqual((await readdir(dir)).sort(), [...DEBOUNCE_STATE_FILES]);
  const seqOf = async (name: string) => (decodeDebounceStateFile(await readFile(join(dir, name))) as { seq: number }).seq;
  t.deepEqual([await seqOf(DEBOUNCE_STATE_FILES[0]), await seqOf(DEBOUNCE_STATE_FILES[1])], [1, 2]);
  t.deepEqual(await new DebounceStore({ dir, logger }).load(), second, 'the newer save wins');
  // The crash cuts the next write (seq 3, over the first file) half-way.
  const third = encodeDebounceStateFile(JSON.stringify({ version: 1, savedAt: 3, slots: {} }), 3);
  const old = await readFile(join(dir, DEBOUNCE_STATE_FILES[0]));
  await writeFile(join(dir, DEBOUNCE_STATE_FILES[0]), Buffer.concat([third.subarray(0, third.length - 9), old.subarray(third.length - 9)]));
  t.regex((decodeDebounceStateFile(await readFile(join(dir, DEBOUNCE_STATE_FILES[0]))) as { problem: string }).problem, /checksum mismatch|bytes of JSON/);
  const reopened = new DebounceStore({ dir, logger });
  t.deepEqual(await reopened.load(), second, 'the cut write is skipped');
  t.deepEqual(lines().filter((l) => l.level === 'warn'), []);
  // The next save goes over the cut file, and an earlier version's leftover temp file is removed on load.
  await reopened.save(first);
  t.deepEqual(await seqOf(DEBOUNCE_STATE_FILES[0]), 3);
  await writeFile(join(dir, `${LEGACY_DEBOUNCE_STATE_FILE}.tmp`), '{"version":1,"sav');
  t.deepEqual(await new DebounceStore({ dir, logger }).load(), first);
  t.deepEqual((await readdir(dir)).sort(), [...DEBOUNCE_STATE_FILES]);
});

test('a file of the earlier single-file format is read when neither file exists, and deleted after the first save', async (t) => {
  const dir = await tempDir(t);
  const { logger } = capture();
  await writeFile(join(dir, LEGACY_DEBOUNCE_STATE_FILE), JSON.stringify({ version: 1, savedAt: 5, slots: Object.fromEntries(sample()) }));
  const store = new DebounceStore({ dir, logger });
  t.deepEqual(await store.load(), sample());
  await store.save(sample());
  t.deepEqual(await readdir(dir), [DEBOUNCE_STATE_FILES[0]]);
  t.deepEqual(await new DebounceStore({ dir, logger }).load(), sample());
});

test('an earlier-format file that cannot be deleted after the first save is a warning naming it; saves go on', async (t) => {
  const dir = await tempDir(t);
  const { logger, lines } = capture();
  // A non-empty directory in its place: unlink fails (EISDIR/EPERM) even for root.
  await mkdir(join(dir, LEGACY_DEBOUNCE_STATE_FILE, 'x'), { recursive: true });
  const store = new DebounceStore({ dir, logger });
  t.deepEqual(await store.load(), new Map());
  await store.save(sample());
  await store.save(sample());
  const warns = lines().filter((l) => l.msg === 'the earlier debounce state file could not be deleted; it is no longer used');
  t.is(warns.length, 1, JSON.stringify(lines()));
  t.is(warns[0]!.file, join(dir, LEGACY_DEBOUNCE_STATE_FILE));
  t.deepEqual(store.stats().failedWrites, 0);
  t.deepEqual(await new DebounceStore({ dir, logger }).load(), sample());
});

test('only cut files (a crash during the very first writes): warned, moved aside, an empty map', async (t) => {
  const dir = await tempDir(t);
  await writeFile(join(dir, DEBOUNCE_STATE_FILES[0]), 'shelfwatch-debounce-state seq=1 bytes=500 crc32=00000000\n{"vers');
  const { logger, lines } = capture();
  t.is((await new DebounceStore({ dir, logger, clock: () => 42 }).load()).size, 0);
  const warns = lines().filter((l) => l.level === 'warn');
  t.is(warns.length, 1);
  t.like(warns[0], { msg: 'debounce state file is invalid; moved aside, slots start fresh', file: join(dir, DEBOUNCE_STATE_FILES[0]), problems: ['a write cut short: header says 500 bytes of JSON, the file holds 6'] });
  t.deepEqual(await readdir(dir), [`${DEBOUNCE_STATE_FILES[0]}.corrupt-42`]);
});

test('a failed write is a warning, never an exception, and the next save tries again', async (t) => {
  const dir = await tempDir(t);
  const notADir = join(dir, 'file');
  await writeFile(notADir, 'x');
  const { logger, lines } = capture();
  const store = new DebounceStore({ dir: notADir, logger });
  await t.notThrowsAsync(store.save(sample()));
  t.deepEqual(store.stats(), { writes: 0, failedWrites: 1 });
  const warn = lines().find((l) => l.level === 'warn' && l.msg === 'debounce states could not be saved; a restart now would lose open anomalies')!;
  t.like(warn, { file: join(notADir, DEBOUNCE_STATE_FILES[0]) });
  await t.notThrowsAsync(store.save(sample()));
  t.deepEqual(store.stats(), { writes: 0, failedWrites: 2 });
});

/** FileHandle.prototype (what `open` gives), to stand in for its methods in serial tests. */
async function fileHandleProto(): Promise<Record<'write' | 'sync', (...args: never[]) => unknown>> {
  const fh = await open(new URL(import.meta.url), 'r');
  await fh.close();
  return Object.getPrototypeOf(fh) as Record<'write' | 'sync', (...args: never[]) => unknown>;
}

test('a write cut at any byte, inside the header too, loads the previous save or that one, never an older one', async (t) => {
  const dir = await tempDir(t);
  const { logger } = capture();
  const store = new DebounceStore({ dir, logger, clock: () => 1 });
  const saveOf = (n: number) => new Map([[slotKey('shelf', 'S0'), { ...sample().get('shelf/S0')!, lastScore: n }]]);
  await store.save(saveOf(1));
  await store.save(saveOf(2));
  const path = join(dir, DEBOUNCE_STATE_FILES[0]);
  const old = await readFile(path);
  await store.save(saveOf(3)); // seq 3, over save 1
  const written = await readFile(path);
  const loadedAt: number[] = [];
  for (let k = 0; k <= written.length; k++) {
    await writeFile(path, Buffer.concat([written.subarray(0, k), old.subarray(Math.min(k, old.length))]));
    const loaded = await new DebounceStore({ dir, logger }).load();
    loadedAt.push(loaded.get('shelf/S0')!.lastScore);
  }
  // Cut after `seq=3`, the file held seq 3 over save 1's length, checksum and JSON.
  t.deepEqual(loadedAt.filter((n) => n !== 2 && n !== 3), [], 'never save 1');
  t.is(loadedAt.at(-1), 3);
});

test.serial('short writes (a full disk, a file size limit) are continued; one that ends in an error is a failed save, the next goes over the same file', async (t) => {
  const dir = await tempDir(t);
  const { logger, lines } = capture();
  const proto = await fileHandleProto();
  const write = proto.write as (this: unknown, buf: Buffer, off: number, len: number, pos: number) => Promise<{ bytesWritten: number }>;
  let room = Infinity; // bytes the disk still takes
  proto.write = async function (this: unknown, buf: Buffer, off: number, len: number, pos: number) {
    if (room <= 0) throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
    const r = await write.call(this, buf, off, Math.min(len, 40, room), pos); // at most 40 bytes a call
    room -= r.bytesWritten;
    return r;
  } as never;
  try {
    const store = new DebounceStore({ dir, logger });
    const first = sample();
    const second = new Map(first);
    second.set('shelf/S0', { ...first.get('shelf/S0')!, lastScore: 2 });
    await store.save(first);
    await store.save(second);
    t.deepEqual(store.stats(), { writes: 2, failedWrites: 0 });
    t.deepEqual(await new DebounceStore({ dir, logger }).load(), second);
    // The disk fills up half-way through the next write (over the first file).
    room = 100;
    const third = new Map(second);
    third.set('shelf/S0', { ...first.get('shelf/S0')!, lastScore: 33 });
    await store.save(third);
    t.deepEqual(store.stats(), { writes: 2, failedWrites: 1 });
    const warn = lines().find((l) => l.level === 'warn');
    t.like(warn, { msg: 'debounce states could not be saved; a restart now would lose open anomalies', file: join(dir, DEBOUNCE_STATE_FILES[0]) });
    t.regex((warn?.error as { message?: string } | undefined)?.message ?? '', /^ENOSPC/);
    t.deepEqual(await new DebounceStore({ dir, logger }).load(), second, 'the newest save that succeeded');
    // Space again: the next save goes over the cut file, not over the only valid one.
    room = Infinity;
    await store.save(third);
    const seqOf = async (name: string) => (decodeDebounceStateFile(await readFile(join(dir, name))) as { seq: number }).seq;
    t.deepEqual([await seqOf(DEBOUNCE_STATE_FILES[0]), await seqOf(DEBOUNCE_STATE_FILES[1])], [3, 2]);
    t.deepEqual(await new DebounceStore({ dir, logger }).load(), third);
  } finally {
    proto.write = write as never;
  }
});

test('the file of the earlier format is still read when the first write of the new one was cut short (the only file, moved aside)', async (t) => {
  const dir = await tempDir(t);
  const { logger, lines } = capture();
  await writeFile(join(dir, LEGACY_DEBOUNCE_STATE_FILE), JSON.stringify({ version: 1, savedAt: 5, slots: Object.fromEntries(sample()) }));
  // The crash came after the first save created its file, before (or while) it was written.
  await writeFile(join(dir, DEBOUNCE_STATE_FILES[0]), '');
  const store = new DebounceStore({ dir, logger, clock: () => 3 });
  t.deepEqual(await store.load(), sample());
  t.like(lines().find((l) => l.level === 'warn'), { file: join(dir, DEBOUNCE_STATE_FILES[0]), problems: ['a write cut short: empty file'] });
  await store.save(sample());
  t.deepEqual((await readdir(dir)).sort(), [DEBOUNCE_STATE_FILES[0], `${DEBOUNCE_STATE_FILES[0]}.corrupt-3`]);
  t.deepEqual(await new DebounceStore({ dir, logger }).load(), sample());
});

test.serial('the folder removed while running: each of the two files created anew has the directory synced', async (t) => {
  const dir = await tempDir(t);
  const { logger } = capture();
  const proto = await fileHandleProto();
  const sync = proto.sync as (this: unknown) => Promise<void>;
  let dirSyncs = 0; // fsyncDir syncs the folder with sync(), the files get datasync()
  proto.sync = function (this: unknown) {
    dirSyncs++;
    return sync.call(this);
  } as never;
  try {
    const store = new DebounceStore({ dir, logger });
    await store.save(sample());
    await store.save(sample());
    t.is(dirSyncs, 2);
    await rm(dir, { recursive: true });
    dirSyncs = 0;
    await store.save(sample()); // fails: no folder
    await store.save(sample()); // the folder and debounce-state.a anew
    await store.save(sample()); // debounce-state.b anew
    t.deepEqual(store.stats(), { writes: 4, failedWrites: 1 });
    t.deepEqual((await readdir(dir)).sort(), [...DEBOUNCE_STATE_FILES]);
    t.is(dirSyncs, 2);
  } finally {
    proto.sync = sync as never;
  }
});

test('missing file: an empty map, nothing logged', async (t) => {
  const dir = await tempDir(t);
  const { logger, lines } = capture();
  const loaded = await new DebounceStore({ dir: join(dir, 'not-yet'), logger }).load();
  t.is(loaded.size, 0);
  t.deepEqual(lines(), []);
});

test('corrupt JSON: warned with the file named, moved aside, an empty map', async (t) => {
  const dir = await tempDir(t);
  const path = join(dir, DEBOUNCE_STATE_FILES[0]);
  // Its checksum holds: the JSON itself is broken (not a write cut short).
  await writeFile(path, encodeDebounceStateFile('{"version":1,"savedAt":12,"slots":{"shelf/S1":{"camera":"sh', 1));
  const { logger, lines } = capture();
  const loaded = await new DebounceStore({ dir, logger, clock: () => 1700000000000 }).load();
  t.is(loaded.size, 0);
  const warns = lines().filter((l) => l.level === 'warn');
  t.is(warns.length, 1);
  t.like(warns[0], { msg: 'debounce state file is invalid; moved aside, slots start fresh', file: path, movedTo: `${path}.corrupt-1700000000000` });
  t.regex((warns[0]!.problems as string[])[0]!, /^not valid JSON: /);
  t.deepEqual(await readdir(dir), [`${DEBOUNCE_STATE_FILES[0]}.corrupt-1700000000000`]);
  t.deepEqual(await readFile(`${path}.corrupt-1700000000000`), encodeDebounceStateFile('{"version":1,"savedAt":12,"slots":{"shelf/S1":{"camera":"sh', 1));
  // The next save starts a fresh file beside the one moved aside.
  const store = new DebounceStore({ dir, logger });
  await store.save(sample());
  t.deepEqual((await readdir(dir)).sort(), [DEBOUNCE_STATE_FILES[0], `${DEBOUNCE_STATE_FILES[0]}.corrupt-1700000000000`]);
});

test('wrong shape: each problem named in the warning (path and what is wrong), moved aside, an empty map', async (t) => {
  const dir = await tempDir(t);
  const path = join(dir, DEBOUNCE_STATE_FILES[0]);
  const put = (json: string) => writeFile(path, encodeDebounceStateFile(json, 1));
  const good = JSON.parse(JSON.stringify({ version: 1, savedAt: 5, slots: Object.fromEntries(sample()) }));
  good.slots['shelf/S1'].history[1] = 'yes';
  delete good.slots['shelf/S0'].raisedIn;
  good.slots['door/D1'].state = 'broken';
  good.slots['shelf/S9'] = { ...good.slots['door/D1'], state: 'ok' };
  good.extra = true;
  await put(JSON.stringify(good));
  const { logger, lines } = capture();
  const loaded = await new DebounceStore({ dir, logger, clock: () => 7 }).load();
  t.is(loaded.size, 0);
  const warns = lines().filter((l) => l.level === 'warn');
  t.is(warns.length, 1);
  t.like(warns[0], { file: path, movedTo: `${path}.corrupt-7` });
  const problems = (warns[0]!.problems as string[]).join('\n');
  t.regex(problems, /slots\.shelf\/S1\.history\.1: .*boolean/);
  t.regex(problems, /slots\.shelf\/S0\.raisedIn: /);
  t.regex(problems, /slots\.door\/D1\.state: /);
  t.regex(problems, /\(file\): .*extra/);
  t.deepEqual(await readdir(dir), [`${DEBOUNCE_STATE_FILES[0]}.corrupt-7`]);

  // A key that does not match its entry, and a file of another format version.
  await put(JSON.stringify({ version: 1, savedAt: 5, slots: { 'shelf/S9': sample().get('shelf/S1') } }));
  t.is((await new DebounceStore({ dir, logger, clock: () => 8 }).load()).size, 0);
  t.regex((lines().at(-1)!.problems as string[]).join('\n'), /slots\.shelf\/S9: key does not match camera 'shelf' and slot 'S1'/);
  await put(JSON.stringify({ version: 3, whatever: [] }));
  t.is((await new DebounceStore({ dir, logger, clock: () => 9 }).load()).size, 0);
  t.deepEqual(lines().at(-1)!.problems, [`version: unsupported format version 3 (this agent reads 1 and ${DEBOUNCE_STATE_VERSION})`]);
  await put('[1, 2]');
  t.is((await new DebounceStore({ dir, logger, clock: () => 10 }).load()).size, 0);
  t.regex((lines().at(-1)!.problems as string[]).join('\n'), /^\(file\): /);
  t.deepEqual((await readdir(dir)).sort(), [7, 8, 9, 10].map((n) => `${DEBOUNCE_STATE_FILES[0]}.corrupt-${n}`).sort());
});

test('pending events are saved beside the states and load back in order, whatever their slot; a version-1 file has none', async (t) => {
  const dir = await tempDir(t);
  const { logger, lines } = capture();
  const pending = new Map([
    ['e1:new:f1', { id: 'e1:new:f1', payload: JSON.stringify({ type: 'new', camera: 'door' }) }],
    ['e2:update:f2', { id: 'e2:update:f2', payload: JSON.stringify({ type: 'update' }) }],
  ]);
  await new DebounceStore({ dir, logger }).save(sample(), pending);
  // door/D1 is no longer configured: its state goes, its event is still owed to subscribers.
  const store = new DebounceStore({ dir, logger, slots: ['shelf/S0', 'shelf/S1'] });
  t.is((await store.load()).size, 2);
  t.deepEqual(store.pendingEvents(), [...pending.values()]);
  t.deepEqual((await readDebounceStateFile(dir))!.pending, [...pending.values()]);

  // What an earlier agent wrote: version 1, no pending.
  const v1 = await tempDir(t);
  const json = JSON.stringify({ version: 1, savedAt: 5, slots: Object.fromEntries(sample()) });
  await writeFile(join(v1, DEBOUNCE_STATE_FILES[0]), encodeDebounceStateFile(json, 1));
  const old = new DebounceStore({ dir: v1, logger });
  t.deepEqual(await old.load(), sample());
  t.deepEqual(old.pendingEvents(), []);
  t.deepEqual(lines().filter((l) => l.level === 'warn'), []);
});

test('a pending event whose payload is not an event\'s JSON makes the file invalid, named by its path', async (t) => {
  const dir = await tempDir(t);
  const { logger, lines } = capture();
  const json = JSON.stringify({ version: 2, savedAt: 5, slots: {}, pending: [{ id: 'a', payload: '{}' }, { id: 'b', payload: '[1' }] });
  await writeFile(join(dir, DEBOUNCE_STATE_FILES[0]), encodeDebounceStateFile(json, 1));
  const store = new DebounceStore({ dir, logger, clock: () => 3 });
  t.is((await store.load()).size, 0);
  t.deepEqual(store.pendingEvents(), []);
  t.deepEqual(lines().at(-1)!.problems, ['pending.1.payload: expected the JSON of an event']);
});

test('entries of slots no longer in the config are dropped on load', async (t) => {
  const dir = await tempDir(t);
  const { logger, lines } = capture();
  await new DebounceStore({ dir, logger }).save(sample());
  const loaded = await new DebounceStore({ dir, logger, slots: ['shelf/S0', 'shelf/S1', 'shelf/S2'] }).load();
  t.deepEqual([...loaded.keys()].sort(), ['shelf/S0', 'shelf/S1']);
  t.deepEqual(loaded.get('shelf/S1'), sample().get('shelf/S1'));
  t.like(lines().find((l) => l.msg === 'debounce states of slots no longer configured dropped'), { level: 'info', slots: ['door/D1'] });
});

test('coalesced writes: one in flight, a burst of saves meanwhile makes ONE more write of the newest map', async (t) => {
  const dir = await tempDir(t);
  const { logger } = capture();
  const store = new DebounceStore({ dir, logger });
  const states = sample();
  const first = store.save(states);
  // While the first write runs, the pipeline goes on changing the map and asking for saves.
  const burst: Array<Promise<void>> = [];
  for (let i = 0; i < 20; i++) {
    states.set('shelf/S0', { ...states.get('shelf/S0')!, lastScore: i });
    burst.push(store.save(states));
  }
  t.is(new Set(burst).size, 1, 'every save of the burst shares one queued write');
  await Promise.all([first, ...burst]);
  t.deepEqual(store.stats(), { writes: 2, failedWrites: 0 });
  t.deepEqual(await new DebounceStore({ dir, logger }).load(), states, 'the queued write carried the newest map');
  t.is((await new DebounceStore({ dir, logger }).load()).get('shelf/S0')!.lastScore, 19);
  // Idle again: the next save writes at once.
  await store.save(states);
  await store.idle();
  t.deepEqual(store.stats(), { writes: 3, failedWrites: 0 });
  t.deepEqual((await readdir(dir)).sort(), [...DEBOUNCE_STATE_FILES]);
});

/** A scan of cam1/A1 (threshold 10), anomalous ones with the same region. */
function scan(at: number, score: number): SlotPrediction {
  const anomalous = score > 10;
  return {
    crop: { frame: { id: `cam1-${at}-0`, camera: 'cam1', capturedAt: at }, slot: 'A1', box: { x: 0, y: 0, width: 100, height: 100 }, model: 'm' },
    prediction: { score, normalizedScore: score / 20, anomalyMap: new Float32Array(4), mapSize: 2, mask: new Uint8Array(4), threshold: 10, isAnomalous: anomalous, modelDigest: 'd' },
    regions: anomalous ? [{ box: { x: 10, y: 10, width: 20, height: 20 }, area: 400, peak: 3 }] : [],
  };
}

test('restored through the store: the open event keeps its id in the retained state, is ended under it, and a later raise gets a new one', async (t) => {
  const dir = await tempDir(t);
  const { logger } = capture();
  const debounce = { raiseAfter: 2, window: 3, clearAfter: 3 };
  const run = async (states: Map<string, DebounceState>, tag: string, scans: SlotPrediction[]) =>
    lastValueFrom(from(scans).pipe(debounceSlots({ ...debounce, run: tag, states }, decisionOf), toSlotOutputs({ thumbnail: true }), toArray()));

  const before = new Map<string, DebounceState>();
  const first = await run(before, 'run-a', [scan(1000, 20), scan(2000, 22)]);
  const id = eventId('cam1', 'A1', 2000, { run: 'run-a', raise: 1 });
  t.deepEqual(first.map((o) => o.event?.type ?? null), [null, 'new']);
  t.is(first[1]!.event!.after.id, id);
  await new DebounceStore({ dir, logger }).save(before);

  // Restart: a new builder, the states from disk, another run tag. Normal, anomalous (same
  // region, same score: no transition), then three normal scans clear it.
  const restored = await new DebounceStore({ dir, logger, slots: ['cam1/A1'] }).load();
  const second = await run(restored, 'run-b', [scan(3000, 1), scan(4000, 22), scan(5000, 2), scan(6000, 2), scan(7000, 2), scan(8000, 30), scan(9000, 30)]);
  t.deepEqual(
    second.map((o) => [o.event?.type ?? null, o.state.state, o.state.eventId]),
    [
      [null, 'anomalous', id],
      [null, 'anomalous', id],
      [null, 'anomalous', id],
      [null, 'anomalous', id],
      ['end', 'ok', null],
      [null, 'ok', null],
      ['new', 'anomalous', eventId('cam1', 'A1', 9000, { run: 'run-b', raise: 2 })],
    ],
  );
  const end = second[4]!.event!;
  // The end describes the last anomalous scan (the normal one adopted first was only provisional).
  t.like(end.before, { id, startTime: 2000, score: 22, topScore: 22, frameId: 'cam1-4000-0', endTime: null, thumbnail: false });
  t.like(end.after, { id, endTime: 7000 });
  t.not(second[6]!.event!.after.id, id);
});

test('a store that saves without loading first counts on from the files on disk: the next load gets its save', async (t) => {
  const dir = await tempDir(t);
  const { logger } = capture();
  const earlier = new DebounceStore({ dir, logger });
  for (let i = 0; i < 5; i++) await earlier.save(sample());
  const fresh = new Map([[slotKey('shelf', 'S0'), stateAfter('shelf', 'S0', [1, 30, 31])]]);
  await new DebounceStore({ dir, logger }).save(fresh);
  t.deepEqual(await new DebounceStore({ dir, logger }).load(), fresh);
});
