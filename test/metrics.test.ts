/**
 * Hand-computed metric cases (the derivations are in the comments), region labelling, the radix
 * sort, and a brute-force cross-check of the streaming pixel metrics on random data with ties.
 */
import test, { type ExecutionContext } from 'ava';
import {
  formatMetric,
  imageMetrics,
  labelRegions,
  metricOrNull,
  PixelMetricsAccumulator,
  pixelMetrics,
  regionBoxes,
  type MetricValue,
} from '../models/metrics/index.js';
import { keyOfNumber, radixSortSegments, valueOfKey } from '../models/metrics/radix.js';
import { toRegions } from '../pipelines/postprocess.js';

type Assertions = ExecutionContext;

function near(t: Assertions, m: MetricValue, expected: number, what = 'metric'): void {
  if (!m.defined) {
    t.fail(`${what} undefined (${m.reason}), expected ${expected}`);
    return;
  }
  t.true(Math.abs(m.value - expected) <= 1e-12, `${what}: got ${m.value}, expected ${expected}`);
}

function undef(t: Assertions, m: MetricValue, reason: string): void {
  t.deepEqual(m, { defined: false, reason });
}

test('image metrics with ties: a tie between classes counts one half', (t) => {
  // Groups (descending): 0.8 → 1 pos; 0.5 → 1 pos + 1 neg; 0.2 → 1 neg. P = N = 2.
  // AUROC: 0.8 beats both negatives (2), 0.5 ties one (0.5) and beats one (1): 3.5 / 4.
  // AP: R 1/2 at P 1, then R 1 at P 2/3: 1/2 + 1/3 = 5/6.
  // PR trapezoid: (0,1)→(1/2,1): 1/2; (1/2,1)→(1,2/3): 1/2 · 5/6 = 5/12 → 11/12.
  const m = imageMetrics([1, 0, 1, 0], [0.5, 0.5, 0.8, 0.2]);
  near(t, m.auroc, 0.875, 'auroc');
  near(t, m.ap, 5 / 6, 'ap');
  near(t, m.prAucTrapz, 11 / 12, 'pr trapz');
  t.is(m.nPos, 2);
  t.is(m.nNeg, 2);
});

test('image metrics: perfect and reversed scorers', (t) => {
  const perfect = imageMetrics([0, 1, 0, 1], [0.1, 0.8, 0.2, 0.9]);
  near(t, perfect.auroc, 1);
  near(t, perfect.ap, 1);
  near(t, perfect.prAucTrapz, 1);
  // Reversed: negatives 0.9, 0.8 come first; then 0.2 (tp 1 of 3 predicted) and 0.1 (2 of 4).
  // AP = 1/2 · 1/3 + 1/2 · 1/2 = 5/12. PR trapezoid: (0,1)→(0,1/2)→(0,0)→(1/2,1/3)→(1,1/2):
  // 1/2 · (0 + 1/3)/2 + 1/2 · (1/3 + 1/2)/2 = 1/12 + 5/24 = 7/24.
  const reversed = imageMetrics([1, 0, 1, 0], [0.1, 0.8, 0.2, 0.9]);
  near(t, reversed.auroc, 0);
  near(t, reversed.ap, 5 / 12);
  near(t, reversed.prAucTrapz, 7 / 24);
});

test('image metrics: booleans as labels, infinities as scores', (t) => {
  const m = imageMetrics([true, false, false], [Infinity, -Infinity, 0]);
  near(t, m.auroc, 1);
});

test('all-normal category: metrics are undefined with a reason, never NaN', (t) => {
  const m = imageMetrics([0, 0, 0], [0.1, 0.2, 0.3]);
  undef(t, m.auroc, 'no anomalous image');
  undef(t, m.ap, 'no anomalous image');
  undef(t, m.prAucTrapz, 'no anomalous image');
  t.is(formatMetric(m.auroc), 'n/a (no anomalous image)');
  t.is(metricOrNull(m.ap), null);
  t.is(formatMetric(imageMetrics([1, 0], [1, 0]).auroc), '1.0000');

  // All anomalous: AUROC needs a normal sample; AP and PR-AUC are defined (precision is 1).
  const allBad = imageMetrics([1, 1], [0.3, 0.4]);
  undef(t, allBad.auroc, 'no normal image');
  near(t, allBad.ap, 1);

  const px = pixelMetrics([{ map: new Float32Array([0.1, 0.2, 0.3, 0.4]), mask: new Uint8Array(4), width: 2, height: 2 }]);
  undef(t, px.auroc, 'no anomalous pixel');
  undef(t, px.aupro, 'no anomalous pixel (no ground-truth region)');
  t.is(px.nNeg, 4);
  t.is(px.nRegions, 0);

  const pxAllBad = pixelMetrics([{ map: new Float32Array([0.1, 0.2]), mask: new Uint8Array([1, 1]), width: 2, height: 1 }]);
  undef(t, pxAllBad.auroc, 'no normal pixel');
  undef(t, pxAllBad.aupro, 'no normal pixel');
  near(t, pxAllBad.ap, 1);
});

test('image metrics reject bad input with the index', (t) => {
  t.throws(() => imageMetrics([0, 1], [0.1]), { message: /2 labels but 1 scores/ });
  t.throws(() => imageMetrics([0, 2], [0.1, 0.2]), { message: /label 1 must be 0 or 1, got 2/ });
  t.throws(() => imageMetrics([0, 1], [0.1, NaN]), { message: /score 1 is not a number/ });
});

test('a single anomalous pixel, tied with one normal pixel', (t) => {
  // 3×3 map: the centre (anomalous) and its left neighbour (normal) both score 0.9; the other
  // seven normals score 0.8, 0.7, ... 0.2. P = 1, N = 8.
  // AUROC: the positive ties one normal and beats 7: 7.5 / 8. AP: tp 1 of 2 predicted → 1/2.
  // PR trapezoid: (0,1)→(1,1/2): 3/4.
  // PRO curve: (0,0) → (1/8, 1) → (2/8, 1) → (3/8, 1): area to 0.3 = 1/8 · 1/2 + (0.3 − 1/8) · 1
  //   = 0.0625 + 0.175 = 0.2375; AUPRO = 0.2375 / 0.3.
  const map = new Float32Array([0.8, 0.7, 0.6, 0.9, 0.9, 0.5, 0.4, 0.3, 0.2]);
  const mask = new Uint8Array([0, 0, 0, 0, 1, 0, 0, 0, 0]);
  const m = pixelMetrics([{ map, mask, width: 3, height: 3 }], { maxCurvePoints: 100 });
  near(t, m.auroc, 7.5 / 8, 'auroc');
  near(t, m.ap, 0.5, 'ap');
  near(t, m.prAucTrapz, 0.75, 'pr trapz');
  near(t, m.aupro, 0.2375 / 0.3, 'aupro');
  t.deepEqual(Array.from(m.regionSizes), [1]);
  // Exact curves (they fit in 100 points): start, then one point per distinct score (8 of them).
  t.is(m.curves!.roc.length, 9);
  t.deepEqual(m.curves!.roc[1], { x: 1 / 8, y: 1, threshold: Math.fround(0.9) });
  t.deepEqual(m.curves!.pro.map((p) => p.x), [0, 1 / 8, 2 / 8, 3 / 8]);
});

test('an image with several regions, an FPR limit other than 0.3', (t) => {
  // width 4, height 2:     map                 mask
  //                  0.9 0.5 0.7 0.2         1 1 0 0
  //                  0.6 0.3 0.4 0.8         0 0 0 1
  // Regions: A = {(0,0), (1,0)} (2 px: 0.9, 0.5), B = {(3,1)} (1 px: 0.8). Normals 0.7 0.6 0.4
  // 0.3 0.2 (N = 5, each adds 0.2 FPR). Points (FPR, PRO): 0.9 (0, 1/4), 0.8 (0, 3/4),
  // 0.7 (0.2, 3/4), 0.6 (0.4, 3/4), 0.5 (0.4, 1), 0.4 (0.6, 1), 0.3 (0.8, 1), 0.2 (1, 1).
  // AUPRO@0.3 = (0.15 + 0.1 · 3/4) / 0.3 = 0.75; @0.5 = (0.15 + 0.15 + 0.1) / 0.5 = 0.8;
  // @1 = (0.15 + 0.15 + 0.6) / 1 = 0.9.
  // AUROC: 0.9 and 0.8 beat all 5, 0.5 beats 3 → 13/15. AP = 1/3 + 1/3 + 1/3 · 3/5 = 13/15.
  // PR trapezoid = 1/3 + 1/3 + 1/3 · (2/4 + 3/5) / 2 = 51/60 (0.7 and 0.6 add normal points).
  const image = {
    map: new Float32Array([0.9, 0.5, 0.7, 0.2, 0.6, 0.3, 0.4, 0.8]),
    mask: new Uint8Array([1, 1, 0, 0, 0, 0, 0, 1]),
    width: 4,
    height: 2,
  };
  const m = pixelMetrics([image]);
  near(t, m.aupro, 0.75, 'aupro@0.3');
  near(t, m.auroc, 13 / 15, 'auroc');
  near(t, m.ap, 13 / 15, 'ap');
  near(t, m.prAucTrapz, 51 / 60, 'pr trapz');
  t.deepEqual(Array.from(m.regionSizes), [2, 1]);
  t.deepEqual(Array.from(m.regionsPerImage), [2]);
  near(t, pixelMetrics([image], { fprLimit: 0.5 }).aupro, 0.8, 'aupro@0.5');
  near(t, pixelMetrics([image], { fprLimit: 1 }).aupro, 0.9, 'aupro@1');
  // A second, normal image doubles N: pixels 0.05 add nothing above 0.2, so FPR values halve.
  const normal = { map: new Float32Array(8).fill(0.05), mask: new Uint8Array(8), width: 4, height: 2 };
  const two = pixelMetrics([image, normal]);
  t.is(two.nNeg, 13);
  t.deepEqual(Array.from(two.regionsPerImage), [2, 0]);
});

test('touching regions: 4- versus 8-connectivity, raster-order labels, boxes', (t) => {
  // 6×4:  1 1 0 0 0 0
  //       1 1 0 0 0 1
  //       0 0 1 0 1 1      the 2×2 square touches the single pixel (2,2) only at a corner;
  //       0 0 0 0 0 0      (4,2) touches (5,1) and (5,2) by edges.
  const mask = Uint8Array.from([1, 1, 0, 0, 0, 0, 1, 1, 0, 0, 0, 1, 0, 0, 1, 0, 1, 1, 0, 0, 0, 0, 0, 0]);
  const eight = labelRegions(mask, 6, 4, 8);
  t.is(eight.count, 2);
  t.deepEqual(Array.from(eight.sizes), [5, 3]);
  const four = labelRegions(mask, 6, 4, 4);
  t.is(four.count, 3);
  t.deepEqual(Array.from(four.sizes), [4, 3, 1]); // raster order of first pixels: (0,0), (5,1), (2,2)
  t.deepEqual(Array.from(four.labels.subarray(12, 18)), [0, 0, 3, 0, 2, 2]);
  const boxes = regionBoxes(four, 6, 4, new Float32Array(24).map((_, i) => i));
  t.deepEqual(boxes, [
    { label: 1, box: { x: 0, y: 0, width: 2, height: 2 }, area: 4, peak: 7 },
    { label: 2, box: { x: 4, y: 1, width: 2, height: 2 }, area: 3, peak: 17 },
    { label: 3, box: { x: 2, y: 2, width: 1, height: 1 }, area: 1, peak: 14 },
  ]);
  t.deepEqual(regionBoxes(eight, 6, 4)[0], { label: 1, box: { x: 0, y: 0, width: 3, height: 3 }, area: 5 });

  // A U shape whose arms join only at the bottom: one region, found through a label merge.
  const u = Uint8Array.from([1, 0, 1, 1, 0, 1, 1, 1, 1]);
  t.is(labelRegions(u, 3, 3, 4).count, 1);
  t.throws(() => labelRegions(u, 4, 3), { message: /expected 4×3 = 12 values, got 9/ });
});

/** Flood-fill labelling, raster order of each region's first pixel: the definition, slowly. */
function floodLabels(mask: Uint8Array, w: number, h: number, connectivity: 4 | 8): { labels: Int32Array; sizes: number[] } {
  const labels = new Int32Array(w * h);
  const sizes: number[] = [];
  const steps = connectivity === 8 ? [[-1, -1], [0, -1], [1, -1], [-1, 0], [1, 0], [-1, 1], [0, 1], [1, 1]] : [[0, -1], [-1, 0], [1, 0], [0, 1]];
  for (let i = 0; i < w * h; i++) {
    if (!mask[i] || labels[i]) continue;
    const l = sizes.length + 1;
    let size = 0;
    const stack = [i];
    labels[i] = l;
    while (stack.length) {
      const p = stack.pop()!;
      size++;
      for (const [dx, dy] of steps) {
        const x = (p % w) + dx!;
        const y = Math.floor(p / w) + dy!;
        const q = y * w + x;
        if (x >= 0 && y >= 0 && x < w && y < h && mask[q] && !labels[q]) {
          labels[q] = l;
          stack.push(q);
        }
      }
    }
    sizes.push(size);
  }
  return { labels, sizes };
}

test('region labelling equals a flood fill on random masks (both connectivities), and toRegions gives the boxes, areas and peaks of those regions', (t) => {
  let seed = 12345;
  const rand = () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32);
  for (let trial = 0; trial < 300; trial++) {
    const w = 1 + Math.floor(rand() * 40);
    const h = trial % 2 ? 1 + Math.floor(rand() * 30) : w; // square half the time, for toRegions
    const density = [0.05, 0.3, 0.5, 0.7, 0.95][trial % 5]!;
    const mask = Uint8Array.from({ length: w * h }, () => (rand() < density ? 1 + Math.floor(rand() * 3) : 0));
    for (const connectivity of [4, 8] as const) {
      const expected = floodLabels(mask, w, h, connectivity);
      const got = labelRegions(mask, w, h, connectivity);
      t.deepEqual(Array.from(got.labels), Array.from(expected.labels), `labels, ${w}×${h}, density ${density}, ${connectivity}-connectivity`);
      t.deepEqual(Array.from(got.sizes), expected.sizes);
      t.is(got.count, expected.sizes.length);
    }
    if (w !== h) continue;
    const map = Float32Array.from({ length: w * h }, () => rand());
    const reference = regionBoxes(labelRegions(mask, w, h, 8), w, h, map)
      .map((r) => ({ box: r.box, area: r.area, peak: r.peak }))
      .sort((a, b) => b.peak! - a.peak! || b.area - a.area || a.box.y - b.box.y || a.box.x - b.box.x);
    t.deepEqual(toRegions({ mask, anomalyMap: map, mapSize: w }, { x: 0, y: 0, width: w, height: h }), reference, `toRegions, ${w}×${w}`);
  }
  // A spiral: one region whose runs meet the earlier ones only through many merges.
  const n = 15;
  const spiral = new Uint8Array(n * n);
  for (let ring = 0; ring < n / 2; ring += 2) {
    for (let i = ring; i < n - ring; i++) spiral[ring * n + i] = spiral[(n - 1 - ring) * n + i] = spiral[i * n + ring] = spiral[i * n + n - 1 - ring] = 1;
    if (ring + 1 < n - ring) spiral[(ring + 1) * n + ring] = 0;
  }
  for (const connectivity of [4, 8] as const) t.deepEqual(Array.from(labelRegions(spiral, n, n, connectivity).labels), Array.from(floodLabels(spiral, n, n, connectivity).labels));
});

test('signed zeros are one threshold', (t) => {
  // Image: one anomalous image scoring -0, one normal scoring +0 → a tie → AUROC 1/2.
  near(t, imageMetrics([1, 0], [-0, 0]).auroc, 0.5);
  // Pixel: same tie; the curve has a single point after the start, at threshold +0.
  const m = pixelMetrics(
    [{ map: new Float32Array([-0, 0, -1]), mask: new Uint8Array([1, 0, 0]), width: 3, height: 1 }],
    { maxCurvePoints: 10 },
  );
  near(t, m.auroc, 0.75);
  near(t, m.ap, 0.5);
  t.is(m.curves!.roc.length, 3);
  t.true(Object.is(m.curves!.roc[1].threshold, 0));
  t.is(keyOfNumber(-0), keyOfNumber(0));
});

test('NaN in a map is rejected naming the image and pixel; the accumulator stays usable', (t) => {
  const acc = new PixelMetricsAccumulator();
  const bad = new Float32Array([0.1, 0.2, 0.3, NaN, 0.5, 0.6]);
  t.throws(() => acc.add(bad, new Uint8Array([1, 0, 0, 0, 0, 0]), 3, 2, 'shelf-7.png'), {
    message: 'pixel metrics: anomaly map of image shelf-7.png has NaN at (x=0, y=1)',
  });
  t.throws(() => acc.add(bad, new Uint8Array(6), 3, 2), { message: /image #0 has NaN at \(x=0, y=1\)/ });
  t.throws(() => acc.add(new Float32Array(5), new Uint8Array(6), 3, 2), { message: /5 values, expected 3×2 = 6/ });
  acc.add(new Float32Array([0.9, 0.1]), new Uint8Array([1, 0]), 2, 1);
  const m = acc.compute();
  t.is(m.nPos + m.nNeg, 2);
  t.is(m.nImages, 1);
  near(t, m.auroc, 1);
  t.throws(() => acc.compute(), { message: /compute\(\) called twice/ });
  t.throws(() => acc.add(new Float32Array(1), new Uint8Array(1), 1, 1), { message: /add\(\) after compute\(\)/ });
});

test('radix sort: float32 key order, stability and payload', (t) => {
  const values = [-Infinity, -3.5, -1e-30, -0, 0, 1e-45, 0.1, 2, 3.4e38, Infinity];
  const keys = values.map(keyOfNumber);
  for (let i = 1; i < keys.length; i++) t.true(keys[i] >= keys[i - 1], `${values[i - 1]} <= ${values[i]}`);
  t.is(valueOfKey(keyOfNumber(-3.5)), -3.5);
  t.is(valueOfKey(keyOfNumber(0.1)), Math.fround(0.1));

  let s = 7;
  const rnd = () => (s = (Math.imul(s, 1103515245) + 12345) >>> 0) / 2 ** 32;
  const n = 50_000;
  const a = new Uint32Array(n);
  const b = new Uint32Array(n);
  for (let i = 0; i < n; i++) {
    a[i] = keyOfNumber(Math.round((rnd() - 0.5) * 2000) / 16); // many ties, both signs
    b[i] = i;
  }
  const expected = Array.from(a, (k, i) => [k, i]).sort((x, y) => x[0] - y[0] || x[1] - y[1]);
  const sorted = radixSortSegments([a.subarray(0, 20_000), a.subarray(20_000)], [b.subarray(0, 20_000), b.subarray(20_000)]);
  t.deepEqual(Array.from(sorted.keys), expected.map((e) => e[0]));
  t.deepEqual(Array.from(sorted.payload!), expected.map((e) => e[1])); // stable: payload ascending within ties
  t.is(radixSortSegments([]).keys.length, 0);
});

/** Brute force straight from the definitions: every distinct threshold, counts by full scans. */
function bruteForce(scores: number[], positive: boolean[], regionOf: number[], sizes: number[], fprLimit: number) {
  const thresholds = [...new Set(scores.map((v) => v + 0))].sort((x, y) => y - x);
  const P = positive.filter(Boolean).length;
  const N = scores.length - P;
  const roc: [number, number][] = [[0, 0]];
  const pro: [number, number][] = [[0, 0]];
  let ap = 0;
  let prevRecall = 0;
  for (const th of thresholds) {
    let tp = 0;
    let fp = 0;
    const hit = new Array<number>(sizes.length).fill(0);
    scores.forEach((v, i) => {
      if (v >= th) {
        if (positive[i]) {
          tp++;
          hit[regionOf[i]]++;
        } else fp++;
      }
    });
    roc.push([fp / N, tp / P]);
    pro.push([fp / N, hit.reduce((acc, h, r) => acc + h / sizes[r], 0) / sizes.length]);
    ap += (tp / P - prevRecall) * (tp / (tp + fp));
    prevRecall = tp / P;
  }
  let auroc = 0;
  for (let k = 1; k < roc.length; k++) auroc += ((roc[k][0] - roc[k - 1][0]) * (roc[k][1] + roc[k - 1][1])) / 2;
  let area = 0;
  for (let k = 1; k < pro.length; k++) {
    const [x0, y0] = pro[k - 1];
    const [x1, y1] = pro[k];
    if (x1 <= fprLimit) area += ((x1 - x0) * (y0 + y1)) / 2;
    else {
      const yl = y0 + ((y1 - y0) * (fprLimit - x0)) / (x1 - x0);
      area += ((fprLimit - x0) * (y0 + yl)) / 2;
      break;
    }
  }
  return { auroc, ap, aupro: area / fprLimit };
}

test('streaming pixel metrics equal a brute force over random maps with ties', (t) => {
  let s = 2024;
  const rnd = () => (s = (Math.imul(s, 1103515245) + 12345) >>> 0) / 2 ** 32;
  for (const fprLimit of [0.3, 0.05, 1]) {
    const images = [];
    const scores: number[] = [];
    const positive: boolean[] = [];
    const regionOf: number[] = [];
    const sizes: number[] = [];
    for (let im = 0; im < 4; im++) {
      const w = 9 + im;
      const h = 7;
      const mask = new Uint8Array(w * h);
      if (im !== 2) for (let i = 0; i < mask.length; i++) mask[i] = rnd() < 0.25 ? 1 : 0;
      const map = new Float32Array(w * h);
      for (let i = 0; i < map.length; i++) map[i] = Math.round((rnd() + (mask[i] ? 0.4 : 0)) * 8) / 8 - 0.5;
      images.push({ map, mask, width: w, height: h });
      const lab = labelRegions(mask, w, h, 8);
      const base = sizes.length;
      sizes.push(...lab.sizes);
      map.forEach((v, i) => {
        scores.push(v);
        positive.push(mask[i] !== 0);
        regionOf.push(lab.labels[i] > 0 ? base + lab.labels[i] - 1 : -1);
      });
    }
    const m = pixelMetrics(images, { fprLimit });
    const b = bruteForce(scores, positive, regionOf, sizes, fprLimit);
    near(t, m.auroc, b.auroc, `auroc @${fprLimit}`);
    near(t, m.ap, b.ap, `ap @${fprLimit}`);
    near(t, m.aupro, b.aupro, `aupro @${fprLimit}`);
    // Pixel metrics over one pooled "image" must equal the image-level routine on the same scores.
    const asImages = imageMetrics(positive.map((p) => (p ? 1 : 0)), scores);
    near(t, m.prAucTrapz, (asImages.prAucTrapz as { value: number }).value, 'pr trapz vs image routine');
  }
});

test('downsampled curves keep their ends and stay within the point budget', (t) => {
  let s = 99;
  const rnd = () => (s = (Math.imul(s, 1103515245) + 12345) >>> 0) / 2 ** 32;
  const n = 200 * 200;
  const map = new Float32Array(n);
  const mask = new Uint8Array(n);
  for (let i = 0; i < n; i++) {
    mask[i] = i % 200 < 40 && Math.floor(i / 200) < 40 ? 1 : 0;
    map[i] = rnd() + (mask[i] ? 0.3 : 0);
  }
  const m = pixelMetrics([{ map, mask, width: 200, height: 200 }], { maxCurvePoints: 50 });
  const { roc, pr, pro } = m.curves!;
  for (const c of [roc, pr, pro]) t.true(c.length <= 50 && c.length >= 10, `length ${c.length}`);
  t.deepEqual([roc[0].x, roc[0].y], [0, 0]);
  t.deepEqual([roc.at(-1)!.x, roc.at(-1)!.y], [1, 1]);
  t.deepEqual([pr[0].x, pr[0].y], [0, 1]);
  t.true(pro.at(-1)!.x > 0.3 && pro.at(-2)!.x <= 0.3);
  for (let k = 1; k < roc.length; k++) t.true(roc[k].x >= roc[k - 1].x && roc[k].y >= roc[k - 1].y);
});
