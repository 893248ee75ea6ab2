/**
 * Recognise encoded images by their magic bytes, so a camera that answers with a login page or a
 * half-written file is reported where it happens instead of failing later in the decoder.
 */
import { detectImageFormat, encodedImageComplete, type ImageFormat } from '../../models/image-decode.js';

export { detectImageFormat, type ImageFormat } from '../../models/image-decode.js';

/**
 * The image format of `data`, or an Error that says what it looks like instead.
 * `what` names the thing for the message ("GET http://cam/snap", "/srv/drop/a.jpg").
 * A JPEG must reach its end marker (EOI), a PNG its IEND chunk, a WebP the length its RIFF header
 * declares, a TIFF its first image directory: else the file was cut off (a half-written upload, a
 * connection closed mid-body). Data after the end (a phone's Motion Photo video after the JPEG)
 * is allowed; the decoder stops at the image's end.
 */
export function checkImage(data: Uint8Array, what: string, contentType?: string | null): ImageFormat {
  const format = detectImageFormat(data);
  if (format === undefined) {
    const type = contentType ? contentType.split(';')[0].trim() : undefined;
    if (data.length === 0) throw new Error(`${what} is empty, not an image`);
    const start = preview(data);
    if (type && !type.startsWith('image/')) throw new Error(`${what} answered ${type}, not an image (body starts with ${start})`);
    if (looksLikeText(data)) throw new Error(`${what} is text, not an image (starts with ${start})`);
    throw new Error(`${what} is not a JPEG/PNG/WebP/TIFF/BMP image (starts with bytes ${hex(data.subarray(0, 8))})`);
  }
  if (encodedImageComplete(format, data) === false) {
    const [name, why] = TRUNCATED[format];
    throw new Error(`${what} is a truncated ${name} (${data.length} bytes, ${why})`);
  }
  return format;
}

/** How checkImage names a cut-off file of each format. */
const TRUNCATED: Record<ImageFormat, [name: string, why: string]> = {
  jpeg: ['JPEG', 'no end-of-image marker'],
  png: ['PNG', 'no IEND chunk'],
  webp: ['WebP', 'shorter than its RIFF header says'],
  tiff: ['TIFF', 'its image directory or image data reach beyond the end'],
  bmp: ['BMP', 'cut off'],
};

function looksLikeText(b: Uint8Array): boolean {
  const n = Math.min(b.length, 256);
  for (let i = 0; i < n; i++) {
    const c = b[i];
    if (c < 0x09 || (c > 0x0d && c < 0x20)) return false;
  }
  return true;
}

function preview(b: Uint8Array): string {
  if (!looksLikeText(b)) return `bytes ${hex(b.subarray(0, 8))}`;
  const text = Buffer.from(b.subarray(0, 60)).toString('utf8').replace(/\s+/g, ' ').trim();
  return JSON.stringify(text + (b.length > 60 ? '…' : ''));
}

function hex(b: Uint8Array): string {
  return Buffer.from(b).toString('hex').replace(/(..)(?!$)/g, '$1 ');
}
