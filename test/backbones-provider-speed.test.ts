/**
 * `auto`'s speed check (models/provider-speed.ts) blames the side that failed: when the CPU
 * cannot run (or even load) the model but the GPU session did, the GPU session is kept. The old
 * code released the working GPU session and returned the failing CPU one with the GPU listed as
 * "failed its speed check", or failed the whole load.
 */
import test from 'ava';
import type ort from 'onnxruntime-node';
import { createSession, type SessionResult } from '../models/execution-provider.js';
import { GraphBuilder, valueInfo, DataType } from '../models/onnx/builder.js';
import { encodeModel, type ModelProto } from '../models/onnx/proto.js';
import { keepFasterThanCpu, msPerImage } from '../models/provider-speed.js';

/** image [N,3,8,8] → score [N] (a mean): enough for a session to run. */
function tinyModel(): Uint8Array {
  const graph = { name: 'm', node: [], initializer: [], input: [valueInfo('image', DataType.FLOAT, ['batch', 3, 8, 8])], output: [] };
  const model: ModelProto = { irVersion: 8, opsetImport: [{ domain: '', version: 17 }], producerName: 'test', graph };
  const b = new GraphBuilder(graph);
  const m = b.op1('ReduceMean', ['image'], { axes: [1, 2, 3], keepdims: 0 });
  (graph.node as unknown[]).push({ opType: 'Identity', name: 'out', input: [m], output: ['score'], attribute: [] });
  b.output('score', DataType.FLOAT, ['batch']);
  return encodeModel(model);
}

/** A CPU session labelled webgpu (no GPU here): what is checked is the choice. */
async function labelledGpu(bytes: Uint8Array): Promise<SessionResult> {
  const s = await createSession(bytes, { provider: 'cpu', intraOpThreads: 1 });
  return { ...s, provider: 'webgpu', fallbacks: [{ provider: 'cuda', reason: 'no NVIDIA GPU device found' }] };
}

const runs = async (s: ort.InferenceSession) => (await msPerImage(s, 8, 1, 1)) >= 0;

test('the CPU failing its speed check keeps the GPU session (and releases the CPU one)', async (t) => {
  const bytes = tinyModel();
  const gpu = await labelledGpu(bytes);
  let cpuSession: ort.InferenceSession | undefined;
  const got = await keepFasterThanCpu(gpu, bytes, { intraOpThreads: 1 }, async (s) => {
    if (s === gpu.session) return 5;
    cpuSession = s;
    throw new Error('out of memory');
  });
  t.is(got, gpu, 'the GPU session, which ran, is kept with its own fallbacks');
  t.deepEqual(got.fallbacks, [{ provider: 'cuda', reason: 'no NVIDIA GPU device found' }]);
  t.true(await runs(got.session));
  t.truthy(cpuSession);
  await t.throwsAsync(msPerImage(cpuSession!, 8, 1, 1), undefined, 'the CPU session was released');
  await got.session.release();
});

test('a CPU session that cannot be created keeps the GPU session instead of failing the load', async (t) => {
  const bytes = tinyModel();
  const gpu = await labelledGpu(bytes);
  // Model bytes the CPU cannot load: the GPU session (already open) is all there is.
  const got = await keepFasterThanCpu(gpu, new Uint8Array([1, 2, 3]), { intraOpThreads: 1 }, async () => 1);
  t.is(got, gpu);
  t.true(await runs(got.session), 'the GPU session was not released');
  await got.session.release();
});
