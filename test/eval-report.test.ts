/**
 * The evaluator's outputs on hand-made results: the terminal table beside the paper (known
 * values, "–" for unknown ones, differences, "n/a" with its reason instead of NaN), results.json
 * (nulls, never NaN), results.md, the HTML report's charts (self-contained); plus the geometry
 * helpers that put anomaly maps and masks on the pixel-metrics grid.
 */
import test from 'ava';
import { definedMetric, undefinedMetric, type MetricValue } from '../models/metrics/index.js';
import { lineChart, renderHtmlReport, scoreHistogram } from '../pipelines/eval-html.js';
import { formatTerminalTable, resultsJson, resultsMarkdown } from '../pipelines/eval-report.js';
import { placeMap } from '../pipelines/eval-inputs.js';
import { nearestIndex, resizeMaskNearest } from '../pipelines/eval-masks.js';
import { meanOf } from '../pipelines/eval-metrics.js';
import { modelMatches } from '../pipelines/eval-models.js';
import { METRIC_KEYS, modeOf, parseModes, type CategoryResult, type EvaluationResult, type MetricSet } from '../pipelines/eval-types.js';
import { PATCHCORE_1, PATCHCORE_100 } from '../pipelines/paper-results.js';

const d = definedMetric;
const noAnomalous = undefinedMetric('no anomalous image');

function metrics(values: Partial<Record<keyof MetricSet, MetricValue>>): MetricSet {
  return { imageAuroc: d(0.9), imageAp: d(0.8), pixelAuroc: d(0.95), pixelAp: d(0.4), pro: d(0.7), ...values };
}

function category(name: string, m: MetricSet, notes: string[] = []): CategoryResult {
  const zero = { decodeWait: 0, decodeCpu: 0, features: 0, coreset: 0, compile: 0, thresholds: 0, inference: 0, metrics: 0 };
  return {
    category: name,
    mode: 'category',
    metrics: m,
    counts: { test: 4, anomalous: 2, normal: 2, skipped: 0 },
    pixels: { size: '224x224', anomalous: 100, normal: 1000, regions: 2 },
    byDefect: [{ defect: 'dent', metrics: m, images: 3, anomalous: 1, normal: 2 }],
    byGoods: [],
    threshold: 1.5,
    models: [],
    images: [],
    curves: { imageRoc: [], imagePr: [], pixelRoc: [], pixelPr: [], pixelPro: [] },
    examples: [],
    notes,
    skipped: [],
    timings: zero,
    backboneTrainImages: 0,
    featureCache: 'miss',
  };
}

function result(cats: CategoryResult[], modeNames: string[] = ['category']): EvaluationResult {
  const modes = modeNames.map((n) => {
    const mode = parseModes(n)[0]!;
    const categories = cats.map((c) => ({ ...c, mode: n }));
    const mean = Object.fromEntries(METRIC_KEYS.map((k) => [k, meanOf(categories.map((c) => c.metrics[k]))])) as EvaluationResult['modes'][0]['mean'];
    return { mode, categories, mean };
  });
  return {
    settings: {
      backbone: { id: 'mobilenetv2-12-int8', sha256: 'c'.repeat(64) },
      inputSize: 224,
      coreset: 0.01,
      seed: 0,
      projection: 'jl',
      holdout: 0.1,
      pixelSize: 224,
      minGoodsTrain: 10,
      shrinkOnLoad: true,
      modes: modeNames,
      batch: 8,
    },
    modes,
    cache: { featureHits: 0, featureMisses: 1, inputHits: 0, inputMisses: 4, bytesWritten: 0, dir: null },
    decode: { images: 4, shrunk: 0, fromCache: 0 },
    timings: { decodeWait: 1, decodeCpu: 2, features: 3, coreset: 4, compile: 5, thresholds: 6, inference: 7, metrics: 8, total: 40 },
    backboneTrainImages: 10,
    provider: 'cpu',
  };
}

const ctx = { dataset: '/data/goodsad', createdAt: '2026-01-01T00:00:00.000Z' };

test('terminal table: this run beside PatchCore-1 % and -100 % with differences', (t) => {
  const r = result([category('cigarette_box', metrics({ imageAuroc: d(0.975) })), category('drink_can', metrics({}))]);
  const table = formatTerminalTable(r);
  t.true(table.includes(PATCHCORE_1.label));
  t.true(table.includes(PATCHCORE_100.label));
  // cigarette_box: 97.5 here, 98.8 in the paper → −1.3
  const lines = table.split('\n');
  const cig = lines.findIndex((l) => l.startsWith('cigarette_box'));
  t.regex(lines[cig]!, /97\.5/);
  t.regex(lines[cig + 1]!, /PatchCore-1 % \(paper\)\s+98\.8\s+–\s+–\s+–\s+–/);
  t.regex(lines[cig + 2]!, /Δ vs PatchCore-1 %\s+-1\.3\s+–/);
  // mean: (97.5 + 90) / 2 = 93.75 → "93.8"; paper means 81.4 / 97.0 / 51.6 / 80.5 and 85.5 / 98.4 / 53.8 / 89.9
  t.regex(table, /mean \(2\)\s+this run\s+93\.8\s+80\.0\s+95\.0\s+40\.0\s+70\.0/);
  t.regex(table, /PatchCore-1 % \(paper\)\s+81\.4\s+–\s+97\.0\s+51\.6\s+80\.5/);
  t.regex(table, /PatchCore-100 % \(paper\)\s+85\.5\s+–\s+98\.4\s+53\.8\s+89\.9/);
  t.regex(table, /Δ vs PatchCore-100 %\s+\+8\.3\s+–\s+-3\.4\s+-13\.8\s+-19\.9/);
  t.true(table.includes('six categories'));
  t.false(table.includes('NaN'));
});

test('terminal table: an undefined metric is n/a with its reason; a partial mean is marked', (t) => {
  const r = result([
    category('cigarette_box', metrics({ imageAuroc: noAnomalous, imageAp: noAnomalous, pixelAuroc: noAnomalous, pixelAp: noAnomalous, pro: noAnomalous })),
    category('drink_can', metrics({})),
  ]);
  const table = formatTerminalTable(r);
  t.false(table.includes('NaN'));
  t.regex(table, /cigarette_box\s+this run\s+n\/a\[1\]/);
  t.regex(table, /\[1\] cigarette_box \(category\) img AUROC: no anomalous image/);
  // The mean is drink_can's alone, flagged as such.
  t.regex(table, /mean \(2\)\s+this run\s+90\.0\[\d+\]/);
  t.regex(table, /mean over 1 of 2 categories/);
  // Δ against an undefined value is "–", never a number.
  t.regex(table, /Δ vs PatchCore-1 %\s+–/);
  const json = resultsJson(r, ctx);
  const text = JSON.stringify(json);
  t.false(text.includes('NaN'));
  const cig = json.modes[0]!.categories[0]!;
  t.is(cig.metrics.imageAuroc, null);
  t.is(cig.metrics.undefinedReasons?.imageAuroc, 'no anomalous image');
  t.deepEqual(json.modes[0]!.mean.imageAuroc, { value: 0.9, categories: 1, outOf: 2 });
});

test('terminal table: no paper rows for categories the paper does not have; several modes side by side', (t) => {
  const r = result([category('magnetic_tile', metrics({}))], ['category', 'per-goods', 'crop']);
  const table = formatTerminalTable(r);
  t.false(table.includes('PatchCore-1 % (paper)'));
  t.true(table.includes('not GoodsAD categories'));
  t.regex(table, /magnetic_tile\s+this run \(category\)/);
  t.regex(table, /this run \(per-goods\)/);
  t.regex(table, /this run \(crop\)/);
  const md = resultsMarkdown(r, ctx);
  t.true(md.includes('| magnetic_tile | this run (category) | 90.0 |'));
  t.true(md.includes('## magnetic_tile (per-goods)'));
});

test('html report: inline SVG charts, no external reference', async (t) => {
  const c = category('drink_can', metrics({}));
  c.curves.imageRoc = [{ x: 0, y: 0, threshold: Infinity }, { x: 0.5, y: 1, threshold: 1 }, { x: 1, y: 1, threshold: 0 }];
  c.images = [0, 1, 2, 3].map((i) => ({
    name: `test/x/${i}.jpg`, file: `/nonexistent/${i}.jpg`, defect: i < 2 ? 'dent' : null, goodsId: null, label: (i < 2 ? 1 : 0) as 0 | 1,
    score: i, threshold: 1.5, evalScore: i, model: 'category', mask: null, placement: { crop: null, sourceWidth: 10, sourceHeight: 10, shrink: 1 },
  }));
  const html = await renderHtmlReport(result([c]), ctx);
  t.true(html.startsWith('<!DOCTYPE html>'));
  t.is((html.match(/<svg /g) ?? []).length, 6);
  t.false(/(src|href)\s*=\s*["']?\s*(https?:)?\/\//i.test(html));
  t.false(html.includes('<script'));
  t.false(html.includes('<link'));
  t.true(html.includes('Image ROC') && html.includes('PRO (FPR ≤ 0.3)') && html.includes('threshold'));
  t.false(html.includes('NaN'));
});

test('charts: curves are paths inside the plot; the histogram places the threshold', (t) => {
  const chart = lineChart({ title: 'x', xLabel: 'a', yLabel: 'b', series: [{ name: 's', color: '#000', points: [{ x: 0, y: 0 }, { x: 1, y: 1 }] }] });
  t.regex(chart, /<path d="M42\.0,194\.0L290\.0,24\.0"/);
  const hist = scoreHistogram('h', [0, 0, 1], [2, 3], 2.5, 4);
  t.is((hist.match(/<rect x=/g) ?? []).length, 4 + 1); // 4 non-empty bars + the frame
  t.regex(hist, /stroke-dasharray="5 3"/);
});

test('placeMap: identity at the map size; bilinear align_corners=false otherwise; fill outside a crop', (t) => {
  const s = 4;
  const map = Float32Array.from({ length: s * s }, (_, i) => i);
  t.deepEqual([...placeMap(map, s, null, s, s)], [...map]);
  // 4 → 8 per axis: src = (i + 0.5)/2 − 0.5 → 0 (clamped), 0.25, 0.75, 1.25, …, 3.25 → clamps at 3.
  const up = placeMap(map, s, null, 8, 1);
  // Row: src y = (0.5)·4/1 − 0.5 = 1.5 → between rows 1 and 2 (values 4…7 and 8…11) → base 6.
  t.deepEqual([...up].map((v) => +v.toFixed(4)), [6, 6.25, 6.75, 7.25, 7.75, 8.25, 8.75, 9]);
  // A crop covering the right half: the left half gets the fill value.
  const placed = placeMap(map, s, { x: 0.5, y: 0, width: 0.5, height: 1 }, 8, 4, -1);
  for (let y = 0; y < 4; y++) {
    t.deepEqual([...placed.subarray(y * 8, y * 8 + 4)], [-1, -1, -1, -1]);
    // Right half = the map itself at 4×4 (identity placement inside the crop).
    t.deepEqual([...placed.subarray(y * 8 + 4, y * 8 + 8)], [...map.subarray(y * 4, y * 4 + 4)]);
  }
});

test('resizeMaskNearest: source index floor(dst · in / out), in float32 as PyTorch computes it', (t) => {
  const mask = { data: Uint8Array.from([0, 1, 0, 0, 1, 1]), width: 3, height: 2 };
  // 3 → 5 columns: floor(x·3/5) = 0,0,1,1,2; 2 → 3 rows: floor(y·2/3) = 0,0,1
  const r = resizeMaskNearest(mask, 5, 3);
  t.deepEqual([...r.data], [0, 0, 1, 1, 0, 0, 0, 1, 1, 0, 0, 0, 1, 1, 1]);
  // 248 → 224: 28 · 248 / 224 = 31 exactly, but float32 (28 · fl(248/224)) floors to 30.
  const idx = nearestIndex(248, 224);
  t.is(idx[28], 30);
  t.is(idx[29], 32);
  t.deepEqual([...nearestIndex(224, 224)].slice(0, 3), [0, 1, 2]);
});

test('modes and model matching', (t) => {
  t.deepEqual(parseModes('category, per-goods,crop').map((m) => m.name), ['category', 'per-goods', 'crop']);
  t.deepEqual(parseModes(['per-goods+crop']), [{ name: 'per-goods+crop', perGoods: true, crop: 'auto' }]);
  t.deepEqual(modeOf(false, 'auto'), { name: 'crop', perGoods: false, crop: 'auto' });
  t.throws(() => parseModes('category,everything'), { message: /unknown mode 'everything'/ });
  const manifest = {
    name: 'food_box [crop=auto]',
    training: { digest: 'a'.repeat(64) },
    backbone: { sha256: 'b'.repeat(64) },
    coreset: { ratio: 0.01, seed: 0, projection: 'jl' },
    inputSize: 224,
  } as unknown as Parameters<typeof modelMatches>[0];
  const want = { trainingDigest: 'a'.repeat(64), backboneSha256: 'b'.repeat(64), coreset: 0.01, seed: 0, projection: 'jl' as const, inputSize: 224, crop: 'auto' as const };
  t.true(modelMatches(manifest, want));
  t.false(modelMatches(manifest, { ...want, crop: 'none' }));
  t.false(modelMatches(manifest, { ...want, coreset: 0.1 }));
  t.false(modelMatches(manifest, { ...want, seed: 1 }));
  t.false(modelMatches(manifest, { ...want, trainingDigest: 'f'.repeat(64) }));
});

test('model reuse: normalisation, taps, pooling, shrink-on-load and the preprocessing version must be recorded and equal', async (t) => {
  const { preprocessMismatch, evalRecordOf, findReusableModel } = await import('../pipelines/eval-models.js');
  const { MOBILENETV2_INT8 } = await import('../models/backbone.js');
  const d = MOBILENETV2_INT8;
  const manifest = {
    name: 'food_box',
    training: { digest: 'a'.repeat(64) },
    backbone: { sha256: d.sha256, taps: d.taps.map((x) => ({ tensor: x.tensor, stride: x.stride, channels: x.channels })) },
    normalization: d.normalization,
    coreset: { ratio: 0.01, seed: 0, projection: 'jl' },
    inputSize: 224,
  } as unknown as Parameters<typeof modelMatches>[0];
  const want = { trainingDigest: 'a'.repeat(64), backboneSha256: d.sha256, coreset: 0.01, seed: 0, projection: 'jl' as const, inputSize: 224, crop: 'none' as const };
  const run = { shrinkOnLoad: true, descriptor: d };
  const record = evalRecordOf(run);
  t.is(preprocessMismatch({ manifest, record }, run), null);
  // Not recorded (a model of `shelfwatch fit`, or of an older evaluator): unknown → refit.
  t.regex(preprocessMismatch({ manifest, record: null }, run)!, /does not record its preprocessing/);
  t.regex(preprocessMismatch({ manifest, record: { ...record, shrinkOnLoad: false } }, run)!, /shrink-on-load off, this run has it on/);
  t.regex(preprocessMismatch({ manifest, record: { ...record, preprocess: record.preprocess + 1 } }, run)!, /preprocessing version/);
  const other = (over: object) => ({ shrinkOnLoad: true, descriptor: { ...d, ...over } });
  t.regex(preprocessMismatch({ manifest, record }, other({ normalization: { mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5] } }))!, /normalisation/);
  t.regex(preprocessMismatch({ manifest, record }, other({ embedDim: 128, pretrainEmbedDim: 64 }))!, /embedDim none \/ pretrainEmbedDim none, this run's descriptor has 128 \/ 64/);
  const taps = [{ ...d.taps[0], tensor: 'other' }, d.taps[1]];
  t.regex(preprocessMismatch({ manifest, record }, other({ taps }))!, /backbone taps/);
  t.regex(preprocessMismatch({ manifest, record }, other({ taps: [{ ...d.taps[0], dequantize: undefined }, d.taps[1]] }))!, /descriptor feature fields/);
  // findReusableModel: the fit settings and the preprocessing; a near miss is logged.
  const logs: string[] = [];
  const stale = { file: 'stale.onnx', manifest, record: { ...record, shrinkOnLoad: false } };
  const good = { file: 'good.onnx', manifest, record };
  t.is(findReusableModel([stale, good], want, run, (l) => logs.push(l))?.file, 'good.onnx');
  t.deepEqual(logs, ['--models: not reusing stale.onnx: fitted with shrink-on-load off, this run has it on']);
  t.is(findReusableModel([stale], want, run), null);
  t.is(findReusableModel([good], { ...want, seed: 1 }, run), null);
});
