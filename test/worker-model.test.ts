import test, { type ExecutionContext } from 'ava';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';
import { PatchcoreModel } from '../models/runtime.js';
import { decodeModel, encodeModel } from '../models/onnx/proto.js';
import { OUTPUT_PATCH_DISTANCES } from '../models/patchcore-graph.js';
import { WorkerPatchcoreModel } from '../models/worker-model.js';
import { ReplicatedModel } from '../models/replicated-model.js';
import { loadInferenceModel } from '../models/load-model.js';
import { resolveParallelism } from '../agent/inference-parallelism.js';
import { sharedAvailable, tileModelAndBatch } from './helpers/fitted-model.js';

const available = sharedAvailable();
const maybe = available ? test : test.skip;

maybe('a worker model predicts exactly what the in-thread model does, from a shared batch buffer', async (t) => {
  const { path, batch } = await tileModelAndBatch();
  const local = await PatchcoreModel.load(path, { provider: 'cpu' });
  const remote = await WorkerPatchcoreModel.load(path, { provider: 'cpu' });
  try {
    t.is(remote.digest, local.digest);
    t.deepEqual(remote.manifest, local.manifest);
    t.is(remote.provider, 'cpu');
    const shared = remote.allocateBatch(batch.data.length);
    t.true(shared.buffer instanceof SharedArrayBuffer);
    shared.set(batch.data);
    const thresholds = [{ image: 0 }, {}, { image: 1e9, pixel: 0 }, {}];
    const want = await local.predict(batch.data, batch.count, thresholds);
    const got = await remote.predict(shared, batch.count, thresholds);
    t.is(got.length, batch.count);
    for (let i = 0; i < batch.count; i++) {
      t.is(got[i]!.score, want[i]!.score);
      t.is(got[i]!.isAnomalous, want[i]!.isAnomalous);
      t.is(got[i]!.threshold, want[i]!.threshold);
      t.is(got[i]!.modelDigest, local.digest);
      t.deepEqual(got[i]!.anomalyMap, want[i]!.anomalyMap);
      t.deepEqual(got[i]!.mask, want[i]!.mask);
    }
    // A plain (non-shared) buffer works too, and concurrent calls each get their own answer.
    const [a, b] = await Promise.all([remote.predict(batch.data, 1), remote.predict(batch.data.subarray(3 * 224 * 224), 1)]);
    t.is(a[0]!.score, want[0]!.score);
    t.is(b[0]!.score, want[1]!.score);
  } finally {
    await local.release();
    await remote.release();
  }
  await t.throwsAsync(remote.predict(batch.data, 1), { message: /released/ });
});

/**
 * scan builds maps from patch distances on the CPU (float64), predict takes the graph's (float32
 * MatMuls): equal to float rounding, and masks equal except for pixels that close to the threshold.
 */
function sameMap(t: ExecutionContext, got: Float32Array, want: Float32Array, gotMask: Uint8Array, wantMask: Uint8Array, pixelThreshold: number): void {
  t.is(got.length, want.length);
  const peak = want.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
  let worst = 0;
  let maskDiff = 0;
  for (let j = 0; j < want.length; j++) {
    worst = Math.max(worst, Math.abs(got[j]! - want[j]!));
    if (gotMask[j] !== wantMask[j] && Math.abs(want[j]! - pixelThreshold) > 1e-5 * peak) maskDiff++;
  }
  t.true(worst <= 1e-5 * peak, `map max abs diff ${worst} (peak ${peak})`);
  t.is(maskDiff, 0, 'masks differ away from the threshold');
}

maybe('scan: only anomalous images get a map and mask (predict\'s, in one buffer per batch): in-thread, worker, replicas', async (t) => {
  const { path, batch } = await tileModelAndBatch();
  const local = await PatchcoreModel.load(path, { provider: 'cpu' });
  const remote = await WorkerPatchcoreModel.load(path, { provider: 'cpu' });
  const replicated = await ReplicatedModel.load(path, 2, { provider: 'cpu', intraOpThreads: 1 });
  const plane = 224 * 224;
  try {
    // Images 0 and 3 over their threshold, 1 and 2 under it.
    const thresholds = [{ image: 0 }, { image: 1e9 }, { image: 1e9, pixel: 0 }, { image: 0, pixel: 0 }];
    const want = await local.predict(batch.data, batch.count, thresholds);
    for (const m of [local, remote, replicated]) {
      const got = await m.scan(batch.data, batch.count, thresholds);
      t.deepEqual(got.map((p) => p.isAnomalous), [true, false, false, true]);
      for (let i = 0; i < batch.count; i++) {
        const { anomalyMap, mask, ...rest } = got[i]!;
        const { anomalyMap: wantMap, mask: wantMask, ...wantRest } = want[i]!;
        t.deepEqual(rest, wantRest);
        if (got[i]!.isAnomalous) {
          sameMap(t, anomalyMap!, wantMap, mask!, wantMask, thresholds[i]!.pixel ?? local.manifest.thresholds.pixel);
          // The two anomalous maps share one buffer of their own, not the whole batch's output.
          t.is(anomalyMap!.buffer.byteLength, 2 * plane * 4);
          t.is(mask!.buffer.byteLength, 2 * plane);
        } else {
          t.is(anomalyMap, null);
          t.is(mask, null);
        }
      }
      t.true(want[3]!.mask.every((v) => v === 1), 'pixel threshold 0 masks every pixel');
      const quiet = await m.scan(batch.data, batch.count, thresholds.map(() => ({ image: 1e9 })));
      t.true(quiet.every((p) => p.anomalyMap === null && p.mask === null && !p.isAnomalous));
    }
  } finally {
    await Promise.all([local.release(), remote.release(), replicated.release()]);
  }
});

maybe('scan on a model file without patch_distances takes the graph\'s maps (older model files)', async (t) => {
  const { path, batch } = await tileModelAndBatch();
  const model = decodeModel(await readFile(path), path);
  const graph = model.graph!;
  graph.output = graph.output!.filter((o) => o.name !== OUTPUT_PATCH_DISTANCES);
  graph.node = graph.node!.filter((n) => !n.output!.includes(OUTPUT_PATCH_DISTANCES));
  const old = await PatchcoreModel.load(encodeModel(model), { provider: 'cpu' }, 'old.onnx');
  try {
    const thresholds = [{ image: 0 }, { image: 1e9 }, { image: 0 }, { image: 1e9 }];
    const want = await old.predict(batch.data, batch.count, thresholds);
    const got = await old.scan(batch.data, batch.count, thresholds);
    t.deepEqual(got.map((p) => p.isAnomalous), [true, false, true, false]);
    for (const i of [0, 2]) {
      t.deepEqual(got[i]!.anomalyMap, want[i]!.anomalyMap);
      t.deepEqual(got[i]!.mask, want[i]!.mask);
    }
  } finally {
    await old.release();
  }
});

maybe('a worker model refuses bad files with the in-thread loader\'s errors', async (t) => {
  const { path } = await tileModelAndBatch();
  await t.throwsAsync(WorkerPatchcoreModel.load('/nonexistent/model.onnx'), { message: /model \/nonexistent\/model\.onnx: cannot read \(ENOENT\)/ });
  const bytes = await readFile(path);
  await t.throwsAsync(WorkerPatchcoreModel.load(bytes.subarray(0, bytes.length >> 1), {}, 'half.onnx'), { name: 'ModelLoadError', message: /half\.onnx/ });
  await t.throwsAsync(WorkerPatchcoreModel.load(path, { expectBackboneSha256: 'f'.repeat(64) }), { message: /built on backbone mobilenetv2-12-int8/ });
  const m = await WorkerPatchcoreModel.load(path, { provider: 'cpu' });
  await t.throwsAsync(m.predict(new Float32Array(10), 1), { instanceOf: RangeError, message: /batch of 1 needs 150528 values, got 10/ });
  await m.release();
});

maybe('a worker that dies fails its batch with a clear error and is started again for the next one', async (t) => {
  const { path, batch } = await tileModelAndBatch();
  const m = await WorkerPatchcoreModel.load(path, { provider: 'cpu' });
  try {
    const before = await m.predict(batch.data, 1);
    // The thread goes away (process.exit inside it, between runs, as after a native crash) with a
    // batch sent to it. Not worker.terminate(): terminating a worker inside session.run aborts the
    // whole process, which is why the model itself never does.
    const worker = (m as unknown as { worker: { postMessage(m: unknown): void; once(e: 'exit', f: (code: number) => void): void } }).worker;
    const exited = new Promise<number>((done) => worker.once('exit', done));
    worker.postMessage({ type: 'exit', code: 1 });
    const pending = m.predict(batch.data, batch.count);
    t.is(await exited, 1);
    await t.throwsAsync(pending, { message: /inference worker stopped \(exit code 1\).*starts again with the next batch/ });
    const after = await m.predict(batch.data, 1);
    t.is(after[0]!.score, before[0]!.score);
    t.is(m.restarts, 1);
  } finally {
    await m.release();
  }
});

maybe('compiled build: the worker model runs as plain JS under node (no tsx)', async (t) => {
  // Transpile models/ as tsc would emit it and run a worker model in a child without tsx: the
  // worker must find model-worker.js next to worker-model.js, as in dist/.
  const { path, batch } = await tileModelAndBatch();
  const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..');
  const out = mkdtempSync(join(tmpdir(), 'worker-model-compiled-'));
  try {
    writeFileSync(join(out, 'package.json'), '{"type":"module"}');
    symlinkSync(join(repoRoot, 'node_modules'), join(out, 'node_modules'));
    const walk = (dir: string): string[] => readdirSync(dir).flatMap((n) => (statSync(join(dir, n)).isDirectory() ? walk(join(dir, n)) : [join(dir, n)]));
    for (const file of walk(join(repoRoot, 'models')).filter((f) => f.endsWith('.ts'))) {
      const target = join(out, relative(repoRoot, file)).replace(/\.ts$/, '.js');
      mkdirSync(dirname(target), { recursive: true });
      const js = ts.transpileModule(readFileSync(file, 'utf8'), { compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022 } }).outputText;
      writeFileSync(target, js);
    }
    writeFileSync(join(out, 'batch.bin'), Buffer.from(batch.data.buffer, batch.data.byteOffset, 3 * 224 * 224 * 4));
    writeFileSync(
      join(out, 'run.mjs'),
      `import { readFileSync } from 'node:fs';
import { WorkerPatchcoreModel } from './models/worker-model.js';
const b = readFileSync(new URL('./batch.bin', import.meta.url));
const m = await WorkerPatchcoreModel.load(${JSON.stringify(path)}, { provider: 'cpu' });
const x = m.allocateBatch(b.length / 4);
x.set(new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength)));
const [p] = await m.predict(x, 1);
await m.release();
console.log(JSON.stringify({ score: p.score }));
`,
    );
    const child = spawnSync(process.execPath, [join(out, 'run.mjs')], { encoding: 'utf8', timeout: 120_000 });
    t.is(child.status, 0, child.stderr);
    const local = await PatchcoreModel.load(path, { provider: 'cpu' });
    const [want] = await local.predict(batch.data, 1);
    await local.release();
    t.is((JSON.parse(child.stdout) as { score: number }).score, want!.score);
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
});

maybe('release while batches are in flight: they finish first, nothing is left hanging', async (t) => {
  const { path, batch } = await tileModelAndBatch();
  const m = await WorkerPatchcoreModel.load(path, { provider: 'cpu' });
  const pending = [m.predict(batch.data, batch.count), m.predict(batch.data, 1)];
  await m.release();
  const [a, b] = await Promise.all(pending);
  t.is(a!.length, batch.count);
  t.is(b!.length, 1);
  t.is(b![0]!.score, a![0]!.score);
});

maybe('replicas: two worker sessions serve as one model, batches spread over both, same predictions', async (t) => {
  const { path, batch } = await tileModelAndBatch();
  const local = await PatchcoreModel.load(path, { provider: 'cpu' });
  const replicated = await ReplicatedModel.load(path, 2, { provider: 'cpu', intraOpThreads: 1 });
  try {
    t.is(replicated.concurrency, 2);
    t.is(replicated.digest, local.digest);
    const want = await local.predict(batch.data, batch.count);
    const shared = replicated.allocateBatch(batch.data.length);
    shared.set(batch.data);
    const runs = await Promise.all([0, 1, 2, 3].map(() => replicated.predict(shared, batch.count)));
    for (const got of runs) t.deepEqual(got.map((p) => p.score), want.map((p) => p.score));
    t.is(replicated.restarts, 0);
  } finally {
    await local.release();
    await replicated.release();
  }
  await t.throwsAsync(ReplicatedModel.load(path, 1), { message: /replicas must be an integer ≥ 2, got 1/ });
  await t.throwsAsync(ReplicatedModel.load('/nonexistent.onnx', 2), { message: /cannot read \(ENOENT\)/ });
});

maybe('loadInferenceModel: replicas need worker threads', async (t) => {
  const { path } = await tileModelAndBatch();
  await t.throwsAsync(loadInferenceModel(path, { workerThread: false, replicas: 2 }, 'm.onnx'), { message: /m\.onnx: 2 replicas need workerThread/ });
  const m = await loadInferenceModel(path, { provider: 'cpu', replicas: 2, intraOpThreads: 1 });
  t.true(m instanceof ReplicatedModel);
  await m.release();
});

test('resolveParallelism: auto gives a CPU-only box two replicas with half the cores each, a GPU box one session', (t) => {
  const base = { provider: 'auto' as const, replicas: 'auto' as const, intraOpThreads: 0, workerThread: true };
  t.deepEqual(resolveParallelism(base, { cores: 2, gpu: false }), { replicas: 2, intraOpThreads: 1 });
  t.deepEqual(resolveParallelism(base, { cores: 8, gpu: false }), { replicas: 2, intraOpThreads: 4 });
  t.deepEqual(resolveParallelism(base, { cores: 8, gpu: true }), { replicas: 1, intraOpThreads: 0 });
  t.deepEqual(resolveParallelism({ ...base, provider: 'cpu' }, { cores: 8, gpu: true }), { replicas: 2, intraOpThreads: 4 });
  t.deepEqual(resolveParallelism(base, { cores: 1, gpu: false }), { replicas: 1, intraOpThreads: 0 });
  t.deepEqual(resolveParallelism({ ...base, workerThread: false }, { cores: 4, gpu: false }), { replicas: 1, intraOpThreads: 0 });
  t.deepEqual(resolveParallelism({ ...base, replicas: 3, intraOpThreads: 2 }, { cores: 4, gpu: true }), { replicas: 3, intraOpThreads: 2 });
  t.deepEqual(resolveParallelism({ ...base, replicas: 4 }, { cores: 6, gpu: false }), { replicas: 4, intraOpThreads: 1 });
});
