import test from 'ava';
import sharp from 'sharp';
import { decodeImage } from '../models/image-decode.js';
import type { RawLike } from '../pipelines/planogram.js';
import { drawMask, maskAtSize, renderThumbnail, thumbnailSize } from '../pipelines/thumbnail.js';

const GREEN: [number, number, number] = [0, 160, 0];
const GREY: [number, number, number] = [128, 128, 128];

/** A green 400×300 frame whose slot box (50, 20, 300, 200) is plain grey. */
function greenFrameWithGreySlot(): RawLike {
  const width = 400;
  const height = 300;
  const data = new Uint8Array(width * height * 3);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const inSlot = x >= 50 && x < 350 && y >= 20 && y < 220;
      data.set(inSlot ? GREY : GREEN, (y * width + x) * 3);
    }
  }
  return { data, width, height, channels: 3 };
}

/** 10×10 mask with cells x 2..4, y 3..6 set. */
function maskPrediction() {
  const mapSize = 10;
  const mask = new Uint8Array(mapSize * mapSize);
  for (let y = 3; y <= 6; y++) for (let x = 2; x <= 4; x++) mask[y * mapSize + x] = 1;
  return { mask, mapSize };
}

async function decode(buf: Buffer, grey = false) {
  const image = sharp(buf);
  const { data, info } = await (grey ? image.extractChannel(0) : image).raw().toBuffer({ resolveWithObject: true });
  const at = (x: number, y: number) => [...data.subarray((y * info.width + x) * info.channels, (y * info.width + x + 1) * info.channels)];
  return { data, info, at };
}

test('thumbnailSize bounds the longest side, keeps the aspect ratio and never enlarges', (t) => {
  t.deepEqual(thumbnailSize(300, 200, 120), { width: 120, height: 80 });
  t.deepEqual(thumbnailSize(200, 500, 320), { width: 128, height: 320 });
  t.deepEqual(thumbnailSize(50, 30, 320), { width: 50, height: 30 });
});

test('renderThumbnail draws the mask in red over the crop of the frame, nowhere else', async (t) => {
  const thumb = await renderThumbnail({ frame: greenFrameWithGreySlot(), box: { x: 50, y: 20, width: 300, height: 200 } }, maskPrediction(), {
    maxSize: 120,
    quality: 80,
  });
  t.deepEqual([thumb.width, thumb.height], [120, 80]);
  t.deepEqual([...thumb.jpeg.subarray(0, 3)], [0xff, 0xd8, 0xff]);
  t.deepEqual([...thumb.maskPng.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

  // The mask: a map cell is 12×8 thumbnail pixels → x 24..59, y 24..55 are set (36 × 32 = 1152).
  t.like(await sharp(thumb.maskPng).metadata(), { format: 'png', width: 120, height: 80, channels: 1 });
  const mask = await decode(thumb.maskPng, true);
  const inMask = (x: number, y: number) => x >= 24 && x <= 59 && y >= 24 && y <= 55;
  let set = 0;
  let misplaced = 0;
  for (let y = 0; y < 80; y++) {
    for (let x = 0; x < 120; x++) {
      const v = mask.data[y * 120 + x];
      if (v === 255) set += 1;
      if ((v === 255) !== inMask(x, y) || (v !== 0 && v !== 255)) misplaced += 1;
    }
  }
  t.is(set, 1152);
  t.is(misplaced, 0);

  const jpeg = await decode(thumb.jpeg);
  t.like(jpeg.info, { width: 120, height: 80, channels: 3 });
  // Interior of the mask: grey tinted red (≈ 185, 70, 70).
  const [r, g, b] = jpeg.at(40, 40);
  t.true(r - g > 80 && r - b > 80, `interior pixel ${[r, g, b]} is not red-tinted`);
  // The outline (inner boundary of the mask) is close to pure red.
  const [er, eg] = jpeg.at(24, 40);
  t.true(er > 180 && eg < 90, `edge pixel ${[er, eg]} is not red`);
  // Outside the 8×8 JPEG blocks the mask touches (x 24..63, y 24..55; at 4:4:4 the coding
  // artefacts stay inside those blocks) the crop is plain grey: no red, and no green from
  // outside the slot box.
  let wrong = 0;
  for (let y = 0; y < 80; y++) {
    for (let x = 0; x < 120; x++) {
      if (x >= 24 && x <= 63 && y >= 24 && y <= 55) continue;
      const [pr, pg, pb] = jpeg.at(x, y);
      if (Math.abs(pr - 128) > 8 || Math.abs(pg - 128) > 8 || Math.abs(pb - 128) > 8) wrong += 1;
    }
  }
  t.is(wrong, 0);
});

test('renderThumbnail takes an encoded crop too, bounds it to maxSize and leaves it untouched without a mask', async (t) => {
  const crop = await sharp({ create: { width: 200, height: 500, channels: 3, background: { r: 40, g: 90, b: 200 } } }).png().toBuffer();
  const empty = { mask: new Uint8Array(16 * 16), mapSize: 16 };
  const thumb = await renderThumbnail({ crop }, empty);
  const meta = await sharp(thumb.jpeg).metadata();
  t.like(meta, { format: 'jpeg', width: 128, height: 320 });
  const maskMeta = await sharp(thumb.maskPng).metadata();
  t.like(maskMeta, { format: 'png', width: 128, height: 320, channels: 1 });
  const { data } = await decode(thumb.jpeg);
  let off = 0;
  for (let i = 0; i < data.length; i += 3) {
    if (Math.abs(data[i] - 40) > 6 || Math.abs(data[i + 1] - 90) > 6 || Math.abs(data[i + 2] - 200) > 6) off += 1;
  }
  t.is(off, 0);
  const small = await renderThumbnail({ crop: await sharp({ create: { width: 50, height: 30, channels: 3, background: '#888' } }).jpeg().toBuffer() }, empty);
  t.deepEqual([small.width, small.height], [50, 30]);
});

test('renderThumbnail shows transparent parts of an encoded image over white, as the model sees them', async (t) => {
  // Left half transparent black, right half opaque blue.
  const rgba = Buffer.alloc(40 * 20 * 4);
  for (let y = 0; y < 20; y++) for (let x = 20; x < 40; x++) rgba.set([0, 0, 200, 255], (y * 40 + x) * 4);
  const png = await sharp(rgba, { raw: { width: 40, height: 20, channels: 4 } }).png().toBuffer();
  const model = await decodeImage(png, { origin: 'cutout.png' });
  t.deepEqual([...model.data.subarray(0, 3)], [255, 255, 255]);
  const thumb = await renderThumbnail({ crop: png }, { mask: new Uint8Array(4), mapSize: 2 });
  const { at } = await decode(thumb.jpeg);
  t.true(at(5, 10).every((v) => v > 245), `transparent part should be white, got ${at(5, 10)}`);
  const [r, g, b] = at(35, 10);
  t.true(r < 20 && g < 20 && b > 180, `opaque part stays blue, got ${at(35, 10)}`);
});

test('renderThumbnail reads boxes in upright coordinates of an EXIF-rotated JPEG', async (t) => {
  // Stored 60 wide × 20 high, left third red; orientation 6 (rotate 90° clockwise) shows it 20 × 60, red on top.
  const stored = Buffer.alloc(60 * 20 * 3);
  for (let y = 0; y < 20; y++) for (let x = 0; x < 60; x++) stored.set(x < 20 ? [220, 0, 0] : [0, 0, 220], (y * 60 + x) * 3);
  const jpeg = await sharp(stored, { raw: { width: 60, height: 20, channels: 3 } }).jpeg({ quality: 95 }).withMetadata({ orientation: 6 }).toBuffer();
  const empty = { mask: new Uint8Array(4), mapSize: 2 };
  const thumb = await renderThumbnail({ frame: jpeg, box: { x: 0, y: 0, width: 20, height: 20 } }, empty);
  const { info, at } = await decode(thumb.jpeg);
  t.deepEqual([info.width, info.height], [20, 20]);
  const [r, , b] = at(10, 10);
  t.true(r > 150 && b < 80, `top square should be red, got ${at(10, 10)}`);
  await t.throwsAsync(renderThumbnail({ frame: jpeg, box: { x: 0, y: 0, width: 60, height: 20 } }, empty), {
    message: 'renderThumbnail: box [0, 0, 60, 20] is not inside the 20×60 image',
  });
});

test('renderThumbnail rejects bad options and a mask that does not match mapSize', async (t) => {
  const crop = await sharp({ create: { width: 10, height: 10, channels: 3, background: '#fff' } }).png().toBuffer();
  await t.throwsAsync(renderThumbnail({ crop }, { mask: new Uint8Array(4), mapSize: 2 }, { quality: 0 }), { message: /quality must be an integer in 1\.\.100, got 0/ });
  await t.throwsAsync(renderThumbnail({ crop }, { mask: new Uint8Array(5), mapSize: 2 }), { message: /mask has 5 values, expected mapSize² = 2² = 4/ });
});

test('renderThumbnail refuses raw pixels whose length does not match their size, naming both', async (t) => {
  const mask = new Uint8Array(4);
  const short: RawLike = { data: Buffer.alloc(10 * 10 * 3 - 1), width: 10, height: 10, channels: 3 };
  await t.throwsAsync(renderThumbnail({ crop: short }, { mask, mapSize: 2 }), { message: /raw image of 10×10×3 needs 300 bytes, got 299/ });
  const grey: RawLike = { data: Buffer.alloc(100), width: 10, height: 10, channels: 1 };
  await t.throwsAsync(renderThumbnail({ crop: grey }, { mask, mapSize: 2 }), { message: /needs RGB or RGBA pixels, got 1 channel/ });
  const ok: RawLike = { data: Buffer.alloc(300, 128), width: 10, height: 10, channels: 3 };
  t.is((await renderThumbnail({ crop: ok }, { mask, mapSize: 2 })).width, 10);
});

test('a box at thumbnail size is copied in JavaScript: the same JPEG as through sharp (RGBA input takes sharp)', async (t) => {
  const rgb = greenFrameWithGreySlot();
  const rgba = { data: new Uint8Array(rgb.width * rgb.height * 4), width: rgb.width, height: rgb.height, channels: 4 };
  for (let i = 0; i < rgb.width * rgb.height; i++) {
    rgba.data.set(rgb.data.subarray(i * 3, i * 3 + 3), i * 4);
    rgba.data[i * 4 + 3] = 255;
  }
  // Distinct pixels, so that a shifted or mirrored copy would show.
  for (let i = 0; i < rgb.width * rgb.height; i++) {
    for (let c = 0; c < 3; c++) rgb.data[i * 3 + c] = rgba.data[i * 4 + c] = (i * 7 + c * 50) & 255;
  }
  const box = { x: 57, y: 31, width: 101, height: 77 };
  const viaCopy = await renderThumbnail({ frame: rgb, box }, maskPrediction());
  const viaSharp = await renderThumbnail({ frame: rgba, box }, maskPrediction());
  t.like(viaCopy, { width: 101, height: 77 });
  t.true(viaCopy.jpeg.equals(viaSharp.jpeg));
  t.true(viaCopy.maskPng.equals(viaSharp.maskPng));
});

test('encodeGrayPng: any size and values decode back exactly (sharp/libpng); bad sizes are refused', async (t) => {
  const { encodeGrayPng } = await import('../pipelines/gray-png.js');
  for (const [w, h] of [[1, 1], [7, 3], [224, 224], [301, 2]] as const) {
    const pixels = Uint8Array.from({ length: w * h }, (_, i) => (i * 37 + (i >> 3)) & 255);
    const png = encodeGrayPng(pixels, w, h);
    t.like(await sharp(png).metadata(), { format: 'png', width: w, height: h, channels: 1, space: 'b-w', depth: 'uchar' });
    const { data } = await sharp(png).extractChannel(0).raw().toBuffer({ resolveWithObject: true });
    t.deepEqual([...data], [...pixels], `${w}×${h}`);
  }
  t.throws(() => encodeGrayPng(new Uint8Array(5), 2, 3), { message: /5 values for 2×3/ });
});

test('the overlay exactly: pure red on the inner boundary, a 45 % red blend inside, the image border not a boundary; the mask stretched by nearest neighbour', (t) => {
  // 5×4 pixels, all (100, 50, 200); the mask covers x 0..2, y 0..2 (touching the left and top borders).
  const mask = Uint8Array.from([255, 255, 255, 0, 0, 255, 255, 255, 0, 0, 255, 255, 255, 0, 0, 0, 0, 0, 0, 0]);
  const pixels = new Uint8Array(5 * 4 * 3);
  for (let i = 0; i < 20; i++) pixels.set([100, 50, 200], i * 3);
  drawMask(pixels, mask, 5, 4);
  const at = (x: number, y: number) => Array.from(pixels.subarray((y * 5 + x) * 3, (y * 5 + x) * 3 + 3));
  const blended = [Math.round(100 * 0.55 + 255 * 0.45), Math.round(50 * 0.55), Math.round(200 * 0.55)]; // 170, 28, 110
  t.deepEqual(blended, [170, 28, 110]);
  for (const [x, y] of [[0, 0], [1, 0], [0, 1], [1, 1]] as const) t.deepEqual(at(x, y), blended, `(${x}, ${y}): inside, its unmasked 4-neighbours are outside the image only`);
  for (const [x, y] of [[2, 0], [2, 1], [0, 2], [1, 2], [2, 2]] as const) t.deepEqual(at(x, y), [255, 0, 0], `(${x}, ${y}): on the boundary`);
  for (const [x, y] of [[3, 0], [4, 3], [0, 3]] as const) t.deepEqual(at(x, y), [100, 50, 200], `(${x}, ${y}): outside the mask, untouched`);

  // A 2×2 grid on 4×3 pixels: pixel centres map to cell floor((i + 0.5) · 2 / n): columns 0, 0, 1, 1; rows 0, 1, 1.
  t.deepEqual(Array.from(maskAtSize(Uint8Array.from([1, 0, 0, 1]), 2, 4, 3)), [255, 255, 0, 0, 0, 0, 255, 255, 0, 0, 255, 255]);
  t.deepEqual(Array.from(maskAtSize(Uint8Array.from([0, 1, 1, 0]), 2, 2, 2)), [0, 255, 255, 0], 'same size: copied as 0/255');
});
