/**
 * The libturbojpeg fast path of decodeImage: the same pixels as sharp for every JPEG it takes, and
 * every JPEG it must not take (rotated, with an ICC profile, CMYK, damaged) left to sharp.
 * CI installs libturbojpeg0 (.ci/run), so the fast path is checked, not skipped.
 */
import test from 'ava';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import sharp, { type Sharp } from 'sharp';
import { decodeImage, ImageDecodeError, jpegDecoderNote } from '../models/image-decode.js';
import { plainJpeg, turboJpeg, turboJpegUnavailable } from '../models/turbojpeg.js';

const DATASET = join(process.cwd(), '..', 'shared', 'datasets', 'magnetic_tile', 'train', 'good');

/** A colourful, noisy test picture (edges and texture everywhere, so IDCT and upsampling differences would show). */
async function picture(width: number, height: number): Promise<Buffer> {
  const px = Buffer.alloc(width * height * 3);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const i = (y * width + x) * 3;
      px[i] = (x * 7 + ((y >> 3) & 1) * 120) & 255;
      px[i + 1] = (y * 5 + ((x * y) % 37)) & 255;
      px[i + 2] = ((x ^ y) * 3) & 255;
    }
  }
  return sharp(px, { raw: { width, height, channels: 3 } }).png().toBuffer();
}

/** sharp's decode of the same bytes, as decodeImage did it before the fast path. */
async function viaSharp(jpeg: Buffer): Promise<{ data: Buffer; width: number; height: number }> {
  const { data, info } = await sharp(jpeg, { autoOrient: true }).flatten({ background: '#ffffff' }).toColourspace('srgb').removeAlpha().raw().toBuffer({ resolveWithObject: true });
  return { data, width: info.width, height: info.height };
}

test('turbojpeg: the library is found (CI installs libturbojpeg0) and the startup note names it', (t) => {
  t.truthy(turboJpeg(), `libturbojpeg is missing: ${turboJpegUnavailable()}`);
  t.regex(jpegDecoderNote(), /^libturbojpeg \(libturbojpeg/);
});

test('turbojpeg: plain JPEGs of both subsamplings, progressive, mozjpeg, grey and odd sizes decode to sharp\'s pixels, bit for bit', async (t) => {
  const tj = turboJpeg()!;
  const variants: [string, (s: Sharp) => Sharp, number, number][] = [
    ['4:2:0 q92', (s) => s.jpeg({ quality: 92 }), 976, 976],
    ['4:4:4 q95', (s) => s.jpeg({ quality: 95, chromaSubsampling: '4:4:4' }), 640, 480],
    ['4:2:0 odd size q70', (s) => s.jpeg({ quality: 70 }), 333, 217],
    ['progressive', (s) => s.jpeg({ quality: 85, progressive: true }), 501, 377],
    ['mozjpeg (trellis, progressive scans)', (s) => s.jpeg({ quality: 80, mozjpeg: true }), 256, 192],
    ['grey', (s) => s.greyscale().jpeg({ quality: 90 }), 300, 200],
  ];
  for (const [name, encode, w, h] of variants) {
    const jpeg = await encode(sharp(await picture(w, h))).toBuffer();
    t.true(plainJpeg(jpeg), name);
    const header = tj.header(jpeg)!;
    t.deepEqual([header.width, header.height], [w, h], name);
    const out = Buffer.alloc(w * h * 3);
    await tj.decodeRgb(jpeg, header, out);
    const ref = await viaSharp(jpeg);
    t.true(out.equals(ref.data), `${name}: TurboJPEG differs from sharp`);
    const img = await decodeImage(jpeg, { origin: name });
    t.deepEqual([img.width, img.height, img.shrink], [w, h, 1], name);
    t.true(Buffer.from(img.data.buffer, img.data.byteOffset, img.data.length).equals(ref.data), `${name}: decodeImage differs from sharp`);
  }
});

test('turbojpeg: real grey JPEGs of the dataset decode to sharp\'s pixels (the reference inputs were made with sharp)', async (t) => {
  const files = (await readdir(DATASET)).filter((f) => f.endsWith('.jpg')).slice(0, 12);
  t.true(files.length > 0);
  for (const f of files) {
    const jpeg = await readFile(join(DATASET, f));
    t.true(plainJpeg(jpeg), f);
    const img = await decodeImage(jpeg, { origin: f });
    const ref = await viaSharp(jpeg);
    t.true(Buffer.from(img.data).equals(ref.data), f);
  }
});

test('turbojpeg: rotated, ICC-tagged and CMYK JPEGs are left to sharp, which turns them upright and into sRGB', async (t) => {
  const base = sharp(await picture(120, 80));
  const rotated = await base.clone().jpeg().withMetadata({ orientation: 6 }).toBuffer();
  const icc = await base.clone().withIccProfile('p3').jpeg().toBuffer();
  const cmyk = await base.clone().toColourspace('cmyk').jpeg().toBuffer();
  const upright = await base.clone().jpeg().withExif({ IFD0: { Orientation: '1', Make: 'shelfwatch' } }).toBuffer();
  t.false(plainJpeg(rotated));
  t.false(plainJpeg(icc));
  t.true(upright.includes('Exif\0\0'), 'the upright JPEG carries EXIF');
  t.true(plainJpeg(upright), 'orientation 1 needs nothing from sharp');
  t.true(plainJpeg(cmyk), 'no metadata; the colour space (CMYK) is what sends it to sharp');
  t.false([0, 1, 2].includes(turboJpeg()!.header(cmyk)!.colorspace), 'TurboJPEG reports CMYK');
  for (const [name, jpeg, size] of [['rotated', rotated, [80, 120]], ['icc', icc, [120, 80]], ['cmyk', cmyk, [120, 80]], ['upright', upright, [120, 80]]] as const) {
    const img = await decodeImage(jpeg, { origin: name });
    const ref = await viaSharp(jpeg);
    t.deepEqual([img.width, img.height], size, name);
    t.true(Buffer.from(img.data).equals(ref.data), name);
  }
});

test('turbojpeg: damaged JPEGs still get sharp\'s classified errors; corrupt entropy data is tolerated only with failOn error', async (t) => {
  const jpeg = await sharp(await picture(200, 160)).jpeg({ quality: 90 }).toBuffer();
  const cut = jpeg.subarray(0, Math.floor(jpeg.length * 0.6));
  const e1 = await t.throwsAsync(decodeImage(cut, { origin: 'cut.jpg' }), { instanceOf: ImageDecodeError });
  t.is(e1!.reason, 'truncated');
  const h = turboJpeg()!.header(jpeg)!;
  await t.throwsAsync(turboJpeg()!.decodeRgb(cut, h, Buffer.alloc(200 * 160 * 3)), { message: /^turbojpeg: / });
  // Flip bytes in the middle of the entropy-coded data: libjpeg warns ("corrupt JPEG data").
  const damaged = Buffer.from(jpeg);
  for (let i = Math.floor(jpeg.length / 2); i < Math.floor(jpeg.length / 2) + 40; i++) damaged[i] = damaged[i]! === 0xff ? 0x00 : 0xff - damaged[i]!;
  const refuse = await decodeImage(damaged, { origin: 'damaged.jpg' }).then(() => null, (e: unknown) => e);
  const tolerate = await decodeImage(damaged, { origin: 'damaged.jpg', failOn: 'error' }).then(() => null, (e: unknown) => e);
  const sharpRefuses = await sharp(damaged, { failOn: 'warning' }).raw().toBuffer().then(() => false, () => true);
  t.is(refuse instanceof ImageDecodeError, sharpRefuses, 'failOn warning refuses exactly what sharp refuses');
  t.is(tolerate, null);
});

test('turbojpeg: the pixel limit is checked from the header before decoding, with the same message as sharp\'s path', async (t) => {
  const jpeg = await sharp(await picture(400, 300)).jpeg().toBuffer();
  const err = await t.throwsAsync(decodeImage(jpeg, { origin: 'big.jpg', maxPixels: 100_000 }), { instanceOf: ImageDecodeError });
  t.is(err!.reason, 'too-large');
  t.is(err!.message, 'cannot decode image big.jpg: too-large: 400×300 = 0.1 megapixels exceeds the limit of 0.1 megapixels');
  await t.throwsAsync(turboJpeg()!.decodeRgb(jpeg, { width: 400, height: 300 }, Buffer.alloc(10)), { instanceOf: RangeError });
});

test('turbojpeg: plainJpeg reads no further than the bytes, and refuses what is not a JPEG marker stream', (t) => {
  t.false(plainJpeg(Buffer.from([0xff, 0xd8])));
  t.false(plainJpeg(Buffer.from([0xff, 0xd8, 0x00, 0x00, 0x00])));
  // APP1 "Exif" whose length runs past the end.
  t.false(plainJpeg(Buffer.from([0xff, 0xd8, 0xff, 0xe1, 0x40, 0x00, 0x45, 0x78, 0x69, 0x66, 0, 0])));
  // Straight to the scan: nothing for sharp to do.
  t.true(plainJpeg(Buffer.from([0xff, 0xd8, 0xff, 0xda, 0x00, 0x02])));
});

test('turbojpeg: encodeRgb writes a 4:4:4 JPEG of the quality asked that decodes close to its pixels; bad sizes and qualities are refused', async (t) => {
  const tj = turboJpeg()!;
  const { data } = await sharp(await picture(160, 96)).raw().toBuffer({ resolveWithObject: true });
  const jpeg = await tj.encodeRgb(data, 160, 96, 95);
  const meta = await sharp(jpeg).metadata();
  t.like(meta, { format: 'jpeg', width: 160, height: 96, chromaSubsampling: '4:4:4' });
  const back = await sharp(jpeg).raw().toBuffer();
  let err = 0;
  for (let i = 0; i < data.length; i++) err += Math.abs(back[i]! - data[i]!);
  t.true(err / data.length < 4, `mean error ${(err / data.length).toFixed(2)} at quality 95`);
  t.true((await tj.encodeRgb(data, 160, 96, 30)).length < jpeg.length, 'a lower quality gives a smaller file');
  await t.throwsAsync(tj.encodeRgb(data, 160, 95, 80), { instanceOf: RangeError, message: /are not 160×95 RGB/ });
  await t.throwsAsync(tj.encodeRgb(data, 160, 96, 0), { instanceOf: RangeError, message: /quality must be an integer in 1\.\.100, got 0/ });
});

// Serial: the burst fills koffi's queue for this whole process, and a direct encodeRgb running
// beside it (the test above, with no fallback of its own) would be refused.
test.serial('turbojpeg: more decodes at once than koffi queues (256) all succeed, the overflow through sharp, with the same pixels', async (t) => {
  const jpeg = await sharp(await picture(64, 48)).jpeg({ quality: 90 }).toBuffer();
  const ref = await viaSharp(jpeg);
  const all = await Promise.all(Array.from({ length: 400 }, (_, i) => decodeImage(jpeg, { origin: `burst-${i}` })));
  t.true(all.every((img) => Buffer.from(img.data).equals(ref.data)));
});
