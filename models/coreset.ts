/**
 * PatchCore's memory-bank subsampling: greedy k-center ("farthest point") selection with anomalib
 * semantics, after an optional seeded sparse random projection.
 *
 * The greedy step is exact but pruned, so it touches far fewer than n·m distances:
 * - every point remembers the centre it is closest to (its cluster) and its squared distance to
 *   it; when a new centre c arrives, a cluster around centre a can only contain points that get
 *   closer to c when d(c, a) < 2·radius(a), and a point x in it only when d(c, a) < 2·d(x, a)
 *   (triangle inequality);
 * - the survivors are screened by a 16-dimensional lower bound, the distance within the leading
 *   principal subspace (‖Uᵀ(x − c)‖ ≤ ‖x − c‖ for orthonormal U), before the full distance.
 * Every skip holds with a margin above float rounding, so skipped points provably keep their
 * distance and the selection is identical, step for step and tie for tie, to `kCenterGreedyNaive`.
 */
import { compactProjection, jlMinDim, makeSparseProjection, projectRows, projectRowsDense } from './projection.js';
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
   * kCenterGreedy only: the caller hands `points` over and will not read it again, so it may be
   * reordered in place instead of copied (saves n·dim floats of peak memory).
   */
  consumePoints?: boolean;
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

/**
 * Slack on the pruning tests. The bounds hold exactly for real numbers; the computed squared
 * distances carry relative errors around dim·2⁻⁵³ (< 1e-13), so a skip is only taken when it
 * holds with a margin far above that. Costs nothing measurable in pruning power.
 */
const PRUNE_SLACK = 1 + 1e-9;
/** Relative margin of the subspace lower bound (its own rounding is covered by an absolute one). */
const BOUND_REL = 1 + 1e-7;

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

/** Squared Euclidean distance between row `ao` of a and row `bo` of b (offsets in floats). */
export function squaredDistance(a: Float32Array, ao: number, b: Float32Array, bo: number, dim: number): number {
  let s0 = 0;
  let s1 = 0;
  let s2 = 0;
  let s3 = 0;
  const end4 = dim - (dim & 3);
  let j = 0;
  for (; j < end4; j += 4) {
    const d0 = a[ao + j] - b[bo + j];
    const d1 = a[ao + j + 1] - b[bo + j + 1];
    const d2 = a[ao + j + 2] - b[bo + j + 2];
    const d3 = a[ao + j + 3] - b[bo + j + 3];
    s0 += d0 * d0;
    s1 += d1 * d1;
    s2 += d2 * d2;
    s3 += d3 * d3;
  }
  for (; j < dim; j++) {
    const d = a[ao + j] - b[bo + j];
    s0 += d * d;
  }
  return s0 + s1 + (s2 + s3);
}

function checkKCenterArgs(points: Float32Array, n: number, dim: number, m: number, startIndex: number): void {
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

function progressStride(m: number): number {
  return Math.max(1, Math.ceil(m / 100));
}


/** Dimensions of the orthonormal basis used for the cheap lower bound (see `principalBasis`). */
const BOUND_DIMS = 16;

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

/** Coordinates of every row in the basis (n × k float64) and the largest row norm². */
function projectOnBasis(points: Float32Array, n: number, dim: number, basis: Float64Array, k: number): { z: Float64Array; maxNorm2: number } {
  const z = new Float64Array(n * k);
  const acc = new Float64Array(k);
  let maxNorm2 = 0;
  for (let r = 0; r < n; r++) {
    acc.fill(0);
    const o = r * dim;
    let norm2 = 0;
    for (let i = 0; i < dim; i++) {
      const v = points[o + i];
      if (v === 0) continue;
      norm2 += v * v;
      const bi = i * k;
      for (let j = 0; j < k; j++) acc[j] += v * basis[bi + j];
    }
    z.set(acc, r * k);
    if (norm2 > maxNorm2) maxNorm2 = norm2;
  }
  return { z, maxNorm2 };
}

/**
 * The reference algorithm, O(n·m·dim): anomalib's greedy k-center. The start index only
 * initialises the minimum distances; then m times the point with the largest minimum distance
 * (lowest index on ties) is selected and all minimum distances are lowered with it.
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
  const selected = new Uint32Array(m);
  const minDistanceAtSelection = new Float32Array(m);
  const mind = new Float64Array(n);
  const centre = new Float32Array(dim);
  const stride = progressStride(m);
  centre.set(points.subarray(startIndex * dim, startIndex * dim + dim));
  for (let i = 0; i < n; i++) mind[i] = squaredDistance(points, i * dim, centre, 0, dim);
  for (let s = 0; s < m; s++) {
    let best = -1;
    let bestIdx = 0;
    for (let i = 0; i < n; i++) {
      if (mind[i] > best) {
        best = mind[i];
        bestIdx = i;
      }
    }
    selected[s] = bestIdx;
    minDistanceAtSelection[s] = Math.sqrt(best);
    centre.set(points.subarray(bestIdx * dim, bestIdx * dim + dim));
    for (let i = 0; i < n; i++) {
      const d = squaredDistance(points, i * dim, centre, 0, dim);
      if (d < mind[i]) mind[i] = d;
    }
    if (opts.onProgress && ((s + 1) % stride === 0 || s + 1 === m)) opts.onProgress(s + 1, m);
  }
  return { selected, minDistanceAtSelection, distanceEvaluations: n * (m + 1), centreDistanceEvaluations: 0, boundEvaluations: 0 };
}

/**
 * Greedy k-center with anomalib semantics, exact and pruned (see the file comment). Gives the same
 * selection as `kCenterGreedyNaive`, including ties (lowest index wins).
 *
 * @param points n × dim row-major float32
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
  const selected = new Uint32Array(m);
  const minDistanceAtSelection = new Float32Array(m);
  const stride = progressStride(m);
  if (m === 0) return { selected, minDistanceAtSelection, distanceEvaluations: 0, centreDistanceEvaluations: 0, boundEvaluations: 0 };

  // Lower bound: ‖Uᵀx − Uᵀy‖ ≤ ‖x − y‖ for the orthonormal U. A skip needs the bound to beat the
  // threshold by BOUND_REL plus an absolute margin far above the rounding of the coordinates
  // (≈ dim·2⁻⁵³·‖x‖ each), so skipped evaluations could never have lowered anything.
  const K = boundDims;
  let z: Float64Array = new Float64Array(0);
  let boundAbs = 0;
  if (K > 0) {
    const projected = projectOnBasis(points, n, dim, principalBasis(points, n, dim, K), K);
    z = projected.z;
    boundAbs = 1e-9 * (1 + projected.maxNorm2);
  }
  const zc = new Float64Array(K);

  // Clusters: cluster k belongs to centre cCentre[k] (k = 0: the start index, k ≥ 1: the k-th
  // selected point). Each cluster stores its members' indices, squared distances to the centre,
  // feature rows and bound coordinates contiguously: the scans then read memory in order instead
  // of jumping through the whole point array (3× faster at 600k points). Rows move with their point.
  const maxClusters = m + 1;
  const cCentre = new Uint32Array(maxClusters);
  const cMembers: Uint32Array[] = new Array<Uint32Array>(maxClusters);
  const cDist: Float64Array[] = new Array<Float64Array>(maxClusters);
  const cRows: Float32Array[] = new Array<Float32Array>(maxClusters);
  const cZ: Float64Array[] = new Array<Float64Array>(maxClusters);
  const cLen = new Uint32Array(maxClusters);
  const cMax = new Float64Array(maxClusters); // largest member distance (squared)
  const cArg = new Uint32Array(maxClusters); // its point, lowest index on ties
  const cArgPos = new Uint32Array(maxClusters); // and where that point sits in the cluster
  // Rows and bound coordinates of the centres, kept apart because cluster storage moves.
  const centreRows = new Float32Array(maxClusters * dim);
  const centreZ = new Float64Array(maxClusters * K);
  let clusters = 0;

  const centre = new Float32Array(dim);
  const moverIdx = new Uint32Array(n);
  const moverDist = new Float64Array(n);
  let moverRows = new Float32Array(Math.min(n, 1024) * dim);
  let moverZ = new Float64Array(Math.min(n, 1024) * K);
  let evaluations = 0;
  let centreEvaluations = 0;
  let boundEvaluations = 0;

  // Cluster 0: every point, measured against the start index.
  {
    centre.set(points.subarray(startIndex * dim, startIndex * dim + dim));
    const members = new Uint32Array(n);
    const dist = new Float64Array(n);
    let mx = -1;
    let arg = 0;
    for (let i = 0; i < n; i++) {
      const d = squaredDistance(points, i * dim, centre, 0, dim);
      members[i] = i;
      dist[i] = d;
      if (d > mx) {
        mx = d;
        arg = i;
      }
    }
    evaluations += n;
    centreRows.set(centre, 0);
    if (K > 0) centreZ.set(z.subarray(startIndex * K, startIndex * K + K), 0);
    cCentre[0] = startIndex;
    cMembers[0] = members;
    cDist[0] = dist;
    cRows[0] = opts.consumePoints === true ? points : points.slice();
    cZ[0] = z;
    cLen[0] = n;
    cMax[0] = mx;
    cArg[0] = arg;
    cArgPos[0] = arg;
    clusters = 1;
  }

  for (let s = 0; s < m; s++) {
    // The farthest point overall: the best of the cluster maxima, lowest index on ties.
    let best = -1;
    let bestIdx = 0;
    let bestCluster = 0;
    for (let k = 0; k < clusters; k++) {
      if (cLen[k] === 0) continue;
      const v = cMax[k];
      if (v > best || (v === best && cArg[k] < bestIdx)) {
        best = v;
        bestIdx = cArg[k];
        bestCluster = k;
      }
    }
    const c = bestIdx;
    selected[s] = c;
    minDistanceAtSelection[s] = Math.sqrt(best);
    const pos = cArgPos[bestCluster];
    centre.set(cRows[bestCluster].subarray(pos * dim, pos * dim + dim));
    centreRows.set(centre, clusters * dim);
    if (K > 0) {
      zc.set(cZ[bestCluster].subarray(pos * K, pos * K + K));
      centreZ.set(zc, clusters * K);
    }

    let movers = 0;
    for (let k = 0; k < clusters; k++) {
      const len = cLen[k];
      // A cluster whose members all sit on their centre cannot improve.
      if (len === 0 || cMax[k] === 0) continue;
      // Whole cluster: skip when d(c,a) ≥ 2·radius  ⇔  d² ≥ 4·radius².
      const clusterLimit = 4 * cMax[k] * PRUNE_SLACK;
      if (K > 0) {
        boundEvaluations++;
        if (boundDistance(centreZ, k * K, zc, K) > clusterLimit * BOUND_REL + boundAbs) continue;
      }
      const dCentres = squaredDistance(centreRows, k * dim, centre, 0, dim);
      centreEvaluations++;
      if (dCentres >= clusterLimit) continue;
      // Member x: skip when d(c,a) ≥ 2·d(x,a)  ⇔  d(x,a)² ≤ d(c,a)² / 4.
      const keepBelow = dCentres / (4 * PRUNE_SLACK);
      const members = cMembers[k];
      const dist = cDist[k];
      const rows = cRows[k];
      const zs = cZ[k];
      // Movers leave by swap-with-last, so only they cost a row copy; member order is free
      // because ties are broken by index explicitly.
      let w = len;
      let mx = -1;
      let arg = 0;
      let argPos = 0;
      for (let r = 0; r < w; ) {
        const x = members[r];
        const dx = dist[r];
        if (dx > keepBelow) {
          let screened = false;
          if (K > 0) {
            boundEvaluations++;
            screened = boundDistance(zs, r * K, zc, K) > dx * BOUND_REL + boundAbs;
          }
          if (!screened) {
            const d = squaredDistance(rows, r * dim, centre, 0, dim);
            evaluations++;
            if (d < dx) {
              if ((movers + 1) * dim > moverRows.length) {
                const grown = Math.min(n, 2 * (movers + 1));
                const nr = new Float32Array(grown * dim);
                nr.set(moverRows.subarray(0, movers * dim));
                moverRows = nr;
                const nz = new Float64Array(grown * K);
                nz.set(moverZ.subarray(0, movers * K));
                moverZ = nz;
              }
              moverIdx[movers] = x;
              moverDist[movers] = d;
              moverRows.set(rows.subarray(r * dim, r * dim + dim), movers * dim);
              if (K > 0) moverZ.set(zs.subarray(r * K, r * K + K), movers * K);
              movers++;
              w--;
              if (r !== w) {
                members[r] = members[w];
                dist[r] = dist[w];
                rows.copyWithin(r * dim, w * dim, w * dim + dim);
                if (K > 0) zs.copyWithin(r * K, w * K, w * K + K);
              }
              continue; // examine the member swapped into slot r
            }
          }
        }
        if (dx > mx || (dx === mx && x < arg)) {
          mx = dx;
          arg = x;
          argPos = r; // kept members never move again during this scan
        }
        r++;
      }
      cLen[k] = w;
      cMax[k] = mx;
      cArg[k] = arg;
      cArgPos[k] = argPos;
      // Give memory back when a cluster has shrunk a lot (keeps the total near n rows).
      if (w < members.length >>> 2) {
        cMembers[k] = members.slice(0, w);
        cDist[k] = dist.slice(0, w);
        cRows[k] = rows.slice(0, w * dim);
        cZ[k] = zs.slice(0, w * K);
      }
    }

    // The new cluster: every point that moved to c (c itself included, at distance 0).
    const dist = moverDist.slice(0, movers);
    const members = moverIdx.slice(0, movers);
    let mx = -1;
    let arg = 0;
    let argPos = 0;
    for (let r = 0; r < movers; r++) {
      const dx = dist[r];
      const x = members[r];
      if (dx > mx || (dx === mx && x < arg)) {
        mx = dx;
        arg = x;
        argPos = r;
      }
    }
    cCentre[clusters] = c;
    cMembers[clusters] = members;
    cDist[clusters] = dist;
    if (movers * dim * 2 >= moverRows.length && movers > 1024) {
      // A big new cluster (early steps) takes the scratch itself instead of a copy of it.
      cRows[clusters] = moverRows.subarray(0, movers * dim);
      cZ[clusters] = moverZ.subarray(0, movers * K);
      moverRows = new Float32Array(Math.min(n, 1024) * dim);
      moverZ = new Float64Array(Math.min(n, 1024) * K);
    } else {
      cRows[clusters] = moverRows.slice(0, movers * dim);
      cZ[clusters] = moverZ.slice(0, movers * K);
    }
    cLen[clusters] = movers;
    cMax[clusters] = mx;
    cArg[clusters] = arg;
    cArgPos[clusters] = argPos;
    clusters++;
    // The first steps move a large share of all points; do not keep that scratch for the rest.
    if (moverRows.length > 4096 * dim && movers * dim * 4 < moverRows.length) {
      moverRows = new Float32Array(Math.min(n, 1024) * dim);
      moverZ = new Float64Array(Math.min(n, 1024) * K);
    }

    if (opts.onProgress && ((s + 1) % stride === 0 || s + 1 === m)) opts.onProgress(s + 1, m);
  }
  return {
    selected,
    minDistanceAtSelection,
    distanceEvaluations: evaluations,
    centreDistanceEvaluations: centreEvaluations,
    boundEvaluations,
  };
}

/** Squared distance between row `zo` of the basis coordinates and the centre's coordinates. */
function boundDistance(z: Float64Array, zo: number, zc: Float64Array, k: number): number {
  let s0 = 0;
  let s1 = 0;
  let j = 0;
  for (; j + 1 < k; j += 2) {
    const d0 = z[zo + j] - zc[j];
    const d1 = z[zo + j + 1] - zc[j + 1];
    s0 += d0 * d0;
    s1 += d1 * d1;
  }
  if (j < k) {
    const d = z[zo + j] - zc[j];
    s0 += d * d;
  }
  return s0 + s1;
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
    // Same distances as on the projected rows, at dim instead of outputDim dimensions of work.
    return { points: projectRowsDense(compactProjection(proj), dim, dim, features, n), dim, startIndex, m };
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
  // The projected rows are ours to reorder; the caller's features are not.
  return kCenterGreedy(input.points, n, input.dim, input.m, input.startIndex, {
    onProgress: opts.onProgress,
    consumePoints: input.points !== features,
  }).selected;
}
