import test from 'ava';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  coresetSize,
  kCenterGreedyNaive,
  prepareCoresetInput,
  principalBasis,
  selectCoreset,
} from '../models/coreset.js';
import { kCenterGreedyLazy } from '../models/coreset-lazy.js';
import { createKernel, createSharedMemory, paddedDim, squaredDistanceF32, transformRows } from '../models/distance-kernel.js';
import { compactProjection, jlMinDim, makeSparseProjection, projectRows, projectRowsDense } from '../models/projection.js';
import { Random } from '../models/random.js';

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const referenceDir = resolve(repoRoot, '../shared/reference/patchcore');
/** The reference fixture of ../shared (tests only; skipped where it is absent). */
const withReference = existsSync(resolve(referenceDir, 'coreset.json')) ? test : test.skip;

function readF32(path: string): Float32Array {
  const b = readFileSync(path);
  return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
}

function gaussian(rng: Random): number {
  return Math.sqrt(-2 * Math.log(1 - rng.nextFloat())) * Math.cos(2 * Math.PI * rng.nextFloat());
}

/** n points in dim dims around `modes` Gaussian centres — clustered like patch features. */
function clustered(n: number, dim: number, modes: number, seed: number): Float32Array {
  const rng = new Random(seed);
  const centres = Array.from({ length: modes * dim }, () => gaussian(rng));
  const out = new Float32Array(n * dim);
  for (let i = 0; i < n; i++) {
    const c = rng.nextInt(modes) * dim;
    for (let j = 0; j < dim; j++) out[i * dim + j] = centres[c + j] + 0.3 * gaussian(rng);
  }
  return out;
}

// ---- random.ts ----

test('Random: xoshiro128** sequence is pinned (checked against the C reference)', (t) => {
  const expected: Record<number, number[]> = {
    0: [3404622459, 3851956928, 1827793834, 3778475804, 2352437777],
    42: [1786966489, 2023248069, 2557520038, 2217277309, 1075596329],
    123456789012345: [1057298356, 3717676444, 244483506, 1526463108, 2331938362],
  };
  for (const [seed, values] of Object.entries(expected)) {
    const rng = new Random(Number(seed));
    t.deepEqual(
      values.map(() => rng.nextUint32()),
      values,
      `seed ${seed}`,
    );
  }
});

test('Random: nextFloat in [0,1), nextInt in range and roughly uniform', (t) => {
  const rng = new Random(5);
  const counts = new Array<number>(10).fill(0);
  let lo = 1;
  let hi = 0;
  for (let i = 0; i < 100_000; i++) {
    const f = rng.nextFloat();
    lo = Math.min(lo, f);
    hi = Math.max(hi, f);
    counts[rng.nextInt(10)]++;
  }
  t.true(lo >= 0 && hi < 1 && lo < 0.001 && hi > 0.999, `nextFloat range [${lo}, ${hi}]`);
  for (const c of counts) t.true(Math.abs(c - 10_000) < 500, `bucket count ${c}`); // ≈ 5 σ
  t.is(new Random(1).nextInt(1), 0);
});

test('Random: bad seeds and bounds are rejected with the value', (t) => {
  t.throws(() => new Random(-1), { message: /seed.*-1/ });
  t.throws(() => new Random(1.5), { message: /seed.*1\.5/ });
  t.throws(() => new Random(1).nextInt(0), { message: /nextInt.*got 0/ });
});

// ---- projection.ts ----

test('jlMinDim matches the reference dimensions', (t) => {
  t.is(jlMinDim(18_816), 243);
  t.is(jlMinDim(597_408), 328);
  t.throws(() => jlMinDim(100, 1), { message: /eps.*got 1/ });
  t.throws(() => jlMinDim(0), { message: /nSamples.*got 0/ });
});

test('sparse projection: seeded, sklearn density and scale, equals the dense product', (t) => {
  const d = 128;
  const k = 2000;
  const a = makeSparseProjection(d, k, new Random(3));
  const b = makeSparseProjection(d, k, new Random(3));
  t.deepEqual(a.indices, b.indices);
  t.deepEqual(a.minusStart, b.minusStart);
  t.notDeepEqual(makeSparseProjection(d, k, new Random(4)).indices, a.indices);
  const density = 1 / Math.sqrt(d);
  t.is(a.density, density);
  t.is(a.scale, Math.sqrt(1 / density) / Math.sqrt(k));
  const nnz = a.indices.length;
  const expected = d * k * density;
  t.true(Math.abs(nnz - expected) < 5 * Math.sqrt(expected), `nnz ${nnz} vs ${expected}`);
  let plus = 0;
  for (let i = 0; i < k; i++) plus += a.minusStart[i] - a.rowStart[i];
  t.true(Math.abs(plus / nnz - 0.5) < 0.02, `share of + entries ${plus / nnz}`);

  // projectRows against the dense matrix product in float64
  const small = makeSparseProjection(20, 30, new Random(9));
  const dense = new Float64Array(30 * 20);
  for (let i = 0; i < 30; i++) {
    for (let p = small.rowStart[i]; p < small.minusStart[i]; p++) dense[i * 20 + small.indices[p]] = small.scale;
    for (let p = small.minusStart[i]; p < small.rowStart[i + 1]; p++) dense[i * 20 + small.indices[p]] = -small.scale;
  }
  const x = clustered(7, 20, 2, 1);
  const y = projectRows(small, x, 7);
  t.is(y.length, 7 * 30);
  for (let r = 0; r < 7; r++) {
    for (let i = 0; i < 30; i++) {
      let s = 0;
      for (let j = 0; j < 20; j++) s += dense[i * 20 + j] * x[r * 20 + j];
      t.true(Math.abs(y[r * 30 + i] - s) <= 1e-6 * (1 + Math.abs(s)));
    }
  }
  t.throws(() => projectRows(small, x, 8), { message: /8 rows of 20 values/ });
});

// ---- coreset.ts ----

test('coresetSize: reference sizes, ratio 1, and clear errors', (t) => {
  t.is(coresetSize(18_816, 0.01), 188);
  t.is(coresetSize(18_816, 0.1), 1881);
  t.is(coresetSize(597_408, 0.01), 5974);
  t.is(coresetSize(597_408, 0.1), 59740);
  t.is(coresetSize(10, 1), 10);
  t.throws(() => coresetSize(10, 0), { message: /ratio.*got 0/ });
  t.throws(() => coresetSize(10, 1.5), { message: /ratio.*got 1\.5/ });
  t.throws(() => coresetSize(50, 0.01), { message: /ratio 0\.01 of n = 50/ });
});

withReference('k-center (lazy and naive) reproduces the reference fixture (embedding_train0, start 0, M = 78)', (t) => {
  const fixture = (JSON.parse(readFileSync(resolve(referenceDir, 'coreset.json'), 'utf8')) as {
    kcenter_fixture: { start_index: number; M: number; selected: number[]; min_distance_at_selection: number[] };
  }).kcenter_fixture;
  const points = readF32(resolve(referenceDir, 'embedding_train0.bin'));
  for (const algorithm of [kCenterGreedyLazy, kCenterGreedyNaive]) {
    const r = algorithm(points, 784, 128, fixture.M, fixture.start_index);
    t.deepEqual(Array.from(r.selected), fixture.selected, algorithm.name);
    fixture.min_distance_at_selection.forEach((d, i) => {
      t.true(Math.abs(r.minDistanceAtSelection[i] - d) <= 1e-5 * d, `${algorithm.name} step ${i}: ${r.minDistanceAtSelection[i]} vs ${d}`);
    });
  }
  // The start index only initialises the distances: it is not selected first.
  t.not(kCenterGreedyLazy(points, 784, 128, 1, 0).selected[0], 0);
});

test('lazy k-center equals the naive one on clustered data of several sizes', (t) => {
  const cases = [
    { n: 500, dim: 8, modes: 5, m: 60 },
    { n: 3000, dim: 64, modes: 40, m: 120 },
    { n: 4000, dim: 128, modes: 200, m: 400 },
    { n: 2000, dim: 33, modes: 1, m: 2000 }, // m = n: runs into zero distances at the end
    { n: 12000, dim: 48, modes: 3, m: 40 }, // a few big clusters
  ];
  for (const c of cases) {
    const points = clustered(c.n, c.dim, c.modes, c.n);
    const naive = kCenterGreedyNaive(points, c.n, c.dim, c.m, 7);
    for (const lowerBoundDims of [undefined, 0, 4, 16]) {
      if (lowerBoundDims !== undefined && lowerBoundDims > c.dim) continue;
      const lazy = kCenterGreedyLazy(points, c.n, c.dim, c.m, 7, { lowerBoundDims });
      t.deepEqual(lazy.selected, naive.selected, `n=${c.n} dim=${c.dim} bound=${String(lowerBoundDims)}`);
      t.deepEqual(lazy.minDistanceAtSelection, naive.minDistanceAtSelection);
      if (c.m < c.n) t.true(lazy.distanceEvaluations < naive.distanceEvaluations);
    }
  }
});

test('lazy k-center breaks exact ties like the naive one (lowest index) and select duplicates again once every distance is 0', (t) => {
  // An integer grid with duplicates: many exactly equal distances.
  const rng = new Random(11);
  const n = 1500;
  const dim = 6;
  const grid = new Float32Array(n * dim);
  for (let i = 0; i < grid.length; i++) grid[i] = rng.nextInt(3);
  const naiveGrid = kCenterGreedyNaive(grid, n, dim, 300, 0);
  // 4 distinct points among 40: after those 4, every minimum distance is 0 and the naive
  // algorithm picks index 0 again and again.
  const few = new Float32Array(40 * 5);
  for (let i = 0; i < 40; i++) for (let j = 0; j < 5; j++) few[i * 5 + j] = (i % 4) * (j + 1);
  const naiveFew = kCenterGreedyNaive(few, 40, 5, 10, 2);
  t.deepEqual(Array.from(naiveFew.selected).slice(3), [0, 0, 0, 0, 0, 0, 0]);
  for (const lowerBoundDims of [0, 3]) {
    t.deepEqual(kCenterGreedyLazy(grid, n, dim, 300, 0, { lowerBoundDims }).selected, naiveGrid.selected, `bound=${lowerBoundDims}`);
  }
  t.deepEqual(kCenterGreedyLazy(few, 40, 5, 10, 2).selected, naiveFew.selected);
});

test('lazy k-center: m = 0 selects nothing; bad input is named', (t) => {
  const points = clustered(30, 4, 2, 1);
  t.deepEqual(kCenterGreedyLazy(points, 30, 4, 0, 3).selected, new Uint32Array(0));
  t.throws(() => kCenterGreedyLazy(points, 30, 4, 31, 0), { message: /m must be an integer in \[0, n = 30\]/ });
  t.throws(() => kCenterGreedyLazy(points, 30, 4, 3, 30), { message: /startIndex.*got 30/ });
  t.throws(() => kCenterGreedyLazy(points, 30, 4, 3, 0, { lowerBoundDims: 5 }), { message: /lowerBoundDims must be an integer in \[0, dim = 4\], got 5/ });
  const bad = points.slice();
  bad[7] = Number.POSITIVE_INFINITY;
  t.throws(() => kCenterGreedyLazy(bad, 30, 4, 3, 0), { message: /point 1, dimension 3 is Infinity/ });
});

test('selectCoreset: seeded, deterministic, jl projection, pruned = naive', (t) => {
  const n = 6000;
  const dim = 128;
  const features = clustered(n, dim, 300, 2);
  for (const projection of ['jl', 'none'] as const) {
    const opts = { ratio: 0.02, seed: 42, projection };
    const a = selectCoreset(features, n, dim, opts);
    t.is(a.length, 120);
    t.deepEqual(selectCoreset(features, n, dim, opts), a);
    t.notDeepEqual(selectCoreset(features, n, dim, { ...opts, seed: 43 }), a);
    t.is(new Set(a).size, a.length);
    const input = prepareCoresetInput(features, n, dim, opts);
    // jlMinDim(6000) = 214 ≥ 128: the compact d-dim equivalent of the projection is used.
    t.is(input.dim, projection === 'jl' ? Math.min(jlMinDim(n), dim) : dim);
    t.deepEqual(kCenterGreedyNaive(input.points, n, input.dim, input.m, input.startIndex).selected, a);
    if (projection === 'jl') {
      // The same selection as k-center on the explicit 214-d sparse projection (same draws).
      const rng = new Random(42);
      rng.nextInt(n);
      const wide = projectRows(makeSparseProjection(dim, jlMinDim(n), rng), features, n);
      t.deepEqual(kCenterGreedyNaive(wide, n, jlMinDim(n), input.m, input.startIndex).selected, a);
    }
  }
  // The caller's features are never reordered (the rows are copied into the kernel's memory).
  const before = features.slice();
  selectCoreset(features, n, dim, { ratio: 0.02, seed: 1, projection: 'none' });
  t.deepEqual(features, before);
  const input = prepareCoresetInput(features, n, dim, { ratio: 0.02, seed: 1, projection: 'jl' });
  const pointsBefore = input.points.slice();
  kCenterGreedyLazy(input.points, n, input.dim, input.m, input.startIndex);
  t.deepEqual(input.points, pointsBefore);
  // Same seed → same start index with and without projection.
  t.is(
    prepareCoresetInput(features, n, dim, { ratio: 0.02, seed: 5, projection: 'jl' }).startIndex,
    prepareCoresetInput(features, n, dim, { ratio: 0.02, seed: 5, projection: 'none' }).startIndex,
  );
});

test('selectCoreset: ratio 1 keeps everything, progress reaches the total, bad input is named', (t) => {
  const features = clustered(300, 16, 4, 3);
  t.deepEqual(
    Array.from(selectCoreset(features, 300, 16, { ratio: 1, seed: 0, projection: 'jl' })),
    Array.from({ length: 300 }, (_, i) => i),
  );
  const calls: Array<[number, number]> = [];
  selectCoreset(features, 300, 16, { ratio: 0.5, seed: 0, projection: 'none', onProgress: (d, total) => calls.push([d, total]) });
  t.deepEqual(calls.at(-1), [150, 150]);
  t.true(calls.every(([d], i) => i === 0 || d > calls[i - 1][0]));

  t.throws(() => selectCoreset(features, 300, 16, { ratio: 0.001, seed: 0, projection: 'none' }), { message: /ratio 0\.001 of n = 300/ });
  t.throws(() => selectCoreset(features, 301, 16, { ratio: 0.5, seed: 0, projection: 'none' }), { message: /301·16/ });
  t.throws(() => selectCoreset(features, 300, 16, { ratio: 0.5, seed: -3, projection: 'none' }), { message: /seed.*-3/ });
  const bad = features.slice();
  bad[5 * 16 + 2] = Number.NaN;
  t.throws(() => selectCoreset(bad, 300, 16, { ratio: 0.5, seed: 0, projection: 'none' }), { message: /point 5, dimension 2 is NaN/ });
  t.throws(() => kCenterGreedyNaive(features, 300, 16, 10, 300), { message: /startIndex.*got 300/ });
});

test('principalBasis is orthonormal, also for rank-deficient data', (t) => {
  const n = 400;
  const dim = 20;
  const points = new Float32Array(n * dim);
  const rng = new Random(8);
  for (let i = 0; i < n; i++) {
    const a = gaussian(rng);
    const b = gaussian(rng);
    for (let j = 0; j < dim; j++) points[i * dim + j] = j % 2 === 0 ? a : b; // rank 2
  }
  const k = 6;
  const u = principalBasis(points, n, dim, k);
  for (let p = 0; p < k; p++) {
    for (let q = 0; q < k; q++) {
      let dot = 0;
      for (let i = 0; i < dim; i++) dot += u[i * k + p] * u[i * k + q];
      t.true(Math.abs(dot - (p === q ? 1 : 0)) < 1e-12, `columns ${p},${q}: ${dot}`);
    }
  }
});

test('compact projection: the d×d QR factor preserves every distance of the wide JL projection', async (t) => {
  const { compactProjection, makeSparseProjection, projectRows, projectRowsDense } = await import('../models/projection.js');
  const { Random } = await import('../models/random.js');
  const rng = new Random(11);
  const d = 128;
  const proj = makeSparseProjection(d, 329, rng);
  const n = 60;
  const x = Float32Array.from({ length: n * d }, () => rng.nextFloat() * 2 - 1);
  const wide = projectRows(proj, x, n);
  const compact = projectRowsDense(compactProjection(proj), d, d, x, n);
  let worst = 0;
  for (let i = 0; i < n; i++) {
    for (let j = i + 1; j < n; j++) {
      let a = 0;
      let b = 0;
      for (let k = 0; k < 329; k++) a += (wide[i * 329 + k]! - wide[j * 329 + k]!) ** 2;
      for (let k = 0; k < d; k++) b += (compact[i * d + k]! - compact[j * d + k]!) ** 2;
      worst = Math.max(worst, Math.abs(Math.sqrt(a) - Math.sqrt(b)) / Math.sqrt(a));
    }
  }
  t.true(worst < 1e-5, `worst relative distance error ${worst}`);
});

// ---- distance-kernel.ts ----

test('distance kernel: the WebAssembly SIMD squared distance is bit-identical to its JS statement', (t) => {
  const rng = new Random(21);
  const memory = createSharedMemory(1 << 20, 'test');
  const kernel = createKernel(memory);
  const f = new Float32Array(memory.buffer);
  for (const dim of [1, 6, 31, 32, 33, 128, 200]) {
    const dimPad = paddedDim(dim);
    t.is(dimPad % 32, 0);
    for (let trial = 0; trial < 40; trial++) {
      f.fill(0, 0, 2 * dimPad);
      for (let i = 0; i < dim; i++) {
        f[i] = gaussian(rng) * 10 ** rng.nextInt(4);
        f[dimPad + i] = trial % 5 === 0 ? f[i] : gaussian(rng);
      }
      const wasm = kernel.sqdist(0, dimPad * 4, dimPad * 4);
      t.is(wasm, squaredDistanceF32(f, 0, f, dimPad, dimPad), `dim ${dim} trial ${trial}`);
      if (trial % 5 === 0) t.is(wasm, 0);
    }
  }
  // minUpdate / argmax against plain loops, with duplicate rows (ties: lowest index).
  const n = 300;
  const dim = 40;
  const dimPad = paddedDim(dim);
  f.fill(0);
  for (let r = 0; r < n; r++) for (let i = 0; i < dim; i++) f[r * dimPad + i] = r % 7 === 3 ? f[3 * dimPad + i] : gaussian(rng);
  const distAt = n * dimPad * 4;
  const dist = new Float32Array(memory.buffer, distAt, n).fill(Infinity);
  for (const c of [0, 3, 17]) {
    kernel.minUpdate(0, n, dimPad * 4, c * dimPad * 4, distAt);
    const want = Array.from({ length: n }, () => Infinity);
    for (const cc of [0, 3, 17].slice(0, [0, 3, 17].indexOf(c) + 1)) {
      for (let r = 0; r < n; r++) want[r] = Math.min(want[r], squaredDistanceF32(f, r * dimPad, f, cc * dimPad, dimPad));
    }
    t.deepEqual(Array.from(dist), want);
    let best = 0;
    for (let r = 1; r < n; r++) if (want[r] > want[best]) best = r;
    t.is(kernel.argmax(distAt, n), best);
  }
});

test('distance kernel: transformRows matches the plain f64 product, in blocks, triangular or not', (t) => {
  const rng = new Random(31);
  const d = 37;
  const tri = compactProjection(makeSparseProjection(d, 90, rng));
  const n = 70_000; // more rows than one block
  const x = Float32Array.from({ length: n * d }, () => gaussian(rng));
  const plain = projectRowsDense(tri, d, d, x, n);
  const fast = transformRows(tri, d, d, x, n, true);
  t.deepEqual(transformRows(tri, d, d, x, n, false), fast);
  let worst = 0;
  for (let i = 0; i < plain.length; i++) worst = Math.max(worst, Math.abs(plain[i] - fast[i]) / (Math.abs(plain[i]) + 1e-6));
  t.true(worst < 1e-6, `worst relative difference ${worst}`);
  // A wide (non-square) matrix too.
  const w = Float64Array.from({ length: 5 * d }, () => gaussian(rng));
  const y = transformRows(w, 5, d, x.subarray(0, 10 * d), 10, false);
  for (let r = 0; r < 10; r++) {
    for (let i = 0; i < 5; i++) {
      let s = 0;
      for (let c = 0; c < d; c++) s += w[i * d + c] * x[r * d + c];
      t.true(Math.abs(y[r * 5 + i] - s) <= 1e-6 * (1 + Math.abs(s)));
    }
  }
  t.throws(() => transformRows(w, 5, d, x, 3, false), { message: /5×37 matrix and 3 rows of 37 values/ });
});
