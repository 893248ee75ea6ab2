import test from 'ava';
import { existsSync, readFileSync } from 'node:fs';
import { crc32, deflateSync } from 'node:zlib';
import sharp from 'sharp';
import { decodeImage, ImageDecodeError, shrinkFactor, usableShrink, type ImageDecodeReason, type RawImage } from '../models/image-decode.js';
import { IMAGENET_NORMALIZATION, preprocessImage, toModelInput } from '../models/preprocess.js';
import { axisCoefficients, computeAxisCoefficients, resizeTriangle } from '../models/resize.js';
import { allocateKernelBatch } from '../models/resize-kernel.js';

const REFERENCE = '../shared/reference/patchcore';
const DATASET = '../shared/datasets/magnetic_tile';
/** The reference outputs and dataset of ../shared (tests only; skipped where it is absent). */
const withReference = existsSync(`${REFERENCE}/images.json`) && existsSync(DATASET) ? test : test.skip;
const norm = IMAGENET_NORMALIZATION;

/** A deterministic, non-trivial RGB image (smooth waves, a ramp and a checkerboard). */
function texture(w: number, h: number): Buffer {
  const b = Buffer.alloc(w * h * 3);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const i = (y * w + x) * 3;
      b[i] = 128 + 100 * Math.sin(x / 37) * Math.cos(y / 53);
      b[i + 1] = (x * 255) / w;
      b[i + 2] = ((x >> 5) + (y >> 5)) & 1 ? 200 : 40;
    }
  }
  return b;
}

/** Pseudo-random bytes, so that JPEGs of it are large enough to cut and damage. */
function noise(w: number, h: number, channels: number): Buffer {
  const b = Buffer.alloc(w * h * channels);
  let s = 12345;
  for (let i = 0; i < b.length; i++) {
    s = (s * 1103515245 + 12345) >>> 0;
    b[i] = s >>> 24;
  }
  return b;
}

const raw = (w: number, h: number, channels: 1 | 2 | 3 | 4, data: Buffer) => sharp(data, { raw: { width: w, height: h, channels } });
const pixel = (img: RawImage, x: number, y: number) => [...img.data.subarray((y * img.width + x) * 3, (y * img.width + x) * 3 + 3)];

/**
 * Both decode paths refuse the input with the same reason: the one-call path (no target size, as
 * the agent decodes frames) and the header-first path (a target size, shrink-on-load planned).
 */
async function rejects(t: import('ava').ExecutionContext, input: Buffer, origin: string, reason: ImageDecodeReason, opts: { maxPixels?: number } = {}) {
  let first: ImageDecodeError | undefined;
  for (const targetSize of [undefined, 224]) {
    const err = await t.throwsAsync(decodeImage(input, { origin, ...opts, targetSize }), { instanceOf: ImageDecodeError });
    t.is(err?.reason, reason, `targetSize ${targetSize}: ${err?.message}`);
    t.is(err?.origin, origin);
    t.true(err?.message.includes(origin), err?.message);
    t.true(err?.message.includes(reason), err?.message);
    first ??= err;
  }
  return first;
}

// ---------------------------------------------------------------- reference

withReference('magnetic_tile test images 6 and 7 reproduce the reference inputs.bin', async (t) => {
  const manifest = JSON.parse(readFileSync(`${REFERENCE}/manifest.json`, 'utf8'));
  t.deepEqual(manifest.arrays.inputs.shape, [2, 3, 224, 224]);
  const bin = readFileSync(`${REFERENCE}/inputs.bin`);
  const expected = new Float32Array(bin.buffer, bin.byteOffset, bin.length / 4);
  const images = JSON.parse(readFileSync(`${REFERENCE}/images.json`, 'utf8')).test as { index: number; path: string; width: number; height: number }[];
  const plane = 3 * 224 * 224;
  const batch = new Float32Array(2 * plane);
  for (const [k, index] of [6, 7].entries()) {
    const entry = images.find((e) => e.index === index)!;
    const input = readFileSync(`${DATASET}/${entry.path}`);
    const pre = await preprocessImage(input, { origin: entry.path, size: 224, normalization: norm, shrinkOnLoad: false });
    t.is(pre.size, 224);
    t.deepEqual([pre.sourceWidth, pre.sourceHeight], [entry.width, entry.height]);
    let max = 0;
    for (let i = 0; i < plane; i++) max = Math.max(max, Math.abs(pre.data[i] - expected[k * plane + i]));
    t.true(max <= 1e-4, `${entry.path}: max abs diff ${max}`);
    // Batch filling in place gives the same values.
    const img = await decodeImage(input, { origin: entry.path });
    t.is(img.shrink, 1);
    t.is(toModelInput(img, { size: 224, normalization: norm }, batch, k * plane), batch);
    t.deepEqual(batch.subarray(k * plane, (k + 1) * plane), pre.data);
  }
});

withReference('the reference paths are those of images.json (test images 6 and 7)', (t) => {
  const images = JSON.parse(readFileSync(`${REFERENCE}/images.json`, 'utf8')).test as { index: number; path: string }[];
  t.is(images.find((e) => e.index === 6)?.path, 'test/good/exp1_num_116270.jpg');
  t.is(images.find((e) => e.index === 7)?.path, 'test/uneven/exp0_num_461.jpg');
});

// ---------------------------------------------------------------- resize

function taps(inSize: number, outSize: number): { start: number; w: number[] }[] {
  const c = computeAxisCoefficients(inSize, outSize);
  return [...c.start].map((start, i) => ({ start, w: [...c.weights.subarray(i * c.stride, i * c.stride + c.count[i])] }));
}

function close(t: import('ava').ExecutionContext, actual: { start: number; w: number[] }[], expected: { start: number; w: number[] }[]) {
  t.is(actual.length, expected.length);
  for (let i = 0; i < expected.length; i++) {
    t.is(actual[i].start, expected[i].start, `output ${i} start`);
    t.is(actual[i].w.length, expected[i].w.length, `output ${i} tap count`);
    expected[i].w.forEach((w, k) => t.true(Math.abs(actual[i].w[k] - w) < 1e-15, `output ${i} tap ${k}: ${actual[i].w[k]} vs ${w}`));
  }
}

test('coefficients: identity is one tap of weight 1', (t) => {
  close(t, taps(5, 5), [0, 1, 2, 3, 4].map((start) => ({ start, w: [1] })));
});

test('coefficients: shrinking 4→2 widens the triangle (support 2)', (t) => {
  // center 1: j = 0, 1, 2 at distances 0.25, 0.25, 0.75 of support 2 → 0.75, 0.75, 0.25 → /1.75
  close(t, taps(4, 2), [
    { start: 0, w: [3 / 7, 3 / 7, 1 / 7] },
    { start: 1, w: [1 / 7, 3 / 7, 3 / 7] },
  ]);
  // 3→1: center 1.5, support 3: 2/3, 1, 2/3 → 2/7, 3/7, 2/7
  close(t, taps(3, 1), [{ start: 0, w: [2 / 7, 3 / 7, 2 / 7] }]);
});

test('coefficients: enlarging 2→4 is bilinear with align_corners=false and clamped edges', (t) => {
  close(t, taps(2, 4), [
    { start: 0, w: [1] },
    { start: 0, w: [0.75, 0.25] },
    { start: 0, w: [0.25, 0.75] },
    { start: 1, w: [1] },
  ]);
});

test('coefficients are cached per (in, out) and sum to 1', (t) => {
  t.is(axisCoefficients(598, 224), axisCoefficients(598, 224));
  t.not(axisCoefficients(598, 224), axisCoefficients(224, 598));
  for (const [a, b] of [[598, 224], [121, 224], [7, 3], [3000, 224]]) {
    const c = axisCoefficients(a, b);
    for (let i = 0; i < b; i++) {
      let s = 0;
      for (let k = 0; k < c.count[i]; k++) s += c.weights[i * c.stride + k];
      t.true(Math.abs(s - 1) < 1e-12, `${a}→${b} output ${i} sums to ${s}`);
      t.true(c.start[i] >= 0 && c.start[i] + c.count[i] <= a);
    }
  }
  t.throws(() => computeAxisCoefficients(0, 4), { instanceOf: RangeError, message: /input length/ });
  t.throws(() => computeAxisCoefficients(4, 2.5), { instanceOf: RangeError, message: /output length/ });
});

test('resizeTriangle: a hand-computed 4×2 → 2×1 image', (t) => {
  // one channel; rows [0, 70, 140, 210] and [70, 140, 210, 255]
  const img = { data: Uint8Array.from([0, 70, 140, 210, 70, 140, 210, 255]), width: 4, height: 2, channels: 1 };
  const out = resizeTriangle(img, 2, 1);
  // horizontal: row0 → (0·3 + 70·3 + 140)/7 = 50, (70 + 140·3 + 210·3)/7 = 160
  //             row1 → (70·3 + 140·3 + 210)/7 = 120, (140 + 210·3 + 255·3)/7 = 219.2857…
  // vertical 2→1: center 1, support 2: weights 0.75, 0.75 → ½ each
  t.true(Math.abs(out[0] - (50 + 120) / 2) < 1e-12, String(out[0]));
  t.true(Math.abs(out[1] - (160 + 1535 / 7) / 2) < 1e-12, String(out[1]));
});

test('resizeTriangle: enlarging a 2×1 RGB image interpolates each channel', (t) => {
  const img = { data: Uint8Array.from([0, 100, 200, 40, 60, 0]), width: 2, height: 1, channels: 3 };
  const out = [...resizeTriangle(img, 4, 1)];
  const expected = [0, 100, 200, 10, 90, 150, 30, 70, 50, 40, 60, 0];
  expected.forEach((v, i) => t.true(Math.abs(out[i] - v) < 1e-12, `value ${i}: ${out[i]} vs ${v}`));
});

test('resizeTriangle: the RGB WebAssembly kernels equal the per-channel JS path bit for bit', (t) => {
  // Shrinking, enlarging, one axis unchanged, odd row lengths, boxes of a larger image, and a
  // 1500×1100 image that grows the kernel's memory.
  const cases: Array<{ w: number; h: number; ow: number; oh: number; box?: { x: number; y: number; width: number; height: number } }> = [
    { w: 57, h: 41, ow: 23, oh: 64 },
    { w: 900, h: 900, ow: 224, oh: 224 },
    { w: 31, h: 17, ow: 31, oh: 5 },
    { w: 31, h: 17, ow: 9, oh: 17 },
    { w: 5, h: 3, ow: 37, oh: 29 },
    { w: 120, h: 90, ow: 33, oh: 47, box: { x: 7, y: 11, width: 101, height: 61 } },
    { w: 120, h: 90, ow: 101, oh: 20, box: { x: 19, y: 3, width: 101, height: 86 } },
    { w: 1500, h: 1100, ow: 224, oh: 224, box: { x: 1, y: 0, width: 1499, height: 1100 } },
  ];
  for (const { w, h, ow, oh, box } of cases) {
    const rgb = new Uint8Array(noise(w, h, 3));
    const out = resizeTriangle({ data: rgb, width: w, height: h, channels: 3 }, ow, oh, { box });
    for (let c = 0; c < 3; c++) {
      const plane = new Uint8Array(w * h).map((_, p) => rgb[p * 3 + c]);
      const one = resizeTriangle({ data: plane, width: w, height: h, channels: 1 }, ow, oh, { box });
      for (let p = 0; p < one.length; p++) {
        if (!Object.is(one[p], out[p * 3 + c])) return t.fail(`${w}×${h} → ${ow}×${oh}: channel ${c} pixel ${p}: ${out[p * 3 + c]} ≠ ${one[p]}`);
      }
    }
  }
  t.pass();
});

test('resizeTriangle: a box of a larger image equals cropping it first', async (t) => {
  const w = 120;
  const h = 90;
  const data = new Uint8Array(noise(w, h, 3));
  const box = { x: 17, y: 9, width: 61, height: 70 };
  const crop = await raw(w, h, 3, Buffer.from(data)).extract({ left: box.x, top: box.y, width: box.width, height: box.height }).raw().toBuffer();
  for (const [ow, oh] of [[32, 32], [200, 150], [61, 70]]) {
    const inPlace = resizeTriangle({ data, width: w, height: h, channels: 3 }, ow, oh, { box });
    const copied = resizeTriangle({ data: new Uint8Array(crop), width: box.width, height: box.height, channels: 3 }, ow, oh);
    t.deepEqual(inPlace, copied, `${ow}×${oh}`);
  }
  const identity = resizeTriangle({ data: new Uint8Array(crop), width: box.width, height: box.height, channels: 3 }, box.width, box.height);
  t.deepEqual([...identity], [...crop]);
});

test('resizeTriangle: bad boxes and buffers are refused with the numbers', (t) => {
  const img = { data: new Uint8Array(10 * 8 * 3), width: 10, height: 8, channels: 3 };
  t.throws(() => resizeTriangle(img, 4, 4, { box: { x: 5, y: 0, width: 6, height: 8 } }), { message: /x: 5, y: 0, width: 6, height: 8.*outside the 10×8 image/ });
  t.throws(() => resizeTriangle(img, 4, 4, { box: { x: -1, y: 0, width: 2, height: 2 } }), { message: /outside/ });
  t.throws(() => resizeTriangle(img, 4, 4, { box: { x: 0, y: 0, width: 0, height: 2 } }), { message: /empty/ });
  t.throws(() => resizeTriangle(img, 4, 4, { box: { x: 0.5, y: 0, width: 2, height: 2 } }), { message: /integer/ });
  t.throws(() => resizeTriangle({ ...img, height: 9 }, 4, 4), { message: /holds 240 values, expected 10×9×3 = 270/ });
  t.throws(() => resizeTriangle(img, 4, 4, { out: new Float64Array(10) }), { message: /needs 48/ });
});

// ---------------------------------------------------------------- toModelInput

test('toModelInput: crop + resize + normalise, NCHW, written at an offset', async (t) => {
  const w = 160;
  const h = 100;
  const png = await raw(w, h, 3, texture(w, h)).png().toBuffer();
  const img = await decodeImage(png, { origin: 'frame.png' });
  const box = { x: 30, y: 12, width: 80, height: 77 };
  const cropPng = await sharp(png).extract({ left: box.x, top: box.y, width: box.width, height: box.height }).png().toBuffer();
  const cropped = toModelInput(await decodeImage(cropPng, { origin: 'crop.png' }), { size: 32, normalization: norm });
  const batch = new Float32Array(5 + 3 * 32 * 32 + 7).fill(9);
  toModelInput(img, { size: 32, normalization: norm, box }, batch, 5);
  t.deepEqual(batch.subarray(5, 5 + 3 * 32 * 32), cropped);
  t.is(batch[4], 9);
  t.is(batch[5 + 3 * 32 * 32], 9);

  // Channel planes: a uniform colour maps to ((v / 255) − mean) / std per plane.
  const solid = await decodeImage(await sharp({ create: { width: 13, height: 7, channels: 3, background: { r: 255, g: 0, b: 51 } } }).png().toBuffer(), { origin: 'solid' });
  const x = toModelInput(solid, { size: 4, normalization: norm });
  const want = [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (0.2 - 0.406) / 0.225];
  for (let c = 0; c < 3; c++) for (let p = 0; p < 16; p++) t.true(Math.abs(x[c * 16 + p] - want[c]) < 1e-6, `plane ${c}: ${x[c * 16 + p]}`);
});

test('toModelInput: refuses a box outside the image, a short output buffer and bad normalisation', async (t) => {
  const img = await decodeImage(await raw(20, 10, 3, texture(20, 10)).png().toBuffer(), { origin: 'cam1/frame-7.png' });
  t.throws(() => toModelInput(img, { size: 8, normalization: norm, box: { x: 10, y: 5, width: 11, height: 2 } }), {
    instanceOf: RangeError,
    message: /cam1\/frame-7\.png.*x: 10, y: 5, width: 11, height: 2.*outside the 20×10 image/,
  });
  t.throws(() => toModelInput(img, { size: 8, normalization: norm }, new Float32Array(3 * 64), 1), { message: /offset 1 \+ 192 values does not fit a buffer of 192/ });
  t.throws(() => toModelInput(img, { size: 0, normalization: norm }), { message: /size must be a positive integer/ });
  t.throws(() => toModelInput(img, { size: 8, normalization: { mean: [0, 0, 0], std: [1, 0, 1] } }), { message: /std\[1\] must be positive/ });
});

// ---------------------------------------------------------------- decoding

test('EXIF orientation is applied (orientation 6 = rotate 90° clockwise)', async (t) => {
  // 40×20: left half red, right half blue. Upright it is 20×40 with red on top.
  const w = 40;
  const h = 20;
  const data = Buffer.alloc(w * h * 3);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) data.set(x < 20 ? [255, 0, 0] : [0, 0, 255], (y * w + x) * 3);
  const jpeg = await raw(w, h, 3, data).jpeg({ quality: 95 }).withMetadata({ orientation: 6 }).toBuffer();
  t.is((await sharp(jpeg).metadata()).orientation, 6);
  const img = await decodeImage(jpeg, { origin: 'rotated.jpg' });
  t.deepEqual([img.width, img.height, img.sourceWidth, img.sourceHeight], [20, 40, 20, 40]);
  const [r1, , b1] = pixel(img, 10, 5);
  const [r2, , b2] = pixel(img, 10, 34);
  t.true(r1 > 200 && b1 < 60, `top ${pixel(img, 10, 5)}`);
  t.true(b2 > 200 && r2 < 60, `bottom ${pixel(img, 10, 34)}`);
});

test('grey is replicated into R, G and B', async (t) => {
  const g = noise(31, 17, 1);
  const img = await decodeImage(await raw(31, 17, 1, g).png().toBuffer(), { origin: 'grey.png' });
  t.is(img.channels, 3);
  for (let p = 0; p < 31 * 17; p++) {
    if (img.data[p * 3] !== g[p] || img.data[p * 3 + 1] !== g[p] || img.data[p * 3 + 2] !== g[p]) return t.fail(`pixel ${p}`);
  }
  t.pass();
});

test('alpha is composited over white', async (t) => {
  // transparent black, half-transparent black, opaque red, grey + alpha handled too
  const rgba = Buffer.from([0, 0, 0, 0, 0, 0, 0, 128, 255, 0, 0, 255]);
  const img = await decodeImage(await raw(3, 1, 4, rgba).png().toBuffer(), { origin: 'alpha.png' });
  t.deepEqual(pixel(img, 0, 0), [255, 255, 255]);
  for (const v of pixel(img, 1, 0)) t.true(Math.abs(v - 127) <= 1, `half alpha: ${pixel(img, 1, 0)}`);
  t.deepEqual(pixel(img, 2, 0), [255, 0, 0]);
  const greyAlpha = await decodeImage(await raw(2, 1, 2, Buffer.from([0, 0, 50, 255])).png().toBuffer(), { origin: 'ga.png' });
  t.deepEqual([...greyAlpha.data], [255, 255, 255, 50, 50, 50]);
});

test('16-bit PNG becomes 8-bit', async (t) => {
  const w = 8;
  const h = 2;
  const v16 = new Uint16Array(w * h * 3);
  for (let i = 0; i < v16.length; i++) v16[i] = (i * 4099) % 65536;
  const png = await sharp(v16, { raw: { width: w, height: h, channels: 3 } }).toColourspace('rgb16').png().toBuffer();
  t.is((await sharp(png).metadata()).depth, 'ushort');
  const img = await decodeImage(png, { origin: 'deep.png' });
  for (let i = 0; i < v16.length; i++) t.true(Math.abs(img.data[i] - v16[i] / 257) <= 1, `value ${i}: ${img.data[i]} vs ${v16[i] / 257}`);
});

test('WebP, TIFF, GIF and CMYK JPEG decode to RGB', async (t) => {
  const w = 24;
  const h = 16;
  const data = texture(w, h);
  for (const [name, buf] of [
    ['lossless.webp', await raw(w, h, 3, data).webp({ lossless: true }).toBuffer()],
    ['lzw.tiff', await raw(w, h, 3, data).tiff({ compression: 'lzw' }).toBuffer()],
  ] as const) {
    const img = await decodeImage(buf, { origin: name });
    t.deepEqual([img.width, img.height], [w, h], name);
    t.deepEqual(Buffer.from(img.data), data, name);
  }
  const gif = await decodeImage(await sharp({ create: { width: 5, height: 4, channels: 3, background: '#00ff00' } }).gif().toBuffer(), { origin: 'a.gif' });
  t.deepEqual(pixel(gif, 2, 2), [0, 255, 0]);
  const cmykJpeg = await sharp({ create: { width: 16, height: 16, channels: 3, background: { r: 200, g: 30, b: 40 } } }).toColourspace('cmyk').jpeg({ quality: 95 }).toBuffer();
  t.is((await sharp(cmykJpeg).metadata()).space, 'cmyk');
  const cmyk = await decodeImage(cmykJpeg, { origin: 'cmyk.jpg' });
  const [r, g, b] = pixel(cmyk, 8, 8);
  t.true(r > 150 && g < 90 && b < 100, `CMYK red came back as ${[r, g, b]}`);
});

test('shrink-on-load: a 3000×3000 JPEG decodes at a reduced scale close to the full decode', async (t) => {
  const jpeg = await raw(3000, 3000, 3, texture(3000, 3000)).jpeg({ quality: 90 }).toBuffer();
  const full = await decodeImage(jpeg, { origin: 'big.jpg' });
  t.deepEqual([full.width, full.height, full.shrink], [3000, 3000, 1]);
  const small = await decodeImage(jpeg, { origin: 'big.jpg', targetSize: 224 });
  // s = floor(3000 / 448) = 6 → 500×500, still ≥ 2 × 224
  t.deepEqual([small.width, small.height, small.shrink, small.sourceWidth, small.sourceHeight], [500, 500, 6, 3000, 3000]);
  const a = toModelInput(full, { size: 224, normalization: norm });
  const b = toModelInput(small, { size: 224, normalization: norm });
  let sum = 0;
  for (let i = 0; i < a.length; i++) sum += Math.abs(a[i] - b[i]);
  const mean = sum / a.length;
  // Normalised units: 1/255/0.224 ≈ 0.0175 is one grey level; stay within ~2 levels on average.
  t.true(mean < 0.035, `mean abs diff ${mean}`);
  const pre = await preprocessImage(jpeg, { origin: 'big.jpg', size: 224, normalization: norm });
  t.deepEqual(pre.data, b);
  t.deepEqual([pre.sourceWidth, pre.sourceHeight], [3000, 3000]);
});

test('shrink-on-load only for big JPEG/WebP, with an integer factor that keeps ≥ 2× the target', (t) => {
  t.is(shrinkFactor('jpeg', 3000, 3000, undefined), 1);
  t.is(shrinkFactor('jpeg', 3000, 3000, 224), 6);
  t.is(shrinkFactor('jpeg', 4000, 1300, 224), 1); // s = 2: sharp would do no DCT scaling
  t.is(shrinkFactor('jpeg', 1343, 5000, 224), 1); // short side < 6 × 224
  t.is(shrinkFactor('jpeg', 1344, 5000, 224), 3);
  t.is(shrinkFactor('webp', 900, 900, 224), 2);
  t.is(shrinkFactor('png', 3000, 3000, 224), 1);
  t.is(shrinkFactor('tiff', 3000, 3000, 224), 1);
  for (const side of [1344, 2000, 3000, 4032, 8000]) {
    const s = shrinkFactor('jpeg', side, side, 224);
    t.true(Math.ceil(side / s) >= 448, `${side}: ${s}`);
  }
});

test('maxShrink: a caller-chosen factor, used where the format allows it', async (t) => {
  const jpeg = await raw(1500, 1200, 3, texture(1500, 1200)).jpeg({ quality: 90 }).toBuffer();
  const img = await decodeImage(jpeg, { origin: 'frame.jpg', maxShrink: 4 });
  t.deepEqual([img.width, img.height, img.shrink, img.sourceWidth, img.sourceHeight], [375, 300, 4, 1500, 1200]);
  // JPEG at 2: no DCT scaling in sharp, so the whole frame; 1: the fast path.
  for (const maxShrink of [1, 2]) t.like(await decodeImage(jpeg, { origin: 'frame.jpg', maxShrink }), { width: 1500, height: 1200, shrink: 1 });
  const png = await raw(600, 600, 3, texture(600, 600)).png().toBuffer();
  t.like(await decodeImage(png, { origin: 'frame.png', maxShrink: 4 }), { width: 600, shrink: 1 }, 'PNG is always decoded whole');
  const webp = await raw(600, 600, 3, texture(600, 600)).webp().toBuffer();
  t.like(await decodeImage(webp, { origin: 'frame.webp', maxShrink: 2 }), { width: 300, shrink: 2 });
  t.deepEqual([usableShrink('jpeg', 2), usableShrink('jpeg', 3), usableShrink('webp', 2), usableShrink('png', 8), usableShrink(undefined, 8)], [1, 3, 2, 1, 1]);
  await t.throwsAsync(decodeImage(jpeg, { origin: 'frame.jpg', maxShrink: 0 }), { instanceOf: RangeError, message: 'decodeImage(frame.jpg): maxShrink must be a positive integer, got 0' });
  await t.throwsAsync(decodeImage(jpeg, { origin: 'frame.jpg', maxShrink: 2.5 }), { instanceOf: RangeError, message: /maxShrink must be a positive integer, got 2.5/ });
  await t.throwsAsync(decodeImage(jpeg, { origin: 'frame.jpg', maxShrink: 3, targetSize: 224 }), { message: 'decodeImage(frame.jpg): give targetSize or maxShrink, not both' });
  // Bad bytes are still classified on the header path.
  const err = await t.throwsAsync(decodeImage(jpeg.subarray(0, 500), { origin: 'cut.jpg', maxShrink: 4 }), { instanceOf: ImageDecodeError });
  t.regex(err!.message, /^cannot decode image cut\.jpg: (truncated|corrupt)/);
});

test('shrink-on-load follows EXIF orientation', async (t) => {
  const jpeg = await raw(1800, 1400, 3, texture(1800, 1400)).jpeg().withMetadata({ orientation: 6 }).toBuffer();
  const img = await decodeImage(jpeg, { origin: 'portrait.jpg', targetSize: 224 });
  t.deepEqual([img.sourceWidth, img.sourceHeight, img.shrink], [1400, 1800, 3]);
  t.deepEqual([img.width, img.height], [Math.ceil(1400 / 3), 1800 / 3]);
});

// ---------------------------------------------------------------- bad input

test('an empty buffer is refused', async (t) => {
  await rejects(t, Buffer.alloc(0), 'cam1:frame-0', 'empty');
});

test('truncated JPEG and PNG are refused, not decoded with a warning', async (t) => {
  const jpeg = await raw(200, 150, 3, noise(200, 150, 3)).jpeg().toBuffer();
  await rejects(t, jpeg.subarray(0, Math.floor(jpeg.length * 0.6)), 'cut.jpg', 'truncated');
  await rejects(t, jpeg.subarray(0, 40), 'header-only.jpg', 'truncated');
  const png = await raw(200, 150, 3, noise(200, 150, 3)).png().toBuffer();
  await rejects(t, png.subarray(0, Math.floor(png.length * 0.6)), 'cut.png', 'truncated');
  // sharp with failOn 'none' does decode the cut JPEG: the refusal is ours, not the bytes'.
  const lenient = await sharp(jpeg.subarray(0, Math.floor(jpeg.length * 0.6)), { failOn: 'none' }).raw().toBuffer();
  t.is(lenient.length, 200 * 150 * 3);
});

test('corrupt image data is refused', async (t) => {
  const jpeg = await raw(200, 150, 3, noise(200, 150, 3)).jpeg().toBuffer();
  const damaged = Buffer.from(jpeg);
  for (let i = 800; i < damaged.length - 200; i += 7) damaged[i] = 0xff;
  await rejects(t, damaged, 'damaged.jpg', 'corrupt');
  const noTables = Buffer.from(jpeg);
  noTables[2] = 0; // break the first marker after SOI
  noTables[3] = 0;
  await rejects(t, noTables, 'broken-marker.jpg', 'corrupt');
  const png = await raw(200, 150, 3, noise(200, 150, 3)).png().toBuffer();
  const flipped = Buffer.from(png);
  for (let i = 200; i < flipped.length - 100; i += 13) flipped[i] ^= 0x5a;
  await rejects(t, flipped, 'flipped.png', 'corrupt');
});

test('HTML and unknown formats are refused as unsupported, saying what arrived', async (t) => {
  const html = await rejects(t, Buffer.from('<!doctype html><html><body>502 Bad Gateway</body></html>'), 'http://cam1/snapshot.jpg', 'unsupported');
  t.regex(html!.message, /looks like HTML/);
  const bmp = await rejects(t, Buffer.concat([Buffer.from('BM'), Buffer.alloc(100)]), 'shelf.bmp', 'unsupported');
  t.regex(bmp!.message, /42 4d/);
  await rejects(t, Buffer.from([0xde, 0xad, 0xbe, 0xef, 1, 2, 3]), 'blob.bin', 'unsupported');
});

/** A well-formed PNG header claiming w×h pixels, without the pixels (a few dozen bytes). */
function pngClaiming(w: number, h: number): Buffer {
  const chunk = (type: string, data: Buffer) => {
    const td = Buffer.concat([Buffer.from(type, 'latin1'), data]);
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(crc32(td));
    return Buffer.concat([len, td, crc]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w, 0);
  ihdr.writeUInt32BE(h, 4);
  ihdr.set([8, 2, 0, 0, 0], 8); // 8-bit RGB, deflate, no filter, no interlace
  const sig = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  return Buffer.concat([sig, chunk('IHDR', ihdr), chunk('IDAT', deflateSync(Buffer.alloc(0))), chunk('IEND', Buffer.alloc(0))]);
}

test('a 20000×20000 image is refused from its header, before any pixel is decoded', async (t) => {
  const header = pngClaiming(20000, 20000);
  t.true(header.length < 100);
  const meta = await sharp(header, { limitInputPixels: false }).metadata();
  t.deepEqual([meta.width, meta.height], [20000, 20000]);
  // The bytes hold no pixel data: any attempt to decode would fail as corrupt/truncated, so the
  // reason 'too-large' shows the refusal came from the header alone.
  const err = await rejects(t, header, 'huge.png', 'too-large');
  t.regex(err!.message, /20000×20000 = 400\.0 megapixels exceeds the limit of 100\.0 megapixels/);
  await rejects(t, await raw(300, 200, 3, texture(300, 200)).png().toBuffer(), 'small-limit.png', 'too-large', { maxPixels: 50_000 });
});

test('toModelInput: the table path reads any row alignment, any size and any box position', (t) => {
  // Pixels placed at every byte offset 0–3 of their buffer, boxes at odd x and sizes that are not
  // multiples of 4; a square image whose box is the whole image (its rows are copied in one piece).
  for (const [w, h, boxes] of [
    [53, 41, [[37, 0, 0], [37, 5, 3], [16, 1, 24], [3, 50, 38], [41, 12, 0]]],
    [29, 29, [[29, 0, 0]]],
  ] as const) {
    const pixels = noise(w, h, 3);
    for (let shift = 0; shift < 4; shift++) {
      const backing = new Uint8Array(pixels.length + 8);
      const data = backing.subarray(shift, shift + pixels.length);
      data.set(pixels);
      const img: RawImage = { data, width: w, height: h, channels: 3, origin: `shift-${shift}`, sourceWidth: w, sourceHeight: h, shrink: 1 };
      for (const [size, x, y] of boxes) {
        // Written into a bigger buffer at an offset, as the agent fills a batch.
        const out = new Float32Array(5 + 3 * size * size + 7).fill(-99);
        toModelInput(img, { size, normalization: norm, box: { x, y, width: size, height: size } }, out, 5);
        const got = out.subarray(5, 5 + 3 * size * size);
        const plane = size * size;
        let wrong = 0;
        for (let c = 0; c < 3; c++) {
          for (let yy = 0; yy < size; yy++) {
            for (let xx = 0; xx < size; xx++) {
              const v = pixels[((y + yy) * w + x + xx) * 3 + c]!;
              if (got[c * plane + yy * size + xx] !== Math.fround((v / 255 - norm.mean[c]!) / norm.std[c]!)) wrong++;
            }
          }
        }
        t.is(wrong, 0, `${w}×${h} image at byte offset ${shift}, ${size}×${size} box at (${x}, ${y})`);
        t.true(out.subarray(0, 5).every((v) => v === -99) && out.subarray(5 + 3 * plane).every((v) => v === -99), 'nothing written outside the slot');
      }
    }
  }
});

test('toModelInput: the normalising kernel is bit-identical to v·(1/(255·std)) + (−mean/std) in f64, stored as f32', (t) => {
  const w = 700;
  const h = 530;
  const img = { data: new Uint8Array(noise(w, h, 3)), width: w, height: h, channels: 3 as const, origin: 'noise', sourceWidth: w, sourceHeight: h, shrink: 1 };
  const odd = { mean: [0.3, 0.5, 0.7] as [number, number, number], std: [0.2, 0.31, 0.17] as [number, number, number] };
  const cases = [
    { size: 224, box: { x: 0, y: 0, width: w, height: h }, n: norm },
    { size: 37, box: { x: 13, y: 29, width: 301, height: 97 }, n: odd },
    { size: 224, box: { x: 100, y: 3, width: 224, height: 500 }, n: norm },
  ];
  for (const { size, box, n } of cases) {
    const got = toModelInput(img, { size, normalization: n, box });
    const hwc = resizeTriangle(img, size, size, { box });
    for (let c = 0; c < 3; c++) {
      const s = 1 / (255 * n.std[c]!);
      const o = -n.mean[c]! / n.std[c]!;
      for (let p = 0; p < size * size; p++) {
        const want = Math.fround(hwc[p * 3 + c]! * s + o);
        if (!Object.is(got[c * size * size + p], want)) return t.fail(`size ${size}, channel ${c}, pixel ${p}: ${got[c * size * size + p]} ≠ ${want}`);
      }
    }
  }
  t.pass();
});

test('toModelInput: the copy paths (box at the model size on one or both axes) equal the filtered maths', async (t) => {
  const w = 120;
  const h = 90;
  const img = await decodeImage(await raw(w, h, 3, texture(w, h)).png().toBuffer(), { origin: 'paths.png' });
  const size = 40;
  const boxes = [
    { x: 3, y: 7, width: 40, height: 40 }, // both axes copied (lookup table)
    { x: 0, y: 0, width: 40, height: 77 }, // width copied, height filtered
    { x: 11, y: 2, width: 97, height: 40 }, // height copied, width filtered
    { x: 5, y: 5, width: 64, height: 51 }, // both filtered
  ];
  for (const box of boxes) {
    const got = toModelInput(img, { size, normalization: norm, box });
    const hwc = resizeTriangle(img, size, size, { box });
    let max = 0;
    for (let c = 0; c < 3; c++) {
      for (let p = 0; p < size * size; p++) {
        const want = Math.fround((hwc[p * 3 + c] / 255 - norm.mean[c]) / norm.std[c]);
        max = Math.max(max, Math.abs(got[c * size * size + p] - want));
      }
    }
    t.true(max <= 1e-6, `box ${JSON.stringify(box)}: max abs diff ${max}`);
  }
  // A copied axis is exactly the source pixels: the top-left output of the first box is pixel (3, 7).
  const first = toModelInput(img, { size, normalization: norm, box: boxes[0] });
  const [r0] = pixel(img, 3, 7);
  t.is(first[0], Math.fround((r0! / 255 - norm.mean[0]) / norm.std[0]));
});

test('toModelInput into a kernel batch buffer (the worker batches): the planes written in place equal the copied ones, neighbours untouched', (t) => {
  const size = 24;
  const plane = 3 * size * size;
  const w = 1400;
  const h = 1000;
  const pixels = noise(w, h, 3);
  const img: RawImage = { data: pixels, width: w, height: h, channels: 3, origin: 'batch', sourceWidth: w, sourceHeight: h, shrink: 1 };
  // A box at the model size (table path), smaller and larger ones (resize paths), and a box so
  // large its scratch space outgrows the batch memory's first size (the memory grows; the
  // batch's view and the items written before it stay valid).
  const boxes = [
    { x: 3, y: 5, width: size, height: size },
    { x: 10, y: 7, width: 17, height: 30 },
    { x: 0, y: 0, width: 1400, height: 1000 },
    { x: 50, y: 60, width: 333, height: 201 },
  ];
  const batch = allocateKernelBatch(boxes.length * plane + 3);
  t.true(batch.buffer instanceof SharedArrayBuffer, 'shared with the inference worker, not copied');
  batch.fill(-99);
  for (const [i, box] of boxes.entries()) toModelInput(img, { size, normalization: norm, box }, batch, 1 + i * plane);
  for (const [i, box] of boxes.entries()) {
    const expected = toModelInput(img, { size, normalization: norm, box });
    t.deepEqual(Array.from(batch.subarray(1 + i * plane, 1 + (i + 1) * plane)), Array.from(expected), `box ${i}`);
  }
  t.is(batch[0], -99);
  t.deepEqual(Array.from(batch.subarray(1 + boxes.length * plane)), [-99, -99]);
});
