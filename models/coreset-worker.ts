/**
 * The shared-memory side of parallel greedy k-center (coreset.ts): where everything lives in the
 * one shared WebAssembly memory, how a step's cluster scans are split into chunks that the main
 * thread and the workers take turns grabbing, and the worker's entry point.
 *
 * Protocol, per parallel step: the main thread writes the step's task list (clusters to scan, each
 * with its own scratch region for the points that move) and the chunk table, then publishes a
 * ticket (step << 32 | next chunk) and wakes the workers. Anyone — main included — takes a chunk by
 * compare-and-swap on the ticket, so a worker that wakes late for an earlier step can never take a
 * chunk of a later one, and the main thread never waits for a worker that has not started: it
 * simply takes every chunk itself. The main thread then waits until every taken chunk is done.
 * Which thread scans which cluster changes nothing in the result: each point's distances are
 * computed by the same kernel from the same bits, and ties are broken by point index.
 */
import { createKernel, type DistanceKernel, type KernelMemory } from './distance-kernel.js';

/** Byte offsets (16-aligned) of every array in the shared memory, and the sizes behind them. */
export interface KCenterLayout {
  dimPad: number;
  dimBytes: number;
  kPad: number;
  kBytes: number;
  /** Arena slots: every point's row, bound coordinates, distance and index sit in one slot. */
  cap: number;
  maxClusters: number;
  threads: number;
  rows: number;
  z: number;
  dist: number;
  idx: number;
  rho: number;
  centreRows: number;
  centreZ: number;
  cStart: number;
  cLen: number;
  cMax: number;
  cArg: number;
  cArgPos: number;
  taskK: number;
  taskKeep: number;
  taskQ: number;
  taskMvOffset: number;
  taskMovers: number;
  taskEvals: number;
  taskBounds: number;
  chunkStart: number;
  mvPos: number;
  mvDist: number;
  mvRho: number;
  control: number;
  ticket: number;
  out: number;
  filterStats: number;
  errorText: number;
  /** Bound-coordinate transform: Uᵀ (kPad × dimPad f64), Uᵀ·mean (kPad f64), a row in f64. */
  basisT: number;
  basisBias: number;
  rowF64: number;
  total: number;
}

/** Int32 slots of the control block. */
export const CTL = { SEQ: 0, STOP: 1, CHUNKS: 2, DONE: 3, ERROR: 4, C_PTR: 5, CZ_PTR: 6, WORKER_CHUNKS: 7, ALL_CHUNKS: 8, READY: 9 } as const;
const ERROR_TEXT_BYTES = 4096;

/** Hands out consecutive 16-byte-aligned byte ranges of a kernel memory; `end()` is the total. */
export function memoryPlanner(): { take: (bytes: number) => number; end: () => number } {
  let at = 0;
  return {
    take: (bytes) => {
      const start = at;
      at += Math.ceil(bytes / 16) * 16;
      return start;
    },
    end: () => at,
  };
}

/**
 * Plans the memory of one k-center run: an arena of 2n slots (n live, new clusters appended
 * behind them until it is packed again) and mover lists for n points.
 */
export function planLayout(n: number, dimPad: number, kPad: number, m: number, threads: number): KCenterLayout {
  const { take, end } = memoryPlanner();
  const cap = 2 * n;
  const maxClusters = m + 1;
  const dimBytes = dimPad * 4;
  const kBytes = kPad * 4;
  const layout = {
    dimPad,
    dimBytes,
    kPad,
    kBytes,
    cap,
    maxClusters,
    threads,
    rows: take(cap * dimBytes),
    z: take(cap * kBytes),
    dist: take(cap * 4),
    idx: take(cap * 4),
    rho: take(cap * 4),
    centreRows: take(maxClusters * dimBytes),
    centreZ: take(maxClusters * kBytes),
    cStart: take(maxClusters * 4),
    cLen: take(maxClusters * 4),
    cMax: take(maxClusters * 4),
    cArg: take(maxClusters * 4),
    cArgPos: take(maxClusters * 4),
    taskK: take(maxClusters * 4),
    taskKeep: take(maxClusters * 8),
    taskQ: take(maxClusters * 8),
    taskMvOffset: take(maxClusters * 4),
    taskMovers: take(maxClusters * 4),
    taskEvals: take(maxClusters * 4),
    taskBounds: take(maxClusters * 4),
    chunkStart: take((maxClusters + 1) * 4),
    mvPos: take(n * 4),
    mvDist: take(n * 4),
    mvRho: take(n * 4),
    control: take(16 * 4),
    ticket: take(8),
    out: take(threads * 32),
    filterStats: take(8),
    errorText: take(ERROR_TEXT_BYTES),
    basisT: take(kPad * dimPad * 8),
    basisBias: take(kPad * 8),
    rowF64: take(dimPad * 8),
    total: 0,
  };
  layout.total = end();
  return layout;
}

/** Typed views of a layout's arrays, plus the constants every scan needs. */
export interface KCenterShared {
  kernel: DistanceKernel;
  layout: KCenterLayout;
  ctl: Int32Array;
  ticket: BigInt64Array;
  rows: Float32Array;
  z: Float32Array;
  dist: Float32Array;
  idx: Uint32Array;
  rho: Float32Array;
  centreRows: Float32Array;
  centreZ: Float32Array;
  cStart: Uint32Array;
  cLen: Uint32Array;
  cMax: Float32Array;
  cArg: Uint32Array;
  cArgPos: Uint32Array;
  taskK: Uint32Array;
  taskKeep: Float64Array;
  taskQ: Float64Array;
  taskMvOffset: Uint32Array;
  taskMovers: Uint32Array;
  taskEvals: Uint32Array;
  taskBounds: Uint32Array;
  chunkStart: Uint32Array;
  filterStats: Int32Array;
  margins: KCenterMargins;
}

/** Margins of the pruning tests (see `kCenterMargins` in coreset.ts). */
export interface KCenterMargins {
  /** d̃(c,a)² ≥ 4·slack·d̃(x,a)² proves that x stays. */
  slack: number;
  /** 1 ∓ 2ε: turn a computed squared distance into a lower / upper bound of the true one. */
  lo: number;
  hi: number;
  /** Absolute error bound of the subspace bound (its coordinates' f32 rounding), doubled. */
  abs: number;
}

export function openShared(memory: KernelMemory, layout: KCenterLayout, margins: KCenterMargins): KCenterShared {
  const buf = memory.buffer;
  const L = layout;
  return {
    kernel: createKernel(memory),
    layout,
    ctl: new Int32Array(buf, L.control, 16),
    ticket: new BigInt64Array(buf, L.ticket, 1),
    rows: new Float32Array(buf, L.rows, L.cap * L.dimPad),
    z: new Float32Array(buf, L.z, L.cap * L.kPad),
    dist: new Float32Array(buf, L.dist, L.cap),
    idx: new Uint32Array(buf, L.idx, L.cap),
    rho: new Float32Array(buf, L.rho, L.cap),
    centreRows: new Float32Array(buf, L.centreRows, L.maxClusters * L.dimPad),
    centreZ: new Float32Array(buf, L.centreZ, L.maxClusters * L.kPad),
    cStart: new Uint32Array(buf, L.cStart, L.maxClusters),
    cLen: new Uint32Array(buf, L.cLen, L.maxClusters),
    cMax: new Float32Array(buf, L.cMax, L.maxClusters),
    cArg: new Uint32Array(buf, L.cArg, L.maxClusters),
    cArgPos: new Uint32Array(buf, L.cArgPos, L.maxClusters),
    taskK: new Uint32Array(buf, L.taskK, L.maxClusters),
    taskKeep: new Float64Array(buf, L.taskKeep, L.maxClusters),
    taskQ: new Float64Array(buf, L.taskQ, L.maxClusters),
    taskMvOffset: new Uint32Array(buf, L.taskMvOffset, L.maxClusters),
    taskMovers: new Uint32Array(buf, L.taskMovers, L.maxClusters),
    taskEvals: new Uint32Array(buf, L.taskEvals, L.maxClusters),
    taskBounds: new Uint32Array(buf, L.taskBounds, L.maxClusters),
    chunkStart: new Uint32Array(buf, L.chunkStart, L.maxClusters + 1),
    filterStats: new Int32Array(buf, L.filterStats, 2),
    margins,
  };
}

/**
 * Scans the clusters of one chunk against the step's centre (C_PTR / CZ_PTR), on this thread.
 * Clusters are only read; each task's movers go to its own stretch of the mover lists, and its
 * cluster's max / arg / argPos describe the members that stay (argPos before the movers leave).
 */
export function processChunk(sh: KCenterShared, chunk: number, thread: number): void {
  const L = sh.layout;
  const { lo, hi, abs } = sh.margins;
  const out = L.out + thread * 32;
  const outView = new DataView(sh.kernel.memory.buffer, out, 32);
  const cPtr = sh.ctl[CTL.C_PTR];
  const czPtr = sh.ctl[CTL.CZ_PTR];
  const end = sh.chunkStart[chunk + 1];
  for (let t = sh.chunkStart[chunk]; t < end; t++) {
    const k = sh.taskK[t];
    const start = sh.cStart[k];
    const mv = sh.taskMvOffset[t] * 4;
    sh.taskMovers[t] = sh.kernel.scan(
      L.dist + start * 4, L.idx + start * 4, L.z + start * L.kBytes, L.rho + start * 4, L.rows + start * L.dimBytes, sh.cLen[k],
      cPtr, czPtr, sh.taskKeep[t], sh.taskQ[t], lo, hi, abs, L.dimBytes, L.kBytes,
      L.mvPos + mv, L.mvDist + mv, L.mvRho + mv, out,
    );
    sh.cArg[k] = outView.getUint32(4, true);
    sh.cArgPos[k] = outView.getUint32(8, true);
    sh.cMax[k] = outView.getFloat32(12, true);
    sh.taskEvals[t] = outView.getUint32(16, true);
    sh.taskBounds[t] = outView.getUint32(20, true);
  }
}

/**
 * Takes and scans chunks of step `seq` until none is left (or the step is no longer current);
 * returns how many this thread scanned. `failAt` (tests only) throws on that many-th chunk.
 */
export function runChunks(sh: KCenterShared, seq: number, thread: number, failAt = 0, doneBefore = 0): number {
  const tag = BigInt(seq) << 32n;
  let done = 0;
  for (;;) {
    const v = Atomics.load(sh.ticket, 0);
    if ((v & ~0xffffffffn) !== tag) return done;
    const chunk = Number(v & 0xffffffffn);
    if (chunk >= Atomics.load(sh.ctl, CTL.CHUNKS)) return done;
    if (Atomics.compareExchange(sh.ticket, 0, v, v + 1n) !== v) continue;
    if (failAt > 0 && doneBefore + done + 1 >= failAt) throw new Error(`injected failure on chunk ${chunk} of step ${seq} (test)`);
    processChunk(sh, chunk, thread);
    done++;
    if (thread > 0) Atomics.add(sh.ctl, CTL.WORKER_CHUNKS, 1);
    Atomics.add(sh.ctl, CTL.DONE, 1);
    Atomics.notify(sh.ctl, CTL.DONE);
  }
}

/** Records the first failure of any thread in the shared error slot and wakes the main thread. */
export function reportFailure(memory: KernelMemory, layout: KCenterLayout, thread: number, error: unknown): void {
  const ctl = new Int32Array(memory.buffer, layout.control, 16);
  if (Atomics.compareExchange(ctl, CTL.ERROR, 0, -1) === 0) {
    const text = error instanceof Error ? (error.stack ?? error.message) : String(error);
    const bytes = new TextEncoder().encode(text).subarray(0, ERROR_TEXT_BYTES - 4);
    new DataView(memory.buffer, layout.errorText, 4).setUint32(0, bytes.length, true);
    new Uint8Array(memory.buffer, layout.errorText + 4, bytes.length).set(bytes);
    Atomics.store(ctl, CTL.ERROR, thread);
    Atomics.notify(ctl, CTL.ERROR);
  }
  Atomics.notify(ctl, CTL.DONE);
}

/** The failing thread and its error text, once ERROR is set (> 0). */
export function readFailure(memory: KernelMemory, layout: KCenterLayout): { thread: number; text: string } | null {
  const ctl = new Int32Array(memory.buffer, layout.control, 16);
  const thread = Atomics.load(ctl, CTL.ERROR);
  if (thread <= 0) return null;
  const length = new DataView(memory.buffer, layout.errorText, 4).getUint32(0, true);
  const text = new TextDecoder().decode(new Uint8Array(memory.buffer, layout.errorText + 4, length).slice());
  return { thread, text };
}

/** What a worker receives. */
export interface CoresetWorkerData {
  kind: 'shelfwatch-coreset';
  memory: KernelMemory;
  layout: KCenterLayout;
  margins: KCenterMargins;
  /** 1 … threads − 1 (0 is the main thread). */
  thread: number;
  moduleUrl: string;
  /** tsx's API to register before importing a `.ts` worker module ('' = none). */
  loaderUrl: string;
  /** Tests only: throw on this many-th chunk taken (0 = never, −1 = while starting). */
  failAtChunk: number;
}

/** The worker's life: sleep until a step is published, help with it, until told to stop. */
export function serveCoresetWorker(data: CoresetWorkerData): void {
  try {
    const sh = openShared(data.memory, data.layout, data.margins);
    if (data.failAtChunk < 0) throw new Error('injected failure while starting (test)');
    Atomics.add(sh.ctl, CTL.READY, 1);
    Atomics.notify(sh.ctl, CTL.DONE);
    let seen = 0;
    let chunks = 0;
    for (;;) {
      Atomics.wait(sh.ctl, CTL.SEQ, seen);
      if (Atomics.load(sh.ctl, CTL.STOP) !== 0) return;
      seen = Atomics.load(sh.ctl, CTL.SEQ);
      chunks += runChunks(sh, seen, data.thread, data.failAtChunk, chunks);
    }
  } catch (error) {
    reportFailure(data.memory, data.layout, data.thread, error);
  }
}

