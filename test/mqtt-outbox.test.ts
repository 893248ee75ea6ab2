/**
 * Unit tests of the MQTT layer that need no broker: the durable outbox (persistence, order,
 * bounds, supersede, corrupt files, disk errors, reopen), topic validation and the Home
 * Assistant discovery payloads.
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Outbox, decodeRecord, decodeRecordFile, encodeRecord, type OutboxDiskError, type OutboxLimits } from '../agent/mqtt/outbox.js';
import { agentTopics, TopicError, validateBaseTopic } from '../agent/mqtt/topics.js';
import { homeAssistantDiscovery, homeAssistantRemoval } from '../agent/mqtt/home-assistant.js';

const LIMITS: OutboxLimits = { maxRecords: 1000, maxBytes: 10 * 1024 * 1024 };

async function tempDir(t: { teardown(fn: () => Promise<void>): void }): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'shelfwatch-outbox-test-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

const recordFiles = async (dir: string) => (await readdir(dir)).filter((n) => n.endsWith('.rec')).sort();

// ---- outbox ------------------------------------------------------------------------------

test('outbox: a record is on disk when enqueue resolves, and survives a reopen in order', async (t) => {
  const dir = await tempDir(t);
  const outbox = await Outbox.open(dir, LIMITS);
  const payloads = ['first', 'second', 'third'].map((s) => Buffer.from(s));
  for (const [i, payload] of payloads.entries()) {
    const result = await outbox.enqueue({ id: `e${i}`, topic: 'sw/a/events', payload });
    t.true(result.persisted);
    t.is((await recordFiles(dir)).length, i + 1, 'file written before enqueue resolved');
  }
  await outbox.close();

  const reopened = await Outbox.open(dir, LIMITS);
  t.teardown(() => reopened.close());
  const pending = reopened.pending();
  t.deepEqual(pending.map((r) => r.id), ['e0', 'e1', 'e2']);
  t.deepEqual(pending.map((r) => r.payload.toString()), ['first', 'second', 'third']);
  t.deepEqual(pending.map((r) => [r.qos, r.retain]), [[1, false], [1, false], [1, false]]);
  // New records continue the sequence after the loaded ones.
  const next = await reopened.enqueue({ id: 'e3', topic: 'sw/a/events', payload: 'x' });
  t.true(next.seq > pending[2].seq);
  t.deepEqual(reopened.depth().records, 4);
});

test('outbox: concurrent enqueues keep call order, on disk too', async (t) => {
  const dir = await tempDir(t);
  const outbox = await Outbox.open(dir, LIMITS);
  const ids = Array.from({ length: 100 }, (_, i) => `m${i}`);
  await Promise.all(ids.map((id) => outbox.enqueue({ id, topic: 'sw/a/events', payload: id })));
  t.deepEqual(outbox.pending().map((r) => r.id), ids);
  await outbox.close();
  const reopened = await Outbox.open(dir, LIMITS);
  t.teardown(() => reopened.close());
  t.deepEqual(reopened.pending().map((r) => r.id), ids);
  t.deepEqual(reopened.pendingAfter(reopened.pending()[49].seq, 3).map((r) => r.id), ['m50', 'm51', 'm52']);
});

test('outbox: ack deletes the record; a stale seq or unknown id is a no-op', async (t) => {
  const dir = await tempDir(t);
  const outbox = await Outbox.open(dir, LIMITS);
  t.teardown(() => outbox.close());
  const a = await outbox.enqueue({ id: 'a', topic: 't/a', payload: 'A' });
  await outbox.enqueue({ id: 'b', topic: 't/b', payload: 'B' });
  t.false(await outbox.ack('a', a.seq + 100), 'wrong seq does not remove');
  t.false(await outbox.ack('nope'));
  t.true(await outbox.ack('a', a.seq));
  t.false(await outbox.ack('a'), 'second ack finds nothing');
  t.deepEqual(outbox.pending().map((r) => r.id), ['b']);
  t.is((await recordFiles(dir)).length, 1);
  t.like(outbox.counters(), { enqueued: 2, delivered: 1, dropped: 0 });
});

test('outbox: when maxRecords is reached the OLDEST records are dropped and counted', async (t) => {
  const dir = await tempDir(t);
  const outbox = await Outbox.open(dir, { maxRecords: 3, maxBytes: 1 << 20 });
  t.teardown(() => outbox.close());
  const dropped: string[] = [];
  outbox.on('dropped', (r) => dropped.push(r.id));
  for (let i = 0; i < 5; i++) await outbox.enqueue({ id: `e${i}`, topic: 't/e', payload: `${i}` });
  t.deepEqual(outbox.pending().map((r) => r.id), ['e2', 'e3', 'e4']);
  t.deepEqual(dropped, ['e0', 'e1']);
  t.is(outbox.counters().dropped, 2);
  t.is((await recordFiles(dir)).length, 3, 'dropped files are deleted');
});

test('outbox: maxBytes drops the oldest; a record larger than maxBytes is refused', async (t) => {
  const dir = await tempDir(t);
  const payload = Buffer.alloc(1000, 7);
  const size = encodeRecord({ id: 'e0', seq: 1, topic: 't/e', payload, qos: 1, retain: false, createdAt: Date.now() }).length;
  const outbox = await Outbox.open(dir, { maxRecords: 100, maxBytes: Math.floor(size * 3.5) });
  t.teardown(() => outbox.close());
  for (let i = 0; i < 6; i++) await outbox.enqueue({ id: `e${i}`, topic: 't/e', payload });
  t.deepEqual(outbox.pending().map((r) => r.id), ['e3', 'e4', 'e5']);
  t.true(outbox.depth().bytes <= Math.floor(size * 3.5));
  t.is(outbox.counters().dropped, 3);
  const err = await t.throwsAsync(outbox.enqueue({ id: 'huge', topic: 't/e', payload: Buffer.alloc(size * 4) }), { instanceOf: RangeError });
  t.regex(err!.message, /"huge".*larger than outbox\.maxBytes/);
});

test('outbox: a retained record supersedes the older pending retained record of the same topic, never across an event', async (t) => {
  const dir = await tempDir(t);
  const outbox = await Outbox.open(dir, LIMITS);
  t.teardown(() => outbox.close());
  await outbox.enqueue({ id: 's1', topic: 'sw/a/cam/A1/state', payload: '{"state":"ok"}', retain: true });
  await outbox.enqueue({ id: 'ev1', topic: 'sw/a/events', payload: 'event' });
  await outbox.enqueue({ id: 'n1', topic: 'sw/a/cam/A1/state', payload: 'not retained' });
  // s1 was queued before ev1 and n1: it must still arrive before them, so it stays.
  await outbox.enqueue({ id: 's2', topic: 'sw/a/cam/A1/state', payload: '{"state":"anomalous"}', retain: true });
  await outbox.enqueue({ id: 'other', topic: 'sw/a/cam/A2/state', payload: '{"state":"ok"}', retain: true });
  // Nothing but retained records after s2: s3 replaces it.
  await outbox.enqueue({ id: 's3', topic: 'sw/a/cam/A1/state', payload: '{"state":"ok"}', retain: true });
  t.deepEqual(outbox.pending().map((r) => r.id), ['s1', 'ev1', 'n1', 'other', 's3']);
  t.is(outbox.counters().superseded, 1);
  t.is((await recordFiles(dir)).length, 5);
});

test('outbox: after a backlog, an event still finds its own thumbnail retained (no reorder by supersede)', async (t) => {
  const dir = await tempDir(t);
  const first = await Outbox.open(dir, LIMITS);
  // Queued during an outage: thumbnail + new of frame 1, then thumbnail + update of frame 2.
  await first.enqueue({ id: 'A:f1:thumbnail', topic: 'sw/a/cam/S1/thumbnail', payload: 'jpeg-f1', retain: true });
  await first.enqueue({ id: 'A:new:f1', topic: 'sw/a/events', payload: 'new A' });
  await first.close();
  // …across a restart too: the order watermark comes back with the records.
  const outbox = await Outbox.open(dir, LIMITS);
  t.teardown(() => outbox.close());
  await outbox.enqueue({ id: 'A:f2:thumbnail', topic: 'sw/a/cam/S1/thumbnail', payload: 'jpeg-f2', retain: true });
  await outbox.enqueue({ id: 'A:update:f2', topic: 'sw/a/events', payload: 'update A' });
  // A subscriber replaying the delivery order sees each event after its own thumbnail.
  const retained = new Map<string, string>();
  const seen: string[] = [];
  for (const r of outbox.pending()) {
    if (r.retain) retained.set(r.topic, r.payload.toString());
    else seen.push(`${r.payload} with ${retained.get('sw/a/cam/S1/thumbnail')}`);
  }
  t.deepEqual(seen, ['new A with jpeg-f1', 'update A with jpeg-f2']);
  t.is(outbox.counters().superseded, 0);
});

test('outbox: a superseded record keeps its file until its replacement is on disk', async (t) => {
  const dir = await tempDir(t);
  const outbox = await Outbox.open(dir, { ...LIMITS, retryIntervalMs: 50 });
  t.teardown(() => outbox.close());
  outbox.on('diskError', () => undefined);
  await outbox.enqueue({ id: 's1', topic: 'sw/a/cam/A1/state', payload: 'one', retain: true });
  t.deepEqual(await recordFiles(dir), ['0000000000000001.rec']);
  // The next write fails (a directory where its temp file would go): s1's file is the last copy.
  await mkdir(join(dir, '0000000000000002.rec.tmp'));
  const r2 = await outbox.enqueue({ id: 's2', topic: 'sw/a/cam/A1/state', payload: 'two', retain: true });
  t.false(r2.persisted);
  t.deepEqual(outbox.pending().map((r) => r.id), ['s2'], 'only the newest is published');
  t.deepEqual(await recordFiles(dir), ['0000000000000001.rec'], 'the superseded file stays while s2 is only in memory');
  // A restart now would still find s1. Once s2 is written, s1's file goes.
  await rm(join(dir, '0000000000000002.rec.tmp'), { recursive: true });
  for (let i = 0; i < 100 && outbox.depth().memoryOnly > 0; i++) await new Promise((r) => setTimeout(r, 20));
  for (let i = 0; i < 50 && (await recordFiles(dir)).length > 1; i++) await new Promise((r) => setTimeout(r, 20));
  t.deepEqual(await recordFiles(dir), ['0000000000000002.rec']);
  // And a replacement that is delivered before it ever reached the disk takes the old files with it.
  await mkdir(join(dir, '0000000000000003.rec.tmp'));
  const r3 = await outbox.enqueue({ id: 's3', topic: 'sw/a/cam/A1/state', payload: 'three', retain: true });
  t.false(r3.persisted);
  t.true(await outbox.ack('s3', r3.seq));
  await rm(join(dir, '0000000000000003.rec.tmp'), { recursive: true });
  t.deepEqual(await recordFiles(dir), []);
});

test('outbox: a group whose directory fsync fails after the rename leaves no file behind, so its records, delivered from memory, do not come back after a restart', async (t) => {
  const dir = await tempDir(t);
  const outbox = await Outbox.open(dir, { ...LIMITS, retryIntervalMs: 3_600_000 });
  const errors: OutboxDiskError[] = [];
  outbox.on('diskError', (e) => errors.push(e));
  // The file is renamed into place, then the directory fsync fails (EIO on a dying card).
  const internals = outbox as unknown as { syncDir(): Promise<void> };
  const syncDir = internals.syncDir;
  internals.syncDir = () => Promise.reject(Object.assign(new Error('EIO: i/o error, fsync'), { code: 'EIO' }));
  const results = await Promise.all(['a', 'b'].map((id) => outbox.enqueue({ id, topic: 'sw/a/events', payload: id })));
  internals.syncDir = syncDir;
  t.deepEqual(results.map((r) => r.persisted), [false, false]);
  t.is(errors.length, 1);
  t.is(outbox.depth().memoryOnly, 2);
  t.deepEqual(await recordFiles(dir), [], 'not written means no file: nothing would delete it');
  // Delivered from memory before any retry.
  for (const r of results) t.true(await outbox.ack(r.id, r.seq));
  t.deepEqual(await recordFiles(dir), []);
  await outbox.close();
  const reopened = await Outbox.open(dir, LIMITS);
  t.teardown(() => reopened.close());
  t.deepEqual(reopened.pending().map((r) => r.id), [], 'acked records are not delivered again');
});

test('outbox: a record whose id is already pending replaces it', async (t) => {
  const dir = await tempDir(t);
  const outbox = await Outbox.open(dir, LIMITS);
  t.teardown(() => outbox.close());
  const old = await outbox.enqueue({ id: 'stats', topic: 'sw/a/stats', payload: '1' });
  await outbox.enqueue({ id: 'ev', topic: 'sw/a/events', payload: 'e' });
  await outbox.enqueue({ id: 'stats', topic: 'sw/a/stats', payload: '2' });
  t.deepEqual(outbox.pending().map((r) => `${r.id}=${r.payload}`), ['ev=e', 'stats=2']);
  t.false(await outbox.ack('stats', old.seq), 'the PUBACK of the replaced record does not remove the new one');
  t.is(outbox.counters().superseded, 1);
});

test('outbox: the records of one tick (an event, its thumbnail, mask and state) share one file, deleted once all are acked', async (t) => {
  const dir = await tempDir(t);
  const outbox = await Outbox.open(dir, LIMITS);
  t.teardown(() => outbox.close());
  const event = ['thumb', 'mask', 'event', 'state'];
  const results = await Promise.all(event.map((id) => outbox.enqueue({ id, topic: `sw/a/${id}`, payload: id, retain: id !== 'event' })));
  t.true(results.every((r) => r.persisted));
  const files = await recordFiles(dir);
  t.deepEqual(files, [`${String(results[0]!.seq).padStart(16, '0')}.rec`], 'one file for the group, named by its first seq');
  const inFile = decodeRecordFile(await readFile(join(dir, files[0]!)));
  t.deepEqual(inFile.map((r) => r.record.id), event);
  t.deepEqual(inFile.map((r) => r.size), inFile.map((r) => encodeRecord(r.record).length));
  // A later tick gets its own file.
  await outbox.enqueue({ id: 'next', topic: 'sw/a/events', payload: 'n' });
  t.is((await recordFiles(dir)).length, 2);
  for (const id of ['thumb', 'mask', 'event']) await outbox.ack(id);
  t.deepEqual((await recordFiles(dir))[0], files[0], 'still needed by the state record');
  await outbox.ack('state');
  t.false((await recordFiles(dir)).includes(files[0]!), 'deleted with its last record');
});

test('outbox: close rewrites a partly delivered group with its pending records only, so a restart delivers nothing twice', async (t) => {
  const dir = await tempDir(t);
  const outbox = await Outbox.open(dir, LIMITS);
  await Promise.all(['a', 'b', 'c', 'd'].map((id) => outbox.enqueue({ id, topic: 'sw/a/events', payload: id })));
  await Promise.all(['e', 'f'].map((id) => outbox.enqueue({ id, topic: 'sw/a/events', payload: id })));
  await outbox.ack('a'); // the first record of the first group: the file gets the name of 'b'
  await outbox.ack('f'); // the last of the second: same name, replaced in place
  await outbox.close();
  const reopened = await Outbox.open(dir, LIMITS);
  t.teardown(() => reopened.close());
  t.deepEqual(reopened.pending().map((r) => r.id), ['b', 'c', 'd', 'e']);
  t.is((await recordFiles(dir)).length, 2);
  t.is(reopened.counters().corrupt, 0);
});

test('outbox: a record of a group set aside in dead/ gets a file of its own; the rest of the group is still delivered', async (t) => {
  const dir = await tempDir(t);
  const outbox = await Outbox.open(dir, LIMITS);
  const [a, b] = await Promise.all(['a', 'b'].map((id) => outbox.enqueue({ id, topic: 'sw/a/events', payload: id })));
  t.true(await outbox.deadLetter('a', a!.seq));
  const dead = await readdir(join(dir, 'dead'));
  t.deepEqual(dead, [`${String(a!.seq).padStart(16, '0')}.rec`]);
  t.is(decodeRecord(await readFile(join(dir, 'dead', dead[0]!))).id, 'a');
  t.deepEqual(outbox.pending().map((r) => r.id), ['b']);
  await outbox.ack('b', b!.seq);
  t.deepEqual(await recordFiles(dir), [], 'the group file goes with its last record');
  await outbox.close();
});

test('outbox: when dead/ cannot be written, the record set aside keeps its copy and is pending again after a restart', async (t) => {
  const dir = await tempDir(t);
  const outbox = await Outbox.open(dir, LIMITS);
  const errors: OutboxDiskError[] = [];
  outbox.on('diskError', (e) => errors.push(e));
  const a = await outbox.enqueue({ id: 'a', topic: 'sw/a/events', payload: 'a' });
  await writeFile(join(dir, 'dead'), 'a file where the folder should be');
  t.true(await outbox.deadLetter('a', a.seq));
  t.is(errors.length, 1);
  t.is(errors[0]!.operation, 'dead-letter');
  t.deepEqual(outbox.pending(), []);
  t.deepEqual(await recordFiles(dir), [`${String(a.seq).padStart(16, '0')}.rec`], 'its only copy stays');
  await outbox.close();
  const reopened = await Outbox.open(dir, LIMITS);
  t.teardown(() => reopened.close());
  t.deepEqual(reopened.pending().map((r) => r.id), ['a']);
});

test('outbox: a group file that breaks off in its second record is set aside whole, as corrupt', async (t) => {
  const dir = await tempDir(t);
  const records = [1, 2].map((seq) => encodeRecord({ id: `r${seq}`, seq, topic: 'sw/a/events', payload: Buffer.from('payload'), qos: 1, retain: false, createdAt: 0 }));
  await writeFile(join(dir, '0000000000000001.rec'), Buffer.concat([records[0]!, records[1]!.subarray(0, 20)]));
  const bad = [records[0]!, records[0]!]; // the same seq twice: out of order
  await writeFile(join(dir, '0000000000000003.rec'), Buffer.concat(bad));
  t.throws(() => decodeRecordFile(Buffer.concat([records[0]!, records[1]!.subarray(0, 20)])), { message: /record 2 at byte \d+: .*(too short|past end)/ });
  t.throws(() => decodeRecordFile(Buffer.concat(bad)), { message: /seq 1 after 1/ });
  const outbox = await Outbox.open(dir, LIMITS);
  t.teardown(() => outbox.close());
  t.is(outbox.counters().corrupt, 2);
  t.is(outbox.depth().records, 0);
  t.deepEqual(await recordFiles(dir), []);
});

test('outbox: corrupt record files are moved to corrupt/ and counted; unfinished temp files are removed', async (t) => {
  const dir = await tempDir(t);
  const first = await Outbox.open(dir, LIMITS);
  for (let i = 0; i < 4; i++) await first.enqueue({ id: `e${i}`, topic: 't/e', payload: `payload-${i}` });
  await first.close();
  const files = await recordFiles(dir);
  // e1: one payload byte flipped; e2: truncated (the checksum no longer matches); plus garbage and a temp file.
  const flipped = await readFile(join(dir, files[1]));
  flipped[flipped.length - 6] ^= 0xff;
  await writeFile(join(dir, files[1]), flipped);
  const whole = await readFile(join(dir, files[2]));
  await writeFile(join(dir, files[2]), whole.subarray(0, whole.length - 7));
  await writeFile(join(dir, '0000000000000099.rec'), 'not a record at all');
  await writeFile(join(dir, '0000000000000100.rec.tmp'), 'half written');

  const outbox = await Outbox.open(dir, LIMITS);
  t.teardown(() => outbox.close());
  t.deepEqual(outbox.pending().map((r) => r.id), ['e0', 'e3']);
  t.is(outbox.counters().corrupt, 3);
  t.is((await readdir(join(dir, 'corrupt'))).length, 3);
  t.false((await readdir(dir)).some((n) => n.endsWith('.tmp')));
});

test('outbox: a failed write is surfaced, the record stays publishable from memory and is retried', async (t) => {
  const dir = await tempDir(t);
  const outbox = await Outbox.open(dir, { ...LIMITS, retryIntervalMs: 50 });
  t.teardown(() => outbox.close());
  const errors: OutboxDiskError[] = [];
  outbox.on('diskError', (e) => errors.push(e));
  // Pull the directory away: writes fail with ENOENT (a real file-system error, like ENOSPC would).
  await rm(dir, { recursive: true, force: true });
  const result = await outbox.enqueue({ id: 'e1', topic: 't/e', payload: 'kept' });
  t.false(result.persisted);
  t.is(errors.length, 1);
  t.regex(errors[0].message, /outbox write failed for .*0000000000000001\.rec \(ENOENT\)/);
  t.is(outbox.counters().failedWrites, 1);
  t.deepEqual(outbox.pending().map((r) => r.id), ['e1'], 'still publishable');
  t.is(outbox.depth().memoryOnly, 1);
  // The disk comes back: the retry timer writes the record.
  await mkdir(dir, { recursive: true });
  for (let i = 0; i < 100 && outbox.depth().memoryOnly > 0; i++) await new Promise((r) => setTimeout(r, 20));
  t.is(outbox.depth().memoryOnly, 0);
  t.deepEqual(await recordFiles(dir), ['0000000000000001.rec']);
});

test('outbox: while the disk keeps failing, a retry round stops at the first failed write (one error per round, not one per record)', async (t) => {
  const dir = await tempDir(t);
  // The timer never fires here: the test runs the rounds itself.
  const outbox = await Outbox.open(dir, { ...LIMITS, retryIntervalMs: 3_600_000 });
  t.teardown(() => outbox.close());
  let errors = 0;
  outbox.on('diskError', () => errors++);
  await rm(dir, { recursive: true, force: true });
  for (let i = 0; i < 50; i++) t.false((await outbox.enqueue({ id: `e${i}`, topic: 't/e', payload: `${i}` })).persisted);
  t.is(errors, 50);
  const retryRound = () => (outbox as unknown as { retryWrites(): Promise<void> }).retryWrites();
  await retryRound();
  t.is(errors, 51, 'one failed write for the round');
  t.is(outbox.counters().failedWrites, 51);
  // The disk is back: one round writes them all, in order.
  await mkdir(dir, { recursive: true });
  await retryRound();
  t.is(errors, 51);
  t.is(outbox.depth().memoryOnly, 0);
  t.is((await recordFiles(dir)).length, 50);
});

test('outbox: close tries once more to write the records kept in memory (the disk came back since the last retry)', async (t) => {
  const dir = await tempDir(t);
  const outbox = await Outbox.open(dir, { ...LIMITS, retryIntervalMs: 3_600_000 });
  outbox.on('diskError', () => undefined);
  await rm(dir, { recursive: true, force: true });
  t.false((await outbox.enqueue({ id: 'e1', topic: 't/e', payload: 'kept' })).persisted);
  await mkdir(dir, { recursive: true });
  await outbox.close();
  t.is(outbox.depth().memoryOnly, 0);
  const reopened = await Outbox.open(dir, LIMITS);
  t.teardown(() => reopened.close());
  t.deepEqual(reopened.pending().map((r) => r.id), ['e1'], 'not lost with the process');
});

test('outbox: a record set aside in dead/ never replaces an earlier one (sequence numbers start over in an empty outbox)', async (t) => {
  const dir = await tempDir(t);
  for (const id of ['poison-1', 'poison-2']) {
    const outbox = await Outbox.open(dir, LIMITS);
    const r = await outbox.enqueue({ id, topic: 't/e', payload: id });
    t.is(r.seq, 1);
    t.true(await outbox.deadLetter(r.id, r.seq));
    await outbox.close();
  }
  const dead = (await readdir(join(dir, 'dead'))).sort();
  t.deepEqual(dead, ['0000000000000001-1.rec', '0000000000000001.rec']);
  const ids = await Promise.all(dead.map(async (n) => decodeRecord(await readFile(join(dir, 'dead', n))).id));
  t.deepEqual(ids, ['poison-2', 'poison-1']);
  t.deepEqual(await recordFiles(dir), []);
});

test('outbox: one process at a time; a stale lock is taken over', async (t) => {
  const dir = await tempDir(t);
  const outbox = await Outbox.open(dir, LIMITS);
  await t.throwsAsync(Outbox.open(dir, LIMITS), { message: /already open in this process/ });
  await outbox.close();
  // A lock left by a process that no longer exists.
  await writeFile(join(dir, 'outbox.lock'), '999999999');
  const again = await Outbox.open(dir, LIMITS);
  await again.close();
  t.pass();
});

test('outbox: a lock whose pid now belongs to another process (crash, reboot) is stale; a live holder is not', async (t) => {
  const dir = await tempDir(t);
  const lock = join(dir, 'outbox.lock');
  const stat = readFileSync(`/proc/${process.ppid}/stat`, 'utf8');
  const parentStart = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19]!;
  const bootId = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  const holder = (over: object) => JSON.stringify({ pid: process.ppid, bootId, startTime: parentStart, ...over });
  const opens = async () => {
    try {
      await (await Outbox.open(dir, LIMITS)).close();
      return 'opened';
    } catch (err) {
      return (err as Error).message;
    }
  };
  // The live parent process really holds it: refused, naming the holder.
  await writeFile(lock, holder({}));
  t.regex(await opens(), new RegExp(`in use by process ${process.ppid} \\(lock file .*outbox\\.lock\\)`));
  // Same pid, another process (it started at another time): stale.
  await writeFile(lock, holder({ startTime: '1' }));
  t.is(await opens(), 'opened');
  // Written in another boot (the pid is alive again after a reboot, e.g. 1): stale.
  await writeFile(lock, holder({ pid: 1, bootId: 'another-boot' }));
  t.is(await opens(), 'opened');
  // An old pid-only lock of a live process is taken as held…
  await writeFile(lock, String(process.ppid));
  t.regex(await opens(), /in use by process/);
  // …unless the file is older than the boot.
  await utimes(lock, new Date(0), new Date(0));
  t.is(await opens(), 'opened');
  // What this process writes can be read back the same way.
  const outbox = await Outbox.open(dir, LIMITS);
  const mine = JSON.parse(await readFile(lock, 'utf8'));
  t.like(mine, { pid: process.pid, bootId });
  t.regex(mine.startTime, /^\d+$/);
  await outbox.close();
});

test('outbox: a directory that cannot be written opens degraded: records on disk are delivered, new ones live in memory', async (t) => {
  const dir = await tempDir(t);
  // The kernel remounts a failing card read-only; a tmpfs remounted ro is the same to the outbox.
  const mnt = join(dir, 'mnt');
  await mkdir(mnt);
  const mounted = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=4m', 'none', mnt]).status === 0;
  if (!mounted) {
    t.log('mount(8) is not permitted here (not root, or no CAP_SYS_ADMIN): read-only case not exercised');
    t.pass();
    return;
  }
  t.teardown(() => void spawnSync('umount', [mnt]));
  const obDir = join(mnt, 'outbox');
  const seed = await Outbox.open(obDir, LIMITS);
  await seed.enqueue({ id: 'e1', topic: 't/e', payload: 'on disk' });
  await seed.close();
  t.is(spawnSync('mount', ['-o', 'remount,ro', mnt]).status, 0);
  const outbox = await Outbox.open(obDir, { ...LIMITS, retryIntervalMs: 60_000 });
  t.teardown(() => outbox.close());
  outbox.on('diskError', () => undefined);
  t.regex(outbox.degradedReason ?? '', /cannot write .*outbox \(EROFS\)/);
  t.deepEqual(outbox.pending().map((r) => r.id), ['e1'], 'what was on disk is delivered');
  const r = await outbox.enqueue({ id: 'e2', topic: 't/e', payload: 'new' });
  t.false(r.persisted);
  t.deepEqual(outbox.pending().map((x) => x.id), ['e1', 'e2']);
  t.true(await outbox.ack('e1'));
  t.is(outbox.counters().failedRemovals, 1, 'the delivered record cannot be deleted either: counted, not thrown');
});

test('outbox: invalid messages and limits are refused with a clear error', async (t) => {
  const dir = await tempDir(t);
  await t.throwsAsync(Outbox.open(dir, { maxRecords: 0, maxBytes: 10 }), { message: /outbox\.maxRecords must be a positive integer, got 0/ });
  const outbox = await Outbox.open(dir, LIMITS);
  t.teardown(() => outbox.close());
  await t.throwsAsync(outbox.enqueue({ id: 'x', topic: 'sw/+/events', payload: '' }), { instanceOf: TopicError });
  await t.throwsAsync(outbox.enqueue({ id: '', topic: 'sw/a', payload: '' }), { message: /id must be a string/ });
  await t.throwsAsync(outbox.enqueue({ id: 'q', topic: 'sw/a', payload: '', qos: 3 as never }), { message: /qos must be 0, 1 or 2, got 3/ });
  t.is(outbox.depth().records, 0);
});

// ---- topics ------------------------------------------------------------------------------

test('topics: the tree of one agent', (t) => {
  const topics = agentTopics('shelfwatch/store', 'box-1');
  t.is(topics.availability, 'shelfwatch/store/box-1/availability');
  t.is(topics.events, 'shelfwatch/store/box-1/events');
  t.is(topics.stats, 'shelfwatch/store/box-1/stats');
  t.is(topics.status, 'shelfwatch/store/box-1/status');
  t.is(topics.commandFilter, 'shelfwatch/store/box-1/command/#');
  t.deepEqual(topics.slot('aisle3', 'A1'), {
    state: 'shelfwatch/store/box-1/aisle3/A1/state',
    thumbnail: 'shelfwatch/store/box-1/aisle3/A1/thumbnail',
    mask: 'shelfwatch/store/box-1/aisle3/A1/mask',
  });
  t.is(topics.command('reload'), 'shelfwatch/store/box-1/command/reload');
  t.is(topics.parseCommand('shelfwatch/store/box-1/command/reload'), 'reload');
  t.is(topics.parseCommand('shelfwatch/store/box-1/command/a/b'), null);
  t.is(topics.parseCommand('shelfwatch/store/box-1/command/'), null);
  t.is(topics.parseCommand('shelfwatch/store/box-1/events'), null);
});

test('topics: ids with wildcards, separators or empty levels are refused, naming the value', (t) => {
  t.throws(() => agentTopics('shelfwatch', 'a+b'), { instanceOf: TopicError, message: /agent id "a\+b" contains '\+'/ });
  t.throws(() => agentTopics('shelfwatch', 'a/b'), { message: /agent id "a\/b" contains '\/'/ });
  t.throws(() => agentTopics('shelfwatch', ''), { message: /agent id must be a non-empty string/ });
  t.throws(() => agentTopics('shelf#', 'a'), { message: /contains '#'/ });
  t.throws(() => agentTopics('/shelfwatch', 'a'), { message: /leading or trailing '\/'/ });
  t.throws(() => agentTopics('shelfwatch/', 'a'), { message: /leading or trailing '\/'/ });
  t.throws(() => agentTopics('a//b', 'a'), { message: /empty level at position 1/ });
  t.throws(() => validateBaseTopic('$SYS'), { message: /starts with '\$'/ });
  const topics = agentTopics('shelfwatch', 'a');
  t.throws(() => topics.slot('cam', 'A#1'), { message: /slot id \(camera cam\) "A#1" contains '#'/ });
  t.throws(() => topics.slot('command', 'A1'), { message: /camera id "command" is reserved/ });
  t.throws(() => topics.command('x/y'), { message: /command name "x\/y"/ });
});

// ---- Home Assistant ----------------------------------------------------------------------

test('home assistant: a binary sensor and images per slot, wired to the slot topics', (t) => {
  const topics = agentTopics('shelfwatch', 'store-042');
  const messages = homeAssistantDiscovery({
    topics,
    slots: [{ camera: 'aisle3', slot: 'A1', product: 'SKU-1' }, { camera: 'aisle3', slot: 'A2' }],
    swVersion: '0.1.0',
  });
  t.deepEqual(messages.map((m) => m.topic), [
    'homeassistant/binary_sensor/shelfwatch_store-042/aisle3_A1/config',
    'homeassistant/image/shelfwatch_store-042/aisle3_A1_thumbnail/config',
    'homeassistant/image/shelfwatch_store-042/aisle3_A1_mask/config',
    'homeassistant/binary_sensor/shelfwatch_store-042/aisle3_A2/config',
    'homeassistant/image/shelfwatch_store-042/aisle3_A2_thumbnail/config',
    'homeassistant/image/shelfwatch_store-042/aisle3_A2_mask/config',
  ]);
  t.true(messages.every((m) => m.retain && m.qos === 1 && m.id === `ha:${m.topic}`));
  const sensor = JSON.parse(messages[0].payload);
  t.like(sensor, {
    name: 'aisle3 A1 (SKU-1)',
    unique_id: 'shelfwatch_store-042_aisle3_A1_problem',
    device_class: 'problem',
    state_topic: 'shelfwatch/store-042/aisle3/A1/state',
    json_attributes_topic: 'shelfwatch/store-042/aisle3/A1/state',
    payload_on: 'ON',
    payload_off: 'OFF',
    availability_topic: 'shelfwatch/store-042/availability',
    payload_available: 'online',
    payload_not_available: 'offline',
    device: { identifiers: ['shelfwatch_store-042'], sw_version: '0.1.0' },
  });
  t.is(sensor.value_template, "{{ 'ON' if value_json.state == 'anomalous' else 'OFF' }}");
  const image = JSON.parse(messages[1].payload);
  t.like(image, { image_topic: 'shelfwatch/store-042/aisle3/A1/thumbnail', content_type: 'image/jpeg', unique_id: 'shelfwatch_store-042_aisle3_A1_thumbnail' });
  t.is(image.image_encoding, undefined, 'raw bytes, not base64');
  t.like(JSON.parse(messages[2].payload), { image_topic: 'shelfwatch/store-042/aisle3/A1/mask', content_type: 'image/png', enabled_by_default: false });
  const uniqueIds = messages.map((m) => JSON.parse(m.payload).unique_id);
  t.is(new Set(uniqueIds).size, uniqueIds.length);
});

test('home assistant: custom prefix, removal payloads, and clashing object ids are refused', (t) => {
  const topics = agentTopics('sw', 'a');
  const slots = [{ camera: 'c', slot: 'A1' }];
  t.is(homeAssistantDiscovery({ topics, slots, discoveryPrefix: 'ha/disc' })[0].topic, 'ha/disc/binary_sensor/shelfwatch_a/c_A1/config');
  t.true(homeAssistantRemoval({ topics, slots }).every((m) => m.payload === '' && m.retain));
  t.throws(() => homeAssistantDiscovery({ topics, slots, discoveryPrefix: 'ha/#' }), { instanceOf: TopicError });
  t.throws(() => homeAssistantDiscovery({ topics, slots: [{ camera: 'a_b', slot: 'c' }, { camera: 'a', slot: 'b_c' }] }), {
    message: /object id a_b_c is shared by camera a_b slot c and camera a slot b_c/,
  });
});

test('outbox: the oldest record\'s age runs on the monotonic clock (a wall clock stepped back or forward does not change it); a reloaded record keeps its age', async (t) => {
  const dir = await tempDir(t);
  let wall = 1_000_000_000_000;
  const outbox = await Outbox.open(dir, { ...LIMITS, clock: () => wall });
  t.is(outbox.depth().oldestAgeMs, null);
  await outbox.enqueue({ id: 'e0', topic: 'sw/a/events', payload: 'x' });
  wall -= 3_600_000; // stepped back an hour
  const back = outbox.depth();
  wall += 86_400_000; // then forward a day
  const forward = outbox.depth();
  t.true(back.oldestAgeMs! >= 0 && back.oldestAgeMs! < 60_000, `${back.oldestAgeMs}`);
  t.true(forward.oldestAgeMs! >= back.oldestAgeMs! && forward.oldestAgeMs! < 60_000, `${forward.oldestAgeMs}`);
  await outbox.close();
  // Found on disk at open: its age then is taken from the wall clock (no better is known).
  const reopened = await Outbox.open(dir, { ...LIMITS, clock: () => 1_000_000_000_000 + 120_000 });
  t.teardown(() => reopened.close());
  const age = reopened.depth().oldestAgeMs!;
  t.true(age >= 120_000 && age < 180_000, `${age}`);
});
