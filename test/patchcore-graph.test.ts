/**
 * The compiled PatchCore graph against (a) the plain TypeScript maths on random data and
 * (b) the reference values of an independent implementation (../shared/reference/patchcore).
 */
import test from 'ava';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import ort from 'onnxruntime-node';
import { AnomalyMapBuilder } from '../models/anomaly-map.js';
import { MOBILENETV2_INT8 } from '../models/backbone.js';
import { encodeModel } from '../models/onnx/proto.js';
import { buildModelGraph, TAP_INPUTS } from '../models/patchcore-graph.js';
import {
  aggregate, anomalyMap, avgPool3x3, bilinearMatrix, blurMatrix, gaussianKernel, nearest, nearestMatrix, reweightedScore,
} from '../models/patchcore-math.js';
import { Random } from '../models/random.js';
import { SHARED, sharedAvailable, testBackbone } from './helpers/fitted-model.js';

const REF = join(SHARED, 'reference', 'patchcore');
const f32 = (name: string): Float32Array => {
  const b = readFileSync(join(REF, name));
  return new Float32Array(b.buffer, b.byteOffset, b.length / 4);
};
const refAvailable = () => sharedAvailable() && existsSync(REF);

test('3×3 average pooling counts padded zeros (hand-computed)', (t) => {
  // 3×3 input of ones: corner sees 4 ones / 9, edge 6/9, centre 9/9.
  const out = avgPool3x3(new Float32Array(9).fill(1), 1, 3, 3);
  t.deepEqual(Array.from(out).map((v) => Math.round(v * 9)), [4, 6, 4, 6, 9, 6, 4, 6, 4]);
});

test('bilinear 2→4 upsampling weights (align_corners=false, clamped)', (t) => {
  const m = bilinearMatrix(2, 4);
  // rows: s = (i+0.5)/2 - 0.5 → -0.25→0 (clamped), 0.25, 0.75, 1.25 → i0 = 1
  t.deepEqual(Array.from(m), [1, 0, 0.75, 0.25, 0.25, 0.75, 0, 1]);
});

test('nearest upsampling repeats each patch over a block', (t) => {
  const m = nearestMatrix(2, 4);
  t.deepEqual(Array.from(m), [1, 0, 1, 0, 0, 1, 0, 1]);
});

test('Gaussian kernel: 33 taps, σ = 4, normalised, symmetric', (t) => {
  const k = gaussianKernel();
  t.is(k.length, 33);
  t.true(Math.abs(k.reduce((a, b) => a + b, 0) - 1) < 1e-12);
  t.is(k[0], k[32]);
  t.true(Math.abs(k[16]! / k[20]! - Math.exp(16 / 32)) < 1e-12);
});

test('reflect padding does not repeat the edge sample', (t) => {
  const n = 40;
  const m = blurMatrix(n);
  const k = gaussianKernel();
  // Row 0: tap at offset −1 reads index 1, so index 1 gets k[15] + k[17].
  t.true(Math.abs(m[1]! - (k[15]! + k[17]!)) < 1e-15);
  for (let y = 0; y < n; y++) {
    let s = 0;
    for (let x = 0; x < n; x++) s += m[y * n + x]!;
    t.true(Math.abs(s - 1) < 1e-12);
  }
});

/** Random taps and bank, run through the graph (from taps) and through the TS maths. */
async function compareOnRandomData(t: import('ava').ExecutionContext, entries: number, searchChunk: number) {
  const backbone = await testBackbone();
  const rng = new Random(42 + entries + searchChunk);
  const n = 2;
  const tap8 = Float32Array.from({ length: n * 32 * 28 * 28 }, () => rng.nextFloat() * 4 - 1);
  const tap16 = Float32Array.from({ length: n * 96 * 14 * 14 }, () => rng.nextFloat() * 4 - 1);
  const bank = Float32Array.from({ length: entries * 128 }, () => rng.nextFloat() * 2 - 0.5);
  const graph = buildModelGraph(backbone.model, MOBILENETV2_INT8, { bank, entries, searchChunk, fromTaps: true });
  const session = await ort.InferenceSession.create(encodeModel(graph));
  const out = await session.run({
    [TAP_INPUTS[0]]: new ort.Tensor('float32', tap8, [n, 32, 28, 28]),
    [TAP_INPUTS[1]]: new ort.Tensor('float32', tap16, [n, 96, 14, 14]),
  });
  const maps = out.anomaly_map!.data as Float32Array;
  for (let i = 0; i < n; i++) {
    const emb = aggregate(tap8.subarray(i * 25088, (i + 1) * 25088), 32, 28, 28, tap16.subarray(i * 18816, (i + 1) * 18816), 96, 14, 14);
    const nn = nearest(emb, 784, bank, entries, 128);
    const s = reweightedScore(emb, nn, bank, entries, 128);
    const map = anomalyMap(nn.distance, 28, 224);
    t.true(Math.abs((out.score!.data[i] as number) - s.score) <= 1e-4, `score ${out.score!.data[i]} vs ${s.score}`);
    t.true(Math.abs((out.max_distance!.data[i] as number) - s.max) <= 1e-4);
    let worst = 0;
    for (let j = 0; j < map.length; j++) worst = Math.max(worst, Math.abs(maps[i * 50176 + j]! - map[j]!));
    t.true(worst <= 1e-4, `map max abs diff ${worst}`);
    // patch_distances: the per-patch nearest distances; the CPU map builder turns them into the graph's map.
    const dist = (out.patch_distances!.data as Float32Array).subarray(i * 784, (i + 1) * 784);
    t.deepEqual(out.patch_distances!.dims, [n, 28, 28]);
    let worstDist = 0;
    for (let p = 0; p < 784; p++) worstDist = Math.max(worstDist, Math.abs(dist[p]! - nn.distance[p]!));
    t.true(worstDist <= 1e-4, `patch distance max abs diff ${worstDist}`);
    const built = new AnomalyMapBuilder(28, 224).build(dist);
    let worstBuilt = 0;
    for (let j = 0; j < built.length; j++) worstBuilt = Math.max(worstBuilt, Math.abs(maps[i * 50176 + j]! - built[j]!));
    t.true(worstBuilt <= 1e-5 * Math.max(1, s.max), `built map vs graph map max abs diff ${worstBuilt}`);
  }
  await session.release();
}

test('compiled graph = TypeScript maths on random data (one search chunk)', async (t) => {
  if (!sharedAvailable()) return t.pass('../shared absent');
  await compareOnRandomData(t, 300, 8192);
});

test('compiled graph = TypeScript maths on random data (bank searched in chunks)', async (t) => {
  if (!sharedAvailable()) return t.pass('../shared absent');
  await compareOnRandomData(t, 300, 64);
});

test('aggregation matches the reference embedding of train image 0 (1e-4 abs)', (t) => {
  if (!refAvailable()) return t.pass('../shared/reference absent');
  const s8 = f32('taps_train_s8.bin');
  const s16 = f32('taps_train_s16.bin');
  const emb = aggregate(s8.subarray(0, 25088), 32, 28, 28, s16.subarray(0, 18816), 96, 14, 14);
  const ref = f32('embedding_train0.bin');
  let worst = 0;
  for (let i = 0; i < ref.length; i++) worst = Math.max(worst, Math.abs(ref[i]! - emb[i]!));
  t.true(worst <= 1e-4, `max abs diff ${worst}`);
});

function referenceBank(): Float32Array {
  const s8 = f32('taps_train_s8.bin');
  const s16 = f32('taps_train_s16.bin');
  const bank = new Float32Array(24 * 784 * 128);
  for (let i = 0; i < 24; i++) {
    bank.set(aggregate(s8.subarray(i * 25088, (i + 1) * 25088), 32, 28, 28, s16.subarray(i * 18816, (i + 1) * 18816), 96, 14, 14), i * 784 * 128);
  }
  return bank;
}

test('compiled graph reproduces the reference scores, maxima and maps from the given taps (1e-3 rel)', async (t) => {
  if (!refAvailable()) return t.pass('../shared/reference absent');
  const backbone = await testBackbone();
  const bank = referenceBank();
  const scores = JSON.parse(readFileSync(join(REF, 'scores.json'), 'utf8')).images as Array<{ score: number; max: number }>;
  const refMaps = f32('anomaly_map.bin');
  const graph = buildModelGraph(backbone.model, MOBILENETV2_INT8, { bank, entries: 18816, fromTaps: true });
  const session = await ort.InferenceSession.create(encodeModel(graph));
  const out = await session.run({
    [TAP_INPUTS[0]]: new ort.Tensor('float32', f32('taps_test_s8.bin'), [8, 32, 28, 28]),
    [TAP_INPUTS[1]]: new ort.Tensor('float32', f32('taps_test_s16.bin'), [8, 96, 14, 14]),
  });
  const maps = out.anomaly_map!.data as Float32Array;
  for (let i = 0; i < 8; i++) {
    const rel = (a: number, b: number) => Math.abs(a - b) / Math.abs(b);
    t.true(rel(out.score!.data[i] as number, scores[i]!.score) <= 1e-3, `image ${i} score`);
    t.true(rel(out.max_distance!.data[i] as number, scores[i]!.max) <= 1e-3, `image ${i} max`);
    let worst = 0;
    for (let j = 0; j < 50176; j++) worst = Math.max(worst, rel(maps[i * 50176 + j]!, refMaps[i * 50176 + j]!));
    t.true(worst <= 1e-3, `image ${i} map rel diff ${worst}`);
  }
  await session.release();
});

test('TypeScript nearest search and re-weighting match the reference support set', (t) => {
  if (!refAvailable()) return t.pass('../shared/reference absent');
  const bank = referenceBank();
  const details = JSON.parse(readFileSync(join(REF, 'scores.json'), 'utf8')).images[6].reweighting;
  const s8 = f32('taps_test_s8.bin');
  const s16 = f32('taps_test_s16.bin');
  const emb = aggregate(s8.subarray(6 * 25088, 7 * 25088), 32, 28, 28, s16.subarray(6 * 18816, 7 * 18816), 96, 14, 14);
  const nn = nearest(emb, 784, bank, 18816, 128);
  const refDist = f32('nn_distance.bin').subarray(6 * 784, 7 * 784);
  for (let p = 0; p < 784; p++) t.true(Math.abs(nn.distance[p]! - refDist[p]!) / refDist[p]! <= 1e-3);
  const s = reweightedScore(emb, nn, bank, 18816, 128);
  t.deepEqual([Math.floor(s.patch / 28), s.patch % 28], details.argmax_row_col);
  t.is(s.memory, details.nearest_memory_index);
  t.deepEqual(s.support, details.support_memory_indices);
  t.true(Math.abs(s.weight - details.weight) <= 1e-4);
});

test('wide-backbone projection follows patchcore-inspection (per-tap pool, concat, pool)', async (t) => {
  const { embeddingProjection } = await import('../models/patchcore-graph.js');
  const d = { ...MOBILENETV2_INT8, taps: [{ ...MOBILENETV2_INT8.taps[0], channels: 2 }, { ...MOBILENETV2_INT8.taps[1], channels: 4 }] as typeof MOBILENETV2_INT8.taps, pretrainEmbedDim: 4, embedDim: 4 };
  // tap0 (2 ch) → 4: each channel duplicated; tap1 (4 ch) → 4: identity; 8 → 4: pair averages.
  t.deepEqual(Array.from(embeddingProjection(d)), [
    1, 0, 0, 0,
    0, 1, 0, 0,
    0, 0, 0.5, 0,
    0, 0, 0.5, 0,
    0, 0, 0, 0.5,
    0, 0, 0, 0.5,
  ]);
});
