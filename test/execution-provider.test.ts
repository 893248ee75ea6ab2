/** Provider selection before onnxruntime is asked (models/execution-provider.ts). */
import test from 'ava';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { arch } from 'node:os';
import { dirname, join } from 'node:path';
import { readFile } from 'node:fs/promises';
import { candidates, createSession, cudaProviderLibrary, cudaSkipReason, nvidiaDeviceNodes } from '../models/execution-provider.js';
import { fittedModel, magneticTileTrain, sharedAvailable } from './helpers/fitted-model.js';

const maybe = sharedAvailable() ? test : test.skip;

test('candidates: auto tries cuda, webgpu, cpu; a named GPU falls back to the CPU; cpu is alone', (t) => {
  t.deepEqual(candidates('auto'), ['cuda', 'webgpu', 'cpu']);
  t.deepEqual(candidates('cuda'), ['cuda', 'cpu']);
  t.deepEqual(candidates('webgpu'), ['webgpu', 'cpu']);
  t.deepEqual(candidates('cpu'), ['cpu']);
});

test('cuda is skipped without an NVIDIA device, or without the provider library, each with its own reason', (t) => {
  const lib = '/opt/shelfwatch/node_modules/onnxruntime-node/bin/napi-v6/linux/x64/libonnxruntime_providers_cuda.so';
  t.is(cudaSkipReason([], lib), 'no NVIDIA GPU device found');
  t.is(cudaSkipReason([], null), 'no NVIDIA GPU device found');
  t.regex(cudaSkipReason(['/dev/nvidia0'], null) ?? '', /CUDA provider library is not installed \(reinstall with ONNXRUNTIME_NODE_INSTALL=cuda12; deploy\/GPU\.md\)/);
  t.is(cudaSkipReason(['/dev/nvidia0'], lib), null);
});

test('cudaProviderLibrary finds the file beside onnxruntime-node\'s own library, or says none', (t) => {
  const dir = join(dirname(createRequire(import.meta.url).resolve('onnxruntime-node/package.json')), 'bin', 'napi-v6', process.platform, arch());
  t.true(existsSync(dir), dir);
  const lib = join(dir, 'libonnxruntime_providers_cuda.so');
  t.is(cudaProviderLibrary(), existsSync(lib) ? lib : null);
});

maybe('asking for cuda on this machine ends on the CPU with the reason cuda was skipped', async (t) => {
  const want = cudaSkipReason(nvidiaDeviceNodes(), cudaProviderLibrary());
  if (want === null) return t.pass('this machine could really run CUDA');
  const bytes = await readFile(await fittedModel(await magneticTileTrain(40), { name: 'pipeline-test' }));
  const got = await createSession(bytes, { provider: 'cuda', intraOpThreads: 1 });
  t.is(got.provider, 'cpu');
  t.deepEqual(got.fallbacks, [{ provider: 'cuda', reason: want }]);
  await got.session.release();
});
