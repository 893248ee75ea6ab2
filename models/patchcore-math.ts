/**
 * PatchCore's maths as plain TypeScript, written to read like the paper (and anomalib):
 * patch aggregation, nearest-neighbour search, the re-weighted image score and the blurred
 * anomaly map. The compiled ONNX graph computes the same things; this module is the yardstick
 * it is tested against, and the source of the constant matrices the graph uses.
 */

/** Gaussian blur parameters used by anomalib's PatchCore anomaly map. */
export const BLUR_SIGMA = 4;
export const BLUR_TAPS = 2 * Math.trunc(4 * BLUR_SIGMA + 0.5) + 1; // 33
/** Number of memory entries that take part in the score re-weighting (anomalib's k). */
export const REWEIGHT_K = 9;

/** 3×3 average pooling, stride 1, zero padding 1, padded zeros counted (torch AvgPool2d default). */
export function avgPool3x3(src: Float32Array, channels: number, h: number, w: number): Float32Array {
  const out = new Float32Array(channels * h * w);
  for (let c = 0; c < channels; c++) {
    const base = c * h * w;
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        let sum = 0;
        for (let dy = -1; dy <= 1; dy++) {
          const yy = y + dy;
          if (yy < 0 || yy >= h) continue;
          for (let dx = -1; dx <= 1; dx++) {
            const xx = x + dx;
            if (xx < 0 || xx >= w) continue;
            sum += src[base + yy * w + xx]!;
          }
        }
        out[base + y * w + x] = sum / 9;
      }
    }
  }
  return out;
}

/**
 * Bilinear interpolation weights as a dense [out, in] matrix (align_corners = false, edges
 * clamped, no antialiasing): torch.nn.functional.interpolate(mode='bilinear').
 */
export function bilinearMatrix(inSize: number, outSize: number): Float64Array {
  const m = new Float64Array(outSize * inSize);
  const scale = inSize / outSize;
  for (let i = 0; i < outSize; i++) {
    const s = Math.max((i + 0.5) * scale - 0.5, 0);
    const i0 = Math.min(Math.floor(s), inSize - 1);
    const i1 = Math.min(i0 + 1, inSize - 1);
    const lambda = s - i0;
    m[i * inSize + i0] += 1 - lambda;
    m[i * inSize + i1] += lambda;
  }
  return m;
}

/** Nearest-neighbour upsampling as a dense [out, in] matrix: out[y] = in[floor(y · in / out)]. */
export function nearestMatrix(inSize: number, outSize: number): Float64Array {
  const m = new Float64Array(outSize * inSize);
  for (let y = 0; y < outSize; y++) m[y * inSize + Math.floor((y * inSize) / outSize)] = 1;
  return m;
}

/** The normalised 1-D Gaussian kernel (σ = 4, 33 taps). */
export function gaussianKernel(sigma = BLUR_SIGMA, taps = BLUR_TAPS): Float64Array {
  const k = new Float64Array(taps);
  const r = (taps - 1) / 2;
  let sum = 0;
  for (let i = 0; i < taps; i++) {
    k[i] = Math.exp(-((i - r) ** 2) / (2 * sigma * sigma));
    sum += k[i]!;
  }
  for (let i = 0; i < taps; i++) k[i]! /= sum;
  return k;
}

/** Gaussian blur along one axis with reflect padding (index −1 reads 1) as a dense [n, n] matrix. */
export function blurMatrix(n: number, sigma = BLUR_SIGMA, taps = BLUR_TAPS): Float64Array {
  const k = gaussianKernel(sigma, taps);
  const r = (taps - 1) / 2;
  if (n <= r) throw new Error(`anomaly map of ${n} pixels is too small for a ${taps}-tap reflect-padded blur`);
  const m = new Float64Array(n * n);
  for (let y = 0; y < n; y++) {
    for (let t = -r; t <= r; t++) {
      let j = y + t;
      if (j < 0) j = -j;
      else if (j >= n) j = 2 * (n - 1) - j;
      m[y * n + j] += k[t + r]!;
    }
  }
  return m;
}

/** [a×b] · [b×c] in float64. */
export function matmul(a: Float64Array, b: Float64Array, rows: number, inner: number, cols: number): Float64Array {
  const out = new Float64Array(rows * cols);
  for (let i = 0; i < rows; i++) {
    for (let k = 0; k < inner; k++) {
      const av = a[i * inner + k]!;
      if (av === 0) continue;
      for (let j = 0; j < cols; j++) out[i * cols + j] += av * b[k * cols + j]!;
    }
  }
  return out;
}

/** The matrix that turns a [grid] patch-distance axis into a blurred [size] map axis. */
export function mapAxisMatrix(grid: number, size: number): Float64Array {
  return matmul(blurMatrix(size), nearestMatrix(grid, size), size, size, grid);
}

/**
 * Patch embeddings of one image from its two taps: pool each tap 3×3, upsample the stride-16
 * tap bilinearly to the stride-8 grid, concatenate channels. Returns [h8·w8, c8 + c16], row = y·w8 + x.
 */
export function aggregate(
  tap8: Float32Array, c8: number, h8: number, w8: number,
  tap16: Float32Array, c16: number, h16: number, w16: number,
): Float32Array {
  const p8 = avgPool3x3(tap8, c8, h8, w8);
  const p16 = avgPool3x3(tap16, c16, h16, w16);
  const uy = bilinearMatrix(h16, h8);
  const ux = bilinearMatrix(w16, w8);
  const dim = c8 + c16;
  const out = new Float32Array(h8 * w8 * dim);
  for (let y = 0; y < h8; y++) {
    for (let x = 0; x < w8; x++) {
      const row = (y * w8 + x) * dim;
      for (let c = 0; c < c8; c++) out[row + c] = p8[c * h8 * w8 + y * w8 + x]!;
      for (let c = 0; c < c16; c++) {
        let v = 0;
        for (let sy = 0; sy < h16; sy++) {
          const wy = uy[y * h16 + sy]!;
          if (wy === 0) continue;
          for (let sx = 0; sx < w16; sx++) {
            const wx = ux[x * w16 + sx]!;
            if (wx !== 0) v += wy * wx * p16[c * h16 * w16 + sy * w16 + sx]!;
          }
        }
        out[row + c8 + c] = v;
      }
    }
  }
  return out;
}

/** Squared Euclidean distance between row i of a and row j of b (both [*, dim]). */
export function squaredDistance(a: Float32Array, i: number, b: Float32Array, j: number, dim: number): number {
  let s = 0;
  const ai = i * dim;
  const bj = j * dim;
  for (let d = 0; d < dim; d++) {
    const diff = a[ai + d]! - b[bj + d]!;
    s += diff * diff;
  }
  return s;
}

export interface NearestResult {
  /** Euclidean distance of each query to its nearest memory entry. */
  distance: Float32Array;
  /** Index of that entry (lowest index on ties). */
  index: Int32Array;
}

/** Exact nearest neighbour of every query row among the memory rows (brute force, float64). */
export function nearest(queries: Float32Array, nQueries: number, bank: Float32Array, nBank: number, dim: number): NearestResult {
  const distance = new Float32Array(nQueries);
  const index = new Int32Array(nQueries);
  for (let q = 0; q < nQueries; q++) {
    let best = Infinity;
    let bestJ = -1;
    for (let j = 0; j < nBank; j++) {
      const d = squaredDistance(queries, q, bank, j, dim);
      if (d < best) {
        best = d;
        bestJ = j;
      }
    }
    distance[q] = Math.sqrt(best);
    index[q] = bestJ;
  }
  return { distance, index };
}

export interface ScoreDetails {
  score: number;
  /** The plain maximum of the patch distances (s*). */
  max: number;
  /** Index of the patch with the largest distance (first on ties). */
  patch: number;
  /** Its nearest memory entry m*. */
  memory: number;
  /** The k memory entries nearest to m*, m* first. */
  support: number[];
  weight: number;
}

/**
 * anomalib's re-weighted image score: take the patch p* with the largest nearest distance s*,
 * its nearest memory entry m*, the k entries nearest to m* (m* included, first); the weight is
 * 1 − softmax(distances from p* to them)[0] and the score is weight · s*.
 */
export function reweightedScore(
  patches: Float32Array, nn: NearestResult, bank: Float32Array, nBank: number, dim: number, k = REWEIGHT_K,
): ScoreDetails {
  let patch = 0;
  for (let p = 1; p < nn.distance.length; p++) if (nn.distance[p]! > nn.distance[patch]!) patch = p;
  const max = nn.distance[patch]!;
  const memory = nn.index[patch]!;
  const order = Array.from({ length: nBank }, (_, j) => j);
  const dm = order.map((j) => (j === memory ? -1 : squaredDistance(bank, memory, bank, j, dim)));
  order.sort((a, b) => dm[a]! - dm[b]! || a - b);
  const support = order.slice(0, Math.min(k, nBank));
  const d = support.map((j) => Math.sqrt(squaredDistance(patches, patch, bank, j, dim)));
  const top = Math.max(...d);
  const exps = d.map((v) => Math.exp(v - top));
  const weight = 1 - exps[0]! / exps.reduce((a, b) => a + b, 0);
  return { score: weight * max, max, patch, memory, support, weight };
}

/** The anomaly map: patch distances [grid×grid] upsampled (nearest) to size×size and blurred. */
export function anomalyMap(distances: Float32Array, grid: number, size: number): Float32Array {
  const a = mapAxisMatrix(grid, size); // [size, grid]
  const d = Float64Array.from(distances);
  // map = A · D · Aᵀ
  const ad = matmul(a, d, size, grid, grid); // [size, grid]
  const at = new Float64Array(grid * size);
  for (let i = 0; i < size; i++) for (let j = 0; j < grid; j++) at[j * size + i] = a[i * grid + j]!;
  return Float32Array.from(matmul(ad, at, size, grid, size));
}
