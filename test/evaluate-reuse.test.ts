/**
 * What `shelfwatch eval` may reuse from an earlier run, and when it must not: models from
 * `--models` only when they were fitted with the same preprocessing and features (shrink-on-load,
 * normalisation, the descriptor's taps / embedDim / pretrainEmbedDim; a model that does not record
 * them is refitted), train features from the cache only for the same descriptor feature fields
 * (and with the expected shape), model inputs from the cache only for the same file bytes; and
 * what the pixel metrics' memory budget charges against what they really hold.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import sharp from 'sharp';
import { runEval, type EvalCommandOptions } from '../agent/commands/eval.js';
import { MOBILENETV2_INT8 } from '../models/backbone.js';
import { decodeModel, encodeModel } from '../models/onnx/proto.js';
import { EvalCache, type PreprocessKey } from '../pipelines/feature-cache.js';
import { generateGoodsDataset } from '../pipelines/synthetic-goods.js';
import { BACKBONE_PATH, sharedAvailable } from './helpers/fitted-model.js';

const env = { ...process.env, SHELFWATCH_BACKBONE: BACKBONE_PATH, SOURCE_DATE_EPOCH: '1767225600' };

let work = '';
let dataset = '';

test.before(async () => {
  work = await mkdtemp(join(tmpdir(), 'sw-eval-reuse-'));
  dataset = join(work, 'goods');
  // One category, one goods id: 12 train + 2 good + 1 per defect type, 256×256.
  await generateGoodsDataset(dataset, { seed: 3, categories: ['cigarette_box'], goodsPerCategory: 1, trainPerGoods: 12, testGoodPerGoods: 2, testDefectPerGoods: 1, size: 256 });
});

test.after.always(async () => {
  if (work) await rm(work, { recursive: true, force: true });
});

let outs = 0;
const opts = (over: Partial<EvalCommandOptions>): EvalCommandOptions => ({
  dataset,
  out: join(work, `out-${++outs}`),
  coreset: 0.05,
  seed: 0,
  batch: 8,
  provider: 'cpu',
  json: true,
  html: false,
  env,
  log: () => {},
  ...over,
});

const category = (r: Awaited<ReturnType<typeof runEval>>) => r.results.modes[0]!.categories[0]!;
const onnxIn = async (dir: string) => (await readdir(dir)).filter((f) => f.endsWith('.onnx')).sort();

test.serial('--models: a model fitted with other shrink-on-load is refitted; one without a preprocessing record too', async (t) => {
  if (!sharedAvailable()) return t.pass('../shared absent');
  const models = join(work, 'models-shrink');
  // Input 32 on 256-px JPEGs: shrink-on-load applies (the decode is scaled down).
  const base = { inputSize: 32, cache: false as const, models };
  const full = category(await runEval(opts({ ...base, shrinkOnLoad: false })));
  t.false(full.models[0]!.reused);

  const logs: string[] = [];
  const r = await runEval(opts({ ...base, shrinkOnLoad: true, json: false, log: (l) => logs.push(l) }));
  const shrunk = category(r);
  t.true(r.results.decode.shrunk > 0);
  t.false(shrunk.models[0]!.reused, 'a full-resolution model must not serve a shrink-on-load run');
  t.not(shrunk.models[0]!.digest, full.models[0]!.digest);
  t.true(logs.some((l) => /not reusing .*shrink-on-load off, this run has it on/.test(l)), logs.join('\n'));
  // Both variants are kept side by side.
  t.is((await onnxIn(models)).length, 2);

  // The same settings again: reused.
  const again = category(await runEval(opts({ ...base, shrinkOnLoad: true })));
  t.true(again.models[0]!.reused);
  t.is(again.models[0]!.digest, shrunk.models[0]!.digest);
  t.deepEqual(again.metrics, shrunk.metrics);

  // Models that do not record their preprocessing (older files): unknown, so refitted.
  for (const f of await onnxIn(models)) {
    const model = decodeModel(await readFile(join(models, f)), f);
    t.true(model.metadataProps!.some((p) => p.key === 'shelfwatch.eval'), `${f} records its preprocessing`);
    model.metadataProps = model.metadataProps!.filter((p) => p.key !== 'shelfwatch.eval');
    await writeFile(join(models, f), encodeModel(model));
  }
  const unknown = category(await runEval(opts({ ...base, shrinkOnLoad: true })));
  t.false(unknown.models[0]!.reused);
  t.deepEqual(unknown.models[0]!.thresholds, shrunk.models[0]!.thresholds);
});

test.serial('same backbone file, other descriptor (pooling, normalisation): no stale train features, no reused model', async (t) => {
  if (!sharedAvailable()) return t.pass('../shared absent');
  const { urls: _urls, ...base } = MOBILENETV2_INT8;
  const descA = join(work, 'desc-a.json');
  const descB = join(work, 'desc-b.json');
  const descN = join(work, 'desc-n.json');
  await writeFile(descA, JSON.stringify({ ...base, id: 'mnv2-concat' }));
  // Same ONNX, each tap pooled to 64 then to 128 (the dimension of A): same shapes, other features.
  await writeFile(descB, JSON.stringify({ ...base, id: 'mnv2-pool64', embedDim: 128, pretrainEmbedDim: 64 }));
  await writeFile(descN, JSON.stringify({ ...base, id: 'mnv2-norm', normalization: { mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5] } }));
  const cache = join(work, 'cache-desc');
  const models = join(work, 'models-desc');

  const a = category(await runEval(opts({ backboneId: descA, cache, models })));
  t.is(a.featureCache, 'miss');
  t.false(a.models[0]!.reused);

  const b = category(await runEval(opts({ backboneId: descB, cache, models })));
  t.is(b.featureCache, 'miss', 'the features of another pooling must not come from the cache');
  t.false(b.models[0]!.reused, 'a model of another pooling must not be reused');
  const fresh = category(await runEval(opts({ backboneId: descB, cache: false })));
  t.deepEqual(b.models[0]!.thresholds, fresh.models[0]!.thresholds);
  t.deepEqual(b.metrics, fresh.metrics);

  const n = category(await runEval(opts({ backboneId: descN, cache, models })));
  t.false(n.models[0]!.reused, 'a model of another normalisation must not be reused');
  t.notDeepEqual(n.models[0]!.thresholds, a.models[0]!.thresholds);

  // And A again: its own cache entry and model are still there and used.
  const a2 = category(await runEval(opts({ backboneId: descA, cache, models })));
  t.true(a2.models[0]!.reused);
  t.is(a2.models[0]!.digest, a.models[0]!.digest);
});

test.serial('input cache: an image rewritten with the same size and mtime is decoded again', async (t) => {
  if (!sharedAvailable()) return t.pass('../shared absent');
  const root = join(work, 'bytes');
  await generateGoodsDataset(root, { seed: 3, categories: ['cigarette_box'], goodsPerCategory: 1, trainPerGoods: 12, testGoodPerGoods: 2, testDefectPerGoods: 1, size: 256 });
  const cat = join(root, 'cigarette_box');
  const goodDir = join(cat, 'test', 'good');
  const [first] = (await readdir(goodDir)).sort();
  const jpg = join(goodDir, first!);
  const tif = jpg.replace(/\.jpg$/, '.tif');
  // Uncompressed TIFF: any other picture of the same size has the same byte length.
  await sharp(jpg).tiff({ compression: 'none' }).toFile(tif);
  await rm(jpg);
  const when = new Date('2024-01-01T00:00:00Z');
  await utimes(tif, when, when);
  const before = await stat(tif);
  const name = `test/good/${first!.replace(/\.jpg$/, '.tif')}`;
  const scoreOf = (r: Awaited<ReturnType<typeof runEval>>) => category(r).images.find((i) => i.name === name)!.score;
  const cache = join(work, 'cache-bytes');

  const a = await runEval(opts({ dataset: root, cache }));
  const defect = (await readdir(join(cat, 'test'))).find((d) => d !== 'good')!;
  const other = (await readdir(join(cat, 'test', defect)))[0]!;
  await writeFile(tif, await sharp(join(cat, 'test', defect, other)).flop().tiff({ compression: 'none' }).toBuffer());
  await utimes(tif, when, when);
  const after = await stat(tif);
  t.is(after.size, before.size);
  t.is(after.mtimeMs, before.mtimeMs);

  const b = await runEval(opts({ dataset: root, cache }));
  const c = await runEval(opts({ dataset: root, cache: false }));
  t.not(scoreOf(c), scoreOf(a), 'the new picture scores differently');
  t.is(scoreOf(b), scoreOf(c), 'the cached input of the old bytes must not be served');
  // Every other input still comes from the cache.
  t.is(b.results.decode.images, 1);
  t.true(b.results.decode.fromCache > 0);
});

test('feature cache: an entry whose features do not have the expected shape is a miss', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'sw-feature-shape-'));
  try {
    const cache = new EvalCache(dir);
    const pre: PreprocessKey = { backboneSha256: 'a'.repeat(64), inputSize: 32, normalization: { mean: [0, 0, 0], std: [1, 1, 1] }, crop: 'none', shrinkOnLoad: true };
    const features = { input: 'input', taps: [], embedDim: null, pretrainEmbedDim: null };
    const key = EvalCache.featuresKey(pre, features, 'b'.repeat(64));
    // 2 images × 16 patches × 8 dims.
    await cache.writeFeatures(key, ['x.jpg', 'y.jpg'], [], { features: new Float32Array(2 * 16 * 8), images: 2, patchesPerImage: 16, dim: 8 });
    t.truthy(await cache.readFeatures(key, ['x.jpg', 'y.jpg'], { patchesPerImage: 16, dim: 8 }));
    t.is(await cache.readFeatures(key, ['x.jpg', 'y.jpg'], { patchesPerImage: 16, dim: 4 }), null);
    t.is(await cache.readFeatures(key, ['x.jpg', 'y.jpg'], { patchesPerImage: 32, dim: 8 }), null);
    // Other descriptor feature fields: another key.
    t.not(EvalCache.featuresKey(pre, { ...features, embedDim: 128, pretrainEmbedDim: 64 }, 'b'.repeat(64)), key);
    t.not(EvalCache.featuresKey(pre, { ...features, input: 'images' }, 'b'.repeat(64)), key);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

/**
 * The measurement behind METRIC_BYTES_PER_PIXEL, small: in a fresh process (so that its peak RSS
 * is the metrics' own), computeMetrics over 48 images at 512² (12.6 M pixels), a third of them
 * with a mask. The budget must charge at least what the metrics hold at their peak.
 */
test('pixel metrics memory: the budget charges at least the measured peak', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'sw-metrics-mem-'));
  try {
    const url = (p: string) => pathToFileURL(resolve(p)).href;
    const script = `
      import sharp from 'sharp';
      sharp.cache(false);
      const { computeMetrics, metricsMemory } = await import(${JSON.stringify(url('pipelines/eval-metrics.ts'))});
      const N = 48, P = 512, S = 224, MW = 768;
      const mask = ${JSON.stringify(join(dir, 'm.png'))};
      const m = Buffer.alloc(MW * MW);
      for (let y = 200; y < 330; y++) for (let x = 300; x < 460; x++) m[y * MW + x] = 255;
      await sharp(m, { raw: { width: MW, height: MW, channels: 1 } }).png().toFile(mask);
      let seed = 1;
      const rnd = () => (seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32;
      const records = [], maps = new Map();
      for (let i = 0; i < N; i++) {
        const label = i % 3 === 0 ? 1 : 0;
        const r = { name: 'img' + i, file: 'img' + i + '.jpg', defect: label ? (i % 2 ? 'dent' : 'scratch') : null, goodsId: String(i % 2), label,
          score: rnd() + label, threshold: 1, evalScore: rnd() + label, model: 'category', mask: label ? mask : null,
          placement: { crop: null, sourceWidth: MW, sourceHeight: MW, shrink: 1 } };
        const map = new Float32Array(S * S);
        for (let j = 0; j < map.length; j++) map[j] = rnd();
        records.push(r);
        maps.set(r, map);
      }
      globalThis.gc();
      const rss0 = process.memoryUsage().rss;
      const out = await computeMetrics({ settings: { inputSize: S, pixelSize: P }, o: {} }, { name: 'c', root: '.', train: [], test: [], defects: [] },
        { name: 'category', perGoods: false, crop: 'none' }, records, maps, []);
      if (!out.metrics.pixelAuroc.defined) throw new Error('pixel metrics were not computed');
      const grown = process.resourceUsage().maxRSS * 1024 - rss0;
      console.log(JSON.stringify({ pixels: N * P * P, grown, charged: metricsMemory(records, P).bytes }));
    `;
    const child = spawn(process.execPath, ['--expose-gc', '--import', 'tsx', '--input-type=module', '-e', script], { cwd: process.cwd(), stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
    child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
    const code = await new Promise<number | null>((done) => child.on('close', done));
    t.is(code, 0, stderr);
    const { pixels, grown, charged } = JSON.parse(stdout.trim().split('\n').pop()!) as { pixels: number; grown: number; charged: number };
    t.log(`${(grown / pixels).toFixed(1)} bytes per pixel at the peak; charged ${(charged / pixels).toFixed(1)}`);
    // The accumulator alone holds more than the 4 bytes per pixel the budget used to charge…
    t.true(grown > 4 * pixels, `grew ${grown} bytes for ${pixels} pixels`);
    // …and the budget now charges at least the peak (allowing 32 MiB for what any run holds
    // besides the metrics: V8's heap growth, malloc arenas).
    t.true(charged + 32 * 2 ** 20 >= grown, `charged ${charged} bytes, the peak grew by ${grown}`);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('pixel metrics memory: over the budget, pixel metrics are undefined and the note gives the real cost', async (t) => {
  const { computeMetrics, METRIC_BYTES_PER_PIXEL } = await import('../pipelines/eval-metrics.js');
  const S = 32;
  const P = 1024;
  const records = [0, 1].map((i) => ({
    name: `img${i}`, file: `img${i}.jpg`, defect: null, goodsId: null, label: 0 as const, score: i, threshold: 1, evalScore: i,
    model: 'category', mask: null, placement: { crop: null, sourceWidth: P, sourceHeight: P, shrink: 1 },
  }));
  const maps = new Map(records.map((r) => [r, new Float32Array(S * S)]));
  const pixels = 2 * P * P;
  const notes: string[] = [];
  // Twice what the old accounting (4 bytes per pixel) charged: still not enough.
  const out = await computeMetrics(
    { settings: { inputSize: S, pixelSize: P }, o: { maxMetricBytes: 8 * pixels } },
    { name: 'c', root: '.', train: [], test: [], defects: [] },
    { name: 'category', perGoods: false, crop: 'none' },
    records,
    maps,
    notes,
  );
  t.false(out.metrics.pixelAuroc.defined);
  const gib = ((pixels * METRIC_BYTES_PER_PIXEL) / 2 ** 30).toFixed(1);
  t.true(notes.some((n) => n.includes(`would hold 2 M pixels (about ${gib} GiB at ${METRIC_BYTES_PER_PIXEL} bytes per pixel)`)), notes.join('\n'));
});
