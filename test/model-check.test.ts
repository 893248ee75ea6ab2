import test from 'ava';
import { writeFile, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { agreementOf, formatModelCheck, gpuSetupHints, machineFacts, runModelCheck, SCORE_TOLERANCE } from '../agent/commands/model-check.js';
import type { Prediction } from '../models/types.js';
import { fittedModel, magneticTileTrain, sharedAvailable } from './helpers/fitted-model.js';

const maybe = sharedAvailable() ? test : test.skip;
const modelPath = () => magneticTileTrain(40).then((images) => fittedModel(images, { name: 'pipeline-test' }));

maybe('model check on the CPU: synthetic inputs, timing, no comparison needed, verdict ready', async (t) => {
  const r = await runModelCheck({ model: await modelPath(), provider: 'cpu', batch: 4 });
  t.is(r.provider, 'cpu');
  t.deepEqual(r.fallbacks, []);
  t.like(r.inputs, { source: 'synthetic', count: 4 });
  t.true(r.cpu.msPerImage > 0);
  t.is(r.chosen, null);
  t.deepEqual(r.warnings, []);
  t.regex(r.digest, /^[0-9a-f]{64}$/);
  t.regex(formatModelCheck(r), /provider: asked cpu, got cpu\n[\s\S]*verdict: ready$/);
});

maybe('model check with auto: names the provider it got and why the others were skipped; on images', async (t) => {
  const images = (await magneticTileTrain(44)).slice(40);
  const r = await runModelCheck({ model: await modelPath(), provider: 'auto', images, batch: 8 });
  t.like(r.inputs, { source: 'images', count: 4 });
  const m = machineFacts();
  if (m.nvidiaDevices.length === 0 && m.renderNodes.length === 0) {
    // This machine (and CI): no GPU, so both GPU providers are skipped with the reason.
    t.is(r.provider, 'cpu');
    t.deepEqual(r.fallbacks.map((f) => f.provider), ['cuda', 'webgpu']);
    t.regex(r.fallbacks[0]!.reason, /no NVIDIA GPU device found/);
    t.deepEqual(r.warnings, [], 'auto ending on the CPU of a machine without a GPU is not a problem');
  } else {
    t.log(formatModelCheck(r));
    t.true(r.provider === 'cpu' || r.chosen !== null);
  }
});

maybe('model check: asking for CUDA on a box without a usable GPU is a warning with the reason', async (t) => {
  const m = machineFacts();
  if (m.nvidiaDevices.length > 0 && m.cudaProviderLibrary) return t.pass('this machine may really run CUDA');
  const r = await runModelCheck({ model: await modelPath(), provider: 'cuda', batch: 2 });
  t.is(r.provider, 'cpu');
  t.is(r.warnings.length, 1);
  t.regex(r.warnings[0]!, /asked for cuda but the model runs on the CPU: cuda: /);
  t.regex(formatModelCheck(r), /warning: asked for cuda[\s\S]*verdict: check the warnings above$/);
});

test('model check: a file that is not a model, and images that cannot be read, are clear errors', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'sw-model-check-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  await writeFile(join(dir, 'bad.onnx'), 'not a model');
  await t.throwsAsync(runModelCheck({ model: join(dir, 'bad.onnx'), provider: 'cpu' }), { message: /bad\.onnx/ });
  if (!sharedAvailable()) return;
  await writeFile(join(dir, 'broken.jpg'), 'not a jpeg either');
  await t.throwsAsync(runModelCheck({ model: await modelPath(), provider: 'cpu', images: [join(dir, 'broken.jpg')] }), { message: /none of the 1 image\(s\) could be read: .*broken\.jpg/ });
});

test('agreementOf: relative score difference, map difference and decisions against the CPU', (t) => {
  const pred = (score: number, map: number[], anomalous: boolean): Prediction => ({
    score,
    normalizedScore: 0,
    anomalyMap: Float32Array.from(map),
    mapSize: 2,
    mask: new Uint8Array(4),
    threshold: 1,
    isAnomalous: anomalous,
    modelDigest: 'x',
  });
  const cpu = [pred(2, [0, 1, 2, 3], true), pred(0.5, [0, 0, 0, 0], false)];
  t.deepEqual(agreementOf(cpu, cpu), { maxScoreRelDiff: 0, maxMapAbsDiff: 0, sameDecisions: true, withinTolerance: true });
  const close = [pred(2.02, [0, 1, 2.25, 3], true), pred(0.5, [0, 0, 0, 0], false)];
  const a = agreementOf(close, cpu);
  t.true(Math.abs(a.maxScoreRelDiff - 0.01) < 1e-9);
  t.is(a.maxMapAbsDiff, 0.25);
  t.true(a.withinTolerance && a.sameDecisions);
  const far = [pred(2, [0, 1, 2, 3], true), pred(0.5 * (1 + 2 * SCORE_TOLERANCE), [0, 0, 0, 0], true)];
  t.like(agreementOf(far, cpu), { withinTolerance: false, sameDecisions: false });
  t.throws(() => agreementOf(cpu.slice(1), cpu), { message: /1 predictions against 2/ });
});

test('GPU setup hints: the CUDA provider library, and what WebGPU needs when it finds no adapter on an NVIDIA box', (t) => {
  const adapter = { provider: 'webgpu', reason: 'webgpu_context.cc:136 … Failed to get a WebGPU adapter: No supported adapters' };
  t.deepEqual(gpuSetupHints({ nvidiaDevices: [], cudaProviderLibrary: null }, [adapter]), [], 'no NVIDIA device: nothing to install');
  const both = gpuSetupHints({ nvidiaDevices: ['/dev/nvidia0'], cudaProviderLibrary: null }, [{ provider: 'cuda', reason: 'Failed to load shared library' }, adapter]);
  t.is(both.length, 2);
  t.regex(both[0]!, /no CUDA provider library: reinstall with ONNXRUNTIME_NODE_INSTALL=cuda12/);
  t.regex(both[1]!, /WebGPU found no GPU adapter: .*apt-get install libvulkan1 libglvnd0 libglx0 libegl1/);
  const lib = '/opt/shelfwatch/node_modules/onnxruntime-node/bin/napi-v6/linux/x64/libonnxruntime_providers_cuda.so';
  t.deepEqual(gpuSetupHints({ nvidiaDevices: ['/dev/nvidia0'], cudaProviderLibrary: lib }, [{ provider: 'webgpu', reason: 'no GPU render node (/dev/dri/renderD*) found' }]), []);
});
