/**
 * Scans an anomaly-detection dataset in the MVTec AD layout, which GoodsAD shares:
 *
 *   <root>/<category>/train/good/*.jpg
 *   <root>/<category>/test/good/*.jpg
 *   <root>/<category>/test/<defect>/*.jpg
 *   <root>/<category>/ground_truth/<defect>/<name>_mask.png   (or <name>.png; any image
 *                                                               extension, in any case)
 *
 * The root may also be one category itself (it holds train/ and test/). The scan validates the
 * whole tree first and reports every problem at once — unpaired images and masks, mask sizes that
 * differ from their image, masks that are not binary, unreadable files, empty splits, folders
 * nested below the leaf folders (their images would silently drop out) — so a broken
 * copy is fixed in one go rather than one error per run.
 *
 * Order: plain byte order of file names; the test split is ordered by defect-type folder, then
 * file name (the order the reference implementation uses, 'good' sorting among the defects).
 */
import { readdir, stat } from 'node:fs/promises';
import { basename, extname, join, relative, resolve } from 'node:path';
import sharp from 'sharp';
import { isImageFile } from './image-files.js';

export interface DatasetImage {
  /** Absolute path of the image. */
  file: string;
  /** File name without its extension. */
  name: string;
  category: string;
  split: 'train' | 'test';
  /** Defect folder; null for good images. */
  defect: string | null;
  /** Absolute path of the ground-truth mask; null when there is none (good images). */
  mask: string | null;
  /** First three digits of a 6-digit GoodsAD name (the goods id); null for other names. */
  goodsId: string | null;
  /** Pixel size after EXIF orientation, when the scan read image headers. */
  width?: number;
  height?: number;
}

export interface DatasetCategory {
  name: string;
  /** Absolute path of the category folder. */
  root: string;
  /** train/good images in byte order of their file names. */
  train: DatasetImage[];
  /** Test images by defect folder ('good' included), then file name, both in byte order. */
  test: DatasetImage[];
  /** Defect folders of test/ (not 'good'), byte-sorted. */
  defects: string[];
}

export interface DatasetProblem {
  /** Category name; '' for problems of the root itself. */
  category: string;
  /** The file or folder concerned. */
  path: string;
  problem: string;
}

export interface ScanOptions {
  /** Only these categories (each must exist). Default: every category found. */
  categories?: string[];
  /** Read every image header and decode every mask (sizes, binary masks). Default true. */
  checkImages?: boolean;
  /** Files read at once while checking. Default 4. */
  concurrency?: number;
}

export interface ScanResult {
  categories: DatasetCategory[];
  problems: DatasetProblem[];
}

/** Thrown by loadDataset: the message lists every problem found. */
export class DatasetLayoutError extends Error {
  readonly problems: DatasetProblem[];
  constructor(root: string, problems: DatasetProblem[]) {
    const lines = problems.map((p) => `  ${p.category ? `[${p.category}] ` : ''}${p.path}: ${p.problem}`);
    super(`dataset ${root}: ${problems.length} problem${problems.length === 1 ? '' : 's'}\n${lines.join('\n')}`);
    this.name = 'DatasetLayoutError';
    this.problems = problems;
  }
}

const byteOrder = (a: string, b: string): number => (a < b ? -1 : a > b ? 1 : 0);

/** The goods id of a GoodsAD file name (6 digits: goods id, serial), or null. */
export function goodsIdOf(name: string): string | null {
  return /^\d{6}$/.test(name) ? name.slice(0, 3) : null;
}

interface Listing {
  dirs: string[];
  files: string[];
}

/** Lists a folder (hidden entries skipped); null when it does not exist or is not a folder. */
async function list(dir: string): Promise<Listing | null> {
  let entries;
  try {
    entries = await readdir(dir, { withFileTypes: true });
  } catch {
    return null;
  }
  const dirs: string[] = [];
  const files: string[] = [];
  for (const e of entries) {
    if (e.name.startsWith('.')) continue;
    let isDirectory = e.isDirectory();
    // Datasets are often assembled from symbolic links: follow them (a broken link counts as a file).
    if (e.isSymbolicLink()) isDirectory = (await stat(join(dir, e.name)).catch(() => null))?.isDirectory() ?? false;
    if (isDirectory) dirs.push(e.name);
    else if (e.isFile() || e.isSymbolicLink()) files.push(e.name);
  }
  return { dirs: dirs.sort(byteOrder), files: files.sort(byteOrder) };
}

const stemOf = (file: string): string => basename(file, extname(file));

/** Runs fn over items with at most `limit` in flight; results in input order. */
async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]!);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

/** Result of one pass over a decoded mask. */
export interface MaskStats {
  width: number;
  height: number;
  /** Non-zero pixels. */
  foreground: number;
  /** Null when binary; else the first three distinct values met (0 counted when seen). */
  nonBinary: number[] | null;
}

/**
 * Decodes a mask to one 8-bit channel and checks it holds 0 and at most one other value. Colour
 * masks are reduced to grey first, so differently coloured regions show up as distinct values.
 */
export async function readMaskStats(file: string): Promise<MaskStats> {
  const img = sharp(file, { failOn: 'error' });
  const meta = await img.metadata();
  let pipeline = img;
  if ((meta.channels ?? 1) >= 3) pipeline = pipeline.removeAlpha().greyscale();
  else if ((meta.channels ?? 1) === 2) pipeline = pipeline.removeAlpha();
  const { data, info } = await pipeline.raw().toBuffer({ resolveWithObject: true });
  const ch = info.channels;
  let other = -1;
  let foreground = 0;
  let sawZero = false;
  let nonBinary: number[] | null = null;
  // One pass, stopping at the first third value; channel 0 only (all channels are equal after greyscale).
  for (let i = 0; i < data.length; i += ch) {
    const v = data[i]!;
    if (v === 0) {
      sawZero = true;
      continue;
    }
    foreground++;
    if (v === other) continue;
    if (other === -1) other = v;
    else {
      nonBinary = sawZero ? [0, other, v] : [other, v];
      break;
    }
  }
  return { width: info.width, height: info.height, foreground, nonBinary };
}

async function scanCategory(name: string, dir: string, problems: DatasetProblem[]): Promise<DatasetCategory> {
  const report = (path: string, problem: string) => problems.push({ category: name, path, problem });
  // The layout is flat below each leaf folder; images further down would silently be left out.
  const reportNested = (parent: string, listing: Listing | null) => {
    for (const d of listing?.dirs ?? []) report(join(parent, d), `folder inside ${relative(dir, parent)}/: the layout has no nested folders, so its images are not used`);
  };
  const cat: DatasetCategory = { name, root: dir, train: [], test: [], defects: [] };

  // train/: good/ only.
  const trainDir = join(dir, 'train');
  const train = await list(trainDir);
  if (train !== null) {
    for (const d of train.dirs) if (d !== 'good') report(join(trainDir, d), "train/ holds only good/ (normal images); this folder is not used");
    for (const f of train.files) if (isImageFile(f)) report(join(trainDir, f), 'image directly in train/ (expected train/good/)');
    const good = await list(join(trainDir, 'good'));
    reportNested(join(trainDir, 'good'), good);
    for (const f of good?.files ?? []) {
      if (!isImageFile(f)) continue;
      const stem = stemOf(f);
      cat.train.push({ file: join(trainDir, 'good', f), name: stem, category: name, split: 'train', defect: null, mask: null, goodsId: goodsIdOf(stem) });
    }
  }
  if (cat.train.length === 0) report(join(trainDir, 'good'), 'no training images (train/good/ is missing or holds no image)');

  // ground_truth/<defect>/: masks by folder, keyed by file name.
  const gtDir = join(dir, 'ground_truth');
  const gt = await list(gtDir);
  const masks = new Map<string, Set<string>>();
  for (const d of gt?.dirs ?? []) {
    const l = await list(join(gtDir, d));
    reportNested(join(gtDir, d), l);
    masks.set(d, new Set((l?.files ?? []).filter(isImageFile)));
  }
  for (const f of gt?.files ?? []) if (isImageFile(f)) report(join(gtDir, f), 'mask directly in ground_truth/ (expected ground_truth/<defect>/)');

  // test/<defect or good>/.
  const testDir = join(dir, 'test');
  const test = await list(testDir);
  const usedMasks = new Set<string>();
  for (const f of test?.files ?? []) if (isImageFile(f)) report(join(testDir, f), 'image directly in test/ (expected test/good/ or test/<defect>/)');
  for (const folder of test?.dirs ?? []) {
    const isGood = folder === 'good';
    const l = await list(join(testDir, folder));
    reportNested(join(testDir, folder), l);
    const images = (l?.files ?? []).filter(isImageFile);
    if (!isGood) {
      cat.defects.push(folder);
      if (images.length === 0) report(join(testDir, folder), 'defect folder holds no image');
    }
    // A mask is <stem>_mask.<ext> or <stem>.<ext>, any image extension in any case (MVTec: _mask.png).
    const masksByStem = new Map<string, string[]>();
    for (const m of masks.get(folder) ?? []) {
      const key = stemOf(m);
      masksByStem.set(key, [...(masksByStem.get(key) ?? []), m].sort(byteOrder));
    }
    const stems = new Map<string, string>();
    for (const f of images) {
      const stem = stemOf(f);
      const file = join(testDir, folder, f);
      const twin = stems.get(stem);
      if (twin !== undefined) report(file, `two test images share the name '${stem}' (${twin} and ${f}): masks cannot be paired`);
      stems.set(stem, f);
      const candidates = [...(masksByStem.get(`${stem}_mask`) ?? []), ...(masksByStem.get(stem) ?? [])];
      let mask: string | null = null;
      if (candidates.length > 1) report(join(gtDir, folder, candidates[1]!), `two masks for test/${folder}/${f}: ${candidates.join(' and ')}`);
      if (candidates.length > 0) {
        mask = join(gtDir, folder, candidates[0]!);
        for (const c of candidates) usedMasks.add(`${folder}/${c}`);
      } else if (!isGood) report(file, `defect image without a mask (expected ground_truth/${folder}/${stem}_mask.png)`);
      cat.test.push({ file, name: stem, category: name, split: 'test', defect: isGood ? null : folder, mask, goodsId: goodsIdOf(stem) });
    }
  }
  if (cat.test.length === 0) report(testDir, 'no test images (test/ is missing or holds no image)');
  for (const [folder, files] of masks) {
    for (const m of files) {
      if (usedMasks.has(`${folder}/${m}`)) continue;
      const stem = stemOf(m).replace(/_mask$/, '');
      report(join(gtDir, folder, m), `mask without an image (expected test/${folder}/${stem}.<ext>)`);
    }
  }
  cat.test.sort((a, b) => byteOrder(a.defect ?? 'good', b.defect ?? 'good') || byteOrder(basename(a.file), basename(b.file)));
  cat.defects.sort(byteOrder);
  return cat;
}

/** Reads every image header and every mask of a category; appends what is wrong. */
async function checkCategoryFiles(cat: DatasetCategory, concurrency: number, problems: DatasetProblem[]): Promise<void> {
  const report = (path: string, problem: string) => problems.push({ category: cat.name, path, problem });
  await mapLimit([...cat.train, ...cat.test], concurrency, async (image) => {
    try {
      const meta = await sharp(image.file).metadata();
      if (!meta.width || !meta.height) throw new Error('no pixel size in the header');
      image.width = meta.autoOrient?.width ?? meta.width;
      image.height = meta.autoOrient?.height ?? meta.height;
    } catch (e) {
      report(image.file, `unreadable image: ${(e as Error).message}`);
      return;
    }
    if (image.mask === null) return;
    let stats: MaskStats;
    try {
      stats = await readMaskStats(image.mask);
    } catch (e) {
      report(image.mask, `unreadable mask: ${(e as Error).message}`);
      return;
    }
    if (stats.width !== image.width || stats.height !== image.height) {
      report(image.mask, `mask is ${stats.width}×${stats.height} but its image is ${image.width}×${image.height}`);
    }
    if (stats.nonBinary !== null) {
      report(image.mask, `mask is not binary: holds values ${stats.nonBinary.join(', ')}${stats.nonBinary.length === 3 ? ' …' : ''} (expected 0 and one other value)`);
    }
    if (image.defect === null && stats.foreground > 0) report(image.mask, `mask of a good image marks ${stats.foreground} pixel(s) as defective (must be all zero)`);
    if (image.defect !== null && stats.foreground === 0) report(image.mask, 'mask of a defect image is empty (all zero)');
  });
}

const isDir = async (p: string): Promise<boolean> => (await stat(p).catch(() => null))?.isDirectory() ?? false;

/**
 * Scans a dataset root (a folder of categories, or one category) and validates it. Never throws
 * for layout problems: they are all returned in `problems` (see loadDataset for the throwing form).
 */
export async function scanDataset(root: string, opts: ScanOptions = {}): Promise<ScanResult> {
  const problems: DatasetProblem[] = [];
  const absRoot = resolve(root);
  const concurrency = opts.concurrency ?? 4;
  if (!Number.isInteger(concurrency) || concurrency < 1) throw new RangeError(`scanDataset: concurrency must be a positive integer, got ${String(concurrency)}`);
  if (!(await isDir(absRoot))) return { categories: [], problems: [{ category: '', path: absRoot, problem: 'dataset root does not exist or is not a folder' }] };

  let found: Array<{ name: string; dir: string }>;
  if ((await isDir(join(absRoot, 'train'))) || (await isDir(join(absRoot, 'test')))) {
    found = [{ name: basename(absRoot), dir: absRoot }];
  } else {
    found = [];
    const l = await list(absRoot);
    for (const d of l?.dirs ?? []) {
      const dir = join(absRoot, d);
      if ((await isDir(join(dir, 'train'))) || (await isDir(join(dir, 'test'))) || (await isDir(join(dir, 'ground_truth')))) found.push({ name: d, dir });
    }
    if (found.length === 0) problems.push({ category: '', path: absRoot, problem: 'no category folders (expected <root>/<category>/train/good/ or <root>/train/good/)' });
  }
  if (opts.categories !== undefined) {
    const known = new Set(found.map((f) => f.name));
    for (const c of opts.categories) {
      if (!known.has(c)) problems.push({ category: c, path: join(absRoot, c), problem: `unknown category '${c}' (found: ${[...known].join(', ') || 'none'})` });
    }
    const wanted = new Set(opts.categories);
    found = found.filter((f) => wanted.has(f.name));
  }
  const categories: DatasetCategory[] = [];
  for (const f of found) categories.push(await scanCategory(f.name, f.dir, problems));
  if (opts.checkImages ?? true) for (const cat of categories) await checkCategoryFiles(cat, concurrency, problems);
  return { categories, problems };
}

/** scanDataset, throwing one DatasetLayoutError that lists every problem when there is any. */
export async function loadDataset(root: string, opts: ScanOptions = {}): Promise<DatasetCategory[]> {
  const { categories, problems } = await scanDataset(root, opts);
  if (problems.length > 0) throw new DatasetLayoutError(resolve(root), problems);
  return categories;
}
