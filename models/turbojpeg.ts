/**
 * The fast JPEG path: libjpeg-turbo's TurboJPEG API (the system's libturbojpeg.so.0), called
 * through koffi. It decodes a frame in about 40 % of the CPU time a libvips pipeline takes for
 * the same pixels (`npm run bench:preprocess`): libvips adds thread hand-offs, a fresh output
 * allocation and its own copies around the same libjpeg-turbo decoder. Event thumbnails are
 * encoded here too, in about a quarter of sharp's time for a 224×224 JPEG.
 *
 * The pixels are the same as sharp's, bit for bit (test/turbojpeg.test.ts): both run
 * libjpeg-turbo's accurate integer IDCT with fancy upsampling. Only plain JPEGs take this path —
 * see {@link plainJpeg}; anything else, and any failure here, goes to sharp, which applies EXIF
 * orientation and ICC profiles, converts CMYK and explains errors.
 *
 * Optional by design: without koffi's prebuilt binary or libturbojpeg (Debian: `apt-get install
 * libturbojpeg0`; Ubuntu/Jetson: `libturbojpeg`), {@link turboJpeg} returns null and says why in
 * {@link turboJpegUnavailable}; decoding then stays on sharp, only slower.
 */
import { createRequire } from 'node:module';

/** TurboJPEG constants (turbojpeg.h, stable since libjpeg-turbo 1.4). */
const TJPF_RGB = 0;
const TJSAMP_444 = 0;
const TJCS_RGB = 0;
const TJCS_YCbCr = 1;
const TJCS_GRAY = 2;
/** Treat libjpeg warnings (corrupt entropy data, premature end) as errors: sharp then decides. */
const TJFLAG_STOPONWARNING = 8192;
/** Refuse progressive JPEGs with absurd scan counts (a decoding-time bomb) rather than grind. */
const TJFLAG_LIMITSCANS = 16384;

/** Library names tried in order (the SONAME first: the unversioned link needs the -dev package). */
const LIBRARY_NAMES = ['libturbojpeg.so.0', 'libturbojpeg.so', 'libturbojpeg.dylib', 'turbojpeg.dll'];

export interface JpegHeader {
  width: number;
  height: number;
}

export interface TurboJpeg {
  /** Where the library was loaded from (its name as dlopen found it). */
  library: string;
  /** Width and height from the frame header, or null when TurboJPEG cannot read it. */
  header(jpeg: Uint8Array): (JpegHeader & { colorspace: number }) | null;
  /**
   * Decodes to 8-bit interleaved RGB in `out` (width·height·3 bytes) on one of koffi's worker
   * threads. Rejects with TurboJPEG's message on any error or warning.
   */
  decodeRgb(jpeg: Uint8Array, header: JpegHeader, out: Uint8Array): Promise<void>;
  /** Encodes interleaved RGB (width·height·3 bytes) as a baseline 4:4:4 JPEG of `quality` (1–100). */
  encodeRgb(pixels: Uint8Array, width: number, height: number, quality: number): Promise<Buffer>;
}

type Handle = unknown;
interface Bindings {
  init(): Handle;
  destroy(h: Handle): number;
  header(h: Handle, jpeg: Uint8Array, size: number, w: number[], hh: number[], subsamp: number[], cs: number[]): number;
  decode: {
    async(h: Handle, jpeg: Uint8Array, size: number, dst: Uint8Array, w: number, pitch: number, hh: number, pf: number, flags: number, cb: (err: unknown, rc: number) => void): void;
  };
  errorString(h: Handle): string;
  initCompress(): Handle;
  compress: {
    async(h: Handle, src: Uint8Array, w: number, pitch: number, hh: number, pf: number, jpeg: unknown[], size: number[], subsamp: number, quality: number, flags: number, cb: (err: unknown, rc: number) => void): void;
  };
  free(p: unknown): void;
  view(p: unknown, length: number): ArrayBuffer;
}

let loaded: TurboJpeg | null | undefined;
let unavailableReason = '';

/** The TurboJPEG binding, loaded once; null when koffi or the library is missing. */
export function turboJpeg(): TurboJpeg | null {
  if (loaded !== undefined) return loaded;
  if (process.env['SHELFWATCH_TURBOJPEG'] === '0') {
    unavailableReason = 'disabled by SHELFWATCH_TURBOJPEG=0';
    return (loaded = null);
  }
  let koffi: typeof import('koffi');
  try {
    koffi = createRequire(import.meta.url)('koffi') as typeof import('koffi');
  } catch (err) {
    unavailableReason = `koffi did not load (${firstLine(err)})`;
    return (loaded = null);
  }
  const errors: string[] = [];
  for (const name of LIBRARY_NAMES) {
    let lib: ReturnType<typeof koffi.load>;
    try {
      lib = koffi.load(name);
    } catch (err) {
      errors.push(firstLine(err));
      continue;
    }
    try {
      const b: Bindings = {
        init: lib.func('void *tjInitDecompress()') as Bindings['init'],
        destroy: lib.func('int tjDestroy(void *h)') as Bindings['destroy'],
        header: lib.func('int tjDecompressHeader3(void *h, const uint8_t *buf, unsigned long size, _Out_ int *w, _Out_ int *hh, _Out_ int *subsamp, _Out_ int *cs)') as Bindings['header'],
        decode: lib.func('int tjDecompress2(void *h, const uint8_t *buf, unsigned long size, uint8_t *dst, int w, int pitch, int hh, int pf, int flags)') as unknown as Bindings['decode'],
        errorString: lib.func('const char *tjGetErrorStr2(void *h)') as Bindings['errorString'],
        initCompress: lib.func('void *tjInitCompress()') as Bindings['initCompress'],
        compress: lib.func('int tjCompress2(void *h, const uint8_t *src, int w, int pitch, int hh, int pf, _Out_ void **jpeg, _Inout_ unsigned long *size, int subsamp, int quality, int flags)') as unknown as Bindings['compress'],
        free: lib.func('void tjFree(void *p)') as Bindings['free'],
        view: (p, length) => koffi.view(p as never, length),
      };
      return (loaded = bind(name, b));
    } catch (err) {
      // An old libturbojpeg without tjDecompressHeader3/tjGetErrorStr2 (before 1.4/2.0).
      errors.push(`${name}: ${firstLine(err)}`);
      lib.unload();
    }
  }
  unavailableReason = `libturbojpeg not found (install libturbojpeg0; ${errors[0] ?? 'no candidates'})`;
  return (loaded = null);
}

/** Why {@link turboJpeg} returned null ('' when it did not, or was not asked yet). */
export function turboJpegUnavailable(): string {
  return unavailableReason;
}

function bind(library: string, b: Bindings): TurboJpeg {
  return {
    library,
    header(jpeg) {
      const h = b.init();
      if (!h) return null;
      try {
        const w = [0];
        const hh = [0];
        const subsamp = [0];
        const cs = [0];
        if (b.header(h, jpeg, jpeg.length, w, hh, subsamp, cs) !== 0) return null;
        return { width: w[0]!, height: hh[0]!, colorspace: cs[0]! };
      } finally {
        b.destroy(h);
      }
    },
    decodeRgb(jpeg, { width, height }, out) {
      if (out.length < width * height * 3) return Promise.reject(new RangeError(`turbojpeg: output of ${out.length} bytes is too small for ${width}×${height} RGB`));
      // A handle per call: TurboJPEG handles are not thread-safe and calls may overlap.
      const h = b.init();
      if (!h) return Promise.reject(new Error('turbojpeg: tjInitDecompress failed'));
      return new Promise<void>((resolve, reject) => {
        try {
          b.decode.async(h, jpeg, jpeg.length, out, width, 0, height, TJPF_RGB, TJFLAG_STOPONWARNING | TJFLAG_LIMITSCANS, (err, rc) => {
            const message = err ? firstLine(err) : rc !== 0 ? b.errorString(h) : null;
            b.destroy(h);
            if (message === null) resolve();
            else reject(new Error(`turbojpeg: ${message}`));
          });
        } catch (err) {
          // koffi's queue of async calls is full (max_async_calls): the caller falls back to sharp.
          b.destroy(h);
          reject(new Error(`turbojpeg: ${firstLine(err)}`));
        }
      });
    },
    encodeRgb(pixels, width, height, quality) {
      if (!(Number.isInteger(width) && Number.isInteger(height) && width > 0 && height > 0 && pixels.length === width * height * 3)) {
        return Promise.reject(new RangeError(`turbojpeg: ${pixels.length} bytes are not ${width}×${height} RGB`));
      }
      if (!(Number.isInteger(quality) && quality >= 1 && quality <= 100)) return Promise.reject(new RangeError(`turbojpeg: quality must be an integer in 1..100, got ${quality}`));
      const h = b.initCompress();
      if (!h) return Promise.reject(new Error('turbojpeg: tjInitCompress failed'));
      // TurboJPEG allocates the output (tjAlloc); it is copied into a Buffer and freed here.
      const out: unknown[] = [null];
      const size = [0];
      return new Promise<Buffer>((resolve, reject) => {
        try {
          b.compress.async(h, pixels, width, 0, height, TJPF_RGB, out, size, TJSAMP_444, quality, 0, (err, rc) => {
            let result: Buffer | Error;
            if (err || rc !== 0 || !out[0]) result = new Error(`turbojpeg: ${err ? firstLine(err) : b.errorString(h)}`);
            else result = Buffer.copyBytesFrom(new Uint8Array(b.view(out[0], size[0]!)));
            if (out[0]) b.free(out[0]);
            b.destroy(h);
            if (result instanceof Error) reject(result);
            else resolve(result);
          });
        } catch (err) {
          b.destroy(h);
          reject(new Error(`turbojpeg: ${firstLine(err)}`));
        }
      });
    },
  };
}

/** Colour spaces TurboJPEG turns into the same RGB as sharp (CMYK/YCCK need sharp's conversion). */
export function rgbColorspace(cs: number): boolean {
  return cs === TJCS_YCbCr || cs === TJCS_GRAY || cs === TJCS_RGB;
}

/**
 * Whether a JPEG's markers (before its first scan) leave nothing for sharp to do beyond decoding:
 * no EXIF orientation other than 1 (sharp turns the image upright) and no embedded ICC profile
 * (sharp converts to sRGB through it). False for anything it cannot read.
 */
export function plainJpeg(b: Uint8Array): boolean {
  const n = b.length;
  const u16 = (at: number) => (b[at]! << 8) | b[at + 1]!;
  let i = 2;
  while (i + 4 <= n) {
    if (b[i] !== 0xff) return false;
    const m = b[i + 1]!;
    if (m === 0xff) {
      i++;
      continue;
    }
    if (m === 0xda || m === 0xd9) return true; // start of scan: every metadata marker is behind us
    if (m === 0x01 || (m >= 0xd0 && m <= 0xd7)) {
      i += 2;
      continue;
    }
    const length = u16(i + 2);
    if (length < 2 || i + 2 + length > n) return false;
    const body = i + 4;
    if (m === 0xe2 && startsWith(b, body, ICC_PROFILE)) return false;
    if (m === 0xe1 && startsWith(b, body, EXIF) && exifOrientation(b, body + EXIF.length, i + 2 + length) !== 1) return false;
    i += 2 + length;
  }
  return false;
}

const EXIF = [0x45, 0x78, 0x69, 0x66, 0x00, 0x00]; // "Exif\0\0"
const ICC_PROFILE = [...'ICC_PROFILE'].map((c) => c.charCodeAt(0)).concat(0);

function startsWith(b: Uint8Array, at: number, magic: number[]): boolean {
  if (at + magic.length > b.length) return false;
  for (let k = 0; k < magic.length; k++) if (b[at + k] !== magic[k]) return false;
  return true;
}

/** The Orientation tag (0x0112) of IFD0 of the TIFF structure at [start, end); 1 when absent, 0 when unreadable. */
function exifOrientation(b: Uint8Array, start: number, end: number): number {
  if (start + 8 > end) return 0;
  const le = b[start] === 0x49 && b[start + 1] === 0x49;
  if (!le && !(b[start] === 0x4d && b[start + 1] === 0x4d)) return 0;
  const u16 = (at: number) => (le ? b[at]! | (b[at + 1]! << 8) : (b[at]! << 8) | b[at + 1]!);
  const u32 = (at: number) => (le ? (b[at]! | (b[at + 1]! << 8) | (b[at + 2]! << 16)) + b[at + 3]! * 2 ** 24 : b[at]! * 2 ** 24 + ((b[at + 1]! << 16) | (b[at + 2]! << 8) | b[at + 3]!));
  const ifd = start + u32(start + 4);
  if (ifd + 2 > end) return 0;
  const entries = u16(ifd);
  for (let k = 0; k < entries; k++) {
    const e = ifd + 2 + 12 * k;
    if (e + 12 > end) return 0;
    if (u16(e) === 0x0112) return u16(e + 8);
  }
  return 1;
}

function firstLine(err: unknown): string {
  return (err instanceof Error ? err.message : String(err)).split('\n')[0]!;
}
