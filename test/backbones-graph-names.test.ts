/**
 * The compiler's own tensor names (tap0/tap1 of the stride probe, embedding, score, anomaly_map…,
 * everything under sw/) never collide with a backbone's: a backbone exported with outputs named
 * tap0/tap1, or with an inner tensor called `score`, compiles and runs (models/patchcore-graph.ts).
 * A backbone whose taps need a second graph input is refused with that input named.
 */
import test from 'ava';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import ort from 'onnxruntime-node';
import { loadBackbone, parseDescriptor, sha256 } from '../models/backbone.js';
import { createSession } from '../models/execution-provider.js';
import { GraphBuilder, valueInfo, DataType } from '../models/onnx/builder.js';
import { encodeModel, type ModelProto, type NodeProto, type ValueInfoProto } from '../models/onnx/proto.js';
import { buildModelGraph } from '../models/patchcore-graph.js';
import { Random } from '../models/random.js';
import { FeatureExtractor } from '../models/runtime.js';

interface Names { feat8?: string; feat16?: string; inner?: string; prefix?: string; extraInput?: boolean; /** A Reshape to [1,16,S/8,S/8] before the first tap, as some exports hard-code. */ fixedBatchAt?: number; /** The first tap made by a model-local function (torch's exporter emits them). */ viaFunction?: boolean }

/** Two strided convolutions (taps at stride 8 and 16), with the tensor names chosen by the test. */
function tinyBackbone(o: Names = {}): Uint8Array {
  const f8 = o.feat8 ?? 'feat8';
  const f16 = o.feat16 ?? 'feat16';
  const graph = { name: 'tiny', node: [] as NodeProto[], initializer: [], input: [valueInfo('image', DataType.FLOAT, ['batch', 3, 'h', 'w'])], output: [] as ValueInfoProto[] };
  const model: ModelProto = { irVersion: 8, opsetImport: [{ domain: '', version: 17 }], producerName: 'test', graph };
  const b = new GraphBuilder(graph, o.prefix ?? 'tiny/');
  const rng = new Random(5);
  const w = (n: number) => Float32Array.from({ length: n }, () => rng.nextFloat() - 0.5);
  let x = 'image';
  if (o.extraInput) {
    graph.input.push(valueInfo('gain', DataType.FLOAT, [1]));
    x = b.op1('Mul', ['image', 'gain']);
  }
  let c1 = b.op1('Conv', [x, b.float('w1', [16, 3, 8, 8], w(16 * 3 * 64))], { strides: [8, 8], kernel_shape: [8, 8] });
  if (o.inner) {
    graph.node.push({ opType: 'Identity', name: 'inner', input: [c1], output: [o.inner], attribute: [] });
    c1 = o.inner;
  }
  if (o.fixedBatchAt) {
    const grid = o.fixedBatchAt / 8;
    c1 = b.op1('Reshape', [c1, b.int64('shape', [4], [1, 16, grid, grid])]);
  }
  if (o.viaFunction) {
    model.opsetImport!.push({ domain: 'local.fn', version: 1 });
    model.functions = [{
      name: 'MyRelu', domain: 'local.fn', input: ['x'], output: ['y'], attribute: [],
      opsetImport: [{ domain: '', version: 17 }],
      node: [{ opType: 'Relu', name: 'body', input: ['x'], output: ['y'], attribute: [] }],
    }];
    graph.node.push({ opType: 'MyRelu', domain: 'local.fn', name: 'r1', input: [c1], output: [f8], attribute: [] });
  } else graph.node.push({ opType: 'Relu', name: 'r1', input: [c1], output: [f8], attribute: [] });
  const c2 = b.op1('Conv', [f8, b.float('w2', [24, 16, 2, 2], w(24 * 16 * 4))], { strides: [2, 2], kernel_shape: [2, 2] });
  graph.node.push({ opType: 'Relu', name: 'r2', input: [c2], output: [f16], attribute: [] });
  graph.output.push(valueInfo(f8, DataType.FLOAT, ['batch', 16, 'h8', 'w8']), valueInfo(f16, DataType.FLOAT, ['batch', 24, 'h16', 'w16']));
  return encodeModel(model);
}

/** Writes tinyBackbone(o) as `<file>` in a temporary folder and loads it with its descriptor. */
async function loadTiny(t: import('ava').ExecutionContext, o: Names, file = 'tiny.onnx') {
  const dir = await mkdtemp(join(tmpdir(), 'sw-bb-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const bytes = tinyBackbone(o);
  const path = join(dir, file);
  await writeFile(path, bytes);
  const d = parseDescriptor({
    id: 'tiny', sha256: sha256(bytes), input: 'image', inputSize: 32,
    normalization: { mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25] },
    taps: [{ tensor: o.feat8 ?? 'feat8', stride: 8, channels: 16 }, { tensor: o.feat16 ?? 'feat16', stride: 16, channels: 24 }],
  }, 'tiny.json');
  return loadBackbone(path, d);
}

/** Loads the backbone, extracts features of one image, compiles a model on a small bank and scores. */
async function compileAndRun(t: import('ava').ExecutionContext, o: Names): Promise<{ embedding: Float32Array; score: number }> {
  const backbone = await loadTiny(t, o);
  const d = backbone.descriptor;
  const image = Float32Array.from({ length: 3 * 32 * 32 }, (_, i) => Math.sin(i / 7));
  const fx = await FeatureExtractor.create(backbone, { provider: 'cpu', intraOpThreads: 1 });
  const embedding = await fx.embed(image, 1);
  await fx.release();
  const graph = buildModelGraph(backbone.model, d, { bank: embedding.slice(0, 3 * 40), entries: 3 });
  const { session } = await createSession(encodeModel(graph), { provider: 'cpu', intraOpThreads: 1 });
  try {
    const out = await session.run({ [session.inputNames[0]!]: new ort.Tensor('float32', image, [1, 3, 32, 32]) });
    return { embedding, score: (out.score!.data as Float32Array)[0]! };
  } finally {
    await session.release();
  }
}

test('backbone tensors named like the compiler\'s own compile and give the same features and score', async (t) => {
  const reference = await compileAndRun(t, {});
  t.true(Number.isFinite(reference.score));
  const cases: Names[] = [
    { feat8: 'tap0', feat16: 'tap1' }, // outputs exported as tap0/tap1: the stride probe's names
    { feat8: 'tap1', feat16: 'tap0' },
    { inner: 'tap0' },
    { inner: 'score' },
    { inner: 'embedding' },
    { feat16: 'anomaly_map' },
    { prefix: 'sw/' }, // the builder's prefix
  ];
  for (const c of cases) {
    const got = await compileAndRun(t, c);
    t.deepEqual(got.embedding, reference.embedding, JSON.stringify(c));
    t.is(got.score, reference.score, JSON.stringify(c));
  }
});

test('taps that need a second graph input are refused, naming that input', async (t) => {
  await t.throwsAsync(compileAndRun(t, { extraInput: true }), {
    name: 'BackboneError',
    message: /the taps need 'gain' \(read by node 'tiny\/Mul_node_2'\), which is neither the image input 'image', an initializer nor made by a node; shelfwatch feeds the image only/,
  });
});

test('a backbone that only takes a batch of 1 is refused when features are set up, naming the file, not in the middle of a fit', async (t) => {
  const backbone = await loadTiny(t, { fixedBatchAt: 32 }, 'fixed.onnx');
  const err = await t.throwsAsync(FeatureExtractor.create(backbone, { provider: 'cpu', intraOpThreads: 1 }));
  t.regex(err.message, /fixed\.onnx: the taps cannot be computed for a batch of 2 images of 32×32 \(a backbone must take any batch size/);
});

test('an input size that is not a multiple of a tap stride, on a backbone without padding, is named as the cause', async (t) => {
  const backbone = await loadTiny(t, {}, 'tiny.onnx');
  const err = await t.throwsAsync(FeatureExtractor.create(backbone, { provider: 'cpu', intraOpThreads: 1, inputSize: 36 }));
  t.regex(err.message, /36 is not a multiple of (8|16): use an input size that is/);
  await t.notThrowsAsync(async () => (await FeatureExtractor.create(backbone, { provider: 'cpu', intraOpThreads: 1, inputSize: 48 })).release());
});

test('a backbone whose taps call a model-local function compiles with the function and gives the same features and score', async (t) => {
  const plain = await compileAndRun(t, {});
  const viaFunction = await compileAndRun(t, { viaFunction: true });
  t.deepEqual([...viaFunction.embedding], [...plain.embedding]);
  t.is(viaFunction.score, plain.score);
});
