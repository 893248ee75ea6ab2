/**
 * models/shared-alias.ts: an ordinary ArrayBuffer over a SharedArrayBuffer's memory, which
 * onnxruntime accepts; what one side writes the other reads.
 */
import test from 'ava';
import { aliasShared } from '../models/shared-alias.js';
import { PixelArena } from '../models/pixel-arena.js';

test('the alias is an ordinary ArrayBuffer over the same memory, at the view\'s offset and length', (t) => {
  const shared = new Float32Array(new SharedArrayBuffer(4096), 256, 100);
  const alias = aliasShared(shared);
  if (!alias) return t.fail('koffi and libc load here, so an alias must be made');
  t.false(alias.buffer instanceof SharedArrayBuffer);
  t.is(alias.length, 100);
  shared[3] = 1.5;
  t.is(alias[3], 1.5);
  alias[99] = -2;
  t.is(shared[99], -2);
  t.is(new Float32Array(shared.buffer)[64 + 99], -2, 'nothing outside the view moved');
  // Another view of the same buffer reuses its alias; a plain array has none.
  const again = aliasShared(new Float32Array(shared.buffer, 0, 10))!;
  t.is(again.buffer, alias.buffer);
  t.is(aliasShared(new Float32Array(10)), null);
  // A message delivers a new SharedArrayBuffer object over the same memory: still the same alias
  // (one per message would be one external buffer of the whole memory per batch for V8 to collect).
  const cloned = structuredClone(shared.buffer);
  t.not(cloned, shared.buffer);
  const viaClone = aliasShared(new Float32Array(cloned, 256, 100))!;
  t.is(viaClone.buffer, alias.buffer);
  t.is(viaClone[99], -2);
});

test('a grown WebAssembly memory (a new SharedArrayBuffer over more bytes): views made after the growth get an alias that covers them', (t) => {
  const arena = new PixelArena(64 * 65536);
  const early = arena.allocate(1000)!;
  const late = arena.allocate(40 * 65536)!; // grows the memory
  const before = new Float32Array(arena.buffer(), early.offset, 250);
  const after = new Float32Array(arena.buffer(), late.offset + 40 * 65536 - 400, 100);
  after[99] = 7;
  before[0] = 3;
  t.is(aliasShared(after)![99], 7);
  t.is(aliasShared(before)![0], 3);
});
