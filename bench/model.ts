/**
 * `npm run bench:model` — throughput of the compiled PatchCore model on this machine.
 *
 * For banks of 1 % of 200 and of 800 images (MobileNetV2 taps, 128-d patches), at batch 1 and
 * 8, on already-decoded 224×224 input: images/s and the time split backbone+aggregation vs
 * search+score+map; plus decode+preprocess of a 900×900 PNG. Printed beside the figures of an
 * independent PyTorch implementation on a 2-core machine (2 ms backbone + 5 ms the rest per
 * image, 18 ms decode) and the bare backbone classifier measured in this same run.
 */
import { readFileSync } from 'node:fs';
import ort from 'onnxruntime-node';
import sharp from 'sharp';
import { MOBILENETV2_INT8 } from '../models/backbone.js';
import { createSession } from '../models/execution-provider.js';
import { GraphBuilder, valueInfo } from '../models/onnx/builder.js';
import { DataType, encodeModel, type ModelProto } from '../models/onnx/proto.js';
import { buildModelGraph } from '../models/patchcore-graph.js';
import { preprocessImage } from '../models/preprocess.js';
import { Random } from '../models/random.js';
import { FeatureExtractor } from '../models/runtime.js';
import { preprocessedBatches } from '../pipelines/image-files.js';
import { BACKBONE_PATH, magneticTileTrain, sharedAvailable, testBackbone } from '../test/helpers/fitted-model.js';

const REFERENCE = { backboneMs: 2, restMs: 5, decodeMs: 18 };
const quick = process.argv.includes('--quick');

async function timeIt(fn: () => Promise<unknown>, minMs = quick ? 500 : 2500, minRuns = 5): Promise<number> {
  await fn(); // warm-up
  const times: number[] = [];
  const start = performance.now();
  while (times.length < minRuns || performance.now() - start < minMs) {
    const t = performance.now();
    await fn();
    times.push(performance.now() - t);
  }
  times.sort((a, b) => a - b);
  return times[Math.floor(times.length / 2)]!; // median
}

/**
 * One [batch, rows, inner] · [inner, cols] MatMul on its own, with `reduce` followed by a ReduceMin
 * over cols: the compiled model's nearest-neighbour search alone ([N, P, D + 1] · [D + 1, M]), or
 * without it a square GEMM for this machine's best fp32 rate. Returns ms per call (median).
 */
async function matmulMs(rows: number, inner: number, cols: number, batch: number, reduce: boolean): Promise<number> {
  const graph: NonNullable<ModelProto['graph']> = { name: 'gemm', node: [], initializer: [], input: [valueInfo('x', DataType.FLOAT, [batch, rows, inner])], output: [] };
  const b = new GraphBuilder(graph);
  const w = new Float32Array(inner * cols);
  for (let i = 0; i < w.length; i++) w[i] = Math.sin(i);
  let y = b.op1('MatMul', ['x', b.float('w', [inner, cols], w)]);
  if (reduce) y = b.op1('ReduceMin', [y], { axes: [2], keepdims: 1 });
  b.output(y, DataType.FLOAT, reduce ? [batch, rows, 1] : [batch, rows, cols]);
  const model: ModelProto = { irVersion: 8, opsetImport: [{ domain: '', version: 13 }], producerName: 'bench', graph };
  const { session } = await createSession(encodeModel(model), { provider: 'cpu' });
  const x = new Float32Array(batch * rows * inner);
  for (let i = 0; i < x.length; i++) x[i] = Math.cos(i);
  const feed = { x: new ort.Tensor('float32', x, [batch, rows, inner]) };
  try {
    return await timeIt(() => session.run(feed));
  } finally {
    await session.release();
  }
}

async function main() {
  if (!sharedAvailable()) throw new Error('this benchmark needs ../shared (backbone and magnetic_tile images)');
  const backbone = await testBackbone();
  const files = await magneticTileTrain(64);
  const batches = [];
  for await (const b of preprocessedBatches(files, { size: 224, normalization: MOBILENETV2_INT8.normalization, batchSize: 8 })) batches.push(b);
  const input8 = batches[0]!.data;
  const input1 = input8.subarray(0, 150528);

  // Real patch embeddings to draw memory banks from.
  const fx = await FeatureExtractor.create(backbone, { provider: 'cpu' });
  const pool: Float32Array[] = [];
  for (const b of batches) pool.push((await fx.embed(b.data, b.count)).slice());
  const all = new Float32Array(pool.reduce((a, p) => a + p.length, 0));
  let o = 0;
  for (const p of pool) { all.set(p, o); o += p.length; }
  const nAll = all.length / 128;

  const { session: bare } = await createSession(readFileSync(BACKBONE_PATH), { provider: 'cpu' });
  console.log(`onnxruntime-node ${ort.env.versions?.node ?? ''} on CPU, ${(await import('node:os')).cpus().length} cores\n`);

  const rows: string[] = [];
  /** The 200-image bank at batch 8: its entries and backbone + aggregation ms/image, for the floor line. */
  const floorCase = { entries: 0, featMs: NaN };
  const header = '| bank | batch | images/s | ms/image | backbone+agg ms/img | search+score+map ms/img | reference ms/img | speed-up vs reference |';
  rows.push(header, '|---|---|---|---|---|---|---|---|');
  for (const trainImages of [200, 800]) {
    const entries = Math.trunc(trainImages * 784 * 0.01);
    const rng = new Random(trainImages);
    const bank = new Float32Array(entries * 128);
    for (let i = 0; i < entries; i++) {
      const j = rng.nextInt(nAll);
      bank.set(all.subarray(j * 128, (j + 1) * 128), i * 128);
    }
    const { session } = await createSession(encodeModel(buildModelGraph(backbone.model, MOBILENETV2_INT8, { bank, entries })), { provider: 'cpu' });
    for (const batch of [1, 8]) {
      const x = batch === 1 ? input1 : input8;
      const feed = { input: new ort.Tensor('float32', x, [batch, 3, 224, 224]) };
      const full = (await timeIt(() => session.run(feed))) / batch;
      const feat = (await timeIt(() => fx.embed(x, batch))) / batch;
      if (trainImages === 200 && batch === 8) Object.assign(floorCase, { entries, featMs: feat });
      const ref = REFERENCE.backboneMs + REFERENCE.restMs;
      rows.push(`| 1 % of ${trainImages} images (${entries}) | ${batch} | ${(1000 / full).toFixed(0)} | ${full.toFixed(2)} | ${feat.toFixed(2)} | ${(full - feat).toFixed(2)} | ${ref} | ${(ref / full).toFixed(2)}× |`);
    }
    await session.release();
  }
  const bare8 = (await timeIt(() => bare.run({ input: new ort.Tensor('float32', input8, [8, 3, 224, 224]) }))) / 8;
  console.log(rows.join('\n'));
  console.log(`\nbaseline, same run: bare MobileNetV2 classifier at batch 8: ${bare8.toFixed(2)} ms/image (${(1000 / bare8).toFixed(0)} images/s)`);

  // What this machine allows at batch 8 for the 200-image bank, with exact arithmetic: the
  // backbone taps + aggregation (the feature graph) and the search's MatMul + ReduceMin, each alone.
  const { entries: entries200, featMs } = floorCase;
  const patches = 784;
  const searchMs = (await matmulMs(patches, 129, entries200, 8, true)) / 8;
  const searchGflops = (2 * patches * 129 * entries200) / (searchMs * 1e6);
  const squareMs = await matmulMs(1024, 1024, 1024, 1, false);
  const peakGflops = (2 * 1024 ** 3) / (squareMs * 1e6);
  const floorMs = featMs + searchMs;
  console.log(`floor, same run, batch 8, 200-image bank (${entries200} entries): backbone taps + aggregation ${featMs.toFixed(2)} ms/image (the table's)`);
  console.log(`  + nearest-neighbour MatMul + ReduceMin alone ${searchMs.toFixed(2)} ms/image (${searchGflops.toFixed(0)} GFLOP/s; this machine's`);
  console.log(`  best fp32 GEMM, 1024³: ${peakGflops.toFixed(0)} GFLOP/s) = ${floorMs.toFixed(2)} ms/image: at most ${(1000 / floorMs).toFixed(0)} images/s before score and map`);

  // Decode + preprocess of a 900×900 PNG (the reference spends 18 ms).
  const png = await sharp(readFileSync(files[0]!)).resize(900, 900, { fit: 'fill' }).png().toBuffer();
  const pre = await timeIt(() => preprocessImage(png, { origin: 'bench.png', size: 224, normalization: MOBILENETV2_INT8.normalization }));
  console.log(`decode + preprocess 900×900 PNG: ${pre.toFixed(1)} ms (reference ${REFERENCE.decodeMs} ms)`);
  console.log('\ngoal: ≥ 200 images/s at batch 8 for the 200-image bank on decoded input (1.5× the reference)');
  await fx.release();
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
