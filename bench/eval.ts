/**
 * Evaluation benchmark: `npx tsx bench/eval.ts [--quick] [--goods 10] [--train-per-goods 100]
 * [--test-good-per-goods 10] [--defect-per-goods 10] [--size 3000] [--coreset 0.01] [--data <dir>]`.
 *
 * Data: one generated GoodsAD-layout category (cigarette_box, 3 defect types) of size×size JPEGs,
 * by default 10 goods × 100 = 1000 train and 10 × (10 good + 3 × 10 defect) = 400 test images at
 * 3000×3000, written once under the OS temp dir and reused by later runs (`--quick`: 50 train,
 * 40 test). Generating the full set takes about 10 minutes on 2 cores (0.4 s per image).
 *
 * Prints, for a whole `runEval` (scan, fit, test, metrics, reports) without a cache:
 * the time split (decode CPU and wait, features, coreset, compile, thresholds, inference, metrics),
 * how many decodes used shrink-on-load; as a same-run baseline, the decode + preprocess time of a
 * handful of the images with and without shrink-on-load; then a second run with another coreset
 * ratio that takes the training features and test inputs from the cache of the first.
 */
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { runEval } from '../agent/commands/eval.js';
import { decodeImage } from '../models/image-decode.js';
import { IMAGENET_NORMALIZATION, toModelInput } from '../models/preprocess.js';
import { generateGoodsDataset } from '../pipelines/synthetic-goods.js';

const args = process.argv.slice(2);
const quick = args.includes('--quick');
function arg(name: string, fallback: number): number {
  const i = args.indexOf(name);
  if (i < 0) return fallback;
  const v = Number(args[i + 1]);
  if (!Number.isFinite(v) || v <= 0) throw new Error(`${name} needs a positive number, got '${args[i + 1]}'`);
  return v;
}
function argStr(name: string): string | undefined {
  const i = args.indexOf(name);
  return i < 0 ? undefined : args[i + 1];
}

const goods = arg('--goods', quick ? 2 : 10);
const trainPer = arg('--train-per-goods', quick ? 25 : 100);
const testGoodPer = arg('--test-good-per-goods', quick ? 5 : 10);
const defectPer = arg('--defect-per-goods', quick ? 5 : 10);
const size = arg('--size', 3000);
const coreset = arg('--coreset', 0.01);
const category = 'cigarette_box';
const defects = 3;

const here = fileURLToPath(new URL('.', import.meta.url));
const sharedBackbone = resolve(here, '../../shared/backbones/mobilenetv2-12-int8.onnx');
const env = { ...process.env };
if (!env.SHELFWATCH_BACKBONE && existsSync(sharedBackbone)) env.SHELFWATCH_BACKBONE = sharedBackbone;

const data = argStr('--data') ?? join(tmpdir(), `shelfwatch-bench-eval-${goods}g-${trainPer}t-${testGoodPer}n-${defectPer}d-${size}px`);
const marker = join(data, '.complete');
const s = (ms: number) => `${(ms / 1000).toFixed(1)} s`;

if (!existsSync(marker)) {
  const total = goods * (trainPer + testGoodPer + defectPer * defects);
  console.log(`generating ${total} images of ${size}×${size} into ${data} (once) …`);
  const t = performance.now();
  let last = 0;
  await generateGoodsDataset(data, {
    seed: 7,
    categories: [category],
    goodsPerCategory: goods,
    trainPerGoods: trainPer,
    testGoodPerGoods: testGoodPer,
    testDefectPerGoods: defectPer,
    size,
    onImage: (_img, done, n) => {
      if (performance.now() - last > 10_000) {
        last = performance.now();
        console.log(`  ${done}/${n}`);
      }
    },
  });
  await writeFile(marker, new Date().toISOString());
  console.log(`generated in ${s(performance.now() - t)}`);
} else {
  console.log(`reusing ${data}`);
}

const trainCount = goods * trainPer;
const testCount = goods * (testGoodPer + defectPer * defects);
const out = await mkdtemp(join(tmpdir(), 'shelfwatch-bench-eval-out-'));
try {
  console.log(`\nrun 1: ${trainCount} train + ${testCount} test images, coreset ${coreset}, no cache to start with`);
  const t1 = performance.now();
  const r1 = await runEval({ dataset: data, out: join(out, 'run1'), coreset, seed: 0, batch: 8, provider: 'cpu', json: true, env, log: () => {}, html: true });
  const wall1 = performance.now() - t1;
  const a = r1.result;
  const tm = a.timings;
  const c1 = a.modes[0]!.categories[0]!;
  console.log(`  wall ${s(wall1)} (evaluation ${s(tm.total)}; the rest is the layout scan and writing the reports)`);
  console.log(`  decode:     ${s(tm.decodeWait)} waited by the pipeline (${s(tm.decodeCpu)} summed over ${a.decode.images} concurrent decodes); shrink-on-load used by ${a.decode.shrunk}/${a.decode.images} decodes`);
  console.log(`  features:   ${s(tm.features)} (${a.backboneTrainImages} training images through the backbone)`);
  console.log(`  coreset:    ${s(tm.coreset)} (${c1.models[0]!.patches} patches → bank of ${c1.models[0]!.bankSize})`);
  console.log(`  compile:    ${s(tm.compile)}, thresholds ${s(tm.thresholds)} (${c1.models[0]!.validationImages} held-out images)`);
  console.log(`  inference:  ${s(tm.inference)} (${c1.counts.test} test images)`);
  console.log(`  metrics:    ${s(tm.metrics)} (pixels at ${c1.pixels?.size ?? '–'})`);
  const m = c1.metrics;
  const f = (v: (typeof m)['imageAuroc']) => (v.defined ? (v.value * 100).toFixed(1) : 'n/a');
  console.log(`  metrics:    image AUROC ${f(m.imageAuroc)}, image AP ${f(m.imageAp)}, pixel AUROC ${f(m.pixelAuroc)}, pixel AP ${f(m.pixelAp)}, PRO ${f(m.pro)}`);

  // Same-run baseline: decode + preprocess a handful of images with and without shrink-on-load.
  const sample = c1.images.slice(0, 5).map((r) => r.file);
  const timeDecode = async (shrink: boolean) => {
    let ms = 0;
    let factor = 1;
    for (const file of sample) {
      const bytes = await readFile(file);
      const t = performance.now();
      const img = await decodeImage(bytes, { origin: file, targetSize: shrink ? 224 : undefined });
      toModelInput(img, { size: 224, normalization: IMAGENET_NORMALIZATION });
      ms += performance.now() - t;
      factor = img.shrink;
    }
    return { perImage: ms / sample.length, factor };
  };
  await timeDecode(true); // warm-up
  const withShrink = await timeDecode(true);
  const without = await timeDecode(false);
  console.log(
    `\nbaseline (same run, ${sample.length} images, one at a time): decode + preprocess ${without.perImage.toFixed(0)} ms/image at full resolution vs ${withShrink.perImage.toFixed(0)} ms/image with shrink-on-load (factor ${withShrink.factor}) → ${(without.perImage / withShrink.perImage).toFixed(1)}×`,
  );

  console.log(`\nrun 2: coreset ${coreset * 2}, training features and test inputs from run 1's cache`);
  const t2 = performance.now();
  const r2 = await runEval({ dataset: data, out: join(out, 'run2'), cache: join(out, 'run1', '.cache'), coreset: coreset * 2, seed: 0, batch: 8, provider: 'cpu', json: true, env, log: () => {}, html: false });
  const b = r2.result;
  console.log(
    `  wall ${s(performance.now() - t2)}: ${b.backboneTrainImages} training images through the backbone, ${b.decode.images} decodes, ${b.decode.fromCache} inputs from cache; coreset ${s(b.timings.coreset)}, thresholds ${s(b.timings.thresholds)}, inference ${s(b.timings.inference)}, metrics ${s(b.timings.metrics)}`,
  );
  console.log(`  cache: ${(a.cache.bytesWritten / 2 ** 20).toFixed(0)} MiB written by run 1`);
} finally {
  await rm(out, { recursive: true, force: true });
}
