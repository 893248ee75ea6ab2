/**
 * Pixel-metrics benchmark on a GoodsAD-sized test split: 2988 anomaly maps of 224×224 (150 M
 * pixels), ~55 % of the images anomalous with 1–3 elliptic regions of 0.1–10 % of the image.
 * Maps are smooth (a 14×14 random grid upsampled to 56×56, expanded to 4×4 blocks like a
 * PatchCore patch grid) and quantised to 1/4096, so ties are plentiful; anomalous regions score
 * higher on average, and some normal images carry false-positive bumps. Exact metrics, no sampling.
 *
 * Prints the time split (labelling, splitting, sorting, sweep), the peak RSS, and compares with a
 * naive baseline (BFS labelling, comparator sort of a full index, plain sweep) on the first maps.
 *
 *   npx tsx bench/metrics.ts [--maps=2988] [--baseline-maps=100] [--seed=1]
 */
import { loadavg } from 'node:os';
import { performance } from 'node:perf_hooks';
import { formatMetric, PixelMetricsAccumulator, type MetricValue } from '../models/metrics/index.js';

const args = new Map(
  process.argv.slice(2).map((a) => {
    const [k, v] = a.replace(/^--/, '').split('=');
    return [k, Number(v)] as const;
  }),
);
const N_MAPS = args.get('maps') ?? 2988;
const N_BASELINE = Math.min(args.get('baseline-maps') ?? 100, N_MAPS);
const SEED = args.get('seed') ?? 1;
const SIZE = 224;
const PIXELS = SIZE * SIZE;

/** mulberry32: small seeded generator, one stream per image so any image can be regenerated. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface Ellipse {
  cx: number;
  cy: number;
  rx: number;
  ry: number;
  amp: number;
}

function ellipse(rnd: () => number, areaFraction: number, amp: number): Ellipse {
  const area = areaFraction * PIXELS;
  const aspect = 0.5 + rnd() * 1.5;
  const rx = Math.sqrt((area * aspect) / Math.PI);
  const ry = area / (Math.PI * rx);
  return { cx: rx + rnd() * (SIZE - 2 * rx), cy: ry + rnd() * (SIZE - 2 * ry), rx, ry, amp };
}

/** Fills map and mask of image `index`. */
function generate(index: number, map: Float32Array, mask: Uint8Array): void {
  const rnd = rng(SEED * 1_000_003 + index * 7919);
  const grid = new Float64Array(14 * 14);
  for (let i = 0; i < grid.length; i++) grid[i] = 0.2 + 0.25 * rnd() + 0.1 * rnd();
  // 14×14 → 56×56 bilinear (align_corners=False), then 4×4 blocks → 224×224.
  const small = new Float64Array(56 * 56);
  for (let y = 0; y < 56; y++) {
    const sy = Math.max(0, (y + 0.5) / 4 - 0.5);
    const y0 = Math.floor(sy);
    const y1 = Math.min(y0 + 1, 13);
    const ly = sy - y0;
    for (let x = 0; x < 56; x++) {
      const sx = Math.max(0, (x + 0.5) / 4 - 0.5);
      const x0 = Math.floor(sx);
      const x1 = Math.min(x0 + 1, 13);
      const lx = sx - x0;
      small[y * 56 + x] =
        (1 - ly) * ((1 - lx) * grid[y0 * 14 + x0] + lx * grid[y0 * 14 + x1]) +
        ly * ((1 - lx) * grid[y1 * 14 + x0] + lx * grid[y1 * 14 + x1]);
    }
  }
  const defects: Ellipse[] = [];
  const bumps: Ellipse[] = [];
  if (rnd() < 0.55) {
    const k = 1 + Math.floor(rnd() * 3);
    // Area 0.1 %–10 % of the image, log-uniform; amplitude varies so some defects are faint.
    for (let d = 0; d < k; d++) defects.push(ellipse(rnd, 0.001 * 100 ** rnd(), 0.02 + 0.3 * rnd()));
  }
  if (rnd() < 0.3) bumps.push(ellipse(rnd, 0.002 + 0.02 * rnd(), 0.1 + 0.3 * rnd()));
  mask.fill(0);
  for (let y = 0; y < SIZE; y++) {
    for (let x = 0; x < SIZE; x++) {
      let v = small[(y >> 2) * 56 + (x >> 2)];
      let inside = 0;
      for (const e of defects) {
        const dx = (x + 0.5 - e.cx) / e.rx;
        const dy = (y + 0.5 - e.cy) / e.ry;
        const d2 = dx * dx + dy * dy;
        if (d2 < 1) inside = 1;
        if (d2 < 2.25) v += e.amp * (1 - d2 / 2.25);
      }
      for (const e of bumps) {
        const dx = (x + 0.5 - e.cx) / e.rx;
        const dy = (y + 0.5 - e.cy) / e.ry;
        const d2 = dx * dx + dy * dy;
        if (d2 < 1) v += e.amp * (1 - d2);
      }
      map[y * SIZE + x] = Math.round(v * 4096) / 4096;
      mask[y * SIZE + x] = inside;
    }
  }
}

// ---------------------------------------------------------------- naive baseline

interface Plain {
  auroc: number | null;
  ap: number | null;
  prAucTrapz: number | null;
  aupro: number | null;
  nRegions: number;
}

/** BFS flood fill, 8 neighbours: global region ids into `out` (−1 = normal), sizes appended. */
function naiveRegions(mask: Uint8Array, w: number, h: number, out: Int32Array, sizes: number[]): void {
  out.fill(-1);
  const queue: number[] = [];
  for (let start = 0; start < w * h; start++) {
    if (mask[start] === 0 || out[start] !== -1) continue;
    const id = sizes.length;
    let size = 0;
    out[start] = id;
    queue.push(start);
    while (queue.length > 0) {
      const p = queue.pop()!;
      size++;
      const px = p % w;
      const py = (p - px) / w;
      for (let dy = -1; dy <= 1; dy++) {
        for (let dx = -1; dx <= 1; dx++) {
          const nx = px + dx;
          const ny = py + dy;
          if (nx < 0 || ny < 0 || nx >= w || ny >= h) continue;
          const q = ny * w + nx;
          if (mask[q] !== 0 && out[q] === -1) {
            out[q] = id;
            queue.push(q);
          }
        }
      }
    }
    sizes.push(size);
  }
}

function naiveMetrics(maps: Float32Array[], masks: Uint8Array[], fprLimit: number): Plain {
  const n = maps.length * PIXELS;
  const scores = new Float64Array(n);
  const region = new Int32Array(n);
  const sizes: number[] = [];
  maps.forEach((m, k) => {
    scores.set(m, k * PIXELS);
    naiveRegions(masks[k], SIZE, SIZE, region.subarray(k * PIXELS, (k + 1) * PIXELS), sizes);
  });
  const order = new Uint32Array(n).map((_, i) => i);
  order.sort((a, b) => scores[b] - scores[a]);
  let P = 0;
  for (let i = 0; i < n; i++) if (region[i] >= 0) P++;
  const N = n - P;
  const R = sizes.length;
  const fprs = [0];
  const tprs = [0];
  const precs: number[] = [];
  const pros = [0];
  let tp = 0;
  let fp = 0;
  let proSum = 0;
  for (let k = 0; k < n; ) {
    const t = scores[order[k]];
    while (k < n && scores[order[k]] === t) {
      const r = region[order[k]];
      if (r >= 0) {
        tp++;
        proSum += 1 / sizes[r];
      } else fp++;
      k++;
    }
    fprs.push(fp / N);
    tprs.push(tp / P);
    precs.push(tp / (tp + fp));
    pros.push(proSum / R);
  }
  let auroc = 0;
  let ap = 0;
  let pr = 0;
  let prevPrec = 1;
  for (let k = 1; k < fprs.length; k++) {
    auroc += ((fprs[k] - fprs[k - 1]) * (tprs[k] + tprs[k - 1])) / 2;
    ap += (tprs[k] - tprs[k - 1]) * precs[k - 1];
    pr += ((tprs[k] - tprs[k - 1]) * (precs[k - 1] + prevPrec)) / 2;
    prevPrec = precs[k - 1];
  }
  let area = 0;
  for (let k = 1; k < fprs.length; k++) {
    if (fprs[k] <= fprLimit) area += ((fprs[k] - fprs[k - 1]) * (pros[k] + pros[k - 1])) / 2;
    else {
      const y = pros[k - 1] + ((pros[k] - pros[k - 1]) * (fprLimit - fprs[k - 1])) / (fprs[k] - fprs[k - 1]);
      area += ((fprLimit - fprs[k - 1]) * (y + pros[k - 1])) / 2;
      break;
    }
  }
  const ok = P > 0 && N > 0;
  return {
    auroc: ok ? auroc : null,
    ap: P > 0 ? ap : null,
    prAucTrapz: P > 0 ? pr : null,
    aupro: R > 0 && N > 0 ? area / fprLimit : null,
    nRegions: R,
  };
}

// ---------------------------------------------------------------- run

const mb = (bytes: number) => `${(bytes / 2 ** 20).toFixed(0)} MiB`;
const s = (ms: number) => `${(ms / 1000).toFixed(2)} s`;
const clock = () => performance.now();

function diff(a: MetricValue, b: number | null): number {
  if (!a.defined || b === null) return a.defined === (b !== null) ? 0 : Infinity;
  return Math.abs(a.value - b);
}

console.log(`pixel metrics bench: ${N_MAPS} maps of ${SIZE}×${SIZE} (${((N_MAPS * PIXELS) / 1e6).toFixed(1)} M pixels), seed ${SEED}`);
console.log(`load average at start: ${loadavg().map((l) => l.toFixed(1)).join(' ')} (other processes inflate wall times)`);

// 1. Baseline subset: naive versus ours on the same maps.
const subMaps: Float32Array[] = [];
const subMasks: Uint8Array[] = [];
for (let i = 0; i < N_BASELINE; i++) {
  const map = new Float32Array(PIXELS);
  const mask = new Uint8Array(PIXELS);
  generate(i, map, mask);
  subMaps.push(map);
  subMasks.push(mask);
}
let t = clock();
const naive = naiveMetrics(subMaps, subMasks, 0.3);
const naiveMs = clock() - t;
t = clock();
const subAcc = new PixelMetricsAccumulator({ fprLimit: 0.3 });
for (let i = 0; i < N_BASELINE; i++) subAcc.add(subMaps[i], subMasks[i], SIZE, SIZE);
const sub = subAcc.compute();
const oursSubMs = clock() - t;
const worst = Math.max(
  diff(sub.auroc, naive.auroc),
  diff(sub.ap, naive.ap),
  diff(sub.prAucTrapz, naive.prAucTrapz),
  diff(sub.aupro, naive.aupro),
);
console.log(`\nbaseline subset: ${N_BASELINE} maps (${((N_BASELINE * PIXELS) / 1e6).toFixed(1)} M pixels), ${sub.nRegions} regions`);
console.log(`  naive (BFS + comparator sort of all indices): ${s(naiveMs)}`);
console.log(`  ours:                                         ${s(oursSubMs)}   (${(naiveMs / oursSubMs).toFixed(1)}× faster)`);
console.log(`  largest metric difference: ${worst.toExponential(2)}  ${worst <= 1e-9 && naive.nRegions === sub.nRegions ? 'AGREE' : 'DISAGREE'}`);
subMaps.length = 0;
subMasks.length = 0;
if (!(worst <= 1e-9) || naive.nRegions !== sub.nRegions) process.exitCode = 1;

// 2. The full split, streamed: generate one map, add it, reuse the buffers.
const map = new Float32Array(PIXELS);
const mask = new Uint8Array(PIXELS);
const acc = new PixelMetricsAccumulator({ fprLimit: 0.3, clock });
let cpuMetrics = 0; // µs of process CPU time inside add() and compute()
let genMs = 0;
let addMs = 0;
let anomalousImages = 0;
for (let i = 0; i < N_MAPS; i++) {
  t = clock();
  generate(i, map, mask);
  const t1 = clock();
  genMs += t1 - t;
  const cpu0 = process.cpuUsage();
  acc.add(map, mask, SIZE, SIZE);
  const cpu1 = process.cpuUsage(cpu0);
  cpuMetrics += cpu1.user + cpu1.system;
  addMs += clock() - t1;
}
t = clock();
const cpu0 = process.cpuUsage();
const full = acc.compute({ maxCurvePoints: 1000 });
const cpu1 = process.cpuUsage(cpu0);
cpuMetrics += cpu1.user + cpu1.system;
const computeMs = clock() - t;
for (const c of full.regionsPerImage) if (c > 0) anomalousImages++;
const p = full.profile!;
const sizes = Array.from(full.regionSizes).sort((a, b) => a - b);

console.log(`\nfull split: ${full.nImages} maps, ${anomalousImages} anomalous (${((100 * anomalousImages) / full.nImages).toFixed(1)} %), ${full.nRegions} regions of ${sizes[0]}–${sizes.at(-1)} px (median ${sizes[sizes.length >> 1]})`);
console.log(`  pixels: ${full.nPos} anomalous, ${full.nNeg} normal`);
console.log(`  data generation (not counted):  ${s(genMs)}`);
console.log(`  labelling (in add):             ${s(p.labelMs)}`);
console.log(`  split into keys (in add):       ${s(p.splitMs)}`);
console.log(`  add() total:                    ${s(addMs)}`);
console.log(`  sort (radix, both classes):     ${s(p.sortMs)}`);
console.log(`  sweep (merge + curves):         ${s(p.sweepMs)}`);
console.log(`  compute() total:                ${s(computeMs)}`);
console.log(`  METRICS WALL TIME (add + compute): ${s(addMs + computeMs)}   (bar: 60 s)`);
console.log(`  metrics CPU time (user + system):  ${s(cpuMetrics / 1000)}`);
console.log(`  peak RSS: ${mb(process.resourceUsage().maxRSS * 1024)}   (bar: 3 GiB)`);
console.log(`  curve points: roc ${full.curves!.roc.length}, pr ${full.curves!.pr.length}, pro ${full.curves!.pro.length}`);
console.log(
  `  pixel AUROC ${formatMetric(full.auroc, 6)}  AP ${formatMetric(full.ap, 6)}  PR-AUC(trapz) ${formatMetric(full.prAucTrapz, 6)}  AUPRO@0.3 ${formatMetric(full.aupro, 6)}`,
);
