/**
 * The offline evaluation pipeline: fit (or reuse) PatchCore models on a dataset's normal training
 * images, score its labelled test split with the agent's runtime (`PatchcoreModel`) and compute
 * the paper's metrics (image AUROC / AP, pixel AUROC / AP, AUPRO@0.3) per category, per defect
 * type and per goods id.
 *
 * Same path as the agent: every image goes through decodeImage (with shrink-on-load) and
 * toModelInput — the two steps of models/preprocess.ts `preprocessImage` — and, in crop mode,
 * through planogram.ts `refineBox` first, exactly as a refined slot of a live camera does.
 *
 * Modes (compared side by side with `modes`):
 * - category: one model per category, fitted on its train/good images;
 * - per-goods: one model per goods id (read from the file names by the dataset scanner). A goods
 *   id gets its own model when it has at least `minGoodsTrain` fit images and at least one image
 *   in the held-out slice (its thresholds need one); its test images otherwise go to the category
 *   model. Each model's scores differ in scale, so in this mode image scores are divided by the
 *   image threshold of the model that made them and anomaly maps by its pixel threshold (1 =
 *   "at the threshold") before they are pooled for the metrics;
 * - crop: each image is first tightened to the product against the white shelf (refineBox on the
 *   decoded image, then toModelInput with that box); the anomaly map is placed back onto the full
 *   image, the area outside the crop getting the image's smallest map value (the shelf is the most
 *   normal thing in the picture, and a constant below every scored pixel keeps the map's ranking),
 *   so pixel metrics cover the same pixels as in the other modes.
 *
 * Pixel metrics are computed at `pixelSize`×`pixelSize` (default the model input size, 224: masks
 * resized by nearest neighbour with source index floor(dst·in/out) — in float32, as PyTorch does,
 * see nearestIndex — maps as produced) or at each mask's own size ('native': maps resized
 * bilinearly, align_corners=false, no antialiasing). On magnetic_tile this reproduces the
 * reference's anomalous-pixel and region counts exactly at both sizes.
 *
 * Reuse: a model from `models` is reused only when it was fitted from the same images with the
 * same settings AND records the same preprocessing and features (shrink-on-load, normalisation,
 * the descriptor's taps / embedDim / pretrainEmbedDim; eval-models.ts); train features and model
 * inputs come from the cache under keys that hold all of that too (feature-cache.ts).
 *
 * Failures: a category whose evaluation throws is recorded as failed (CategoryResult.failed, its
 * metrics undefined with the reason) and the run goes on; the command writes every output and
 * then exits non-zero.
 *
 * This module is the driver (`evaluateDataset`): plan each category, reuse or fit its models,
 * score the test split and collect the results. The parts live beside it: eval-types.ts (modes,
 * options, result types), eval-inputs.ts (InputLoader, placeMap), eval-masks.ts (ground-truth
 * masks), eval-models.ts (model names, matching, the models folder), eval-metrics.ts (metrics).
 */
import { mkdir, rename, writeFile } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { extractFeatures, fitFromFeatures, type EmbeddedImages, type FitStage, type InputBatch } from '../models/fit.js';
import { undefinedMetric } from '../models/metrics/index.js';
import { geometry } from '../models/patchcore-graph.js';
import { PatchcoreModel } from '../models/runtime.js';
import type { DatasetCategory, DatasetImage } from './dataset.js';
import { InputLoader, type DecodeStats } from './eval-inputs.js';
import { computeMetrics, meanOf } from './eval-metrics.js';
import { evalRecordOf, findReusableModel, modelFileName, modelName, scanModelDir, withEvalRecord, type ModelFile, type ModelWanted, type PreprocessWanted } from './eval-models.js';
import {
  METRIC_KEYS,
  type CategoryResult,
  type CropMode,
  type EvalMode,
  type EvaluateOptions,
  type EvaluationResult,
  type EvaluationSettings,
  type ExampleImage,
  type ImageRecord,
  type MeanValue,
  type MetricKey,
  type ModelRecord,
  type ModeResult,
  type StageTimings,
} from './eval-types.js';
import { EvalCache, featureKeyOf, type PreprocessKey } from './feature-cache.js';
import { splitHoldOut, trainingDigest, type SkippedFile } from './image-files.js';

// The evaluator's public names, from the modules that define them, for code that imports the
// pipeline as a whole.
export * from './eval-types.js';
export { InputLoader, placeMap, type DecodeStats, type LoadedInput } from './eval-inputs.js';
export { loadMask, nearestIndex, resizeMaskNearest, type BinaryMask } from './eval-masks.js';
export {
  cropOfModelName,
  EVAL_RECORD_KEY,
  findReusableModel,
  modelMatches,
  modelName,
  preprocessMismatch,
  readEvalRecord,
  scanModelDir,
  type EvalRecord,
  type ModelFile,
  type ModelWanted,
  type PreprocessWanted,
} from './eval-models.js';
export { meanOf } from './eval-metrics.js';

// ───────────────────────────── the evaluation ─────────────────────────────

function zeroTimings(): StageTimings {
  return { decodeWait: 0, decodeCpu: 0, features: 0, coreset: 0, compile: 0, thresholds: 0, inference: 0, metrics: 0 };
}

function addTimings(a: StageTimings, b: StageTimings): void {
  for (const k of Object.keys(a) as Array<keyof StageTimings>) a[k] += b[k];
}

interface CategoryPlan {
  cat: DatasetCategory;
  fit: DatasetImage[];
  validation: DatasetImage[];
  validationSource: 'held-out' | 'training';
  fitDigest: string;
}

/** Runs the whole evaluation. Categories are those of scanDataset (already validated). */
export async function evaluateDataset(categories: readonly DatasetCategory[], o: EvaluateOptions): Promise<EvaluationResult> {
  const started = performance.now();
  const d = o.backbone.descriptor;
  const inputSize = o.inputSize ?? d.inputSize;
  const settings: EvaluationSettings = {
    backbone: { id: d.id, sha256: d.sha256 },
    inputSize,
    coreset: o.coreset,
    seed: o.seed,
    projection: o.projection ?? 'jl',
    holdout: o.holdout ?? 0.1,
    pixelSize: o.pixelSize ?? inputSize,
    minGoodsTrain: o.minGoodsTrain ?? 10,
    shrinkOnLoad: o.shrinkOnLoad ?? true,
    modes: o.modes.map((m) => m.name),
    batch: o.batch ?? 8,
  };
  if (!(o.coreset > 0 && o.coreset <= 1)) throw new Error(`coreset ratio must be in (0, 1], got ${o.coreset}`);
  if (!Number.isInteger(o.seed) || o.seed < 0) throw new Error(`seed must be a non-negative integer, got ${o.seed}`);
  if (!(settings.holdout > 0 && settings.holdout < 1)) throw new Error(`holdout must be in (0, 1), got ${settings.holdout}`);
  if (settings.pixelSize !== 'native' && (!Number.isInteger(settings.pixelSize) || settings.pixelSize < 1)) {
    throw new Error(`pixel size must be a positive integer or 'native', got ${String(settings.pixelSize)}`);
  }
  if (o.modes.length === 0) throw new Error('no evaluation mode given');
  const cache = o.cache ?? new EvalCache(null);
  const log = o.onLog ?? (() => {});
  const stats: DecodeStats = { images: 0, shrunk: 0, fromCache: 0, cpuMs: 0 };
  const existing = o.models ? await scanModelDir(o.models, log) : [];
  const logged = new Set<string>();
  const logOnce = (line: string) => {
    if (logged.has(line)) return;
    logged.add(line);
    log(line);
  };
  const ctx: RunContext = { o, settings, cache, stats, existing, log, logOnce, provider: 'cpu' };

  // A category that fails (all its training images undecodable, a model that cannot be fitted or
  // written, …) is recorded as failed, with the reason, and the run goes on with the others: the
  // reports show it and the command exits non-zero at the end (agent/commands/eval.ts).
  const perMode = new Map<string, CategoryResult[]>(o.modes.map((m) => [m.name, []]));
  const failed = (cat: DatasetCategory, mode: EvalMode, e: unknown) => {
    const reason = errorMessage(e);
    log(`category ${cat.name}${o.modes.length > 1 ? ` (${mode.name})` : ''} failed: ${reason}`);
    perMode.get(mode.name)!.push(failedCategory(cat.name, mode.name, reason));
  };
  for (const cat of categories) {
    let plan: CategoryPlan;
    try {
      plan = await planCategory(cat, settings.holdout);
    } catch (e) {
      for (const mode of o.modes) failed(cat, mode, e);
      continue;
    }
    if (plan.validationSource === 'training') {
      log(`warning: ${cat.name} has only ${cat.train.length} training image(s): thresholds come from the training images themselves`);
    }
    // Features per crop mode, shared by the modes of this category (then released).
    const features = new Map<CropMode, Promise<FeatureSet>>();
    for (const mode of o.modes) {
      try {
        perMode.get(mode.name)!.push(await evaluateCategory(ctx, plan, mode, features));
      } catch (e) {
        failed(cat, mode, e);
      }
    }
  }

  const modes: ModeResult[] = o.modes.map((mode) => {
    const cats = perMode.get(mode.name)!;
    const mean = {} as Record<MetricKey, MeanValue>;
    for (const k of METRIC_KEYS) mean[k] = meanOf(cats.map((c) => c.metrics[k]));
    return { mode, categories: cats, mean };
  });
  const timings = zeroTimings();
  for (const m of modes) for (const c of m.categories) addTimings(timings, c.timings);
  return {
    settings,
    modes,
    cache: { ...cache.counters, dir: cache.dir },
    decode: { images: stats.images, shrunk: stats.shrunk, fromCache: stats.fromCache },
    timings: { ...timings, total: performance.now() - started },
    backboneTrainImages: modes.reduce((s, m) => s + m.categories.reduce((t, c) => t + c.backboneTrainImages, 0), 0),
    provider: ctx.provider,
  };
}

function errorMessage(e: unknown): string {
  const text = e instanceof Error ? e.message : String(e);
  return text.trim() || (e instanceof Error ? e.name : 'unknown error');
}

/** The result of a category whose evaluation failed: every metric undefined with the reason. */
export function failedCategory(category: string, mode: string, reason: string): CategoryResult {
  const undef = undefinedMetric(`evaluation failed: ${reason}`);
  return {
    category,
    mode,
    failed: reason,
    metrics: { imageAuroc: undef, imageAp: undef, pixelAuroc: undef, pixelAp: undef, pro: undef },
    counts: { test: 0, anomalous: 0, normal: 0, skipped: 0 },
    pixels: null,
    byDefect: [],
    byGoods: [],
    threshold: 0,
    models: [],
    images: [],
    curves: { imageRoc: [], imagePr: [], pixelRoc: [], pixelPr: [], pixelPro: [] },
    examples: [],
    notes: [`evaluation failed: ${reason}`],
    skipped: [],
    timings: zeroTimings(),
    backboneTrainImages: 0,
    featureCache: 'not-needed',
  };
}

interface RunContext {
  o: EvaluateOptions;
  settings: EvaluationSettings;
  cache: EvalCache;
  stats: DecodeStats;
  existing: ModelFile[];
  log: (line: string) => void;
  /** log, each distinct line once per run. */
  logOnce: (line: string) => void;
  provider: string;
}

interface FeatureSet {
  embedded: EmbeddedImages;
  /** Names (relative to the category root) of the embedded images, in order. */
  names: string[];
  skipped: SkippedFile[];
  hit: boolean;
  backboneImages: number;
  timings: StageTimings;
  /** Set by the first mode that used this set: it reports the backbone work, later modes do not. */
  claimed: boolean;
}

async function planCategory(cat: DatasetCategory, holdout: number): Promise<CategoryPlan> {
  if (cat.train.length === 0) throw new Error(`category ${cat.name}: no training image in ${join(cat.root, 'train', 'good')}`);
  const sorted = [...cat.train].sort((a, b) => (a.file < b.file ? -1 : a.file > b.file ? 1 : 0));
  const { train, validation } = splitHoldOut(sorted, holdout);
  const usable = validation.length > 0;
  return {
    cat,
    fit: train,
    validation: usable ? validation : train,
    validationSource: usable ? 'held-out' : 'training',
    fitDigest: await trainingDigest(train.map((i) => i.file)),
  };
}

function preKey(ctx: RunContext, crop: CropMode): PreprocessKey {
  const d = ctx.o.backbone.descriptor;
  return { backboneSha256: d.sha256, inputSize: ctx.settings.inputSize, normalization: d.normalization, crop, shrinkOnLoad: ctx.settings.shrinkOnLoad };
}

/** The fit images' embeddings for a crop mode: from the cache, or through the backbone (then cached). */
async function trainFeatures(ctx: RunContext, plan: CategoryPlan, crop: CropMode): Promise<FeatureSet> {
  const timings = zeroTimings();
  const names = plan.fit.map((i) => relName(plan.cat, i.file));
  const pre = preKey(ctx, crop);
  const d = ctx.o.backbone.descriptor;
  const key = EvalCache.featuresKey(pre, featureKeyOf(d), plan.fitDigest);
  const g = geometry(d, ctx.settings.inputSize);
  const cached = await ctx.cache.readFeatures(key, names, { patchesPerImage: g.grid * g.grid, dim: g.dim });
  if (cached) {
    return {
      embedded: cached.embedded,
      names: cached.files,
      skipped: cached.skipped.map((n) => ({ file: join(plan.cat.root, n), reason: 'did not decode when the feature cache entry was made' })),
      hit: true,
      backboneImages: 0,
      timings,
      claimed: false,
    };
  }
  const loader = new InputLoader(pre, ctx.cache, ctx.stats);
  const skipped: SkippedFile[] = [];
  const used: string[] = [];
  const wait = { ms: 0 };
  const cpu0 = ctx.stats.cpuMs;
  const files = plan.fit.map((i) => i.file);
  const step = `${plan.cat.name} features${crop === 'auto' ? ' (crop)' : ''}`;
  async function* batches(): AsyncGenerator<InputBatch> {
    for await (const b of loader.batches(files, ctx.settings.batch, { useCache: false, concurrency: ctx.o.concurrency ?? 4, onSkip: (s) => skipped.push(s), wait })) {
      for (const inp of b.inputs) used.push(relName(plan.cat, inp.file));
      yield { data: b.data, count: b.count };
    }
  }
  const t = performance.now();
  const embedded = await extractFeatures(ctx.o.backbone, batches(), files.length, {
    inputSize: ctx.settings.inputSize,
    provider: ctx.o.provider,
    onProgress: (done, total) => ctx.o.onProgress?.(step, done + skipped.length, total),
  });
  timings.decodeWait = wait.ms;
  timings.decodeCpu = ctx.stats.cpuMs - cpu0;
  timings.features = performance.now() - t - wait.ms;
  for (const s of skipped) ctx.log(`skipped training image ${s.file}: ${s.reason}`);
  if (embedded.images === 0) throw new Error(`category ${plan.cat.name}: none of the ${files.length} training images could be decoded`);
  await ctx.cache.writeFeatures(key, used, skipped.map((s) => relName(plan.cat, s.file)), embedded);
  return { embedded, names: used, skipped, hit: false, backboneImages: embedded.images, timings, claimed: false };
}

function relName(cat: DatasetCategory, file: string): string {
  return relative(cat.root, file).split('\\').join('/');
}

/** The rows of `names` (in that order) cut out of a feature set. */
function subsetFeatures(set: FeatureSet, names: readonly string[]): EmbeddedImages {
  const index = new Map(set.names.map((n, i) => [n, i]));
  const rows = names.map((n) => index.get(n)).filter((i): i is number => i !== undefined);
  const { patchesPerImage, dim } = set.embedded;
  const per = patchesPerImage * dim;
  if (rows.length === set.embedded.images && rows.every((r, i) => r === i)) return set.embedded;
  const features = new Float32Array(rows.length * per);
  rows.forEach((r, i) => features.set(set.embedded.features.subarray(r * per, (r + 1) * per), i * per));
  return { features, images: rows.length, patchesPerImage, dim };
}

interface ModelSlot {
  key: string;
  goodsId: string | null;
  fit: DatasetImage[];
  validation: DatasetImage[];
  validationSource: 'held-out' | 'training';
}

async function evaluateCategory(ctx: RunContext, plan: CategoryPlan, mode: EvalMode, features: Map<CropMode, Promise<FeatureSet>>): Promise<CategoryResult> {
  const { o, settings } = ctx;
  const cat = plan.cat;
  const timings = zeroTimings();
  const notes: string[] = [];
  const skipped: SkippedFile[] = [];
  const pre = preKey(ctx, mode.crop);
  const loader = new InputLoader(pre, ctx.cache, ctx.stats);
  const concurrency = o.concurrency ?? 4;
  const batch = settings.batch;

  // 1. Which model scores which test image.
  const slots: ModelSlot[] = [];
  const route = new Map<DatasetImage, string>();
  const goodsWithModel = new Set<string>();
  if (mode.perGoods) {
    const goodsIds = [...new Set(plan.fit.map((i) => i.goodsId).filter((g): g is string => g !== null))].sort();
    for (const g of goodsIds) {
      const fit = plan.fit.filter((i) => i.goodsId === g);
      const validation = plan.validationSource === 'held-out' ? plan.validation.filter((i) => i.goodsId === g) : [];
      if (fit.length >= settings.minGoodsTrain && validation.length > 0) {
        slots.push({ key: `goods:${g}`, goodsId: g, fit, validation, validationSource: 'held-out' });
        goodsWithModel.add(g);
      }
    }
    if (goodsIds.length === 0) notes.push('per-goods: no goods id in the training file names; every image uses the category model');
    const fallback = goodsIds.filter((g) => !goodsWithModel.has(g));
    if (fallback.length > 0) {
      notes.push(
        `per-goods: ${fallback.length} of ${goodsIds.length} goods id(s) have fewer than ${settings.minGoodsTrain} fit images or none held out; their test images use the category model (${fallback.slice(0, 8).join(', ')}${fallback.length > 8 ? ', …' : ''})`,
      );
    }
  }
  for (const img of cat.test) route.set(img, img.goodsId !== null && goodsWithModel.has(img.goodsId) ? `goods:${img.goodsId}` : 'category');
  if ([...route.values()].includes('category')) {
    slots.unshift({ key: 'category', goodsId: null, fit: plan.fit, validation: plan.validation, validationSource: plan.validationSource });
  }

  // 2. Reuse or fit every model.
  const preprocessing: PreprocessWanted = { shrinkOnLoad: settings.shrinkOnLoad, descriptor: o.backbone.descriptor };
  const evalRecord = evalRecordOf(preprocessing);
  const models = new Map<string, { model: PatchcoreModel; record: ModelRecord }>();
  let featureSet: FeatureSet | null = null;
  let featureCache: CategoryResult['featureCache'] = 'not-needed';
  let backboneTrainImages = 0;
  try {
    for (const slot of slots) {
      const name = modelName(cat.name, slot.goodsId, mode.crop);
      const digest = slot.key === 'category' ? plan.fitDigest : await trainingDigest(slot.fit.map((i) => i.file));
      const wanted: ModelWanted = {
        trainingDigest: digest,
        backboneSha256: o.backbone.descriptor.sha256,
        coreset: o.coreset,
        seed: o.seed,
        projection: settings.projection,
        inputSize: settings.inputSize,
        crop: mode.crop,
      };
      const found = findReusableModel(ctx.existing, wanted, preprocessing, ctx.logOnce);
      let bytesOrFile: Uint8Array | string;
      let reused = false;
      let file: string | null = null;
      if (found) {
        bytesOrFile = found.file;
        file = found.file;
        reused = true;
      } else {
        if (!features.has(mode.crop)) features.set(mode.crop, trainFeatures(ctx, plan, mode.crop));
        featureSet = await features.get(mode.crop)!;
        if (featureCache === 'not-needed') {
          // The backbone work is counted once per (category, crop), by the first mode that needed it.
          featureCache = featureSet.claimed ? 'shared' : featureSet.hit ? 'hit' : 'miss';
          if (!featureSet.claimed) {
            addTimings(timings, featureSet.timings);
            backboneTrainImages = featureSet.backboneImages;
            featureSet.claimed = true;
          }
        }
        const embedded = subsetFeatures(featureSet, slot.fit.map((i) => relName(cat, i.file)));
        if (embedded.images === 0) throw new Error(`${name}: none of its training images could be decoded`);
        const wait = { ms: 0 };
        const cpu0 = ctx.stats.cpuMs;
        const valFiles = slot.validation.map((i) => i.file);
        const step = `${cat.name} ${slot.goodsId ?? ''} fit`.replace(/\s+/g, ' ');
        const fitted = await fitFromFeatures(embedded, {
          name,
          backbone: o.backbone,
          validationCount: valFiles.length,
          validation: toInputBatches(loader.batches(valFiles, batch, { useCache: true, concurrency, onSkip: (s) => skipped.push(s), wait })),
          validationSource: slot.validationSource,
          trainingDigest: digest,
          coresetRatio: o.coreset,
          seed: o.seed,
          projection: settings.projection,
          inputSize: settings.inputSize,
          provider: o.provider,
          createdAt: o.createdAt,
          onProgress: (stage: FitStage, done, total) => o.onProgress?.(`${step} ${stage}`, done, total),
        });
        timings.coreset += fitted.timings.coreset;
        timings.compile += fitted.timings.compile;
        timings.thresholds += fitted.timings.validation;
        timings.decodeCpu += ctx.stats.cpuMs - cpu0;
        // The model carries how its features were made (shrink-on-load, preprocessing version,
        // descriptor feature fields), so that a later run reuses it only with the same ones.
        const bytes = withEvalRecord(fitted.bytes, evalRecord, name);
        bytesOrFile = bytes;
        if (o.models) {
          await mkdir(o.models, { recursive: true });
          const path = join(o.models, modelFileName(name, wanted, evalRecord, o.backbone.descriptor.normalization));
          const tmp = `${path}.${process.pid}.tmp`;
          await writeFile(tmp, bytes);
          await rename(tmp, path);
          file = path;
          ctx.existing = ctx.existing.filter((m) => m.file !== path);
          ctx.existing.push({ file: path, manifest: fitted.manifest, record: evalRecord });
        }
      }
      const model = await PatchcoreModel.load(bytesOrFile, { provider: o.provider, expectBackboneSha256: o.backbone.descriptor.sha256 }, file ?? name);
      ctx.provider = model.provider;
      const m = model.manifest;
      models.set(slot.key, {
        model,
        record: {
          key: slot.key,
          name: m.name,
          goodsId: slot.goodsId,
          digest: model.digest,
          file,
          reused,
          trainImages: m.training.images,
          validationImages: m.training.validationImages,
          bankSize: m.coreset.entries,
          patches: m.coreset.patches,
          thresholds: { image: m.thresholds.image, pixel: m.thresholds.pixel },
          trainingDigest: m.training.digest,
        },
      });
    }

    // 3. Score the test split with the agent's runtime.
    const size = settings.inputSize;
    const plane = size * size;
    const records: ImageRecord[] = [];
    const maps = new Map<ImageRecord, Float32Array>();
    const mapScale = new Map<ImageRecord, number>();
    const byFile = new Map(cat.test.map((i) => [i.file, i]));
    const testStep = `${cat.name} test${mode.name === 'category' ? '' : ` (${mode.name})`}`;
    let scored = 0;
    for (const [key, { model, record }] of models) {
      const files = cat.test.filter((i) => route.get(i) === key).map((i) => i.file);
      if (files.length === 0) continue;
      const wait = { ms: 0 };
      const cpu0 = ctx.stats.cpuMs;
      const t = performance.now();
      for await (const b of loader.batches(files, batch, { useCache: true, concurrency, onSkip: (s) => skipped.push(s), wait })) {
        const raw = await model.run(b.data, b.count);
        b.inputs.forEach((inp, i) => {
          const img = byFile.get(inp.file)!;
          const score = raw.scores[i]!;
          const threshold = record.thresholds.image;
          const scale = mode.perGoods && threshold > 0 ? threshold : 1;
          const pixelScale = mode.perGoods && record.thresholds.pixel > 0 ? record.thresholds.pixel : 1;
          const rec: ImageRecord = {
            name: relName(cat, img.file),
            file: img.file,
            defect: img.defect,
            goodsId: img.goodsId,
            label: img.defect !== null ? 1 : 0,
            score,
            threshold,
            evalScore: score / scale,
            model: key,
            mask: img.mask,
            placement: { crop: inp.crop, sourceWidth: inp.sourceWidth, sourceHeight: inp.sourceHeight, shrink: inp.shrink },
          };
          const map = raw.maps.slice(i * plane, (i + 1) * plane);
          if (pixelScale !== 1) for (let j = 0; j < plane; j++) map[j] = map[j]! / pixelScale;
          records.push(rec);
          maps.set(rec, map);
          mapScale.set(rec, pixelScale);
        });
        scored += b.count;
        o.onProgress?.(testStep, scored + skipped.length, cat.test.length);
      }
      timings.decodeWait += wait.ms;
      timings.decodeCpu += ctx.stats.cpuMs - cpu0;
      timings.inference += performance.now() - t - wait.ms;
    }
    for (const s of skipped) ctx.log(`skipped ${s.file}: ${s.reason}`);
    // Keep the dataset's order (defect folder, then name) whatever the routing was.
    const order = new Map(cat.test.map((i, k) => [i.file, k]));
    records.sort((a, b) => order.get(a.file)! - order.get(b.file)!);

    // 4. Metrics.
    const t = performance.now();
    const threshold = mode.perGoods ? 1 : models.get('category')!.record.thresholds.image;
    const result = await computeMetrics(ctx, cat, mode, records, maps, notes);
    timings.metrics = performance.now() - t;

    const anomalous = records.filter((r) => r.label === 1).length;
    if (anomalous === 0) notes.push(`category ${cat.name}: no anomalous test image — image and pixel AUROC, AP and PRO are undefined`);
    if (anomalous === records.length) notes.push(`category ${cat.name}: no normal test image — AUROC is undefined`);
    if (skipped.length > 0) notes.push(`${skipped.length} validation/test image(s) could not be decoded and were left out (see skipped)`);

    const k = o.examples ?? 4;
    const fn = records.filter((r) => r.label === 1 && r.evalScore <= threshold).sort((a, b) => a.evalScore - b.evalScore).slice(0, k);
    const fp = records.filter((r) => r.label === 0 && r.evalScore > threshold).sort((a, b) => b.evalScore - a.evalScore).slice(0, k);
    const examples: ExampleImage[] = [
      ...fn.map((r) => ({ kind: 'false-negative' as const, record: r, map: maps.get(r)!, mapSize: size, mapScale: mapScale.get(r)! })),
      ...fp.map((r) => ({ kind: 'false-positive' as const, record: r, map: maps.get(r)!, mapSize: size, mapScale: mapScale.get(r)! })),
    ];

    return {
      category: cat.name,
      mode: mode.name,
      metrics: result.metrics,
      counts: { test: records.length, anomalous, normal: records.length - anomalous, skipped: skipped.length },
      pixels: result.pixels,
      byDefect: result.byDefect,
      byGoods: result.byGoods.map((g) => ({ ...g, model: goodsWithModel.has(g.goodsId) ? ('own' as const) : ('category' as const) })),
      threshold,
      models: [...models.values()].map((m) => m.record),
      images: records,
      curves: result.curves,
      examples,
      notes,
      skipped,
      timings,
      backboneTrainImages,
      featureCache,
    };
  } finally {
    for (const { model } of models.values()) await model.release();
    // Release a crop mode's features once no later mode needs them.
    const later = o.modes.slice(o.modes.indexOf(mode) + 1);
    if (!later.some((m) => m.crop === mode.crop)) features.delete(mode.crop);
  }
}

async function* toInputBatches(source: AsyncIterable<{ data: Float32Array; count: number }>): AsyncGenerator<InputBatch> {
  for await (const b of source) yield { data: b.data, count: b.count };
}
