/**
 * Any backbone with a descriptor works: a small float CNN built here (two strided convolutions,
 * taps at stride 8 and 16, embedding pooled like a wide backbone) is fitted and run end to end.
 */
import test from 'ava';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadBackbone, parseDescriptor, sha256 } from '../models/backbone.js';
import { GraphBuilder, valueInfo, DataType } from '../models/onnx/builder.js';
import { encodeModel, type ModelProto } from '../models/onnx/proto.js';
import { Random } from '../models/random.js';
import { runFit } from '../agent/commands/fit.js';
import { runInfer } from '../agent/commands/infer.js';
import { magneticTileTrain, sharedAvailable } from './helpers/fitted-model.js';
import { copyFile } from 'node:fs/promises';

function tinyCnn(): Uint8Array {
  const graph = { name: 'tiny', node: [], initializer: [], input: [valueInfo('image', DataType.FLOAT, ['batch', 3, 'h', 'w'])], output: [] };
  const model: ModelProto = { irVersion: 8, opsetImport: [{ domain: '', version: 17 }], producerName: 'test', graph };
  const b = new GraphBuilder(graph, 'tiny/');
  const rng = new Random(5);
  const w = (n: number) => Float32Array.from({ length: n }, () => rng.nextFloat() - 0.5);
  const c1 = b.op1('Conv', ['image', b.float('w1', [16, 3, 8, 8], w(16 * 3 * 64))], { strides: [8, 8], kernel_shape: [8, 8] });
  graph.node.push({ opType: 'Relu', name: 'r1', input: [c1], output: ['feat8'], attribute: [] } as never);
  const c2 = b.op1('Conv', ['feat8', b.float('w2', [24, 16, 2, 2], w(24 * 16 * 4))], { strides: [2, 2], kernel_shape: [2, 2] });
  graph.node.push({ opType: 'Relu', name: 'r2', input: [c2], output: ['feat16'], attribute: [] } as never);
  graph.output.push(valueInfo('feat16', DataType.FLOAT, ['batch', 24, 'h16', 'w16']) as never);
  return encodeModel(model);
}

test('a float backbone with a descriptor (per-tap pooling to a target dim) fits and infers', async (t) => {
  if (!sharedAvailable()) return t.pass('../shared absent');
  const dir = await mkdtemp(join(tmpdir(), 'sw-custom-'));
  const onnx = tinyCnn();
  await writeFile(join(dir, 'tiny.onnx'), onnx);
  const descriptor = {
    id: 'tiny-cnn', sha256: sha256(onnx), input: 'image', inputSize: 64,
    normalization: { mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25] },
    taps: [{ tensor: 'feat8', stride: 8, channels: 16 }, { tensor: 'feat16', stride: 16, channels: 24 }],
    pretrainEmbedDim: 20, embedDim: 12,
  };
  await writeFile(join(dir, 'tiny.json'), JSON.stringify(descriptor));
  const d = parseDescriptor(descriptor, 'tiny.json');
  await loadBackbone(join(dir, 'tiny.onnx'), d);
  const images = join(dir, 'images');
  await (await import('node:fs/promises')).mkdir(images);
  for (const f of await magneticTileTrain(8)) await copyFile(f, join(images, f.split('/').pop()!));
  const s = await runFit({
    images: [images], out: join(dir, 'm.onnx'), name: 'tiny', holdout: 0.25, coreset: 0.1, seed: 1, projection: 'jl',
    backbone: join(dir, 'tiny.onnx'), backboneId: join(dir, 'tiny.json'), batch: 4, provider: 'cpu', json: true, log: () => {},
  });
  t.is(s.patches, 6 * 8 * 8); // 64 px input, stride 8 → 8×8 patches
  const r = await runInfer({ model: join(dir, 'm.onnx'), images: [images], batch: 4, provider: 'cpu' });
  t.is(r.results.length, 8);
  for (const x of r.results) t.true(Number.isFinite(x.score));
});
