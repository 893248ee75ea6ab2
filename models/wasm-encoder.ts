/**
 * A minimal WebAssembly binary encoder for the project's hand-assembled SIMD kernels
 * (distance-kernel.ts, resize-kernel.ts). There is no WebAssembly toolchain in this project, so
 * each kernel is a list of opcodes built at load time; this file covers only what they use.
 */

// ---- the WebAssembly API, typed locally (this project's lib settings carry no WebAssembly types) ----

/** A shared WebAssembly.Memory: its buffer is a SharedArrayBuffer that never detaches. */
export interface KernelMemory {
  /** After a grow, a new SharedArrayBuffer object over the same (longer) memory; older ones stay valid. */
  readonly buffer: SharedArrayBuffer;
  grow(pages: number): number;
}
/** A private, growable WebAssembly.Memory: growing detaches the old buffer (views must be remade). */
export interface GrowableMemory {
  readonly buffer: ArrayBuffer;
  grow(pages: number): number;
}
interface WasmApi {
  Memory: {
    new (descriptor: { initial: number; maximum: number; shared: true }): KernelMemory;
    new (descriptor: { initial: number; maximum?: number }): GrowableMemory;
  };
  Module: new (bytes: Uint8Array) => object;
  Instance: new (module: object, imports: Record<string, Record<string, unknown>>) => { exports: Record<string, unknown> };
}
export const wasm = (globalThis as unknown as { WebAssembly: WasmApi }).WebAssembly;

// ---- a minimal WebAssembly binary encoder ----

export const I32 = 0x7f;
export const F32 = 0x7d;
export const F64 = 0x7c;
export const V128 = 0x7b;
export type ValType = typeof I32 | typeof F32 | typeof F64 | typeof V128;

export function uleb(v: number): number[] {
  const out: number[] = [];
  do {
    let b = v & 0x7f;
    v = Math.floor(v / 128);
    if (v !== 0) b |= 0x80;
    out.push(b);
  } while (v !== 0);
  return out;
}

export function sleb(v: number): number[] {
  const out: number[] = [];
  for (;;) {
    const b = v & 0x7f;
    v >>= 7;
    if ((v === 0 && (b & 0x40) === 0) || (v === -1 && (b & 0x40) !== 0)) {
      out.push(b);
      return out;
    }
    out.push(b | 0x80);
  }
}

function utf8(s: string): number[] {
  const bytes = Array.from(new TextEncoder().encode(s));
  return [...uleb(bytes.length), ...bytes];
}

function section(id: number, body: number[]): number[] {
  return [id, ...uleb(body.length), ...body];
}

function vec(items: number[][]): number[] {
  return [...uleb(items.length), ...items.flat()];
}

/** Opcodes (and immediates) used by the kernels. */
export const op = {
  block: [0x02, 0x40],
  loop: [0x03, 0x40],
  if: [0x04, 0x40],
  end: [0x0b],
  br: (depth: number) => [0x0c, ...uleb(depth)],
  brIf: (depth: number) => [0x0d, ...uleb(depth)],
  get: (i: number) => [0x20, ...uleb(i)],
  set: (i: number) => [0x21, ...uleb(i)],
  tee: (i: number) => [0x22, ...uleb(i)],
  i32Load: (offset = 0) => [0x28, 2, ...uleb(offset)],
  f32Load: (offset = 0) => [0x2a, 2, ...uleb(offset)],
  f64Load: (offset = 0) => [0x2b, 3, ...uleb(offset)],
  i32Store: (offset = 0) => [0x36, 2, ...uleb(offset)],
  f32Store: (offset = 0) => [0x38, 2, ...uleb(offset)],
  f64Store: (offset = 0) => [0x39, 3, ...uleb(offset)],
  i32Const: (v: number) => [0x41, ...sleb(v)],
  f32Const: (v: number) => {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setFloat32(0, v, true);
    return [0x43, ...b];
  },
  f64Const: (v: number) => {
    const b = new Uint8Array(8);
    new DataView(b.buffer).setFloat64(0, v, true);
    return [0x44, ...b];
  },
  i32Eqz: [0x45],
  i32LtU: [0x49],
  i32GeU: [0x4f],
  f32Lt: [0x5d],
  f32Gt: [0x5e],
  f32Ge: [0x60],
  f64Gt: [0x64],
  f64Ge: [0x66],
  i32Add: [0x6a],
  i32Sub: [0x6b],
  i32Mul: [0x6c],
  i32And: [0x71],
  i32Shl: [0x74],
  f32Add: [0x92],
  f64Mul: [0xa2],
  f64Add: [0xa0],
  f64Sub: [0xa1],
  f64Max: [0xa5],
  f32DemoteF64: [0xb6],
  select: [0x1b],
  f64PromoteF32: [0xbb],
  v128Load: (offset = 0) => [0xfd, ...uleb(0), 4, ...uleb(offset)],
  v128Zero: [0xfd, ...uleb(12), ...new Array<number>(16).fill(0)],
  f32x4ExtractLane: (lane: number) => [0xfd, ...uleb(31), lane],
  f64x2ExtractLane: (lane: number) => [0xfd, ...uleb(33), lane],
  f64x2Add: [0xfd, ...uleb(240)],
  f64x2Mul: [0xfd, ...uleb(242)],
  f64Load0: [0x2b, 3, 0],
  f32x4Add: [0xfd, ...uleb(228)],
  f32x4Sub: [0xfd, ...uleb(229)],
  f32x4Mul: [0xfd, ...uleb(230)],
  i32Load8U: (offset = 0) => [0x2d, 0, ...uleb(offset)],
  f64ConvertI32U: [0xb8],
  /** Loads 8 bytes and zero-extends each to 16 bits. */
  v128Load8x8U: (offset = 0) => [0xfd, ...uleb(2), 0, ...uleb(offset)],
  v128Store: (offset = 0) => [0xfd, ...uleb(11), 0, ...uleb(offset)],
  f64x2Splat: [0xfd, ...uleb(20)],
  i32x4ExtendLowI16x8U: [0xfd, ...uleb(169)],
  f64x2ConvertLowI32x4U: [0xfd, ...uleb(255)],
};

/** One function under construction: parameters first, then locals added on demand. */
export class Fn {
  readonly params: ValType[];
  readonly results: ValType[];
  private readonly locals: ValType[] = [];
  readonly code: number[] = [];

  constructor(params: ValType[], results: ValType[]) {
    this.params = params;
    this.results = results;
  }

  local(type: ValType): number {
    this.locals.push(type);
    return this.params.length + this.locals.length - 1;
  }

  emit(...parts: number[][]): void {
    for (const p of parts) for (const b of p) this.code.push(b);
  }

  body(): number[] {
    const groups: number[][] = this.locals.map((t) => [1, t]);
    const bytes = [...vec(groups), ...this.code, ...op.end];
    return [...uleb(bytes.length), ...bytes];
  }

  type(): number[] {
    return [0x60, ...vec(this.params.map((p) => [p])), ...vec(this.results.map((r) => [r]))];
  }
}

/**
 * A module's bytes: imports env.memory (shared with a 4 GiB maximum, or private and growable),
 * exports the functions under their names.
 */
export function assembleModule(exports: Array<[string, Fn]>, memory: 'shared' | 'private'): Uint8Array {
  const fns = exports.map(([, f]) => f);
  // Memory limits: flag 3 = shared with maximum (min 1, max 65536 pages); flag 0 = min 1, no maximum.
  const limits = memory === 'shared' ? [0x03, ...uleb(1), ...uleb(65536)] : [0x00, ...uleb(1)];
  const bytes = [
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00,
    ...section(1, vec(fns.map((f) => f.type()))),
    ...section(2, vec([[...utf8('env'), ...utf8('memory'), 0x02, ...limits]])),
    ...section(3, vec(fns.map((_, i) => uleb(i)))),
    ...section(7, vec(exports.map(([name], i) => [...utf8(name), 0x00, ...uleb(i)]))),
    ...section(10, vec(fns.map((f) => f.body()))),
  ];
  return Uint8Array.from(bytes);
}
