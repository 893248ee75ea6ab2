/**
 * The WebAssembly SIMD kernels of greedy k-center (see coreset.ts): squared distances and the
 * subspace lower bound in f32x4 lanes, the naive algorithm's minimum update and argmax, and the
 * lazy algorithm's refresh of one point (`pull`), so the hot loops run as straight SIMD code over
 * rows kept in one (shared) WebAssembly memory.
 *
 * The module is assembled at load time (wasm-encoder.ts): every function below is a list of
 * opcodes whose shape is written out next to it.
 *
 * Summation order is part of the contract: a squared distance over dimPad floats (dimPad a multiple
 * of 32, rows zero-padded) accumulates element i into lane i mod 4 of accumulator A when
 * ⌊i/4⌋ is even and of accumulator B otherwise, in f32, then returns ((s₀ + s₁) + (s₂ + s₃)) of
 * S = A + B. `squaredDistanceF32` is the same computation in plain JS (for tests). Every caller —
 * the naive reference and the lazy algorithm — gets bit-identical values for the same two rows.
 */

import { assembleModule, F32, F64, Fn, I32, op, V128, wasm, type KernelMemory } from './wasm-encoder.js';

export type { KernelMemory } from './wasm-encoder.js';

// ---- kernel building blocks (inline code emitters) ----

/** out ← ((v₀ + v₁) + (v₂ + v₃)) of the f32x4 local v. */
function emitHorizontalSum(f: Fn, v: number, out: number): void {
  f.emit(
    op.get(v), op.f32x4ExtractLane(0), op.get(v), op.f32x4ExtractLane(1), op.f32Add,
    op.get(v), op.f32x4ExtractLane(2), op.get(v), op.f32x4ExtractLane(3), op.f32Add,
    op.f32Add, op.set(out),
  );
}

/**
 * out ← squared distance of the rows at byte addresses x and c (dimBytes bytes, a multiple of 128),
 * in the contract's order. With `limit` (an f64 local): may stop early once the partial sum is
 * ≥ limit, leaving that partial sum (≤ the full one, since f32 addition of non-negative terms is
 * monotone) in out — exact whenever the full distance is below limit.
 */
function emitDistance(f: Fn, x: number, c: number, dimBytes: number, out: number, limit: number | null): void {
  const a = f.local(V128);
  const b = f.local(V128);
  const t = f.local(V128);
  const s = f.local(V128);
  const j = f.local(I32);
  const xj = f.local(I32);
  const cj = f.local(I32);
  f.emit(op.v128Zero, op.set(a), op.v128Zero, op.set(b), op.i32Const(0), op.set(j));
  f.emit(op.block, op.loop);
  f.emit(op.get(x), op.get(j), op.i32Add, op.set(xj), op.get(c), op.get(j), op.i32Add, op.set(cj));
  for (let q = 0; q < 8; q++) {
    const acc = q % 2 === 0 ? a : b;
    f.emit(
      op.get(xj), op.v128Load(16 * q), op.get(cj), op.v128Load(16 * q), op.f32x4Sub,
      op.tee(t), op.get(t), op.f32x4Mul, op.get(acc), op.f32x4Add, op.set(acc),
    );
  }
  f.emit(op.get(j), op.i32Const(128), op.i32Add, op.set(j));
  if (limit !== null) {
    f.emit(op.get(a), op.get(b), op.f32x4Add, op.set(s));
    emitHorizontalSum(f, s, out);
    f.emit(op.get(out), op.f64PromoteF32, op.get(limit), op.f64Ge, op.brIf(1));
  }
  f.emit(op.get(j), op.get(dimBytes), op.i32LtU, op.brIf(0), op.end);
  f.emit(op.get(a), op.get(b), op.f32x4Add, op.set(s));
  emitHorizontalSum(f, s, out);
  f.emit(op.end);
}

/** out ← squared distance of the kBytes-long (multiple of 16) bound coordinates at zx and zc. */
function emitBound(f: Fn, zx: number, zc: number, kBytes: number, out: number): void {
  const a = f.local(V128);
  const t = f.local(V128);
  const j = f.local(I32);
  f.emit(op.v128Zero, op.set(a), op.i32Const(0), op.set(j), op.loop);
  f.emit(
    op.get(zx), op.get(j), op.i32Add, op.v128Load(), op.get(zc), op.get(j), op.i32Add, op.v128Load(), op.f32x4Sub,
    op.tee(t), op.get(t), op.f32x4Mul, op.get(a), op.f32x4Add, op.set(a),
    op.get(j), op.i32Const(16), op.i32Add, op.tee(j), op.get(kBytes), op.i32LtU, op.brIf(0), op.end,
  );
  emitHorizontalSum(f, a, out);
}

/** sqdist(x, c, dimBytes) → f32: the contract's squared distance. */
function buildSqdist(): Fn {
  const f = new Fn([I32, I32, I32], [F32]);
  const out = f.local(F32);
  emitDistance(f, 0, 1, 2, out, null);
  f.emit(op.get(out));
  return f;
}

/** minUpdate(rows, n, dimBytes, c, dist): dist[i] ← min(dist[i], sqdist(row i, c)) for i < n. */
function buildMinUpdate(): Fn {
  const f = new Fn([I32, I32, I32, I32, I32], [I32]);
  const [rows, n, dimBytes, c, dist] = [0, 1, 2, 3, 4];
  const i = f.local(I32);
  const x = f.local(I32);
  const p = f.local(I32);
  const d = f.local(F32);
  f.emit(op.get(rows), op.set(x), op.block, op.loop, op.get(i), op.get(n), op.i32GeU, op.brIf(1));
  emitDistance(f, x, c, dimBytes, d, null);
  f.emit(op.get(dist), op.get(i), op.i32Const(2), op.i32Shl, op.i32Add, op.set(p));
  f.emit(op.get(d), op.get(p), op.f32Load(), op.f32Gt, op.i32Eqz, op.if, op.get(p), op.get(d), op.f32Store(), op.end);
  f.emit(op.get(x), op.get(dimBytes), op.i32Add, op.set(x), op.get(i), op.i32Const(1), op.i32Add, op.set(i), op.br(0));
  f.emit(op.end, op.end, op.i32Const(0));
  return f;
}

/** argmax(dist, n) → i32: index of the largest value, the lowest index on ties (n ≥ 1). */
function buildArgmax(): Fn {
  const f = new Fn([I32, I32], [I32]);
  const [dist, n] = [0, 1];
  const i = f.local(I32);
  const bi = f.local(I32);
  const best = f.local(F32);
  const v = f.local(F32);
  f.emit(op.f32Const(-1), op.set(best), op.block, op.loop, op.get(i), op.get(n), op.i32GeU, op.brIf(1));
  f.emit(op.get(dist), op.get(i), op.i32Const(2), op.i32Shl, op.i32Add, op.f32Load(), op.tee(v), op.get(best), op.f32Gt);
  f.emit(op.if, op.get(v), op.set(best), op.get(i), op.set(bi), op.end);
  f.emit(op.get(i), op.i32Const(1), op.i32Add, op.set(i), op.br(0), op.end, op.end, op.get(bi));
  return f;
}

/**
 * matRows(w, outDim, inPad, tri, bias, x, xStride, n, inDim, xs, out, outStride) → max ‖y‖²
 * y = W·x − bias for n rows, in f64 (two f64x2 accumulators), rounded to f32: W is outDim × inPad
 * f64 row-major, inPad a multiple of 8 (zero beyond inDim; upper triangular when tri ≠ 0, so row
 * i starts at column i rounded down to a multiple of 8), x rows are f32 at stride xStride floats, xs is an inPad-f64 scratch
 * whose tail beyond inDim is zero, y row r goes to out + r·outStride floats. Returns the largest
 * f64 ‖y‖² (before rounding).
 */
function buildMatRows(): Fn {
  const f = new Fn([I32, I32, I32, I32, I32, I32, I32, I32, I32, I32, I32, I32], [F64]);
  const [w, outDim, inPad, tri, bias, x, xStride, n, inDim, xs, out, outStride] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];
  const r = f.local(I32);
  const i = f.local(I32);
  const c = f.local(I32);
  const xr = f.local(I32);
  const yr = f.local(I32);
  const wi = f.local(I32);
  const acc = f.local(V128);
  const acc2 = f.local(V128);
  const wc = f.local(I32);
  const xc = f.local(I32);
  const y = f.local(F64);
  const norm = f.local(F64);
  const best = f.local(F64);
  f.emit(op.block, op.loop, op.get(r), op.get(n), op.i32GeU, op.brIf(1));
  f.emit(op.get(x), op.get(r), op.get(xStride), op.i32Mul, op.i32Const(2), op.i32Shl, op.i32Add, op.set(xr));
  f.emit(op.get(out), op.get(r), op.get(outStride), op.i32Mul, op.i32Const(2), op.i32Shl, op.i32Add, op.set(yr));
  // xs[0 … inDim) ← the row in f64
  f.emit(op.i32Const(0), op.set(c), op.block, op.loop, op.get(c), op.get(inDim), op.i32GeU, op.brIf(1));
  f.emit(op.get(xs), op.get(c), op.i32Const(3), op.i32Shl, op.i32Add);
  f.emit(op.get(xr), op.get(c), op.i32Const(2), op.i32Shl, op.i32Add, op.f32Load(), op.f64PromoteF32, op.f64Store());
  f.emit(op.get(c), op.i32Const(1), op.i32Add, op.set(c), op.br(0), op.end, op.end);
  f.emit(op.f64Const(0), op.set(norm), op.i32Const(0), op.set(i));
  f.emit(op.block, op.loop, op.get(i), op.get(outDim), op.i32GeU, op.brIf(1));
  f.emit(op.v128Zero, op.set(acc), op.v128Zero, op.set(acc2));
  // c ← tri ? i & ~7 : 0 (inPad is a multiple of 8)
  f.emit(op.get(i), op.i32Const(-8), op.i32And, op.i32Const(0), op.get(tri), op.select, op.set(c));
  f.emit(op.get(w), op.get(i), op.get(inPad), op.i32Mul, op.i32Const(3), op.i32Shl, op.i32Add, op.set(wi));
  f.emit(op.block, op.loop, op.get(c), op.get(inPad), op.i32GeU, op.brIf(1));
  f.emit(op.get(wi), op.get(c), op.i32Const(3), op.i32Shl, op.i32Add, op.set(wc));
  f.emit(op.get(xs), op.get(c), op.i32Const(3), op.i32Shl, op.i32Add, op.set(xc));
  for (let q = 0; q < 4; q++) {
    const a = q % 2 === 0 ? acc : acc2;
    f.emit(op.get(wc), op.v128Load(16 * q), op.get(xc), op.v128Load(16 * q), op.f64x2Mul, op.get(a), op.f64x2Add, op.set(a));
  }
  f.emit(op.get(c), op.i32Const(8), op.i32Add, op.set(c), op.br(0), op.end, op.end);
  f.emit(op.get(acc), op.get(acc2), op.f64x2Add, op.set(acc));
  f.emit(op.get(acc), op.f64x2ExtractLane(0), op.get(acc), op.f64x2ExtractLane(1), op.f64Add);
  f.emit(op.get(bias), op.get(i), op.i32Const(3), op.i32Shl, op.i32Add, op.f64Load0, op.f64Sub, op.tee(y));
  f.emit(op.get(y), op.f64Mul, op.get(norm), op.f64Add, op.set(norm));
  f.emit(op.get(yr), op.get(i), op.i32Const(2), op.i32Shl, op.i32Add, op.get(y), op.f32DemoteF64, op.f32Store());
  f.emit(op.get(i), op.i32Const(1), op.i32Add, op.set(i), op.br(0), op.end, op.end);
  f.emit(op.get(best), op.get(norm), op.f64Max, op.set(best));
  f.emit(op.get(r), op.i32Const(1), op.i32Add, op.set(r), op.br(0), op.end, op.end);
  f.emit(op.get(best));
  return f;
}

/**
 * pull(x, zx, centreRows, centreZ, from, to, v, stopBelow, lo, hi, abs, dimBytes, kBytes, stats) → f32
 * The lazy k-center's refresh of one point (coreset-lazy.ts): its minimum squared distance v
 * (over the centres before `from`) lowered by the centres from … to − 1, in order, until it
 * falls below `stopBelow` (the point then leaves the top of the heap; the rest can wait).
 * Centre j is skipped, unevaluated, when the subspace bound proves d(x, c_j)² ≥ v
 * (b̃·lo − abs > v·hi, see kCenterMargins); otherwise its distance is computed, stopping early
 * once the partial sum reaches v. Returns the new minimum, exact over the centres before
 * stats[2] (where it stopped); stats[0] += distances, stats[1] += bounds (i32 each).
 */
function buildPull(): Fn {
  const f = new Fn([I32, I32, I32, I32, I32, I32, F32, F32, F64, F64, F64, I32, I32, I32], [F32]);
  const [x, zx, centreRows, centreZ, from, to, v0, stopBelow, lo, hi, abs, dimBytes, kBytes, stats] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13];
  const j = f.local(I32);
  const v = f.local(F32);
  const thr = f.local(F64);
  const limit = f.local(F64);
  const zc = f.local(I32);
  const c = f.local(I32);
  const b = f.local(F32);
  const d = f.local(F32);
  const evals = f.local(I32);
  const bounds = f.local(I32);
  f.emit(op.get(v0), op.set(v), op.get(v), op.f64PromoteF32, op.get(hi), op.f64Mul, op.set(thr), op.get(from), op.set(j));
  f.emit(op.block, op.loop, op.get(j), op.get(to), op.i32GeU, op.brIf(1));
  f.emit(op.block); // $next
  f.emit(op.get(kBytes), op.if);
  f.emit(op.get(centreZ), op.get(j), op.get(kBytes), op.i32Mul, op.i32Add, op.set(zc));
  emitBound(f, zx, zc, kBytes, b);
  f.emit(op.get(bounds), op.i32Const(1), op.i32Add, op.set(bounds));
  f.emit(op.get(b), op.f64PromoteF32, op.get(lo), op.f64Mul, op.get(abs), op.f64Sub, op.get(thr), op.f64Gt, op.brIf(1));
  f.emit(op.end);
  f.emit(op.get(evals), op.i32Const(1), op.i32Add, op.set(evals));
  f.emit(op.get(centreRows), op.get(j), op.get(dimBytes), op.i32Mul, op.i32Add, op.set(c));
  f.emit(op.get(v), op.f64PromoteF32, op.set(limit));
  emitDistance(f, x, c, dimBytes, d, limit);
  f.emit(op.get(d), op.get(v), op.f32Ge, op.brIf(0));
  f.emit(op.get(d), op.set(v), op.get(v), op.f64PromoteF32, op.get(hi), op.f64Mul, op.set(thr));
  f.emit(op.get(v), op.get(stopBelow), op.f32Lt, op.if, op.get(j), op.i32Const(1), op.i32Add, op.set(j), op.br(3), op.end);
  f.emit(op.end); // $next
  f.emit(op.get(j), op.i32Const(1), op.i32Add, op.set(j), op.br(0), op.end, op.end);
  f.emit(op.get(stats), op.get(j), op.i32Store(8));
  f.emit(op.get(stats), op.get(stats), op.i32Load(0), op.get(evals), op.i32Add, op.i32Store(0));
  f.emit(op.get(stats), op.get(stats), op.i32Load(4), op.get(bounds), op.i32Add, op.i32Store(4));
  f.emit(op.get(v));
  return f;
}

const EXPORTS: Array<[string, () => Fn]> = [
  ['sqdist', buildSqdist],
  ['minUpdate', buildMinUpdate],
  ['argmax', buildArgmax],
  ['matRows', buildMatRows],
  ['pull', buildPull],
];

/** The module's bytes: imports env.memory (shared, up to 4 GiB), exports the kernels. */
export function kernelModuleBytes(): Uint8Array {
  return assembleModule(EXPORTS.map(([name, build]) => [name, build()]), 'shared');
}

/** The kernels, bound to one memory. Pointers are byte offsets into that memory. */
export interface DistanceKernel {
  readonly memory: KernelMemory;
  sqdist(x: number, c: number, dimBytes: number): number;
  minUpdate(rows: number, n: number, dimBytes: number, c: number, dist: number): number;
  argmax(dist: number, n: number): number;
  matRows(
    w: number, outDim: number, inPad: number, tri: number, bias: number, x: number, xStride: number, n: number,
    inDim: number, xs: number, out: number, outStride: number,
  ): number;
  pull(
    x: number, zx: number, centreRows: number, centreZ: number, from: number, to: number, v: number, stopBelow: number,
    lo: number, hi: number, abs: number, dimBytes: number, kBytes: number, stats: number,
  ): number;
}

let compiled: object | undefined;

/** Compiles the module once per thread and instantiates it on `memory` (a shared memory). */
export function createKernel(memory: KernelMemory): DistanceKernel {
  compiled ??= new wasm.Module(kernelModuleBytes());
  const instance = new wasm.Instance(compiled, { env: { memory } });
  return { memory, ...(instance.exports as unknown as Omit<DistanceKernel, 'memory'>) };
}

/** Bytes of a shared memory of at least `bytes`; throws past WebAssembly's 4 GiB. */
export function createSharedMemory(bytes: number, what: string): KernelMemory {
  const pages = Math.max(1, Math.ceil(bytes / 65536));
  if (pages > 65536) {
    throw new RangeError(`${what}: needs ${(bytes / 2 ** 30).toFixed(2)} GiB of kernel memory, more than WebAssembly's 4 GiB`);
  }
  return new wasm.Memory({ initial: pages, maximum: pages, shared: true });
}

/** Floats per stored row: dim rounded up to a multiple of 32 (the kernel's step), zero-padded. */
export function paddedDim(dim: number): number {
  return Math.ceil(dim / 32) * 32;
}

/** The kernel's squared distance in plain JS (same order, f32 rounding): for tests. */
export function squaredDistanceF32(a: Float32Array, ao: number, b: Float32Array, bo: number, dim: number): number {
  const f = Math.fround;
  const acc = [new Float32Array(4), new Float32Array(4)];
  for (let i = 0; i < dim; i++) {
    const d = f(a[ao + i] - b[bo + i]);
    const lanes = acc[(i >> 2) & 1];
    lanes[i & 3] = f(lanes[i & 3] + f(d * d));
  }
  const s = [0, 1, 2, 3].map((l) => f(acc[0][l] + acc[1][l]));
  return f(f(s[0] + s[1]) + f(s[2] + s[3]));
}

/**
 * y = W·x for every row (W: outDim × inDim row-major f64, upper triangular when `triangular`),
 * f64 accumulation in the kernel's f64x2 lanes, f32 out — in blocks, so the kernel's memory stays
 * small whatever n is.
 */
export function transformRows(w: Float64Array, outDim: number, inDim: number, data: Float32Array, n: number, triangular: boolean): Float32Array {
  if (w.length !== outDim * inDim || data.length !== n * inDim) {
    throw new RangeError(`transformRows: expected a ${outDim}×${inDim} matrix and ${n} rows of ${inDim} values, got ${w.length} and ${data.length} values`);
  }
  const inPad = Math.ceil(inDim / 8) * 8;
  const block = Math.max(1, Math.min(n, Math.floor((8 << 20) / (4 * (inDim + outDim)))));
  const wAt = 0;
  const biasAt = wAt + outDim * inPad * 8;
  const xsAt = biasAt + outDim * 8;
  const xAt = xsAt + Math.ceil((inPad * 8) / 16) * 16;
  const yAt = xAt + Math.ceil((block * inDim * 4) / 16) * 16;
  const kernel = createKernel(createSharedMemory(yAt + block * outDim * 4, 'transformRows'));
  const buf = kernel.memory.buffer;
  const wp = new Float64Array(buf, wAt, outDim * inPad);
  for (let i = 0; i < outDim; i++) wp.set(w.subarray(i * inDim, i * inDim + inDim), i * inPad);
  const x = new Float32Array(buf, xAt, block * inDim);
  const y = new Float32Array(buf, yAt, block * outDim);
  const out = new Float32Array(n * outDim);
  for (let r0 = 0; r0 < n; r0 += block) {
    const rows = Math.min(block, n - r0);
    x.set(data.subarray(r0 * inDim, (r0 + rows) * inDim));
    kernel.matRows(wAt, outDim, inPad, triangular ? 1 : 0, biasAt, xAt, inDim, rows, inDim, xsAt, yAt, outDim);
    out.set(y.subarray(0, rows * outDim), r0 * outDim);
  }
  return out;
}
