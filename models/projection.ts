/**
 * Johnson–Lindenstrauss dimension and the seeded sparse random projection PatchCore applies
 * before its greedy coreset (sklearn's SparseRandomProjection, as anomalib uses it).
 */
import { Random } from './random.js';

/**
 * sklearn's `johnson_lindenstrauss_min_dim`: int(4 ln n / (eps²/2 − eps³/3)), truncated toward 0.
 * 243 for n = 18,816 and 328 for n = 597,408 at the default eps = 0.9.
 */
export function jlMinDim(nSamples: number, eps = 0.9): number {
  if (!Number.isSafeInteger(nSamples) || nSamples < 1) {
    throw new RangeError(`jlMinDim: nSamples must be a positive integer, got ${String(nSamples)}`);
  }
  if (!(eps > 0 && eps < 1)) {
    throw new RangeError(`jlMinDim: eps must lie in (0, 1), got ${String(eps)}`);
  }
  const denominator = (eps * eps) / 2 - (eps * eps * eps) / 3;
  return Math.trunc((4 * Math.log(nSamples)) / denominator);
}

/**
 * A sparse projection matrix R (outputDim × inputDim), stored by output dimension: the inputs
 * of output i with weight +scale are `indices[rowStart[i] .. minusStart[i])`, those with weight
 * −scale are `indices[minusStart[i] .. rowStart[i + 1])`. y = R x.
 */
export interface SparseProjection {
  inputDim: number;
  outputDim: number;
  /** Probability that an entry is non-zero (1/√inputDim by default). */
  density: number;
  /** Magnitude of every non-zero entry: √(1/density) / √outputDim. */
  scale: number;
  rowStart: Uint32Array;
  minusStart: Uint32Array;
  indices: Uint32Array;
}

/**
 * Draws a sparse random projection as sklearn defines it: each entry is +s or −s with
 * probability density/2 each and 0 otherwise, s = √(1/density)/√outputDim, density = 1/√inputDim.
 * One uniform draw per entry, row by row (output dims), in input order — the sequence is part of
 * the model-file contract: do not reorder these draws.
 */
export function makeSparseProjection(
  inputDim: number,
  outputDim: number,
  rng: Random,
  density = 1 / Math.sqrt(inputDim),
): SparseProjection {
  if (!Number.isSafeInteger(inputDim) || inputDim < 1) {
    throw new RangeError(`makeSparseProjection: inputDim must be a positive integer, got ${String(inputDim)}`);
  }
  if (!Number.isSafeInteger(outputDim) || outputDim < 1) {
    throw new RangeError(`makeSparseProjection: outputDim must be a positive integer, got ${String(outputDim)}`);
  }
  if (!(density > 0 && density <= 1)) {
    throw new RangeError(`makeSparseProjection: density must lie in (0, 1], got ${String(density)}`);
  }
  const half = density / 2;
  const rowStart = new Uint32Array(outputDim + 1);
  const minusStart = new Uint32Array(outputDim);
  const plus: number[] = [];
  const minus: number[] = [];
  const all: number[] = [];
  for (let i = 0; i < outputDim; i++) {
    plus.length = 0;
    minus.length = 0;
    for (let j = 0; j < inputDim; j++) {
      const u = rng.nextFloat();
      if (u < half) plus.push(j);
      else if (u < density) minus.push(j);
    }
    rowStart[i] = all.length;
    for (const j of plus) all.push(j);
    minusStart[i] = all.length;
    for (const j of minus) all.push(j);
  }
  rowStart[outputDim] = all.length;
  return {
    inputDim,
    outputDim,
    density,
    scale: Math.sqrt(1 / density) / Math.sqrt(outputDim),
    rowStart,
    minusStart,
    indices: Uint32Array.from(all),
  };
}

/** Projects n row-major rows of `proj.inputDim` values: returns n × outputDim float32. */
export function projectRows(proj: SparseProjection, data: Float32Array, n: number): Float32Array {
  const { inputDim: d, outputDim: k, rowStart, minusStart, indices, scale } = proj;
  if (!Number.isSafeInteger(n) || n < 0 || data.length !== n * d) {
    throw new RangeError(`projectRows: expected ${String(n)} rows of ${d} values (${n * d}), got ${data.length} values`);
  }
  const out = new Float32Array(n * k);
  for (let r = 0; r < n; r++) {
    const xo = r * d;
    const yo = r * k;
    for (let i = 0; i < k; i++) {
      let acc = 0;
      const ms = minusStart[i];
      const re = rowStart[i + 1];
      for (let p = rowStart[i]; p < ms; p++) acc += data[xo + indices[p]];
      for (let p = ms; p < re; p++) acc -= data[xo + indices[p]];
      out[yo + i] = acc * scale;
    }
  }
  return out;
}

/**
 * A compact equivalent of a projection that maps to MORE dimensions than it reads (JL dims ≥ d,
 * as with 128-d MobileNetV2 patches and eps 0.9): the d×d upper-triangular factor T of R's QR
 * decomposition satisfies ‖T v‖ = ‖R v‖ for every v, so greedy k-center on T x sees exactly the
 * distances it would see on R x (up to float rounding) at d instead of k dimensions of work.
 * Returned row-major (y = T x).
 */
export function compactProjection(proj: SparseProjection): Float64Array {
  const k = proj.outputDim;
  const d = proj.inputDim;
  // Dense copy of R (k × d), then Householder QR in float64.
  const a = new Float64Array(k * d);
  for (let i = 0; i < k; i++) {
    for (let p = proj.rowStart[i]!; p < proj.minusStart[i]!; p++) a[i * d + proj.indices[p]!] = proj.scale;
    for (let p = proj.minusStart[i]!; p < proj.rowStart[i + 1]!; p++) a[i * d + proj.indices[p]!] = -proj.scale;
  }
  const v = new Float64Array(k);
  for (let j = 0; j < Math.min(d, k); j++) {
    let norm = 0;
    for (let i = j; i < k; i++) norm += a[i * d + j]! ** 2;
    norm = Math.sqrt(norm);
    if (norm === 0) continue;
    const alpha = a[j * d + j]! > 0 ? -norm : norm;
    let vnorm = 0;
    for (let i = j; i < k; i++) {
      v[i] = a[i * d + j]! - (i === j ? alpha : 0);
      vnorm += v[i]! ** 2;
    }
    if (vnorm === 0) continue;
    for (let c = j; c < d; c++) {
      let dot = 0;
      for (let i = j; i < k; i++) dot += v[i]! * a[i * d + c]!;
      const f = (2 * dot) / vnorm;
      for (let i = j; i < k; i++) a[i * d + c] -= f * v[i]!;
    }
  }
  const t = new Float64Array(d * d);
  for (let i = 0; i < Math.min(d, k); i++) for (let c = i; c < d; c++) t[i * d + c] = a[i * d + c]!;
  return t;
}

/** y = T x for every row (T: outDim × inDim, row-major, float64), float32 out. */
export function projectRowsDense(t: Float64Array, outDim: number, inDim: number, data: Float32Array, n: number): Float32Array {
  const out = new Float32Array(n * outDim);
  const x = new Float64Array(inDim);
  for (let r = 0; r < n; r++) {
    for (let c = 0; c < inDim; c++) x[c] = data[r * inDim + c]!;
    for (let i = 0; i < outDim; i++) {
      let s = 0;
      const row = i * inDim;
      for (let c = i; c < inDim; c++) s += t[row + c]! * x[c]!; // T is upper triangular
      out[r * outDim + i] = s;
    }
  }
  return out;
}
