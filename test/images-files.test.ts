/** listImages on paths named one by one (as a shell glob names them). */
import test from 'ava';
import { mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { listImages, type SkippedFile } from '../pipelines/image-files.js';

test('listImages: a dangling link or a link loop named explicitly is reported and skipped, not fatal; a missing path is an error', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'images-files-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const good = join(dir, 'a.jpg');
  await writeFile(good, 'x');
  const dangling = join(dir, 'gone.jpg');
  await symlink(join(dir, 'no-such-file.jpg'), dangling);
  const loop = join(dir, 'loop.jpg');
  await symlink(loop, loop);
  const skipped: SkippedFile[] = [];
  t.deepEqual(await listImages([good, dangling, loop], (s) => skipped.push(s)), [good]);
  t.deepEqual(skipped, [
    { file: dangling, reason: 'broken symbolic link (its target does not exist)' },
    { file: loop, reason: 'symbolic link loop' },
  ]);
  await t.throwsAsync(listImages([join(dir, 'missing.jpg')], () => {}), { message: `${join(dir, 'missing.jpg')}: no such file or folder` });
  // Without onSkip nothing is filtered: the dangling link stays an error naming it.
  await t.throwsAsync(listImages([dangling]), { message: `${dangling}: no such file or folder` });
});
