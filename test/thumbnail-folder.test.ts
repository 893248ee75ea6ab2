import test from 'ava';
import { mkdtemp, readdir, rm, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ThumbnailFolder, THUMBNAIL_FILE_RE } from '../agent/thumbnail-folder.js';

const jpeg = (n: number) => Buffer.from([0xff, 0xd8, n, 0xff, 0xd9]);
const name = (i: number, type: 'new' | 'update' = 'new') => ThumbnailFolder.fileName(`cam-s${i}-${1_700_000_000_000 + i}-0123abcd`, type, 1_700_000_000_500 + i);

async function tempDir(t: { teardown(fn: () => Promise<void>): void }): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'shelfwatch-thumbs-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

test('file names follow the event id, and only they match the pattern the folder prunes', (t) => {
  t.is(ThumbnailFolder.fileName('shelf-1-slot_2-1796094439986-2fbbe1e7', 'new', 5), 'shelf-1-slot_2-1796094439986-2fbbe1e7-new.jpg');
  t.is(ThumbnailFolder.fileName('shelf-1-slot_2-1796094439986-2fbbe1e7', 'update', 1796094441499), 'shelf-1-slot_2-1796094439986-2fbbe1e7-update-1796094441499.jpg');
  t.true(THUMBNAIL_FILE_RE.test(name(1)));
  t.true(THUMBNAIL_FILE_RE.test(name(1, 'update')));
  for (const other of ['notes.txt', 'photo.jpg', 'cam-s1-17-0123abcd-new.jpeg', 'cam-s1-17-XYZ-new.jpg', '../cam-s1-17-0123abcd-new.jpg']) t.false(THUMBNAIL_FILE_RE.test(other), other);
});

test('past `keep` files the oldest written are deleted; other files in the folder are left alone', async (t) => {
  const dir = await tempDir(t);
  await writeFile(join(dir, 'notes.txt'), 'mine');
  await writeFile(join(dir, 'photo.jpg'), 'mine too');
  const errors: string[] = [];
  const folder = new ThumbnailFolder(dir, 3, (m) => errors.push(m));
  for (let i = 1; i <= 5; i++) void folder.write(name(i), jpeg(i));
  await folder.idle();
  t.deepEqual((await readdir(dir)).sort(), [name(3), name(4), name(5), 'notes.txt', 'photo.jpg'].sort());
  t.is(folder.deleted, 2);
  t.deepEqual(errors, []);
});

test('thumbnails left by an earlier run count, oldest by modification time, and go first', async (t) => {
  const dir = await tempDir(t);
  // Written in the order 11, 10, 12 (by mtime), names in another order.
  const past = [name(11), name(10), name(12)];
  for (const [i, n] of past.entries()) {
    await writeFile(join(dir, n), jpeg(i));
    const when = new Date(Date.now() - (10 - i) * 60_000);
    await utimes(join(dir, n), when, when);
  }
  const folder = new ThumbnailFolder(dir, 3, () => t.fail('no error expected'));
  await folder.write(name(20), jpeg(20));
  t.deepEqual((await readdir(dir)).sort(), [name(10), name(12), name(20)].sort(), 'the oldest by mtime (11) went');
  await folder.write(name(21), jpeg(21));
  await folder.write(name(22), jpeg(22));
  t.deepEqual((await readdir(dir)).sort(), [name(20), name(21), name(22)].sort());
});

test('a thumbnail written again (an event re-delivered) is one file, now the newest', async (t) => {
  const dir = await tempDir(t);
  const folder = new ThumbnailFolder(dir, 2, () => t.fail('no error expected'));
  await folder.write(name(1), jpeg(1));
  await folder.write(name(2), jpeg(2));
  await folder.write(name(1), jpeg(9));
  await folder.write(name(3), jpeg(3));
  t.deepEqual((await readdir(dir)).sort(), [name(1), name(3)].sort(), 'name(2) was the oldest once name(1) was rewritten');
});

test('the folder is created when missing; a write that fails is reported and the next one still works', async (t) => {
  const root = await tempDir(t);
  const errors: Array<{ message: string; file: string }> = [];
  const folder = new ThumbnailFolder(join(root, 'a', 'b'), 5, (message, { file }) => errors.push({ message, file }));
  await folder.write(name(1), jpeg(1));
  t.deepEqual(await readdir(join(root, 'a', 'b')), [name(1)]);

  const blocked = join(root, 'file-not-dir');
  await writeFile(blocked, 'x');
  const bad = new ThumbnailFolder(blocked, 5, (message, { file }) => errors.push({ message, file }));
  await t.notThrowsAsync(bad.write(name(2), jpeg(2)));
  t.is(errors.length, 1);
  t.regex(errors[0]!.message, /could not write thumbnail file/);
  t.is(errors[0]!.file, join(blocked, name(2)));
});

test('keep must be a whole number ≥ 1', (t) => {
  for (const keep of [0, -1, 2.5, Number.NaN]) t.throws(() => new ThumbnailFolder('/tmp/x', keep, () => undefined), { message: /keep must be an integer ≥ 1/ });
});
