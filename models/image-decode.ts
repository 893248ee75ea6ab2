/**
 * Decodes any encoded image (JPEG, PNG, WebP, TIFF, GIF, AVIF/HEIF, SVG... whatever sharp reads)
 * to 8-bit interleaved RGB, the one pixel format the rest of the model layer works with.
 *
 * - EXIF orientation is applied, so width/height are those of the upright image.
 * - Grey is replicated into R, G and B; alpha is composited over white (products stand on white
 *   shelves); 16-bit becomes 8-bit; CMYK and embedded ICC profiles become sRGB.
 * - Bad input never reaches the model: it is refused with an {@link ImageDecodeError} naming the
 *   origin and the reason. Dimensions are checked from the header before any pixel is decoded.
 *
 * Shrink-on-load: when the caller only needs a small model input (`targetSize`), a big JPEG or
 * WebP is decoded at a reduced scale by an integer factor s = floor(shortSide / (2 · targetSize)),
 * which keeps the result at least 2× the target on each side, so the exact triangle filter of
 * resize.ts still does the final, antialiased step. It applies from s ≥ 3 for JPEG (short side
 * ≥ 6× the target) and s ≥ 2 for WebP (≥ 4×), see {@link shrinkFactor}. For JPEG, sharp picks the
 * DCT scale (1/2, 1/4 or 1/8: the largest power of two below s, see sharp's pipeline.cc) and
 * reduces the remainder with a linear (triangle) kernel; libwebp scales directly.
 * Without `targetSize`, for other formats, or for images that are not big enough, the image is
 * decoded at full resolution — the reference comparison requires pixels without DCT scaling.
 *
 * `maxShrink` is the same for a caller that crops several boxes out of one image (the agent's
 * frames): it passes the largest factor that keeps its smallest box at 2× its model input, and
 * the same format rules decide whether that factor is used.
 *
 * A plain JPEG decoded at full resolution goes through libturbojpeg directly when the library is
 * installed (turbojpeg.ts): the same pixels for about 40 % of the CPU. Everything else, and any
 * JPEG it does not decode cleanly, goes through sharp.
 */
import sharp, { type Metadata, type OutputInfo } from 'sharp';
import { allocateArenaFrame } from './resize-kernel.js';
import { plainJpeg, rgbColorspace, turboJpeg, turboJpegUnavailable } from './turbojpeg.js';

/** 8-bit RGB pixels, row-major, interleaved (R, G, B, R, G, B, ...). */
export interface RawImage {
  data: Uint8Array;
  width: number;
  height: number;
  channels: 3;
  /** Where the image came from (path, URL, camera id), for errors and logs. */
  origin: string;
  /** Size of the upright source image before any shrink-on-load. */
  sourceWidth: number;
  sourceHeight: number;
  /** Integer shrink-on-load factor (1 = full resolution); width ≈ sourceWidth / shrink. */
  shrink: number;
  /** Present on an arena image (DecodeOptions.arena): gives its buffer back; `data` must not be read after. */
  release?: () => void;
}

export type ImageDecodeReason = 'empty' | 'truncated' | 'corrupt' | 'unsupported' | 'too-large';

export class ImageDecodeError extends Error {
  readonly origin: string;
  readonly reason: ImageDecodeReason;

  constructor(origin: string, reason: ImageDecodeReason, detail: string, options?: { cause?: unknown }) {
    super(`cannot decode image ${origin}: ${reason}: ${detail}`, options);
    this.name = 'ImageDecodeError';
    this.origin = origin;
    this.reason = reason;
  }
}

export interface DecodeOptions {
  /** Where the bytes came from; every error names it. */
  origin: string;
  /** Refuse images with more pixels than this (checked from the header). Default 100 megapixels. */
  maxPixels?: number;
  /** Side of the square model input the image is decoded for; enables shrink-on-load. */
  targetSize?: number;
  /**
   * The largest integer shrink-on-load factor the caller can use (instead of `targetSize`, for a
   * caller that crops boxes out of the image); applied only where {@link usableShrink} allows.
   */
  maxShrink?: number;
  /**
   * How picky the decoder is about damaged data. 'warning' (default, sharp's own default) also
   * refuses JPEGs with corrupt entropy data, which libjpeg would otherwise decode into garbage
   * that looks like damage to the detector; 'error' tolerates warnings. Truncated data is refused
   * in both cases.
   */
  failOn?: 'warning' | 'error';
  /**
   * Decode a plain JPEG into the pixel arena (resize-kernel.ts), where toModelInput reads slots in
   * place and the buffer serves a later frame once the caller calls the image's `release()`. For
   * callers that release every image (the agent's pipeline); other images are ordinary buffers.
   */
  arena?: boolean;
}

export const DEFAULT_MAX_PIXELS = 100_000_000;

const WHITE = { r: 255, g: 255, b: 255 };

export async function decodeImage(input: Buffer, opts: DecodeOptions): Promise<RawImage> {
  const { origin } = opts;
  const maxPixels = opts.maxPixels ?? DEFAULT_MAX_PIXELS;
  const failOn = opts.failOn ?? 'warning';
  if (!Number.isInteger(maxPixels) || maxPixels < 1) {
    throw new RangeError(`decodeImage(${origin}): maxPixels must be a positive integer, got ${maxPixels}`);
  }
  if (opts.targetSize !== undefined && (!Number.isInteger(opts.targetSize) || opts.targetSize < 1)) {
    throw new RangeError(`decodeImage(${origin}): targetSize must be a positive integer, got ${opts.targetSize}`);
  }
  if (opts.maxShrink !== undefined) {
    if (!Number.isInteger(opts.maxShrink) || opts.maxShrink < 1) {
      throw new RangeError(`decodeImage(${origin}): maxShrink must be a positive integer, got ${opts.maxShrink}`);
    }
    if (opts.targetSize !== undefined) throw new RangeError(`decodeImage(${origin}): give targetSize or maxShrink, not both`);
  }
  if (input.length === 0) throw new ImageDecodeError(origin, 'empty', 'the buffer holds 0 bytes');

  if (opts.targetSize === undefined && (opts.maxShrink ?? 1) < 2) {
    const fast = await decodePlainJpeg(input, origin, maxPixels, opts.arena === true);
    if (fast) return fast;
    // No shrink-on-load to plan, so nothing needs the header first: one libvips call, and the
    // header is read only to explain a failure.
    let decoded: { data: Buffer; info: OutputInfo };
    try {
      decoded = await decodePixels(input, failOn, maxPixels, null);
    } catch (err) {
      const meta = await readHeader(input, origin, failOn, maxPixels);
      throw classify(origin, input, meta.format, err);
    }
    return toRawImage(decoded, origin, decoded.info, 1);
  }

  // Header first: refuse absurd sizes before a single pixel is allocated, and plan the shrink.
  const meta = await readHeader(input, origin, failOn, maxPixels);
  const upright = meta.autoOrient ?? { width: meta.width!, height: meta.height! };
  const shrink = opts.targetSize !== undefined ? shrinkFactor(meta.format, upright.width, upright.height, opts.targetSize) : usableShrink(meta.format, opts.maxShrink!);
  if (shrink === 1) {
    const fast = await decodePlainJpeg(input, origin, maxPixels, opts.arena === true);
    if (fast) return fast;
  }
  let decoded: { data: Buffer; info: OutputInfo };
  try {
    decoded = await decodePixels(input, failOn, maxPixels, shrink > 1 ? { width: Math.ceil(upright.width / shrink), height: Math.ceil(upright.height / shrink) } : null);
  } catch (err) {
    throw classify(origin, input, meta.format, err);
  }
  return toRawImage(decoded, origin, upright, shrink);
}

/** The header, checked: dimensions present and within maxPixels (no pixel is decoded). */
async function readHeader(input: Buffer, origin: string, failOn: 'warning' | 'error', maxPixels: number): Promise<Metadata> {
  let meta: Metadata;
  try {
    meta = await sharp(input, { failOn, limitInputPixels: false }).metadata();
  } catch (err) {
    throw classify(origin, input, undefined, err);
  }
  const { width, height } = meta;
  if (!width || !height) throw new ImageDecodeError(origin, 'corrupt', `the ${meta.format} header has no dimensions`);
  if (width * height > maxPixels) throw tooLarge(origin, width, height, maxPixels);
  return meta;
}

function tooLarge(origin: string, width: number, height: number, maxPixels: number): ImageDecodeError {
  return new ImageDecodeError(
    origin,
    'too-large',
    `${width}×${height} = ${(width * height / 1e6).toFixed(1)} megapixels exceeds the limit of ${(maxPixels / 1e6).toFixed(1)} megapixels`,
  );
}

/**
 * A plain JPEG (no EXIF rotation, no ICC profile, YCbCr/grey/RGB) decoded by libturbojpeg at full
 * resolution, or null to let sharp do it: library missing, another format, or anything TurboJPEG
 * reports — a warning included, so sharp's own `failOn` rules and error messages still apply.
 */
async function decodePlainJpeg(input: Buffer, origin: string, maxPixels: number, inArena: boolean): Promise<RawImage | null> {
  if (detectImageFormat(input) !== 'jpeg') return null;
  const tj = turboJpeg();
  if (!tj || !plainJpeg(input)) return null;
  const header = tj.header(input);
  if (!header || !rgbColorspace(header.colorspace) || header.width < 1 || header.height < 1) return null;
  const { width, height } = header;
  if (width * height > maxPixels) throw tooLarge(origin, width, height, maxPixels);
  // Unzeroed: TurboJPEG writes every byte or the result is dropped.
  const frame = inArena ? allocateArenaFrame(width * height * 3) : null;
  const data = frame?.data ?? new Uint8Array(Buffer.allocUnsafeSlow(width * height * 3).buffer, 0, width * height * 3);
  try {
    await tj.decodeRgb(input, header, data);
  } catch {
    frame?.release();
    return null;
  }
  return { data, width, height, channels: 3, origin, sourceWidth: width, sourceHeight: height, shrink: 1, ...(frame ? { release: frame.release } : {}) };
}

/** Which decoder full-resolution JPEGs go through, for the startup log. */
export function jpegDecoderNote(): string {
  const tj = turboJpeg();
  return tj ? `libturbojpeg (${tj.library})` : `libvips: ${turboJpegUnavailable()}`;
}

/** Upright 8-bit RGB pixels, alpha over white, optionally shrunk on load to `size`. */
function decodePixels(input: Buffer, failOn: 'warning' | 'error', maxPixels: number, size: { width: number; height: number } | null): Promise<{ data: Buffer; info: OutputInfo }> {
  let pipeline = sharp(input, { failOn, limitInputPixels: maxPixels, autoOrient: true });
  if (size) pipeline = pipeline.resize(size.width, size.height, { fit: 'fill', kernel: 'linear', fastShrinkOnLoad: true });
  // toColourspace('srgb') replicates grey, maps 16-bit to 8-bit and CMYK to sRGB; flatten drops alpha.
  return pipeline.flatten({ background: WHITE }).toColourspace('srgb').removeAlpha().raw({ depth: 'uchar' }).toBuffer({ resolveWithObject: true });
}

function toRawImage({ data, info }: { data: Buffer; info: OutputInfo }, origin: string, upright: { width: number; height: number }, shrink: number): RawImage {
  if (info.channels !== 3 || data.length !== info.width * info.height * 3) {
    // Guard against a pipeline surprise rather than hand the model mis-strided pixels.
    throw new ImageDecodeError(
      origin,
      'unsupported',
      `decoder produced ${info.channels} channels of ${info.width}×${info.height} (${data.length} bytes), expected RGB`,
    );
  }
  return {
    data: new Uint8Array(data.buffer, data.byteOffset, data.length),
    width: info.width,
    height: info.height,
    channels: 3,
    origin,
    sourceWidth: upright.width,
    sourceHeight: upright.height,
    shrink,
  };
}

/** The integer shrink-on-load factor for an upright w×h image decoded for targetSize (1 = none). */
export function shrinkFactor(format: string | undefined, w: number, h: number, targetSize: number | undefined): number {
  if (targetSize === undefined) return 1;
  return usableShrink(format, Math.floor(Math.min(w, h) / (2 * targetSize)));
}

/** `s` where decoding a `format` image shrunk by s is cheaper than decoding it whole, else 1. */
export function usableShrink(format: string | undefined, s: number): number {
  // Only formats whose decoder can itself decode at a reduced scale; PNG/TIFF would be fully
  // decoded anyway and then shrunk by a filter that is not the reference one.
  if (format !== 'jpeg' && format !== 'webp') return 1;
  // s = 2 on a JPEG gives no DCT scaling in sharp (it halves the scale for libjpeg rounding), only
  // a non-reference resize, so start at 3 (short side ≥ 6× the target); WebP scales freely.
  const min = format === 'jpeg' ? 3 : 2;
  return s >= min ? s : 1;
}

/** Turn a sharp/libvips failure into an ImageDecodeError with a reason code. */
function classify(origin: string, input: Buffer, format: string | undefined, err: unknown): ImageDecodeError {
  const message = err instanceof Error ? err.message : String(err);
  const detail = firstLines(message);
  if (/exceeds pixel limit|pixel limit/i.test(message)) {
    return new ImageDecodeError(origin, 'too-large', detail, { cause: err });
  }
  const fmt = format ?? detectImageFormat(input);
  // The bytes decide where they can: libvips also says "premature end" for damaged JPEG entropy
  // data that runs into a marker, and which of its warnings comes first varies between runs; a
  // TIFF cut before its image directory is an "unsupported image format" to libvips, a cut WebP
  // a "corrupt header".
  const missingEnd = endMarkerMissing(fmt, input);
  if (/unsupported image format/i.test(message) && missingEnd !== true) {
    return new ImageDecodeError(origin, 'unsupported', `${describeStart(input)}; ${detail}`, { cause: err });
  }
  const truncatedMessage = !/corrupt/i.test(message) && /premature end|truncat|unexpected end|end of (file|stream|data)/i.test(message);
  if (missingEnd ?? truncatedMessage) {
    return new ImageDecodeError(origin, 'truncated', `${fmt ?? 'image'} data ends early (${input.length} bytes); ${detail}`, { cause: err });
  }
  return new ImageDecodeError(origin, 'corrupt', `${fmt ?? 'image'} data is damaged; ${detail}`, { cause: err });
}

function firstLines(message: string): string {
  const lines = [...new Set(message.split('\n').map((l) => l.trim()).filter(Boolean))];
  return lines.slice(0, 3).join(' / ');
}

/** The container formats recognised by their magic bytes (sources check frames with these too). */
export type ImageFormat = 'jpeg' | 'png' | 'webp' | 'tiff' | 'bmp';

/** The image format of encoded bytes by their magic bytes, or undefined. */
export function detectImageFormat(b: Uint8Array): ImageFormat | undefined {
  const ascii = (from: number, to: number) => String.fromCharCode(...b.subarray(from, to));
  if (b.length >= 3 && b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff) return 'jpeg';
  if (b.length >= 8 && b[0] === 0x89 && b[1] === 0x50 && b[2] === 0x4e && b[3] === 0x47 && b[4] === 0x0d && b[5] === 0x0a && b[6] === 0x1a && b[7] === 0x0a) return 'png';
  if (b.length >= 12 && ascii(0, 4) === 'RIFF' && ascii(8, 12) === 'WEBP') return 'webp';
  if (b.length >= 4 && ((b[0] === 0x49 && b[1] === 0x49 && b[2] === 0x2a && b[3] === 0x00) || (b[0] === 0x4d && b[1] === 0x4d && b[2] === 0x00 && b[3] === 0x2a))) return 'tiff';
  if (b.length >= 14 && b[0] === 0x42 && b[1] === 0x4d) return 'bmp';
  return undefined;
}

/** A JPEG, PNG, WebP or TIFF that does not reach its end was cut off; undefined for other formats. */
function endMarkerMissing(format: string | undefined, b: Buffer): boolean | undefined {
  const complete = encodedImageComplete(format, b);
  return complete === undefined ? undefined : !complete;
}

/**
 * Whether the encoded bytes of a `format` image ('jpeg', 'png', 'webp', 'tiff') reach the end
 * their own structure declares — false means the data was cut off (a half-written file, a
 * connection closed mid-body); undefined for formats whose end the bytes do not tell.
 *
 * - JPEG: the end-of-image marker (EOI) of the image itself. Usually in the last bytes; else the
 *   marker segments are walked by their lengths and the entropy-coded data scanned, so an EXIF
 *   thumbnail's own EOI does not count and data after the image (a phone's Motion Photo video, a
 *   maker trailer) is allowed.
 * - PNG: the IEND chunk, found the same way (in the last bytes, else by walking the chunks).
 * - WebP: the length the RIFF header declares.
 * - TIFF: the first image directory (its offset is in the header; writers often put it last) and
 *   the strips or tiles of image data it lists.
 */
export function encodedImageComplete(format: string | undefined, data: Uint8Array): boolean | undefined {
  const b = Buffer.from(data.buffer, data.byteOffset, data.length);
  const n = b.length;
  if (format === 'jpeg') {
    // The fast answer for nearly every file: EOI within the last KiB (encoders may pad a little).
    if (b.lastIndexOf(JPEG_EOI, n - 2) >= Math.max(2, n - 1024)) return true;
    return jpegReachesEoi(b);
  }
  if (format === 'png') {
    if (b.indexOf(PNG_IEND, Math.max(8, n - 1024)) >= 0) return true;
    for (let i = 8; i + 12 <= n; ) {
      const length = b.readUInt32BE(i);
      if (b.toString('latin1', i + 4, i + 8) === 'IEND') return true;
      i += 12 + length;
    }
    return false;
  }
  if (format === 'webp') return n >= 8 && n >= 8 + b.readUInt32LE(4);
  if (format === 'tiff') return tiffComplete(b);
  return undefined;
}

/** Bytes per value of the TIFF field types (BYTE, ASCII, SHORT, LONG, RATIONAL, ... DOUBLE, IFD). */
const TIFF_TYPE_BYTES = [0, 1, 1, 2, 4, 8, 1, 1, 2, 4, 8, 4, 8, 4];

/**
 * The first image directory of a classic TIFF, its lists of strips or tiles and the image data
 * they locate all lie inside the bytes.
 */
function tiffComplete(b: Buffer): boolean {
  const n = b.length;
  if (n < 8) return false;
  const le = b[0] === 0x49;
  const u16 = (at: number) => (le ? b.readUInt16LE(at) : b.readUInt16BE(at));
  const u32 = (at: number) => (le ? b.readUInt32LE(at) : b.readUInt32BE(at));
  const ifd = u32(4);
  if (ifd + 2 > n) return false;
  const entries = u16(ifd);
  if (ifd + 2 + 12 * entries + 4 > n) return false;
  type Values = { type: number; count: number; at: number };
  /** Where an entry's values are (inline when they fit in 4 bytes), null for a type not known here, false when past the end. */
  const values = (e: number): Values | null | false => {
    const type = u16(e + 2);
    const count = u32(e + 4);
    const size = TIFF_TYPE_BYTES[type];
    if (!size) return null;
    const bytes = size * count;
    const at = bytes <= 4 ? e + 8 : u32(e + 8);
    return at + bytes <= n ? { type, count, at } : false;
  };
  let offsets: Values | null = null;
  let lengths: Values | null = null;
  for (let k = 0; k < entries; k++) {
    const e = ifd + 2 + 12 * k;
    const tag = u16(e);
    // Only the fields that locate the image data: a stray offset in some other field is libtiff's
    // warning at most, not a cut file.
    if (tag !== 273 && tag !== 324 && tag !== 279 && tag !== 325) continue;
    const v = values(e);
    if (v === false) return false;
    if (tag === 273 || tag === 324) offsets = v; // StripOffsets, TileOffsets
    else lengths = v; // StripByteCounts, TileByteCounts
  }
  if (offsets && lengths && offsets.count === lengths.count) {
    const read = (v: Values, i: number) => (v.type === 3 ? u16(v.at + 2 * i) : v.type === 4 ? u32(v.at + 4 * i) : 0);
    for (let i = 0; i < offsets.count; i++) if (read(offsets, i) + read(lengths, i) > n) return false;
  }
  return true;
}

const JPEG_EOI = Buffer.from([0xff, 0xd9]);
/** The IEND chunk: length 0, type "IEND", its fixed CRC. */
const PNG_IEND = Buffer.from([0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82]);

/** Walks a JPEG from its SOI: true when its EOI marker is reached, false when the bytes end first or the structure breaks. */
function jpegReachesEoi(b: Buffer): boolean {
  const n = b.length;
  let i = 2;
  while (i + 1 < n) {
    if (b[i] !== 0xff) return false; // a marker must start here
    const m = b[i + 1]!;
    if (m === 0xff) {
      i++; // fill byte
      continue;
    }
    if (m === 0xd9) return true;
    if (m === 0x01 || (m >= 0xd0 && m <= 0xd7)) {
      i += 2; // TEM, RSTn: no length
      continue;
    }
    if (i + 3 >= n) return false;
    const length = b.readUInt16BE(i + 2);
    if (length < 2) return false;
    i += 2 + length;
    if (m !== 0xda) continue;
    // After SOS: entropy-coded data up to the next marker (FF 00 is a stuffed FF, FF D0–D7 a restart).
    for (;;) {
      const j = b.indexOf(0xff, i);
      if (j < 0 || j + 1 >= n) return false;
      const next = b[j + 1]!;
      if (next === 0x00 || (next >= 0xd0 && next <= 0xd7)) i = j + 2;
      else if (next === 0xff) i = j + 1;
      else {
        i = j;
        break;
      }
    }
  }
  return false;
}

/** "starts with 3c 21 64 6f (looks like HTML/XML text)" — what the caller actually received. */
function describeStart(b: Buffer): string {
  const hex = [...b.subarray(0, 8)].map((x) => x.toString(16).padStart(2, '0')).join(' ');
  const text = b.subarray(0, 64).toString('latin1').trimStart().toLowerCase();
  let guess = '';
  if (text.startsWith('<')) guess = ' (looks like HTML/XML text, not an image)';
  else if (text.startsWith('{') || text.startsWith('[')) guess = ' (looks like JSON text, not an image)';
  else if (b[0] === 0x42 && b[1] === 0x4d) guess = ' (BMP, which this build does not read)';
  return `${b.length} bytes starting with ${hex}${guess}`;
}
