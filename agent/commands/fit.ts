/** `shelfwatch fit`: normal images in, one self-contained model file out. */
import { mkdir } from 'node:fs/promises';
import { basename, dirname, resolve } from 'node:path';
import { fitPatchcore, type FitStage } from '../../models/fit.js';
import { listImages, preprocessedBatches, splitHoldOut, trainingDigest, type SkippedFile } from '../../pipelines/image-files.js';
import { selectBackbone } from '../backbones.js';
import { progressBar, type Progress } from '../progress.js';
import { checkOutputFile, writeFileAtomic } from './output-paths.js';
import type { ProviderChoice } from '../../models/execution-provider.js';

export interface FitCommandOptions {
  images: string[];
  out: string;
  name?: string;
  val?: string[];
  holdout: number;
  coreset: number;
  seed: number;
  projection: 'jl' | 'none';
  backbone?: string;
  backboneId?: string;
  inputSize?: number;
  batch: number;
  provider: ProviderChoice;
  json: boolean;
  env?: NodeJS.ProcessEnv;
  log?: (line: string) => void;
}

export interface FitSummary {
  model: string;
  name: string;
  trainImages: number;
  validationImages: number;
  skipped: SkippedFile[];
  memoryBank: number;
  patches: number;
  thresholds: { image: number; pixel: number };
  timingsMs: Record<FitStage | 'decode' | 'total', number>;
  trainingDigest: string;
}

/** Reproducible builds: SOURCE_DATE_EPOCH fixes the creation time stamped into the model. */
export function creationTime(env: NodeJS.ProcessEnv): string {
  const epoch = env.SOURCE_DATE_EPOCH;
  if (epoch !== undefined && epoch !== '') {
    if (!/^\d+$/.test(epoch)) throw new Error(`SOURCE_DATE_EPOCH must be whole seconds since 1970, got '${epoch}'`);
    return new Date(Number(epoch) * 1000).toISOString();
  }
  return new Date().toISOString();
}

export async function runFit(o: FitCommandOptions): Promise<FitSummary> {
  const env = o.env ?? process.env;
  const log = o.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  const started = performance.now();
  if (!(o.coreset > 0 && o.coreset <= 1)) throw new Error(`--coreset must be in (0, 1], got ${o.coreset}`);
  if (!(o.holdout >= 0 && o.holdout < 1)) throw new Error(`--holdout must be in [0, 1), got ${o.holdout}`);
  if (!Number.isInteger(o.seed) || o.seed < 0) throw new Error(`--seed must be a non-negative integer, got ${o.seed}`);
  // Cheap checks first: a typo in a path must not cost a backbone download or a whole fit.
  await checkOutputFile('--out', o.out, 'model.onnx');
  const all = await listImages(o.images);
  if (all.length === 0) throw new Error(`no image files (${[...new Set(['.jpg', '.png', '.webp', '.tif'])].join(' ')} …) in ${o.images.join(', ')}`);
  const val = o.val && o.val.length > 0 ? await listImages(o.val) : null;
  if (val?.length === 0) throw new Error(`--val: no image files in ${o.val!.join(', ')}`);

  const backbone = await selectBackbone({ file: o.backbone, descriptor: o.backboneId, env });
  const d = backbone.descriptor;
  const size = o.inputSize ?? d.inputSize;
  let train = all;
  let validation: string[] = [];
  let validationSource: 'held-out' | 'separate' | 'training' = 'held-out';
  if (val) {
    validation = val;
    validationSource = 'separate';
  } else {
    ({ train, validation } = splitHoldOut(all, o.holdout));
    if (validation.length === 0) {
      validation = train;
      validationSource = 'training';
      log(`warning: only ${all.length} image(s): thresholds come from the training images themselves and will be too low; pass --val <normal images>`);
    }
  }
  const skipped: SkippedFile[] = [];
  const onSkip = (s: SkippedFile) => {
    skipped.push(s);
    if (!o.json) log(`skipped ${s.file}: ${s.reason}`);
  };
  const timing = { decodeMs: 0 };
  const batchOpts = { size, normalization: d.normalization, batchSize: o.batch, onSkip, timing };
  const digest = await trainingDigest(train);

  const bars = new Map<FitStage, Progress>();
  const labels: Record<FitStage, string> = { features: 'features ', coreset: 'coreset  ', compile: 'compile  ', validation: 'threshold' };
  const result = await fitPatchcore({
    name: o.name ?? basename(resolve(o.out)).replace(/\.onnx$/i, ''),
    backbone,
    trainCount: train.length,
    train: preprocessedBatches(train, batchOpts),
    validationCount: validation.length,
    validation: preprocessedBatches(validation, batchOpts),
    validationSource,
    trainingDigest: digest,
    coresetRatio: o.coreset,
    seed: o.seed,
    projection: o.projection,
    inputSize: size,
    provider: o.provider,
    createdAt: creationTime(env),
    onProgress: (stage, done, total) => {
      let bar = bars.get(stage);
      if (!bar) {
        for (const b of bars.values()) b.done();
        bar = progressBar(labels[stage], { enabled: !o.json });
        bars.set(stage, bar);
      }
      bar.update(done, total);
    },
  }).catch((err: Error) => {
    // With --json the skip lines are not printed: the error must still say why images were unusable.
    if (!o.json || skipped.length === 0) throw err;
    const why = skipped.slice(0, 3).map((k) => `${k.file}: ${k.reason}`).join('; ');
    throw new Error(`${err.message} (${skipped.length} skipped: ${why}${skipped.length > 3 ? '; …' : ''})`, { cause: err });
  });
  for (const b of bars.values()) b.done();

  await mkdir(dirname(resolve(o.out)), { recursive: true });
  await writeFileAtomic(o.out, result.bytes);
  const m = result.manifest;
  return {
    model: resolve(o.out),
    name: m.name,
    trainImages: m.training.images,
    validationImages: m.training.validationImages,
    skipped,
    memoryBank: m.coreset.entries,
    patches: m.coreset.patches,
    thresholds: { image: m.thresholds.image, pixel: m.thresholds.pixel },
    timingsMs: { ...result.timings, decode: timing.decodeMs, total: performance.now() - started },
    trainingDigest: digest,
  };
}
