/**
 * `shelfwatch dataset generate` writes a synthetic dataset in the GoodsAD layout;
 * `shelfwatch dataset check` scans a dataset (MVTec AD / GoodsAD layout) and reports its contents
 * and every layout problem at once.
 */
import { readdir, stat } from 'node:fs/promises';
import { resolve } from 'node:path';
import { scanDataset, type DatasetCategory, type DatasetProblem } from '../../pipelines/dataset.js';
import { generateGoodsDataset, type GenerateGoodsOptions, type GoodsCategory, type ProductKind } from '../../pipelines/synthetic-goods.js';

export interface GenerateDatasetCommandOptions extends Omit<GenerateGoodsOptions, 'onImage'> {
  /** Output folder; must not exist yet or be empty. */
  out: string;
  /** Scan the written dataset afterwards (pairs, sizes, binary masks). Default true. */
  verify?: boolean;
  /** Progress lines (default: none). */
  log?: (line: string) => void;
}

export interface GeneratedCategorySummary {
  name: GoodsCategory;
  kind: ProductKind;
  goods: string[];
  train: number;
  testGood: number;
  testDefect: Record<string, number>;
  /** Smallest and largest defect area as a fraction of the image. */
  defectArea: { min: number; max: number } | null;
}

export interface GenerateDatasetSummary {
  out: string;
  seed: number;
  size: number;
  images: number;
  masks: number;
  ms: number;
  categories: GeneratedCategorySummary[];
}

async function isEmptyOrMissing(dir: string): Promise<boolean> {
  const s = await stat(dir).catch(() => null);
  if (s === null) return true;
  if (!s.isDirectory()) throw new Error(`${dir} exists and is not a folder`);
  return (await readdir(dir)).length === 0;
}

export async function generateDatasetCommand(o: GenerateDatasetCommandOptions): Promise<GenerateDatasetSummary> {
  const out = resolve(o.out);
  if (!(await isEmptyOrMissing(out))) throw new Error(`${out} is not empty: choose a new or empty folder (old files would mix with the new dataset)`);
  const started = performance.now();
  const log = o.log;
  let lastPct = -1;
  const generated = await generateGoodsDataset(out, {
    ...o,
    onImage: (_image, done, total) => {
      const pct = Math.floor((done / total) * 10) * 10;
      if (log && pct !== lastPct) {
        lastPct = pct;
        log(`generated ${done}/${total} images (${pct} %)`);
      }
    },
  });
  if (o.verify ?? true) {
    const { problems } = await scanDataset(out);
    if (problems.length > 0) throw new Error(`the generated dataset in ${out} fails its own check:\n${formatProblems(problems)}`);
  }
  const pixels = generated.size * generated.size;
  const categories = generated.categories.map((c): GeneratedCategorySummary => {
    const mine = generated.images.filter((i) => i.category === c.name);
    const testDefect: Record<string, number> = {};
    for (const d of c.defects) testDefect[d] = mine.filter((i) => i.defect === d).length;
    const areas = mine.filter((i) => i.defect !== null).map((i) => i.defectPixels / pixels);
    return {
      name: c.name,
      kind: c.kind,
      goods: c.goods,
      train: mine.filter((i) => i.split === 'train').length,
      testGood: mine.filter((i) => i.split === 'test' && i.defect === null).length,
      testDefect,
      defectArea: areas.length > 0 ? { min: Math.min(...areas), max: Math.max(...areas) } : null,
    };
  });
  return {
    out,
    seed: o.seed,
    size: generated.size,
    images: generated.images.length,
    masks: generated.images.filter((i) => i.mask !== null).length,
    ms: Math.round(performance.now() - started),
    categories,
  };
}

export function formatGenerateSummary(s: GenerateDatasetSummary): string {
  const lines = [`wrote ${s.images} images and ${s.masks} masks (${s.size}×${s.size}, seed ${s.seed}) to ${s.out} in ${(s.ms / 1000).toFixed(1)} s`];
  for (const c of s.categories) {
    const defects = Object.entries(c.testDefect)
      .map(([d, n]) => `${d} ${n}`)
      .join(', ');
    const area = c.defectArea ? ` · defect area ${(c.defectArea.min * 100).toFixed(2)}–${(c.defectArea.max * 100).toFixed(2)} %` : '';
    lines.push(`  ${c.name} (${c.kind}, goods ${c.goods.join(', ')}): train ${c.train} · test good ${c.testGood}${defects ? `, ${defects}` : ''}${area}`);
  }
  return lines.join('\n');
}

// ---------------------------------------------------------------------------------------------

export interface CategoryReport {
  name: string;
  root: string;
  train: number;
  testGood: number;
  /** Test images per defect folder. */
  testDefect: Record<string, number>;
  /** Test images paired with a mask. */
  masks: number;
  /** Goods ids (GoodsAD 6-digit names) with their image counts; empty for other naming. */
  goods: Record<string, number>;
  /** Distinct image sizes seen (only when headers were read). */
  sizes: { distinct: number; smallest: string; largest: string } | null;
}

export interface DatasetCheckReport {
  ok: boolean;
  root: string;
  categories: CategoryReport[];
  problems: DatasetProblem[];
  /** The report as printable text. */
  text: string;
}

function categoryReport(c: DatasetCategory): CategoryReport {
  const testDefect: Record<string, number> = {};
  for (const d of c.defects) testDefect[d] = 0;
  let testGood = 0;
  let masks = 0;
  for (const i of c.test) {
    if (i.defect === null) testGood++;
    else testDefect[i.defect] = (testDefect[i.defect] ?? 0) + 1;
    if (i.mask !== null) masks++;
  }
  const goods: Record<string, number> = {};
  const sizes = new Map<string, number>();
  for (const i of [...c.train, ...c.test]) {
    if (i.goodsId !== null) goods[i.goodsId] = (goods[i.goodsId] ?? 0) + 1;
    if (i.width !== undefined && i.height !== undefined) sizes.set(`${i.width}×${i.height}`, i.width * i.height);
  }
  const bySize = [...sizes].sort((a, b) => a[1] - b[1] || (a[0] < b[0] ? -1 : 1));
  return {
    name: c.name,
    root: c.root,
    train: c.train.length,
    testGood,
    testDefect,
    masks,
    goods,
    sizes: bySize.length > 0 ? { distinct: bySize.length, smallest: bySize[0]![0], largest: bySize[bySize.length - 1]![0] } : null,
  };
}

export function formatProblems(problems: DatasetProblem[]): string {
  return problems.map((p) => `  ${p.category ? `[${p.category}] ` : ''}${p.path}: ${p.problem}`).join('\n');
}

export function formatCheckReport(r: Omit<DatasetCheckReport, 'text'>): string {
  const lines = [`dataset ${r.root}: ${r.categories.length} categor${r.categories.length === 1 ? 'y' : 'ies'}`];
  for (const c of r.categories) {
    const defectTotal = Object.values(c.testDefect).reduce((a, b) => a + b, 0);
    const defects = Object.entries(c.testDefect)
      .map(([d, n]) => `${d} ${n}`)
      .join(', ');
    lines.push(`  ${c.name}: train ${c.train} · test ${c.testGood + defectTotal} (good ${c.testGood}${defects ? `, ${defects}` : ''}) · masks ${c.masks}`);
    const goodsIds = Object.keys(c.goods).sort();
    if (goodsIds.length > 0) lines.push(`    goods ids (${goodsIds.length}): ${goodsIds.map((g) => `${g} ×${c.goods[g]}`).join(', ')}`);
    if (c.sizes) lines.push(`    image sizes: ${c.sizes.distinct === 1 ? c.sizes.smallest : `${c.sizes.distinct} distinct, ${c.sizes.smallest} … ${c.sizes.largest}`}`);
  }
  lines.push(r.problems.length === 0 ? 'no problems found' : `${r.problems.length} problem${r.problems.length === 1 ? '' : 's'}:\n${formatProblems(r.problems)}`);
  return lines.join('\n');
}

/** Scans a dataset and reports counts per category, split and defect, goods ids and problems. */
export async function checkDatasetCommand(root: string, o: { categories?: string[]; checkImages?: boolean; concurrency?: number } = {}): Promise<DatasetCheckReport> {
  const abs = resolve(root);
  const { categories, problems } = await scanDataset(abs, o);
  const report = { ok: problems.length === 0, root: abs, categories: categories.map(categoryReport), problems };
  return { ...report, text: formatCheckReport(report) };
}
