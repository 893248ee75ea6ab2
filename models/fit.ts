/**
 * Fitting PatchCore (the "training loop"): embed the normal images, keep a greedy k-center
 * coreset of their patches as the memory bank, compile the model graph, then score held-out
 * normal images to derive default thresholds and normalisation statistics — no anomalous
 * sample needed. Image decoding and file handling belong to the caller; this module sees
 * batches of preprocessed images only.
 */
import ort from 'onnxruntime-node';
import { encodeModel } from './onnx/proto.js';
import { selectCoreset } from './coreset.js';
import { attachManifest, MANIFEST_FORMAT, scoreStatistics, type ModelManifest } from './manifest.js';
import { buildModelGraph, geometry } from './patchcore-graph.js';
import { REWEIGHT_K } from './patchcore-math.js';
import { createSession, type ProviderChoice } from './execution-provider.js';
import { validateSeed } from './random.js';
import { FeatureExtractor, PatchcoreModel } from './runtime.js';
import type { LoadedBackbone } from './backbone.js';
import { TOOL_VERSION } from './version.js';

/** A batch of preprocessed images: [count, 3, S, S] float32. */
export interface InputBatch {
  data: Float32Array;
  count: number;
}

export type FitStage = 'features' | 'coreset' | 'compile' | 'validation';

export interface FitOptions {
  name: string;
  backbone: LoadedBackbone;
  /** Number of training images the iterable will yield in total (to size buffers and progress). */
  trainCount: number;
  train: AsyncIterable<InputBatch>;
  validationCount: number;
  validation: AsyncIterable<InputBatch>;
  validationSource: 'held-out' | 'separate' | 'training';
  trainingDigest: string;
  coresetRatio: number;
  seed: number;
  projection: 'jl' | 'none';
  inputSize?: number;
  /**
   * Where the backbone and the threshold scoring run (default 'auto'). Byte-identical output for
   * the same inputs and seed holds per provider: a GPU computes the int8 backbone differently.
   */
  provider?: ProviderChoice;
  /** ISO time stamped into the manifest (pass a fixed one for reproducible files). */
  createdAt: string;
  onProgress?: (stage: FitStage, done: number, total: number) => void;
}

export interface FitResult {
  bytes: Uint8Array;
  manifest: ModelManifest;
  /** Milliseconds per stage (decoding is timed by the caller, inside the iterables). */
  timings: Record<FitStage, number>;
}

export class FitError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'FitError';
  }
}

/**
 * What is wrong with a model name for the manifest, or null: it must have a visible character
 * (the manifest requires a non-empty name) and no control characters (it appears in log lines).
 */
export function modelNameProblem(name: string): string | null {
  if (typeof name !== 'string' || name.trim() === '') return 'must not be empty';
  const control = /[\u0000-\u001f\u007f-\u009f]/.exec(name);
  if (control) return `must not contain a control character (U+${control[0].charCodeAt(0).toString(16).toUpperCase().padStart(4, '0')}), got ${JSON.stringify(name)}`;
  return null;
}

/**
 * The values that end up in the manifest, checked before any feature is extracted: a fit must
 * not spend minutes and then fail on a name, a seed or a time stamp.
 */
export function checkFitSettings(opts: Pick<FitOptions, 'name' | 'seed' | 'coresetRatio' | 'projection' | 'createdAt'>): void {
  const nameProblem = modelNameProblem(opts.name);
  if (nameProblem) throw new FitError(`model name ${nameProblem}`);
  try {
    validateSeed(opts.seed, 'seed');
  } catch (err) {
    throw new FitError((err as Error).message);
  }
  if (!(opts.coresetRatio > 0 && opts.coresetRatio <= 1)) throw new FitError(`coreset ratio must be in (0, 1], got ${opts.coresetRatio}`);
  if (opts.projection !== 'jl' && opts.projection !== 'none') throw new FitError(`projection must be 'jl' or 'none', got ${String(opts.projection)}`);
  if (typeof opts.createdAt !== 'string' || Number.isNaN(Date.parse(opts.createdAt))) throw new FitError(`createdAt must be an ISO date and time, got ${JSON.stringify(opts.createdAt)}`);
}

/** Patch embeddings of a set of images: [images × patches × dim], contiguous. */
export interface EmbeddedImages {
  features: Float32Array;
  images: number;
  patchesPerImage: number;
  dim: number;
}

/** Runs the backbone + aggregation over the batches (fit's first stage; cacheable by callers). */
export async function extractFeatures(
  backbone: LoadedBackbone,
  batches: AsyncIterable<InputBatch>,
  count: number,
  opts: { inputSize?: number; provider?: ProviderChoice; onProgress?: (done: number, total: number) => void } = {},
): Promise<EmbeddedImages> {
  const d = backbone.descriptor;
  const g = geometry(d, opts.inputSize ?? d.inputSize);
  const patchesPerImage = g.grid * g.grid;
  const extractor = await FeatureExtractor.create(backbone, { inputSize: g.inputSize, provider: opts.provider });
  const features = new Float32Array(count * patchesPerImage * g.dim);
  let images = 0;
  try {
    for await (const batch of batches) {
      if (images + batch.count > count) throw new FitError(`more training images than announced (${count})`);
      features.set(await extractor.embed(batch.data, batch.count), images * patchesPerImage * g.dim);
      images += batch.count;
      opts.onProgress?.(images, count);
    }
  } finally {
    await extractor.release();
  }
  return { features: features.subarray(0, images * patchesPerImage * g.dim), images, patchesPerImage, dim: g.dim };
}

export async function fitPatchcore(opts: FitOptions): Promise<FitResult> {
  if (opts.trainCount < 1) throw new FitError('no training image to fit on');
  checkFitSettings(opts);
  const t = performance.now();
  const embedded = await extractFeatures(opts.backbone, opts.train, opts.trainCount, {
    inputSize: opts.inputSize,
    provider: opts.provider,
    onProgress: (done, total) => opts.onProgress?.('features', done, total),
  });
  const featuresMs = performance.now() - t;
  const result = await fitFromFeatures(embedded, opts);
  result.timings.features = featuresMs;
  return result;
}

/** Fit's remaining stages from already extracted training features. */
export async function fitFromFeatures(embedded: EmbeddedImages, opts: Omit<FitOptions, 'train' | 'trainCount'>): Promise<FitResult> {
  const d = opts.backbone.descriptor;
  const inputSize = opts.inputSize ?? d.inputSize;
  const g = geometry(d, inputSize);
  const timings: Record<FitStage, number> = { features: 0, coreset: 0, compile: 0, validation: 0 };
  checkFitSettings(opts);
  const images = embedded.images;
  if (images === 0) throw new FitError('no usable training image');
  if (embedded.dim !== g.dim || embedded.patchesPerImage !== g.grid * g.grid) {
    throw new FitError(`features are ${embedded.patchesPerImage}×${embedded.dim} per image, the backbone makes ${g.grid * g.grid}×${g.dim}`);
  }
  const n = images * embedded.patchesPerImage;
  const used = embedded.features.subarray(0, n * g.dim);
  let t: number;

  // 2. Coreset → memory bank.
  t = performance.now();
  const selected = selectCoreset(used, n, g.dim, {
    ratio: opts.coresetRatio,
    seed: opts.seed,
    projection: opts.projection,
    onProgress: (done, total) => opts.onProgress?.('coreset', done, total),
  });
  const bank = new Float32Array(selected.length * g.dim);
  for (let i = 0; i < selected.length; i++) bank.set(used.subarray(selected[i]! * g.dim, (selected[i]! + 1) * g.dim), i * g.dim);
  timings.coreset = performance.now() - t;

  // 3. Compile (without manifest) and score the validation images for thresholds.
  t = performance.now();
  const graph = buildModelGraph(opts.backbone.model, d, { bank, entries: selected.length, inputSize });
  timings.compile = performance.now() - t;
  opts.onProgress?.('compile', 1, 1);

  t = performance.now();
  const { session } = await createSession(encodeModel(graph), { provider: opts.provider });
  const imageScores: number[] = [];
  const pixelMaxima: number[] = [];
  let validated = 0;
  try {
    for await (const batch of opts.validation) {
      const s = inputSize;
      const out = await session.run({ [session.inputNames[0]!]: new ort.Tensor('float32', batch.data.subarray(0, batch.count * 3 * s * s), [batch.count, 3, s, s]) });
      const scores = out.score!.data as Float32Array;
      const maps = out.anomaly_map!.data as Float32Array;
      for (let i = 0; i < batch.count; i++) {
        imageScores.push(scores[i]!);
        let m = -Infinity;
        for (let j = i * s * s; j < (i + 1) * s * s; j++) if (maps[j]! > m) m = maps[j]!;
        pixelMaxima.push(m);
      }
      validated += batch.count;
      opts.onProgress?.('validation', validated, opts.validationCount);
    }
  } finally {
    await session.release();
  }
  if (validated === 0) throw new FitError('no usable validation image: thresholds need at least one normal image outside the memory bank');
  timings.validation = performance.now() - t;

  const imageStats = scoreStatistics(imageScores);
  const pixelStats = scoreStatistics(pixelMaxima);
  const manifest: ModelManifest = {
    format: MANIFEST_FORMAT,
    kind: 'patchcore',
    name: opts.name,
    backbone: {
      id: d.id,
      sha256: d.sha256,
      taps: d.taps.map((tap) => ({ tensor: tap.tensor, stride: tap.stride, channels: tap.channels })),
      ...(d.embedDim ? { embedDim: d.embedDim } : {}),
      ...(d.pretrainEmbedDim ? { pretrainEmbedDim: d.pretrainEmbedDim } : {}),
    },
    inputSize,
    normalization: d.normalization,
    patchGrid: g.grid,
    embeddingDim: g.dim,
    coreset: { ratio: opts.coresetRatio, seed: opts.seed, projection: opts.projection, patches: n, entries: selected.length },
    reweightK: Math.min(REWEIGHT_K, selected.length),
    training: { images, digest: opts.trainingDigest, validationImages: validated, validationSource: opts.validationSource },
    // The largest score seen on normal images the bank has not memorised: no false alarm on them.
    thresholds: { image: imageStats.max, pixel: pixelStats.max, method: 'max-of-normal-validation' },
    statistics: { image: imageStats, pixel: pixelStats },
    normalizationRange: { min: imageStats.min, max: imageStats.max },
    tool: { name: 'shelfwatch', version: TOOL_VERSION },
    createdAt: opts.createdAt,
  };
  attachManifest(graph, manifest);
  const bytes = encodeModel(graph);
  // Round trip: the file must load through the very runtime the agent uses.
  const check = await PatchcoreModel.load(bytes, { provider: 'cpu' }, `fitted model '${opts.name}'`);
  await check.release();
  return { bytes, manifest, timings };
}
