/**
 * The evaluator's vocabulary: the evaluation modes (category, per-goods, crop and their
 * combination; `modeOf`, `parseModes`), the options `evaluateDataset` takes and the result types it
 * returns (per image, per model, per category, per mode), which the reports (eval-report.ts,
 * eval-html.ts) and the `eval` command read. Types and mode parsing only; no I/O.
 */
import type { LoadedBackbone } from '../models/backbone.js';
import type { ProviderChoice } from '../models/execution-provider.js';
import type { CurvePoint, MetricValue } from '../models/metrics/index.js';
import type { CacheCounters, EvalCache, InputPlacement } from './feature-cache.js';
import type { SkippedFile } from './image-files.js';

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
  /**
   * Set when the evaluation of this category failed (the reason): its metrics are then undefined
   * with that reason, nothing was scored, and the other categories were evaluated anyway.
   */
  failed?: string;
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

/** The categories whose evaluation failed, per mode, with the reason. */
export function failedCategories(result: Pick<EvaluationResult, 'modes'>): Array<{ category: string; mode: string; reason: string }> {
  return result.modes.flatMap((m) => m.categories.filter((c) => c.failed !== undefined).map((c) => ({ category: c.category, mode: m.mode.name, reason: c.failed! })));
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
  /**
   * Memory pixel metrics may use for one category, in bytes (default 4 GiB): charged at
   * eval-metrics.ts METRIC_BYTES_PER_PIXEL per pixel on the pixel-metrics grid, plus the masks
   * kept across groups; over it, pixel metrics are left undefined with the reason.
   */
  maxMetricBytes?: number;
  /** ISO time stamped into fitted models. */
  createdAt: string;
  onProgress?: (step: string, done: number, total: number) => void;
  onLog?: (line: string) => void;
}
