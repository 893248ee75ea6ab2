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
 */
import { stat, readdir, readFile, mkdir, rename, writeFile } from 'node:fs/promises';
import { join, relative, resolve } from 'node:path';
import sharp, { type OutputInfo } from 'sharp';
import { extractFeatures, fitFromFeatures, type EmbeddedImages, type FitStage, type InputBatch } from '../models/fit.js';
import { decodeImage } from '../models/image-decode.js';
import { readManifest, type ModelManifest } from '../models/manifest.js';
import { imageMetrics, PixelMetricsAccumulator, undefinedMetric, type CurvePoint, type MetricValue } from '../models/metrics/index.js';
import { decodeModel } from '../models/onnx/proto.js';
import { toModelInput } from '../models/preprocess.js';
import { PatchcoreModel } from '../models/runtime.js';
import type { LoadedBackbone } from '../models/backbone.js';
import type { ProviderChoice } from '../models/execution-provider.js';
import type { DatasetCategory, DatasetImage } from './dataset.js';
import { EvalCache, type CacheCounters, type InputPlacement, type PreprocessKey } from './feature-cache.js';
import { splitHoldOut, trainingDigest, type SkippedFile } from './image-files.js';
import { refineBox } from './planogram.js';

// ───────────────────────────── modes ─────────────────────────────

export type CropMode = 'none' | 'auto';

export interface EvalMode {
  /** 'category', 'per-goods', 'crop' or 'per-goods+crop'. */
  name: string;
  perGoods: boolean;
  crop: CropMode;
}

export function modeOf(perGoods: boolean, crop: CropMode): EvalMode {
  const name = perGoods ? (crop === 'auto' ? 'per-goods+crop' : 'per-goods') : crop === 'auto' ? 'crop' : 'category';
  return { name, perGoods, crop };
}

const MODE_NAMES = ['category', 'per-goods', 'crop', 'per-goods+crop'];

/** Parses `category,per-goods,crop` (any of category | per-goods | crop | per-goods+crop). */
export function parseModes(spec: string | readonly string[]): EvalMode[] {
  const names = (typeof spec === 'string' ? spec.split(',') : spec.flatMap((s) => s.split(','))).map((s) => s.trim()).filter(Boolean);
  if (names.length === 0) throw new Error(`--modes: give at least one of ${MODE_NAMES.join(', ')}`);
  const out: EvalMode[] = [];
  for (const n of names) {
    if (!MODE_NAMES.includes(n)) throw new Error(`--modes: unknown mode '${n}' (use ${MODE_NAMES.join(', ')})`);
    const m = modeOf(n.startsWith('per-goods'), n.endsWith('crop') ? 'auto' : 'none');
    if (!out.some((o) => o.name === m.name)) out.push(m);
  }
  return out;
}

// ───────────────────────────── results ─────────────────────────────

export const METRIC_KEYS = ['imageAuroc', 'imageAp', 'pixelAuroc', 'pixelAp', 'pro'] as const;
export type MetricKey = (typeof METRIC_KEYS)[number];
export type MetricSet = Record<MetricKey, MetricValue>;

export interface GroupMetrics {
  metrics: MetricSet;
  images: number;
  anomalous: number;
  normal: number;
}

/** One scored test image. */
export interface ImageRecord {
  /** Path relative to the category root. */
  name: string;
  file: string;
  defect: string | null;
  goodsId: string | null;
  label: 0 | 1;
  /** Raw re-weighted PatchCore score and the image threshold of the model that made it. */
  score: number;
  threshold: number;
  /** The score the metrics use: raw (category mode) or score / threshold (per-goods mode). */
  evalScore: number;
  /** Key of the model (see ModelRecord.key). */
  model: string;
  mask: string | null;
  placement: InputPlacement;
}

export interface ModelRecord {
  /** 'category' or 'goods:<id>'. */
  key: string;
  name: string;
  goodsId: string | null;
  digest: string;
  /** Where the model file is (reused or written to `models`), null when only kept in memory. */
  file: string | null;
  reused: boolean;
  trainImages: number;
  validationImages: number;
  bankSize: number;
  patches: number;
  thresholds: { image: number; pixel: number };
  trainingDigest: string;
}

/** A badly scored image kept for the report, with its (unplaced) anomaly map. */
export interface ExampleImage {
  kind: 'false-negative' | 'false-positive';
  record: ImageRecord;
  map: Float32Array;
  mapSize: number;
  /** The value the metrics compare with the threshold, per map value (1 or the pixel threshold divisor). */
  mapScale: number;
}

export interface StageTimings {
  /** Wall time the pipeline waited for images to be decoded and preprocessed. */
  decodeWait: number;
  /** Sum of per-image decode + preprocess time (runs concurrently, so it may exceed the wall time). */
  decodeCpu: number;
  /** Backbone on training images (without the decode wait). */
  features: number;
  coreset: number;
  compile: number;
  /** Scoring the held-out images for thresholds (includes their decode). */
  thresholds: number;
  /** Test images through the compiled model (without the decode wait). */
  inference: number;
  metrics: number;
}

export interface CurveSet {
  imageRoc: CurvePoint[];
  imagePr: CurvePoint[];
  pixelRoc: CurvePoint[];
  pixelPr: CurvePoint[];
  pixelPro: CurvePoint[];
}

export interface CategoryResult {
  category: string;
  mode: string;
  metrics: MetricSet;
  counts: { test: number; anomalous: number; normal: number; skipped: number };
  pixels: { size: string; anomalous: number; normal: number; regions: number } | null;
  byDefect: Array<GroupMetrics & { defect: string }>;
  byGoods: Array<GroupMetrics & { goodsId: string; model: 'own' | 'category' }>;
  /** Threshold on the evalScore scale (the category model's, or 1 in per-goods mode). */
  threshold: number;
  models: ModelRecord[];
  images: ImageRecord[];
  curves: CurveSet;
  examples: ExampleImage[];
  notes: string[];
  skipped: SkippedFile[];
  timings: StageTimings;
  /** Training images that went through the backbone in this run (0 when the feature cache hit). */
  backboneTrainImages: number;
  /** hit/miss: the disk cache; shared: features extracted for another mode of this run; not-needed: all models reused. */
  featureCache: 'hit' | 'miss' | 'shared' | 'not-needed';
}

/** The mean over categories of a metric: defined when at least one category's is. */
export type MeanValue = { defined: true; value: number; categories: number; outOf: number } | { defined: false; reason: string };

export interface ModeResult {
  mode: EvalMode;
  categories: CategoryResult[];
  mean: Record<MetricKey, MeanValue>;
}

export interface EvaluationSettings {
  backbone: { id: string; sha256: string };
  inputSize: number;
  coreset: number;
  seed: number;
  projection: 'jl' | 'none';
  holdout: number;
  pixelSize: number | 'native';
  minGoodsTrain: number;
  shrinkOnLoad: boolean;
  modes: string[];
  batch: number;
}

export interface EvaluationResult {
  settings: EvaluationSettings;
  modes: ModeResult[];
  cache: CacheCounters & { dir: string | null };
  decode: { images: number; shrunk: number; fromCache: number };
  timings: StageTimings & { total: number };
  backboneTrainImages: number;
  provider: string;
}

// ───────────────────────────── options ─────────────────────────────

export interface EvaluateOptions {
  backbone: LoadedBackbone;
  modes: EvalMode[];
  coreset: number;
  seed: number;
  projection?: 'jl' | 'none';
  inputSize?: number;
  /** Fraction of train/good held out for thresholds (default 0.1). */
  holdout?: number;
  pixelSize?: number | 'native';
  /** Fewest fit images for a goods id's own model (default 10); see the header. */
  minGoodsTrain?: number;
  /** Folder of fitted models: matching ones are reused, new ones written there. */
  models?: string;
  cache?: EvalCache;
  batch?: number;
  provider?: ProviderChoice;
  shrinkOnLoad?: boolean;
  /** Files decoded at once (default 4). */
  concurrency?: number;
  /** Worst false negatives / positives kept per category (default 4). */
  examples?: number;
  /** Largest number of pixels pixel metrics may hold for one category (4 bytes each; default 1e9). */
  maxMetricPixels?: number;
  /** ISO time stamped into fitted models. */
  createdAt: string;
  onProgress?: (step: string, done: number, total: number) => void;
  onLog?: (line: string) => void;
}

// ───────────────────────────── inputs ─────────────────────────────

interface LoadedInput extends InputPlacement {
  file: string;
  data: Float32Array;
}

interface DecodeStats {
  images: number;
  shrunk: number;
  fromCache: number;
  cpuMs: number;
}

/**
 * Turns image files into model inputs with the agent's preprocessing, through the input cache.
 * (Training images bypass the cache: their features are cached instead.)
 */
class InputLoader {
  constructor(
    private readonly pre: PreprocessKey,
    private readonly cache: EvalCache,
    readonly stats: DecodeStats,
  ) {}

  async load(file: string, useCache: boolean): Promise<LoadedInput> {
    const { inputSize: size } = this.pre;
    let key: string | null = null;
    if (useCache && this.cache.dir) {
      const s = await stat(file);
      key = EvalCache.inputKey(this.pre, resolve(file), s.size, s.mtimeMs);
      const hit = await this.cache.readInput(key, 3 * size * size);
      if (hit) {
        this.stats.fromCache++;
        return { file, ...hit };
      }
    }
    const t = performance.now();
    try {
      const bytes = await readFile(file);
      const img = await decodeImage(bytes, { origin: file, targetSize: this.pre.shrinkOnLoad ? size : undefined });
      this.stats.images++;
      if (img.shrink > 1) this.stats.shrunk++;
      const normalization = this.pre.normalization as { mean: [number, number, number]; std: [number, number, number] };
      let crop: InputPlacement['crop'] = null;
      let data: Float32Array;
      if (this.pre.crop === 'auto') {
        const box = refineBox(img, { x: 0, y: 0, width: img.width, height: img.height });
        if (box.width !== img.width || box.height !== img.height) {
          crop = { x: box.x / img.width, y: box.y / img.height, width: box.width / img.width, height: box.height / img.height };
        }
        data = toModelInput(img, { size, normalization, box });
      } else {
        data = toModelInput(img, { size, normalization });
      }
      const input: LoadedInput = { file, data, crop, sourceWidth: img.sourceWidth, sourceHeight: img.sourceHeight, shrink: img.shrink };
      if (key) await this.cache.writeInput(key, input);
      return input;
    } finally {
      this.stats.cpuMs += performance.now() - t;
    }
  }

  /**
   * Batches of inputs in file order; files that fail to decode are reported and skipped.
   * `wait.ms` accumulates the time the consumer waited for decoding.
   */
  async *batches(
    files: readonly string[],
    batchSize: number,
    opts: { useCache: boolean; concurrency: number; onSkip: (s: SkippedFile) => void; wait: { ms: number } },
  ): AsyncGenerator<{ data: Float32Array; count: number; inputs: LoadedInput[] }> {
    const plane = 3 * this.pre.inputSize * this.pre.inputSize;
    const inflight: Array<Promise<LoadedInput | null>> = [];
    let next = 0;
    const fill = () => {
      while (inflight.length < opts.concurrency && next < files.length) {
        const file = files[next++]!;
        inflight.push(
          this.load(file, opts.useCache).catch((e: unknown) => {
            opts.onSkip({ file, reason: (e as Error).message });
            return null;
          }),
        );
      }
    };
    let batch = new Float32Array(batchSize * plane);
    let inputs: LoadedInput[] = [];
    fill();
    while (inflight.length > 0) {
      const t = performance.now();
      const input = await inflight.shift()!;
      opts.wait.ms += performance.now() - t;
      fill();
      if (!input) continue;
      batch.set(input.data, inputs.length * plane);
      inputs.push(input);
      if (inputs.length === batchSize) {
        yield { data: batch, count: inputs.length, inputs };
        batch = new Float32Array(batchSize * plane);
        inputs = [];
      }
    }
    if (inputs.length > 0) yield { data: batch, count: inputs.length, inputs };
  }
}

// ───────────────────────────── maps and masks ─────────────────────────────

/**
 * Places an S×S anomaly map (made from `crop` of the image, or the whole image) onto an
 * outW×outH grid covering the whole image: bilinear, align_corners=false, no antialiasing,
 * edges clamped (torch `interpolate(mode='bilinear', align_corners=False)`); pixels outside the
 * crop get `fill`. Without a crop and with outW = outH = S this is the identity.
 */
export function placeMap(map: Float32Array, size: number, crop: InputPlacement['crop'], outW: number, outH: number, fill = 0): Float32Array {
  if (map.length !== size * size) throw new RangeError(`placeMap: map has ${map.length} values, expected ${size}×${size}`);
  if (!crop && outW === size && outH === size) return map.slice();
  const out = new Float32Array(outW * outH);
  const cx = crop?.x ?? 0;
  const cy = crop?.y ?? 0;
  const cw = crop?.width ?? 1;
  const ch = crop?.height ?? 1;
  // Per-axis source index and weight, computed once.
  const axis = (n: number, c0: number, cl: number) => {
    const i0 = new Int32Array(n);
    const lam = new Float64Array(n);
    const inside = new Uint8Array(n);
    for (let i = 0; i < n; i++) {
      // Without a crop use the reference formula directly: src = (i + 0.5) · S / n − 0.5.
      const u = (i + 0.5) / n;
      if (crop && (u < c0 || u >= c0 + cl)) continue;
      inside[i] = 1;
      let s = crop ? ((u - c0) / cl) * size - 0.5 : ((i + 0.5) * size) / n - 0.5;
      if (s < 0) s = 0;
      let f = Math.floor(s);
      if (f > size - 1) f = size - 1;
      i0[i] = f;
      lam[i] = Math.min(1, s - f);
    }
    return { i0, lam, inside };
  };
  const xs = axis(outW, cx, cw);
  const ys = axis(outH, cy, ch);
  for (let y = 0; y < outH; y++) {
    const row = y * outW;
    if (!ys.inside[y]) {
      out.fill(fill, row, row + outW);
      continue;
    }
    const y0 = ys.i0[y]!;
    const y1 = Math.min(y0 + 1, size - 1);
    const ly = ys.lam[y]!;
    for (let x = 0; x < outW; x++) {
      if (!xs.inside[x]) {
        out[row + x] = fill;
        continue;
      }
      const x0 = xs.i0[x]!;
      const x1 = Math.min(x0 + 1, size - 1);
      const lx = xs.lam[x]!;
      const top = map[y0 * size + x0]! * (1 - lx) + map[y0 * size + x1]! * lx;
      const bottom = map[y1 * size + x0]! * (1 - lx) + map[y1 * size + x1]! * lx;
      out[row + x] = top * (1 - ly) + bottom * ly;
    }
  }
  return out;
}

export interface BinaryMask {
  /** 0/1, row-major. */
  data: Uint8Array;
  width: number;
  height: number;
}

/**
 * Reads a ground-truth mask as 0/1: anomalous where any colour channel is non-zero (the metrics'
 * "non-zero = anomalous"; the dataset scan has already refused masks with more than two values).
 * With `size`, the mask is resized by nearest neighbour (see resizeMaskNearest) while reading,
 * which only looks at the sampled pixels.
 */
export async function loadMask(file: string, size?: { width: number; height: number }): Promise<BinaryMask> {
  let raw: { data: Buffer; info: OutputInfo };
  try {
    // Decoding as stored is ~3× faster than converting to grey first on big masks.
    raw = await sharp(file).removeAlpha().raw().toBuffer({ resolveWithObject: true });
  } catch (e) {
    throw new Error(`ground-truth mask ${file}: cannot read (${(e as Error).message})`);
  }
  const { width, height, channels } = raw.info;
  const src = raw.data;
  const at = channels === 1 ? (p: number) => src[p]! : (p: number) => {
    const o = p * channels;
    let v = 0;
    for (let c = 0; c < channels; c++) v |= src[o + c]!;
    return v;
  };
  const outW = size?.width ?? width;
  const outH = size?.height ?? height;
  const data = new Uint8Array(outW * outH);
  if (outW === width && outH === height) {
    for (let i = 0; i < data.length; i++) data[i] = at(i) !== 0 ? 1 : 0;
  } else {
    const sx = nearestIndex(width, outW);
    const sy = nearestIndex(height, outH);
    for (let y = 0; y < outH; y++) for (let x = 0; x < outW; x++) data[y * outW + x] = at(sy[y]! * width + sx[x]!) !== 0 ? 1 : 0;
  }
  return { data, width: outW, height: outH };
}

/**
 * Source indices of PyTorch's legacy 'nearest' resize: floor(dst · scale) with scale = in / out,
 * both steps in float32 as ATen computes them (identity when the sizes are equal). Exact
 * arithmetic, floor(dst · in / out), picks the previous row or column where dst · in / out is a
 * whole number that float32 rounds just below (248 → 224: dst 28, 56, …): on magnetic_tile that
 * is 4 of 1,717,372 anomalous pixels, and the reference counts are PyTorch's.
 */
export function nearestIndex(inSize: number, outSize: number): Int32Array {
  const idx = new Int32Array(outSize);
  const scale = Math.fround(inSize / outSize);
  for (let i = 0; i < outSize; i++) idx[i] = inSize === outSize ? i : Math.min(inSize - 1, Math.floor(Math.fround(i * scale)));
  return idx;
}

/** Nearest-neighbour resize of a mask with PyTorch's legacy 'nearest' indices (see nearestIndex). */
export function resizeMaskNearest(mask: BinaryMask, outW: number, outH: number): BinaryMask {
  if (mask.width === outW && mask.height === outH) return mask;
  const out = new Uint8Array(outW * outH);
  const sx = nearestIndex(mask.width, outW);
  const sy = nearestIndex(mask.height, outH);
  for (let y = 0; y < outH; y++) {
    const srow = sy[y]! * mask.width;
    for (let x = 0; x < outW; x++) out[y * outW + x] = mask.data[srow + sx[x]!]!;
  }
  return { data: out, width: outW, height: outH };
}

function mapMinimum(map: Float32Array): number {
  let m = Infinity;
  for (let i = 0; i < map.length; i++) if (map[i]! < m) m = map[i]!;
  return m;
}

// ───────────────────────────── models ─────────────────────────────

/** The crop mode is not part of the manifest schema, so it travels in the model name. */
export function modelName(category: string, goodsId: string | null, crop: CropMode): string {
  return `${category}${goodsId !== null ? `/${goodsId}` : ''}${crop === 'auto' ? ' [crop=auto]' : ''}`;
}

export function cropOfModelName(name: string): CropMode {
  return name.endsWith(' [crop=auto]') ? 'auto' : 'none';
}

export interface ModelWanted {
  trainingDigest: string;
  backboneSha256: string;
  coreset: number;
  seed: number;
  projection: 'jl' | 'none';
  inputSize: number;
  crop: CropMode;
}

/** Whether a fitted model was made from the same images with the same settings. */
export function modelMatches(m: ModelManifest, w: ModelWanted): boolean {
  return (
    m.training.digest === w.trainingDigest &&
    m.backbone.sha256 === w.backboneSha256 &&
    m.coreset.ratio === w.coreset &&
    m.coreset.seed === w.seed &&
    m.coreset.projection === w.projection &&
    m.inputSize === w.inputSize &&
    cropOfModelName(m.name) === w.crop
  );
}

export interface ModelFile {
  file: string;
  manifest: ModelManifest;
}

/** The models of a folder (files that are not shelfwatch models are reported and ignored). */
export async function scanModelDir(dir: string, onLog?: (line: string) => void): Promise<ModelFile[]> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw new Error(`--models ${dir}: cannot list (${(e as Error).message})`);
  }
  const out: ModelFile[] = [];
  for (const n of names.filter((x) => x.endsWith('.onnx')).sort()) {
    const file = join(dir, n);
    try {
      out.push({ file, manifest: readManifest(decodeModel(await readFile(file), file), file) });
    } catch (e) {
      onLog?.(`--models: ignoring ${file}: ${(e as Error).message}`);
    }
  }
  return out;
}

function modelFileName(name: string, w: ModelWanted): string {
  const safe = name.replace(/ \[crop=auto\]$/, '').replace(/[^A-Za-z0-9._-]+/g, '_');
  return `${safe}.${w.crop === 'auto' ? 'crop.' : ''}r${w.coreset}.s${w.seed}.${w.inputSize}.${w.backboneSha256.slice(0, 8)}.${w.trainingDigest.slice(0, 8)}.onnx`;
}

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
  const ctx: RunContext = { o, settings, cache, stats, existing, log, provider: 'cpu' };

  const perMode = new Map<string, CategoryResult[]>(o.modes.map((m) => [m.name, []]));
  for (const cat of categories) {
    const plan = await planCategory(cat, settings.holdout);
    if (plan.validationSource === 'training') {
      log(`warning: ${cat.name} has only ${cat.train.length} training image(s): thresholds come from the training images themselves`);
    }
    // Features per crop mode, shared by the modes of this category (then released).
    const features = new Map<CropMode, Promise<FeatureSet>>();
    for (const mode of o.modes) {
      perMode.get(mode.name)!.push(await evaluateCategory(ctx, plan, mode, features));
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

interface RunContext {
  o: EvaluateOptions;
  settings: EvaluationSettings;
  cache: EvalCache;
  stats: DecodeStats;
  existing: ModelFile[];
  log: (line: string) => void;
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
  const key = EvalCache.featuresKey(pre, plan.fitDigest);
  const cached = await ctx.cache.readFeatures(key, names);
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
      const found = ctx.existing.find((m) => modelMatches(m.manifest, wanted));
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
        bytesOrFile = fitted.bytes;
        if (o.models) {
          await mkdir(o.models, { recursive: true });
          file = join(o.models, modelFileName(name, wanted));
          const tmp = `${file}.${process.pid}.tmp`;
          await writeFile(tmp, fitted.bytes);
          await rename(tmp, file);
          ctx.existing.push({ file, manifest: fitted.manifest });
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

interface MetricsOutput {
  metrics: MetricSet;
  pixels: CategoryResult['pixels'];
  byDefect: CategoryResult['byDefect'];
  byGoods: Array<GroupMetrics & { goodsId: string }>;
  curves: CurveSet;
}

const CURVE_POINTS = 200;

async function computeMetrics(
  ctx: RunContext,
  cat: DatasetCategory,
  mode: EvalMode,
  records: ImageRecord[],
  maps: Map<ImageRecord, Float32Array>,
  notes: string[],
): Promise<MetricsOutput> {
  const { settings } = ctx;
  const size = settings.inputSize;
  const pixelSize = settings.pixelSize;
  const step = `${cat.name} metrics${mode.name === 'category' ? '' : ` (${mode.name})`}`;

  // Pixel budget: the accumulator keeps 4 bytes per pixel.
  const pixelsOf = (r: ImageRecord) => (pixelSize === 'native' ? r.placement.sourceWidth * r.placement.sourceHeight : pixelSize * pixelSize);
  const totalPixels = records.reduce((s, r) => s + pixelsOf(r), 0);
  const maxPixels = ctx.o.maxMetricPixels ?? 1e9;
  let pixelSkipReason: string | null = null;
  if (totalPixels > maxPixels) {
    pixelSkipReason = `pixel metrics at ${pixelSize === 'native' ? 'native size' : `${pixelSize}×${pixelSize}`} would hold ${(totalPixels / 1e6).toFixed(0)} M pixels (${((totalPixels * 4) / 2 ** 30).toFixed(1)} GiB), over the limit of ${(maxPixels / 1e6).toFixed(0)} M; use a smaller pixel size`;
    notes.push(pixelSkipReason);
  }

  // Masks and placed maps at a fixed pixel size are computed once; native ones on every pass.
  const placedCache = new Map<ImageRecord, { map: Float32Array; mask: Uint8Array; w: number; h: number }>();
  const sample = async (r: ImageRecord) => {
    const hit = placedCache.get(r);
    if (hit) return hit;
    const raw = maps.get(r)!;
    let mask: BinaryMask | null = null;
    let w: number;
    let h: number;
    if (pixelSize === 'native') {
      if (r.mask) mask = await loadMask(r.mask);
      w = mask?.width ?? r.placement.sourceWidth;
      h = mask?.height ?? r.placement.sourceHeight;
    } else {
      w = pixelSize;
      h = pixelSize;
      if (r.mask) mask = await loadMask(r.mask, { width: w, height: h });
    }
    const map = placeMap(raw, size, r.placement.crop, w, h, r.placement.crop ? mapMinimum(raw) : 0);
    const s = { map, mask: mask?.data ?? new Uint8Array(w * h), w, h };
    if (pixelSize !== 'native') placedCache.set(r, s);
    return s;
  };
  // Masks decode on sharp's thread pool: prepare a few images at once, add them in order.
  const WINDOW = 4;

  const groups: Array<{ kind: 'category' | 'defect' | 'goods'; id: string; images: ImageRecord[] }> = [{ kind: 'category', id: cat.name, images: records }];
  const good = records.filter((r) => r.label === 0);
  for (const d of [...new Set(records.map((r) => r.defect).filter((x): x is string => x !== null))].sort()) {
    groups.push({ kind: 'defect', id: d, images: [...records.filter((r) => r.defect === d), ...good] });
  }
  for (const g of [...new Set(records.map((r) => r.goodsId).filter((x): x is string => x !== null))].sort()) {
    groups.push({ kind: 'goods', id: g, images: records.filter((r) => r.goodsId === g) });
  }
  const totalWork = groups.reduce((s, g) => s + g.images.length, 0);
  let done = 0;

  let categoryMetrics: MetricSet | null = null;
  let pixels: CategoryResult['pixels'] = null;
  let curves: CurveSet = { imageRoc: [], imagePr: [], pixelRoc: [], pixelPr: [], pixelPro: [] };
  const byDefect: MetricsOutput['byDefect'] = [];
  const byGoods: MetricsOutput['byGoods'] = [];
  for (const g of groups) {
    const labels = g.images.map((r) => r.label);
    const scores = g.images.map((r) => r.evalScore);
    const im = imageMetrics(labels, scores, g.kind === 'category' ? { maxCurvePoints: CURVE_POINTS } : {});
    let pixelAuroc: MetricValue;
    let pixelAp: MetricValue;
    let pro: MetricValue;
    if (pixelSkipReason) {
      pixelAuroc = pixelAp = pro = undefinedMetric(pixelSkipReason);
      done += g.images.length;
    } else {
      const acc = new PixelMetricsAccumulator();
      for (let i = 0; i < g.images.length; i += WINDOW) {
        const window = g.images.slice(i, i + WINDOW);
        const samples = await Promise.all(window.map(sample));
        samples.forEach((s, k) => acc.add(s.map, s.mask, s.w, s.h, window[k]!.name));
        done += window.length;
        ctx.o.onProgress?.(step, done, totalWork);
      }
      const pm = acc.compute(g.kind === 'category' ? { maxCurvePoints: CURVE_POINTS } : {});
      pixelAuroc = pm.auroc;
      pixelAp = pm.ap;
      pro = pm.aupro;
      if (g.kind === 'category') {
        pixels = { size: pixelSize === 'native' ? 'native' : `${pixelSize}x${pixelSize}`, anomalous: pm.nPos, normal: pm.nNeg, regions: pm.nRegions };
        if (pm.curves) curves = { ...curves, pixelRoc: pm.curves.roc, pixelPr: pm.curves.pr, pixelPro: pm.curves.pro };
      }
    }
    const metrics: MetricSet = { imageAuroc: im.auroc, imageAp: im.ap, pixelAuroc, pixelAp, pro };
    const counts = { images: g.images.length, anomalous: im.nPos, normal: im.nNeg };
    if (g.kind === 'category') {
      categoryMetrics = metrics;
      if (im.curves) curves = { ...curves, imageRoc: im.curves.roc, imagePr: im.curves.pr };
    } else if (g.kind === 'defect') byDefect.push({ defect: g.id, metrics, ...counts });
    else byGoods.push({ goodsId: g.id, metrics, ...counts });
  }
  return { metrics: categoryMetrics!, pixels, byDefect, byGoods, curves };
}

/** Mean of the defined values; undefined (with the reasons) when no category has one. */
export function meanOf(values: readonly MetricValue[]): MeanValue {
  const defined = values.filter((v): v is { defined: true; value: number } => v.defined);
  if (defined.length === 0) {
    const reasons = [...new Set(values.map((v) => (v.defined ? '' : v.reason)))].filter(Boolean);
    return { defined: false, reason: values.length === 0 ? 'no category' : `undefined in every category (${reasons.join('; ')})` };
  }
  return { defined: true, value: defined.reduce((s, v) => s + v.value, 0) / defined.length, categories: defined.length, outOf: values.length };
}
