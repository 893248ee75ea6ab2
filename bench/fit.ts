/**
 * `npm run bench:fit [-- --images 800]` — fits PatchCore-1 % on 800 images of 900×900 (the bar:
 * at most 60 s and 4 GiB) and prints the time split (decode, features, coreset, compile,
 * thresholds) and the peak memory. The images are real magnetic_tile photos resized to 900×900
 * JPEGs (mirrored copies beyond the 762 originals), written once to the OS temp dir.
 *
 * Baseline in the same run: on the patches of the first `--baseline-images` images (default 200,
 * about the reference's 164 k patches), the lazy greedy k-center that fit runs against the naive
 * one (checked to select the same points).
 */
import { existsSync } from 'node:fs';
import { mkdir, readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { runFit } from '../agent/commands/fit.js';
import { selectBackbone } from '../agent/backbones.js';
import { kCenterGreedyNaive, prepareCoresetInput } from '../models/coreset.js';
import { kCenterGreedyLazy } from '../models/coreset-lazy.js';
import { extractFeatures } from '../models/fit.js';
import { preprocessedBatches } from '../pipelines/image-files.js';
import { BACKBONE_PATH, MAGNETIC_TILE, sharedAvailable } from '../test/helpers/fitted-model.js';

function arg(name: string, fallback: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : fallback;
}

async function makeImages(n: number): Promise<string> {
  const dir = join(tmpdir(), `shelfwatch-bench-fit-${n}`);
  if (existsSync(dir) && (await readdir(dir)).length >= n) return dir;
  await mkdir(dir, { recursive: true });
  const src = join(MAGNETIC_TILE, 'train', 'good');
  const files = (await readdir(src)).filter((f) => f.endsWith('.jpg')).sort();
  for (let i = 0; i < n; i++) {
    const f = files[i % files.length]!;
    let img = sharp(join(src, f)).resize(900, 900, { fit: 'fill' });
    if (i >= files.length) img = img.flop();
    await img.jpeg({ quality: 90 }).toFile(join(dir, `img${String(i).padStart(4, '0')}.jpg`));
  }
  return dir;
}

async function main() {
  if (!sharedAvailable()) throw new Error('this benchmark needs ../shared (backbone and magnetic_tile)');
  const n = arg('images', 800);
  const dir = await makeImages(n);
  const out = join(tmpdir(), 'shelfwatch-bench-fit.onnx');
  const env = { ...process.env, SHELFWATCH_BACKBONE: BACKBONE_PATH };
  const s = await runFit({ images: [dir], out, holdout: 0.1, coreset: 0.01, seed: 0, projection: 'jl', batch: 8, provider: 'cpu', json: true, env, log: () => {} });
  const t = s.timingsMs;
  const rssMiB = process.resourceUsage().maxRSS / 1024;
  console.log(`fit of ${n} images of 900×900 (${s.trainImages} in the bank, ${s.validationImages} held out):`);
  console.log(`  ${s.patches} patches → ${s.memoryBank} memory entries`);
  console.log(`  total ${(t.total / 1000).toFixed(1)} s (bar 60 s), peak RSS ${rssMiB.toFixed(0)} MiB (bar 4096 MiB)`);
  console.log(`  split: decode+preprocess ${(t.decode / 1000).toFixed(1)} s (summed over up to 4 overlapping loads) | features ${(t.features / 1000).toFixed(1)} s | coreset ${(t.coreset / 1000).toFixed(1)} s | compile ${(t.compile / 1000).toFixed(2)} s | thresholds ${(t.validation / 1000).toFixed(1)} s`);
  console.log('  reference (independent PyTorch, same machine size): coreset 1 % of 164 k patches in 3 s');
  await naiveBaseline(dir, arg('baseline-images', 200));
}

/** Lazy vs naive k-center on the patches of the first `images` images (same projection and seed as the fit). */
async function naiveBaseline(dir: string, images: number): Promise<void> {
  const backbone = await selectBackbone({ file: BACKBONE_PATH });
  const files = (await readdir(dir)).sort().slice(0, images).map((f) => join(dir, f));
  const d = backbone.descriptor;
  const embedded = await extractFeatures(backbone, preprocessedBatches(files, { size: d.inputSize, normalization: d.normalization, batchSize: 8 }), files.length);
  const n = embedded.images * embedded.patchesPerImage;
  const input = prepareCoresetInput(embedded.features, n, embedded.dim, { ratio: 0.01, seed: 0, projection: 'jl' });
  const time = <T,>(f: () => T): [T, number] => {
    const t = performance.now();
    const r = f();
    return [r, performance.now() - t];
  };
  const [lazy, lazyMs] = time(() => kCenterGreedyLazy(input.points, n, input.dim, input.m, input.startIndex));
  const [naive, naiveMs] = time(() => kCenterGreedyNaive(input.points, n, input.dim, input.m, input.startIndex));
  const same = lazy.selected.every((v, i) => v === naive.selected[i]);
  const s = (ms: number) => `${(ms / 1000).toFixed(2)} s`;
  console.log(
    `baseline, ${images} images (${n} patches → ${input.m}): lazy k-center (what fit runs) ${s(lazyMs)}, ` +
      `naive ${s(naiveMs)} (lazy ${(naiveMs / lazyMs).toFixed(1)}× faster than naive; same selection: ${same})`,
  );
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
