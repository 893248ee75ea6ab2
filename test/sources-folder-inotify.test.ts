/**
 * The folder source on a system with no inotify watch left (fs.inotify.max_user_watches reached:
 * fs.watch throws ENOSPC). chokidar reported the error and then said `ready` while watching
 * nothing, so the source was `running` and never saw another file. Simulated here by making
 * fs.watch throw for the test's folders (its own file: the patch holds for the whole worker).
 */
import test from 'ava';
import fs from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { syncBuiltinESMExports } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { filter, firstValueFrom, take, timeout, toArray } from 'rxjs';
import sharp from 'sharp';
import { FolderWatchSource } from '../agent/sources/index.js';

const realWatch = fs.watch;
const blocked: string[] = [];

test.before(() => {
  // chokidar and the source import `watch` from node:fs: syncBuiltinESMExports updates those bindings.
  (fs as { watch: unknown }).watch = (path: fs.PathLike, ...rest: unknown[]) => {
    if (blocked.some((dir) => String(path).startsWith(dir))) {
      const err: NodeJS.ErrnoException = new Error(`ENOSPC: System limit for number of file watchers reached, watch '${String(path)}'`);
      err.code = 'ENOSPC';
      err.syscall = 'watch';
      throw err;
    }
    return (realWatch as (...args: unknown[]) => fs.FSWatcher)(path, ...rest);
  };
  syncBuiltinESMExports();
});

test.after.always(() => {
  fs.watch = realWatch;
  syncBuiltinESMExports();
});

test('folder: with no inotify watch left the folder is polled instead, the status says so, and no file is missed', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'shelfwatch-noinotify-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  blocked.push(dir);
  const jpeg = await sharp({ create: { width: 16, height: 12, channels: 3, background: '#a03030' } }).jpeg().toBuffer();

  const src = new FolderWatchSource('cam', { type: 'folder', path: dir, pattern: '*.jpg', stableMs: 100 });
  const frames = firstValueFrom(src.frames$.pipe(take(2), toArray(), timeout(15_000)));
  // One file while the watch starts, one once it runs.
  await writeFile(join(dir, 'early.jpg'), jpeg);
  const running = await firstValueFrom(src.status$.pipe(filter((s) => s.state === 'running'), timeout(10_000)));
  t.regex(running.lastError ?? '', new RegExp(`^watching ${dir}: ENOSPC: System limit for number of file watchers reached.*; polling the folder instead \\(raise fs\\.inotify\\.max_user_watches`));
  await writeFile(join(dir, 'later.jpg'), jpeg);
  const got = await frames;
  t.deepEqual(got.map((f) => f.origin).sort(), [join(dir, 'early.jpg'), join(dir, 'later.jpg')]);
  t.like(src.status(), { state: 'stopped', frames: 2, errors: 1 });
});
