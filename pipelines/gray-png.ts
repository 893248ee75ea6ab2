/**
 * An 8-bit greyscale PNG encoder for anomaly masks. A mask thumbnail is small and mostly zeros;
 * through sharp each one cost about 1.3 ms of CPU, nearly all of it per-call overhead, and the
 * agent makes one per anomaly event. Here: one zlib call, about 0.03 ms.
 */
import { constants, crc32, deflateSync } from 'node:zlib';

const SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

function chunk(type: string, data: Buffer): Buffer {
  const out = Buffer.alloc(12 + data.length);
  out.writeUInt32BE(data.length, 0);
  out.write(type, 4, 'latin1');
  data.copy(out, 8);
  out.writeUInt32BE(crc32(out.subarray(4, 8 + data.length)), 8 + data.length);
  return out;
}

/** `pixels`: width·height 8-bit grey values, row by row. */
export function encodeGrayPng(pixels: Uint8Array, width: number, height: number): Buffer {
  if (!Number.isInteger(width) || !Number.isInteger(height) || width < 1 || height < 1 || pixels.length !== width * height) {
    throw new RangeError(`encodeGrayPng: ${pixels.length} values for ${width}×${height}`);
  }
  const header = Buffer.alloc(13);
  header.writeUInt32BE(width, 0);
  header.writeUInt32BE(height, 4);
  header[8] = 8; // bit depth
  header[9] = 0; // colour type: greyscale
  // compression 0, filter method 0, no interlace: the zero bytes already there
  const rows = Buffer.alloc((width + 1) * height); // filter type 0 (none) before each row
  for (let y = 0; y < height; y++) rows.set(pixels.subarray(y * width, (y + 1) * width), y * (width + 1) + 1);
  // Run-length matching only: a mask is runs of 0 and 255, and this is about 8× faster than the
  // default search for a few bytes more (224×224: 0.03 against 0.26 ms, 433 against 337 bytes).
  const idat = deflateSync(rows, { strategy: constants.Z_RLE });
  return Buffer.concat([SIGNATURE, chunk('IHDR', header), chunk('IDAT', idat), chunk('IEND', Buffer.alloc(0))]);
}
