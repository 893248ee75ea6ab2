/**
 * PatchCore's memory-bank subsampling: greedy k-center ("farthest point") selection with anomalib
 * semantics, after an optional seeded sparse random projection.
 *
 * Distances are the WebAssembly SIMD kernel's (distance-kernel.ts): f32 rows, f32x4 lanes, one
 * fixed summation order, so the naive reference and the lazy algorithm see bit-identical values.
 *
 * Two exact algorithms with one result: `kCenterGreedyNaive` here (the reference, O(n·m·dim)) and
 * the lazy one that `selectCoreset` runs (coreset-lazy.ts: only points that could be the next
 * centre are refreshed, screened by a 16-dimensional principal-subspace bound). This file also
 * holds what both need: argument checks, the subspace basis and coordinates, the rounding margins
 * that keep every skip exact, and the projection step.
 */
import { createKernel, createSharedMemory, paddedDim, transformRows, type DistanceKernel } from './distance-kernel.js';
import { kCenterGreedyLazy } from './coreset-lazy.js';
import { compactProjection, jlMinDim, makeSparseProjection, projectRows } from './projection.js';
import { Random, validateSeed } from './random.js';

export interface KCenterOptions {
  /** Called now and then with the number of centres selected so far and the total. */
  onProgress?: (done: number, total: number) => void;
  /**
   * kCenterGreedyLazy only: dimensions of the principal-subspace lower bound that screens distance
   * evaluations (0 = off). Default 16 when dim ≥ 48, else off. Changes speed, never the result.
   */
  lowerBoundDims?: number;
}

export interface KCenterResult {
  /** Selected point indices in selection order (the first m′ are the answer for any m′ < m). */
  selected: Uint32Array;
  /** Each selected point's distance (Euclidean, not squared) to the nearest earlier centre. */
  minDistanceAtSelection: Float32Array;
  /** Point-to-centre distance evaluations (the naive algorithm does n·(m + 1)). */
  distanceEvaluations: number;
  /** Lower-bound evaluations (lowerBoundDims-dimensional) that screened them. */
  boundEvaluations: number;
}

/** Margins of the pruning tests (see `kCenterMargins`). */
export interface KCenterMargins {
  /** 1 ∓ 2ε: turn a computed squared distance into a lower / upper bound of the true one. */
  lo: number;
  hi: number;
  /** Absolute error bound of the subspace bound (its coordinates' f32 rounding), doubled. */
  abs: number;
}

export interface SelectCoresetOptions {
  /** Fraction of points to keep, 0 < ratio ≤ 1 (PatchCore-1 % = 0.01). */
  ratio: number;
  /** Seed of the projection and the start index: same inputs + seed → identical indices. */
  seed: number;
  /** 'jl' = sparse random projection to jlMinDim(n) dims first (anomalib); 'none' = raw features. */
  projection: 'jl' | 'none';
  onProgress?: (done: number, total: number) => void;
}

const UNIT_ROUNDOFF_F32 = 2 ** -24;

/**
 * Margins of the pruning tests. The kernel's squared distance over dimPad floats carries a
 * relative error below ε = (dimPad/8 + 8)·2⁻²⁴ (8 lanes of dimPad/8 terms, 3 more additions,
 * rounded differences and squares), for values far above f32's subnormal range; so d̃·(1 − 2ε)
 * and d̃·(1 + 2ε) bound the true squared distance from below and above (lo, hi): a centre is
 * skipped only when a lower bound of d(x,c)² exceeds the point's computed minimum times hi, so
 * its computed distance could not have lowered that minimum. The subspace bound's coordinates are rounded to f32 (|z̃ − z| ≤ 2⁻²⁴·|z| per coordinate), which
 * moves it by at most 8·2⁻²⁴·R² (R the largest coordinate norm): abs is 2.5 times that.
 */
export function kCenterMargins(dimPad: number, maxBoundNorm2: number): KCenterMargins {
  const eps = (dimPad / 8 + 8) * UNIT_ROUNDOFF_F32;
  return { lo: 1 - 2 * eps, hi: 1 + 2 * eps, abs: 20 * UNIT_ROUNDOFF_F32 * maxBoundNorm2 };
}

/** `Math.trunc(n * ratio)`, the float64 product truncated toward zero (anomalib's int(N·ratio)). */
export function coresetSize(n: number, ratio: number): number {
  if (!Number.isSafeInteger(n) || n < 1) {
    throw new RangeError(`coresetSize: n must be a positive integer, got ${String(n)}`);
  }
  if (!(typeof ratio === 'number' && ratio > 0 && ratio <= 1)) {
    throw new RangeError(`coresetSize: ratio must satisfy 0 < ratio <= 1, got ${String(ratio)}`);
  }
  const m = Math.trunc(n * ratio);
  if (m < 1) {
    throw new RangeError(
      `coresetSize: ratio ${String(ratio)} of n = ${n} points selects no point (int(${n} * ${String(ratio)}) = 0); ` +
        `use a larger ratio or more training patches`,
    );
  }
  return m;
}

export function checkKCenterArgs(points: Float32Array, n: number, dim: number, m: number, startIndex: number): void {
  if (!Number.isSafeInteger(n) || n < 1) throw new RangeError(`kCenterGreedy: n must be a positive integer, got ${String(n)}`);
  if (!Number.isSafeInteger(dim) || dim < 1) throw new RangeError(`kCenterGreedy: dim must be a positive integer, got ${String(dim)}`);
  if (points.length !== n * dim) {
    throw new RangeError(`kCenterGreedy: points must hold n·dim = ${n}·${dim} = ${n * dim} values, got ${points.length}`);
  }
  if (!Number.isSafeInteger(m) || m < 0 || m > n) {
    throw new RangeError(`kCenterGreedy: m must be an integer in [0, n = ${n}], got ${String(m)}`);
  }
  if (!Number.isSafeInteger(startIndex) || startIndex < 0 || startIndex >= n) {
    throw new RangeError(`kCenterGreedy: startIndex must be an integer in [0, ${n - 1}], got ${String(startIndex)}`);
  }
  if (n > 0xffffffff) throw new RangeError(`kCenterGreedy: n = ${n} exceeds 2^32 - 1 points`);
  for (let i = 0; i < points.length; i++) {
    if (!Number.isFinite(points[i])) {
      throw new RangeError(`kCenterGreedy: point ${Math.floor(i / dim)}, dimension ${i % dim} is ${String(points[i])}; features must be finite`);
    }
  }
}

export function progressStride(m: number): number {
  return Math.max(1, Math.ceil(m / 100));
}


/** Dimensions of the orthonormal basis used for the cheap lower bound (see `principalBasis`). */
export const BOUND_DIMS = 16;

/**
 * An orthonormal basis (dim × k, column j at U[i·k + j]) of the k leading principal directions of
 * the rows, by orthogonal iteration on the covariance of an evenly strided sample. Any orthonormal
 * basis makes ‖Uᵀ(x − y)‖ ≤ ‖x − y‖ a valid lower bound; the better it follows the data, the more
 * distance evaluations the bound saves. Deterministic: no random start, fixed iteration count.
 */
export function principalBasis(points: Float32Array, n: number, dim: number, k: number, maxSample = 2048, iterations = 12): Float64Array {
  const step = Math.max(1, Math.floor(n / maxSample));
  const mean = new Float64Array(dim);
  let count = 0;
  for (let r = 0; r < n; r += step, count++) {
    const o = r * dim;
    for (let i = 0; i < dim; i++) mean[i] += points[o + i];
  }
  for (let i = 0; i < dim; i++) mean[i] /= count;
  const cov = new Float64Array(dim * dim);
  const row = new Float64Array(dim);
  for (let r = 0; r < n; r += step) {
    const o = r * dim;
    for (let i = 0; i < dim; i++) row[i] = points[o + i] - mean[i];
    for (let i = 0; i < dim; i++) {
      const v = row[i];
      if (v === 0) continue;
      const ci = i * dim;
      for (let j = i; j < dim; j++) cov[ci + j] += v * row[j];
    }
  }
  for (let i = 0; i < dim; i++) for (let j = 0; j < i; j++) cov[i * dim + j] = cov[j * dim + i];
  // Start from the k coordinate axes of largest variance, then iterate Q ← orth(C·Q).
  const order = Array.from({ length: dim }, (_, i) => i).sort((a, b) => cov[b * dim + b] - cov[a * dim + a] || a - b);
  let q = new Float64Array(dim * k);
  for (let j = 0; j < k; j++) q[order[j % dim] * k + j] = 1;
  orthonormaliseColumns(q, dim, k);
  for (let it = 0; it < iterations; it++) {
    const next = new Float64Array(dim * k);
    for (let i = 0; i < dim; i++) {
      const ci = i * dim;
      for (let l = 0; l < dim; l++) {
        const c = cov[ci + l];
        if (c === 0) continue;
        const ql = l * k;
        const ni = i * k;
        for (let j = 0; j < k; j++) next[ni + j] += c * q[ql + j];
      }
    }
    q = next;
    orthonormaliseColumns(q, dim, k);
  }
  return q;
}

/** Modified Gram–Schmidt, twice ("twice is enough"); a degenerate column becomes a fresh axis. */
function orthonormaliseColumns(q: Float64Array, dim: number, k: number): void {
  const orthogonaliseAgainstEarlier = (j: number): number => {
    for (let pass = 0; pass < 2; pass++) {
      for (let p = 0; p < j; p++) {
        let dot = 0;
        for (let i = 0; i < dim; i++) dot += q[i * k + j] * q[i * k + p];
        for (let i = 0; i < dim; i++) q[i * k + j] -= dot * q[i * k + p];
      }
    }
    let norm = 0;
    for (let i = 0; i < dim; i++) norm += q[i * k + j] * q[i * k + j];
    return Math.sqrt(norm);
  };
  for (let j = 0; j < k; j++) {
    // Unit length first, so that the degeneracy test below is relative to the column's size.
    let norm0 = 0;
    for (let i = 0; i < dim; i++) norm0 += q[i * k + j] * q[i * k + j];
    norm0 = Math.sqrt(norm0);
    if (norm0 > 0 && Number.isFinite(norm0)) for (let i = 0; i < dim; i++) q[i * k + j] /= norm0;
    let norm = orthogonaliseAgainstEarlier(j);
    // Rank-deficient data: any unit vector orthogonal to the others keeps the bound valid.
    for (let axis = 0; !(norm > 1e-8) && axis < dim; axis++) {
      for (let i = 0; i < dim; i++) q[i * k + j] = i === axis ? 1 : 0;
      norm = orthogonaliseAgainstEarlier(j);
      if (norm < 0.5) norm = 0;
    }
    for (let i = 0; i < dim; i++) q[i * k + j] /= norm;
  }
}

/**
 * Writes every point row's bound coordinates Uᵀ(x − mean) as f32 (stride kPad, zero-padded) with
 * the kernel's f64 transform, and returns the largest squared coordinate norm (before rounding),
 * which sizes the bound's margin.
 */
export function computeBoundCoordinates(
  kernel: DistanceKernel,
  /** Byte offsets in the kernel's memory (rows at stride dimPad floats, z at stride kPad) and the strides. */
  L: { basisT: number; basisBias: number; rows: number; rowF64: number; z: number; dimPad: number; kPad: number },
  points: Float32Array,
  n: number,
  dim: number,
  k: number,
): number {
  const basis = principalBasis(points, n, dim, k);
  const mean = new Float64Array(dim);
  for (let r = 0; r < n; r++) for (let i = 0; i < dim; i++) mean[i] += points[r * dim + i];
  for (let i = 0; i < dim; i++) mean[i] /= n;
  const buf = kernel.memory.buffer;
  const w = new Float64Array(buf, L.basisT, L.kPad * L.dimPad);
  const bias = new Float64Array(buf, L.basisBias, L.kPad);
  for (let j = 0; j < k; j++) {
    let b = 0;
    for (let i = 0; i < dim; i++) {
      w[j * L.dimPad + i] = basis[i * k + j];
      b += basis[i * k + j] * mean[i];
    }
    bias[j] = b;
  }
  // Rows of x − mean would be exact in f64 too; subtracting Uᵀ·mean afterwards only costs
  // cancellation far below the f32 rounding the bound's margin covers.
  return kernel.matRows(L.basisT, k, L.dimPad, 0, L.basisBias, L.rows, L.dimPad, n, dim, L.rowF64, L.z, L.kPad);
}

/** Copies n rows of dim floats into `dst` at stride dimPad (the padding stays zero). */
export function copyRowsPadded(points: Float32Array, n: number, dim: number, dst: Float32Array, dimPad: number): void {
  if (dim === dimPad) {
    dst.set(points.subarray(0, n * dim));
    return;
  }
  for (let r = 0; r < n; r++) dst.set(points.subarray(r * dim, r * dim + dim), r * dimPad);
}

/**
 * The reference algorithm, O(n·m·dim): anomalib's greedy k-center. The start index only
 * initialises the minimum distances; then m times the point with the largest minimum distance
 * (lowest index on ties) is selected and all minimum distances are lowered with it. Distances are
 * the kernel's (see the file comment), as in `kCenterGreedyLazy`.
 */
export function kCenterGreedyNaive(
  points: Float32Array,
  n: number,
  dim: number,
  m: number,
  startIndex: number,
  opts: KCenterOptions = {},
): KCenterResult {
  checkKCenterArgs(points, n, dim, m, startIndex);
  const dimPad = paddedDim(dim);
  const dimBytes = dimPad * 4;
  const rowsAt = 0;
  const distAt = n * dimBytes;
  const centreAt = distAt + Math.ceil(n / 4) * 16;
  const kernel = createKernel(createSharedMemory(centreAt + dimBytes, 'kCenterGreedyNaive'));
  const buf = kernel.memory.buffer;
  const rows = new Float32Array(buf, rowsAt, n * dimPad);
  const mind = new Float32Array(buf, distAt, n);
  const centre = new Float32Array(buf, centreAt, dimPad);
  copyRowsPadded(points, n, dim, rows, dimPad);
  const selected = new Uint32Array(m);
  const minDistanceAtSelection = new Float32Array(m);
  const stride = progressStride(m);
  mind.fill(Infinity);
  centre.set(rows.subarray(startIndex * dimPad, startIndex * dimPad + dimPad));
  kernel.minUpdate(rowsAt, n, dimBytes, centreAt, distAt);
  for (let s = 0; s < m; s++) {
    const bestIdx = kernel.argmax(distAt, n);
    selected[s] = bestIdx;
    minDistanceAtSelection[s] = Math.sqrt(mind[bestIdx]);
    centre.set(rows.subarray(bestIdx * dimPad, bestIdx * dimPad + dimPad));
    kernel.minUpdate(rowsAt, n, dimBytes, centreAt, distAt);
    if (opts.onProgress && ((s + 1) % stride === 0 || s + 1 === m)) opts.onProgress(s + 1, m);
  }
  return { selected, minDistanceAtSelection, distanceEvaluations: n * (m + 1), boundEvaluations: 0 };
}

export interface CoresetInput {
  points: Float32Array;
  dim: number;
  startIndex: number;
  /** Number of centres: coresetSize(n, ratio). */
  m: number;
}

function checkSelectArgs(features: Float32Array, n: number, dim: number, opts: SelectCoresetOptions): number {
  const m = coresetSize(n, opts.ratio);
  validateSeed(opts.seed, 'selectCoreset: seed');
  if (opts.projection !== 'jl' && opts.projection !== 'none') {
    throw new RangeError(`selectCoreset: projection must be 'jl' or 'none', got ${String(opts.projection)}`);
  }
  if (!Number.isSafeInteger(dim) || dim < 1) throw new RangeError(`selectCoreset: dim must be a positive integer, got ${String(dim)}`);
  if (features.length !== n * dim) {
    throw new RangeError(`selectCoreset: features must hold n·dim = ${n}·${dim} = ${n * dim} values, got ${features.length}`);
  }
  return m;
}

/**
 * First half of `selectCoreset`: the seeded start index (the PRNG's first draw, so 'jl' and 'none'
 * start from the same point) and, for 'jl', the rows projected with the sparse random projection
 * drawn next — to jlMinDim(n) dims even when that exceeds dim, as anomalib does.
 */
export function prepareCoresetInput(features: Float32Array, n: number, dim: number, opts: SelectCoresetOptions): CoresetInput {
  const m = checkSelectArgs(features, n, dim, opts);
  const rng = new Random(opts.seed);
  const startIndex = rng.nextInt(n);
  if (opts.projection === 'none') return { points: features, dim, startIndex, m };
  // jlMinDim(n) ≥ 17 for every n ≥ 2; n = 1 only admits ratio 1, which never projects.
  const proj = makeSparseProjection(dim, Math.max(1, jlMinDim(n)), rng);
  if (proj.outputDim >= dim) {
    // Same distances as on the projected rows, at dim instead of outputDim dimensions of work
    // (the transform runs in the kernel's f64 lanes: 3–4× the plain JS loop at 627k rows).
    return { points: transformRows(compactProjection(proj), dim, dim, features, n, true), dim, startIndex, m };
  }
  return { points: projectRows(proj, features, n), dim: proj.outputDim, startIndex, m };
}

/**
 * PatchCore coreset: indices (in selection order) of ⌊n·ratio⌋ feature rows chosen by greedy
 * k-center (anomalib semantics) on the rows prepared by `prepareCoresetInput`. Same inputs + seed →
 * identical indices. ratio = 1 keeps every row: 0 … n−1 without subsampling.
 */
export function selectCoreset(features: Float32Array, n: number, dim: number, opts: SelectCoresetOptions): Uint32Array {
  const m = checkSelectArgs(features, n, dim, opts);
  if (m === n) {
    const all = new Uint32Array(n);
    for (let i = 0; i < n; i++) all[i] = i;
    opts.onProgress?.(n, n);
    return all;
  }
  const input = prepareCoresetInput(features, n, dim, opts);
  return kCenterGreedyLazy(input.points, n, input.dim, input.m, input.startIndex, { onProgress: opts.onProgress }).selected;
}
