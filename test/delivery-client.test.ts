/**
 * The MQTT client's delivery path against a scripted MQTT 3.1.1 broker on 127.0.0.1 (it answers
 * CONNECT, records each PUBLISH and acknowledges only what the test says), for the cases a real
 * broker cannot be made to do on cue: PUBACKs held back until the client is disconnecting, a
 * broker that never acknowledges, a route that goes dead without FIN or RST.
 */
import test from 'ava';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startMqttClient, type AgentMqttClient, type MqttClientOptions } from '../agent/mqtt/client.js';
import { Outbox } from '../agent/mqtt/outbox.js';
import { agentTopics } from '../agent/mqtt/topics.js';

interface Publish {
  topic: string;
  id: number;
  payload: string;
  socket: Socket;
}

interface ScriptedBroker {
  url: string;
  publishes: Publish[];
  /** DISCONNECT packets received. */
  readonly disconnects: number;
  /** Client sockets open right now. */
  readonly open: number;
  puback(p: Publish): void;
  close(): Promise<void>;
}

/** `ack` decides whether a QoS 1 PUBLISH is acknowledged at once; `pong: false` ignores PINGREQ. */
async function scriptedBroker(t: { teardown(fn: () => Promise<void>): void }, options: { ack?: (p: Publish) => boolean; pong?: boolean } = {}): Promise<ScriptedBroker> {
  const publishes: Publish[] = [];
  const sockets = new Set<Socket>();
  let disconnects = 0;
  const puback = (p: Publish) => void p.socket.write(Buffer.from([0x40, 2, p.id >> 8, p.id & 255]));
  const server = createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => undefined);
    let buf = Buffer.alloc(0);
    socket.on('data', (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      for (;;) {
        let length = 0;
        let at = 1;
        let shift = 1;
        let byte = 128;
        while (byte & 128) {
          if (at >= buf.length) return;
          byte = buf[at++]!;
          length += (byte & 127) * shift;
          shift *= 128;
        }
        if (buf.length < at + length) return;
        const type = buf[0]! >> 4;
        const qos = (buf[0]! >> 1) & 3;
        const body = buf.subarray(at, at + length);
        buf = buf.subarray(at + length);
        if (type === 1) socket.write(Buffer.from([0x20, 2, 0, 0])); // CONNACK, accepted
        else if (type === 12 && options.pong !== false) socket.write(Buffer.from([0xd0, 0]));
        else if (type === 14) disconnects++;
        else if (type === 3) {
          const topicLength = body.readUInt16BE(0);
          const topic = body.subarray(2, 2 + topicLength).toString();
          const id = qos > 0 ? body.readUInt16BE(2 + topicLength) : 0;
          const p = { topic, id, payload: body.subarray(2 + topicLength + (qos > 0 ? 2 : 0)).toString(), socket };
          publishes.push(p);
          if (qos > 0 && (options.ack?.(p) ?? true)) puback(p);
        }
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  const port = (server.address() as { port: number }).port;
  const close = async () => {
    for (const s of sockets) s.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  };
  t.teardown(close);
  return {
    url: `mqtt://127.0.0.1:${port}`,
    publishes,
    get disconnects() {
      return disconnects;
    },
    get open() {
      return sockets.size;
    },
    puback,
    close,
  };
}

async function until(what: string, check: () => boolean, timeoutMs = 15000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

async function tempDir(t: { teardown(fn: () => Promise<void>): void }): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'shelfwatch-delivery-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

const topics = agentTopics('sw', 'a');
const isEvent = (p: Publish) => p.topic === topics.events;

interface Logged {
  level: string;
  message: string;
  fields?: Record<string, unknown>;
}

async function client(t: { teardown(fn: () => Promise<void>): void }, url: string, outboxDir: string, options: Partial<MqttClientOptions> = {}): Promise<{ client: AgentMqttClient; logged: Logged[] }> {
  const logged: Logged[] = [];
  const log = (level: string) => (message: string, fields?: Record<string, unknown>) => void logged.push({ level, message, fields });
  const c = await startMqttClient({
    url,
    topics,
    // The scripted broker speaks 3.1.1 only (and accepts any CONNECT): the delivery path under
    // test is the same in MQTT 5.
    protocolVersion: 4,
    outbox: { dir: outboxDir, maxRecords: 100_000, maxBytes: 1 << 28, fsync: false },
    reconnect: { minDelayMs: 60_000, maxDelayMs: 60_000 },
    logger: { debug: log('debug'), info: log('info'), warn: log('warn'), error: log('error') },
    ...options,
  });
  t.teardown(() => c.stop({ flushTimeoutMs: 0 }));
  return { client: c, logged };
}

test('stop with a backlog: PUBACKs that arrive while disconnecting publish nothing more (no publish storm, no stack overflow)', async (t) => {
  const dir = await tempDir(t);
  const outboxDir = join(dir, 'outbox');
  // A backlog from an outage, on disk before the client starts.
  const seed = await Outbox.open(outboxDir, { maxRecords: 100_000, maxBytes: 1 << 28, fsync: false });
  const backlog = 3000;
  for (let i = 0; i < backlog; i++) await seed.enqueue({ id: `e${i}`, topic: topics.events, payload: `${i}` });
  await seed.close();
  // The broker holds the PUBACKs of the records; `online`/`offline` are acknowledged.
  const broker = await scriptedBroker(t, { ack: (p) => !isEvent(p) });
  const { client: c, logged } = await client(t, broker.url, outboxDir, { maxInFlight: 16 });
  await until('16 records in flight', () => broker.publishes.filter(isEvent).length === 16);
  const stopped = c.stop({ flushTimeoutMs: 0 });
  // `offline` was acknowledged and mqtt.js now waits for the records in flight before its DISCONNECT.
  await until('offline', () => broker.publishes.some((p) => p.topic === topics.availability && p.payload === 'offline'));
  await until('the client to be disconnecting', () => (c as unknown as { current: { client: { disconnecting: boolean } } | null }).current?.client.disconnecting === true);
  for (const p of broker.publishes.filter(isEvent)) broker.puback(p);
  await stopped;
  const m = c.metrics();
  t.is(m.publishErrors, 0, 'nothing was published into the closing connection');
  t.false(logged.some((l) => /publish failed/.test(l.message)));
  t.is(m.published, 16);
  t.is(broker.publishes.filter(isEvent).length, 16, 'no record was sent after offline');
  t.is(broker.disconnects, 1, 'a clean DISCONNECT (no last will)');
  const reopened = await Outbox.open(outboxDir, { maxRecords: 100_000, maxBytes: 1 << 28, fsync: false });
  t.teardown(() => reopened.close());
  t.is(reopened.depth().records, backlog - 16, 'the rest stays on disk for the next start');
  t.is(reopened.pending()[0]!.id, 'e16');
});

test('stop while the broker never acknowledges: the connection is closed anyway, nothing outlives stop()', async (t) => {
  const dir = await tempDir(t);
  const broker = await scriptedBroker(t, { ack: (p) => !isEvent(p) });
  const { client: c } = await client(t, broker.url, join(dir, 'outbox'));
  await c.waitUntilConnected(10_000);
  for (let i = 0; i < 3; i++) await c.publish({ id: `e${i}`, topic: topics.events, payload: `${i}` });
  await until('3 records in flight', () => broker.publishes.filter(isEvent).length === 3);
  await c.stop({ flushTimeoutMs: 0 });
  // Before the fix the socket stayed open (end(true) after end(false) does nothing in mqtt.js 5)
  // and its keepalive kept the process alive for as long as the broker answered pings.
  await until('the broker to see the connection closed', () => broker.open === 0, 10_000);
  t.is(c.state, 'offline');
  const reopened = await Outbox.open(join(dir, 'outbox'), { maxRecords: 100, maxBytes: 1 << 20, fsync: false });
  t.teardown(() => reopened.close());
  t.deepEqual(reopened.pending().map((r) => r.id), ['e0', 'e1', 'e2'], 'unacknowledged records stay on disk');
});

test('keepalive timeout on a dead route: the record blamed is the oldest in flight, not one drained into the dying connection', async (t) => {
  const dir = await tempDir(t);
  const outboxDir = join(dir, 'outbox');
  // No PINGRESP and no PUBACK for records: the client's own keepalive timeout ends the connection
  // (mqtt.js then fails every queued publish before 'close').
  const broker = await scriptedBroker(t, { ack: (p) => !isEvent(p), pong: false });
  const { client: c, logged } = await client(t, broker.url, outboxDir, { keepaliveSeconds: 1, poisonAfterLosses: 1, maxInFlight: 4 });
  await c.waitUntilConnected(10_000);
  for (let i = 0; i < 12; i++) await c.publish({ id: `e${i}`, topic: topics.events, payload: `${i}` });
  await until('the keepalive timeout', () => c.metrics().connectionLosses === 1);
  await until('the record to be set aside', () => c.metrics().outbox.counters.deadLettered === 1);
  t.deepEqual(broker.publishes.filter(isEvent).map((p) => p.payload), ['0', '1', '2', '3'], 'only the first 4 were ever sent');
  const blamed = logged.find((l) => /set aside/.test(l.message));
  t.is(blamed?.fields?.id, 'e0', 'the oldest record in flight');
  const dead = () => readdir(join(outboxDir, 'dead')).catch(() => [] as string[]);
  // Written to a .tmp file and renamed: wait for the renamed one.
  for (let i = 0; i < 500 && !(await dead()).some((f) => f.endsWith('.rec')); i++) await new Promise((r) => setTimeout(r, 10));
  t.deepEqual(await dead(), ['0000000000000001.rec']);
  t.true(logged.filter((l) => /publish failed/.test(l.message)).length <= 1, 'one warning for the connection, not one per record');
});
