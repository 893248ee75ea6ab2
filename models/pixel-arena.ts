/**
 * One shared WebAssembly memory for the agent's pixels: decoded frames and the batch buffers the
 * inference workers read. With both in the memory the preprocessing kernels work in
 * (resize-kernel.ts), a slot's pixels go from the frame into its batch row in one pass, without
 * being copied into kernel memory first, and a frame's buffer is reused by a later frame instead
 * of being allocated (page faults, and V8 collecting after every few megabytes of external memory).
 *
 * Blocks: a request takes a freed block of its exact size when there is one (a camera's frames
 * all have one size, batch buffers another: the common case costs one map lookup), else the
 * smallest freed block that holds it, split, else new space from the top, growing the memory up
 * to a cap; past it `allocate` returns null and the caller uses ordinary memory. A freed block
 * merges with free neighbours, and one that ends at the top lowers the top instead, so a camera
 * whose resolution changes reuses the space its old frames had. Memory is not given back to the
 * system: the arena keeps the peak of what was in use at once.
 *
 * Above the top is scratch space for the kernels, valid during one synchronous kernel call only.
 */

import { wasm, type KernelMemory } from './wasm-encoder.js';

const PAGE = 65536;
/** Blocks start at multiples of this (cache lines; the kernels need 16). */
const ALIGN = 64;

export interface ArenaBlock {
  /** Byte offset in the arena's memory. */
  readonly offset: number;
  /** Usable bytes (the size asked for, rounded up to the alignment). */
  readonly bytes: number;
}

export interface PixelArenaStats {
  /** Bytes the memory holds now. */
  memoryBytes: number;
  /** Blocks handed out and not freed. */
  blocksInUse: number;
  /** Allocations served from memory an earlier block used (a freed block, or below the highest top so far). */
  reused: number;
  /** Allocations refused (the cap reached); the caller used ordinary memory. */
  refused: number;
}

export class PixelArena {
  readonly memory: KernelMemory;
  /** Every SharedArrayBuffer object the memory has had (growing gives a new one over the same bytes). */
  private readonly buffers = new WeakSet<ArrayBufferLike>();
  /** Free blocks: offset → size, end → offset (to find a block's neighbours), size → offsets. */
  private readonly freeAt = new Map<number, number>();
  private readonly freeEndingAt = new Map<number, number>();
  private readonly freeBySize = new Map<number, Set<number>>();
  private readonly inUse = new Map<number, number>();
  private topOffset: number;
  /** The highest the top has been. */
  private peakTop: number;
  private readonly counts = { reused: 0, refused: 0 };

  constructor(
    readonly maxBytes: number,
    /** Bytes at the start that are not the arena's (a kernel's own data, if any). */
    reservedBytes = 0,
  ) {
    if (!Number.isInteger(maxBytes) || maxBytes < PAGE || maxBytes % PAGE !== 0) throw new RangeError(`pixel arena: maxBytes must be a positive multiple of ${PAGE}, got ${maxBytes}`);
    this.memory = new wasm.Memory({ initial: 16, maximum: maxBytes / PAGE, shared: true });
    this.buffers.add(this.memory.buffer);
    this.topOffset = alignUp(reservedBytes);
    this.peakTop = this.topOffset;
  }

  /** First byte above every block: where kernel scratch space starts. */
  get top(): number {
    return this.topOffset;
  }

  /** The memory's buffer now (after growing to at least `bytes` when given). Throws past the cap. */
  buffer(bytes = 0): SharedArrayBuffer {
    const have = this.memory.buffer.byteLength;
    if (bytes > have) {
      if (bytes > this.maxBytes) throw new RangeError(`pixel arena: needs ${bytes} bytes, more than its cap of ${this.maxBytes}`);
      this.memory.grow(Math.ceil((bytes - have) / PAGE));
      this.buffers.add(this.memory.buffer);
    }
    return this.memory.buffer;
  }

  /** Whether `view` lies in this arena's memory. */
  holds(view: ArrayBufferView): boolean {
    return this.buffers.has(view.buffer);
  }

  /** A block of at least `bytes`, or null when the cap leaves no room. */
  allocate(bytes: number): ArenaBlock | null {
    if (!Number.isInteger(bytes) || bytes < 1) throw new RangeError(`pixel arena: a block needs a positive integer size, got ${bytes}`);
    const size = alignUp(bytes);
    let offset = this.takeFree(size);
    if (offset !== null) {
      this.counts.reused++;
    } else {
      if (this.topOffset + size > this.maxBytes) {
        this.counts.refused++;
        return null;
      }
      offset = this.topOffset;
      this.buffer(offset + size);
      this.topOffset += size;
      if (this.topOffset <= this.peakTop) this.counts.reused++;
      else this.peakTop = this.topOffset;
    }
    this.inUse.set(offset, size);
    return { offset, bytes: size };
  }

  /** Gives a block back; it merges with free neighbours. Freeing one twice is a bug and throws. */
  free(block: ArenaBlock): void {
    const size = this.inUse.get(block.offset);
    if (size === undefined || size !== block.bytes) throw new Error(`pixel arena: block at ${block.offset} (${block.bytes} bytes) is not in use`);
    this.inUse.delete(block.offset);
    let start = block.offset;
    let end = start + size;
    const before = this.freeEndingAt.get(start);
    if (before !== undefined) {
      this.removeFree(before);
      start = before;
    }
    const after = this.freeAt.get(end);
    if (after !== undefined) {
      this.removeFree(end);
      end += after;
    }
    if (end === this.topOffset) this.topOffset = start; // nothing free ever ends at the top
    else this.addFree(start, end - start);
  }

  /** Bytes below the top not in any block in use. */
  freeBytes(): number {
    let sum = 0;
    for (const size of this.freeAt.values()) sum += size;
    return sum;
  }

  /** A free block's space of exactly `size` (a whole block of that size, else the front of the smallest larger one), or null. */
  private takeFree(size: number): number | null {
    const exact = this.freeBySize.get(size);
    if (exact) {
      const offset = exact.values().next().value as number;
      this.removeFree(offset);
      return offset;
    }
    let best: number | null = null;
    let bestSize = Infinity;
    for (const [offset, free] of this.freeAt) {
      if (free > size && free < bestSize) {
        best = offset;
        bestSize = free;
      }
    }
    if (best === null) return null;
    this.removeFree(best);
    this.addFree(best + size, bestSize - size);
    return best;
  }

  private addFree(offset: number, size: number): void {
    this.freeAt.set(offset, size);
    this.freeEndingAt.set(offset + size, offset);
    const same = this.freeBySize.get(size);
    if (same) same.add(offset);
    else this.freeBySize.set(size, new Set([offset]));
  }

  private removeFree(offset: number): void {
    const size = this.freeAt.get(offset)!;
    this.freeAt.delete(offset);
    this.freeEndingAt.delete(offset + size);
    const same = this.freeBySize.get(size)!;
    same.delete(offset);
    if (same.size === 0) this.freeBySize.delete(size);
  }

  stats(): PixelArenaStats {
    return { memoryBytes: this.memory.buffer.byteLength, blocksInUse: this.inUse.size, ...this.counts };
  }
}

const alignUp = (n: number): number => Math.ceil(n / ALIGN) * ALIGN;
