import test from 'ava';
import { existsSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, readdir, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join, relative, resolve } from 'node:path';
import sharp from 'sharp';
import { checkDatasetCommand, generateDatasetCommand } from '../agent/commands/dataset.js';
import { DatasetLayoutError, goodsIdOf, loadDataset, scanDataset } from '../pipelines/dataset.js';
import { CATEGORY_DEFECTS, generateGoodsDataset, goodsIdFor } from '../pipelines/synthetic-goods.js';

const MAGNETIC_TILE = resolve('../shared/datasets/magnetic_tile');
const hasMagneticTile = existsSync(join(MAGNETIC_TILE, 'train', 'good'));

const temps: string[] = [];
async function tempDir(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'shelfwatch-dataset-'));
  temps.push(d);
  return d;
}
test.after.always(async () => {
  for (const d of temps) await rm(d, { recursive: true, force: true });
});

async function writeJpeg(file: string, width: number, height: number, grey = 128): Promise<void> {
  await mkdir(dirname(file), { recursive: true });
  await sharp({ create: { width, height, channels: 3, background: { r: grey, g: grey, b: grey } } }).jpeg().toFile(file);
}

/** A one-channel PNG mask; `value(x, y)` gives each pixel. */
async function writeMask(file: string, width: number, height: number, value: (x: number, y: number) => number): Promise<void> {
  await mkdir(dirname(file), { recursive: true });
  const px = new Uint8Array(width * height);
  for (let y = 0; y < height; y++) for (let x = 0; x < width; x++) px[y * width + x] = value(x, y);
  await sharp(px, { raw: { width, height, channels: 1 } }).toColourspace('b-w').png().toFile(file);
}
const square = (x: number, y: number) => (x >= 4 && x < 12 && y >= 4 && y < 12 ? 255 : 0);

(hasMagneticTile ? test : test.skip)('scans magnetic_tile (one category, MVTec layout): counts, pairs and the reference order', async (t) => {
  const { categories, problems } = await scanDataset(MAGNETIC_TILE);
  t.deepEqual(problems, []);
  t.is(categories.length, 1);
  const c = categories[0]!;
  t.is(c.name, 'magnetic_tile');
  t.is(c.train.length, 762);
  t.is(c.test.length, 578);
  t.deepEqual(c.defects, ['blowhole', 'break', 'crack', 'fray', 'uneven']);
  const perFolder: Record<string, number> = {};
  for (const i of c.test) perFolder[i.defect ?? 'good'] = (perFolder[i.defect ?? 'good'] ?? 0) + 1;
  t.deepEqual(perFolder, { blowhole: 115, break: 85, crack: 57, fray: 32, good: 190, uneven: 99 });
  // Every defect image has its <name>_mask.png; good images have none.
  for (const i of c.test) {
    if (i.defect === null) t.is(i.mask, null);
    else t.is(i.mask, join(MAGNETIC_TILE, 'ground_truth', i.defect, `${i.name}_mask.png`));
    t.is(i.goodsId, null, 'magnetic_tile names are not GoodsAD names');
  }
  // The reference README's test order: defect folder, then file name, in byte order.
  const firstOf = (folder: string) => c.test.findIndex((i) => (i.defect ?? 'good') === folder);
  t.is(c.test[0]!.file, join(MAGNETIC_TILE, 'test/blowhole/exp1_num_108719.jpg'));
  t.is(c.test[firstOf('break')]!.name, 'exp1_num_116934');
  t.is(c.test[firstOf('break') + 1]!.name, 'exp1_num_194173');
  t.is(c.test[firstOf('fray')]!.name, 'exp0_num_797');
  t.is(c.test[firstOf('good')]!.name, 'exp1_num_106729');
  t.is(c.test[firstOf('uneven')]!.name, 'exp0_num_461');
  t.is(c.train[0]!.name, 'exp0_num_743', 'train/good in byte order');
  const brk = c.test[firstOf('break')]!;
  t.deepEqual([brk.width, brk.height], [592, 247]);
});

(hasMagneticTile ? test : test.skip)('a root of categories (here a symbolic link) is told apart from a category root', async (t) => {
  const root = await tempDir();
  await symlink(MAGNETIC_TILE, join(root, 'magnetic_tile'));
  await mkdir(join(root, 'not_a_category'));
  const { categories, problems } = await scanDataset(root, { checkImages: false });
  t.deepEqual(problems, []);
  t.deepEqual(categories.map((c) => [c.name, c.train.length, c.test.length]), [['magnetic_tile', 762, 578]]);
  t.is(categories[0]!.test[0]!.width, undefined, 'no headers read without checkImages');
  const unknown = await scanDataset(root, { categories: ['magnetic_tile', 'screw'], checkImages: false });
  t.deepEqual(unknown.problems.map((p) => p.problem), ["unknown category 'screw' (found: magnetic_tile)"]);
  t.is(unknown.categories.length, 1);
});

test('goods ids come from 6-digit GoodsAD names only', (t) => {
  t.is(goodsIdOf('101002'), '101');
  t.is(goodsIdOf('10100'), null);
  t.is(goodsIdOf('exp1_num_108719'), null);
  t.is(goodsIdOf('1010023'), null);
});

test('a generated GoodsAD dataset scans clean, with goods ids and <name>.png masks accepted too', async (t) => {
  const root = await tempDir();
  const g = await generateGoodsDataset(root, { seed: 3, categories: ['drink_can', 'food_box'], goodsPerCategory: 2, trainPerGoods: 2, testGoodPerGoods: 1, testDefectPerGoods: 1, size: 64 });
  const { categories, problems } = await scanDataset(root);
  t.deepEqual(problems, []);
  t.deepEqual(categories.map((c) => c.name), ['drink_can', 'food_box']);
  for (const c of categories) {
    const cat = c.name as 'drink_can' | 'food_box';
    t.deepEqual(c.defects, [...CATEGORY_DEFECTS[cat]]);
    t.is(c.train.length, 4);
    t.is(c.test.length, 2 + 2 * CATEGORY_DEFECTS[cat].length);
    t.deepEqual([...new Set([...c.train, ...c.test].map((i) => i.goodsId))].sort(), [goodsIdFor(cat, 0), goodsIdFor(cat, 1)]);
    for (const i of c.test) {
      t.is(i.mask !== null, i.defect !== null);
      t.deepEqual([i.width, i.height], [64, 64]);
    }
  }
  t.is(categories.reduce((n, c) => n + c.train.length + c.test.length, 0), g.images.length);

  // Rename every mask to the <name>.png form some MVTec copies use.
  for (const d of CATEGORY_DEFECTS.drink_can) {
    const dir = join(root, 'drink_can', 'ground_truth', d);
    for (const f of await readdir(dir)) await rename(join(dir, f), join(dir, f.replace('_mask.png', '.png')));
  }
  const again = await scanDataset(root, { categories: ['drink_can'] });
  t.deepEqual(again.problems, []);
  t.true(again.categories[0]!.test.filter((i) => i.defect !== null).every((i) => i.mask!.endsWith(`${i.name}.png`)));
});

test('a broken layout lists every problem at once, each naming its file', async (t) => {
  const root = await tempDir();
  const cat = join(root, 'bottles');
  // A healthy core: two train images, two good and three defect test images with masks.
  await writeJpeg(join(cat, 'train/good/000.jpg'), 16, 16);
  await writeJpeg(join(cat, 'train/good/001.jpg'), 16, 16);
  await writeJpeg(join(cat, 'test/good/100.jpg'), 16, 16);
  await writeJpeg(join(cat, 'test/good/101.jpg'), 16, 16);
  await writeJpeg(join(cat, 'test/dent/200.jpg'), 16, 16);
  await writeMask(join(cat, 'ground_truth/dent/200_mask.png'), 16, 16, square);
  // Good images may have masks (some copies ship them) as long as they are all zero…
  await writeMask(join(cat, 'ground_truth/good/100_mask.png'), 16, 16, () => 0);
  // …and here is everything that can go wrong:
  await writeJpeg(join(cat, 'test/dent/201.jpg'), 16, 16); // no mask
  await writeMask(join(cat, 'ground_truth/dent/299_mask.png'), 16, 16, square); // no image
  await writeJpeg(join(cat, 'test/dent/202.jpg'), 16, 16);
  await writeMask(join(cat, 'ground_truth/dent/202_mask.png'), 20, 16, square); // wrong size
  await writeJpeg(join(cat, 'test/dent/203.jpg'), 16, 16);
  await writeMask(join(cat, 'ground_truth/dent/203_mask.png'), 16, 16, (x) => (x < 5 ? 0 : x < 10 ? 128 : 255)); // not binary
  await writeJpeg(join(cat, 'test/dent/204.jpg'), 16, 16);
  await writeMask(join(cat, 'ground_truth/dent/204_mask.png'), 16, 16, () => 0); // empty defect mask
  await writeJpeg(join(cat, 'test/dent/205.jpg'), 16, 16);
  await writeFile(join(cat, 'ground_truth/dent/205_mask.png'), 'not a png'); // unreadable mask
  await mkdir(join(cat, 'test/scratch'), { recursive: true });
  await writeFile(join(cat, 'test/scratch/300.jpg'), 'not a jpeg'); // unreadable image
  await writeMask(join(cat, 'ground_truth/scratch/300_mask.png'), 16, 16, square);
  await writeMask(join(cat, 'ground_truth/good/101_mask.png'), 16, 16, square); // good image marked defective
  await mkdir(join(cat, 'test/empty_defect'), { recursive: true }); // a defect folder without images
  await writeFile(join(cat, 'test/notes.txt'), 'ignored: not an image');
  await writeFile(join(cat, 'test/.DS_Store'), 'ignored: hidden');
  // A category without training images and one without test images.
  await writeJpeg(join(root, 'no_train/test/good/000.jpg'), 16, 16);
  await writeJpeg(join(root, 'no_test/train/good/000.jpg'), 16, 16);

  const { categories, problems } = await scanDataset(root, { categories: ['bottles', 'no_test', 'no_train', 'cans'], concurrency: 2 });
  t.deepEqual(categories.map((c) => c.name), ['bottles', 'no_test', 'no_train']);
  const found = problems.map((p) => `${p.category} ${p.path.slice(root.length + 1)}: ${p.problem}`).sort();
  const expected = [
    "cans cans: unknown category 'cans' (found: bottles, no_test, no_train)",
    'bottles bottles/test/dent/201.jpg: defect image without a mask (expected ground_truth/dent/201_mask.png)',
    'bottles bottles/ground_truth/dent/299_mask.png: mask without an image (expected test/dent/299.<ext>)',
    'bottles bottles/ground_truth/dent/202_mask.png: mask is 20×16 but its image is 16×16',
    'bottles bottles/ground_truth/dent/203_mask.png: mask is not binary: holds values 0, 128, 255 … (expected 0 and one other value)',
    'bottles bottles/ground_truth/dent/204_mask.png: mask of a defect image is empty (all zero)',
    'bottles bottles/test/empty_defect: defect folder holds no image',
    'bottles bottles/ground_truth/good/101_mask.png: mask of a good image marks 64 pixel(s) as defective (must be all zero)',
    'no_test no_test/test: no test images (test/ is missing or holds no image)',
    'no_train no_train/train/good: no training images (train/good/ is missing or holds no image)',
  ];
  for (const e of expected) t.true(found.includes(e), `reported: ${e}\nfound:\n${found.join('\n')}`);
  const unreadableMask = found.find((f) => f.startsWith('bottles bottles/ground_truth/dent/205_mask.png: unreadable mask: '));
  const unreadableImage = found.find((f) => f.startsWith('bottles bottles/test/scratch/300.jpg: unreadable image: '));
  t.truthy(unreadableMask, found.join('\n'));
  t.truthy(unreadableImage, found.join('\n'));
  t.is(found.length, expected.length + 2, `exactly the broken things are reported:\n${found.join('\n')}`);

  // loadDataset throws once, listing them all.
  const err = await t.throwsAsync(loadDataset(root, { categories: ['bottles', 'no_test', 'no_train', 'cans'] }), { instanceOf: DatasetLayoutError });
  t.is(err!.problems.length, found.length);
  t.regex(err!.message, new RegExp(`^dataset ${root.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: 12 problems\\n`));
  for (const p of err!.problems) t.true(err!.message.includes(`${p.path}: ${p.problem}`), `the message lists ${p.path}`);
});

test('masks pair whatever their image extension and its case; nested folders are reported, not skipped', async (t) => {
  const root = await tempDir();
  const cat = join(root, 'cans');
  await writeJpeg(join(cat, 'train/good/000.jpg'), 16, 16);
  await writeJpeg(join(cat, 'test/good/100.jpg'), 16, 16);
  await writeJpeg(join(cat, 'test/dent/200.jpg'), 16, 16);
  await writeMask(join(cat, 'ground_truth/dent/200_mask.PNG'), 16, 16, square);
  await writeJpeg(join(cat, 'test/dent/201.JPG'), 16, 16);
  await mkdir(join(cat, 'ground_truth/dent'), { recursive: true });
  await sharp(join(cat, 'ground_truth/dent/200_mask.PNG')).tiff({ compression: 'lzw' }).toFile(join(cat, 'ground_truth/dent/201.tif'));
  const clean = await scanDataset(root);
  t.deepEqual(clean.problems, []);
  t.deepEqual(clean.categories[0]!.test.map((i) => i.mask && basename(i.mask)), ['200_mask.PNG', '201.tif', null]);

  // Two masks for one image, whatever their extensions, is still ambiguous.
  await writeMask(join(cat, 'ground_truth/dent/200_mask.png'), 16, 16, square);
  // Images and masks one folder further down would otherwise silently drop out of the metrics.
  await writeJpeg(join(cat, 'train/good/batch2/001.jpg'), 16, 16);
  await writeJpeg(join(cat, 'test/good/batch2/101.jpg'), 16, 16);
  await writeJpeg(join(cat, 'test/dent/batch2/202.jpg'), 16, 16);
  await writeMask(join(cat, 'ground_truth/dent/batch2/202_mask.png'), 16, 16, square);
  const { problems } = await scanDataset(root);
  t.deepEqual(problems.map((p) => `${relative(root, p.path)}: ${p.problem}`).sort(), [
    'cans/ground_truth/dent/200_mask.png: two masks for test/dent/200.jpg: 200_mask.PNG and 200_mask.png',
    'cans/ground_truth/dent/batch2: folder inside ground_truth/dent/: the layout has no nested folders, so its images are not used',
    'cans/test/dent/batch2: folder inside test/dent/: the layout has no nested folders, so its images are not used',
    'cans/test/good/batch2: folder inside test/good/: the layout has no nested folders, so its images are not used',
    'cans/train/good/batch2: folder inside train/good/: the layout has no nested folders, so its images are not used',
  ]);
});

test('a missing root or a root without categories is reported, not thrown', async (t) => {
  const root = await tempDir();
  const missing = await scanDataset(join(root, 'nope'));
  t.deepEqual(missing.problems.map((p) => p.problem), ['dataset root does not exist or is not a folder']);
  await mkdir(join(root, 'photos'));
  const empty = await scanDataset(root);
  t.deepEqual(empty.problems.map((p) => p.problem), ['no category folders (expected <root>/<category>/train/good/ or <root>/train/good/)']);
  await t.throwsAsync(loadDataset(root), { instanceOf: DatasetLayoutError, message: /1 problem\n/ });
});

test('dataset generate writes a checked dataset; dataset check reports counts, goods ids and problems', async (t) => {
  const out = join(await tempDir(), 'goods');
  const logs: string[] = [];
  const summary = await generateDatasetCommand({ out, seed: 8, categories: ['drink_bottle', 'cigarette_box'], goodsPerCategory: 2, trainPerGoods: 2, testGoodPerGoods: 1, testDefectPerGoods: 1, size: 64, log: (l) => logs.push(l) });
  t.is(summary.images, 2 * (2 + 1 + 4) + 2 * (2 + 1 + 3)); // per goods: train, good, one per defect type
  t.is(summary.masks, 2 * 4 + 2 * 3);
  t.deepEqual(summary.categories.map((c) => [c.name, c.train, c.testGood, c.goods]), [
    ['drink_bottle', 4, 2, ['101', '102']],
    ['cigarette_box', 4, 2, ['601', '602']],
  ]);
  t.deepEqual(summary.categories[1]!.testDefect, { deformation: 2, opened: 2, surface_damage: 2 });
  t.true(summary.categories.every((c) => c.defectArea !== null && c.defectArea.min >= 0.001 && c.defectArea.max <= 0.1));
  t.regex(logs.at(-1)!, /generated 26\/26 images \(100 %\)/);
  await t.throwsAsync(generateDatasetCommand({ out, seed: 8 }), { message: /is not empty/ });

  const report = await checkDatasetCommand(out);
  t.true(report.ok);
  t.deepEqual(report.categories.map((c) => c.name), ['cigarette_box', 'drink_bottle']);
  const bottle = report.categories[1]!;
  t.deepEqual(bottle.testDefect, { cap_half_open: 2, cap_open: 2, surface_anomaly: 2, surface_damage: 2 });
  t.deepEqual(bottle.goods, { '101': 7, '102': 7 });
  t.is(bottle.masks, 8);
  t.deepEqual(bottle.sizes, { distinct: 1, smallest: '64×64', largest: '64×64' });
  t.regex(report.text, /drink_bottle: train 4 · test 10 \(good 2, cap_half_open 2, cap_open 2, surface_anomaly 2, surface_damage 2\) · masks 8/);
  t.regex(report.text, /goods ids \(2\): 101 ×7, 102 ×7/);
  t.regex(report.text, /no problems found$/);

  // Break it: the report lists the problem and is not ok.
  const victim = join(out, 'drink_bottle', 'ground_truth', 'cap_open');
  const [first] = await readdir(victim);
  await copyFile(join(victim, first!), join(victim, '109999_mask.png'));
  const broken = await checkDatasetCommand(out, { categories: ['drink_bottle'] });
  t.false(broken.ok);
  t.is(broken.problems.length, 1);
  t.regex(broken.text, /1 problem:\n {2}\[drink_bottle\] .*109999_mask\.png: mask without an image/);
});
