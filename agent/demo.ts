/**
 * `npm start` / `shelfwatch demo`: the whole chain on a simulated shelf, with nothing to set up.
 *
 *   1. a simulated camera (ShelfScene: products on a white shelf) renders a loop of frames in
 *      which defects appear on some slots and disappear again;
 *   2. on the first run a PatchCore model is fitted on normal crops of the same shelf (cached in
 *      the demo folder; the backbone comes from the cache or is downloaded, or
 *      SHELFWATCH_BACKBONE names a local file);
 *   3. the real agent runs on it: embedded MQTT broker, replay source over the rendered frames,
 *      the shelf pipeline, events + thumbnails through the outbox;
 *   4. the demo subscribes to its own events over MQTT and prints one line per event, and the
 *      thumbnails land in `<dir>/thumbnails`.
 *
 * It runs until SIGINT/SIGTERM, the abort signal, or `durationSec`.
 */
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join, relative, resolve } from 'node:path';
import { createServer } from 'node:net';
import { connect } from 'mqtt';
import { fitPatchcore, type InputBatch } from '../models/fit.js';
import { preprocessImage } from '../models/preprocess.js';
import { PatchcoreModel } from '../models/runtime.js';
import { TOOL_VERSION } from '../models/version.js';
import type { AnomalyEvent } from '../pipelines/events.js';
import { ShelfScene, type SlotDefect } from '../pipelines/shelf-scene.js';
import { Agent } from './agent.js';
import { selectBackbone } from './backbones.js';
import { checkOutputFolder, writeFileAtomic } from './commands/output-paths.js';
import { configFromObject, type AgentConfig } from './config.js';
import { Logger, type LogLevel } from './logger.js';
import { ThumbnailFolder } from './thumbnail-folder.js';

export interface DemoOptions {
  /** Working folder: model cache, rendered frames, thumbnails, agent state. */
  dir: string;
  /** Stop after this many seconds (default: run until a signal). */
  durationSec?: number;
  /** Where the human-readable lines go (default console.log). */
  log?: (line: string) => void;
  /** Embedded broker port (default 1883; a busy port falls back to a free one; 0 = free). */
  port?: number;
  /** Agent JSON log level, written to stderr (default 'warn'). */
  logLevel?: LogLevel;
  signal?: AbortSignal;
  /** Install SIGINT/SIGTERM handlers (default true). */
  handleSignals?: boolean;
  env?: NodeJS.ProcessEnv;
}

export interface DemoEventLine {
  type: AnomalyEvent['type'];
  camera: string;
  slot: string;
  score: number;
  threshold: number;
}

export interface DemoResult {
  events: DemoEventLine[];
  thumbnails: string[];
  modelPath: string;
  brokerUrl: string;
  /** Whether this run fitted the model (false: it came from the cache). */
  fitted: boolean;
}

/** The simulated shelf: 4 products, 960×540 frames. */
const SCENE = { seed: 7, width: 960, height: 540, slots: 4 } as const;
const CAMERA = 'shelf-demo';
const LOOP_FRAMES = 36;
const FRAME_INTERVAL_MS = 500;
const TRAINING_FRAMES = 24;
/** Further normal frames, never trained on, that set the demo's threshold. */
const CALIBRATION_FRAMES = 12;
/** Threshold = the highest calibration score × this margin. */
const THRESHOLD_MARGIN = 1.2;
const CORESET = 0.05;

/**
 * Defects over the loop (frame index ranges, end exclusive): a bottle whose cap comes off, then
 * an opened box while a pouch gets damaged. Each lasts long enough to pass the debounce.
 */
const TIMELINE: Array<{ from: number; to: number; defect: SlotDefect }> = [
  { from: 6, to: 14, defect: { slot: 0, defect: 'cap_open' } },
  { from: 18, to: 27, defect: { slot: 2, defect: 'opened' } },
  { from: 21, to: 30, defect: { slot: 3, defect: 'surface_damage' } },
];

export function defectsAt(frame: number): SlotDefect[] {
  return TIMELINE.filter((d) => frame >= d.from && frame < d.to).map((d) => d.defect);
}

function slotsOf(scene: ShelfScene) {
  return scene.slots().map((s) => ({ id: s.id, box: s.box, model: 'shelf', product: s.goodsId, category: s.category }));
}

/** Renders the looped frames once (they only depend on the scene). */
async function renderFrames(scene: ShelfScene, dir: string, log: (l: string) => void): Promise<void> {
  const marker = join(dir, `.complete-${LOOP_FRAMES}-${SCENE.seed}`);
  if (existsSync(marker)) return;
  await rm(dir, { recursive: true, force: true });
  await mkdir(dir, { recursive: true });
  log(`rendering ${LOOP_FRAMES} frames of the simulated shelf camera …`);
  for (let i = 0; i < LOOP_FRAMES; i++) {
    const { jpeg } = await scene.frame(i, defectsAt(i));
    await writeFile(join(dir, `frame${String(i).padStart(3, '0')}.jpg`), jpeg);
  }
  await writeFile(marker, '');
}

interface DemoModel {
  path: string;
  /** Image threshold calibrated on normal frames the model never saw. */
  threshold: number;
  fitted: boolean;
}

/**
 * Fits (or reuses) the demo model: one model shared by every slot of the shelf. The fit's own
 * threshold (the highest held-out score) is tight for a scene whose lighting and product
 * positions vary, so the demo calibrates it on further normal frames, with a margin, and passes
 * it as the model's config threshold.
 */
async function demoModel(scene: ShelfScene, dir: string, log: (l: string) => void, env: NodeJS.ProcessEnv): Promise<DemoModel> {
  const key = createHash('sha256').update(JSON.stringify({ SCENE, TRAINING_FRAMES, CALIBRATION_FRAMES, THRESHOLD_MARGIN, CORESET, TOOL_VERSION })).digest('hex').slice(0, 12);
  const path = join(dir, `shelf-${key}.onnx`);
  const sidecar = join(dir, `shelf-${key}.json`);
  if (existsSync(path) && existsSync(sidecar)) {
    const threshold = await cachedThreshold(sidecar);
    if (threshold !== undefined) return { path, threshold, fitted: false };
    log(`the cached model's ${shown(sidecar)} is unreadable or damaged: fitting again`);
  }
  await mkdir(dir, { recursive: true });
  log('first run: fitting a PatchCore model on normal crops of the simulated shelf (cached afterwards) …');
  const backbone = await selectBackbone({
    env,
    onDownloadProgress: (got, total) => log(`  downloading the backbone: ${(got / 1e6).toFixed(1)}${total ? ` / ${(total / 1e6).toFixed(1)}` : ''} MB`),
  });
  const bySlot = await scene.trainingCrops(TRAINING_FRAMES + CALIBRATION_FRAMES);
  // Interleave the slots so that the held-out tail holds every product.
  const crops: Buffer[] = [];
  for (let i = 0; i < TRAINING_FRAMES; i++) for (const list of bySlot.values()) crops.push(list[i]!);
  const calibration = [...bySlot.values()].flatMap((list) => list.slice(TRAINING_FRAMES));
  const holdOut = Math.max(4, Math.round(crops.length * 0.1));
  const train = crops.slice(0, crops.length - holdOut);
  const validation = crops.slice(crops.length - holdOut);
  const size = backbone.descriptor.inputSize;
  const normalization = backbone.descriptor.normalization;
  async function* batches(images: Buffer[]): AsyncGenerator<InputBatch> {
    const perBatch = 8;
    for (let i = 0; i < images.length; i += perBatch) {
      const chunk = images.slice(i, i + perBatch);
      const data = new Float32Array(chunk.length * 3 * size * size);
      for (const [j, png] of chunk.entries()) {
        const img = await preprocessImage(png, { origin: `demo crop ${i + j}`, size, normalization, shrinkOnLoad: false });
        data.set(img.data, j * 3 * size * size);
      }
      yield { data, count: chunk.length };
    }
  }
  const started = Date.now();
  const result = await fitPatchcore({
    name: 'shelf-demo',
    backbone,
    trainCount: train.length,
    train: batches(train),
    validationCount: validation.length,
    validation: batches(validation),
    validationSource: 'held-out',
    trainingDigest: createHash('sha256').update(JSON.stringify({ SCENE, TRAINING_FRAMES })).digest('hex'),
    coresetRatio: CORESET,
    seed: 0,
    projection: 'jl',
    createdAt: new Date().toISOString(),
  });
  const model = await PatchcoreModel.load(result.bytes, { provider: 'cpu' }, 'demo model');
  let highest = result.manifest.thresholds.image;
  try {
    for await (const batch of batches(calibration)) {
      for (const p of await model.predict(batch.data, batch.count)) highest = Math.max(highest, p.score);
    }
  } finally {
    await model.release();
  }
  const threshold = highest * THRESHOLD_MARGIN;
  await writeFileAtomic(path, result.bytes);
  // Atomically too: a sidecar cut short by a crash must not stand for a calibrated threshold.
  await writeFileAtomic(sidecar, `${JSON.stringify({ threshold, calibrationCrops: calibration.length, highestNormalScore: highest, margin: THRESHOLD_MARGIN })}\n`);
  log(
    `  fitted on ${train.length} crops in ${((Date.now() - started) / 1000).toFixed(1)} s: memory bank of ${result.manifest.coreset.entries} patches; ` +
      `threshold ${threshold.toFixed(3)} (highest score of ${calibration.length} unseen normal crops × ${THRESHOLD_MARGIN})`,
  );
  return { path, threshold, fitted: true };
}

/**
 * The calibrated threshold in a cached model's sidecar file; undefined when the file cannot be
 * read or does not hold a positive finite `threshold` (cut short by a crash, edited by hand):
 * the model is then fitted again rather than the demo failing on every start.
 */
export async function cachedThreshold(sidecar: string): Promise<number | undefined> {
  try {
    const parsed = JSON.parse(await readFile(sidecar, 'utf8')) as unknown;
    const threshold = parsed !== null && typeof parsed === 'object' ? (parsed as { threshold?: unknown }).threshold : undefined;
    return typeof threshold === 'number' && Number.isFinite(threshold) && threshold > 0 ? threshold : undefined;
  } catch {
    return undefined;
  }
}

function demoConfig(dir: string, model: DemoModel, scene: ShelfScene, port: number): AgentConfig {
  return configFromObject(
    {
      agent: { id: 'demo', stateDir: join(dir, 'state') },
      // No url: the agent runs its embedded broker.
      mqtt: { embeddedPort: port, statsIntervalSeconds: 30 },
      models: { shelf: { path: model.path, threshold: model.threshold } },
      inference: { provider: 'auto', batchSize: 4, batchWaitMs: 25, maxPendingFrames: 4 },
      debounce: { raiseAfter: 2, window: 3, clearAfter: 3 },
      thumbnails: { maxSize: 320, quality: 85, dir: join(dir, 'thumbnails') },
      metrics: { enabled: true, host: '127.0.0.1', port: 0 },
      cameras: [
        {
          id: CAMERA,
          source: { type: 'replay', dir: join(dir, 'frames'), intervalMs: FRAME_INTERVAL_MS, loop: true },
          slots: slotsOf(scene).map((s) => ({ ...s, box: [s.box.x, s.box.y, s.box.width, s.box.height] })),
        },
      ],
    },
    { origin: '<demo>', baseDir: dir, env: {} },
  );
}

/** A path as short as it is clear: relative to the cwd when inside it, else absolute. */
const shown = (path: string) => {
  const rel = relative(process.cwd(), path);
  return rel === '' ? '.' : rel.startsWith('..') ? path : rel;
};

const time = (ms: number) => new Date(ms).toTimeString().slice(0, 8);

/** One console line per event: time, type, camera/slot, score vs threshold, regions. */
export function formatEventLine(e: AnomalyEvent, thumbnail?: string): string {
  const a = e.after;
  const kind = { new: 'NEW   ', update: 'UPDATE', end: 'END   ' }[e.type];
  const regions = e.type === 'end'
    ? `cleared after ${((a.endTime! - a.startTime) / 1000).toFixed(1)} s`
    : `${a.regions.length} region${a.regions.length === 1 ? '' : 's'}${a.regions.length ? ': ' : ''}${a.regions
        .slice(0, 3)
        .map((r) => `[${r.box.x},${r.box.y} ${r.box.width}×${r.box.height}]`)
        .join(' ')}${a.regions.length > 3 ? ' …' : ''}`;
  const cmp = a.score > a.threshold ? '>' : '≤';
  return `${time(e.type === 'end' ? a.endTime! : a.frameTime)}  ${kind}  ${a.camera}/${a.slot} (${a.product ?? '-'})  score ${a.score.toFixed(2)} ${cmp} ${a.threshold.toFixed(2)}  ${regions}${thumbnail ? `  → ${thumbnail}` : ''}`;
}

/**
 * An events-topic payload as an event the demo can print, or null: anything else published
 * there (by hand, by another client) must not crash the demo.
 */
export function parseDemoEvent(payload: Buffer | string): AnomalyEvent | null {
  let e: unknown;
  try {
    e = JSON.parse(payload.toString());
  } catch {
    return null;
  }
  if (e === null || typeof e !== 'object') return null;
  const { type, after } = e as { type?: unknown; after?: unknown };
  if (type !== 'new' && type !== 'update' && type !== 'end') return null;
  if (after === null || typeof after !== 'object') return null;
  const a = after as Record<string, unknown>;
  const numbers = ['score', 'threshold', 'frameTime', 'startTime'].every((k) => typeof a[k] === 'number' && Number.isFinite(a[k]));
  const strings = ['id', 'camera', 'slot'].every((k) => typeof a[k] === 'string');
  const regions = Array.isArray(a.regions) && a.regions.every((r) => r !== null && typeof r === 'object' && (r as { box?: unknown }).box !== null && typeof (r as { box?: unknown }).box === 'object');
  const endTime = type === 'end' ? typeof a.endTime === 'number' && Number.isFinite(a.endTime) : true;
  return numbers && strings && regions && endTime ? (e as AnomalyEvent) : null;
}

/** Where the thumbnail folder holds this event's thumbnail; undefined for an end or a snapshot without one. */
export function thumbnailFile(e: AnomalyEvent, dir: string): string | undefined {
  if (e.type === 'end' || !e.after.thumbnail) return undefined;
  return shown(join(dir, ThumbnailFolder.fileName(e.after.id, e.type, e.after.frameTime)));
}

export async function runDemo(options: DemoOptions): Promise<DemoResult> {
  const dir = resolve(options.dir);
  const log = options.log ?? ((line: string) => console.log(line));
  const env = options.env ?? process.env;
  await checkOutputFolder('--dir', dir);
  await mkdir(dir, { recursive: true });
  const scene = new ShelfScene({ ...SCENE });
  await renderFrames(scene, join(dir, 'frames'), log);
  const model = await demoModel(scene, join(dir, 'model'), log, env);
  await rm(join(dir, 'thumbnails'), { recursive: true, force: true });

  const logger = new Logger({ level: options.logLevel ?? 'warn', sink: process.stderr, fields: { agent: 'demo' } });
  // A busy 1883 (mosquitto from the quick start) is found before the agent tries it, so no error
  // line is logged for it; the catch below covers a port taken in between.
  const taken = 'port 1883 is taken (another broker?); the embedded broker takes a free port instead';
  let port = options.port;
  if (port === undefined) {
    port = (await portIsFree(1883)) ? 1883 : 0;
    if (port === 0) log(taken);
  }
  let agent = new Agent(demoConfig(dir, model, scene, port), { logger, flushTimeoutMs: 1000 });
  try {
    await agent.start();
  } catch (err) {
    if (options.port !== undefined || port === 0 || !/EADDRINUSE/.test((err as Error).message)) throw err;
    log(taken);
    agent = new Agent(demoConfig(dir, model, scene, 0), { logger, flushTimeoutMs: 1000 });
    await agent.start();
  }

  const events: DemoEventLine[] = [];
  const watcher = connect(agent.brokerUrl, { clientId: `shelfwatch-demo-viewer-${process.pid}`, reconnectPeriod: 500 });
  watcher.on('error', () => undefined);
  const thumbsDir = join(dir, 'thumbnails');
  watcher.on('message', (_topic, payload) => {
    // Anybody may publish on the embedded broker: a message that is not an event is ignored.
    const e = parseDemoEvent(payload);
    if (!e) return;
    const a = e.after;
    events.push({ type: e.type, camera: a.camera, slot: a.slot, score: a.score, threshold: a.threshold });
    log(formatEventLine(e, thumbnailFile(e, thumbsDir)));
  });
  await new Promise<void>((ok, fail) => {
    watcher.once('connect', () => watcher.subscribe(agent.topics.events, { qos: 1 }, (err) => (err ? fail(err) : ok())));
  });

  const slots = scene.slots();
  log('');
  log(`shelfwatch demo — a simulated camera '${CAMERA}' watching ${slots.length} products: ${slots.map((s) => `${s.id} ${s.category}`).join(', ')}`);
  log(`  MQTT broker (embedded)  ${agent.brokerUrl}    watch it: mosquitto_sub -h 127.0.0.1 -p ${new URL(agent.brokerUrl).port} -t '${agent.topics.root}/#' -v`);
  log(`  metrics                 ${agent.metricsUrl}/metrics   health ${agent.metricsUrl}/healthz`);
  log(`  thumbnails              ${shown(thumbsDir)}/`);
  log(`  model                   ${shown(model.path)} (shared by all ${slots.length} slots, threshold ${model.threshold.toFixed(2)})`);
  log(`  defects appear every ${((LOOP_FRAMES * FRAME_INTERVAL_MS) / 1000).toFixed(0)} s on ${[...new Set(TIMELINE.map((d) => slots[d.defect.slot]!.id))].join(', ')}; Ctrl-C stops${options.durationSec ? ` (or after ${options.durationSec} s)` : ''}`);
  log('');

  await new Promise<void>((resolve) => {
    const handleSignals = options.handleSignals ?? true;
    let timer: NodeJS.Timeout | null = null;
    const finish = () => {
      if (timer) clearTimeout(timer);
      timer = null;
      if (handleSignals) {
        process.off('SIGINT', finish);
        process.off('SIGTERM', finish);
      }
      options.signal?.removeEventListener('abort', finish);
      resolve();
    };
    if (options.durationSec !== undefined) timer = setTimeout(finish, options.durationSec * 1000);
    if (handleSignals) {
      process.once('SIGINT', finish);
      process.once('SIGTERM', finish);
    }
    options.signal?.addEventListener('abort', finish, { once: true });
    if (options.signal?.aborted) finish();
    void agent.finished.then(finish);
  });

  // Give the last events a moment to come back through the broker before stopping.
  await new Promise((r) => setTimeout(r, 300));
  await agent.stop();
  await new Promise<void>((r) => watcher.end(true, {}, () => r()));
  const thumbnails = existsSync(thumbsDir) ? (await readdir(thumbsDir)).filter((f) => f.endsWith('.jpg')).map((f) => join(thumbsDir, f)) : [];
  log(`demo stopped: ${events.length} event${events.length === 1 ? '' : 's'}, ${thumbnails.length} thumbnail${thumbnails.length === 1 ? '' : 's'} in ${shown(thumbsDir)}/`);
  return { events, thumbnails, modelPath: model.path, brokerUrl: agent.brokerUrl, fitted: model.fitted };
}

/** Whether a TCP port on 127.0.0.1 can be listened on right now. */
function portIsFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = createServer();
    probe.once('error', () => resolve(false));
    probe.listen(port, '127.0.0.1', () => probe.close(() => resolve(true)));
  });
}
