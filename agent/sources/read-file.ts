/**
 * Read an image file dropped by another system, with bounds: it must be a regular file (a FIFO
 * would block the reader forever, `/dev/zero` would fill memory — both only need a symlink with
 * an image name), and it is never read past `maxBytes`, even when it grows after the size check.
 */
import { constants, type Stats } from 'node:fs';
import { open } from 'node:fs/promises';

/** Largest image file the folder and replay sources read, unless configured: 64 MiB. */
export const DEFAULT_MAX_FILE_BYTES = 64 * 1024 * 1024;

export async function readRegularFile(path: string, maxBytes: number): Promise<Buffer> {
  // O_NONBLOCK so that opening a FIFO returns at once instead of waiting for a writer.
  const file = await open(path, constants.O_RDONLY | constants.O_NONBLOCK);
  try {
    const info = await file.stat();
    if (!info.isFile()) throw new Error(`${path} is ${describe(info)}, not a regular file`);
    if (info.size > maxBytes) throw new Error(`${path} is ${info.size} bytes, over the ${maxBytes} byte limit`);
    let buf = Buffer.allocUnsafeSlow(Math.min(maxBytes + 1, info.size + 1));
    let len = 0;
    for (;;) {
      if (len === buf.length) {
        if (len > maxBytes) throw new Error(`${path} grew past the ${maxBytes} byte limit while being read`);
        const grown = Buffer.allocUnsafeSlow(Math.min(maxBytes + 1, buf.length * 2));
        buf.copy(grown, 0, 0, len);
        buf = grown;
      }
      const { bytesRead } = await file.read(buf, len, buf.length - len, len);
      if (bytesRead === 0) break;
      len += bytesRead;
    }
    if (len > maxBytes) throw new Error(`${path} grew past the ${maxBytes} byte limit while being read`);
    return len === buf.length ? buf : buf.subarray(0, len);
  } finally {
    await file.close();
  }
}

function describe(info: Stats): string {
  if (info.isDirectory()) return 'a directory';
  if (info.isFIFO()) return 'a named pipe';
  if (info.isCharacterDevice()) return 'a character device';
  if (info.isBlockDevice()) return 'a block device';
  if (info.isSocket()) return 'a socket';
  return 'not a file';
}
