/**
 * The metrics against the reference cases of ../shared/reference/metrics (README section 1):
 * every small case, undefined ones included, and the large 200 × 224 × 224 pixel case.
 */
import test, { type ExecutionContext } from 'ava';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  imageMetrics,
  PixelMetricsAccumulator,
  type MetricValue,
  type PixelMetrics,
} from '../models/metrics/index.js';

const DIR = join(process.cwd(), '..', 'shared', 'reference', 'metrics');
const TOL = 1e-6;
const available = existsSync(join(DIR, 'index.json'));

interface Expected {
  auroc: number | null;
  ap: number | null;
  pr_auc_trapz: number | null;
  aupro?: number | null;
  n_pos: number;
  n_neg: number;
  n_regions?: number;
  region_sizes?: number[];
  undefined_reason?: string;
}
interface PixelImage {
  shape: [number, number];
  map: number[][];
  mask: number[][];
}
interface Case {
  name: string;
  kind: 'image' | 'pixel';
  inputs: { labels?: number[]; scores?: number[]; images?: PixelImage[] };
  fpr_limit?: number;
  connectivity?: 8;
  expected: Expected;
  diagnostics?: {
    pro_curve?: { points: [number, number, number][] };
    n_regions_4conn?: number;
    aupro_4conn?: number;
  };
}

function readJson<T>(path: string): T {
  return JSON.parse(readFileSync(path, 'utf8')) as T;
}

type Assertions = ExecutionContext;

function checkMetric(t: Assertions, what: string, actual: MetricValue, expected: number | null | undefined): void {
  if (expected === null) {
    t.false(actual.defined, `${what} should be undefined`);
    if (!actual.defined) t.regex(actual.reason, /^no (anomalous|normal) /, `${what} reason`);
  } else if (expected !== undefined) {
    t.true(actual.defined, `${what} should be defined`);
    if (actual.defined) {
      t.false(Number.isNaN(actual.value));
      t.true(Math.abs(actual.value - expected) <= TOL, `${what}: got ${actual.value}, expected ${expected}`);
    }
  }
}

function pixelAccumulate(images: PixelImage[], connectivity: 4 | 8, fprLimit: number): PixelMetrics {
  const acc = new PixelMetricsAccumulator({ connectivity, fprLimit });
  images.forEach((im, index) => {
    const [h, w] = im.shape;
    acc.add(Float32Array.from(im.map.flat()), Uint8Array.from(im.mask.flat()), w, h, `case image ${index}`);
  });
  return acc.compute({ maxCurvePoints: 1_000_000 });
}

if (!available) {
  test('metric reference cases (skipped: ../shared/reference/metrics is absent)', (t) => {
    t.log(`no reference data at ${DIR}; skipping`);
    t.pass();
  });
} else {
  const index = readJson<{ cases: string[] }>(join(DIR, 'index.json'));
  const small = index.cases.filter((c) => !c.startsWith('large/'));

  test('index lists the 17 small cases and the large one', (t) => {
    t.is(small.length, 17);
    t.true(index.cases.includes('large/case.json'));
  });

  for (const file of small) {
    test(`reference case ${file}`, (t) => {
      const c = readJson<Case>(join(DIR, file));
      const e = c.expected;
      if (c.kind === 'image') {
        const m = imageMetrics(c.inputs.labels!, c.inputs.scores!);
        t.is(m.nPos, e.n_pos);
        t.is(m.nNeg, e.n_neg);
        checkMetric(t, 'auroc', m.auroc, e.auroc);
        checkMetric(t, 'ap', m.ap, e.ap);
        checkMetric(t, 'pr_auc_trapz', m.prAucTrapz, e.pr_auc_trapz);
        return;
      }
      t.is(c.connectivity, 8);
      const fprLimit = c.fpr_limit ?? 0.3;
      const m = pixelAccumulate(c.inputs.images!, 8, fprLimit);
      t.is(m.nPos, e.n_pos);
      t.is(m.nNeg, e.n_neg);
      t.is(m.nRegions, e.n_regions ?? -1);
      t.deepEqual(Array.from(m.regionSizes), e.region_sizes);
      checkMetric(t, 'auroc', m.auroc, e.auroc);
      checkMetric(t, 'ap', m.ap, e.ap);
      checkMetric(t, 'pr_auc_trapz', m.prAucTrapz, e.pr_auc_trapz);
      checkMetric(t, 'aupro', m.aupro, e.aupro);

      // Diagnostics: the PRO curve point by point (after the (0,0) start), and 4-connectivity.
      const diag = c.diagnostics?.pro_curve?.points;
      if (diag !== undefined) {
        const ours = m.curves!.pro.slice(1);
        t.is(ours.length, diag.length, 'PRO curve length');
        diag.forEach(([thr, fpr, pro], k) => {
          t.is(ours[k].threshold, thr, `PRO point ${k} threshold`);
          t.true(Math.abs(ours[k].x - fpr) <= 1e-12 && Math.abs(ours[k].y - pro) <= 1e-12, `PRO point ${k}`);
        });
      }
      if (c.diagnostics?.aupro_4conn !== undefined) {
        const m4 = pixelAccumulate(c.inputs.images!, 4, fprLimit);
        t.is(m4.nRegions, c.diagnostics.n_regions_4conn ?? -1);
        checkMetric(t, 'aupro (4-connectivity)', m4.aupro, c.diagnostics.aupro_4conn);
      }
    });
  }

  test('reference case large/case.json (200 maps 56×56 expanded to 224×224)', (t) => {
    const c = readJson<{
      files: { maps: { file: string; shape: number[] }; masks: { file: string; shape: number[] } };
      fpr_limit: number;
      expected: Required<Pick<Expected, 'auroc' | 'ap' | 'pr_auc_trapz' | 'aupro' | 'n_pos' | 'n_neg' | 'n_regions'>>;
      expected_image_level_from_map_max: Pick<Expected, 'auroc' | 'ap' | 'pr_auc_trapz' | 'n_pos' | 'n_neg'>;
      checks: {
        regions_per_map: number[];
        region_sizes_sorted: number[];
        sum_of_maps_56x56_float64: number;
        anomalous_pixels_per_map: number[];
      };
    }>(join(DIR, 'large', 'case.json'));
    const [nMaps, h56, w56] = c.files.maps.shape;
    const [, H, W] = c.files.masks.shape;
    t.deepEqual([h56 * 4, w56 * 4], [H, W]);
    const mapBuf = readFileSync(join(DIR, 'large', c.files.maps.file));
    const maskBuf = readFileSync(join(DIR, 'large', c.files.masks.file));
    t.is(mapBuf.length, nMaps * h56 * w56 * 4);
    t.is(maskBuf.length, nMaps * H * W);
    const maps56 = new Float32Array(mapBuf.buffer.slice(mapBuf.byteOffset, mapBuf.byteOffset + mapBuf.length));

    let sum = 0;
    for (let i = 0; i < maps56.length; i++) sum += maps56[i];
    t.true(Math.abs(sum - c.checks.sum_of_maps_56x56_float64) <= 1e-6 * Math.abs(sum), `map sum ${sum}`);

    const acc = new PixelMetricsAccumulator({ fprLimit: c.fpr_limit });
    const labels: number[] = [];
    const maxima: number[] = [];
    const anomalousPerMap: number[] = [];
    const map = new Float32Array(H * W);
    for (let m = 0; m < nMaps; m++) {
      const src = maps56.subarray(m * h56 * w56, (m + 1) * h56 * w56);
      let max = -Infinity;
      for (let y = 0; y < H; y++) {
        for (let x = 0; x < W; x++) {
          const v = src[(y >> 2) * w56 + (x >> 2)];
          map[y * W + x] = v;
          if (v > max) max = v;
        }
      }
      const mask = new Uint8Array(maskBuf.buffer, maskBuf.byteOffset + m * H * W, H * W);
      let anomalous = 0;
      for (let i = 0; i < mask.length; i++) if (mask[i] !== 0) anomalous++;
      anomalousPerMap.push(anomalous);
      labels.push(anomalous > 0 ? 1 : 0);
      maxima.push(max);
      acc.add(map, mask, W, H, `large map ${m}`);
    }
    t.deepEqual(anomalousPerMap, c.checks.anomalous_pixels_per_map);
    const r = acc.compute();
    t.deepEqual(Array.from(r.regionsPerImage), c.checks.regions_per_map);
    t.deepEqual(Array.from(r.regionSizes).sort((a, b) => a - b), c.checks.region_sizes_sorted);
    const e = c.expected;
    t.is(r.nPos, e.n_pos);
    t.is(r.nNeg, e.n_neg);
    t.is(r.nRegions, e.n_regions);
    checkMetric(t, 'pixel auroc', r.auroc, e.auroc);
    checkMetric(t, 'pixel ap', r.ap, e.ap);
    checkMetric(t, 'pixel pr_auc_trapz', r.prAucTrapz, e.pr_auc_trapz);
    checkMetric(t, 'aupro', r.aupro, e.aupro);
    if (r.aupro.defined) t.log(`large case AUPRO ${r.aupro.value}, expected ${e.aupro}`);

    const img = imageMetrics(labels, maxima);
    const ei = c.expected_image_level_from_map_max;
    t.is(img.nPos, ei.n_pos);
    t.is(img.nNeg, ei.n_neg);
    checkMetric(t, 'image auroc', img.auroc, ei.auroc);
    checkMetric(t, 'image ap', img.ap, ei.ap);
    checkMetric(t, 'image pr_auc_trapz', img.prAucTrapz, ei.pr_auc_trapz);
  });
}
