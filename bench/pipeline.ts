/**
 * End-to-end agent throughput and latency against the bare model, measured in the same run.
 *
 *   npm run bench:pipeline -- [--seconds=12] [--rounds=3] [--slots=1,4,16] [--modes=replicas,worker,main] [--tile=224]
 *   npm run bench:pipeline -- --soak [minutes, default 2]      memory flatness at the maximum rate
 *   npm run bench:pipeline -- --no-events                      every frame normal: the pipeline without
 *                                                              events, thumbnails and their outbox records
 *                                                              (no latency then: it is measured on events)
 *
 * The npm script starts node with the agent's V8 heap floor (agent/v8-heap.ts), as the systemd
 * unit does; `npx tsx bench/pipeline.ts` runs without it, which shows what the floor is worth.
 * After `npx tsc -p tsconfig.json`, `node --initial-old-space-size=96 dist/bench/pipeline.js`
 * runs it compiled, as the agent runs in production (the figures came out the same as through tsx).
 *
 * Setup: a PatchCore model with a 1 % coreset on the MobileNetV2 int8 backbone (fitted on
 * magnetic_tile by the test helper, cached), CPU provider. Frames: S magnetic_tile pictures of
 * 224×224 (`--tile=N`: N×N, so every slot crop is resized to the model's 224) in a grid on a white shelf; every other frame has a dark blotch on slot 0, and the
 * debounce raises/clears on every scan, so each frame makes one event (new with thumbnail + mask,
 * or end) besides the retained states — a busy but realistic load. The real Agent runs them:
 * replay source → drop-oldest queue → decode → crops → batches (batchSize = min(S, 8)) →
 * inference → debounce → events → outbox (fsync) → a real mosquitto (the embedded broker when
 * the `mosquitto` binary is missing) → a subscriber, in a process of its own as a consumer of
 * alerts would be (bench/event-subscriber.ts), so that its CPU is not counted as the agent's.
 *
 * Per slot count S:
 *   bare model     PatchcoreModel.run on a pre-filled batch of the same size, crops/s
 *   saturated      frames offered 25 % faster than the bare model could take them; crops/s
 *                  scanned; overhead = 1 − pipeline/bare (goal ≤ 15 % at 16 slots)
 *   latency        frame captured → its event received from the broker (the broker has
 *                  acknowledged the QoS 1 publish by then), p50/p95, at saturation and at half load
 *   CPU split      (replicas mode, Linux) CPU per crop of the replicas' threads, the main thread
 *                  and the rest, from /proc (bench/thread-cpu.ts); the pipeline's non-model CPU
 *                  over its model CPU in the same window is the overhead figure that the VM
 *                  changing speed between windows does not move
 */
import { fork, spawnSync } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';
import { Agent } from '../agent/agent.js';
import { configFromObject } from '../agent/config.js';
import { Logger } from '../agent/logger.js';
import { ReplicatedModel } from '../models/replicated-model.js';
import { PatchcoreModel } from '../models/runtime.js';
import { heapFloorMb } from '../agent/v8-heap.js';
import { fittedModel, magneticTileTrain } from '../test/helpers/fitted-model.js';
import { startMosquitto, type MosquittoBroker } from '../test/helpers/mosquitto.js';
import { tileFrame, unseenTiles } from '../test/helpers/shelf-frames.js';
import { splitCpu, threadSeconds, threadTicks, type CpuSplit, type ThreadTicks } from './thread-cpu.js';

// ---- arguments --------------------------------------------------------------------------------
const argv = process.argv.slice(2);
function arg(name: string): string | undefined {
  const i = argv.findIndex((a) => a === `--${name}` || a.startsWith(`--${name}=`));
  if (i < 0) return undefined;
  const a = argv[i]!;
  if (a.includes('=')) return a.slice(a.indexOf('=') + 1);
  const next = argv[i + 1];
  return next !== undefined && !next.startsWith('--') ? next : '';
}
const SECONDS = Number(arg('seconds') ?? 12);
const ROUNDS = Number(arg('rounds') ?? 3);
const SLOT_COUNTS = (arg('slots') ?? '1,4,16').split(',').map(Number);
const TILE = Number(arg('tile') ?? 224);
/** How the agent runs the model: one session in a worker thread (the default), on the main thread, or two single-threaded replicas. */
const MODE_SETTINGS = {
  replicas: { workerThread: true, replicas: 2, intraOpThreads: Math.max(1, Math.floor(cpus().length / 2)) },
  worker: { workerThread: true, replicas: 1 },
  main: { workerThread: false, replicas: 1 },
} as const;
type Mode = keyof typeof MODE_SETTINGS;
const MODES = (arg('modes') ?? 'replicas,worker,main').split(',') as Mode[];
if (MODES.some((m) => !(m in MODE_SETTINGS))) throw new Error(`--modes takes ${Object.keys(MODE_SETTINGS).join(', ')}, got ${MODES.join(',')}`);
const soakArg = arg('soak');
const SOAK_MINUTES = soakArg === undefined ? null : soakArg === '' ? 2 : Number(soakArg);
const NO_EVENTS = argv.includes('--no-events');
/** '.ts' when run through tsx, '.js' when run compiled (dist/bench/pipeline.js, as the agent runs in production). */
const SCRIPT_EXT = import.meta.url.endsWith('.ts') ? '.ts' : '.js';
for (const [name, v] of [['seconds', SECONDS], ['rounds', ROUNDS], ['soak', SOAK_MINUTES ?? 1], ['tile', TILE], ...SLOT_COUNTS.map((s) => ['slots', s] as const)] as const) {
  if (!(Number.isFinite(v) && v > 0)) throw new Error(`--${name} must be a positive number, got ${String(v)}`);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const pct = (sorted: number[], p: number) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]! : NaN);
const mb = (bytes: number) => (bytes / 1048576).toFixed(1);
/** Right-aligned columns, as wide as their widest cell. */
function printTable(header: string[], rows: string[][]): void {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  for (const cells of [header, ...rows]) console.log(cells.map((c, i) => c.padStart(widths[i]!)).join('  '));
}

// ---- shared setup -----------------------------------------------------------------------------
const work = await mkdtemp(join(tmpdir(), 'shelfwatch-bench-pipeline-'));
const floor = heapFloorMb();
console.log(`V8 old-generation floor: ${floor === null ? 'none (the agent is deployed with one: npm run bench:pipeline)' : `${floor} MB`}`);
console.log('fitting (or reusing) the 1 % coreset model …');
const modelPath = await fittedModel(await magneticTileTrain(40), { name: 'bench-1pct', coreset: 0.01 });
const hasMosquitto = spawnSync('mosquitto', ['-h'], { stdio: 'ignore' }).error === undefined;
const broker: MosquittoBroker | null = hasMosquitto ? await startMosquitto() : null;
console.log(`broker: ${broker ? `mosquitto on ${broker.url}` : 'embedded (aedes): the mosquitto binary was not found'}`);
const THRESHOLD = 4;

interface BareResult {
  cropsPerSec: number;
  /** Process CPU time (all threads) per crop, ms: less sensitive to other load on the machine. */
  cpuMsPerCrop: number;
  /** CPU ms per crop by thread group (bare replicas only; null off Linux). */
  split?: CpuSplit | null;
}

async function bareModel(batch: number, seconds: number): Promise<BareResult> {
  const model = await PatchcoreModel.load(modelPath, { provider: 'cpu' });
  try {
    const s = model.inputSize;
    const data = new Float32Array(batch * 3 * s * s);
    for (let i = 0; i < data.length; i++) data[i] = Math.sin(i) * 2;
    for (let i = 0; i < 3; i++) await model.run(data, batch);
    let crops = 0;
    const cpu0 = process.cpuUsage();
    const start = performance.now();
    while (performance.now() - start < seconds * 1000) {
      await model.run(data, batch);
      crops += batch;
    }
    const cpu = process.cpuUsage(cpu0);
    return { cropsPerSec: (crops / (performance.now() - start)) * 1000, cpuMsPerCrop: (cpu.user + cpu.system) / 1000 / crops };
  } finally {
    await model.release();
  }
}

/**
 * Two single-session replicas in worker threads, fed pre-filled batches two at a time, through
 * `scan` as the agent calls them; nothing is over the threshold, so no map comes back (the
 * cheapest call: the model's own cost plus the thread hop).
 */
async function bareReplicas(batch: number, seconds: number): Promise<BareResult> {
  const settings = MODE_SETTINGS.replicas;
  const model = await ReplicatedModel.load(modelPath, settings.replicas, { provider: 'cpu', intraOpThreads: settings.intraOpThreads, allowSpinning: false });
  try {
    const s = model.inputSize;
    const data = model.allocateBatch(batch * 3 * s * s);
    for (let i = 0; i < data.length; i++) data[i] = Math.sin(i) * 2;
    const never = Array.from({ length: batch }, () => ({ image: Infinity }));
    await Promise.all([model.scan(data, batch, never), model.scan(data, batch, never)]);
    let crops = 0;
    const cpu0 = process.cpuUsage();
    const ticks0 = threadTicks();
    const start = performance.now();
    const loop = async () => {
      while (performance.now() - start < seconds * 1000) {
        await model.scan(data, batch, never);
        crops += batch;
      }
    };
    await Promise.all(Array.from({ length: settings.replicas }, loop));
    const cpu = process.cpuUsage(cpu0);
    const ticks1 = threadTicks();
    const split = splitPerCrop(ticks0, ticks1, settings.replicas, crops);
    return { cropsPerSec: (crops / (performance.now() - start)) * 1000, cpuMsPerCrop: (cpu.user + cpu.system) / 1000 / crops, split };
  } finally {
    await model.release();
  }
}

interface Scenario {
  slots: number;
  dir: string;
}

async function scenario(slots: number): Promise<Scenario> {
  const dir = join(work, `frames-${slots}`);
  await mkdir(dir, { recursive: true });
  const tiles = await unseenTiles(slots);
  const columns = Math.ceil(Math.sqrt(slots));
  const normal = await tileFrame(tiles, { columns, tileSize: TILE });
  const anomalous = await tileFrame(tiles, { columns, tileSize: TILE, blotch: [0] });
  await writeFile(join(dir, 'frame000.jpg'), normal.jpeg);
  await writeFile(join(dir, 'frame001.jpg'), NO_EVENTS ? normal.jpeg : anomalous.jpeg);
  await writeFile(join(dir, 'boxes.json'), JSON.stringify(normal.boxes));
  return { slots, dir };
}

interface RunResult {
  cropsPerSec: number;
  cpuMsPerCrop: number;
  /** Fraction of the wall time the model was running (sum of inference calls ÷ elapsed). */
  modelShare: number;
  framesScanned: number;
  framesDropped: number;
  events: number;
  latencies: number[];
  rssSamples: Array<{ t: number; rss: number; heap: number; scanned: number; outbox: number }>;
  errors: string[];
  /** CPU ms per crop by thread group (replicas mode only; null off Linux). */
  split: CpuSplit | null;
}

/** CPU ms per crop by thread group between two /proc readings (null when either is missing). */
function splitPerCrop(before: ThreadTicks | null, after: ThreadTicks | null, modelThreads: number, crops: number): CpuSplit | null {
  if (!before || !after) return null;
  const split = splitCpu(threadSeconds(before, after), modelThreads);
  const ms = (s: number) => (s * 1000) / Math.max(1, crops);
  return { model: ms(split.model), main: ms(split.main), other: ms(split.other) };
}

async function runAgent(sc: Scenario, intervalMs: number, seconds: number, opts: { warmupSec?: number; sampleEverySec?: number; label: string; mode?: Mode }): Promise<RunResult> {
  const boxes = JSON.parse(await readFile(join(sc.dir, 'boxes.json'), 'utf8')) as Array<{ x: number; y: number; width: number; height: number }>;
  const stateDir = join(work, `state-${opts.label}`);
  await rm(stateDir, { recursive: true, force: true });
  const config = configFromObject(
    {
      agent: { id: 'bench', stateDir },
      mqtt: broker ? { url: broker.url, statsIntervalSeconds: 10 } : { embeddedPort: 0, statsIntervalSeconds: 10 },
      models: { tile: { path: modelPath, threshold: THRESHOLD } },
      inference: { provider: 'cpu', batchSize: Math.min(sc.slots, 8), batchWaitMs: 10, maxPendingFrames: 1, ...MODE_SETTINGS[opts.mode ?? 'replicas'] },
      debounce: { raiseAfter: 1, window: 1, clearAfter: 1 },
      metrics: { enabled: true, port: 0 },
      cameras: [
        {
          id: 'bench',
          source: { type: 'replay', dir: sc.dir, intervalMs, loop: true },
          slots: boxes.map((b, i) => ({ id: `S${i}`, box: [b.x, b.y, b.width, b.height], model: 'tile' })),
        },
      ],
    },
    { origin: '<bench>', env: {} },
  );
  const errors: string[] = [];
  const logger = new Logger({ level: 'error', sink: { write: (l: string) => errors.push(l) } });
  let inferenceMs = 0;
  let counting = false;
  const agent = new Agent(config, { logger, observer: { batch: (_m, _n, ms) => void (counting && (inferenceMs += ms)) } });
  await agent.start();
  // The consumer runs in a process of its own (bench/event-subscriber.ts): its CPU is not the agent's.
  const sub = fork(fileURLToPath(new URL(`./event-subscriber${SCRIPT_EXT}`, import.meta.url)), [agent.brokerUrl, agent.topics.events, `bench-sub-${process.pid}-${opts.label}`], {
    execArgv: SCRIPT_EXT === '.ts' ? ['--import', 'tsx'] : [],
  });
  const fromSub = <T>(type: string) => new Promise<T>((ok, fail) => {
    const onMessage = (m: { type: string }) => {
      if (m.type !== type) return;
      sub.off('exit', onExit);
      sub.off('message', onMessage);
      ok(m as T);
    };
    const onExit = (code: number | null) => fail(new Error(`the event subscriber exited (${code}) before sending '${type}'`));
    sub.on('message', onMessage);
    sub.once('exit', onExit);
  });
  await fromSub('ready');

  await sleep((opts.warmupSec ?? 3) * 1000);
  const stats = () => agent.pipelineStats().cameras.bench!;
  const before = stats();
  const rssSamples: RunResult['rssSamples'] = [];
  const cpu0 = process.cpuUsage();
  const ticks0 = threadTicks();
  const start = performance.now();
  const fromMs = Date.now();
  counting = true;
  const sample = () => {
    const m = process.memoryUsage();
    rssSamples.push({ t: (performance.now() - start) / 1000, rss: m.rss, heap: m.heapUsed, scanned: stats().framesScanned, outbox: agent.mqtt!.outbox.depth().records });
  };
  sample();
  while (performance.now() - start < seconds * 1000) {
    await sleep(Math.min(1000 * (opts.sampleEverySec ?? seconds), seconds * 1000 - (performance.now() - start)));
    if (opts.sampleEverySec) {
      sample();
      const s = rssSamples.at(-1)!;
      console.log(`  t=${s.t.toFixed(0).padStart(4)} s  rss ${mb(s.rss).padStart(7)} MB  heap ${mb(s.heap).padStart(6)} MB  frames ${s.scanned}  outbox ${s.outbox}`);
    }
  }
  const elapsed = performance.now() - start;
  const cpu = process.cpuUsage(cpu0);
  const ticks1 = threadTicks();
  const toMs = Date.now();
  const after = stats();
  const framesScanned = after.framesScanned - before.framesScanned;
  const replicas = (opts.mode ?? 'replicas') === 'replicas' ? MODE_SETTINGS.replicas.replicas : 0;
  const split = replicas ? splitPerCrop(ticks0, ticks1, replicas, framesScanned * sc.slots) : null;
  const reported = fromSub<{ latencies: number[] }>('latencies');
  sub.send({ type: 'report', from: fromMs, to: toMs });
  const { latencies } = await reported;
  await agent.stop();
  const exited = new Promise((ok) => sub.once('exit', ok));
  sub.send({ type: 'stop' });
  await exited;
  return {
    cropsPerSec: ((framesScanned * sc.slots) / elapsed) * 1000,
    cpuMsPerCrop: (cpu.user + cpu.system) / 1000 / Math.max(1, framesScanned * sc.slots),
    modelShare: inferenceMs / elapsed,
    framesScanned,
    framesDropped: after.framesDropped - before.framesDropped,
    events: latencies.length,
    latencies: latencies.sort((a, b) => a - b),
    rssSamples,
    errors,
    split,
  };
}

// ---- soak -------------------------------------------------------------------------------------
if (SOAK_MINUTES !== null) {
  const slots = 16;
  const sc = await scenario(slots);
  const bare = (await bareModel(Math.min(slots, 8), 5)).cropsPerSec;
  const intervalMs = Math.max(1, Math.floor(((0.8 * slots) / bare) * 1000));
  console.log(`soak: ${slots} slots, a frame every ${intervalMs} ms (bare model ${bare.toFixed(1)} crops/s), ${SOAK_MINUTES} min after a 20 s warm-up; RSS every 10 s`);
  const r = await runAgent(sc, intervalMs, SOAK_MINUTES * 60, { warmupSec: 20, sampleEverySec: 10, label: 'soak' });
  const first = r.rssSamples[0]!;
  const last = r.rssSamples.at(-1)!;
  const peak = Math.max(...r.rssSamples.map((s) => s.rss));
  const growth = last.rss - first.rss;
  const perTen = (growth / (last.t - first.t)) * 600;
  console.log(`\nRSS ${mb(first.rss)} MB → ${mb(last.rss)} MB (peak ${mb(peak)} MB): growth ${mb(growth)} MB over ${(last.t / 60).toFixed(1)} min, ${mb(perTen)} MB per 10 min at this rate (goal < 50 MB / 10 min)`);
  console.log(`frames scanned ${r.framesScanned}, dropped ${r.framesDropped}, events ${r.events}, errors logged ${r.errors.length}`);
  if (r.errors.length) console.log(r.errors.slice(0, 5).join(''));
} else {
  // ---- throughput and latency ---------------------------------------------------------------
  // Bare and pipeline runs alternate (ROUNDS times) and each figure is the median, so that other
  // load on the machine hits both sides alike; CPU time per crop is reported beside wall time.
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  const rows: string[][] = [];
  const splitRows: string[][] = [];
  const modes = MODES;
  for (const slots of SLOT_COUNTS) {
    const sc = await scenario(slots);
    const batch = Math.min(slots, 8);
    const bares: BareResult[] = [];
    const bareReps: BareResult[] = [];
    const sats = new Map<string, RunResult[]>(modes.map((m) => [m, []]));
    for (let round = 0; round < ROUNDS; round++) {
      bares.push(await bareModel(batch, Math.min(SECONDS, 8)));
      if (modes.includes('replicas')) bareReps.push(await bareReplicas(batch, Math.min(SECONDS, 8)));
      const fastest = Math.max(bares.at(-1)!.cropsPerSec, bareReps.at(-1)?.cropsPerSec ?? 0);
      const frameMs = (slots / fastest) * 1000;
      for (const mode of modes) {
        sats.get(mode)!.push(await runAgent(sc, Math.max(1, Math.floor(frameMs * 0.8)), SECONDS, { label: `sat-${slots}-${mode}-${round}`, mode }));
      }
    }
    const bare = median(bares.map((b) => b.cropsPerSec));
    const bareCpu = median(bares.map((b) => b.cpuMsPerCrop));
    const bareRep = bareReps.length ? median(bareReps.map((b) => b.cropsPerSec)) : NaN;
    for (const mode of modes) {
      const runs = sats.get(mode)!;
      const pipe = median(runs.map((r) => r.cropsPerSec));
      // Paired: each round's pipeline against the bare runs just before it, so that the machine
      // getting faster or slower between rounds (a shared VM) cancels out; median over rounds.
      const paired = runs.map((r, i) => 1 - r.cropsPerSec / Math.max(bares[i]!.cropsPerSec, bareReps[i]?.cropsPerSec ?? 0));
      const pairedText = `${(median(paired) * 100).toFixed(1)} % (${(Math.min(...paired) * 100).toFixed(1)} … ${(Math.max(...paired) * 100).toFixed(1)})`;
      const pipeCpu = median(runs.map((r) => r.cpuMsPerCrop));
      const share = median(runs.map((r) => r.modelShare));
      const half = await runAgent(sc, Math.max(1, Math.round((slots / bare) * 2000)), Math.min(SECONDS, 10), { label: `half-${slots}-${mode}`, mode });
      const latencies = runs.flatMap((r) => r.latencies).sort((a, b) => a - b);
      rows.push([
        String(slots),
        mode === 'worker' ? 'worker thread' : mode === 'main' ? 'main thread' : `${MODE_SETTINGS.replicas.replicas} replicas × ${MODE_SETTINGS.replicas.intraOpThreads} thr`,
        String(batch),
        bare.toFixed(1),
        pipe.toFixed(1),
        `${((1 - pipe / bare) * 100).toFixed(1)} %`,
        pairedText,
        mode === 'replicas' ? `${bareRep.toFixed(1)} → ${((1 - pipe / bareRep) * 100).toFixed(1)} %` : '',
        `${bareCpu.toFixed(1)} / ${pipeCpu.toFixed(1)}`,
        `${((pipeCpu / bareCpu - 1) * 100).toFixed(1)} %`,
        `${(share * 100).toFixed(1)} %`,
        (pipe / slots).toFixed(2),
        `${runs.reduce((n, r) => n + r.framesDropped, 0)}`,
        `${pct(latencies, 0.5)} / ${pct(latencies, 0.95)}`,
        `${pct(half.latencies, 0.5)} / ${pct(half.latencies, 0.95)}`,
      ]);
      const bareSplits = bareReps.flatMap((b) => (b.split ? [b.split] : []));
      const pipeSplits = runs.flatMap((r) => (r.split ? [r.split] : []));
      if (mode === 'replicas' && bareSplits.length && pipeSplits.length) {
        const m = (xs: CpuSplit[], k: keyof CpuSplit) => median(xs.map((x) => x[k]));
        const bareModelMs = m(bareSplits, 'model');
        const [pm, pmain, pother] = [m(pipeSplits, 'model'), m(pipeSplits, 'main'), m(pipeSplits, 'other')];
        // Same window: the pipeline's non-model CPU against its own model threads (drift-free).
        const sameWindow = pipeSplits.map((x) => (x.main + x.other) / x.model);
        splitRows.push([
          String(slots),
          `${bareModelMs.toFixed(2)} / ${(m(bareSplits, 'main') + m(bareSplits, 'other')).toFixed(2)}`,
          `${pm.toFixed(2)} / ${pmain.toFixed(2)} / ${pother.toFixed(2)}`,
          `${(median(sameWindow) * 100).toFixed(1)} % (${(Math.min(...sameWindow) * 100).toFixed(1)} … ${(Math.max(...sameWindow) * 100).toFixed(1)})`,
          `${((pm / bareModelMs - 1) * 100).toFixed(1)} %`,
          `${(((pm + pmain + pother) / bareModelMs - 1) * 100).toFixed(1)} %`,
        ]);
      }
      for (const e of [...runs.flatMap((r) => r.errors), ...half.errors].slice(0, 3)) console.log(`  agent error: ${e.trim()}`);
      console.log(`  ${slots} slot(s), ${mode}: bare ${bares.map((b) => b.cropsPerSec.toFixed(1)).join(', ')} crops/s; pipeline ${runs.map((r) => r.cropsPerSec.toFixed(1)).join(', ')} crops/s`);
    }
  }
  const header = ['slots', 'inference', 'batch', 'bare crops/s', 'pipeline crops/s', 'wall overhead', 'paired overhead (range)', 'bare replicas crops/s → overhead', 'CPU ms/crop bare / pipeline', 'CPU overhead', 'model busy', 'frames/s', 'dropped', 'latency p50/p95 ms (saturated)', 'latency p50/p95 ms (half load)'];
  console.log(`\nCPU (${cpus().length} cores), MobileNetV2 int8, 1 % coreset; medians of ${ROUNDS} alternating rounds of ${SECONDS} s; ${broker ? 'mosquitto' : 'embedded broker'}; outbox with fsync; V8 old-generation floor ${floor === null ? 'none' : `${floor} MB`}; slot boxes ${TILE}×${TILE}${TILE === 224 ? ' (the model size: no resize)' : ', resized to 224×224'}${NO_EVENTS ? '; no events (--no-events: every frame normal)' : ''}`);
  printTable(header, rows);
  console.log('wall overhead = 1 − pipeline crops/s ÷ bare-model crops/s at the same batch size (goal ≤ 15 % at 16 slots);');
  console.log('paired overhead = per round, 1 − pipeline crops/s ÷ the faster of that round\'s bare single session and bare replicas;');
  console.log('  median over rounds (min … max): the figure least moved by the machine changing speed between rounds;');
  console.log('CPU overhead = process CPU time per crop, pipeline ÷ bare − 1;');
  console.log('model busy = share of the saturated run a batch was in the model (main thread: onnxruntime-node blocks the JS thread for');
  console.log('  the whole call; worker thread: the event loop goes on meanwhile); latency = frame capture → its event received from the broker;');
  console.log('inference = how the agent runs the model: replicas (the default on a CPU-only box: inference.replicas auto = 2 sessions');
  console.log('  with half the cores each, in worker threads), one session in a worker thread, or one on the main thread;');
  console.log('bare = one onnxruntime session at the batch size (the model benchmark\'s figure); bare replicas = the same replicas as');
  console.log('  the agent, fed pre-filled batches directly (its overhead column compares the pipeline with that)');
  if (splitRows.length) {
    const splitHeader = ['slots', 'bare replicas: model / rest', 'pipeline: model / main / rest', '(main + rest) ÷ model, same window (range)', 'model threads vs bare', 'total vs bare model'];
    console.log('\nwhere the CPU goes, ms per crop (medians over rounds; per-thread accounting from /proc, replicas mode):');
    printTable(splitHeader, splitRows);
    console.log('model = the replicas\' threads (the busiest threads besides the main one: onnxruntime plus the worker\'s own JS);');
    console.log('main = the agent\'s event loop (decode calls, crops, batching, events, MQTT); rest = libvips, libuv\'s pool, V8 helpers;');
    console.log('(main + rest) ÷ model = the CPU the pipeline adds per unit of model CPU, both measured in the same window, so the');
    console.log('  machine changing speed between windows cancels out; model threads vs bare = the model\'s own CPU per crop beside the');
    console.log('  pipeline against the bare replicas (separate windows: cache and preemption effects, but also the machine\'s drift);');
    console.log('  total = all CPU per crop ÷ the bare replicas\' model CPU − 1');
  }
}

await broker?.dispose();
await rm(work, { recursive: true, force: true });
