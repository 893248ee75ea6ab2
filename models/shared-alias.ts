/**
 * onnxruntime-node refuses tensors over a SharedArrayBuffer, and batches reach the inference
 * workers in one (the pixel arena, resize-kernel.ts): without help each batch would be copied
 * into an ordinary buffer first, 600 KB per 224×224 crop. Here an ordinary ArrayBuffer is made
 * over the same memory instead (koffi's external view of the address libc's memset hands back),
 * so onnxruntime reads the batch where the main thread wrote it.
 *
 * The view owns nothing: it is valid while its memory lives, which is why the cache below holds
 * the SharedArrayBuffer it was made for, and why it is used only while the request that carries
 * the buffer is being run. Without
 * koffi or libc (another OS), or with SHELFWATCH_SHARED_ALIAS=0, {@link aliasShared} returns null
 * and the caller copies.
 */
import { createRequire } from 'node:module';

type Memset = (dst: Uint8Array, c: number, n: number) => unknown;
type View = (pointer: unknown, length: number) => ArrayBuffer;

let binding: { memset: Memset; view: View } | null | undefined;

function load(): { memset: Memset; view: View } | null {
  if (binding !== undefined) return binding;
  if (process.env['SHELFWATCH_SHARED_ALIAS'] === '0') return (binding = null);
  try {
    const koffi = createRequire(import.meta.url)('koffi') as typeof import('koffi');
    const libc = koffi.load(process.platform === 'linux' ? 'libc.so.6' : process.platform === 'darwin' ? 'libSystem.dylib' : 'msvcrt.dll');
    const memset = libc.func('void *memset(void *s, int c, size_t n)') as Memset;
    return (binding = { memset, view: (p, n) => koffi.view(p as never, n) });
  } catch {
    return (binding = null);
  }
}

/**
 * Aliases by the memory's address. Each message delivers a new SharedArrayBuffer object over the
 * same memory, so the objects cannot be the key; each entry holds one of them, which keeps that
 * memory (and so the address) alive while the entry exists. A few entries: the arena, and a
 * batch buffer or two outside it.
 */
const aliases = new Map<bigint | number, { sab: SharedArrayBuffer; alias: ArrayBuffer }>();
const MAX_ALIASES = 8;

/**
 * A Float32Array over an ordinary ArrayBuffer with the same memory as `shared` (a view of a
 * SharedArrayBuffer), or null when no alias can be made. Valid while `shared`'s buffer lives.
 */
export function aliasShared(shared: Float32Array): Float32Array | null {
  const sab = shared.buffer;
  if (!(sab instanceof SharedArrayBuffer)) return null;
  const b = load();
  if (!b) return null;
  try {
    // memset of 0 bytes writes nothing and returns its first argument: the memory's address.
    const address = b.memset(new Uint8Array(sab, 0, 1), 0, 0) as bigint | number;
    let entry = aliases.get(address);
    if (!entry || entry.alias.byteLength < sab.byteLength) {
      // New, or the memory has grown since (a WebAssembly memory: same address, more bytes).
      aliases.delete(address);
      if (aliases.size >= MAX_ALIASES) aliases.delete(aliases.keys().next().value!);
      entry = { sab, alias: b.view(address, sab.byteLength) };
      aliases.set(address, entry);
    }
    return new Float32Array(entry.alias, shared.byteOffset, shared.length);
  } catch {
    return null;
  }
}
