/**
 * MQTT 5 flow control and protocol choice of the agent's client (agent/mqtt/client.ts), against
 * minimal brokers on 127.0.0.1: the broker's Receive Maximum and Maximum Packet Size (CONNACK)
 * are honoured, and a 3.1.1-only broker that hangs up on an MQTT 5 CONNECT (no CONNACK) is
 * spoken to in 3.1.1.
 */
import test from 'ava';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, connect as netConnect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import mqttPacket from 'mqtt-packet';
import { startMqttClient, type AgentMqttClient, type MqttClientOptions } from '../agent/mqtt/client.js';
import { agentTopics } from '../agent/mqtt/topics.js';
import { startMosquitto } from './helpers/mosquitto.js';

type Teardown = { teardown(fn: () => unknown): void };

async function client(t: Teardown, options: Partial<MqttClientOptions> & Pick<MqttClientOptions, 'url'>): Promise<AgentMqttClient> {
  const dir = await mkdtemp(join(tmpdir(), 'shelfwatch-mqtt5-'));
  const c = await startMqttClient({
    topics: agentTopics('shelfwatch', 'r4'),
    outbox: { dir: join(dir, 'outbox'), maxRecords: 1000, maxBytes: 16 << 20 },
    reconnect: { minDelayMs: 50, maxDelayMs: 200 },
    ...options,
  });
  t.teardown(async () => {
    await c.stop({ flushTimeoutMs: 0 });
    await rm(dir, { recursive: true, force: true });
  });
  return c;
}

/** An MQTT 5 broker that answers CONNECT with `properties`, records PUBLISHes and acknowledges them when `ack` is set. */
async function fakeBroker(t: Teardown, properties: Record<string, unknown>, ack: boolean, disconnectWith?: number) {
  const publishes: Array<{ topic: string; bytes: number }> = [];
  const sockets = new Set<Socket>();
  const server = createServer((s) => {
    sockets.add(s);
    const parser = mqttPacket.parser({ protocolVersion: 5 });
    const send = (p: object) => s.write(mqttPacket.generate(p as mqttPacket.Packet, { protocolVersion: 5 }));
    parser.on('packet', (p) => {
      if (p.cmd === 'connect') {
        send({ cmd: 'connack', sessionPresent: false, reasonCode: 0, properties });
        if (disconnectWith !== undefined) {
          send({ cmd: 'disconnect', reasonCode: disconnectWith });
          s.end();
        }
      }
      else if (p.cmd === 'publish') {
        publishes.push({ topic: p.topic, bytes: p.length ?? 0 });
        if (ack && p.qos === 1) send({ cmd: 'puback', messageId: p.messageId, reasonCode: 0 });
      } else if (p.cmd === 'pingreq') send({ cmd: 'pingresp' });
    });
    s.on('data', (d) => parser.parse(d));
    s.on('error', () => {});
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => new Promise<void>((r) => (sockets.forEach((s) => s.destroy()), server.close(() => r()))));
  return { url: `mqtt://127.0.0.1:${(server.address() as { port: number }).port}`, publishes };
}

const until = async (what: string, ok: () => boolean, ms = 5000) => {
  const end = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
};

test('MQTT 5: no more QoS 1 publishes unacknowledged than the broker\'s Receive Maximum (availability included)', async (t) => {
  const broker = await fakeBroker(t, { receiveMaximum: 3 }, false);
  const c = await client(t, { url: broker.url });
  const topics = agentTopics('shelfwatch', 'r4');
  await Promise.all(Array.from({ length: 20 }, (_, i) => c.publish({ id: `e${i}`, topic: `${topics.root}/events/x`, payload: `${i}` })));
  await c.waitUntilConnected(5000);
  await until('3 publishes', () => broker.publishes.length >= 3);
  await new Promise((r) => setTimeout(r, 300)); // anything more would have followed at once
  t.is(broker.publishes.length, 3, JSON.stringify(broker.publishes));
});

test('MQTT 5: with a small Receive Maximum everything is still delivered', async (t) => {
  const broker = await fakeBroker(t, { receiveMaximum: 1 }, true);
  const c = await client(t, { url: broker.url });
  const topics = agentTopics('shelfwatch', 'r4');
  await Promise.all(Array.from({ length: 30 }, (_, i) => c.publish({ id: `e${i}`, topic: `${topics.root}/events/x`, payload: `${i}` })));
  await until('30 records delivered', () => c.metrics().published === 30);
  t.is(c.outbox.depth().records, 0);
});

test('MQTT 5: a record larger than the broker\'s Maximum Packet Size is set aside at once, not sent; the rest is delivered', async (t) => {
  const broker = await fakeBroker(t, { maximumPacketSize: 300 }, true);
  const c = await client(t, { url: broker.url });
  const topics = agentTopics('shelfwatch', 'r4');
  await c.publish({ id: 'big', topic: `${topics.root}/events/big`, payload: Buffer.alloc(1000) });
  await c.publish({ id: 'small', topic: `${topics.root}/events/small`, payload: 'ok' });
  await until('the small record delivered', () => c.metrics().published === 1);
  await until('the big one set aside', () => c.outbox.counters().deadLettered === 1);
  t.deepEqual(broker.publishes.map((p) => p.topic).filter((x) => x.includes('/events/')), [`${topics.root}/events/small`]);
  t.true(broker.publishes.every((p) => p.bytes <= 300));
  t.is(c.metrics().publishRefused, 1);
});

test('protocolVersion auto: a broker that hangs up on an MQTT 5 CONNECT without a CONNACK is spoken to in 3.1.1', async (t) => {
  const mosquitto = await startMosquitto();
  t.teardown(() => mosquitto.dispose());
  let v5Attempts = 0;
  const sockets = new Set<Socket>();
  // A "3.1.1 only" front: closes the socket on a CONNECT of protocol level 5, passes anything else to mosquitto.
  const proxy = createServer((s) => {
    sockets.add(s);
    s.on('error', () => {});
    s.once('data', (first) => {
      let i = 1;
      while (first[i] & 0x80) i++;
      if (first[i + 7] === 5) {
        v5Attempts++;
        s.end();
        return;
      }
      const up = netConnect(mosquitto.port, '127.0.0.1');
      sockets.add(up);
      up.on('error', () => s.destroy());
      up.write(first);
      s.pipe(up).pipe(s);
    });
  });
  await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => new Promise<void>((r) => (sockets.forEach((s) => s.destroy()), proxy.close(() => r()))));
  const c = await client(t, { url: `mqtt://127.0.0.1:${(proxy.address() as { port: number }).port}` });
  await c.waitUntilConnected(5000);
  t.is(c.metrics().protocolVersion, 4);
  t.is(v5Attempts, 1);
});

test('protocolVersion 5 (pinned): no fallback when the broker hangs up, and the wait says why', async (t) => {
  const server = createServer((s) => s.once('data', () => s.end()));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => new Promise<void>((r) => server.close(() => r())));
  const c = await client(t, { url: `mqtt://127.0.0.1:${(server.address() as { port: number }).port}`, protocolVersion: 5 });
  const err = await t.throwsAsync(c.waitUntilConnected(1000));
  t.is(c.metrics().protocolVersion, 5);
  t.regex(err?.message ?? '', /closed the connection before answering CONNECT/);
});

test('MQTT 5: the reason the broker gives when it ends the connection is logged (session taken over: a second agent with our client id)', async (t) => {
  const broker = await fakeBroker(t, {}, true, 0x8e);
  const warnings: Array<{ message: string; fields?: Record<string, unknown> }> = [];
  const logger = { debug() {}, info() {}, error() {}, warn: (message: string, fields?: Record<string, unknown>) => warnings.push({ message, fields }) };
  await client(t, { url: broker.url, logger });
  await until('the warning', () => warnings.some((w) => w.message.includes('ended the connection')));
  const w = warnings.find((x) => x.message.includes('ended the connection'))!;
  t.is(w.fields?.reasonCode, '0x8e');
  t.regex(String(w.fields?.reason), /session taken over/);
});
