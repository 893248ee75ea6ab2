/**
 * `auto` keeps a GPU provider only when it beats the CPU on this model (models/provider-speed.ts).
 * No GPU here: the "GPU" session is a second CPU session labelled webgpu, and the timer is
 * scripted; what is checked is the choice, the reason recorded and that the loser is released.
 */
import test from 'ava';
import { readFile } from 'node:fs/promises';
import type ort from 'onnxruntime-node';
import { createSession, type SessionResult } from '../models/execution-provider.js';
import { keepFasterThanCpu, msPerImage, SPEED_CHECK_BATCH } from '../models/provider-speed.js';
import { providerLogLevel } from '../agent/agent.js';
import { fittedModel, magneticTileTrain, sharedAvailable } from './helpers/fitted-model.js';

const maybe = sharedAvailable() ? test : test.skip;
const modelBytes = async () => readFile(await fittedModel(await magneticTileTrain(40), { name: 'pipeline-test' }));

async function labelledGpu(bytes: Uint8Array): Promise<SessionResult> {
  const s = await createSession(bytes, { provider: 'cpu', intraOpThreads: 1 });
  return { ...s, provider: 'webgpu', fallbacks: [{ provider: 'cuda', reason: 'no CUDA provider library' }] };
}

/** A released session refuses to run. */
const released = async (t: import('ava').ExecutionContext, s: ort.InferenceSession) =>
  t.throwsAsync(msPerImage(s, 224, 1, 1));

maybe('the GPU session is kept when it is faster; the CPU session opened for the check is released', async (t) => {
  const bytes = await modelBytes();
  const gpu = await labelledGpu(bytes);
  const seen: ort.InferenceSession[] = [];
  const got = await keepFasterThanCpu(gpu, bytes, { intraOpThreads: 1 }, async (s) => {
    seen.push(s);
    return s === gpu.session ? 1 : 2;
  });
  t.is(got, gpu);
  t.is(seen.length, 2);
  await released(t, seen[1]!);
  t.true((await msPerImage(got.session, 224, 1, 1)) > 0, 'the kept session still runs');
  await got.session.release();
});

maybe('the CPU is kept when the GPU is not faster, and the GPU provider is listed with both figures', async (t) => {
  const bytes = await modelBytes();
  const gpu = await labelledGpu(bytes);
  const got = await keepFasterThanCpu(gpu, bytes, { intraOpThreads: 1 }, async (s) => (s === gpu.session ? 3.72 : 2.19));
  t.is(got.provider, 'cpu');
  t.not(got.session, gpu.session);
  t.deepEqual(got.fallbacks, [
    { provider: 'cuda', reason: 'no CUDA provider library' },
    { provider: 'webgpu', reason: `slower than the CPU for this model (3.72 vs 2.19 ms/image at batch ${SPEED_CHECK_BATCH}); ask for it by name to use it anyway` },
  ]);
  await released(t, gpu.session);
  await got.session.release();
});

maybe('a GPU session that fails its speed check gives way to the CPU with the error', async (t) => {
  const bytes = await modelBytes();
  const gpu = await labelledGpu(bytes);
  const got = await keepFasterThanCpu(gpu, bytes, { intraOpThreads: 1 }, async (s) => {
    if (s === gpu.session) throw new Error('device lost\nstack…');
    return 1;
  });
  t.is(got.provider, 'cpu');
  t.deepEqual(got.fallbacks.at(-1), { provider: 'webgpu', reason: 'failed its speed check: device lost' });
  await released(t, gpu.session);
  await got.session.release();
});

maybe('a CPU session is returned as it is, and msPerImage measures a real batch', async (t) => {
  const bytes = await modelBytes();
  const cpu = await createSession(bytes, { provider: 'cpu', intraOpThreads: 1 });
  let timed = 0;
  t.is(await keepFasterThanCpu(cpu, bytes, {}, async () => ++timed), cpu);
  t.is(timed, 0, 'nothing to compare');
  const ms = await msPerImage(cpu.session, 224, 2, 1);
  t.true(Number.isFinite(ms) && ms > 0, `${ms}`);
  await cpu.session.release();
});

test('the startup provider line is a warning only for a GPU that should have been used, not one measured slower', (t) => {
  const missing = [{ provider: 'cuda', reason: 'Failed to load shared library' }];
  const slower = [...missing, { provider: 'webgpu', reason: 'slower than the CPU for this model (3.72 vs 2.19 ms/image at batch 8); ask for it by name to use it anyway' }];
  t.is(providerLogLevel('auto', { provider: 'cpu', fallbacks: missing }, true), 'warn', 'auto on a GPU box, no GPU provider worked');
  t.is(providerLogLevel('auto', { provider: 'cpu', fallbacks: slower }, true), 'info', 'auto measured the GPU slower');
  t.is(providerLogLevel('auto', { provider: 'cpu', fallbacks: missing }, false), 'info', 'CPU-only box');
  t.is(providerLogLevel('webgpu', { provider: 'cpu', fallbacks: [{ provider: 'webgpu', reason: 'No supported adapters' }] }, false), 'warn');
  t.is(providerLogLevel('cpu', { provider: 'cpu', fallbacks: [] }, true), 'info');
  t.is(providerLogLevel('auto', { provider: 'webgpu', fallbacks: missing }, true), 'info');
});
