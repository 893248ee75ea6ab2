/**
 * Output paths of the commands: checked before a command spends minutes on work it then cannot
 * write (a folder where a file goes, a file where a folder goes, a folder it may not write to),
 * and written through a temp file and a rename, so that a failed run leaves neither half a file
 * nor a stray temp file, and the file that was there before is untouched.
 */
import { constants } from 'node:fs';
import { access, rename, rm, stat, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';

type Stats = Awaited<ReturnType<typeof stat>>;

async function statOrNull(label: string, path: string): Promise<Stats | null> {
  try {
    return await stat(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return null;
    if (code === 'ENOTDIR') return null; // a file above it: checkCreatable names it
    throw new Error(`${label} ${path}: cannot check it (${code ?? (err as Error).message})`);
  }
}

/** The nearest existing folder at or above `dir` (the rest gets created) must be a writable folder. */
async function checkCreatable(label: string, path: string, dir: string): Promise<void> {
  for (let d = resolve(dir); ; d = dirname(d)) {
    // ENOTDIR: something above is a file; walking up finds and names it.
    const s = await stat(d).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT' || err.code === 'ENOTDIR') return null;
      throw new Error(`${label} ${path}: cannot check ${d} (${err.code ?? err.message})`);
    });
    if (s) {
      if (!s.isDirectory()) throw new Error(`${label} ${path}: ${d} is a file, not a folder`);
      try {
        await access(d, constants.W_OK);
      } catch (err) {
        throw new Error(`${label} ${path}: cannot write in ${d} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
      }
      return;
    }
    if (dirname(d) === d) return;
  }
}

/** `path` will be written as a file: it must not be a folder, and its folder must be creatable. */
export async function checkOutputFile(label: string, path: string, example = 'out'): Promise<void> {
  const s = await statOrNull(label, path);
  if (s?.isDirectory()) throw new Error(`${label} ${path}: is a folder; expected a file path (e.g. ${join(path, example)})`);
  await checkCreatable(label, path, dirname(resolve(path)));
}

/** `path` will be a folder the command writes into: it must be a folder or creatable as one. */
export async function checkOutputFolder(label: string, path: string): Promise<void> {
  const s = await statOrNull(label, path);
  if (s && !s.isDirectory()) throw new Error(`${label} ${path}: exists and is not a folder`);
  await checkCreatable(label, path, s ? path : dirname(resolve(path)));
}

const WHY: Record<string, string> = {
  EISDIR: 'a folder of that name is in the way (EISDIR)',
  EACCES: 'permission denied (EACCES)',
  EROFS: 'read-only file system (EROFS)',
  ENOSPC: 'no space left on the device (ENOSPC)',
};

/**
 * Writes `data` to `path` atomically: a temp file in the same folder, then a rename. On failure
 * the temp file is removed, `path` is as it was, and the error names `path`.
 */
export async function writeFileAtomic(path: string, data: string | Uint8Array): Promise<void> {
  const tmp = `${path}.tmp-${process.pid}`;
  try {
    await writeFile(tmp, data);
    await rename(tmp, path);
  } catch (err) {
    await rm(tmp, { force: true }).catch(() => undefined);
    const e = err as NodeJS.ErrnoException;
    throw new Error(`cannot write ${path}: ${(e.code && WHY[e.code]) ?? e.code ?? e.message}`, { cause: err });
  }
}
