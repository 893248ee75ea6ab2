/**
 * Model hot swap in a RUNNING agent, against a real mosquitto and two real small PatchCore models
 * (same data, different coreset seeds: two files, two digests). A replay camera streams frames
 * (normal, with a blotch in one slot every few frames, so events keep coming) while the test:
 *   1. renames model B onto the configured path      → B serves; status and events carry B;
 *   2. writes garbage over the path                   → refused, counted (also on /metrics), B keeps serving;
 *   3. `shelfwatch model rollback` (runModelRollback) → A (kept as `.previous`) serves again;
 *   4. MQTT `command/rollback`                         → B again (a rollback of the rollback).
 * A second test installs a model through MQTT `command/model` from a local HTTP server.
 * Then the replay ends and every frame sent must have been scanned, none dropped, none failed,
 * and the digests of the slot outputs, in capture order, must be runs A… B… A… B… (a frame
 * scored on the old model after a newer one was already used would break that).
 */
import test from 'ava';
import { createHash } from 'node:crypto';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { copyFile, mkdir, mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, type MqttClient } from 'mqtt';
import { Agent } from '../agent/agent.js';
import { runModelRollback } from '../agent/commands/model-rollback.js';
import { loadConfig } from '../agent/config.js';
import { Logger } from '../agent/logger.js';
import type { AnomalyEvent } from '../pipelines/events.js';
import type { ShelfOutput } from '../pipelines/shelf-pipeline.js';
import { fittedModel, magneticTileTrain, sharedAvailable } from './helpers/fitted-model.js';
import { startMosquitto } from './helpers/mosquitto.js';
import { tileFrame, unseenTiles } from './helpers/shelf-frames.js';

const available = sharedAvailable();
const serial = available ? test.serial : test.serial.skip;
const ROOT = 'shelfwatch/store-9';
/** N N A A A N N N, repeated: a new and an end event every cycle. */
const CYCLE = [false, false, true, true, true, false, false, false];
// Enough frames (≈ 14 s at 60 ms) for four rollouts, each starting a model worker, before the replay ends.
const FRAMES = CYCLE.length * 30;

let work: string;
let modelA: string;
let modelB: string;
let digestA: string;
let digestB: string;
let framesDir: string;

const sha256 = async (path: string) => createHash('sha256').update(await readFile(path)).digest('hex');

test.before(async () => {
  if (!available) return;
  work = await mkdtemp(join(tmpdir(), 'shelfwatch-rollout-it-'));
  const images = await magneticTileTrain(24);
  modelA = await fittedModel(images, { name: 'rollout-a', seed: 1 });
  modelB = await fittedModel(images, { name: 'rollout-b', seed: 2 });
  [digestA, digestB] = await Promise.all([sha256(modelA), sha256(modelB)]);
  const tiles = await unseenTiles(2);
  const normal = await tileFrame(tiles);
  const anomalous = await tileFrame(tiles, { blotch: [1] });
  framesDir = join(work, 'frames');
  await mkdir(framesDir);
  for (let i = 0; i < FRAMES; i++) await writeFile(join(framesDir, `frame${String(i).padStart(4, '0')}.jpg`), CYCLE[i % CYCLE.length] ? anomalous.jpeg : normal.jpeg);
});

test.after.always(async () => {
  if (work) await rm(work, { recursive: true, force: true });
});

async function until(what: string, check: () => boolean, lines: string[], timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}\nagent log:\n${lines.slice(-15).join('')}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Collapses consecutive equal values: [a,a,b,b,a] → [a,b,a]. */
const runs = (values: string[]): string[] => values.filter((v, i) => i === 0 || v !== values[i - 1]);

serial('hot swap under a running pipeline: no frame lost, bad file refused, rollback restores', async (t) => {
  const broker = await startMosquitto();
  t.teardown(() => broker.dispose());
  const messages: Array<{ topic: string; payload: Buffer }> = [];
  const sub: MqttClient = connect(broker.url);
  t.teardown(() => sub.end(true));
  await new Promise<void>((resolve, reject) => sub.once('connect', () => sub.subscribe(`${ROOT}/#`, { qos: 1 }, (err) => (err ? reject(err) : resolve()))));
  sub.on('message', (topic, payload) => messages.push({ topic, payload }));
  const statuses = () => messages.filter((m) => m.topic === `${ROOT}/status`).map((m) => JSON.parse(m.payload.toString()));
  const servingDigest = () => statuses().at(-1)?.models[0]?.digest as string | undefined;
  const events = () => messages.filter((m) => m.topic === `${ROOT}/events`).map((m) => JSON.parse(m.payload.toString()) as AnomalyEvent);

  const modelsDir = join(work, 'models');
  await mkdir(modelsDir);
  const modelPath = join(modelsDir, 'tile.onnx');
  await copyFile(modelA, modelPath);
  const frame = await tileFrame(await unseenTiles(2));
  const configPath = join(work, 'agent.json');
  await writeFile(
    configPath,
    JSON.stringify({
      agent: { id: 'store-9', stateDir: join(work, 'state') },
      mqtt: { url: broker.url, keepaliveSeconds: 5 },
      models: { tile: { path: modelPath, threshold: 4 } },
      inference: { provider: 'cpu', batchSize: 8, batchWaitMs: 10, maxPendingFrames: 512 },
      debounce: { raiseAfter: 2, window: 3, clearAfter: 2 },
      metrics: { enabled: true, port: 0 },
      cameras: [
        {
          id: 'shelf',
          source: { type: 'replay', dir: framesDir, intervalMs: 60 },
          continuous: { maxFps: 100 },
          slots: frame.boxes.map((b, i) => ({ id: `S${i}`, box: [b.x, b.y, b.width, b.height], model: 'tile' })),
        },
      ],
    }),
  );
  const lines: string[] = [];
  const logger = new Logger({ level: 'info', sink: { write: (l: string) => lines.push(l) } });
  const agent = new Agent(await loadConfig(configPath, { env: {} }), { logger, outboxFsync: false, modelWatchDebounceMs: 100, reconnect: { minDelayMs: 100, maxDelayMs: 300 } });
  const outputs: ShelfOutput[] = [];
  agent.on('output', (o) => outputs.push(o));
  t.teardown(() => agent.stop());
  await agent.start();
  const rollout = agent.modelRollout!;
  const scannedWith = (digest: string) => outputs.filter((o) => o.item.prediction.modelDigest === digest).length;
  /** Rollouts counted on /metrics, and the digest the model-info gauge names for `tile`. */
  const scrape = async () => {
    const text = await (await fetch(`${agent.metricsUrl}/metrics`)).text();
    const count = (result: string) => Number(new RegExp(`^shelfwatch_model_rollouts_total\\{model="tile",result="${result}"\\} (\\d+)$`, 'm').exec(text)?.[1] ?? NaN);
    const info = /^shelfwatch_model_info\{model="tile",digest="([0-9a-f]{64})",provider="cpu"\} 1$/m.exec(text);
    return { accepted: count('accepted'), rejected: count('rejected'), digest: info?.[1] };
  };

  await until('A serving in the status and scanning', () => servingDigest() === digestA && scannedWith(digestA) >= 4, lines);
  t.deepEqual(await scrape(), { accepted: 0, rejected: 0, digest: digestA }, '/metrics before any rollout');

  // 1. Atomic rename of B onto the configured path.
  const staged = join(modelsDir, '.tile.onnx.new');
  await copyFile(modelB, staged);
  await rename(staged, modelPath);
  await until('B in the retained status', () => servingDigest() === digestB, lines);
  t.like(statuses().at(-1).rollout, { swaps: 1, rejections: 0 });
  t.deepEqual(await scrape(), { accepted: 1, rejected: 0, digest: digestB }, '/metrics after the swap to B');
  t.is(await sha256(`${modelPath}.previous`), digestA, 'the replaced model is kept for rollback');
  await until('an event scored by B', () => events().some((e) => e.after.modelDigest === digestB), lines);
  const afterSwap = outputs.length;
  await until('more scans', () => outputs.length >= afterSwap + 4, lines);
  t.true(outputs.slice(afterSwap).every((o) => o.item.prediction.modelDigest === digestB), 'every scan after the swap is scored by B');

  // 2. A corrupt file written straight over the path: refused, B keeps serving.
  await writeFile(modelPath, Buffer.from('this is not an ONNX model'));
  await until('the rejection', () => rollout.stats().rejections === 1, lines);
  const rejection = rollout.stats().lastRejection!;
  t.is(rejection.path, modelPath);
  t.regex(rejection.reason, /tile\.onnx/, 'the reason names the file');
  t.true(lines.some((l) => l.includes('model file rejected')), 'the rejection is logged');
  const afterReject = outputs.length;
  await until('scans after the rejection', () => outputs.length >= afterReject + 4, lines);
  t.true(outputs.slice(afterReject).every((o) => o.item.prediction.modelDigest === digestB), 'B keeps serving');
  t.is(servingDigest(), digestB, 'the status digest is unchanged');
  await until('the rejection in the retained status', () => statuses().at(-1).rollout?.rejections === 1, lines);
  t.like(statuses().at(-1).rollout, { swaps: 1, rejections: 1 });
  t.regex(statuses().at(-1).rollout.lastRejection.reason, /tile\.onnx/);
  t.is(rollout.stats().swaps, 1);
  t.deepEqual(await scrape(), { accepted: 1, rejected: 1, digest: digestB }, '/metrics counts the refused file; B still the serving digest');

  // 3. `shelfwatch model rollback --config agent.json --model tile`.
  const restored = await runModelRollback(configPath, { model: 'tile', env: {} });
  t.like(restored, { model: 'tile', path: modelPath, digest: digestA });
  await until('A back in the retained status', () => servingDigest() === digestA, lines);
  t.is(await sha256(`${modelPath}.previous`), digestB, 'now B is the one to roll back to');
  const afterRollback = outputs.length;
  await until('scans after the rollback', () => outputs.length >= afterRollback + 4, lines);
  t.true(outputs.slice(afterRollback).every((o) => o.item.prediction.modelDigest === digestA), 'A serves again');

  // 4. The same through MQTT: a bad payload is refused, a good one rolls back to B.
  sub.publish(`${ROOT}/command/rollback`, JSON.stringify({ model: 'tile', extra: 1 }), { qos: 1 });
  await until('the bad command to be refused', () => lines.some((l) => l.includes('rollback command refused')), lines);
  sub.publish(`${ROOT}/command/rollback`, JSON.stringify({ model: 'tile' }), { qos: 1 });
  await until('B again', () => servingDigest() === digestB, lines);
  t.like(rollout.stats(), { swaps: 3, rejections: 1 });
  t.deepEqual(await scrape(), { accepted: 3, rejected: 1, digest: digestB });
  t.log(`every step done after ${agent.pipelineStats().cameras.shelf!.framesIn} of ${FRAMES} frames`);

  // The replay ends: every frame sent was scanned exactly once, none dropped or failed.
  await agent.finished;
  const stats = agent.pipelineStats().cameras.shelf!;
  t.like(stats, { framesIn: FRAMES, framesScanned: FRAMES, framesDropped: 0, decodeErrors: 0, cropErrors: 0, inferenceErrors: 0 });
  t.is(outputs.length, 2 * FRAMES, 'two slots per frame');
  for (const slot of ['S0', 'S1']) {
    const digests = outputs.filter((o) => o.item.crop.slot === slot).map((o) => o.item.prediction.modelDigest);
    t.deepEqual(runs(digests), [digestA, digestB, digestA, digestB], `slot ${slot}: digests in capture order`);
  }
  t.true(events().filter((e) => e.after.modelDigest === digestA).length >= 1 && events().some((e) => e.after.modelDigest === digestB));
  await agent.stop();
});

serial('MQTT command/model: download, verify, install on the path, swap; a bad download never touches the path', async (t) => {
  const files = new Map<string, Buffer>([
    ['/b.onnx', await readFile(modelB)],
    ['/bad.onnx', Buffer.from('not a model, but the sha256 matches')],
  ]);
  const http = createServer((req, res) => {
    const body = files.get(req.url ?? '');
    res.writeHead(body ? 200 : 404, { 'content-length': body?.length ?? 0 }).end(body);
  });
  await new Promise<void>((resolve) => http.listen(0, '127.0.0.1', resolve));
  t.teardown(() => http.close());
  const base = `http://127.0.0.1:${(http.address() as AddressInfo).port}`;
  const broker = await startMosquitto();
  t.teardown(() => broker.dispose());

  const dir = await mkdtemp(join(work, 'install-'));
  const modelPath = join(dir, 'tile.onnx');
  await copyFile(modelA, modelPath);
  const frame = await tileFrame(await unseenTiles(2));
  const stateDir = join(dir, 'state');
  const configPath = join(dir, 'agent.json');
  await writeFile(
    configPath,
    JSON.stringify({
      agent: { id: 'store-9', stateDir },
      mqtt: { url: broker.url },
      models: { tile: { path: modelPath, threshold: 4 } },
      inference: { provider: 'cpu', batchSize: 4, batchWaitMs: 10 },
      metrics: { enabled: false },
      cameras: [{ id: 'shelf', source: { type: 'replay', dir: framesDir, intervalMs: 100, loop: true }, continuous: { maxFps: 100 }, slots: [{ id: 'S0', box: [frame.boxes[0]!.x, frame.boxes[0]!.y, frame.boxes[0]!.width, frame.boxes[0]!.height], model: 'tile' }] }],
    }),
  );
  const lines: string[] = [];
  const agent = new Agent(await loadConfig(configPath, { env: {} }), { logger: new Logger({ level: 'info', sink: { write: (l: string) => lines.push(l) } }), outboxFsync: false, modelWatchDebounceMs: 100 });
  const outputs: ShelfOutput[] = [];
  agent.on('output', (o) => outputs.push(o));
  t.teardown(() => agent.stop());
  await agent.start();
  await until('a first scan', () => outputs.length >= 2, lines);
  const cmd: MqttClient = connect(broker.url);
  t.teardown(() => cmd.end(true));
  await new Promise<void>((resolve) => cmd.once('connect', () => resolve()));
  const send = (payload: unknown) => cmd.publish(`${ROOT}/command/model`, JSON.stringify(payload), { qos: 1 });

  send({ model: 'tile', url: 'ftp://example/b.onnx', sha256: digestB });
  await until('the bad payload to be refused', () => lines.some((l) => l.includes('model command refused') && l.includes('url')), lines);
  send({ model: 'tile', url: `${base}/b.onnx`, sha256: digestB });
  await until('B installed', () => agent.modelRollout!.stats().swaps === 1, lines);
  t.is(await sha256(modelPath), digestB, 'the configured path holds B');
  t.is(await sha256(`${modelPath}.previous`), digestA, 'A kept for rollback');
  t.is(await sha256(join(stateDir, 'models', `tile-${digestB.slice(0, 12)}.onnx`)), digestB, 'downloaded under <stateDir>/models/');
  const afterInstall = outputs.length;
  await until('scans by B', () => outputs.length >= afterInstall + 3, lines);
  t.is(outputs.at(-1)!.item.prediction.modelDigest, digestB);

  const bad = files.get('/bad.onnx')!;
  send({ model: 'tile', url: `${base}/bad.onnx`, sha256: createHash('sha256').update(bad).digest('hex') });
  await until('the bad download to be rejected', () => agent.modelRollout!.stats().rejections === 1, lines);
  t.is(await sha256(modelPath), digestB, 'a rejected download never replaces the configured file');
  t.is(agent.modelRollout!.stats().swaps, 1);
  await agent.stop();
});

serial('rollback command: clear errors when there is nothing to roll back to or the model is unknown', async (t) => {
  const dir = await mkdtemp(join(work, 'rollback-'));
  const modelPath = join(dir, 'm.onnx');
  await copyFile(modelA, modelPath);
  const configPath = join(dir, 'agent.json');
  await writeFile(configPath, JSON.stringify({ agent: { id: 'a1' }, models: { m: { path: modelPath } } }));
  await t.throwsAsync(runModelRollback(configPath, { model: 'nope', env: {} }), { message: /models\.nope is not defined \(defined: m\)/ });
  await t.throwsAsync(runModelRollback(configPath, { model: 'm', env: {} }), { message: /nothing to roll back to: .*m\.onnx\.previous does not exist/ });
  await writeFile(`${modelPath}.previous`, 'garbage');
  await t.throwsAsync(runModelRollback(configPath, { model: 'm', env: {} }), { message: /m\.onnx\.previous is not a valid model, not restored/ });
  t.is(await sha256(modelPath), digestA, 'the model file is untouched');
  await copyFile(modelB, `${modelPath}.previous`);
  t.like(await runModelRollback(configPath, { model: 'm', env: {} }), { digest: digestB, replaced: digestA });
  t.is(await sha256(modelPath), digestB);
});
