/**
 * Soak: the whole agent against a real mosquitto for N minutes at the highest rate the CPU
 * sustains (replay source, no frame pacing), with the broker killed and restarted every R
 * seconds. Prints RSS over time, event latency (raised → received by a subscriber) p50/p99,
 * for events raised while the broker was up (the baseline) and overall, and events raised vs
 * delivered (deduplicated) at the end.
 *
 *   node --initial-old-space-size=96 --import tsx bench/soak.ts [minutes=30] [restartEverySeconds=180]
 *
 * (the V8 heap floor the agent is deployed with: agent/v8-heap.ts)
 */
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect } from 'mqtt';
import { Agent } from '../agent/agent.js';
import { configFromObject } from '../agent/config.js';
import { eventMessageId } from '../agent/extensions/events-publisher.js';
import { Logger } from '../agent/logger.js';
import type { AnomalyEvent } from '../pipelines/events.js';
import { fittedModel, magneticTileTrain } from '../test/helpers/fitted-model.js';
import { startMosquitto } from '../test/helpers/mosquitto.js';
import { tileFrame, unseenTiles } from '../test/helpers/shelf-frames.js';

const minutes = Number(process.argv[2] ?? 30);
const restartEvery = Number(process.argv[3] ?? 180);
if (!(minutes > 0) || !(restartEvery > 0)) throw new Error(`usage: soak.ts [minutes>0] [restartEverySeconds>0], got ${process.argv.slice(2).join(' ')}`);

const ROOT = 'shelfwatch/store-1';
const work = await mkdtemp(join(tmpdir(), 'shelfwatch-soak-'));
const modelPath = await fittedModel(await magneticTileTrain(40), { name: 'pipeline-test' });
const tiles = await unseenTiles(2);
const normal = await tileFrame(tiles);
const anomalous = await tileFrame(tiles, { blotch: [1] });
const framesDir = join(work, 'frames');
await mkdir(framesDir);
// N A A N N: one new + one end per pass.
const sequence = [false, true, true, false, false];
await Promise.all(sequence.map((bad, i) => writeFile(join(framesDir, `frame${i}.jpg`), bad ? anomalous.jpeg : normal.jpeg)));

const broker = await startMosquitto({ persistence: true });
const raisedAt = new Map<string, { at: number; brokerUp: boolean }>();
const deliveredAt = new Map<string, number>();
let duplicates = 0;
let brokerUp = true;
const sub = connect(broker.url, { clientId: 'soak-subscriber', clean: false, reconnectPeriod: 200 });
sub.on('error', () => undefined);
sub.on('message', (topic, payload) => {
  if (topic !== `${ROOT}/events`) return;
  const id = eventMessageId(JSON.parse(payload.toString()) as AnomalyEvent);
  if (deliveredAt.has(id)) duplicates++;
  else deliveredAt.set(id, Date.now());
});
await new Promise<void>((resolve, reject) => sub.once('connect', () => sub.subscribe(`${ROOT}/events`, { qos: 1 }, (err) => (err ? reject(err) : resolve()))));

const config = configFromObject(
  {
    agent: { id: 'store-1', stateDir: join(work, 'state') },
    mqtt: { url: broker.url, keepaliveSeconds: 5, statsIntervalSeconds: 10 },
    models: { tile: { path: modelPath, threshold: 4 } },
    inference: { provider: 'cpu', batchSize: 8, batchWaitMs: 10, maxPendingFrames: 8 },
    debounce: { raiseAfter: 2, window: 3, clearAfter: 2 },
    thumbnails: { maxSize: 128, quality: 80 },
    metrics: { enabled: false },
    logging: { level: 'warn' },
    cameras: [
      {
        id: 'shelf',
        source: { type: 'replay', dir: framesDir, intervalMs: 0, loop: true },
        continuous: { maxFps: 120 },
        slots: normal.boxes.map((b, i) => ({ id: `S${i}`, box: [b.x, b.y, b.width, b.height], model: 'tile', product: `SKU-${i}`, category: 'tile' })),
      },
    ],
  },
  { origin: 'bench/soak', env: {} },
);
const warnings: string[] = [];
const agent = new Agent(config, { logger: new Logger({ level: 'warn', sink: { write: (l: string) => warnings.push(l) } }), reconnect: { minDelayMs: 200, maxDelayMs: 2000 } });
agent.on('event', (e) => raisedAt.set(eventMessageId(e), { at: Date.now(), brokerUp }));
await agent.start();

const t0 = Date.now();
const mb = (n: number) => (n / 1024 / 1024).toFixed(0);
const row = () => {
  const s = agent.pipelineStats().cameras.shelf;
  const elapsed = (Date.now() - t0) / 1000;
  console.log(
    `t=${elapsed.toFixed(0).padStart(5)} s  rss=${mb(process.memoryUsage().rss)} MiB  heap=${mb(process.memoryUsage().heapUsed)} MiB  frames=${s?.framesScanned ?? 0} (${((s?.framesScanned ?? 0) / elapsed).toFixed(1)}/s)  raised=${raisedAt.size}  delivered=${deliveredAt.size}  outbox=${agent.mqtt?.outbox.depth().records}  mqtt=${agent.mqtt?.state}`,
  );
};
console.log(`soak: ${minutes} min, broker restart every ${restartEvery} s, ${sequence.length}-frame loop as fast as inference allows`);
const rssTimer = setInterval(row, 15_000);
let restarts = 0;
const restartTimer = setInterval(async () => {
  brokerUp = false;
  await broker.kill();
  await new Promise((r) => setTimeout(r, 3000)); // a 3 s outage
  await broker.restart();
  brokerUp = true;
  restarts++;
}, restartEvery * 1000);

await new Promise((r) => setTimeout(r, minutes * 60_000));
clearInterval(restartTimer);
clearInterval(rssTimer);
if (!brokerUp) await new Promise((r) => setTimeout(r, 4000));
const deadline = Date.now() + 30_000;
while (Date.now() < deadline && [...raisedAt.keys()].some((id) => !deliveredAt.has(id))) await new Promise((r) => setTimeout(r, 100));
await agent.stop();
row();

function pct(values: number[], p: number): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}
const lat = (filter: (up: boolean) => boolean) =>
  [...raisedAt].filter(([id, r]) => filter(r.brokerUp) && deliveredAt.has(id)).map(([id, r]) => deliveredAt.get(id)! - r.at);
const up = lat((u) => u);
const all = lat(() => true);
const lost = [...raisedAt.keys()].filter((id) => !deliveredAt.has(id));
const unknown = [...deliveredAt.keys()].filter((id) => !raisedAt.has(id));
console.log(`latency raised→received, broker up (baseline): p50 ${pct(up, 50)} ms, p99 ${pct(up, 99)} ms (n=${up.length})`);
console.log(`latency raised→received, all events:          p50 ${pct(all, 50)} ms, p99 ${pct(all, 99)} ms (n=${all.length})`);
console.log(`broker restarts: ${restarts}; MQTT connection losses: ${agent.mqtt?.metrics().connectionLosses}`);
console.log(`events raised ${raisedAt.size}, delivered ${deliveredAt.size} (deduplicated), duplicates ${duplicates}, lost ${lost.length}, unexpected ${unknown.length}`);
console.log(`warnings/errors logged: ${warnings.length}${warnings.length ? `; last: ${warnings.at(-1)!.trim()}` : ''}`);
sub.end(true);
await broker.dispose();
await rm(work, { recursive: true, force: true });
process.exit(lost.length === 0 ? 0 : 1);
