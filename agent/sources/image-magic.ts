/**
 * Recognise encoded images by their magic bytes, so a camera that answers with a login page or a
 * half-written file is reported where it happens instead of failing later in the decoder.
 */
export type ImageFormat = 'jpeg' | 'png' | 'webp' | 'tiff' | 'bmp';

export function detectImageFormat(data: Uint8Array): ImageFormat | undefined {
  const b = data;
  if (b.length >= 3 && b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff) return 'jpeg';
  if (b.length >= 8 && b[0] === 0x89 && b[1] === 0x50 && b[2] === 0x4e && b[3] === 0x47 && b[4] === 0x0d && b[5] === 0x0a && b[6] === 0x1a && b[7] === 0x0a) return 'png';
  if (b.length >= 12 && ascii(b, 0, 4) === 'RIFF' && ascii(b, 8, 12) === 'WEBP') return 'webp';
  if (b.length >= 4 && ((b[0] === 0x49 && b[1] === 0x49 && b[2] === 0x2a && b[3] === 0x00) || (b[0] === 0x4d && b[1] === 0x4d && b[2] === 0x00 && b[3] === 0x2a))) return 'tiff';
  if (b.length >= 14 && b[0] === 0x42 && b[1] === 0x4d) return 'bmp';
  return undefined;
}

/**
 * The image format of `data`, or an Error that says what it looks like instead.
 * `what` names the thing for the message ("GET http://cam/snap", "/srv/drop/a.jpg").
 * JPEGs must carry their end marker (EOI) near the end, PNGs their IEND chunk: a missing one
 * means a truncated file (a half-written upload, a connection closed mid-body).
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
  if (format === 'jpeg' && !hasJpegEnd(data)) {
    throw new Error(`${what} is a truncated JPEG (${data.length} bytes, no end-of-image marker)`);
  }
  if (format === 'png' && !hasPngEnd(data)) {
    throw new Error(`${what} is a truncated PNG (${data.length} bytes, no IEND chunk)`);
  }
  return format;
}

/** The IEND chunk (length 0, type "IEND", fixed CRC) within the last 1 KiB. */
const PNG_IEND = Buffer.from([0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82]);
function hasPngEnd(data: Uint8Array): boolean {
  const from = Math.max(8, data.length - 1024);
  return Buffer.from(data.buffer, data.byteOffset + from, data.length - from).includes(PNG_IEND);
}

/** EOI (FF D9) within the last 1 KiB — encoders may pad after it, but not by much. */
function hasJpegEnd(data: Uint8Array): boolean {
  for (let i = data.length - 2; i >= Math.max(2, data.length - 1024); i--) {
    if (data[i] === 0xff && data[i + 1] === 0xd9) return true;
  }
  return false;
}

function ascii(b: Uint8Array, from: number, to: number): string {
  return String.fromCharCode(...b.subarray(from, to));
}

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
