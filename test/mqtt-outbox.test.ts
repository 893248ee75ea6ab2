/**
 * Unit tests of the MQTT layer that need no broker: the durable outbox (persistence, order,
 * bounds, supersede, corrupt files, disk errors, reopen), topic validation and the Home
 * Assistant discovery payloads.
 */
import test from 'ava';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Outbox, encodeRecord, type OutboxDiskError, type OutboxLimits } from '../agent/mqtt/outbox.js';
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

test('outbox: a retained record supersedes the older pending retained record of the same topic', async (t) => {
  const dir = await tempDir(t);
  const outbox = await Outbox.open(dir, LIMITS);
  t.teardown(() => outbox.close());
  await outbox.enqueue({ id: 's1', topic: 'sw/a/cam/A1/state', payload: '{"state":"ok"}', retain: true });
  await outbox.enqueue({ id: 'ev1', topic: 'sw/a/events', payload: 'event' });
  await outbox.enqueue({ id: 'n1', topic: 'sw/a/cam/A1/state', payload: 'not retained' });
  await outbox.enqueue({ id: 's2', topic: 'sw/a/cam/A1/state', payload: '{"state":"anomalous"}', retain: true });
  await outbox.enqueue({ id: 'other', topic: 'sw/a/cam/A2/state', payload: '{"state":"ok"}', retain: true });
  t.deepEqual(outbox.pending().map((r) => r.id), ['ev1', 'n1', 's2', 'other']);
  t.is(outbox.counters().superseded, 1);
  t.is((await recordFiles(dir)).length, 4);
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
