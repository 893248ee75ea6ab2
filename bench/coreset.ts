/**
 * Coreset benchmark: `npx tsx bench/coreset.ts [--quick] [--repeat N] [--sizes 164640,627200]`.
 *
 * Data: patch embeddings of the 24 reference train images, computed here from the stored taps
 * (3×3 average pooling, stride-16 tap bilinearly upsampled — checked against
 * embedding_train0.bin), then tiled to N rows: each row is a random patch position p of a random
 * image i, moved a random step toward the same position of another image j, plus small noise
 * (x = e[i,p] + β·(e[j,p] − e[i,p]) + σ·g, β ∈ [−0.25, 0.25), σ = 0.02). Without ../shared it falls
 * back to a seeded Gaussian mixture (said so in the output). Every run is its own child process,
 * so "peak RSS" is that run's own.
 *
 * Prints, per size, the median (and the runs) of the lazy k-center (what `selectCoreset` runs),
 * with the 'jl' projection as `selectCoreset` runs it, plus a same-run baseline: the naive
 * algorithm on the first 50k rows, checked to give the same indices as the lazy one; and both on
 * 50k points uniform in the unit cube (no structure to prune), checked to agree. The machine
 * may be shared: the 1-minute load average is printed with every run.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { availableParallelism, loadavg } from 'node:os';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { kCenterGreedyNaive, prepareCoresetInput, type KCenterResult } from '../models/coreset.js';
import { kCenterGreedyLazy } from '../models/coreset-lazy.js';
import { Random } from '../models/random.js';

const here = dirname(fileURLToPath(import.meta.url));
const referenceDir = resolve(here, '../../shared/reference/patchcore');
const DIM = 128;
const PATCHES = 784;

function readF32(path: string): Float32Array {
  const b = readFileSync(path);
  return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
}

function avgPool3(t: Float32Array, off: number, channels: number, h: number): Float32Array {
  const out = new Float32Array(channels * h * h);
  for (let c = 0; c < channels; c++) {
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < h; x++) {
        let s = 0;
        for (let dy = -1; dy <= 1; dy++) {
          for (let dx = -1; dx <= 1; dx++) {
            const yy = y + dy;
            const xx = x + dx;
            if (yy >= 0 && yy < h && xx >= 0 && xx < h) s += t[off + c * h * h + yy * h + xx];
          }
        }
        out[c * h * h + y * h + x] = s / 9; // count_include_pad, as torch's AvgPool2d(3, 1, 1)
      }
    }
  }
  return out;
}

/** [images·784, 128] embeddings of the reference train images, or null without ../shared. */
function referenceEmbeddings(): { data: Float32Array; images: number } | null {
  if (!existsSync(resolve(referenceDir, 'taps_train_s8.bin'))) return null;
  const s8 = readF32(resolve(referenceDir, 'taps_train_s8.bin'));
  const s16 = readF32(resolve(referenceDir, 'taps_train_s16.bin'));
  const images = s8.length / (32 * 28 * 28);
  const emb = new Float32Array(images * PATCHES * DIM);
  for (let im = 0; im < images; im++) {
    const p8 = avgPool3(s8, im * 32 * 784, 32, 28);
    const p16 = avgPool3(s16, im * 96 * 196, 96, 14);
    for (let y = 0; y < 28; y++) {
      for (let x = 0; x < 28; x++) {
        const r = (im * PATCHES + y * 28 + x) * DIM;
        for (let c = 0; c < 32; c++) emb[r + c] = p8[c * 784 + y * 28 + x];
        // bilinear 14 → 28, align_corners = false
        const sy = Math.max(0, (y + 0.5) / 2 - 0.5);
        const sx = Math.max(0, (x + 0.5) / 2 - 0.5);
        const y0 = Math.floor(sy);
        const x0 = Math.floor(sx);
        const y1 = Math.min(y0 + 1, 13);
        const x1 = Math.min(x0 + 1, 13);
        const fy = sy - y0;
        const fx = sx - x0;
        for (let c = 0; c < 96; c++) {
          const b = c * 196;
          emb[r + 32 + c] =
            (1 - fy) * ((1 - fx) * p16[b + y0 * 14 + x0] + fx * p16[b + y0 * 14 + x1]) +
            fy * ((1 - fx) * p16[b + y1 * 14 + x0] + fx * p16[b + y1 * 14 + x1]);
        }
      }
    }
  }
  const e0 = readF32(resolve(referenceDir, 'embedding_train0.bin'));
  let maxAbs = 0;
  for (let i = 0; i < e0.length; i++) maxAbs = Math.max(maxAbs, Math.abs(e0[i] - emb[i]));
  if (maxAbs > 1e-4) throw new Error(`bench: embeddings derived from taps differ from embedding_train0.bin by ${maxAbs}`);
  return { data: emb, images };
}

function gaussian(rng: Random): number {
  const u = 1 - rng.nextFloat();
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * rng.nextFloat());
}

/** N synthetic patch rows (see the file comment). */
function syntheticFeatures(n: number, seed: number): { data: Float32Array; source: string } {
  const rng = new Random(seed);
  const out = new Float32Array(n * DIM);
  const ref = referenceEmbeddings();
  if (ref) {
    const e = ref.data;
    for (let r = 0; r < n; r++) {
      const p = rng.nextInt(PATCHES);
      const a = (rng.nextInt(ref.images) * PATCHES + p) * DIM;
      const b = (rng.nextInt(ref.images) * PATCHES + p) * DIM;
      const beta = (rng.nextFloat() - 0.5) * 0.5;
      for (let j = 0; j < DIM; j++) out[r * DIM + j] = e[a + j] + beta * (e[b + j] - e[a + j]) + 0.02 * gaussian(rng);
    }
    return { data: out, source: `taps-derived embeddings of ${ref.images} reference images, tiled` };
  }
  const modes = 2000;
  const centres = new Float32Array(modes * DIM);
  for (let i = 0; i < centres.length; i++) centres[i] = gaussian(rng) * 0.2;
  for (let r = 0; r < n; r++) {
    const c = rng.nextInt(modes) * DIM;
    for (let j = 0; j < DIM; j++) out[r * DIM + j] = centres[c + j] + 0.05 * gaussian(rng);
  }
  return { data: out, source: 'Gaussian mixture (../shared not found)' };
}

interface CaseSpec {
  kind: 'pruned' | 'baseline' | 'real';
  n: number;
  projection: 'jl' | 'none';
  ratio: number;
}

interface CaseResult {
  label: string;
  prepMs: number;
  selMs: number;
  rssMiB: number;
  load: number;
  detail: string;
  hash: number;
}

function fmtMs(ms: number): string {
  return ms >= 10000 ? `${(ms / 1000).toFixed(1)} s` : `${ms.toFixed(0)} ms`;
}

function describe(r: KCenterResult, n: number, m: number): string {
  const naive = n * (m + 1);
  return `evals ${(r.distanceEvaluations / 1e6).toFixed(2)}M = 1/${(naive / r.distanceEvaluations).toFixed(1)} of naive ${(naive / 1e6).toFixed(0)}M, bound ${(r.boundEvaluations / 1e6).toFixed(1)}M`;
}

function selectionHash(selected: Uint32Array): number {
  let h = 0;
  for (let i = 0; i < selected.length; i++) h = (h * 31 + selected[i] * (i + 1)) % 1_000_000_007;
  return h;
}

/** Runs one case in this process; prints one line (and, for the parent, one JSON line). */
function runCase(spec: CaseSpec): void {
  const seed = 7;
  let features: Float32Array;
  let source: string;
  if (spec.kind === 'real') {
    const ref = referenceEmbeddings();
    if (!ref) {
      console.log('real: skipped (../shared not found)');
      return;
    }
    features = ref.data.subarray(0, spec.n * DIM);
    source = 'real';
  } else {
    ({ data: features, source } = syntheticFeatures(spec.n, 1));
  }
  const opts = { ratio: spec.ratio, seed, projection: spec.projection };
  let t = performance.now();
  const input = prepareCoresetInput(features, spec.n, DIM, opts);
  const prepMs = performance.now() - t;
  t = performance.now();
  const pruned = kCenterGreedyLazy(input.points, spec.n, input.dim, input.m, input.startIndex);
  const selMs = performance.now() - t;
  const label = `${spec.kind} N=${spec.n} m=${input.m} ${spec.projection}(${input.dim}d) lazy`;
  if (spec.kind === 'baseline') {
    t = performance.now();
    const naive = kCenterGreedyNaive(input.points, spec.n, input.dim, input.m, input.startIndex);
    const naiveMs = performance.now() - t;
    const same = naive.selected.every((v, i) => v === pruned.selected[i]);
    console.log(
      `${label} [${source}]: naive ${fmtMs(naiveMs)} vs lazy ${fmtMs(selMs)} → ${(naiveMs / selMs).toFixed(1)}× faster; ` +
        `identical indices: ${same ? 'yes' : 'NO'}; ${describe(pruned, spec.n, input.m)}; load ${loadavg()[0].toFixed(1)}`,
    );
    if (!same) process.exitCode = 1;
    return;
  }
  const result: CaseResult = {
    label,
    prepMs,
    selMs,
    rssMiB: process.resourceUsage().maxRSS / 1024,
    load: loadavg()[0],
    detail: `[${source}] ${describe(pruned, spec.n, input.m)}`,
    hash: selectionHash(pruned.selected),
  };
  console.log(`@result ${JSON.stringify(result)}`);
}

/**
 * Pruning's worst case: points uniform in the unit cube (no structure, every distance close to
 * every other). Both algorithms on the same points, checked to agree.
 */
function uniformCase(n: number, m: number): void {
  const rng = new Random(3);
  const points = new Float32Array(n * DIM);
  for (let i = 0; i < points.length; i++) points[i] = rng.nextFloat();
  const times: string[] = [];
  const selections: Uint32Array[] = [];
  for (const [name, run] of [
    ['lazy', () => kCenterGreedyLazy(points, n, DIM, m, 0)],
    ['naive', () => kCenterGreedyNaive(points, n, DIM, m, 0)],
  ] as const) {
    const t = performance.now();
    selections.push(run().selected);
    times.push(`${name} ${fmtMs(performance.now() - t)}`);
  }
  const same = selections.every((sel) => sel.every((v, i) => v === selections[0]![i]));
  console.log(`uniform N=${n} m=${m} (no structure to prune): ${times.join(', ')}; identical indices: ${same ? 'yes' : 'NO'}`);
  if (!same) process.exitCode = 1;
}

function runChild(spec: CaseSpec): CaseResult | null {
  const child = spawnSync(process.execPath, [...process.execArgv, fileURLToPath(import.meta.url), '--case', JSON.stringify(spec)], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  if (child.status !== 0) process.exitCode = 1;
  let result: CaseResult | null = null;
  for (const line of child.stdout.split('\n')) {
    if (line.startsWith('@result ')) result = JSON.parse(line.slice(8)) as CaseResult;
    else if (line.trim() !== '') console.log(line);
  }
  return result;
}

function median(values: number[]): number {
  const v = [...values].sort((a, b) => a - b);
  return v.length % 2 === 1 ? v[(v.length - 1) / 2] : (v[v.length / 2 - 1] + v[v.length / 2]) / 2;
}

function argValue(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

function main(): void {
  const caseArg = argValue('--case');
  if (caseArg !== undefined) {
    runCase(JSON.parse(caseArg) as CaseSpec);
    return;
  }
  const quick = process.argv.includes('--quick');
  const repeat = Number(argValue('--repeat') ?? (quick ? 1 : 3));
  const sizes = (argValue('--sizes') ?? (quick ? '164640' : '164640,627200')).split(',').map(Number);
  console.log(
    `coreset bench: node ${process.version}, ${availableParallelism()} CPUs, ` +
      `1 % coreset unless noted, ${repeat} run(s) per size, load average now ${loadavg().map((l) => l.toFixed(1)).join(' ')}`,
  );
  for (const spec of [
    { kind: 'real', n: 18_816, projection: 'none', ratio: 0.01 },
    { kind: 'real', n: 18_816, projection: 'jl', ratio: 0.1 },
  ] as CaseSpec[]) {
    const r = runChild(spec);
    if (r) console.log(`${r.label} ${r.detail}: project ${fmtMs(r.prepMs)}, select ${fmtMs(r.selMs)}; peak RSS ${r.rssMiB.toFixed(0)} MiB`);
  }
  runChild({ kind: 'baseline', n: 50_000, projection: 'jl', ratio: 0.01 });
  uniformCase(50_000, 1_000);
  for (const n of sizes) {
    const runs: CaseResult[] = [];
    const hashes = new Set<number>();
    for (let i = 0; i < repeat; i++) {
      const r = runChild({ kind: 'pruned', n, projection: 'jl', ratio: 0.01 });
      if (r) {
        runs.push(r);
        hashes.add(r.hash);
      }
    }
    if (runs.length === 0) continue;
    const last = runs[runs.length - 1];
    console.log(
      `${last.label}: select median ${fmtMs(median(runs.map((r) => r.selMs)))} (runs ${runs.map((r) => fmtMs(r.selMs)).join(', ')}; ` +
        `load ${runs.map((r) => r.load.toFixed(1)).join(', ')}), project ${fmtMs(median(runs.map((r) => r.prepMs)))}, ` +
        `peak RSS ${Math.max(...runs.map((r) => r.rssMiB)).toFixed(0)} MiB; ${last.detail}`,
    );
    console.log(`N=${n}: identical selection in every run: ${hashes.size === 1 ? 'yes' : 'NO'}`);
    if (hashes.size > 1) process.exitCode = 1;
  }
}

main();
