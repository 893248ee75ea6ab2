/**
 * Fitted models of an evaluation on disk: their names (the crop mode travels in the name),
 * whether a fitted model matches what a run wants (`modelMatches`), the folder scan that finds
 * reusable ones (`scanModelDir`) and the file name a newly fitted one is written under.
 */
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { readManifest, type ModelManifest } from '../models/manifest.js';
import { decodeModel } from '../models/onnx/proto.js';
import type { CropMode } from './eval-types.js';

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

/** The file a newly fitted model is written to in the `models` folder: its name plus what it was fitted with. */
export function modelFileName(name: string, w: ModelWanted): string {
  const safe = name.replace(/ \[crop=auto\]$/, '').replace(/[^A-Za-z0-9._-]+/g, '_');
  return `${safe}.${w.crop === 'auto' ? 'crop.' : ''}r${w.coreset}.s${w.seed}.${w.inputSize}.${w.backboneSha256.slice(0, 8)}.${w.trainingDigest.slice(0, 8)}.onnx`;
}
