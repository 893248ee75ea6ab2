/**
 * PatchCore's memory-bank subsampling: greedy k-center ("farthest point") selection with anomalib
 * semantics, after an optional seeded sparse random projection.
 *
 * Distances are the WebAssembly SIMD kernel's (distance-kernel.ts): f32 rows, f32x4 lanes, one
 * fixed summation order, so the naive reference and the pruned algorithms see bit-identical values.
 *
 * Three exact algorithms with one result: `kCenterGreedyNaive` (the reference), the lazy one that
 * `selectCoreset` runs (coreset-lazy.ts: only points that could be the next centre are refreshed;
 * about 3× faster on one thread than the pushing one on two, on 564 k real patches), and the pushing
 * one here (`kCenterGreedy`, kept as the benchmarks' baseline), where each new centre pushes its
 * distance to the points it might take. The pushing step is exact but pruned, so it touches far
 * fewer than n·m distances:
 * - every point remembers the centre it is closest to (its cluster) and its squared distance to
 *   it; when a new centre c arrives, a cluster around centre a can only contain points that get
 *   closer to c when d(c, a) < 2·radius(a), and a point x in it only when d(c, a) < 2·d(x, a)
 *   (triangle inequality);
 * - the survivors are screened by a lower bound built on the leading 16-dimensional principal
 *   subspace P: d(x,c)² = ‖P(x − c)‖² + ‖P⊥(x − c)‖², the first term computed from 16 stored
 *   coordinates, the second bounded below by (q − ρ)₊², with ρ ≥ ‖P⊥(x − a)‖ stored per point and
 *   q ≤ ‖P⊥(c − a)‖ per cluster (triangle inequality outside the subspace); (q − ρ)₊² alone
 *   screens without reading the coordinates. The full distance stops early once its partial
 *   sum shows the point stays.
 * Every skip holds with a margin above the kernel's float rounding (see `kCenterMargins`), so
 * skipped points provably keep their distance and the selection is identical, step for step and
 * tie for tie, to `kCenterGreedyNaive`.
 *
 * Each cluster's members sit contiguously in one shared WebAssembly memory (rows, bound
 * coordinates, distances, indices), and the clusters one step must scan are independent: worker
 * threads (coreset-worker.ts) share them with the main thread. The result does not depend on the
 * number of threads.
 */
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import {
  CTL,
  openShared,
  planLayout,
  processChunk,
  readFailure,
  runChunks,
  type CoresetWorkerData,
  type KCenterLayout,
  type KCenterMargins,
  type KCenterShared,
} from './coreset-worker.js';
import { resolveWorkerModule, type WorkerModule } from './worker-module.js';
import { createKernel, createSharedMemory, paddedDim, transformRows, type DistanceKernel, type KernelMemory } from './distance-kernel.js';
import { kCenterGreedyLazy } from './coreset-lazy.js';
import { compactProjection, jlMinDim, makeSparseProjection, projectRows } from './projection.js';
import { Random, validateSeed } from './random.js';

export interface KCenterOptions {
  /** Called now and then with the number of centres selected so far and the total. */
  onProgress?: (done: number, total: number) => void;
  /**
   * kCenterGreedy only: dimensions of the principal-subspace lower bound that screens distance
   * evaluations (0 = off). Default 16 when dim ≥ 48, else off. Changes speed, never the result.
   */
  lowerBoundDims?: number;
  /**
   * kCenterGreedy only: threads that scan clusters, this one included (1 = no workers). Default
   * min(os.availableParallelism(), 4). Changes speed, never the result.
   */
  threads?: number;
  /**
   * kCenterGreedy only: a step is shared with the workers only when it scans at least this many
   * points (default 32,768), and workers start only for n ≥ 2× this. 0 shares every step (tests).
   */
  parallelMinMembers?: number;
  /** Tests only: a worker throws on this many-th chunk it takes (−1: while starting). */
  failWorkerAtChunk?: number;
}

export interface KCenterResult {
  /** Selected point indices in selection order (the first m′ are the answer for any m′ < m). */
  selected: Uint32Array;
  /** Each selected point's distance (Euclidean, not squared) to the nearest earlier centre. */
  minDistanceAtSelection: Float32Array;
  /** Point-to-centre distance evaluations (the naive algorithm does n·(m + 1)). */
  distanceEvaluations: number;
  /** Centre-to-centre distance evaluations spent deciding which clusters to skip. */
  centreDistanceEvaluations: number;
  /** Lower-bound evaluations (lowerBoundDims-dimensional) that screened the two kinds above. */
  boundEvaluations: number;
  /** Threads that took part (1 + workers started). */
  threads: number;
  /** Share of the chunks of shared steps that workers scanned (0 without workers). */
  workerShare: number;
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
 * and d̃·(1 + 2ε) bound the true squared distance from below and above (lo, hi). With
 * slack = 1 + 4ε, d̃(c,a)² ≥ 4·slack·d̃(x,a)² implies the true d(c,a) ≥ 2·d(x,a)/√(1 − ε), so
 * d(x,c)² ≥ d̃(x,a)²/(1 − ε) and the computed d̃(x,c)² ≥ d̃(x,a)²: the point provably stays;
 * every other test asks a lower bound of d(x,c)² to exceed d̃(x,a)²·hi for the same reason. The
 * subspace bound's coordinates are rounded to f32 (|z̃ − z| ≤ 2⁻²⁴·|z| per coordinate), which
 * moves it by at most 8·2⁻²⁴·R² (R the largest coordinate norm): abs is 2.5 times that.
 */
export function kCenterMargins(dimPad: number, maxBoundNorm2: number): KCenterMargins {
  const eps = (dimPad / 8 + 8) * UNIT_ROUNDOFF_F32;
  return { slack: 1 + 4 * eps, lo: 1 - 2 * eps, hi: 1 + 2 * eps, abs: 20 * UNIT_ROUNDOFF_F32 * maxBoundNorm2 };
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
 * Writes every arena row's bound coordinates Uᵀ(x − mean) as f32 (stride kPad, zero-padded) with
 * the kernel's f64 transform, and returns the largest squared coordinate norm (before rounding),
 * which sizes the bound's margin.
 */
export function computeBoundCoordinates(
  kernel: DistanceKernel,
  L: Pick<KCenterLayout, 'basisT' | 'basisBias' | 'rows' | 'rowF64' | 'z' | 'dimPad' | 'kPad'>,
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
 * the kernel's (see the file comment), as in `kCenterGreedy`.
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
  return { selected, minDistanceAtSelection, distanceEvaluations: n * (m + 1), centreDistanceEvaluations: 0, boundEvaluations: 0, threads: 1, workerShare: 0 };
}

const DEFAULT_PARALLEL_MIN_MEMBERS = 32_768;
/** A worker that has taken a chunk and shows no progress for this long is declared stuck. */
const WORKER_STALL_MS = 120_000;

function resolveThreads(threads: number | undefined): number {
  if (threads === undefined) return Math.max(1, Math.min(availableParallelism(), 4));
  if (!Number.isSafeInteger(threads) || threads < 1 || threads > 64) {
    throw new RangeError(`kCenterGreedy: threads must be an integer in [1, 64], got ${String(threads)}`);
  }
  return threads;
}

function workerModule(): WorkerModule {
  return resolveWorkerModule('coreset-worker', import.meta.url, 'kCenterGreedy');
}

/**
 * The worker's first code (dynamic imports only, so it runs as CommonJS or ESM): registers tsx if needed, imports the worker module and
 * serves; a module that fails to load is reported through the shared error slot (the main thread
 * is blocked in Atomics.wait and would never see a Worker 'error' event).
 */
const WORKER_BOOTSTRAP = `
import('node:worker_threads').then(({ workerData }) => {
const loader = workerData.loaderUrl ? import(workerData.loaderUrl).then((api) => api.register()) : Promise.resolve();
return loader.then(() => import(workerData.moduleUrl)).then(
  (m) => m.serveCoresetWorker(workerData),
  (error) => {
    const L = workerData.layout;
    const buf = workerData.memory.buffer;
    const ctl = new Int32Array(buf, L.control, 16);
    if (Atomics.compareExchange(ctl, ${CTL.ERROR}, 0, -1) === 0) {
      const text = 'could not load ' + workerData.moduleUrl + ': ' + ((error && error.stack) || error);
      const bytes = new TextEncoder().encode(text).subarray(0, 4000);
      new DataView(buf, L.errorText, 4).setUint32(0, bytes.length, true);
      new Uint8Array(buf, L.errorText + 4, bytes.length).set(bytes);
      Atomics.store(ctl, ${CTL.ERROR}, workerData.thread);
      Atomics.notify(ctl, ${CTL.ERROR});
    }
    Atomics.notify(ctl, ${CTL.DONE});
  },
);
});
`;

/** The worker threads of one run and the means to stop them and to surface their failures. */
class WorkerPool {
  private readonly workers: Worker[] = [];
  private readonly memory: KernelMemory;
  private readonly layout: KCenterLayout;
  private readonly ctl: Int32Array;
  private ready = false;

  constructor(count: number, memory: KernelMemory, layout: KCenterLayout, margins: KCenterMargins, failAtChunk: number) {
    this.memory = memory;
    this.layout = layout;
    this.ctl = new Int32Array(memory.buffer, layout.control, 16);
    const { moduleUrl, loaderUrl } = workerModule();
    try {
      for (let thread = 1; thread <= count; thread++) {
        const workerData: CoresetWorkerData = { kind: 'shelfwatch-coreset', memory, layout, margins, thread, moduleUrl, loaderUrl, failAtChunk };
        const worker = new Worker(WORKER_BOOTSTRAP, { eval: true, workerData });
        // The main thread blocks in Atomics.wait, so these events are only seen afterwards, if ever;
        // failures are reported through the shared error slot instead.
        worker.on('error', () => {});
        worker.unref();
        this.workers.push(worker);
      }
    } catch (error) {
      this.stop();
      throw error;
    }
  }

  get size(): number {
    return this.workers.length;
  }

  /** Throws the first failure any worker reported. */
  check(): void {
    const state = Atomics.load(this.ctl, CTL.ERROR);
    if (state === 0) return;
    // −1: a worker has claimed the slot and is still writing its error text.
    if (state < 0) Atomics.wait(this.ctl, CTL.ERROR, state, 5000);
    const failure = readFailure(this.memory, this.layout);
    const where = failure ? `coreset worker ${failure.thread}` : 'a coreset worker';
    throw new Error(`kCenterGreedy: ${where} failed: ${failure?.text ?? 'unknown error'}`);
  }

  /**
   * Blocks until every worker has started (once): from then on each shared step is really
   * shared, which makes the split reproducible enough to test and to measure.
   */
  waitReady(): void {
    if (this.ready) return;
    const since = performance.now();
    for (;;) {
      this.check();
      if (Atomics.load(this.ctl, CTL.READY) >= this.workers.length) break;
      if (performance.now() - since > WORKER_STALL_MS) {
        throw new Error(`kCenterGreedy: coreset workers did not start within ${WORKER_STALL_MS / 1000} s`);
      }
      Atomics.wait(this.ctl, CTL.DONE, Atomics.load(this.ctl, CTL.DONE), 20);
    }
    this.ready = true;
  }

  /** Publishes step `seq` with `chunks` chunks and wakes the workers. */
  publish(seq: number, chunks: number): void {
    this.waitReady();
    Atomics.store(this.ctl, CTL.DONE, 0);
    Atomics.store(this.ctl, CTL.CHUNKS, chunks);
    this.ctl[CTL.ALL_CHUNKS] += chunks;
    Atomics.store(new BigInt64Array(this.memory.buffer, this.layout.ticket, 1), 0, BigInt(seq) << 32n);
    Atomics.store(this.ctl, CTL.SEQ, seq);
    Atomics.notify(this.ctl, CTL.SEQ);
  }

  /** Blocks until `chunks` chunks are done; throws a worker's failure or a stall. */
  waitDone(chunks: number): void {
    let last = -1;
    let since = performance.now();
    for (;;) {
      this.check();
      const done = Atomics.load(this.ctl, CTL.DONE);
      if (done >= chunks) return;
      if (done !== last) {
        last = done;
        since = performance.now();
      } else if (performance.now() - since > WORKER_STALL_MS) {
        throw new Error(`kCenterGreedy: coreset workers made no progress for ${WORKER_STALL_MS / 1000} s (${done} of ${chunks} chunks done)`);
      }
      Atomics.wait(this.ctl, CTL.DONE, done, 50);
    }
  }

  /** Tells the workers to leave and terminates them (idempotent). */
  stop(): void {
    Atomics.store(this.ctl, CTL.STOP, 1);
    Atomics.add(this.ctl, CTL.SEQ, 1);
    Atomics.notify(this.ctl, CTL.SEQ);
    for (const worker of this.workers.splice(0)) void worker.terminate();
  }
}

/**
 * ρ of every point for cluster 0: an upper bound of its distance to the start point outside the
 * bound's subspace, √(d̃·hi − (B − abs)) with B the subspace bound computed here in f64 from the
 * stored coordinates (its own rounding, ~1e-16 relative, is far inside abs).
 */
function initialResiduals(sh: KCenterShared, n: number, kPad: number, startIndex: number, margins: KCenterMargins): void {
  const { hi, abs } = margins;
  const zc = sh.z.slice(startIndex * kPad, startIndex * kPad + kPad);
  for (let i = 0; i < n; i++) {
    let b = 0;
    for (let j = 0; j < kPad; j++) {
      const d = sh.z[i * kPad + j] - zc[j];
      b += d * d;
    }
    const r2 = sh.dist[i] * hi - (b * (1 - 1e-12) - abs);
    sh.rho[i] = Math.sqrt(Math.max(0, r2)) * (1 + 2 ** -20);
  }
}

/**
 * Greedy k-center with anomalib semantics, exact and pruned (see the file comment). Gives the same
 * selection as `kCenterGreedyNaive`, including ties (lowest index wins), for any thread count.
 *
 * @param points n × dim row-major float32 (not modified)
 * @param m number of centres to select (0 ≤ m ≤ n)
 * @param startIndex initialises the minimum distances; it is not itself selected
 */
export function kCenterGreedy(
  points: Float32Array,
  n: number,
  dim: number,
  m: number,
  startIndex: number,
  opts: KCenterOptions = {},
): KCenterResult {
  checkKCenterArgs(points, n, dim, m, startIndex);
  const boundDims = opts.lowerBoundDims ?? (dim >= 3 * BOUND_DIMS ? BOUND_DIMS : 0);
  if (!Number.isSafeInteger(boundDims) || boundDims < 0 || boundDims > dim) {
    throw new RangeError(`kCenterGreedy: lowerBoundDims must be an integer in [0, dim = ${dim}], got ${String(opts.lowerBoundDims)}`);
  }
  const threads = resolveThreads(opts.threads);
  const parallelMin = opts.parallelMinMembers ?? DEFAULT_PARALLEL_MIN_MEMBERS;
  if (!Number.isSafeInteger(parallelMin) || parallelMin < 0) {
    throw new RangeError(`kCenterGreedy: parallelMinMembers must be a non-negative integer, got ${String(parallelMin)}`);
  }
  const selected = new Uint32Array(m);
  const minDistanceAtSelection = new Float32Array(m);
  const stride = progressStride(m);
  if (m === 0) {
    return { selected, minDistanceAtSelection, distanceEvaluations: 0, centreDistanceEvaluations: 0, boundEvaluations: 0, threads: 1, workerShare: 0 };
  }

  const K = boundDims;
  const dimPad = paddedDim(dim);
  const kPad = Math.ceil(K / 4) * 4;
  const workerCount = threads > 1 && n >= 2 * parallelMin ? threads - 1 : 0;
  const L = planLayout(n, dimPad, kPad, m, 1 + workerCount);
  const memory = createSharedMemory(L.total, 'kCenterGreedy');
  // Rows and bound coordinates first: the margins depend on the coordinates' size.
  const sh = openShared(memory, L, kCenterMargins(dimPad, 0));
  copyRowsPadded(points, n, dim, sh.rows, dimPad);
  if (K > 0) sh.margins = kCenterMargins(dimPad, computeBoundCoordinates(sh.kernel, L, points, n, dim, K));
  const margins = sh.margins;
  const { kernel } = sh;
  const { dimBytes, kBytes } = L;

  // Cluster 0: every point, measured against the start index; its centre row is kept apart
  // (slot 0 of the centre arrays) because arena slots move.
  for (let i = 0; i < n; i++) sh.idx[i] = i;
  sh.centreRows.set(sh.rows.subarray(startIndex * dimPad, startIndex * dimPad + dimPad), 0);
  sh.centreZ.set(sh.z.subarray(startIndex * kPad, startIndex * kPad + kPad), 0);
  sh.dist.fill(Infinity, 0, n);
  kernel.minUpdate(L.rows, n, dimBytes, L.centreRows, L.dist);
  initialResiduals(sh, n, kPad, startIndex, margins);
  const arg0 = kernel.argmax(L.dist, n);
  sh.cStart[0] = 0;
  sh.cLen[0] = n;
  sh.cMax[0] = sh.dist[arg0];
  sh.cArg[0] = arg0;
  sh.cArgPos[0] = arg0;
  let clusters = 1;
  let bump = n; // first free arena slot
  let evaluations = n;
  let centreEvaluations = 0;
  let boundEvaluations = 0;
  let seq = 0;

  /** Packs the live clusters to the front of the arena, in cluster (= address) order. */
  const compact = (): void => {
    let write = 0;
    for (let k = 0; k < clusters; k++) {
      const len = sh.cLen[k];
      if (len === 0) continue;
      const src = sh.cStart[k];
      if (src !== write) {
        sh.rows.copyWithin(write * dimPad, src * dimPad, (src + len) * dimPad);
        if (kPad > 0) sh.z.copyWithin(write * kPad, src * kPad, (src + len) * kPad);
        sh.dist.copyWithin(write, src, src + len);
        sh.idx.copyWithin(write, src, src + len);
        sh.rho.copyWithin(write, src, src + len);
        sh.cStart[k] = write;
      }
      write += len;
    }
    bump = write;
  };

  const pool = workerCount > 0 ? new WorkerPool(workerCount, memory, L, margins, opts.failWorkerAtChunk ?? 0) : null;
  const outArgPos = new Uint32Array(memory.buffer, L.out, 1);
  try {
    for (let s = 0; s < m; s++) {
      pool?.check();
      // The farthest point overall: the best of the cluster maxima, lowest index on ties.
      let best = -1;
      let bestIdx = 0;
      let bestCluster = 0;
      for (let k = 0; k < clusters; k++) {
        if (sh.cLen[k] === 0) continue;
        const v = sh.cMax[k];
        if (v > best || (v === best && sh.cArg[k] < bestIdx)) {
          best = v;
          bestIdx = sh.cArg[k];
          bestCluster = k;
        }
      }
      selected[s] = bestIdx;
      minDistanceAtSelection[s] = Math.sqrt(best);
      const from = sh.cStart[bestCluster] + sh.cArgPos[bestCluster];
      sh.centreRows.set(sh.rows.subarray(from * dimPad, from * dimPad + dimPad), clusters * dimPad);
      if (kPad > 0) sh.centreZ.set(sh.z.subarray(from * kPad, from * kPad + kPad), clusters * kPad);
      const cPtr = L.centreRows + clusters * dimBytes;
      const czPtr = L.centreZ + clusters * kBytes;

      // Phase 1: which clusters can lose members to c (and below which distance their members
      // stay), then their scans, shared with the workers when big enough. Clusters only read.
      sh.filterStats[0] = 0;
      sh.filterStats[1] = 0;
      const tasks = kernel.filter(
        clusters, L.cLen, L.cMax, L.centreRows, L.centreZ, cPtr, czPtr, dimBytes, kBytes,
        margins.slack, margins.lo, margins.hi, margins.abs, L.taskK, L.taskKeep, L.taskQ, L.filterStats,
      );
      centreEvaluations += sh.filterStats[0];
      boundEvaluations += sh.filterStats[1];
      let scanned = 0;
      for (let t = 0; t < tasks; t++) {
        sh.taskMvOffset[t] = scanned; // room for every member: distinct clusters, n in all
        scanned += sh.cLen[sh.taskK[t]];
      }
      sh.ctl[CTL.C_PTR] = cPtr;
      sh.ctl[CTL.CZ_PTR] = czPtr;
      if (pool && scanned >= Math.max(1, parallelMin)) {
        const chunks = planChunks(sh, tasks, scanned, pool.size + 1);
        pool.publish(++seq, chunks);
        runChunks(sh, seq, 0);
        pool.waitDone(chunks);
      } else {
        sh.chunkStart[0] = 0;
        sh.chunkStart[1] = tasks;
        processChunk(sh, 0, 0);
      }

      // Phase 2 (this thread): the movers leave their clusters for the new one, appended to
      // the arena behind the live clusters.
      let movers = 0;
      for (let t = 0; t < tasks; t++) {
        movers += sh.taskMovers[t];
        evaluations += sh.taskEvals[t];
        boundEvaluations += sh.taskBounds[t];
      }
      if (bump + movers > L.cap) compact();
      let cursor = bump;
      for (let t = 0; t < tasks; t++) {
        const count = sh.taskMovers[t];
        if (count === 0) continue;
        const k = sh.taskK[t];
        const st = sh.cStart[k];
        const mv = sh.taskMvOffset[t] * 4;
        sh.cLen[k] = kernel.takeMovers(
          L.dist + st * 4, L.idx + st * 4, L.z + st * kBytes, L.rho + st * 4, L.rows + st * dimBytes, sh.cLen[k],
          L.mvPos + mv, L.mvDist + mv, L.mvRho + mv, count,
          L.dist + cursor * 4, L.idx + cursor * 4, L.z + cursor * kBytes, L.rho + cursor * 4, L.rows + cursor * dimBytes,
          dimBytes, kBytes, sh.cArgPos[k], L.out,
        );
        sh.cArgPos[k] = outArgPos[0];
        cursor += count;
      }
      let mx = -1;
      let arg = 0;
      let argPos = 0;
      for (let p = bump; p < cursor; p++) {
        const dx = sh.dist[p];
        const x = sh.idx[p];
        if (dx > mx || (dx === mx && x < arg)) {
          mx = dx;
          arg = x;
          argPos = p - bump;
        }
      }
      sh.cStart[clusters] = bump;
      sh.cLen[clusters] = cursor - bump;
      sh.cMax[clusters] = mx;
      sh.cArg[clusters] = arg;
      sh.cArgPos[clusters] = argPos;
      clusters++;
      bump = cursor;

      if (opts.onProgress && ((s + 1) % stride === 0 || s + 1 === m)) opts.onProgress(s + 1, m);
    }
  } finally {
    pool?.stop();
  }
  const allChunks = sh.ctl[CTL.ALL_CHUNKS];
  return {
    selected,
    minDistanceAtSelection,
    distanceEvaluations: evaluations,
    centreDistanceEvaluations: centreEvaluations,
    boundEvaluations,
    threads: 1 + workerCount,
    workerShare: allChunks > 0 ? Atomics.load(sh.ctl, CTL.WORKER_CHUNKS) / allChunks : 0,
  };
}

/**
 * Splits the task list (in cluster order) into chunks of about equal member counts, several per
 * thread so that a thread slowed by other load leaves its share to the others.
 */
function planChunks(sh: KCenterShared, tasks: number, scanned: number, threads: number): number {
  const target = Math.max(2048, Math.ceil(scanned / (threads * 6)));
  let chunks = 0;
  let acc = 0;
  sh.chunkStart[0] = 0;
  for (let t = 0; t < tasks; t++) {
    acc += sh.cLen[sh.taskK[t]];
    if (acc >= target || t === tasks - 1) {
      sh.chunkStart[++chunks] = t + 1;
      acc = 0;
    }
  }
  return chunks;
}

/** The points k-center runs on and where it starts, as `selectCoreset` derives them. */
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
