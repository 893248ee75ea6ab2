/**
 * Fits small real models for tests and caches them on disk (keyed by the images and the
 * model code), so each test file does not pay for a fit. Uses the shared MobileNetV2 backbone.
 */
import { createHash, randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rename, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadBackbone, MOBILENETV2_INT8 } from '../../models/backbone.js';
import { fitPatchcore } from '../../models/fit.js';
import { preprocessedBatches, splitHoldOut, trainingDigest } from '../../pipelines/image-files.js';

const HERE = resolve(fileURLToPath(new URL('../..', import.meta.url)));
/** The repository root, also when this runs compiled from dist/ (the benchmarks, as the agent runs in production). */
const ROOT = basename(HERE) === 'dist' ? dirname(HERE) : HERE;
export const SHARED = resolve(ROOT, '..', 'shared');
export const BACKBONE_PATH = join(SHARED, 'backbones', 'mobilenetv2-12-int8.onnx');
export const MAGNETIC_TILE = join(SHARED, 'datasets', 'magnetic_tile');

export function sharedAvailable(): boolean {
  return existsSync(BACKBONE_PATH) && existsSync(MAGNETIC_TILE);
}

export async function testBackbone() {
  return loadBackbone(BACKBONE_PATH, MOBILENETV2_INT8);
}

async function codeHash(): Promise<string> {
  const h = createHash('sha256');
  const dir = join(ROOT, 'models');
  for (const f of (await readdir(dir)).filter((n) => n.endsWith('.ts')).sort()) h.update(await readFile(join(dir, f)));
  return h.digest('hex').slice(0, 16);
}

/** The first n images of magnetic_tile train/good, sorted by name. */
export async function magneticTileTrain(n: number): Promise<string[]> {
  const dir = join(MAGNETIC_TILE, 'train', 'good');
  return (await readdir(dir)).filter((f) => f.endsWith('.jpg')).sort().slice(0, n).map((f) => join(dir, f));
}

/**
 * A model fitted on `images` (held-out 10 % for thresholds), cached under the OS temp dir.
 * Returns the model file path.
 */
export async function fittedModel(images: string[], opts: { name?: string; coreset?: number; seed?: number } = {}): Promise<string> {
  // Tests of one file ask for the same model concurrently: fit it once.
  const id = JSON.stringify([images, opts]);
  let pending = fitting.get(id);
  if (!pending) {
    pending = fitOrReuse(images, opts);
    fitting.set(id, pending);
    pending.catch(() => fitting.delete(id));
  }
  return pending;
}

const fitting = new Map<string, Promise<string>>();

async function fitOrReuse(images: string[], opts: { name?: string; coreset?: number; seed?: number }): Promise<string> {
  const name = opts.name ?? 'test-model';
  const coreset = opts.coreset ?? 0.1;
  const seed = opts.seed ?? 0;
  const key = createHash('sha256')
    .update(JSON.stringify({ name, coreset, seed, code: await codeHash(), data: await trainingDigest(images) }))
    .digest('hex')
    .slice(0, 20);
  const dir = join(tmpdir(), 'shelfwatch-test-models');
  const path = join(dir, `${name}-${key}.onnx`);
  if (existsSync(path)) return path;
  await mkdir(dir, { recursive: true });
  const backbone = await testBackbone();
  const { train, validation } = splitHoldOut(images, 0.1);
  const batch = { size: 224, normalization: MOBILENETV2_INT8.normalization, batchSize: 8 };
  const result = await fitPatchcore({
    name,
    backbone,
    trainCount: train.length,
    train: preprocessedBatches(train, batch),
    validationCount: validation.length,
    validation: preprocessedBatches(validation, batch),
    validationSource: 'held-out',
    trainingDigest: await trainingDigest(train),
    coresetRatio: coreset,
    seed,
    projection: 'jl',
    createdAt: '2026-01-01T00:00:00.000Z',
  });
  const tmp = `${path}.${process.pid}.${randomUUID()}.tmp`;
  await writeFile(tmp, result.bytes);
  await rename(tmp, path);
  return path;
}

/** The small model fitted on 40 magnetic_tile images and a batch of 4 images it has not seen. */
export async function tileModelAndBatch() {
  const path = await fittedModel(await magneticTileTrain(40), { name: 'pipeline-test' });
  const files = (await magneticTileTrain(48)).slice(40);
  const batches = [];
  for await (const b of preprocessedBatches(files, { size: 224, normalization: MOBILENETV2_INT8.normalization, batchSize: 4 })) batches.push(b);
  return { path, batch: batches[0]! };
}
