import test from 'ava';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { Random } from '../models/random.js';
import { ShelfScene } from '../pipelines/shelf-scene.js';
import {
  CATEGORY_DEFECTS,
  CATEGORY_KIND,
  encodeJpeg,
  generateGoodsDataset,
  GOODS_CATEGORIES,
  goodsIdFor,
  imageSeed,
  KIND_DEFECTS,
  PRODUCT_KINDS,
  renderProduct,
  type GoodsCategory,
} from '../pipelines/synthetic-goods.js';

const temps: string[] = [];
async function tempDir(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'shelfwatch-goods-'));
  temps.push(d);
  return d;
}
test.after.always(async () => {
  for (const d of temps) await rm(d, { recursive: true, force: true });
});

async function listTree(dir: string, prefix = ''): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(join(dir, prefix), { withFileTypes: true })) {
    const rel = prefix ? `${prefix}/${e.name}` : e.name;
    if (e.isDirectory()) out.push(...(await listTree(dir, rel)));
    else out.push(rel);
  }
  return out.sort();
}

async function decodeRgb(buf: Buffer | string): Promise<{ data: Buffer; width: number; height: number }> {
  const { data, info } = await sharp(buf).removeAlpha().toColourspace('srgb').raw().toBuffer({ resolveWithObject: true });
  return { data, width: info.width, height: info.height };
}

/** Pixels that differ between two RGB buffers, as a 0/1 map. */
function changed(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length / 3);
  for (let i = 0; i < out.length; i++) out[i] = a[3 * i] !== b[3 * i] || a[3 * i + 1] !== b[3 * i + 1] || a[3 * i + 2] !== b[3 * i + 2] ? 1 : 0;
  return out;
}

/** Marks every pixel within `r` (Chebyshev distance) of a set pixel. */
function dilate(mask: Uint8Array, w: number, h: number, r: number): Uint8Array {
  const rows = new Uint8Array(mask.length);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      if (!mask[y * w + x]) continue;
      for (let xx = Math.max(0, x - r); xx <= Math.min(w - 1, x + r); xx++) rows[y * w + xx] = 1;
    }
  }
  const out = new Uint8Array(mask.length);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      if (!rows[y * w + x]) continue;
      for (let yy = Math.max(0, y - r); yy <= Math.min(h - 1, y + r); yy++) out[yy * w + x] = 1;
    }
  }
  return out;
}

// --- renderProduct -------------------------------------------------------------------------------

test('every defect changes exactly the pixels of its mask, covering 0.1–10 % of the image', (t) => {
  const size = 144;
  let cases = 0;
  for (const kind of PRODUCT_KINDS) {
    for (const defect of KIND_DEFECTS[kind]) {
      for (const seed of [1, 2, 3]) {
        const normal = renderProduct(kind, '123', new Random(seed), { width: size, height: size });
        const broken = renderProduct(kind, '123', new Random(seed), { width: size, height: size, defect });
        t.true(normal.mask.every((v) => v === 0), `${kind}: a normal rendering has an empty mask`);
        t.true(broken.mask.every((v) => v === 0 || v === 1), `${kind}/${defect}: mask is 0/1`);
        const diff = changed(normal.rgb, broken.rgb);
        let mismatches = 0;
        let area = 0;
        for (let i = 0; i < diff.length; i++) {
          area += broken.mask[i]!;
          if (diff[i] !== broken.mask[i]) mismatches++;
        }
        t.is(mismatches, 0, `${kind}/${defect} seed ${seed}: changed pixels and mask differ in ${mismatches} pixels`);
        const fraction = area / (size * size);
        t.true(fraction >= 0.001 && fraction <= 0.1, `${kind}/${defect} seed ${seed}: defect covers ${(fraction * 100).toFixed(3)} %`);
        cases++;
      }
    }
  }
  t.is(cases, 3 * Object.values(KIND_DEFECTS).reduce((a, d) => a + d.length, 0));
});

test('renderProduct is deterministic per generator state; goods ids and states vary the image', (t) => {
  const o = { width: 96, height: 120 };
  const a = renderProduct('bottle', '101', new Random(5), o);
  const b = renderProduct('bottle', '101', new Random(5), o);
  t.deepEqual(Buffer.from(a.rgb), Buffer.from(b.rgb));
  t.is(a.rgb.length, 96 * 120 * 3);
  const otherState = renderProduct('bottle', '101', new Random(6), o);
  const otherGoods = renderProduct('bottle', '102', new Random(5), o);
  const otherDesign = renderProduct('bottle', '101', new Random(5), { ...o, designSeed: 1 });
  for (const [name, other] of [['state', otherState], ['goods id', otherGoods], ['design seed', otherDesign]] as const) {
    const d = changed(a.rgb, other.rgb).reduce((s, v) => s + v, 0);
    t.true(d > 0.05 * 96 * 120, `another ${name} changes the image (${d} pixels)`);
  }
});

/** Hue histogram (12 bins) of the saturated pixels: the product's colours, blind to the grey shelf. */
function productHues(rgb: Uint8Array): number[] {
  const h = new Array<number>(12).fill(0);
  let n = 0;
  for (let i = 0; i < rgb.length; i += 3) {
    const [r, g, b] = [rgb[i]!, rgb[i + 1]!, rgb[i + 2]!];
    const mx = Math.max(r, g, b);
    const c = mx - Math.min(r, g, b);
    if (c < 40) continue;
    const hue = mx === r ? (((g - b) / c) % 6 + 6) % 6 : mx === g ? 2 + (b - r) / c : 4 + (r - g) / c;
    h[Math.min(11, Math.floor(hue * 2))]! += 1;
    n++;
  }
  return h.map((v) => v / n);
}

test('normal images of one goods id differ slightly; another goods id looks different', (t) => {
  const size = 128;
  const l1 = (a: number[], b: number[]) => a.reduce((s, v, i) => s + Math.abs(v - b[i]!), 0);
  for (const kind of PRODUCT_KINDS) {
    let sameMax = 0;
    let otherMin = Infinity;
    const ids = ['101', '102', '103', '104'];
    const first = ids.map((id) => renderProduct(kind, id, new Random(1), { width: size, height: size }).rgb);
    for (let g = 0; g < ids.length; g++) {
      const again = renderProduct(kind, ids[g]!, new Random(2), { width: size, height: size }).rgb;
      t.false(Buffer.from(again).equals(Buffer.from(first[g]!)), 'two normal images of a goods id are not identical');
      sameMax = Math.max(sameMax, l1(productHues(first[g]!), productHues(again)));
      for (let o = g + 1; o < ids.length; o++) otherMin = Math.min(otherMin, l1(productHues(first[g]!), productHues(first[o]!)));
    }
    t.true(sameMax < otherMin, `${kind}: colours within a goods id (≤ ${sameMax.toFixed(3)}) vary less than across goods ids (≥ ${otherMin.toFixed(3)})`);
  }
});

test('renderProduct rejects an unsupported defect, an unknown kind and a bad size, naming them', (t) => {
  const e = t.throws(() => renderProduct('can', '201', new Random(1), { width: 64, height: 64, defect: 'cap_open' }));
  t.regex(e!.message, /can cannot show defect 'cap_open'.*supported: .*surface_damage/);
  t.throws(() => renderProduct('crate' as never, '201', new Random(1), { width: 64, height: 64 }), { message: /unknown product kind 'crate'/ });
  t.throws(() => renderProduct('box', '201', new Random(1), { width: 8, height: 64 }), { message: /8×64/ });
});

// --- generateGoodsDataset ----------------------------------------------------------------------

const SMALL = { goodsPerCategory: 2, trainPerGoods: 2, testGoodPerGoods: 1, testDefectPerGoods: 1, size: 96, jpegQuality: 90 };

test('the generator writes the GoodsAD layout, byte-identical for a seed, different for another seed', async (t) => {
  const [a, b, c] = [await tempDir(), await tempDir(), await tempDir()];
  const ga = await generateGoodsDataset(a, { seed: 11, ...SMALL });
  await generateGoodsDataset(b, { seed: 11, ...SMALL });
  await generateGoodsDataset(c, { seed: 12, ...SMALL });
  const files = await listTree(a);
  t.deepEqual(await listTree(b), files);
  t.deepEqual(await listTree(c), files, 'the layout depends on the options only');
  let differing = 0;
  for (const f of files) {
    const [x, y, z] = await Promise.all([readFile(join(a, f)), readFile(join(b, f)), readFile(join(c, f))]);
    t.true(x.equals(y), `${f} is byte-identical for the same seed`);
    if (!x.equals(z)) differing++;
  }
  const jpegs = files.filter((f) => f.endsWith('.jpg')).length;
  t.true(differing >= jpegs, `another seed changes every image and most masks (${differing} of ${files.length} files differ)`);

  // Layout and naming.
  t.deepEqual(ga.categories.map((x) => x.name), [...GOODS_CATEGORIES]);
  for (const cat of GOODS_CATEGORIES) {
    const mine = files.filter((f) => f.startsWith(`${cat}/`));
    const folders = [...new Set(mine.map((f) => f.split('/').slice(1, 3).join('/')))].sort();
    const defects = CATEGORY_DEFECTS[cat];
    t.deepEqual(folders, [...defects.map((d) => `ground_truth/${d}`), ...defects.map((d) => `test/${d}`), 'test/good', 'train/good'].sort(), cat);
    const goods = [goodsIdFor(cat, 0), goodsIdFor(cat, 1)];
    const names = new Set<string>();
    for (const f of mine) {
      const m = /^[a-z_]+\/(train|test|ground_truth)\/([a-z_]+)\/((\d{3})\d{3})(_mask\.png|\.jpg)$/.exec(f);
      t.truthy(m, `${f} follows <goods3><serial3>.jpg / _mask.png`);
      if (!m) continue;
      t.true(goods.includes(m[4]!), `${f}: goods id ${m[4]} belongs to ${cat}`);
      t.is(m[5] === '_mask.png', m[1] === 'ground_truth', f);
      if (m[5] === '.jpg') {
        t.false(names.has(m[3]!), `${f}: names are unique within a category`);
        names.add(m[3]!);
        if (m[1] === 'test' && m[2] !== 'good') t.true(files.includes(`${cat}/ground_truth/${m[2]}/${m[3]}_mask.png`), `${f} has its mask`);
      }
    }
    t.is(names.size, 2 * (2 + 1 + defects.length));
  }
});

test('generated masks are binary PNGs of the image size, cover 0.1–10 % and mark where the image changed', async (t) => {
  const dir = await tempDir();
  const seed = 4;
  const size = 128;
  const quality = 92;
  const categories: GoodsCategory[] = ['drink_bottle', 'food_box'];
  const g = await generateGoodsDataset(dir, { seed, categories, goodsPerCategory: 1, trainPerGoods: 1, testGoodPerGoods: 1, testDefectPerGoods: 2, size, jpegQuality: quality });
  const defective = g.images.filter((i) => i.defect !== null);
  t.is(defective.length, 2 * (CATEGORY_DEFECTS.drink_bottle.length + CATEGORY_DEFECTS.food_box.length));
  for (const img of g.images) {
    const meta = await sharp(join(dir, img.file)).metadata();
    t.is(meta.format, 'jpeg');
    t.deepEqual([meta.width, meta.height], [size, size]);
  }
  for (const img of defective) {
    const maskFile = join(dir, img.mask!);
    t.is((await sharp(maskFile).metadata()).channels, 1, `${img.mask} is single-channel`);
    const { data, info } = await sharp(maskFile).extractChannel(0).raw().toBuffer({ resolveWithObject: true });
    t.deepEqual([info.width, info.height], [size, size]);
    let area = 0;
    for (const v of data) {
      if (v !== 0 && v !== 255) t.fail(`${img.mask} holds value ${v}`);
      if (v === 255) area++;
    }
    t.is(area, img.defectPixels);
    const fraction = area / (size * size);
    t.true(fraction >= 0.001 && fraction <= 0.1, `${img.mask}: ${(fraction * 100).toFixed(2)} %`);

    // Render the same image without its defect and compare the decoded JPEGs: blocks far from the
    // mask are untouched, pixels inside it changed clearly.
    const serial = Number(img.file.slice(-7, -4));
    const goodsIndex = Number(img.goodsId.slice(1)) - 1;
    const normal = renderProduct(CATEGORY_KIND[img.category], img.goodsId, new Random(imageSeed(seed, img.category, goodsIndex, serial)), { width: size, height: size, designSeed: seed });
    const normalJpeg = await decodeRgb(await encodeJpeg(normal.rgb, size, size, quality));
    const broken = await decodeRgb(join(dir, img.file));
    const mask = new Uint8Array(data.length);
    for (let i = 0; i < data.length; i++) mask[i] = data[i] ? 1 : 0;
    const near = dilate(mask, size, size, 24);
    let outside = 0;
    let insideDiff = 0;
    for (let i = 0; i < mask.length; i++) {
      const d = Math.abs(broken.data[3 * i]! - normalJpeg.data[3 * i]!) + Math.abs(broken.data[3 * i + 1]! - normalJpeg.data[3 * i + 1]!) + Math.abs(broken.data[3 * i + 2]! - normalJpeg.data[3 * i + 2]!);
      if (!near[i] && d !== 0) outside++;
      if (mask[i]) insideDiff += d;
    }
    t.is(outside, 0, `${img.file}: pixels away from the mask are those of the normal rendering`);
    t.true(insideDiff / area > 15, `${img.file}: the masked pixels changed visibly (mean |Δ| ${(insideDiff / area).toFixed(1)})`);
  }
});

test('the generator validates its options with messages naming the option', async (t) => {
  const dir = await tempDir();
  await t.throwsAsync(generateGoodsDataset(dir, { seed: 1, categories: ['drink_bottle', 'milk'] }), { message: /unknown category 'milk'/ });
  await t.throwsAsync(generateGoodsDataset(dir, { seed: 1, size: 10 }), { message: /size must be an integer in \[32, 12000\], got 10/ });
  await t.throwsAsync(generateGoodsDataset(dir, { seed: -1 }), { message: /seed/ });
  await t.throwsAsync(generateGoodsDataset(dir, { seed: 1, trainPerGoods: 990, testGoodPerGoods: 9, testDefectPerGoods: 1 }), { message: /3-digit serial/ });
  t.deepEqual(await readdir(dir), [], 'nothing written on bad options');
});

// --- ShelfScene --------------------------------------------------------------------------------

test('the shelf scene lays out its slots inside the frame, left to right', (t) => {
  const scene = new ShelfScene({ seed: 1, width: 640, height: 360, slots: 4 });
  const boxes = scene.slotBoxes();
  t.is(boxes.length, 4);
  for (let k = 0; k < boxes.length; k++) {
    const b = boxes[k]!;
    t.true(b.x >= 0 && b.y >= 0 && b.x + b.width <= 640 && b.y + b.height <= 360, `slot ${k} lies inside the frame`);
    if (k > 0) t.true(b.x >= boxes[k - 1]!.x + boxes[k - 1]!.width, 'slots do not overlap');
  }
  t.deepEqual(scene.slots().map((s) => s.id), ['slot-1', 'slot-2', 'slot-3', 'slot-4']);
  t.deepEqual(new Set(scene.slots().map((s) => s.kind)).size, 4, 'four different products');
  t.throws(() => new ShelfScene({ seed: 1, slots: 0 }), { message: /slots must be an integer in \[1, 12\], got 0/ });
});

test('shelf frames are deterministic, vary over time, and a defect changes only its mask', async (t) => {
  const scene = new ShelfScene({ seed: 9, width: 480, height: 270, slots: 4 });
  const again = new ShelfScene({ seed: 9, width: 480, height: 270, slots: 4 });
  const f0 = await scene.normalFrame(0);
  t.true(f0.equals(await again.normalFrame(0)), 'same seed and index: same JPEG bytes');
  t.false(f0.equals(await scene.normalFrame(1)), 'frames vary over time');
  t.false(f0.equals(await new ShelfScene({ seed: 10, width: 480, height: 270, slots: 4 }).normalFrame(0)), 'another seed, another shelf');
  const meta = await sharp(f0).metadata();
  t.deepEqual([meta.format, meta.width, meta.height], ['jpeg', 480, 270]);

  const slots = scene.slots();
  const defects = [
    { slot: 0, defect: slots[0]!.defects[0]! },
    { slot: 2, defect: slots[2]!.defects[1]! },
  ];
  const normal = scene.renderFrame(3);
  const broken = scene.renderFrame(3, defects);
  t.deepEqual([...broken.masks.keys()].sort(), [0, 2]);
  // Place the slot masks into the frame and compare with the pixels that changed.
  const frameMask = new Uint8Array(480 * 270);
  for (const [slot, mask] of broken.masks) {
    const b = slots[slot]!.box;
    t.is(mask.length, b.width * b.height, 'a slot mask covers its box');
    for (let y = 0; y < b.height; y++) for (let x = 0; x < b.width; x++) frameMask[(b.y + y) * 480 + b.x + x] = mask[y * b.width + x]!;
  }
  const diff = changed(normal.rgb, broken.rgb);
  let mismatches = 0;
  let area = 0;
  for (let i = 0; i < diff.length; i++) {
    if (diff[i] !== frameMask[i]) mismatches++;
    area += frameMask[i]!;
  }
  t.true(area > 0);
  t.is(mismatches, 0, 'the raw frames differ exactly on the defect masks');
  // After JPEG encoding, differences stay within the blocks that touch the masks.
  const jn = await decodeRgb(await scene.normalFrame(3));
  const jb = await decodeRgb((await scene.frame(3, defects)).jpeg);
  const near = dilate(frameMask, 480, 270, 24);
  const outside = changed(jn.data, jb.data).reduce((s, v, i) => s + (near[i] ? 0 : v), 0);
  t.is(outside, 0, 'encoded frames agree away from the defects');
});

test('shelf scene rejects impossible defects and yields training crops of every slot', async (t) => {
  const scene = new ShelfScene({ seed: 2, width: 400, height: 240, slots: 3 });
  t.throws(() => scene.renderFrame(0, [{ slot: 5, defect: 'opened' }]), { message: /no slot 5/ });
  t.throws(() => scene.renderFrame(0, [{ slot: 1, defect: 'cap_open' }]), { message: /slot 1 \(drink_can, a can\) cannot show 'cap_open'/ });
  t.throws(() => scene.renderFrame(0, [{ slot: 0, defect: 'cap_open' }, { slot: 0, defect: 'surface_damage' }]), { message: /two defects/ });
  const crops = await scene.trainingCrops(2);
  t.deepEqual([...crops.keys()], [0, 1, 2]);
  const boxes = scene.slotBoxes();
  for (const [slot, list] of crops) {
    t.is(list.length, 2);
    const m = await sharp(list[0]!).metadata();
    t.deepEqual([m.width, m.height], [boxes[slot]!.width, boxes[slot]!.height]);
    t.false(list[0]!.equals(list[1]!), 'training crops vary');
  }
  const training = await scene.trainingFrames(1);
  t.false(training[0]!.equals(await scene.normalFrame(0)), 'training frames are not the live frames');
});
