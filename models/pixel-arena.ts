/**
 * One shared WebAssembly memory for the agent's pixels: decoded frames and the batch buffers the
 * inference workers read. With both in the memory the preprocessing kernels work in
 * (resize-kernel.ts), a slot's pixels go from the frame into its batch row in one pass, without
 * being copied into kernel memory first, and a frame's buffer is reused by a later frame instead
 * of being allocated (page faults, and V8 collecting after every few megabytes of external memory).
 *
 * Blocks are handed out by size: a freed block goes to the list of its exact size and is taken
 * again by the next request of that size (a camera's frames all have one size, batch buffers
 * another). New blocks come from the top, growing the memory, up to a cap; past it `allocate`
 * returns null and the caller uses ordinary memory. Memory is not given back to the system: the
 * arena keeps the peak of what was in use at once.
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
  /** Allocations served from a freed block of the same size. */
  reused: number;
  /** Allocations refused (the cap reached); the caller used ordinary memory. */
  refused: number;
}

export class PixelArena {
  readonly memory: KernelMemory;
  /** Every SharedArrayBuffer object the memory has had (growing gives a new one over the same bytes). */
  private readonly buffers = new WeakSet<ArrayBufferLike>();
  private readonly freeBySize = new Map<number, number[]>();
  private readonly inUse = new Map<number, number>();
  private topOffset: number;
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
    const reuse = this.freeBySize.get(size)?.pop();
    let offset: number;
    if (reuse !== undefined) {
      offset = reuse;
      this.counts.reused++;
    } else {
      if (this.topOffset + size > this.maxBytes) {
        this.counts.refused++;
        return null;
      }
      offset = this.topOffset;
      this.buffer(offset + size);
      this.topOffset += size;
    }
    this.inUse.set(offset, size);
    return { offset, bytes: size };
  }

  /** Gives a block back for the next request of its size. Freeing one twice is a bug and throws. */
  free(block: ArenaBlock): void {
    const size = this.inUse.get(block.offset);
    if (size === undefined || size !== block.bytes) throw new Error(`pixel arena: block at ${block.offset} (${block.bytes} bytes) is not in use`);
    this.inUse.delete(block.offset);
    const list = this.freeBySize.get(size);
    if (list) list.push(block.offset);
    else this.freeBySize.set(size, [block.offset]);
  }

  stats(): PixelArenaStats {
    return { memoryBytes: this.memory.buffer.byteLength, blocksInUse: this.inUse.size, ...this.counts };
  }
}

const alignUp = (n: number): number => Math.ceil(n / ALIGN) * ALIGN;
