/**
 * Coreset benchmark: `npx tsx bench/coreset.ts [--quick]`.
 *
 * Data: patch embeddings of the 24 reference train images, computed here from the stored taps
 * (3×3 average pooling, stride-16 tap bilinearly upsampled — checked against
 * embedding_train0.bin), then tiled to N rows: each row is a random patch position p of a random
 * image i, moved a random step toward the same position of another image j, plus small noise
 * (x = e[i,p] + β·(e[j,p] − e[i,p]) + σ·g, β ∈ [−0.25, 0.25), σ = 0.02). Without ../shared it falls
 * back to a seeded Gaussian mixture (said so in the output). Every case runs in its own child
 * process, so "peak RSS" is that case's own.
 *
 * Prints per case: time to prepare (projection) and to select, distance evaluations against the
 * naive n·(m+1), and a same-run baseline: the naive algorithm on the first 50k rows, checked to
 * give the same indices as the pruned one.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { coresetSize, kCenterGreedy, kCenterGreedyNaive, prepareCoresetInput, type KCenterResult } from '../models/coreset.js';
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

function fmtMs(ms: number): string {
  return ms >= 10000 ? `${(ms / 1000).toFixed(1)} s` : `${ms.toFixed(0)} ms`;
}

function describe(r: KCenterResult, n: number, m: number): string {
  const naive = n * (m + 1);
  return `evals ${(r.distanceEvaluations / 1e6).toFixed(2)}M = 1/${(naive / r.distanceEvaluations).toFixed(1)} of naive ${(naive / 1e6).toFixed(0)}M, centre-centre ${(r.centreDistanceEvaluations / 1e6).toFixed(2)}M, bound ${(r.boundEvaluations / 1e6).toFixed(1)}M`;
}

function peakRss(): string {
  return `${(process.resourceUsage().maxRSS / 1024).toFixed(0)} MiB`;
}

/** Runs one case in this process and prints one line. */
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
  // As selectCoreset does: projected rows are handed over (not for the baseline, which reuses them).
  const consumePoints = spec.kind !== 'baseline' && input.points !== features;
  const pruned = kCenterGreedy(input.points, spec.n, input.dim, input.m, input.startIndex, { consumePoints });
  const selMs = performance.now() - t;
  const label = `${spec.kind} N=${spec.n} m=${input.m} ${spec.projection}(${input.dim}d)`;
  if (spec.kind !== 'baseline') {
    console.log(`${label} [${source}]: project ${fmtMs(prepMs)}, select ${fmtMs(selMs)}, total ${fmtMs(prepMs + selMs)}; ${describe(pruned, spec.n, input.m)}; peak RSS ${peakRss()}`);
    return;
  }
  t = performance.now();
  const naive = kCenterGreedyNaive(input.points, spec.n, input.dim, input.m, input.startIndex);
  const naiveMs = performance.now() - t;
  const same = naive.selected.every((v, i) => v === pruned.selected[i]);
  console.log(
    `${label} [${source}]: naive ${fmtMs(naiveMs)} vs pruned ${fmtMs(selMs)} → ${(naiveMs / selMs).toFixed(1)}× faster; ` +
      `identical indices: ${same ? 'yes' : 'NO'}; ${describe(pruned, spec.n, input.m)}`,
  );
  if (!same) process.exitCode = 1;
}

function main(): void {
  const arg = process.argv.indexOf('--case');
  if (arg >= 0) {
    runCase(JSON.parse(process.argv[arg + 1]) as CaseSpec);
    return;
  }
  const quick = process.argv.includes('--quick');
  const sizes = quick ? [164_640] : [164_640, 627_200];
  const cases: CaseSpec[] = [
    { kind: 'real', n: 18_816, projection: 'none', ratio: 0.01 },
    { kind: 'real', n: 18_816, projection: 'jl', ratio: 0.01 },
    { kind: 'real', n: 18_816, projection: 'none', ratio: 0.1 },
    { kind: 'baseline', n: 50_000, projection: 'none', ratio: 0.01 },
    { kind: 'baseline', n: 50_000, projection: 'jl', ratio: 0.01 },
  ];
  for (const n of sizes) for (const projection of ['none', 'jl'] as const) cases.push({ kind: 'pruned', n, projection, ratio: 0.01 });
  console.log(`coreset bench: node ${process.version}, 1 % coreset unless noted (m = ${sizes.map((n) => coresetSize(n, 0.01)).join(', ')})`);
  for (const spec of cases) {
    const child = spawnSync(process.execPath, [...process.execArgv, fileURLToPath(import.meta.url), '--case', JSON.stringify(spec)], {
      stdio: 'inherit',
    });
    if (child.status !== 0) process.exitCode = 1;
  }
}

main();
