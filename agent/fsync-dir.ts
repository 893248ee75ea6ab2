import { open } from 'node:fs/promises';

/**
 * fsyncs a directory, so that renames and new files in it survive a power cut (the files' own
 * data is synced separately). File systems that cannot fsync a directory (EINVAL) are let be.
 */
export async function fsyncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EINVAL') throw err;
  } finally {
    await fh.close();
  }
}
