/**
 * Cut-off and complete encoded images: checkImage (the sources' magic-byte check) and
 * decodeImage's reasons agree with each format's own structure.
 */
import test from 'ava';
import sharp from 'sharp';
import { checkImage } from '../agent/sources/image-magic.js';
import { decodeImage, encodedImageComplete, ImageDecodeError } from '../models/image-decode.js';

/** Pseudo-random pixels, so encoded files are large enough to cut. */
function noise(w: number, h: number): Buffer {
  const b = Buffer.alloc(w * h * 3);
  let s = 99;
  for (let i = 0; i < b.length; i++) {
    s = (s * 1103515245 + 12345) >>> 0;
    b[i] = s >>> 24;
  }
  return b;
}
const encoder = () => sharp(noise(400, 300), { raw: { width: 400, height: 300, channels: 3 } });

/** What a phone appends after the JPEG of a Motion Photo: an MP4 of several KiB. */
function mp4Trailer(): Buffer {
  const b = Buffer.alloc(6000);
  b.write('\0\0\0\x18ftypmp42', 0, 'latin1');
  for (let i = 12; i < b.length; i++) b[i] = (i * 7) & 0xff;
  return b;
}

/** A 16×16 RGB uncompressed TIFF whose image directory comes first and its one strip last. */
function tiffDirectoryFirst(): Buffer {
  const w = 16;
  const h = 16;
  const entries: Array<[tag: number, type: number, count: number, value: number]> = [
    [256, 3, 1, w], [257, 3, 1, h], [258, 3, 3, 122], [259, 3, 1, 1], [262, 3, 1, 2],
    [273, 4, 1, 128], [277, 3, 1, 3], [278, 3, 1, h], [279, 4, 1, w * h * 3],
  ];
  const b = Buffer.alloc(128 + w * h * 3);
  b.write('II', 0, 'latin1');
  b.writeUInt16LE(42, 2);
  b.writeUInt32LE(8, 4);
  b.writeUInt16LE(entries.length, 8);
  entries.forEach(([tag, type, count, value], k) => {
    const e = 10 + 12 * k;
    b.writeUInt16LE(tag, e);
    b.writeUInt16LE(type, e + 2);
    b.writeUInt32LE(count, e + 4);
    if (type === 3 && count === 1) b.writeUInt16LE(value, e + 8);
    else b.writeUInt32LE(value, e + 8);
  });
  // next directory offset 0 at 118..121; BitsPerSample 8, 8, 8 at 122; pixels from 128
  for (let c = 0; c < 3; c++) b.writeUInt16LE(8, 122 + 2 * c);
  for (let i = 128; i < b.length; i++) b[i] = i & 0xff;
  return b;
}

test('checkImage accepts a JPEG or PNG followed by more than a KiB of other data (a Motion Photo), as the decoder does', async (t) => {
  for (const [name, image] of [['photo.jpg', await encoder().jpeg().toBuffer()], ['photo.png', await encoder().png().toBuffer()]] as const) {
    const withVideo = Buffer.concat([image, mp4Trailer()]);
    const decoded = await decodeImage(withVideo, { origin: name });
    t.deepEqual([decoded.width, decoded.height], [400, 300]);
    t.is(checkImage(withVideo, name), name.endsWith('jpg') ? 'jpeg' : 'png');
    t.true(encodedImageComplete(name.endsWith('jpg') ? 'jpeg' : 'png', withVideo));
  }
});

test('checkImage: the EOI of an EXIF thumbnail does not make a cut JPEG whole; a progressive JPEG is walked scan by scan', async (t) => {
  const thumb = await sharp(noise(16, 16), { raw: { width: 16, height: 16, channels: 3 } }).jpeg().toBuffer();
  for (const progressive of [false, true]) {
    const main = await encoder().jpeg({ progressive }).toBuffer();
    const app1 = Buffer.concat([Buffer.from('Exif\0\0', 'latin1'), thumb]);
    const header = Buffer.from([0xff, 0xe1, (app1.length + 2) >> 8, (app1.length + 2) & 0xff]);
    const whole = Buffer.concat([main.subarray(0, 2), header, app1, main.subarray(2)]);
    t.is(checkImage(whole, 'whole.jpg'), 'jpeg');
    t.true(encodedImageComplete('jpeg', Buffer.concat([whole, mp4Trailer()])), `progressive ${progressive}: image then trailer`);
    const cut = whole.subarray(0, Math.floor(whole.length * 0.6));
    t.throws(() => checkImage(cut, 'cut.jpg'), { message: `cut.jpg is a truncated JPEG (${cut.length} bytes, no end-of-image marker)` });
  }
});

test('checkImage refuses a cut WebP (shorter than its RIFF header says) and a cut TIFF, and accepts them whole', async (t) => {
  const webp = await encoder().webp().toBuffer();
  t.is(checkImage(webp, 'a.webp'), 'webp');
  const webpCut = webp.subarray(0, webp.length - 100);
  t.throws(() => checkImage(webpCut, 'a.webp'), { message: `a.webp is a truncated WebP (${webpCut.length} bytes, shorter than its RIFF header says)` });

  // libtiff writes the directory after the image data; tiffDirectoryFirst puts it first.
  const tiffs = [await encoder().tiff({ compression: 'lzw' }).toBuffer(), await encoder().tiff({ compression: 'none' }).toBuffer(), tiffDirectoryFirst()];
  for (const [k, tiff] of tiffs.entries()) {
    t.is(checkImage(tiff, `t${k}.tif`), 'tiff');
    for (const keep of [0.5, 0.99]) {
      const cut = tiff.subarray(0, Math.floor(tiff.length * keep));
      t.throws(() => checkImage(cut, `t${k}.tif`), { message: `t${k}.tif is a truncated TIFF (${cut.length} bytes, its image directory or image data reach beyond the end)` });
    }
  }
  const whole = await decodeImage(tiffDirectoryFirst(), { origin: 'first.tif' });
  t.deepEqual([whole.width, whole.height, whole.data[0], whole.data[1]], [16, 16, 128, 129]);
});

test('decodeImage calls a cut TIFF or WebP truncated, not an unsupported format or a corrupt header', async (t) => {
  const inputs: Array<[string, Buffer]> = [
    ['cut.tif', await encoder().tiff({ compression: 'lzw' }).toBuffer()],
    ['cut-none.tif', await encoder().tiff({ compression: 'none' }).toBuffer()],
    ['cut.webp', await encoder().webp().toBuffer()],
    ['cut-lossless.webp', await encoder().webp({ lossless: true }).toBuffer()],
  ];
  for (const [origin, whole] of inputs) {
    const cut = whole.subarray(0, Math.floor(whole.length * 0.7));
    for (const targetSize of [undefined, 100]) {
      const err = await t.throwsAsync(decodeImage(cut, { origin, targetSize }), { instanceOf: ImageDecodeError });
      t.is(err?.reason, 'truncated', `${origin}, targetSize ${targetSize}: ${err?.message}`);
      t.regex(err!.message, new RegExp(`^cannot decode image ${origin}: truncated: (tiff|webp) data ends early \\(${cut.length} bytes\\)`));
    }
  }
  // A format this build does not read (BMP) stays unsupported.
  const bmp = Buffer.alloc(100);
  bmp.write('BM', 0, 'latin1');
  t.is((await t.throwsAsync(decodeImage(bmp, { origin: 'a.bmp' }), { instanceOf: ImageDecodeError }))?.reason, 'unsupported');
});
