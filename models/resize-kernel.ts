/**
 * toModelInput's WebAssembly kernels (preprocess.ts).
 *
 * The triangle resize's two passes (resize.ts) for RGB pixels compute the very float64 products
 * and sums of the JavaScript loops, in the same order (per value: acc = 0, then acc += w·x tap by
 * tap), so the results are bit-identical; they only do it two lanes at a time and without bounds
 * checks. Resizing a 900×900 photo to 224×224 drops from about 13.9 ms to about 3.5 ms
 * (`npm run bench:preprocess`).
 *
 * The table lookup maps the 8-bit values of a box already at the model's size through a
 * 256-entry f32 table per channel into the three planes: the agent's hot path (every slot of
 * every frame), about twice as fast as the JavaScript loop it replaced.
 *
 * One private, growable memory per thread holds a call's coefficients or table, the box's source
 * rows, the horizontal pass's rows and the output rows. It keeps the size of the largest call
 * (about 45 MB after resizing a whole 3000×3000 photo, under 2 MB for slot crops) for the next one.
 *
 * Batch buffers (`allocateKernelBatch`): a batch that travels to an inference worker lives in
 * the pixel arena (pixel-arena.ts), a shared memory with its own kernel instance and the scratch
 * space above its blocks, so the kernels write the planes straight into the batch: no copy of
 * 600 KB per 224×224 crop out of kernel memory. Its SharedArrayBuffer is what the worker
 * receives. The agent's frames are decoded into the arena too (`allocateArenaFrame`), and the
 * kernels read a slot's rows where they are instead of copying them into scratch first. When the
 * arena is full a batch gets a shared memory of its own (batch first, scratch after it).
 */
import { PixelArena, type ArenaBlock, type PixelArenaStats } from './pixel-arena.js';
import type { AxisCoefficients, PixelBox } from './resize.js';
import { assembleModule, F64, Fn, I32, op, V128, wasm, type GrowableMemory, type KernelMemory, type ValType } from './wasm-encoder.js';

/**
 * horizontal3(src, srcRowBytes, rows, start, count, weights, strideBytes, outSize, tmp, tmpRowBytes):
 * for each of `rows` rows of 8-bit RGB at src (srcRowBytes apart) and each output i, the f64 sums
 * Σ w·x over taps start[i]…start[i] + count[i] − 1 with weights at weights + i·strideBytes,
 * written as R, G, B f64 at tmp (tmpRowBytes apart). R and G share one f64x2 lane pair (8 bytes
 * are read from each pixel onward, so the source needs 8 bytes of padding), B is scalar.
 */
function buildHorizontal3(): Fn {
  const f = new Fn([I32, I32, I32, I32, I32, I32, I32, I32, I32, I32], []);
  const [src, srcRowBytes, rows, start, count, weights, strideBytes, outSize, tmp, tmpRowBytes] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9];
  const r = f.local(I32);
  const i = f.local(I32);
  const k = f.local(I32);
  const n = f.local(I32);
  const p = f.local(I32);
  const wp = f.local(I32);
  const o = f.local(I32);
  const rowBase = f.local(I32);
  const orow = f.local(I32);
  const accRG = f.local(V128);
  const accB = f.local(F64);
  const w = f.local(F64);
  f.emit(op.get(src), op.set(rowBase), op.get(tmp), op.set(orow));
  f.emit(op.block, op.loop, op.get(r), op.get(rows), op.i32GeU, op.brIf(1));
  f.emit(op.i32Const(0), op.set(i), op.get(orow), op.set(o));
  f.emit(op.block, op.loop, op.get(i), op.get(outSize), op.i32GeU, op.brIf(1));
  // p = rowBase + 3·start[i]; wp = weights + i·strideBytes; n = count[i]
  f.emit(op.get(start), op.get(i), op.i32Const(2), op.i32Shl, op.i32Add, op.i32Load(), op.i32Const(3), op.i32Mul, op.get(rowBase), op.i32Add, op.set(p));
  f.emit(op.get(weights), op.get(i), op.get(strideBytes), op.i32Mul, op.i32Add, op.set(wp));
  f.emit(op.get(count), op.get(i), op.i32Const(2), op.i32Shl, op.i32Add, op.i32Load(), op.set(n));
  f.emit(op.v128Zero, op.set(accRG), op.f64Const(0), op.set(accB), op.i32Const(0), op.set(k));
  f.emit(op.block, op.loop, op.get(k), op.get(n), op.i32GeU, op.brIf(1));
  f.emit(op.get(wp), op.f64Load(), op.set(w));
  f.emit(
    op.get(accRG), op.get(w), op.f64x2Splat,
    op.get(p), op.v128Load8x8U(), op.i32x4ExtendLowI16x8U, op.f64x2ConvertLowI32x4U,
    op.f64x2Mul, op.f64x2Add, op.set(accRG),
  );
  f.emit(op.get(accB), op.get(w), op.get(p), op.i32Load8U(2), op.f64ConvertI32U, op.f64Mul, op.f64Add, op.set(accB));
  f.emit(op.get(p), op.i32Const(3), op.i32Add, op.set(p), op.get(wp), op.i32Const(8), op.i32Add, op.set(wp));
  f.emit(op.get(k), op.i32Const(1), op.i32Add, op.set(k), op.br(0), op.end, op.end);
  f.emit(op.get(o), op.get(accRG), op.v128Store(), op.get(o), op.get(accB), op.f64Store(16));
  f.emit(op.get(o), op.i32Const(24), op.i32Add, op.set(o), op.get(i), op.i32Const(1), op.i32Add, op.set(i), op.br(0), op.end, op.end);
  f.emit(op.get(rowBase), op.get(srcRowBytes), op.i32Add, op.set(rowBase), op.get(orow), op.get(tmpRowBytes), op.i32Add, op.set(orow));
  f.emit(op.get(r), op.i32Const(1), op.i32Add, op.set(r), op.br(0), op.end, op.end);
  return f;
}

/**
 * vertical(tmp, tmpRowBytes, outHeight, start, count, weights, strideBytes, firstRow, out, rowBytes):
 * output row y = Σ_k w_k · tmp row (start[y] − firstRow + k), tap-major (the first tap's product,
 * then each further tap added), over rowBytes/16 f64 pairs; output rows rowBytes apart.
 */
function buildVertical(): Fn {
  const f = new Fn([I32, I32, I32, I32, I32, I32, I32, I32, I32, I32], []);
  const [tmp, tmpRowBytes, outHeight, start, count, weights, strideBytes, firstRow, out, rowBytes] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9];
  const y = f.local(I32);
  const k = f.local(I32);
  const n = f.local(I32);
  const j = f.local(I32);
  const src = f.local(I32);
  const wp = f.local(I32);
  const o = f.local(I32);
  const w = f.local(V128);
  f.emit(op.get(out), op.set(o));
  f.emit(op.block, op.loop, op.get(y), op.get(outHeight), op.i32GeU, op.brIf(1));
  // src = tmp + (start[y] − firstRow)·tmpRowBytes; wp = weights + y·strideBytes; n = count[y]
  f.emit(op.get(start), op.get(y), op.i32Const(2), op.i32Shl, op.i32Add, op.i32Load(), op.get(firstRow), op.i32Sub, op.get(tmpRowBytes), op.i32Mul, op.get(tmp), op.i32Add, op.set(src));
  f.emit(op.get(weights), op.get(y), op.get(strideBytes), op.i32Mul, op.i32Add, op.set(wp));
  f.emit(op.get(count), op.get(y), op.i32Const(2), op.i32Shl, op.i32Add, op.i32Load(), op.set(n));
  // First tap: out = w·row.
  f.emit(op.get(wp), op.f64Load(), op.f64x2Splat, op.set(w), op.i32Const(0), op.set(j));
  f.emit(op.block, op.loop, op.get(j), op.get(rowBytes), op.i32GeU, op.brIf(1));
  f.emit(op.get(o), op.get(j), op.i32Add, op.get(w), op.get(src), op.get(j), op.i32Add, op.v128Load(), op.f64x2Mul, op.v128Store());
  f.emit(op.get(j), op.i32Const(16), op.i32Add, op.set(j), op.br(0), op.end, op.end);
  // Further taps: out += w·row.
  f.emit(op.i32Const(1), op.set(k));
  f.emit(op.block, op.loop, op.get(k), op.get(n), op.i32GeU, op.brIf(1));
  f.emit(op.get(src), op.get(tmpRowBytes), op.i32Add, op.set(src), op.get(wp), op.i32Const(8), op.i32Add, op.tee(wp));
  f.emit(op.f64Load(), op.f64x2Splat, op.set(w), op.i32Const(0), op.set(j));
  f.emit(op.block, op.loop, op.get(j), op.get(rowBytes), op.i32GeU, op.brIf(1));
  f.emit(
    op.get(o), op.get(j), op.i32Add,
    op.get(o), op.get(j), op.i32Add, op.v128Load(),
    op.get(w), op.get(src), op.get(j), op.i32Add, op.v128Load(), op.f64x2Mul,
    op.f64x2Add, op.v128Store(),
  );
  f.emit(op.get(j), op.i32Const(16), op.i32Add, op.set(j), op.br(0), op.end, op.end);
  f.emit(op.get(k), op.i32Const(1), op.i32Add, op.set(k), op.br(0), op.end, op.end);
  f.emit(op.get(o), op.get(rowBytes), op.i32Add, op.set(o), op.get(y), op.i32Const(1), op.i32Add, op.set(y), op.br(0), op.end, op.end);
  return f;
}

/**
 * A kernel (src, srcRowBytes, height, width, dst, ...extra) that writes each pixel of `height`
 * rows (srcRowBytes apart, pixelBytes per pixel) as three f32 values, channel c's into plane c at
 * dst (planes of width·height f32, one after another). `value` leaves channel c's f32 on the
 * stack, given the local holding the pixel's address and the indices of the extra parameters.
 */
function buildPlaneWriter(extra: ValType[], pixelBytes: number, value: (c: number, pixel: number, extraParams: number[]) => number[][]): Fn {
  const f = new Fn([I32, I32, I32, I32, I32, ...extra], []);
  const [src, srcRowBytes, height, width, dst] = [0, 1, 2, 3, 4];
  const extraParams = extra.map((_, i) => 5 + i);
  const y = f.local(I32);
  const x = f.local(I32);
  const p = f.local(I32);
  const q = f.local(I32);
  const planeBytes = f.local(I32);
  f.emit(op.get(width), op.get(height), op.i32Mul, op.i32Const(2), op.i32Shl, op.set(planeBytes), op.get(dst), op.set(q));
  f.emit(op.block, op.loop, op.get(y), op.get(height), op.i32GeU, op.brIf(1));
  f.emit(op.get(src), op.get(y), op.get(srcRowBytes), op.i32Mul, op.i32Add, op.set(p), op.i32Const(0), op.set(x));
  f.emit(op.block, op.loop, op.get(x), op.get(width), op.i32GeU, op.brIf(1));
  for (let c = 0; c < 3; c++) {
    f.emit(op.get(q));
    if (c > 0) f.emit(op.get(planeBytes), ...(c === 2 ? [op.i32Const(1), op.i32Shl] : []), op.i32Add);
    f.emit(...value(c, p, extraParams), op.f32Store());
  }
  f.emit(op.get(p), op.i32Const(pixelBytes), op.i32Add, op.set(p), op.get(q), op.i32Const(4), op.i32Add, op.set(q));
  f.emit(op.get(x), op.i32Const(1), op.i32Add, op.set(x), op.br(0), op.end, op.end);
  f.emit(op.get(y), op.i32Const(1), op.i32Add, op.set(y), op.br(0), op.end, op.end);
  return f;
}

/**
 * planes(rows, rowBytes, height, width, dst, s0, o0, s1, o1, s2, o2): each interleaved f64 RGB
 * value v of the height rows (rowBytes apart) becomes f32(v·s_c + o_c) in channel c's plane: the
 * normalisation JavaScript does with `plane[i] = v * s + o` (f64 arithmetic, rounded once to f32
 * on the store).
 */
function buildPlanes(): Fn {
  return buildPlaneWriter([F64, F64, F64, F64, F64, F64], 24, (c, pixel, so) => [
    op.get(pixel), op.f64Load(8 * c), op.get(so[2 * c]!), op.f64Mul, op.get(so[2 * c + 1]!), op.f64Add, op.f32DemoteF64,
  ]);
}

/**
 * lookup3(src, srcRowBytes, height, width, dst, table): each 8-bit value v of channel c of the
 * RGB pixels becomes the f32 at table + 1024·c + 4·v in channel c's plane.
 */
function buildLookup3(): Fn {
  return buildPlaneWriter([I32], 3, (c, pixel, [table]) => [
    op.get(pixel), op.i32Load8U(c), op.i32Const(2), op.i32Shl, op.get(table!), op.i32Add, op.f32Load(1024 * c),
  ]);
}

type Pass = (a: number, b: number, c: number, d: number, e: number, f: number, g: number, h: number, i: number, j: number) => void;
type Planes = (rows: number, rowBytes: number, height: number, width: number, dst: number, s0: number, o0: number, s1: number, o1: number, s2: number, o2: number) => void;
type Lookup = (src: number, srcRowBytes: number, height: number, width: number, dst: number, table: number) => void;

interface Kernel {
  memory: GrowableMemory | KernelMemory;
  /** Where scratch space starts (0, or after the batch a batch kernel's memory begins with). */
  base: number;
  /** Bytes the memory may grow to. */
  maxBytes: number;
  horizontal3: Pass;
  vertical: Pass;
  planes: Planes;
  lookup3: Lookup;
}

const kernelFunctions = (): Array<[string, Fn]> => [['horizontal3', buildHorizontal3()], ['vertical', buildVertical()], ['planes', buildPlanes()], ['lookup3', buildLookup3()]];

function instantiate(bytes: Uint8Array, memory: GrowableMemory | KernelMemory, base: number, maxBytes: number): Kernel {
  const instance = new wasm.Instance(new wasm.Module(bytes), { env: { memory } });
  return { memory, base, maxBytes, ...(instance.exports as unknown as Omit<Kernel, 'memory' | 'base' | 'maxBytes'>) };
}

let kernel: Kernel | undefined;

function getKernel(): Kernel {
  kernel ??= instantiate(assembleModule(kernelFunctions(), 'private'), new wasm.Memory({ initial: 16 }), 0, 2 ** 31);
  return kernel;
}

let sharedModuleBytes: Uint8Array | undefined;
/** The batch kernel of each batch buffer allocateKernelBatch made, by its SharedArrayBuffer. */
const batchKernels = new WeakMap<ArrayBufferLike, Kernel>();
/** A batch memory may grow to this (batch + the scratch of slot boxes up to a whole 4K frame). */
const BATCH_MEMORY_MAX_BYTES = 512 * 2 ** 20;

/**
 * A float32 batch buffer of `values` values at the start of a shared memory of its own, which the
 * kernels write into directly (toModelInput with it as `out`). Its buffer is a SharedArrayBuffer:
 * posted to a worker, it is shared, not copied. Falls back to a plain SharedArrayBuffer-backed
 * array when `values` leaves no room for scratch space.
 */
export function allocateKernelBatch(values: number): Float32Array {
  const arena = pixelArena();
  const block = arena.allocate(values * Float32Array.BYTES_PER_ELEMENT);
  if (block) {
    const batch = new Float32Array(arena.buffer(), block.offset, values);
    // A batch lives as long as its batcher; once nothing refers to it, its block serves others.
    arenaFinalizer.register(batch, block);
    return batch;
  }
  const batchBytes = align16(values * Float32Array.BYTES_PER_ELEMENT);
  const scratch = 2 * 2 ** 20;
  if (batchBytes + scratch > BATCH_MEMORY_MAX_BYTES) return new Float32Array(new SharedArrayBuffer(values * Float32Array.BYTES_PER_ELEMENT));
  sharedModuleBytes ??= assembleModule(kernelFunctions(), 'shared');
  const memory = new wasm.Memory({ initial: Math.ceil((batchBytes + scratch) / 65536), maximum: BATCH_MEMORY_MAX_BYTES / 65536, shared: true });
  const batch = new Float32Array(memory.buffer, 0, values);
  batchKernels.set(batch.buffer, instantiate(sharedModuleBytes, memory, batchBytes, BATCH_MEMORY_MAX_BYTES));
  return batch;
}

/** The arena's largest size: virtual address space reserved up front, pages used as needed. */
const ARENA_MAX_BYTES = 2 ** 30;
let arena: PixelArena | undefined;
const arenaFinalizer = new FinalizationRegistry<ArenaBlock>((block) => arena!.free(block));

/**
 * The pixel arena of this thread (pixel-arena.ts) and, on first use, its kernel: scratch space
 * starts at the arena's top at each call.
 */
function pixelArena(): PixelArena {
  if (!arena) {
    const a = new PixelArena(ARENA_MAX_BYTES);
    sharedModuleBytes ??= assembleModule(kernelFunctions(), 'shared');
    const k = instantiate(sharedModuleBytes, a.memory, 0, ARENA_MAX_BYTES);
    Object.defineProperty(k, 'base', { get: () => a.top });
    arenaKernel = k;
    arena = a;
  }
  return arena;
}
let arenaKernel: Kernel | undefined;

/** Bytes after a frame's pixels that the kernels may read (horizontal3's 8-byte pixel loads). */
const FRAME_PADDING = 16;

export interface ArenaFrame {
  /** width·height·3 bytes, in the arena: toModelInput reads its slots in place. */
  data: Uint8Array;
  /** Gives the buffer back for a later frame; call it once nothing reads `data` any more. Idempotent. */
  release(): void;
}

/** Arena frames handed out and not released (one collected unreleased still counts: a bug to see). */
let framesInUse = 0;

/**
 * A buffer of `bytes` for a decoded frame in the pixel arena, or null when the arena is full or
 * SHELFWATCH_PIXEL_ARENA=0 (the caller allocates an ordinary one). A frame never released is
 * given back once `data` is garbage.
 */
export function allocateArenaFrame(bytes: number): ArenaFrame | null {
  if (process.env['SHELFWATCH_PIXEL_ARENA'] === '0') return null; // for comparisons (bench) and diagnosis
  const a = pixelArena();
  const block = a.allocate(bytes + FRAME_PADDING);
  if (!block) return null;
  const data = new Uint8Array(a.buffer(), block.offset, bytes);
  const token = {};
  arenaFinalizer.register(data, block, token);
  framesInUse++;
  let released = false;
  return {
    data,
    release: () => {
      if (released) return;
      released = true;
      framesInUse--;
      arenaFinalizer.unregister(token);
      a.free(block);
    },
  };
}
/**
 * The pixel arena's figures (memory, blocks in use, reuse, refusals) and the frames in it not yet
 * released; zeros before anything used it (asking does not create it).
 */
export function pixelArenaStats(): PixelArenaStats & { framesInUse: number } {
  const stats = arena?.stats() ?? { memoryBytes: 0, blocksInUse: 0, reused: 0, refused: 0 };
  return { ...stats, framesInUse };
}

/** Whether `data` is an arena frame the arena kernel can read in place (kernel `k` being that kernel). */
function inArena(k: Kernel, data: Uint8Array): boolean {
  return k === arenaKernel && arena!.holds(data);
}

/**
 * The kernel that writes into `target` directly (a batch of allocateKernelBatch with room for
 * `scratchBytes` more), or null: the thread's private kernel then works in its own memory and the
 * result is copied into `target`.
 */
function kernelInside(target: Float32Array, scratchBytes: number): Kernel | null {
  const k = arena?.holds(target) ? arenaKernel : batchKernels.get(target.buffer);
  return k && k.base + scratchBytes <= k.maxBytes ? k : null;
}

/** Kernel memory with at least `bytes` of scratch from k.base on (grows it; a private memory's earlier views are then detached). */
function reserve(k: Kernel, bytes: number): ArrayBuffer | SharedArrayBuffer {
  if (k === arenaKernel) return arena!.buffer(k.base + bytes);
  const have = k.memory.buffer.byteLength;
  const need = k.base + bytes;
  if (need > have) {
    if (need > k.maxBytes) throw new RangeError(`resize: needs ${(bytes / 2 ** 30).toFixed(2)} GiB of scratch memory`);
    k.memory.grow(Math.ceil((need - have) / 65536));
  }
  return k.memory.buffer;
}

const align16 = (n: number): number => Math.ceil(n / 16) * 16;

/** Writes one axis's coefficients at `at`: start and count as i32, then the weights as f64. */
function placeCoefficients(buf: ArrayBuffer | SharedArrayBuffer, at: number, c: AxisCoefficients): { start: number; count: number; weights: number } {
  const start = at;
  const count = align16(start + 4 * c.outSize);
  const weights = align16(count + 4 * c.outSize);
  new Int32Array(buf, start, c.outSize).set(c.start);
  new Int32Array(buf, count, c.outSize).set(c.count);
  new Float64Array(buf, weights, c.weights.length).set(c.weights);
  return { start, count, weights };
}

const coefficientBytes = (c: AxisCoefficients): number => 2 * align16(4 * c.outSize) + align16(8 * c.weights.length);

/**
 * Copies `rows` rows of `boxWidth` RGB pixels from (x, y) of `data` (rows of `width` pixels) to
 * `dst`, `dstStride` bytes apart (default: contiguous); in one piece when the box spans whole rows.
 */
export function copyBoxRows(data: Uint8Array, width: number, x: number, y: number, boxWidth: number, rows: number, dst: Uint8Array, dstStride = boxWidth * 3): void {
  const rowBytes = boxWidth * 3;
  const from = (y * width + x) * 3;
  if (x === 0 && boxWidth === width && dstStride === rowBytes) dst.set(data.subarray(from, from + rows * rowBytes));
  else for (let r = 0; r < rows; r++) dst.set(data.subarray(from + r * width * 3, from + r * width * 3 + rowBytes), r * dstStride);
}

/*
 * Rows copied into a batch's shared memory go through V8's relaxed memmove, which copies byte by
 * byte unless source and destination sit at the same address mod 8 — more than twice the time of
 * the word copy for a 224×224 box (`npm run bench:preprocess`). So a box's rows are placed in
 * scratch at the source's alignment: each row `boxRowStride` bytes apart (≡ the frame's row
 * length mod 8) from an offset `alignedAt` moves up by at most 7 bytes.
 */

/** A row stride ≥ boxWidth·3 that is ≡ width·3 (mod 8), so every row keeps the first one's alignment. */
function boxRowStride(width: number, boxWidth: number): number {
  return boxWidth * 3 + ((((width - boxWidth) * 3) % 8) + 8) % 8;
}

/** The first offset ≥ `at` that is ≡ the box's first source byte (mod 8). */
function alignedAt(at: number, data: Uint8Array, width: number, box: { x: number; y: number }): number {
  const source = data.byteOffset + (box.y * width + box.x) * 3;
  return at + ((((source - at) % 8) + 8) % 8);
}

/** Where the passes left the output rows: `height` rows of width·3 f64, `rowBytes` apart. */
interface ResizedRows {
  k: Kernel;
  buf: ArrayBuffer | SharedArrayBuffer;
  rowsAt: number;
  rowBytes: number;
  /** First free byte after the rows (scratch for callers). */
  end: number;
}

/**
 * Where resizeRgb keeps what in scratch memory for box → h.outSize × v.outSize, as offsets from
 * the scratch start (16-byte aligned): the coefficients, the box's source rows, the horizontal
 * pass's rows and the vertical pass's; `end` is the scratch size.
 */
interface ResizeLayout {
  rowBytes: number;
  /** First source row the vertical pass reads, and how many (all of them unless enlarging oddly). */
  firstRow: number;
  rows: number;
  srcRowBytes: number;
  vAt: number;
  srcAt: number;
  tmpAt: number;
  outAt: number;
  end: number;
}

function resizeLayout(width: number, box: PixelBox, h: AxisCoefficients, v: AxisCoefficients): ResizeLayout {
  const outHeight = v.outSize;
  const sameHeight = box.height === outHeight;
  const rowBytes = align16(h.outSize * 3 * 8);
  const firstRow = sameHeight ? 0 : v.start[0];
  const rows = sameHeight ? outHeight : v.start[outHeight - 1] + v.count[outHeight - 1] - firstRow;
  const srcRowBytes = boxRowStride(width, box.width);
  const vAt = coefficientBytes(h);
  const srcAt = vAt + coefficientBytes(v);
  // + 7: the rows start up to 7 bytes later, at their source's alignment (alignedAt).
  const tmpAt = align16(srcAt + 7 + rows * srcRowBytes + 8);
  const outAt = tmpAt + rows * rowBytes;
  const end = align16(outAt + (sameHeight ? 0 : outHeight * rowBytes));
  return { rowBytes, firstRow, rows, srcRowBytes, vAt, srcAt, tmpAt, outAt, end };
}

/** Runs the passes of box → h.outSize × v.outSize (not both axes unchanged) into the memory of kernel `k`. */
function resizeRgb(k: Kernel, data: Uint8Array, width: number, box: PixelBox, h: AxisCoefficients, v: AxisCoefficients, layout: ResizeLayout, extraBytes: number): ResizedRows {
  const outWidth = h.outSize;
  const outHeight = v.outSize;
  const sameWidth = box.width === outWidth;
  const sameHeight = box.height === outHeight;
  const rowLen = outWidth * 3;
  const { rowBytes, firstRow, rows } = layout;
  const hAt = k.base;
  const vAt = k.base + layout.vAt;
  const tmpAt = k.base + layout.tmpAt;
  const outAt = k.base + layout.outAt;
  const buf = reserve(k, layout.end + extraBytes);

  // An arena frame is read where it is (its block has padding for the 8-byte pixel reads); other
  // pixels are copied into scratch first: the box's rows, srcRowBytes apart, then 8 bytes of zeros.
  const inPlace = inArena(k, data);
  const srcRowBytes = inPlace ? width * 3 : layout.srcRowBytes;
  const srcAt = inPlace ? data.byteOffset + ((box.y + firstRow) * width + box.x) * 3 : alignedAt(k.base + layout.srcAt, data, width, { x: box.x, y: box.y + firstRow });
  const src = new Uint8Array(buf, srcAt, (rows - 1) * srcRowBytes + box.width * 3 + 8);
  if (!inPlace) {
    copyBoxRows(data, width, box.x, box.y + firstRow, box.width, rows, src, srcRowBytes);
    src.fill(0, rows * srcRowBytes);
  }

  if (sameWidth) {
    // Horizontal identity: the rows as f64 (what the JS path copies).
    const tmp = new Float64Array(buf, tmpAt, (rows * rowBytes) / 8);
    const stride = rowBytes / 8;
    for (let r = 0; r < rows; r++) {
      const s = r * srcRowBytes;
      const o = r * stride;
      for (let i = 0; i < rowLen; i++) tmp[o + i] = src[s + i];
    }
  } else {
    const hc = placeCoefficients(buf, hAt, h);
    k.horizontal3(srcAt, srcRowBytes, rows, hc.start, hc.count, hc.weights, h.stride * 8, outWidth, tmpAt, rowBytes);
  }
  if (!sameHeight) {
    const vc = placeCoefficients(buf, vAt, v);
    k.vertical(tmpAt, rowBytes, outHeight, vc.start, vc.count, vc.weights, v.stride * 8, firstRow, outAt, rowBytes);
  }
  return { k, buf, rowsAt: sameHeight ? tmpAt : outAt, rowBytes, end: k.base + layout.end };
}

/**
 * forEachResizedRow for 3-channel pixels whose box changes width, height or both (resize.ts
 * handles the identity): the same rows, bit for bit, from the kernels. `h` and `v` are the
 * coefficients of box.width → outWidth and box.height → outHeight.
 */
export function forEachResizedRowRgb(
  data: Uint8Array,
  width: number,
  box: PixelBox,
  h: AxisCoefficients,
  v: AxisCoefficients,
  onRow: (y: number, row: Float64Array) => void,
): void {
  const { buf, rowsAt, rowBytes } = resizeRgb(getKernel(), data, width, box, h, v, resizeLayout(width, box, h, v), 0);
  const rowLen = h.outSize * 3;
  const all = new Float64Array(buf, rowsAt, (v.outSize * rowBytes) / 8);
  for (let y = 0; y < v.outSize; y++) onRow(y, all.subarray((y * rowBytes) / 8, (y * rowBytes) / 8 + rowLen));
}

/**
 * The resize followed by `plane_c[i] = v·scale[c] + offset[c]` into three f32 planes of
 * outWidth × outHeight at target[offset…]: toModelInput's normalisation, bit-identical to doing
 * it in JavaScript on forEachResizedRowRgb's rows, without a JavaScript loop over the values.
 */
export function resizeRgbIntoPlanes(
  data: Uint8Array,
  width: number,
  box: PixelBox,
  h: AxisCoefficients,
  v: AxisCoefficients,
  scale: readonly [number, number, number],
  offset: readonly [number, number, number],
  target: Float32Array,
  targetOffset: number,
): void {
  const values = 3 * h.outSize * v.outSize;
  const layout = resizeLayout(width, box, h, v);
  const inside = kernelInside(target, layout.end);
  const { k, buf, rowsAt, rowBytes, end } = resizeRgb(inside ?? getKernel(), data, width, box, h, v, layout, inside ? 0 : values * 4);
  const dst = inside ? target.byteOffset + targetOffset * 4 : end;
  k.planes(rowsAt, rowBytes, v.outSize, h.outSize, dst, scale[0], offset[0], scale[1], offset[1], scale[2], offset[2]);
  if (!inside) target.set(new Float32Array(buf, end, values), targetOffset);
}

/**
 * The table path of toModelInput: each 8-bit value of the size×size box at (box.x, box.y) of
 * `data` (RGB rows of `width` pixels) mapped through its channel's entries of `table` (768 f32:
 * R at 0, G at 256, B at 512) into three f32 planes of size² at target[targetOffset…].
 */
export function lookupRgbIntoPlanes(
  data: Uint8Array,
  width: number,
  box: { x: number; y: number },
  size: number,
  table: Float32Array,
  target: Float32Array,
  targetOffset: number,
): void {
  const values = 3 * size * size;
  const inside = kernelInside(target, align16(768 * 4 + 7 + size * boxRowStride(width, size)));
  const k = inside ?? getKernel();
  // An arena frame is read where it is; other pixels are copied into scratch after the table.
  const inPlace = inArena(k, data);
  const srcRowBytes = inPlace ? width * 3 : boxRowStride(width, size);
  const scratch = inPlace ? 768 * 4 : align16(768 * 4 + 7 + size * srcRowBytes);
  const tableAt = k.base;
  const srcAt = inPlace ? data.byteOffset + (box.y * width + box.x) * 3 : alignedAt(tableAt + 768 * 4, data, width, box);
  const buf = reserve(k, scratch + (inside ? 0 : values * 4));
  const dstAt = inside ? target.byteOffset + targetOffset * 4 : k.base + scratch;
  new Float32Array(buf, tableAt, 768).set(table);
  if (!inPlace) copyBoxRows(data, width, box.x, box.y, size, size, new Uint8Array(buf, srcAt, size * srcRowBytes), srcRowBytes);
  k.lookup3(srcAt, srcRowBytes, size, size, dstAt, tableAt);
  if (!inside) target.set(new Float32Array(buf, dstAt, values), targetOffset);
}
