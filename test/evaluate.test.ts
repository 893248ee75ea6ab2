/**
 * `shelfwatch eval` end to end on small generated GoodsAD-layout datasets (256×256 images) and on
 * a subset of magnetic_tile, with the real backbone and runtime: layout errors stop the run,
 * results.json has every metric, the table shows the paper rows, a category without anomalous
 * images is n/a (never NaN), per-goods and crop modes side by side, the feature cache on a second
 * run, models reused from --models only when they match, and the HTML report is self-contained.
 */
import { runCli, type CliRun } from './helpers/cli.js';
import test from 'ava';
import { copyFile, mkdir, mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { runEval, type EvalCommandOptions } from '../agent/commands/eval.js';
import { labelRegions } from '../models/metrics/regions.js';
import { DatasetLayoutError, loadDataset } from '../pipelines/dataset.js';
import { loadMask } from '../pipelines/eval-masks.js';
import { generateGoodsDataset } from '../pipelines/synthetic-goods.js';
import { BACKBONE_PATH, MAGNETIC_TILE, SHARED, sharedAvailable } from './helpers/fitted-model.js';

const env = { ...process.env, SHELFWATCH_BACKBONE: BACKBONE_PATH, SOURCE_DATE_EPOCH: '1767225600' };
const METRICS = ['imageAuroc', 'imageAp', 'pixelAuroc', 'pixelAp', 'pro'] as const;

let work = '';
let dataset = '';
let firstOut = '';

test.before(async () => {
  work = await mkdtemp(join(tmpdir(), 'sw-eval-'));
  dataset = join(work, 'goods');
  // 2 categories × 2 goods × (12 train + 2 good + 1 per defect type) images of 256×256.
  await generateGoodsDataset(dataset, { seed: 3, categories: ['cigarette_box', 'drink_can'], goodsPerCategory: 2, trainPerGoods: 12, testGoodPerGoods: 2, testDefectPerGoods: 1, size: 256 });
});

const opts = (over: Partial<EvalCommandOptions>): EvalCommandOptions => ({
  dataset,
  out: join(work, 'out'),
  coreset: 0.02,
  seed: 0,
  batch: 8,
  provider: 'cpu',
  json: true,
  env,
  log: () => {},
  ...over,
});

/** The page without its base64 images (whose text may contain any letters, "NaN" included). */
const withoutImages = (html: string) => html.replace(/data:image\/jpeg;base64,[A-Za-z0-9+/=]+/g, '');

async function readJson(path: string) {
  return JSON.parse(await readFile(path, 'utf8'));
}

test.after.always(async () => {
  if (work) await rm(work, { recursive: true, force: true });
});

test.serial('layout errors stop the run: every problem at once, nothing evaluated', async (t) => {
  if (!sharedAvailable()) return t.pass('../shared absent');
  const bad = join(work, 'bad', 'food_box');
  await mkdir(join(bad, 'train', 'good'), { recursive: true });
  await mkdir(join(bad, 'test', 'dent'), { recursive: true });
  await mkdir(join(bad, 'ground_truth', 'scratch'), { recursive: true });
  const src = join(dataset, 'drink_can', 'train', 'good');
  const [a] = (await readdir(src)).sort();
  await copyFile(join(src, a!), join(bad, 'train', 'good', '101001.jpg'));
  await copyFile(join(src, a!), join(bad, 'test', 'dent', '101002.jpg')); // defect image without a mask
  const maskSrc = join(dataset, 'drink_can', 'ground_truth');
  const defect = (await readdir(maskSrc))[0]!;
  const m = (await readdir(join(maskSrc, defect)))[0]!;
  await copyFile(join(maskSrc, defect, m), join(bad, 'ground_truth', 'scratch', '101003_mask.png')); // orphan mask
  const out = join(work, 'bad-out');
  const err = await t.throwsAsync(runEval(opts({ dataset: join(work, 'bad'), out })), { instanceOf: DatasetLayoutError });
  t.true(err!.problems.length >= 2);
  t.regex(err!.message, /defect image without a mask/);
  t.regex(err!.message, /mask without an image/);
  t.false(existsSync(join(out, 'results.json')));
});

test.serial('category mode: results.json has every metric; the table shows the paper rows; the report is self-contained', async (t) => {
  if (!sharedAvailable()) return t.pass('../shared absent');
  firstOut = join(work, 'run1');
  const s = await runEval(opts({ out: firstOut }));
  const r = await readJson(s.files.json);
  t.is(r.settings.coreset, 0.02);
  t.is(r.settings.pixelSize, 224);
  t.is(r.modes.length, 1);
  t.is(r.modes[0].categories.length, 2);
  for (const c of r.modes[0].categories) {
    for (const k of METRICS) {
      t.is(typeof c.metrics[k], 'number', `${c.category} ${k}`);
      t.true(c.metrics[k] >= 0 && c.metrics[k] <= 1);
    }
    t.deepEqual(c.counts, { test: 2 * (2 + 3), anomalous: 6, normal: 4, skipped: 0 });
    t.is(c.byDefect.length, 3);
    for (const g of c.byDefect) {
      t.is(g.images, 2 + 4); // its two images + every good one
      for (const k of METRICS) t.is(typeof g.metrics[k], 'number');
    }
    t.deepEqual(c.byGoods.map((g: { goodsId: string }) => g.goodsId).length, 2);
    t.is(c.models.length, 1);
    t.regex(c.models[0].digest, /^[0-9a-f]{64}$/);
    t.is(c.models[0].trainImages + c.models[0].validationImages, 24);
    t.is(c.featureCache, 'miss');
    t.is(c.images.length, 10);
    t.true(c.pixels.anomalous > 0 && c.pixels.regions >= 6);
    t.true(c.curves.imageRoc.length >= 2 && c.curves.pixelPro.length >= 2);
  }
  for (const k of METRICS) t.is(r.modes[0].mean[k].outOf, 2);
  for (const k of ['decodeWait', 'decodeCpu', 'features', 'coreset', 'inference', 'metrics', 'total']) t.is(typeof r.timingsMs[k], 'number', k);
  t.is(r.backboneTrainImages, 44); // 2 × (24 − 2 held out)
  t.is(r.cache.featureMisses, 2);

  t.true(s.table.includes('PatchCore-1 % (paper)') && s.table.includes('PatchCore-100 % (paper)'));
  t.regex(s.table, /cigarette_box[\s\S]*98\.8/);
  t.false(s.table.includes('NaN'));
  const md = await readFile(s.files.markdown, 'utf8');
  t.true(md.includes('PatchCore-1 % (paper)') && md.includes('Per defect type'));

  const html = await readFile(s.files.html!, 'utf8');
  t.false(/(src|href)\s*=\s*["']?\s*(https?:)?\/\//i.test(html), 'no external src/href');
  t.false(html.includes('<script') || html.includes('<link'));
  t.is((html.match(/<svg /g) ?? []).length, 12); // 6 charts × 2 categories
  t.true(html.includes('data:image/jpeg;base64,'));
  t.false(withoutImages(html).includes('NaN'));
});

test.serial('feature cache: a second run with another coreset skips the backbone on training images', async (t) => {
  if (!sharedAvailable()) return t.pass('../shared absent');
  const first = await readJson(join(firstOut, 'results.json'));
  const s = await runEval(opts({ out: join(work, 'run2'), cache: join(firstOut, '.cache'), coreset: 0.05 }));
  const r = s.results;
  t.is(r.backboneTrainImages, 0);
  t.is(r.cache.featureHits, 2);
  t.is(r.cache.featureMisses, 0);
  // Held-out and test inputs come from the cache too: nothing decoded at all.
  t.is(r.decode.images, 0);
  t.is(r.decode.fromCache, 2 * (2 + 10));
  for (const c of r.modes[0].categories) {
    t.is(c.featureCache, 'hit');
    t.is(c.backboneTrainImages, 0);
    const before = first.modes[0].categories.find((x: { category: string }) => x.category === c.category);
    t.true(c.models[0].bankSize > before.models[0].bankSize);
    for (const k of METRICS) t.is(typeof c.metrics[k], 'number');
  }
});

test.serial('--models: reused when they match, refitted when the settings differ', async (t) => {
  if (!sharedAvailable()) return t.pass('../shared absent');
  const models = join(work, 'models');
  const cache = join(firstOut, '.cache');
  const base = { categories: ['drink_can'], models, cache };
  const a = await runEval(opts({ ...base, out: join(work, 'm1') }));
  const ma = a.results.modes[0]!.categories[0]!.models[0]!;
  t.false(ma.reused);
  t.truthy(ma.file);
  t.true(existsSync(ma.file!));

  const b = await runEval(opts({ ...base, out: join(work, 'm2') }));
  const cb = b.results.modes[0]!.categories[0]!;
  t.true(cb.models[0]!.reused);
  t.is(cb.models[0]!.digest, ma.digest);
  t.is(cb.featureCache, 'not-needed');
  t.deepEqual(cb.metrics, a.results.modes[0]!.categories[0]!.metrics);

  const c = await runEval(opts({ ...base, out: join(work, 'm3'), seed: 1 }));
  const mc = c.results.modes[0]!.categories[0]!.models[0]!;
  t.false(mc.reused);
  t.not(mc.digest, ma.digest);
  const d = await runEval(opts({ ...base, out: join(work, 'm4'), crop: 'auto' }));
  t.false(d.results.modes[0]!.categories[0]!.models[0]!.reused);
  t.is((await readdir(models)).filter((f) => f.endsWith('.onnx')).length, 3);
});

test.serial('a category without anomalous test images: metrics undefined with a clear message, n/a in the table', async (t) => {
  if (!sharedAvailable()) return t.pass('../shared absent');
  const root = join(work, 'normal-only', 'drink_can');
  for (const split of ['train', 'test']) {
    const from = join(dataset, 'drink_can', split, 'good');
    await mkdir(join(root, split, 'good'), { recursive: true });
    for (const f of await readdir(from)) await copyFile(join(from, f), join(root, split, 'good', f));
  }
  const s = await runEval(opts({ dataset: join(work, 'normal-only'), out: join(work, 'normal-out'), cache: false }));
  const c = s.results.modes[0]!.categories[0]!;
  for (const k of METRICS) t.is(c.metrics[k], null);
  t.regex(c.metrics.undefinedReasons!.imageAuroc!, /no anomalous image/);
  t.true(c.notes.some((n) => /drink_can: no anomalous test image/.test(n)));
  t.regex(s.table, /drink_can\s+this run\s+n\/a\[1\]/);
  t.regex(s.table, /\[1\] drink_can \(category\) img AUROC: no anomalous image/);
  t.false(s.table.includes('NaN'));
  t.false((await readFile(s.files.json, 'utf8')).includes('NaN'));
  t.false(withoutImages(await readFile(s.files.html!, 'utf8')).includes('NaN'));
});

test.serial('per-goods and crop modes run and are reported side by side', async (t) => {
  if (!sharedAvailable()) return t.pass('../shared absent');
  const s = await runEval(opts({ categories: ['cigarette_box'], out: join(work, 'modes'), cache: join(firstOut, '.cache'), modes: 'category,per-goods,crop', minGoodsTrain: 5 }));
  const r = s.results;
  t.deepEqual(r.modes.map((m) => m.mode), ['category', 'per-goods', 'crop']);
  const [cat, goods, crop] = r.modes.map((m) => m.categories[0]!);
  t.deepEqual(cat!.models.map((m) => m.key), ['category']);
  // Each goods id has 12 training images, one of them held out: its own model.
  t.deepEqual(goods!.models.map((m) => m.key).sort(), ['goods:601', 'goods:602']);
  t.true(goods!.byGoods.every((g) => g.model === 'own'));
  t.is(goods!.threshold, 1);
  for (const img of goods!.images) t.is(img.evalScore, img.score / img.threshold);
  // Per-goods banks are cut from the category's features (from the disk cache, loaded once).
  t.is(cat!.featureCache, 'hit');
  t.is(goods!.featureCache, 'shared');
  t.is(goods!.backboneTrainImages, 0);
  // Crop mode: tightened inputs (the product is narrower than the shelf picture), own features.
  t.true(crop!.images.filter((i) => i.crop !== null).length >= crop!.images.length / 2);
  t.is(crop!.featureCache, 'miss');
  t.is(crop!.backboneTrainImages, 22);
  // Comparable pixel metrics: the same ground-truth pixels in every mode.
  t.is(crop!.pixels!.anomalous, cat!.pixels!.anomalous);
  t.is(goods!.pixels!.regions, cat!.pixels!.regions);
  for (const c of [cat, goods, crop]) for (const k of METRICS) t.is(typeof c!.metrics[k], 'number');
  t.regex(s.table, /cigarette_box\s+this run \(category\)/);
  t.regex(s.table, /\n\s+this run \(per-goods\)/);
  t.regex(s.table, /\n\s+this run \(crop\)/);
  t.regex(s.table, /Δ \(crop\) vs PatchCore-1 %/);
});

test.serial('magnetic_tile subset (root is a category): native-size pixel metrics on the exact mask pixels', async (t) => {
  if (!sharedAvailable()) return t.pass('../shared absent');
  const root = join(work, 'magnetic_tile');
  const pick = async (from: string, to: string, n: number, masks?: string) => {
    await mkdir(join(root, to), { recursive: true });
    const files = (await readdir(join(MAGNETIC_TILE, from))).sort().slice(0, n);
    for (const f of files) {
      await copyFile(join(MAGNETIC_TILE, from, f), join(root, to, f));
      if (masks) {
        await mkdir(join(root, masks), { recursive: true });
        const m = f.replace(/\.jpg$/, '_mask.png');
        await copyFile(join(MAGNETIC_TILE, masks, m), join(root, masks, m));
      }
    }
    return files;
  };
  await pick('train/good', 'train/good', 20);
  await pick('test/good', 'test/good', 4);
  let maskPixels = 0;
  for (const d of ['blowhole', 'crack']) {
    for (const f of await pick(`test/${d}`, `test/${d}`, 2, `ground_truth/${d}`)) {
      const { data } = await sharp(join(root, 'ground_truth', d, f.replace(/\.jpg$/, '_mask.png'))).greyscale().raw().toBuffer({ resolveWithObject: true });
      for (const v of data) if (v !== 0) maskPixels++;
    }
  }
  const s = await runEval(opts({ dataset: root, out: join(work, 'mt-out'), pixelSize: 'native', cache: false, html: false }));
  const c = s.results.modes[0]!.categories[0]!;
  t.is(c.category, 'magnetic_tile');
  t.deepEqual(c.counts, { test: 8, anomalous: 4, normal: 4, skipped: 0 });
  t.is(c.pixels!.size, 'native');
  t.is(c.pixels!.anomalous, maskPixels);
  for (const k of METRICS) t.is(typeof c.metrics[k], 'number');
  t.false(s.table.includes('PatchCore-1 % (paper)'));
  t.is(s.files.html, null);
  t.false(existsSync(join(work, 'mt-out', 'report.html')));
  t.true((await stat(s.files.json)).size > 0);
});

test('masks on the pixel-metrics grid reproduce the reference counts of magnetic_tile exactly', async (t) => {
  if (!sharedAvailable()) return t.pass('../shared absent');
  const ref = await readJson(join(SHARED, 'reference', 'patchcore', 'end_to_end_magnetic_tile.json'));
  const run = ref.runs.narrow_r0_01_s0 ?? ref.runs['narrow_r0.01_s0'];
  const [cat] = await loadDataset(MAGNETIC_TILE, { checkImages: false });
  let pos224 = 0;
  let regions224 = 0;
  let posNative = 0;
  let regionsNative = 0;
  for (const img of cat!.test) {
    if (!img.mask) continue;
    const small = await loadMask(img.mask, { width: 224, height: 224 });
    const full = await loadMask(img.mask);
    for (const v of small.data) pos224 += v;
    for (const v of full.data) posNative += v;
    regions224 += labelRegions(small.data, 224, 224, 8).count;
    regionsNative += labelRegions(full.data, full.width, full.height, 8).count;
  }
  t.is(pos224, run.pixel_224.n_pos); // 1,717,372
  t.is(regions224, run.pixel_224.n_regions); // 457
  t.is(posNative, run.pixel_native.n_pos); // 3,539,881
  t.is(regionsNative, run.pixel_native.n_regions); // 462
});

/** `shelfwatch eval …` as a child process, as an operator runs it. */
function cliEval(args: string[]): Promise<CliRun> {
  return runCli(['eval', '--backbone', BACKBONE_PATH, ...args], { ...env, SHELFWATCH_DEBUG: '' });
}

test.serial('a category that fails is reported as failed, the others are evaluated, every output is written, the CLI exits 1', async (t) => {
  if (!sharedAvailable()) return t.pass('../shared absent');
  const { writeFile } = await import('node:fs/promises');
  const root = join(work, 'one-fails');
  await generateGoodsDataset(root, { seed: 3, categories: ['cigarette_box', 'drink_can'], goodsPerCategory: 1, trainPerGoods: 12, testGoodPerGoods: 2, testDefectPerGoods: 1, size: 256 });
  // drink_can's training JPEGs are truncated (their headers are fine, so the dataset scan passes them).
  const train = join(root, 'drink_can', 'train', 'good');
  for (const f of await readdir(train)) {
    const b = await readFile(join(train, f));
    await writeFile(join(train, f), b.subarray(0, Math.floor(b.length / 3)));
  }
  const s = await runEval(opts({ dataset: root, out: join(work, 'one-fails-out'), cache: false }));
  t.deepEqual(s.failed.map((f) => f.category), ['drink_can']);
  t.regex(s.failed[0]!.reason, /none of the \d+ training images could be decoded/);

  const r = await readJson(s.files.json);
  t.deepEqual(r.failed.map((f: { category: string }) => f.category), ['drink_can']);
  const [cig, can] = r.modes[0].categories;
  t.is(cig.category, 'cigarette_box');
  t.is(cig.failed, null);
  for (const k of METRICS) t.is(typeof cig.metrics[k], 'number');
  t.is(can.category, 'drink_can');
  t.regex(can.failed, /could be decoded/);
  t.is(can.threshold, null);
  for (const k of METRICS) {
    t.is(can.metrics[k], null);
    t.regex(can.metrics.undefinedReasons[k], /^evaluation failed: .*could be decoded/);
  }
  t.deepEqual(r.modes[0].mean.imageAuroc.outOf, 2);
  t.deepEqual(r.modes[0].mean.imageAuroc.categories, 1);
  t.regex(s.table, /drink_can\s+this run\s+failed\[\d+\]/);
  t.regex(s.table, /FAILED: 1 category evaluation\(s\) \(drink_can\)/);
  const md = await readFile(s.files.markdown, 'utf8');
  t.regex(md, /## drink_can \(category\)\n\n\*\*Evaluation failed:\*\* .*could be decoded/);
  t.regex(md, /## cigarette_box \(category\)\n\n\d+ test images/);
  const html = withoutImages(await readFile(s.files.html!, 'utf8'));
  t.regex(html, /<p class="note">evaluation failed: .*could be decoded<\/p>/);
  t.false(html.includes('NaN'));
  t.false((await readFile(s.files.json, 'utf8')).includes('NaN'));

  // The command: outputs written, exit status 1, the failure on stderr.
  const out = join(work, 'one-fails-cli');
  const run = await cliEval(['--dataset', root, '--out', out, '--coreset', '0.05', '--no-cache', '--no-html', '--json']);
  t.is(run.code, 1, run.stderr);
  t.regex(run.stderr, /shelfwatch: eval: drink_can failed: .*could be decoded/);
  t.regex(run.stderr, /1 category evaluation\(s\) failed/);
  t.deepEqual(JSON.parse(run.stdout).failed.map((f: { category: string }) => f.category), ['drink_can']);
  t.true(existsSync(join(out, 'results.json')) && existsSync(join(out, 'results.md')));
});

test.serial('--out that holds an earlier run: refused without --force, overwritten with it', async (t) => {
  if (!sharedAvailable()) return t.pass('../shared absent');
  const out = join(work, 'force-out');
  const base = { categories: ['cigarette_box'], cache: false as const, html: false, out };
  const first = await runEval(opts(base));
  const before = await readFile(first.files.json, 'utf8');
  await t.throwsAsync(runEval(opts({ ...base, coreset: 0.05 })), { message: /--out .*force-out already holds the results of an earlier run \(results\.json, results\.md\); pass --force to overwrite them/ });
  t.is(await readFile(first.files.json, 'utf8'), before, 'the earlier results are untouched');
  const refused = await cliEval(['--dataset', dataset, '--category', 'cigarette_box', '--out', out, '--coreset', '0.05', '--no-cache', '--no-html']);
  t.not(refused.code, 0);
  t.regex(refused.stderr, /^shelfwatch: --out .* already holds the results of an earlier run .*pass --force/m);
  t.is(await readFile(first.files.json, 'utf8'), before);

  const forced = await runEval(opts({ ...base, coreset: 0.05, force: true }));
  t.is(forced.results.settings.coreset, 0.05);
  t.is((await readJson(join(out, 'results.json'))).settings.coreset, 0.05);
});
