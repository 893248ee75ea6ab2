/**
 * The pixel arena (models/pixel-arena.ts) and what reads from it: blocks by size, growth, the cap;
 * arena frames read in place by toModelInput, bit for bit what a copied frame gives; decodeImage
 * into the arena and the release of its buffer.
 */
import test from 'ava';
import sharp from 'sharp';
import { decodeImage, type RawImage } from '../models/image-decode.js';
import { PixelArena } from '../models/pixel-arena.js';
import { IMAGENET_NORMALIZATION, toModelInput } from '../models/preprocess.js';
import { allocateArenaFrame, allocateKernelBatch, pixelArenaStats } from '../models/resize-kernel.js';
import { turboJpeg } from '../models/turbojpeg.js';
import { renderThumbnail } from '../pipelines/thumbnail.js';
import { noiseRgb } from './helpers/noise.js';

const PAGE = 65536;

test('blocks: aligned, a freed block serves the next request of its size, others come from the top; double free throws', (t) => {
  const a = new PixelArena(64 * PAGE);
  const x = a.allocate(1000)!;
  const y = a.allocate(5000)!;
  t.is(x.offset % 64, 0);
  t.is(y.offset % 64, 0);
  t.true(y.offset >= x.offset + 1000);
  t.is(x.bytes, 1024);
  a.free(x);
  const other = a.allocate(2000)!;
  t.not(other.offset, x.offset, 'another size does not take the freed block');
  const again = a.allocate(1000)!;
  t.is(again.offset, x.offset, 'the same size does');
  t.like(a.stats(), { blocksInUse: 3, reused: 1, refused: 0 });
  a.free(again);
  t.throws(() => a.free(again), { message: /block at \d+ \(1024 bytes\) is not in use/ });
  t.throws(() => a.allocate(0), { message: /positive integer size, got 0/ });
  t.throws(() => new PixelArena(1000), { message: /multiple of 65536, got 1000/ });
});

test('freed neighbours merge, a larger request takes their space and a smaller one splits a block; freeing the top block lowers the top', (t) => {
  const a = new PixelArena(64 * PAGE);
  const keep = a.allocate(PAGE)!; // stays in use below everything else
  const x = a.allocate(PAGE)!;
  const y = a.allocate(PAGE)!;
  const pin = a.allocate(64)!; // above x and y, so their space is not at the top
  a.free(x);
  a.free(y);
  t.is(a.freeBytes(), 2 * PAGE, 'x and y merged into one free block');
  const big = a.allocate(2 * PAGE)!;
  t.is(big.offset, x.offset, 'a request of twice the size takes the merged space');
  a.free(big);
  const small = a.allocate(PAGE / 2)!;
  t.is(small.offset, x.offset, 'a smaller request takes the front of the smallest block that holds it');
  t.is(a.freeBytes(), 2 * PAGE - PAGE / 2, 'the rest stays free');
  a.free(small);
  const top = a.top;
  a.free(pin);
  t.is(a.top, x.offset, 'freeing the top block lowers the top past the free space below it');
  t.true(a.top < top);
  t.is(a.freeBytes(), 0, 'nothing free ends at the top');
  t.is(a.allocate(3 * PAGE)!.offset, x.offset, 'new blocks start at the lowered top');
  t.is(keep.offset, 0);
});

test('a camera whose resolution changes reuses its old frames\' space: memory stays at its peak over many switches', (t) => {
  const a = new PixelArena(1024 * PAGE);
  const batch = a.allocate(600_000)!; // long-lived, as a batcher's buffer
  const sizes = [976 * 976 * 3, 1280 * 720 * 3, 640 * 480 * 3, 1920 * 1080 * 3];
  let peak = 0;
  for (let round = 0; round < 20; round++) {
    for (const bytes of sizes) {
      // Two frames in flight at once, released in either order, as scans overlap.
      const f1 = a.allocate(bytes)!;
      const f2 = a.allocate(bytes)!;
      if (round % 2) {
        a.free(f1);
        a.free(f2);
      } else {
        a.free(f2);
        a.free(f1);
      }
    }
    if (round === 0) peak = a.stats().memoryBytes;
  }
  t.is(a.stats().memoryBytes, peak, 'no growth after the first pass over the sizes');
  t.true(peak <= batch.bytes + 2 * 1920 * 1080 * 3 + 16 * PAGE, 'the peak is what was in use at once (the batch and two of the largest frames), not the sum of every size');
  t.like(a.stats(), { blocksInUse: 1, refused: 0 });
  t.true(a.stats().reused >= 19 * 8, 'allocations after the first pass need no new memory');
});

test('growth keeps earlier views valid and recognised; past the cap allocate returns null and counts it', (t) => {
  const a = new PixelArena(32 * PAGE);
  const first = a.allocate(100)!;
  const view = new Uint8Array(a.buffer(), first.offset, 100);
  view.fill(7);
  const big = a.allocate(20 * PAGE)!; // beyond the 16 pages it starts with: the memory grows
  t.truthy(big);
  t.true(a.stats().memoryBytes >= first.offset + 20 * PAGE);
  t.true(a.holds(view), 'a view made before the growth is still the arena\'s');
  t.true(a.holds(new Uint8Array(a.buffer(), big.offset, 10)));
  t.false(a.holds(new Uint8Array(new SharedArrayBuffer(10))));
  t.deepEqual([...view.subarray(0, 3)], [7, 7, 7]);
  t.is(a.allocate(20 * PAGE), null);
  t.like(a.stats(), { refused: 1, blocksInUse: 2 });
  t.true(a.top <= 32 * PAGE);
});

test('toModelInput reads an arena frame in place: the same values bit for bit as from an ordinary buffer, into a batch or a plain array', (t) => {
  const size = 32;
  const plane = 3 * size * size;
  const w = 301;
  const h = 203;
  const pixels = noiseRgb(w, h, 11);
  const frame = allocateArenaFrame(pixels.length)!;
  frame.data.set(pixels);
  const arenaImg: RawImage = { data: frame.data, width: w, height: h, channels: 3, origin: 'arena', sourceWidth: w, sourceHeight: h, shrink: 1 };
  const plainImg: RawImage = { ...arenaImg, data: pixels, origin: 'plain' };
  // The table path, shrink and enlarge on each axis, one axis unchanged, and boxes ending at the
  // frame's last row and column (the kernels read 8 bytes from the last pixel on).
  const boxes = [
    { x: 0, y: 0, width: size, height: size },
    { x: w - size, y: h - size, width: size, height: size },
    { x: 5, y: 9, width: 100, height: 77 },
    { x: w - 17, y: h - 23, width: 17, height: 23 },
    { x: 0, y: 0, width: w, height: h },
    { x: 40, y: 3, width: size, height: 150 },
    { x: 2, y: 50, width: 120, height: size },
  ];
  const batch = allocateKernelBatch(boxes.length * plane);
  for (const [i, box] of boxes.entries()) {
    const expected = toModelInput(plainImg, { size, normalization: IMAGENET_NORMALIZATION, box });
    toModelInput(arenaImg, { size, normalization: IMAGENET_NORMALIZATION, box }, batch, i * plane);
    t.deepEqual(Array.from(batch.subarray(i * plane, (i + 1) * plane)), Array.from(expected), `box ${i} into a batch`);
    t.deepEqual(Array.from(toModelInput(arenaImg, { size, normalization: IMAGENET_NORMALIZATION, box })), Array.from(expected), `box ${i} into a plain array`);
  }
  t.deepEqual(new Uint8Array(frame.data), new Uint8Array(pixels), 'the frame is only read');
  frame.release();
  frame.release(); // idempotent
});

const maybeTurbo = turboJpeg() ? test.serial : test.skip;

maybeTurbo('decodeImage({ arena: true }): the same pixels as an ordinary decode, a release() that gives the buffer to the next frame of that size', async (t) => {
  const jpeg = await sharp(noiseRgb(123, 77, 5), { raw: { width: 123, height: 77, channels: 3 } }).jpeg({ quality: 90 }).toBuffer();
  const plain = await decodeImage(jpeg, { origin: 'plain' });
  t.is(plain.release, undefined, 'an ordinary decode has nothing to release');
  const before = pixelArenaStats();
  const a = await decodeImage(jpeg, { origin: 'a', arena: true });
  t.truthy(a.release);
  t.deepEqual(Buffer.from(a.data), Buffer.from(plain.data));
  t.is(pixelArenaStats().blocksInUse, before.blocksInUse + 1);
  a.release!();
  t.is(pixelArenaStats().blocksInUse, before.blocksInUse);
  const b = await decodeImage(jpeg, { origin: 'b', arena: true });
  t.is(pixelArenaStats().reused, before.reused + 1, 'the next frame of that size took the released buffer');
  t.deepEqual(Buffer.from(b.data), Buffer.from(plain.data));
  b.release!();
  // A PNG (sharp's path) is an ordinary buffer even when asked.
  const png = await sharp(jpeg).png().toBuffer();
  t.is((await decodeImage(png, { origin: 'png', arena: true })).release, undefined);
  // A JPEG that fails in TurboJPEG gives its buffer back before sharp reports the error.
  const inUse = pixelArenaStats().blocksInUse;
  await t.throwsAsync(decodeImage(Buffer.concat([jpeg.subarray(0, 600), Buffer.alloc(10)]), { origin: 'cut', arena: true }));
  t.is(pixelArenaStats().blocksInUse, inUse);
});

test('thumbnails from an arena frame equal those from an ordinary buffer (row copy and sharp resize)', async (t) => {
  const w = 800;
  const h = 600;
  const pixels = noiseRgb(w, h, 3);
  const frame = allocateArenaFrame(pixels.length)!;
  frame.data.set(pixels);
  const mask = new Uint8Array(28 * 28).map((_, i) => (i % 29 === 0 ? 1 : 0));
  for (const box of [{ x: 10, y: 20, width: 700, height: 500 }, { x: 100, y: 50, width: 200, height: 150 }]) {
    const a = await renderThumbnail({ frame: { data: frame.data, width: w, height: h, channels: 3 }, box }, { mask, mapSize: 28 });
    const b = await renderThumbnail({ frame: { data: pixels, width: w, height: h, channels: 3 }, box }, { mask, mapSize: 28 });
    t.true(a.jpeg.equals(b.jpeg), `box ${box.width}×${box.height}`);
    t.true(a.maskPng.equals(b.maskPng));
  }
  frame.release();
});
