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
