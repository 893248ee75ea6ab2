/** `shelfwatch fit`: normal images in, one self-contained model file out. */
import { mkdir, realpath } from 'node:fs/promises';
import { basename, dirname, join, resolve, sep } from 'node:path';
import { extractFeatures, fitFromFeatures, FitError, modelNameProblem, type FitStage } from '../../models/fit.js';
import { describeSkipped, digestOfHashes, IMAGE_EXTENSIONS, listImages, preprocessedBatches, sha256Hex, splitHoldOut, type SkippedFile } from '../../pipelines/image-files.js';
import { cachedBackbonePath, resolveDescriptor, selectBackbone } from '../backbones.js';
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
  /** The CLI's default is 'cpu': byte-identical models for the same inputs and seed hold per provider. */
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

/** The latest time a Date can hold is 8.64e15 ms after 1970: SOURCE_DATE_EPOCH's upper bound, in seconds. */
const MAX_EPOCH_SECONDS = 8_640_000_000_000;

/** Reproducible builds: SOURCE_DATE_EPOCH fixes the creation time stamped into the model. */
export function creationTime(env: NodeJS.ProcessEnv): string {
  const epoch = env.SOURCE_DATE_EPOCH;
  if (epoch !== undefined && epoch !== '') {
    if (!/^\d+$/.test(epoch) || Number(epoch) > MAX_EPOCH_SECONDS) {
      throw new Error(`SOURCE_DATE_EPOCH must be whole seconds since 1970, from 0 to ${MAX_EPOCH_SECONDS}, got '${epoch}'`);
    }
    return new Date(Number(epoch) * 1000).toISOString();
  }
  return new Date().toISOString();
}

/**
 * --out must name a model file: not a folder (no trailing separator), ending in .onnx with a name
 * before it. Returns the model name the file name gives.
 */
function checkOutName(out: string): string {
  if (out === '') throw new Error('--out must not be empty: give the model file to write, e.g. model.onnx');
  if (out.endsWith('/') || out.endsWith(sep)) {
    throw new Error(`--out ${out}: ends with a path separator, so it names a folder; give the model file's path, e.g. ${join(out, 'model.onnx')}`);
  }
  const base = basename(out);
  if (base.toLowerCase() === '.onnx') throw new Error(`--out ${out}: the file name needs a name before .onnx, e.g. ${join(dirname(out), 'model.onnx')}`);
  if (!/\.onnx$/i.test(base)) {
    throw new Error(`--out ${out}: a model file must end in .onnx, e.g. ${join(dirname(out), `${base.replace(/\.[^.]*$/, '') || 'model'}.onnx`)}`);
  }
  return base.replace(/\.onnx$/i, '');
}

/** The real path of `p`; for a path that does not exist yet, its folder's real path joined with its name. */
async function realPathOf(p: string): Promise<string> {
  try {
    return await realpath(p);
  } catch {
    try {
      return join(await realpath(dirname(resolve(p))), basename(p));
    } catch {
      return resolve(p);
    }
  }
}

/**
 * The model must not be written over one of the files the fit reads: refuses an --out that is
 * (after symbolic links) an input image, a --val image, the backbone or its descriptor.
 */
async function checkOutIsNoInput(out: string, inputs: Array<{ what: string; files: string[] }>): Promise<void> {
  // A file that does not exist yet cannot be an input (they all exist).
  let target: string;
  try {
    target = await realpath(out);
  } catch {
    return;
  }
  for (const { what, files } of inputs) {
    for (let i = 0; i < files.length; i += 64) {
      const reals = await Promise.all(files.slice(i, i + 64).map(realPathOf));
      const k = reals.indexOf(target);
      if (k >= 0) {
        const file = files[i + k]!;
        throw new Error(`--out ${out}: is ${what} ${file}${resolve(file) === resolve(out) ? '' : ` (both are ${target})`}; writing the model there would destroy it — choose another --out`);
      }
    }
  }
}

export async function runFit(o: FitCommandOptions): Promise<FitSummary> {
  const env = o.env ?? process.env;
  const log = o.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  const started = performance.now();
  // Every value first, naming its flag: nothing here may fail after minutes of fitting.
  if (!(o.coreset > 0 && o.coreset <= 1)) throw new Error(`--coreset must be in (0, 1], got ${o.coreset}`);
  if (!(o.holdout >= 0 && o.holdout < 1)) throw new Error(`--holdout must be in [0, 1), got ${o.holdout}`);
  if (!Number.isSafeInteger(o.seed) || o.seed < 0) throw new Error(`--seed must be a whole number from 0 to ${Number.MAX_SAFE_INTEGER}, got ${o.seed}`);
  if (!Number.isSafeInteger(o.batch) || o.batch < 1) throw new Error(`--batch must be a positive integer, got ${o.batch}`);
  const createdAt = creationTime(env);
  const fileName = checkOutName(o.out);
  const name = o.name ?? fileName;
  const nameProblem = modelNameProblem(name);
  if (nameProblem) throw new Error(o.name !== undefined ? `--name ${nameProblem}` : `--out ${o.out}: the model name from the file name ${nameProblem}; pass --name`);
  // Cheap checks first: a typo in a path must not cost a backbone download or a whole fit.
  await checkOutputFile('--out', o.out, 'model.onnx');

  const skipped: SkippedFile[] = [];
  const reported = new Set<string>();
  const onSkip = (s: SkippedFile) => {
    // One line per file, however often it was tried (training and validation may share files).
    if (reported.has(s.file)) return;
    reported.add(s.file);
    skipped.push(s);
    if (!o.json) log(`skipped ${s.file}: ${s.reason}`);
  };
  const skipNote = () => (skipped.length > 0 ? `; ${describeSkipped(skipped, 3)}` : '');
  const all = await listImages(o.images, onSkip);
  if (all.length === 0) throw new Error(`no image files (${[...IMAGE_EXTENSIONS].join(' ')}) in ${o.images.join(', ')}${skipNote()}`);
  const val = o.val && o.val.length > 0 ? await listImages(o.val, onSkip) : null;
  if (val?.length === 0) throw new Error(`--val: no image files in ${o.val!.join(', ')}${skipNote()}`);
  const training = new Set(all);
  const alsoTrained = val ? val.filter((f) => training.has(f)) : [];
  if (alsoTrained.length > 0) {
    log(`warning: ${alsoTrained.length} of the ${val!.length} --val image(s) are also training images (${alsoTrained[0]}${alsoTrained.length > 1 ? ', …' : ''}): the memory bank has seen them, so the thresholds will be too low`);
  }

  const descriptor = await resolveDescriptor(o.backboneId);
  const backboneFile = o.backbone ?? env.SHELFWATCH_BACKBONE;
  await checkOutIsNoInput(o.out, [
    { what: 'the input image', files: all },
    { what: 'the --val image', files: val ?? [] },
    { what: 'the backbone file', files: [backboneFile ? backboneFile : cachedBackbonePath(descriptor, env)] },
    { what: 'the --backbone-id descriptor', files: o.backboneId?.endsWith('.json') ? [o.backboneId] : [] },
  ]);

  const backbone = await selectBackbone({ file: o.backbone, descriptor: o.backboneId, env });
  await checkOutIsNoInput(o.out, [{ what: 'the backbone file', files: [backbone.path] }]);
  const d = backbone.descriptor;
  const size = o.inputSize ?? d.inputSize;
  const timing = { decodeMs: 0 };
  const batchOpts = { size, normalization: d.normalization, batchSize: o.batch, onSkip, timing };
  // sha256 of the bytes of every image decoded: the training digest covers exactly the images used.
  const hashes = new Map<string, string>();
  const onUsed = (file: string, bytes: Buffer) => hashes.set(file, sha256Hex(bytes));

  const bars = new Map<FitStage, Progress>();
  const labels: Record<FitStage, string> = { features: 'features ', coreset: 'coreset  ', compile: 'compile  ', validation: 'threshold' };
  const onProgress = (stage: FitStage, done: number, total: number) => {
    let bar = bars.get(stage);
    if (!bar) {
      for (const b of bars.values()) b.done();
      bar = progressBar(labels[stage], { enabled: !o.json });
      bars.set(stage, bar);
    }
    bar.update(done, total);
  };

  let train: string[] = [];
  let validation: string[] = [];
  let validationSource: 'held-out' | 'separate' | 'training' = 'held-out';
  let digest = '';
  const fit = async () => {
    // Features of every listed training candidate, in file order; the files that decoded are the usable ones.
    const embeddedFiles: string[] = [];
    const tracked = async function* () {
      for await (const b of preprocessedBatches(all, { ...batchOpts, onUsed })) {
        embeddedFiles.push(...b.files);
        yield b;
      }
    };
    let t = performance.now();
    let embedded = await extractFeatures(backbone, tracked(), all.length, { inputSize: size, provider: o.provider, onProgress: (done, total) => onProgress('features', done, total) });
    const featuresMs = performance.now() - t;
    if (embeddedFiles.length === 0) throw new FitError(`no usable training image: none of the ${all.length} image file(s) could be read and decoded`);
    if (val) {
      train = embeddedFiles;
      validation = val;
      validationSource = 'separate';
    } else {
      // The hold-out is drawn from the usable images only, so an unreadable file can neither leave the
      // thresholds without images nor change which images are held out: the same usable set always
      // gives the same split (and the same model as a folder without the bad file).
      const split = splitHoldOut(embeddedFiles.map((_, i) => i), o.holdout);
      train = split.train.map((i) => embeddedFiles[i]!);
      validation = split.validation.map((i) => embeddedFiles[i]!);
      if (validation.length < embeddedFiles.length) {
        // Keep the training rows only, in order (in place: row k comes from row ≥ k).
        const per = embedded.patchesPerImage * embedded.dim;
        split.train.forEach((from, k) => {
          if (from !== k) embedded.features.copyWithin(k * per, from * per, (from + 1) * per);
        });
        embedded = { ...embedded, features: embedded.features.subarray(0, train.length * per), images: train.length };
      }
      if (validation.length === 0) {
        validation = train;
        validationSource = 'training';
        log(
          o.holdout === 0
            ? 'warning: --holdout 0: thresholds come from the training images themselves and will be too low; pass --val <normal images>'
            : `warning: only ${train.length} usable image(s): thresholds come from the training images themselves and will be too low; pass --val <normal images>`,
        );
      }
    }
    digest = digestOfHashes(train.map((f) => [f, hashes.get(f)!] as const));
    t = performance.now();
    const result = await fitFromFeatures(embedded, {
      name,
      backbone,
      validationCount: validation.length,
      validation: preprocessedBatches(validation, batchOpts),
      validationSource,
      trainingDigest: digest,
      coresetRatio: o.coreset,
      seed: o.seed,
      projection: o.projection,
      inputSize: size,
      provider: o.provider,
      createdAt,
      onProgress,
    });
    result.timings.features = featuresMs;
    return result;
  };
  const result = await fit().catch((err: Error) => {
    // With --json the skip lines are not printed: the error must still say why images were unusable.
    if (!o.json || skipped.length === 0) throw err;
    throw new Error(`${err.message} (${describeSkipped(skipped, 3)})`, { cause: err });
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
