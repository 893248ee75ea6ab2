/**
 * Backbone files and descriptors from outside are checked where they enter (models/backbone.ts,
 * agent/backbones.ts): a descriptor's fileName cannot leave the cache, its URLs are http(s), a
 * backbone must be one self-contained file with a float32 NCHW image input, and a quantized tap
 * needs its dequantization named. Each refusal names the file and what is wrong.
 */
import test from 'ava';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cachedBackbonePath } from '../agent/backbones.js';
import { BackboneError, loadBackbone, MOBILENETV2_INT8, parseDescriptor, sha256 } from '../models/backbone.js';
import { GraphBuilder, valueInfo, DataType } from '../models/onnx/builder.js';
import { encodeModel, type ModelProto } from '../models/onnx/proto.js';
import { BACKBONE_PATH, sharedAvailable } from './helpers/fitted-model.js';

const base = {
  id: 'tiny', sha256: 'a'.repeat(64), input: 'image', inputSize: 64,
  normalization: { mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25] },
  taps: [{ tensor: 'feat8', stride: 8, channels: 4 }, { tensor: 'feat16', stride: 16, channels: 4 }],
};

/** Two strided convolutions: taps feat8 (stride 8) and feat16 (stride 16). */
function tinyModel(input: { type?: number; shape?: Array<number | string> } = {}): ModelProto {
  const graph = { name: 'tiny', node: [], initializer: [], input: [valueInfo('image', input.type ?? DataType.FLOAT, input.shape ?? ['batch', 3, 'h', 'w'])], output: [] };
  const model: ModelProto = { irVersion: 8, opsetImport: [{ domain: '', version: 17 }], producerName: 'test', graph };
  const b = new GraphBuilder(graph, 'tiny/');
  const c1 = b.op1('Conv', ['image', b.float('w1', [4, 3, 8, 8], new Float32Array(4 * 3 * 64).fill(0.01))], { strides: [8, 8], kernel_shape: [8, 8] });
  (graph.node as unknown[]).push({ opType: 'Relu', name: 'r1', input: [c1], output: ['feat8'], attribute: [] });
  const c2 = b.op1('Conv', ['feat8', b.float('w2', [4, 4, 2, 2], new Float32Array(4 * 4 * 4).fill(0.1))], { strides: [2, 2], kernel_shape: [2, 2] });
  (graph.node as unknown[]).push({ opType: 'Relu', name: 'r2', input: [c2], output: ['feat16'], attribute: [] });
  (graph.output as unknown[]).push(valueInfo('feat16', DataType.FLOAT, ['batch', 4, 'h16', 'w16']));
  return model;
}

async function written(t: import('ava').ExecutionContext, name: string, bytes: Uint8Array): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'sw-bb-desc-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const path = join(dir, name);
  await writeFile(path, bytes);
  return path;
}

test('a descriptor fileName is a plain file name: a path would put (and replace) the download outside the cache', (t) => {
  for (const fileName of ['../../../.bashrc', '/etc/passwd', 'sub/model.onnx', '..\\evil.onnx', '..', '.', '']) {
    const err = t.throws(() => parseDescriptor({ ...base, fileName }, 'mine.json'), { instanceOf: BackboneError }, fileName);
    t.regex(err!.message, /^mine\.json: invalid backbone descriptor\n {2}fileName: /, fileName);
  }
  // Ordinary names still work, spaces included (export_wide_resnet50_2.py writes --out's name).
  t.is(parseDescriptor({ ...base, fileName: 'wide resnet.onnx' }, 'mine.json').fileName, 'wide resnet.onnx');
  const cache = join(tmpdir(), 'sw-cache-never-created');
  t.is(cachedBackbonePath(parseDescriptor({ ...base, fileName: 'x.onnx' }, 'mine.json'), { SHELFWATCH_CACHE: cache }), join(cache, 'backbones', 'x.onnx'));
});

test('cachedBackbonePath only computes the path: a cache directory that cannot be created does not fail `backbone info`', (t) => {
  const cache = join(tmpdir(), `sw-cache-${process.pid}-absent`, 'deeper');
  t.is(cachedBackbonePath(MOBILENETV2_INT8, { SHELFWATCH_CACHE: cache }), join(cache, 'backbones', 'mobilenetv2-12-int8.onnx'));
  t.false(existsSync(cache));
  // Under a regular file: cannot exist, still no error.
  t.notThrows(() => cachedBackbonePath(MOBILENETV2_INT8, { SHELFWATCH_CACHE: join(process.execPath, 'cache') }));
});

test('descriptor URLs must be http(s): other schemes are refused with the field named', (t) => {
  for (const url of ['file:///etc/passwd', 'ftp://example.com/b.onnx', 'javascript:alert(1)']) {
    t.throws(() => parseDescriptor({ ...base, urls: [url] }, 'mine.json'), { message: /urls\.0: expected an http\(s\) URL/ }, url);
  }
  t.deepEqual(parseDescriptor({ ...base, urls: ['https://example.com/b.onnx', 'http://mirror/b.onnx'] }, 'mine.json').urls, ['https://example.com/b.onnx', 'http://mirror/b.onnx']);
});

test('a backbone whose weights live in a separate file (torch >= 2.9 exports) is refused, not loaded from the working directory', async (t) => {
  const model = tinyModel();
  for (const init of model.graph!.initializer!) {
    Object.assign(init, { dataLocation: 1, externalData: [{ key: 'location', value: 'tiny.onnx.data' }, { key: 'offset', value: '0' }] });
    delete init.rawData;
  }
  const bytes = encodeModel(model);
  const path = await written(t, 'tiny.onnx', bytes);
  const err = await t.throwsAsync(loadBackbone(path, parseDescriptor({ ...base, sha256: sha256(bytes) }, 'tiny.json')), { instanceOf: BackboneError });
  t.regex(err!.message, new RegExp(`^backbone ${path.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: initializer 'tiny/w1_1' keeps its data in a separate file \\(tiny\\.onnx\\.data\\); a backbone must be one self-contained ONNX file`));
  t.regex(err!.message, /external_data=False/);
});

test('an image input that is not float32 NCHW is refused with its declared type or shape', async (t) => {
  const cases: Array<[{ type?: number; shape?: Array<number | string> }, RegExp]> = [
    [{ shape: [1, 224, 224, 3] }, /input 'image' is \[1,224,224,3\] \(channels last, NHWC\); shelfwatch feeds images as \[N,3,S,S\] \(NCHW\)/],
    [{ shape: ['batch', 1, 'h', 'w'] }, /input 'image' is \[\?,1,\?,\?\]; shelfwatch feeds images as \[N,3,S,S\]/],
    [{ shape: ['batch', 3, 'hw'] }, /input 'image' is \[\?,3,\?\]; shelfwatch feeds/],
    [{ type: 10 }, /input 'image' is float16; shelfwatch feeds float32 images/],
  ];
  for (const [input, message] of cases) {
    const bytes = encodeModel(tinyModel(input));
    const path = await written(t, 'in.onnx', bytes);
    await t.throwsAsync(loadBackbone(path, parseDescriptor({ ...base, sha256: sha256(bytes) }, 'tiny.json')), { instanceOf: BackboneError, message }, message.source);
  }
  // Fixed or symbolic NCHW dimensions are fine (the compiled graph sets its own size).
  for (const shape of [[1, 3, 224, 224], ['n', 3, 'h', 'w']]) {
    const bytes = encodeModel(tinyModel({ shape }));
    const path = await written(t, 'ok.onnx', bytes);
    await t.notThrowsAsync(loadBackbone(path, parseDescriptor({ ...base, sha256: sha256(bytes) }, 'tiny.json')));
  }
});

(sharedAvailable() ? test : test.skip)('a quantized tap without dequantize is refused at load, naming the tap and the field to add', async (t) => {
  const taps = MOBILENETV2_INT8.taps.map(({ dequantize: _, ...tap }) => tap);
  const err = await t.throwsAsync(loadBackbone(BACKBONE_PATH, { ...MOBILENETV2_INT8, taps: taps as typeof MOBILENETV2_INT8.taps }), { instanceOf: BackboneError });
  t.regex(err!.message, /tap '365_quantized' is quantized \(made by QLinearAdd\) and the descriptor gives no dequantize: name its scale and zero-point initializers in the tap's "dequantize"/);
  await t.notThrowsAsync(loadBackbone(BACKBONE_PATH, MOBILENETV2_INT8));
});
