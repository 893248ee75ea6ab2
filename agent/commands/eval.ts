/**
 * `shelfwatch eval`: validate a model recipe on a labelled dataset (GoodsAD / MVTec layout) with
 * the agent's own runtime and preprocessing, and compare with the GoodsAD paper.
 *
 * Writes into `out`: results.json (every number), results.md, report.html (self-contained), and
 * by default the cache under `out/.cache` (train features and model inputs, see
 * pipelines/feature-cache.ts). An `out` that already holds an earlier run's results is refused
 * unless `force` (its cache stays usable: `cache: <out>/.cache` with another `out`). Returns the
 * comparison table for the CLI to print (stdout); progress bars and warnings go to stderr, and
 * are silent with `json`.
 *
 * A category whose evaluation fails does not stop the run: it is reported as failed (reason in
 * results.json, results.md and report.html), the outputs are written, and `failed` lists it so
 * that the CLI exits non-zero.
 */
import { mkdir, rm, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type { ProviderChoice } from '../../models/execution-provider.js';
import { loadDataset } from '../../pipelines/dataset.js';
import { renderHtmlReport } from '../../pipelines/eval-html.js';
import { formatTerminalTable, resultsJson, resultsMarkdown } from '../../pipelines/eval-report.js';
import { failedCategories, modeOf, parseModes, type EvaluationResult } from '../../pipelines/eval-types.js';
import { evaluateDataset } from '../../pipelines/evaluate.js';
import { EvalCache } from '../../pipelines/feature-cache.js';
import { selectBackbone } from '../backbones.js';
import { progressBar, type Progress } from '../progress.js';
import { creationTime } from './fit.js';
import { checkOutputFolder, writeFileAtomic } from './output-paths.js';

export interface EvalCommandOptions {
  /** Dataset root: a folder of categories, or one category (train/ test/ ground_truth/). */
  dataset: string;
  categories?: string[];
  backbone?: string;
  backboneId?: string;
  coreset: number;
  seed: number;
  /** Folder of fitted models: reused when they match, new ones written there. */
  models?: string;
  out: string;
  /** Overwrite the results of an earlier run in `out` (default: refuse). */
  force?: boolean;
  /** Cache folder (default `<out>/.cache`); false = no cache (commander's --no-cache). */
  cache?: string | boolean;
  /** Pixel metrics at N×N (default: the model input size, 224) or at each mask's size. */
  pixelSize?: number | 'native';
  perGoods?: boolean;
  crop?: 'none' | 'auto';
  /** Several modes side by side, e.g. 'category,per-goods,crop' (overrides perGoods/crop). */
  modes?: string | string[];
  minGoodsTrain?: number;
  holdout?: number;
  inputSize?: number;
  batch?: number;
  provider?: ProviderChoice;
  /** Write report.html (default true). */
  html?: boolean;
  /** Worst false negatives / positives per category in the report (default 4). */
  examples?: number;
  /** Decode big JPEGs at a reduced scale (default true, as the agent does). */
  shrinkOnLoad?: boolean;
  json?: boolean;
  env?: NodeJS.ProcessEnv;
  log?: (line: string) => void;
}

export interface EvalSummary {
  out: string;
  files: { json: string; markdown: string; html: string | null };
  /** The terminal table (also printed unless `json`). */
  table: string;
  /** What results.json holds. */
  results: ReturnType<typeof resultsJson>;
  result: EvaluationResult;
  /** Categories whose evaluation failed (per mode), with the reason; the run is a failure when any. */
  failed: Array<{ category: string; mode: string; reason: string }>;
}

/** The files of a run in its output folder: an `out` holding one of them holds an earlier run. */
export const RESULT_FILES = ['results.json', 'results.md', 'report.html'] as const;

async function isFile(path: string): Promise<boolean> {
  return (await stat(path).catch(() => null))?.isFile() ?? false;
}

/** Refuses an output folder that holds an earlier run's results (files), unless forced. */
async function checkNoEarlierResults(out: string, force: boolean): Promise<void> {
  const present: string[] = [];
  for (const f of RESULT_FILES) if (await isFile(join(out, f))) present.push(f);
  if (present.length === 0 || force) return;
  throw new Error(
    `--out ${out} already holds the results of an earlier run (${present.join(', ')}); pass --force to overwrite them, ` +
      `or choose another --out (the earlier run's cache stays usable with --cache ${join(out, '.cache')})`,
  );
}

export async function runEval(o: EvalCommandOptions): Promise<EvalSummary> {
  const env = o.env ?? process.env;
  const log = o.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  const createdAt = creationTime(env);
  const modes = o.modes !== undefined ? parseModes(o.modes) : [modeOf(o.perGoods ?? false, o.crop ?? 'none')];
  if (o.crop !== undefined && o.crop !== 'none' && o.crop !== 'auto') throw new Error(`--crop must be 'none' or 'auto', got '${String(o.crop)}'`);
  if (o.pixelSize !== undefined && o.pixelSize !== 'native' && !(Number.isInteger(o.pixelSize) && o.pixelSize > 0)) {
    throw new Error(`--pixel-size must be a positive integer or 'native', got '${String(o.pixelSize)}'`);
  }

  // 1. Where results go, and the layout (all problems at once), before anything expensive.
  await checkOutputFolder('--out', o.out);
  await checkNoEarlierResults(o.out, o.force ?? false);
  if (o.models) await checkOutputFolder('--models', o.models);
  if (typeof o.cache === 'string') await checkOutputFolder('--cache', o.cache);
  const categories = await loadDataset(o.dataset, { categories: o.categories, checkImages: true });
  if (categories.length === 0) throw new Error(`${o.dataset}: no category to evaluate`);

  // 2. Backbone, cache, evaluation.
  const backbone = await selectBackbone({ file: o.backbone, descriptor: o.backboneId, env });
  const out = resolve(o.out);
  await mkdir(out, { recursive: true });
  const cacheDir = o.cache === false ? null : resolve(typeof o.cache === 'string' ? o.cache : join(out, '.cache'));
  const cache = new EvalCache(cacheDir);

  let bar: Progress | null = null;
  let barStep = '';
  const result = await evaluateDataset(categories, {
    backbone,
    modes,
    coreset: o.coreset,
    seed: o.seed,
    inputSize: o.inputSize,
    holdout: o.holdout,
    pixelSize: o.pixelSize,
    minGoodsTrain: o.minGoodsTrain,
    models: o.models ? resolve(o.models) : undefined,
    cache,
    batch: o.batch,
    provider: o.provider,
    shrinkOnLoad: o.shrinkOnLoad,
    examples: o.examples,
    createdAt,
    onLog: (line) => {
      if (!o.json) log(line);
    },
    onProgress: (step, done, total) => {
      if (step !== barStep) {
        bar?.done();
        bar = progressBar(step.padEnd(24), { enabled: !o.json });
        barStep = step;
      }
      bar!.update(done, total);
    },
  });
  (bar as Progress | null)?.done();

  // 3. Outputs.
  const ctx = { dataset: o.dataset, createdAt };
  const results = resultsJson(result, ctx);
  const files = { json: join(out, 'results.json'), markdown: join(out, 'results.md'), html: (o.html ?? true) ? join(out, 'report.html') : null };
  await writeFileAtomic(files.json, `${JSON.stringify(results, null, 2)}\n`);
  await writeFileAtomic(files.markdown, resultsMarkdown(result, ctx));
  if (files.html) await writeFileAtomic(files.html, await renderHtmlReport(result, ctx, { examples: (o.examples ?? 4) > 0 }));
  // Forced over an earlier run without html: its report.html would describe another run.
  else if (await isFile(join(out, 'report.html'))) await rm(join(out, 'report.html'), { force: true });
  const table = formatTerminalTable(result);
  return { out, files, table, results, result, failed: failedCategories(result) };
}
