/**
 * Fitted models of an evaluation on disk: their names (the crop mode travels in the name),
 * whether a fitted model can be reused by a run (`reuseMismatch`, `findReusableModel`), the
 * folder scan that finds candidates (`scanModelDir`) and the file name a newly fitted one is
 * written under.
 *
 * A model is reused only when it was fitted from the same images with the same fit settings
 * (`modelMatches`: manifest fields) AND its features were made the way this run makes them:
 * the same normalisation and backbone taps / embedDim / pretrainEmbedDim (manifest fields), and
 * the same shrink-on-load, preprocessing version and descriptor feature fields. The manifest has
 * no field for those, so the evaluator records them in the model file itself, as a second ONNX
 * metadata entry (`EVAL_RECORD_KEY`, see EvalRecord) next to the manifest: runtimes read only
 * the manifest entry, so such a model still loads everywhere, older agents included (a new
 * manifest field would be refused by their strict manifest schema). A model without that record
 * (fitted by `shelfwatch fit`, or by an evaluator before the record existed) was made with
 * unknown preprocessing: it is refitted, never reused.
 */
import { createHash } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { readManifest, type ModelManifest } from '../models/manifest.js';
import { decodeModel, encodeModel, type ModelProto } from '../models/onnx/proto.js';
import type { BackboneDescriptor } from '../models/types.js';
import type { CropMode } from './eval-types.js';
import { featureKeyOf, PREPROCESS_VERSION, type FeatureKey } from './feature-cache.js';

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

/**
 * Whether a fitted model was made from the same images with the same fit settings, by its
 * manifest alone. Not enough to reuse it: see reuseMismatch, which also checks how its
 * features were made.
 */
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

// ───────────────────────────── the evaluator's record in a model ─────────────────────────────

/** ONNX metadata key of the evaluator's record (the manifest is under 'shelfwatch.manifest'). */
export const EVAL_RECORD_KEY = 'shelfwatch.eval';
const EVAL_RECORD_FORMAT = 1;

/** How the features of a model fitted by the evaluator were made, beyond its manifest. */
export interface EvalRecord {
  format: number;
  /** Images decoded with shrink-on-load (JPEG DCT scaling) or at full resolution. */
  shrinkOnLoad: boolean;
  /** feature-cache.ts PREPROCESS_VERSION of the code that made the inputs. */
  preprocess: number;
  /** The backbone descriptor's feature fields (input, taps with dequantisation, pooling). */
  features: FeatureKey;
}

/** What a run's models must have been made with (besides ModelWanted), from its settings and descriptor. */
export interface PreprocessWanted {
  shrinkOnLoad: boolean;
  descriptor: BackboneDescriptor;
}

export function evalRecordOf(p: PreprocessWanted): EvalRecord {
  return { format: EVAL_RECORD_FORMAT, shrinkOnLoad: p.shrinkOnLoad, preprocess: PREPROCESS_VERSION, features: featureKeyOf(p.descriptor) };
}

/** Model bytes with the evaluator's record added (or replaced) as ONNX metadata. */
export function withEvalRecord(bytes: Uint8Array, record: EvalRecord, origin = 'fitted model'): Uint8Array {
  const model = decodeModel(bytes, origin);
  const rest = (model.metadataProps ?? []).filter((p) => p.key !== EVAL_RECORD_KEY);
  model.metadataProps = [...rest, { key: EVAL_RECORD_KEY, value: JSON.stringify(record) }];
  return encodeModel(model);
}

/** The evaluator's record of a model, or null when it has none (or an unreadable one). */
export function readEvalRecord(model: ModelProto): EvalRecord | null {
  const entry = (model.metadataProps ?? []).find((p) => p.key === EVAL_RECORD_KEY);
  if (!entry) return null;
  try {
    const r = JSON.parse(entry.value) as Partial<EvalRecord>;
    if (r.format !== EVAL_RECORD_FORMAT || typeof r.shrinkOnLoad !== 'boolean' || typeof r.preprocess !== 'number' || typeof r.features !== 'object' || r.features === null) return null;
    return r as EvalRecord;
  } catch {
    return null;
  }
}

// ───────────────────────────── reuse ─────────────────────────────

export interface ModelFile {
  file: string;
  manifest: ModelManifest;
  /** The evaluator's record; null = not recorded (preprocessing unknown: never reused). */
  record: EvalRecord | null;
}

const same = (a: unknown, b: unknown) => JSON.stringify(a) === JSON.stringify(b);
const onOff = (b: boolean) => (b ? 'on' : 'off');

/**
 * Why a model that matches the fit settings (modelMatches) cannot be reused by this run, or
 * null when it can: its normalisation, backbone taps, embedDim or pretrainEmbedDim differ from
 * the run's descriptor, or it does not record (or records another) shrink-on-load,
 * preprocessing version or descriptor feature fields.
 */
export function preprocessMismatch(f: Pick<ModelFile, 'manifest' | 'record'>, p: PreprocessWanted): string | null {
  const m = f.manifest;
  const d = p.descriptor;
  if (!same(m.normalization.mean, d.normalization.mean) || !same(m.normalization.std, d.normalization.std)) {
    const show = (n: { mean: readonly number[]; std: readonly number[] }) => `mean ${n.mean.join('/')} std ${n.std.join('/')}`;
    return `fitted with normalisation ${show(m.normalization)}, this run uses ${show(d.normalization)}`;
  }
  const taps = d.taps.map((t) => ({ tensor: t.tensor, stride: t.stride, channels: t.channels }));
  if (!same(m.backbone.taps.map((t) => ({ tensor: t.tensor, stride: t.stride, channels: t.channels })), taps)) {
    return `fitted on backbone taps ${m.backbone.taps.map((t) => `${t.tensor}/${t.stride}/${t.channels}`).join(', ')}, this run taps ${taps.map((t) => `${t.tensor}/${t.stride}/${t.channels}`).join(', ')}`;
  }
  if ((m.backbone.embedDim ?? null) !== (d.embedDim ?? null) || (m.backbone.pretrainEmbedDim ?? null) !== (d.pretrainEmbedDim ?? null)) {
    return `fitted with embedDim ${m.backbone.embedDim ?? 'none'} / pretrainEmbedDim ${m.backbone.pretrainEmbedDim ?? 'none'}, this run's descriptor has ${d.embedDim ?? 'none'} / ${d.pretrainEmbedDim ?? 'none'}`;
  }
  const r = f.record;
  if (!r) return 'it does not record its preprocessing (shrink-on-load unknown)';
  if (r.shrinkOnLoad !== p.shrinkOnLoad) return `fitted with shrink-on-load ${onOff(r.shrinkOnLoad)}, this run has it ${onOff(p.shrinkOnLoad)}`;
  if (r.preprocess !== PREPROCESS_VERSION) return `fitted with preprocessing version ${r.preprocess}, this shelfwatch has ${PREPROCESS_VERSION}`;
  if (!same(r.features, featureKeyOf(d))) return "fitted with other backbone descriptor feature fields (input, taps' dequantisation)";
  return null;
}

/**
 * The first model of `models` this run can reuse, or null. Models fitted from the same images
 * with the same settings but other preprocessing are reported through `onLog` (once each).
 */
export function findReusableModel(models: readonly ModelFile[], w: ModelWanted, p: PreprocessWanted, onLog?: (line: string) => void): ModelFile | null {
  for (const f of models) {
    if (!modelMatches(f.manifest, w)) continue;
    const why = preprocessMismatch(f, p);
    if (why === null) return f;
    onLog?.(`--models: not reusing ${f.file}: ${why}`);
  }
  return null;
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
      const model = decodeModel(await readFile(file), file);
      out.push({ file, manifest: readManifest(model, file), record: readEvalRecord(model) });
    } catch (e) {
      onLog?.(`--models: ignoring ${file}: ${(e as Error).message}`);
    }
  }
  return out;
}

/**
 * The file a newly fitted model is written to in the `models` folder: its name plus what it was
 * fitted with (`p<hash>`: its preprocessing and features, so that models of the same images made
 * with other preprocessing sit side by side instead of replacing each other).
 */
export function modelFileName(name: string, w: ModelWanted, record: EvalRecord, normalization: BackboneDescriptor['normalization']): string {
  const safe = name.replace(/ \[crop=auto\]$/, '').replace(/[^A-Za-z0-9._-]+/g, '_');
  const pre = createHash('sha256').update(JSON.stringify({ record, normalization })).digest('hex').slice(0, 6);
  return `${safe}.${w.crop === 'auto' ? 'crop.' : ''}r${w.coreset}.s${w.seed}.${w.inputSize}.${w.backboneSha256.slice(0, 8)}.${w.trainingDigest.slice(0, 8)}.p${pre}.onnx`;
}
