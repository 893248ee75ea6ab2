/**
 * Outbox throughput: how many messages/s the durable outbox accepts (enqueue = temp file,
 * fsync, rename, directory fsync) and how many reach a real mosquitto end to end (enqueue →
 * QoS 1 publish → PUBACK → delete), against baselines measured in the same run: the outbox
 * without fsync, and plain mqtt.js QoS 1 publishes with no outbox at all.
 *
 *   npx tsx bench/mqtt-outbox.ts [--messages=2000] [--payload=512]
 *
 * Needs the `mosquitto` binary (started on a free loopback port by the test helper).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { connect } from 'mqtt';
import { Outbox } from '../agent/mqtt/outbox.js';
import { startMqttClient } from '../agent/mqtt/client.js';
import { agentTopics } from '../agent/mqtt/topics.js';
import { startMosquitto } from '../test/helpers/mosquitto.js';

const args = new Map(
  process.argv.slice(2).map((a) => {
    const [k, v] = a.replace(/^--/, '').split('=');
    return [k, Number(v)] as const;
  }),
);
const N = args.get('messages') ?? 2000;
const PAYLOAD = Buffer.alloc(args.get('payload') ?? 512, 0x61);
const LIMITS = { maxRecords: 1_000_000, maxBytes: 1 << 30 };

const root = await mkdtemp(join(tmpdir(), 'shelfwatch-bench-outbox-'));
let run = 0;
const freshDir = () => join(root, `o${run++}`);
const rate = (n: number, ms: number) => `${Math.round((n / ms) * 1000).toLocaleString('en-US')} msg/s`;
const results: Array<[string, string]> = [];

async function enqueueOnly(label: string, fsync: boolean, concurrency: number): Promise<number> {
  const outbox = await Outbox.open(freshDir(), { ...LIMITS, fsync });
  const start = performance.now();
  let next = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < N) {
        const i = next++;
        await outbox.enqueue({ id: `m${i}`, topic: 'bench/a/events', payload: PAYLOAD });
      }
    }),
  );
  const ms = performance.now() - start;
  await outbox.close();
  results.push([label, `${rate(N, ms)}  (${(ms / N).toFixed(3)} ms/msg)`]);
  return ms;
}

const broker = await startMosquitto();
try {
  await enqueueOnly('enqueue, fsync, 1 at a time', true, 1);
  await enqueueOnly('enqueue, fsync, 16 concurrent (group commit)', true, 16);
  await enqueueOnly('baseline: enqueue, no fsync, 1 at a time', false, 1);

  // End to end through the agent client: publish N, wait until the outbox is empty.
  for (const fsync of [true, false]) {
    const topics = agentTopics('bench', `e2e${fsync ? 'sync' : 'nosync'}`);
    const client = await startMqttClient({ url: broker.url, topics, outbox: { dir: freshDir(), ...LIMITS, fsync } });
    await client.waitUntilConnected(10000);
    const start = performance.now();
    await Promise.all(Array.from({ length: N }, (_, i) => client.publish({ id: `m${i}`, topic: topics.events, payload: PAYLOAD })));
    while (client.outbox.depth().records > 0) await new Promise((r) => setTimeout(r, 2));
    const ms = performance.now() - start;
    results.push([`end to end via outbox (${fsync ? 'fsync' : 'no fsync'}) → mosquitto PUBACK`, rate(N, ms)]);
    await client.stop();
  }

  // Baseline: mqtt.js QoS 1 straight to the broker, 16 in flight, no outbox.
  const plain = connect(broker.url);
  await new Promise<void>((resolve) => plain.once('connect', () => resolve()));
  const start = performance.now();
  let sent = 0;
  await Promise.all(
    Array.from({ length: 16 }, async () => {
      while (sent < N) {
        sent++;
        await new Promise<void>((resolve, reject) => plain.publish('bench/plain', PAYLOAD, { qos: 1 }, (e) => (e ? reject(e) : resolve())));
      }
    }),
  );
  results.push(['baseline: plain mqtt.js QoS 1, 16 in flight, no outbox', rate(N, performance.now() - start)]);
  plain.end(true);
} finally {
  await broker.dispose();
  await rm(root, { recursive: true, force: true });
}

console.log(`outbox benchmark: ${N} messages of ${PAYLOAD.length} bytes, dir ${tmpdir()}`);
const width = Math.max(...results.map(([k]) => k.length));
for (const [k, v] of results) console.log(`  ${k.padEnd(width)}  ${v}`);
