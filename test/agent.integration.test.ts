/**
 * The whole agent against a REAL mosquitto (test/helpers/mosquitto.ts) and a real small PatchCore
 * model: frames of real magnetic_tile images, with a dark blotch pasted into one slot for a few
 * frames, come in through the replay source and through ffmpeg reading a video made from the
 * same frames. A plain MQTT client checks every event, thumbnail, retained state and the status;
 * the broker is killed mid-run and the agent restarted with a non-empty outbox, and every event
 * the agent raised must reach the subscriber (exact accounting on event message ids).
 */
import test from 'ava';
import { execFile } from 'node:child_process';
import { mkdir, readdir, readFile, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import sharp from 'sharp';
import { Agent, providerLine } from '../agent/agent.js';
import { configFromObject, type AgentConfig } from '../agent/config.js';
import { eventMessageId } from '../agent/extensions/events-publisher.js';
import { ThumbnailFolder } from '../agent/thumbnail-folder.js';
import type { AnomalyEvent } from '../pipelines/events.js';
import type { Box } from '../pipelines/types.js';
import { captureLogger, registerAgentScene, tileSlots, until } from './helpers/agent-scene.js';
import { sharedAvailable } from './helpers/fitted-model.js';
import { startMosquitto, waitForAutosave, type MosquittoBroker } from './helpers/mosquitto.js';
import { eventSubscriber, recordingSubscriber, type Received } from './helpers/mqtt-subscribers.js';
import { inside, overlaps } from './helpers/shelf-frames.js';

const run = promisify(execFile);
const available = sharedAvailable();
const serial = available ? test.serial : test.serial.skip;

const THRESHOLD = 4;
const THUMB_MAX = 128;
/** N N A A A N N N: raise after 2 of 3 → 'new' at frame 3; clear after 2 normal → 'end' at frame 6. */
const SEQUENCE = [false, false, true, true, true, false, false, false];

const scene = registerAgentScene(test, 'shelfwatch-agent-it-', SEQUENCE);

function agentConfig(brokerUrl: string, stateDir: string, source: Record<string, unknown>, extra: Record<string, unknown> = {}): AgentConfig {
  return configFromObject(
    {
      agent: { id: 'store-1', stateDir },
      mqtt: { url: brokerUrl, keepaliveSeconds: 5, statsIntervalSeconds: 1, homeAssistant: { enabled: true } },
      models: { tile: { path: scene.modelPath, threshold: THRESHOLD } },
      inference: { provider: 'cpu', batchSize: 8, batchWaitMs: 10, maxPendingFrames: 32 },
      debounce: { raiseAfter: 2, window: 3, clearAfter: 2 },
      thumbnails: { maxSize: THUMB_MAX, quality: 80 },
      metrics: { enabled: true, port: 0 },
      logging: { level: 'info' },
      cameras: [
        {
          id: 'shelf',
          source,
          ...extra,
          slots: tileSlots(scene.normal),
        },
      ],
    },
    { origin: 'agent.integration', env: {} },
  );
}

const ROOT = 'shelfwatch/store-1';
const events = (messages: Received[]): AnomalyEvent[] => messages.filter((m) => m.topic === `${ROOT}/events`).map((m) => JSON.parse(m.payload.toString()) as AnomalyEvent);

/** Every field an event must carry, checked against where the blotch really is. */
function checkEvent(t: { true(v: boolean, m?: string): void; is(a: unknown, b: unknown, m?: string): void; regex(s: string, r: RegExp): void }, e: AnomalyEvent): void {
  const a = e.after;
  t.true(['new', 'update', 'end'].includes(e.type), `type ${e.type}`);
  t.is(e.before === null, e.type === 'new', 'before is null exactly for new');
  t.regex(a.id, /^shelf-S1-\d{13}-[0-9a-f]{8}$/);
  t.is(a.camera, 'shelf');
  t.is(a.slot, 'S1');
  t.is(a.product, 'SKU-1');
  t.is(a.category, 'tile');
  t.is(a.threshold, THRESHOLD);
  t.true(a.score > THRESHOLD, `score ${a.score} over the threshold`);
  t.true(a.normalizedScore > 0.5 && a.normalizedScore <= 1, `normalized ${a.normalizedScore}`);
  t.is(a.modelId, 'tile');
  t.is(a.modelDigest, scene.modelDigest);
  t.true(Number.isInteger(a.frameTime) && a.frameTime > 1.6e12, `frameTime ${a.frameTime}`);
  t.is(a.endTime === null, e.type !== 'end');
  t.true(a.regions.length >= 1, 'at least one region');
  const slot: Box = scene.normal.boxes[1]!;
  for (const r of a.regions) {
    t.true(inside(r.box, slot), `region ${JSON.stringify(r.box)} inside the slot ${JSON.stringify(slot)} (frame coordinates)`);
    t.true(r.area > 0, 'region area');
  }
  t.true(overlaps(a.regions[0]!.box, scene.anomalous.blotches.get(1)!), 'the strongest region is on the blotch');
  if (e.before) t.is(e.before.id, a.id, 'one id from new to end');
}

serial('replay camera: events, thumbnails, retained state, status, stats and metrics through mosquitto', async (t) => {
  const broker = await startMosquitto();
  t.teardown(() => broker.dispose());
  const live = await recordingSubscriber(broker.url, `${ROOT}/#`, t);
  const base = agentConfig(broker.url, join(scene.work, 'state-replay'), { type: 'replay', dir: scene.framesDir, intervalMs: 150 });
  // Thumbnails also go to a folder that keeps the newest 2; it holds two from an earlier run
  // (the older one must go) and a file of someone else's (it must stay).
  const thumbDir = join(scene.work, 'thumbs-replay');
  await mkdir(thumbDir, { recursive: true });
  const earlier = ['shelf-S1-1700000000000-0123abcd-new.jpg', 'shelf-S1-1700000000000-0123abcd-update-1700000001000.jpg'];
  for (const [i, name] of earlier.entries()) {
    await writeFile(join(thumbDir, name), 'earlier run');
    const when = new Date(Date.now() - (2 - i) * 3_600_000);
    await utimes(join(thumbDir, name), when, when);
  }
  await writeFile(join(thumbDir, 'README.txt'), 'not a thumbnail');
  const config: AgentConfig = { ...base, thumbnails: { ...base.thumbnails, dir: thumbDir, keep: 2 } };
  const { logger, lines } = captureLogger();
  const agent = new Agent(config, { logger, reconnect: { minDelayMs: 100, maxDelayMs: 500 } });
  const raised: AnomalyEvent[] = [];
  agent.on('event', (e) => raised.push(e));
  t.teardown(() => agent.stop());
  await agent.start();
  await agent.finished;
  await until('the outbox to drain', () => agent.mqtt!.outbox.depth().records === 0, 15_000, lines);
  await until('the end event', () => events(live.messages).some((e) => e.type === 'end'), 15_000, lines);

  // Events: new … end for S1 only, each exactly as raised.
  const got = events(live.messages);
  t.deepEqual(got.map(eventMessageId), raised.map(eventMessageId));
  t.is(got[0]!.type, 'new');
  t.is(got.at(-1)!.type, 'end');
  for (const e of got) checkEvent(t, e);
  t.is(got[0]!.after.frameTime, raised[0]!.after.frameTime);
  t.true(got.every((e) => e.after.slot === 'S1'), 'S0 never raises');

  // Thumbnails: one per new/update, a JPEG of at most THUMB_MAX px, its mask a PNG of the same size.
  const thumbs = live.messages.filter((m) => m.topic === `${ROOT}/shelf/S1/thumbnail`);
  const masks = live.messages.filter((m) => m.topic === `${ROOT}/shelf/S1/mask`);
  t.is(thumbs.length, got.filter((e) => e.type !== 'end').length);
  t.is(masks.length, thumbs.length);
  for (const [i, m] of thumbs.entries()) {
    const meta = await sharp(m.payload).metadata();
    t.is(meta.format, 'jpeg');
    t.true(Math.max(meta.width!, meta.height!) <= THUMB_MAX, `thumbnail ${meta.width}×${meta.height}`);
    t.true(m.payload.length < 64 * 1024, `thumbnail of ${m.payload.length} bytes`);
    const mask = await sharp(masks[i]!.payload).metadata();
    t.like(mask, { format: 'png', width: meta.width, height: meta.height });
  }

  // Stats and status arrived; status names the model with its digest and provider.
  const stats = live.messages.filter((m) => m.topic === `${ROOT}/stats`).map((m) => JSON.parse(m.payload.toString()));
  t.true(stats.length >= 1, 'at least one stats message');
  t.like(stats.at(-1).mqtt, { state: 'connected' });
  const late = await recordingSubscriber(broker.url, `${ROOT}/#`, t);
  await until('retained messages', () => late.messages.some((m) => m.topic === `${ROOT}/status`) && late.messages.filter((m) => m.topic.endsWith('/state')).length === 2, 30_000);
  await new Promise((r) => setTimeout(r, 200));
  const retained = new Map(late.messages.map((m) => [m.topic, m]));
  t.false(retained.has(`${ROOT}/events`), 'events are not retained');
  t.is(retained.get(`${ROOT}/availability`)?.payload.toString(), 'online');
  const status = JSON.parse(retained.get(`${ROOT}/status`)!.payload.toString());
  t.like(status, { agent: 'store-1', state: 'running', broker: { embedded: false } });
  t.like(status.models[0], { name: 'tile', digest: scene.modelDigest, provider: 'cpu', threshold: THRESHOLD, thresholdSource: 'config', slots: ['shelf/S0', 'shelf/S1'], thread: 'worker', workerRestarts: 0 });
  // The startup log names each model's provider in one line (deploy/GPU.md §3); `cpu` was asked
  // for, so no candidate was skipped.
  const providerLines = lines.map((l) => JSON.parse(l) as { level: string; msg: string; provider?: string; fallbacks?: unknown[] }).filter((l) => l.msg.startsWith('model tile: provider'));
  t.deepEqual(providerLines.map((l) => [l.level, l.msg, l.provider, l.fallbacks]), [['info', 'model tile: provider cpu', 'cpu', []]]);
  t.is(
    providerLine({ name: 'tile', provider: 'cpu', fallbacks: [{ provider: 'cuda', reason: 'no NVIDIA GPU device found' }, { provider: 'webgpu', reason: 'no GPU render node (/dev/dri/renderD*) found' }] }),
    'model tile: provider cpu (cuda skipped: no NVIDIA GPU device found; webgpu skipped: no GPU render node (/dev/dri/renderD*) found)',
  );
  t.like(status.cameras[0], { id: 'shelf', source: 'replay', trigger: 'every file' });
  t.is(status.cameras[0].slots.length, 2);
  for (const slot of ['S0', 'S1']) {
    const state = JSON.parse(retained.get(`${ROOT}/shelf/${slot}/state`)!.payload.toString());
    t.like(state, { state: 'ok', eventId: null, camera: 'shelf', slot, product: `SKU-${slot.slice(1)}`, threshold: THRESHOLD, modelDigest: scene.modelDigest });
  }
  t.true(retained.has(`${ROOT}/shelf/S1/thumbnail`), 'the last thumbnail stays retained');
  // Home Assistant discovery (retained): a problem sensor and two images per slot.
  const ha = await recordingSubscriber(broker.url, 'homeassistant/#', t);
  await until('discovery messages', () => ha.messages.length >= 6, 30_000);
  const sensors = ha.messages.filter((m) => m.topic.startsWith('homeassistant/binary_sensor/')).map((m) => JSON.parse(m.payload.toString()));
  t.deepEqual(sensors.map((s) => s.state_topic).sort(), [`${ROOT}/shelf/S0/state`, `${ROOT}/shelf/S1/state`]);

  // Metrics and health over HTTP.
  const metrics = await (await fetch(`${agent.metricsUrl}/metrics`)).text();
  t.regex(metrics, new RegExp(`shelfwatch_frames_scanned_total\\{camera="shelf"\\} ${SEQUENCE.length}`));
  t.regex(metrics, /shelfwatch_events_total\{camera="shelf",type="new"\} 1/);
  t.regex(metrics, /shelfwatch_inference_seconds_count\{model="tile"\} \d+/);
  t.regex(metrics, /shelfwatch_mqtt_state\{state="connected"\} 1/);
  t.regex(metrics, /shelfwatch_decode_shrink\{camera="shelf"\} 1\n/, 'slots at the model size: full-resolution decode');
  t.regex(metrics, /shelfwatch_model_worker_restarts\{model="tile"\} 0\n/);
  t.regex(metrics, /shelfwatch_outbox_records \d+\n/);
  t.regex(metrics, /shelfwatch_pixel_arena_frames 0\n/, 'every decoded frame gave its buffer back');
  t.regex(metrics, /shelfwatch_pixel_arena_bytes [1-9]\d*\n/);
  t.regex(metrics, /shelfwatch_outbox_delivered_total \d+\n/);
  t.regex(metrics, /shelfwatch_journal_pending_events 0\n/, 'every event released and written by the outbox');
  t.regex(metrics, /shelfwatch_journal_released_unjournalled_total 0\n/);
  t.regex(metrics, /shelfwatch_journal_dropped_pending_total 0\n/);
  t.regex(metrics, /shelfwatch_source_state\{camera="shelf",source="replay",state="stopped"\} 1/);
  const health = await fetch(`${agent.metricsUrl}/healthz`);
  t.is(health.status, 200);
  t.like(await health.json(), { mqtt: 'connected' });

  await agent.stop();
  await until('offline availability', () => late.messages.some((m) => m.topic === `${ROOT}/availability` && m.payload.toString() === 'offline'), 30_000);
  const stopped = late.messages.filter((m) => m.topic === `${ROOT}/status`).map((m) => JSON.parse(m.payload.toString()));
  t.is(stopped.at(-1).state, 'stopped');

  // The thumbnail folder: the newest 2 thumbnails, oldest deleted first (the earlier run's), the
  // last one byte for byte as published, the foreign file untouched.
  const names = got.filter((e) => e.type !== 'end').map((e) => ThumbnailFolder.fileName(e.after.id, e.type as 'new' | 'update', e.after.frameTime));
  const kept = [...earlier, ...names].slice(-2);
  t.deepEqual((await readdir(thumbDir)).sort(), [...kept, 'README.txt'].sort());
  t.deepEqual(await readFile(join(thumbDir, names.at(-1)!)), thumbs.at(-1)!.payload);
});

serial('stream camera: ffmpeg reads a video of the frames; the blotch raises new → end', async (t) => {
  const video = join(scene.work, 'shelf.avi');
  // Odd frame sizes are fine with 4:4:4 MJPEG; the frames keep their exact pixel geometry.
  await run('ffmpeg', ['-hide_banner', '-loglevel', 'error', '-y', '-framerate', '2', '-i', join(scene.framesDir, 'frame%03d.jpg'), '-c:v', 'mjpeg', '-q:v', '2', '-pix_fmt', 'yuvj444p', video]);
  const broker = await startMosquitto();
  t.teardown(() => broker.dispose());
  const live = await recordingSubscriber(broker.url, `${ROOT}/events`, t);
  // loop: ffmpeg plays the file at its own speed (2 fps), over and over, like a camera.
  const config = agentConfig(broker.url, join(scene.work, 'state-stream'), { type: 'stream', input: video, fps: 2, loop: true }, { continuous: { maxFps: 4 } });
  const { logger, lines } = captureLogger('debug');
  const agent = new Agent(config, { logger, reconnect: { minDelayMs: 100, maxDelayMs: 500 } });
  const raised: AnomalyEvent[] = [];
  agent.on('event', (e) => raised.push(e));
  t.teardown(() => agent.stop());
  await agent.start();
  await until('new and end from the video', () => events(live.messages).some((e) => e.type === 'end'), 30_000, lines);
  await agent.stop();

  const got = events(live.messages);
  t.is(got[0]!.type, 'new');
  for (const e of got) checkEvent(t, e);
  const raisedIds = new Set(raised.map(eventMessageId));
  t.true(got.every((e) => raisedIds.has(eventMessageId(e))));
  t.deepEqual([...raisedIds].filter((id) => !got.some((e) => eventMessageId(e) === id)), [], 'every raised event was delivered before stop returned');
  const stats = agent.pipelineStats().cameras.shelf!;
  t.is(stats.decodeErrors, 0);
  t.true(stats.framesScanned >= 7, `${stats.framesScanned} frames scanned`);
  t.true(lines.some((l) => l.includes('"msg":"ffmpeg started"') && l.includes('"source":"stream"')), 'the stream source logs through the agent logger');
});

serial('broker killed mid-run and agent restarted with a non-empty outbox: every raised event is delivered', async (t) => {
  const broker: MosquittoBroker = await startMosquitto({ persistence: true });
  t.teardown(() => broker.dispose());
  // A persistent QoS 1 session: what reaches the restarted broker while the subscriber is still
  // reconnecting is queued for it, so anything missing is the agent's fault.
  const sub = await eventSubscriber(broker.url, ROOT, t, { clientId: 'agent-it-accounting', clean: false });
  await waitForAutosave(); // the broker is SIGKILLed below
  const stateDir = join(scene.work, 'state-outage');
  const source = { type: 'replay', dir: scene.framesDir, intervalMs: 120, loop: true };
  const config = agentConfig(broker.url, stateDir, source);
  const raised: AnomalyEvent[] = [];
  const { logger, lines } = captureLogger();
  const agent = new Agent(config, { logger, reconnect: { minDelayMs: 100, maxDelayMs: 400 } });
  agent.on('event', (e) => raised.push(e));
  t.teardown(() => agent.stop());
  await agent.start();
  const delivered = sub.delivered;

  // 1. A first event goes through; kill the broker while nothing is in flight.
  await until('a first delivered event', () => delivered().size >= 1, 30_000, lines);
  await until('an idle outbox', () => agent.mqtt!.outbox.depth().records === 0 && agent.mqtt!.metrics().inFlight === 0, 10_000, lines);
  const beforeKill = raised.length;
  await broker.kill();
  // 2. The agent keeps scanning; events pile up in the outbox.
  await until('events raised during the outage', () => raised.length >= beforeKill + 2, 30_000, lines);
  t.true(agent.mqtt!.outbox.depth().records > 0, 'the outbox holds the events raised while the broker was down');
  await broker.restart();
  await until('everything raised so far to arrive', () => raised.every((e) => delivered().has(eventMessageId(e))), 30_000, lines);
  t.true(agent.mqtt!.metrics().connectionLosses >= 1);

  // 3. Broker down again; stop the agent with events still in its outbox.
  await until('an idle outbox', () => agent.mqtt!.outbox.depth().records === 0 && agent.mqtt!.metrics().inFlight === 0, 10_000, lines);
  const beforeSecondKill = raised.length;
  await broker.kill();
  await until('events raised during the second outage', () => raised.length >= beforeSecondKill + 2, 30_000, lines);
  await agent.stop();
  const stranded = raised.slice(beforeSecondKill).map(eventMessageId);
  t.true(stranded.every((id) => !delivered().has(id)), 'the broker was down: nothing of the second outage arrived yet');
  const onDisk = (await readdir(join(stateDir, 'outbox'))).filter((f) => f.endsWith('.rec'));
  t.true(onDisk.length >= stranded.length, `${onDisk.length} records on disk for ${stranded.length} stranded events`);

  // 4. Broker back; a NEW agent on the same state dir (its camera sees only normal frames) delivers them.
  await broker.restart();
  const second = new Agent(agentConfig(broker.url, stateDir, { type: 'replay', dir: scene.normalDir, intervalMs: 100 }), { logger, reconnect: { minDelayMs: 100, maxDelayMs: 400 } });
  const raisedBySecond: AnomalyEvent[] = [];
  second.on('event', (e) => raisedBySecond.push(e));
  t.teardown(() => second.stop());
  await second.start();
  await until('the stranded events to arrive', () => stranded.every((id) => delivered().has(id)), 30_000, lines);
  await until('the outbox to drain', () => second.mqtt!.outbox.depth().records === 0, 10_000, lines);
  await second.stop();

  // Exact accounting: every event id the first agent raised was delivered, nothing else was.
  const all = raised.map(eventMessageId);
  t.deepEqual(all.filter((id) => !delivered().has(id)), [], 'no raised event lost');
  t.deepEqual([...delivered()].filter((id) => !all.includes(id)), [], 'nothing delivered that was not raised');
  t.deepEqual(raisedBySecond, [], 'the second agent saw only normal frames');
  t.true(raised.filter((e) => e.type === 'new').length >= 2 && raised.some((e) => e.type === 'end'));
  for (const e of sub.events) checkEvent(t, e);
});
