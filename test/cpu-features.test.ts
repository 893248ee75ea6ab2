import test from 'ava';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import ort from 'onnxruntime-node';
import { MOBILENETV2_INT8 } from '../models/backbone.js';
import { cpuFlags, int8NeedsExactPath, thisCpuNeedsExactInt8Path } from '../models/cpu-features.js';
import { createSession } from '../models/execution-provider.js';
import { encodeModel } from '../models/onnx/proto.js';
import { buildTapProbeGraph } from '../models/patchcore-graph.js';
import { preprocessImage } from '../models/preprocess.js';
import { MAGNETIC_TILE, sharedAvailable, testBackbone } from './helpers/fitted-model.js';

const CPUINFO = `processor\t: 0
vendor_id\t: GenuineIntel
flags\t\t: fpu vme sse2 avx avx2 avx512f avx512bw
bugs\t\t: spectre_v1

processor\t: 1
flags\t\t: fpu avx512_vnni
`;

test('cpuFlags reads the first processor’s flags', (t) => {
  const flags = cpuFlags(CPUINFO);
  t.true(flags.has('avx2') && flags.has('avx512bw'));
  t.false(flags.has('avx512_vnni'), 'only the first processor is read');
  t.is(cpuFlags('processor : 0\n').size, 0);
});

test('int8 needs the exact path on x64 without VNNI only', (t) => {
  t.true(int8NeedsExactPath('x64', new Set(['avx2', 'avx512bw'])), 'AVX2/AVX-512BW: VPMADDUBSW saturates');
  t.false(int8NeedsExactPath('x64', new Set(['avx2', 'avx512_vnni'])));
  t.false(int8NeedsExactPath('x64', new Set(['avx2', 'avx_vnni'])), 'AVX-VNNI (hybrid cores)');
  t.true(int8NeedsExactPath('x64', null), 'unreadable flags: the safe side');
  t.false(int8NeedsExactPath('arm64', new Set()), 'the switch only exists on x64');
});

test('the default int8 path gives the same backbone taps as the exact one on this CPU', async (t) => {
  if (!sharedAvailable()) return t.pass('../shared absent');
  t.log(`this CPU ${thisCpuNeedsExactInt8Path() ? 'needs' : 'does not need'} the exact int8 path`);
  const backbone = await testBackbone();
  const files = [join(MAGNETIC_TILE, 'test/good/exp1_num_116270.jpg'), join(MAGNETIC_TILE, 'test/uneven/exp0_num_461.jpg')];
  const batch = new Float32Array(2 * 150528);
  for (const [i, f] of files.entries()) {
    const img = await preprocessImage(readFileSync(f), { origin: f, size: 224, normalization: MOBILENETV2_INT8.normalization });
    batch.set(img.data, i * 150528);
  }
  const probe = encodeModel(buildTapProbeGraph(backbone.model, MOBILENETV2_INT8));
  const taps = async (int8: 'auto' | 'exact') => {
    const { session } = await createSession(probe, { provider: 'cpu', int8 });
    try {
      const out = await session.run({ input: new ort.Tensor('float32', batch, [2, 3, 224, 224]) });
      return [Array.from(out.tap0!.data as Float32Array), Array.from(out.tap1!.data as Float32Array)];
    } finally {
      await session.release();
    }
  };
  t.deepEqual(await taps('auto'), await taps('exact'));
});
