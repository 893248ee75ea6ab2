/**
 * The model manifest: everything a runtime needs to know about a compiled model, stored inside
 * the ONNX file as metadata (key `shelfwatch.manifest`, JSON), so one file is the whole model.
 */
import { z } from 'zod';
import type { ModelProto } from './onnx/proto.js';
import { issueLines } from './zod-issues.js';

export const MANIFEST_KEY = 'shelfwatch.manifest';
/** Bumped when a runtime of an older version could misread a newer model. */
export const MANIFEST_FORMAT = 1;

const stats = z.strictObject({
  count: z.number().int().nonnegative(),
  min: z.number(),
  max: z.number(),
  mean: z.number(),
  std: z.number().nonnegative(),
  p95: z.number(),
  p99: z.number(),
  p999: z.number(),
});
export type ScoreStatistics = z.infer<typeof stats>;

const manifestSchema = z.strictObject({
  format: z.number().int().positive(),
  kind: z.literal('patchcore'),
  name: z.string().min(1),
  backbone: z.strictObject({
    id: z.string().min(1),
    sha256: z.string().regex(/^[0-9a-f]{64}$/),
    taps: z.array(z.strictObject({ tensor: z.string(), stride: z.number().int().positive(), channels: z.number().int().positive() })).length(2),
    embedDim: z.number().int().positive().optional(),
    pretrainEmbedDim: z.number().int().positive().optional(),
  }),
  inputSize: z.number().int().positive(),
  normalization: z.strictObject({
    mean: z.tuple([z.number(), z.number(), z.number()]),
    std: z.tuple([z.number(), z.number(), z.number()]),
  }),
  patchGrid: z.number().int().positive(),
  embeddingDim: z.number().int().positive(),
  coreset: z.strictObject({
    ratio: z.number().positive().max(1),
    seed: z.number().int().nonnegative(),
    projection: z.enum(['jl', 'none']),
    patches: z.number().int().positive(),
    entries: z.number().int().positive(),
  }),
  reweightK: z.number().int().positive(),
  training: z.strictObject({
    images: z.number().int().positive(),
    /** sha256 over the sorted (name, file sha256) list of the training images. */
    digest: z.string().regex(/^[0-9a-f]{64}$/),
    validationImages: z.number().int().nonnegative(),
    validationSource: z.enum(['held-out', 'separate', 'training']),
  }),
  thresholds: z.strictObject({
    /** Default image-score threshold: scores above it are anomalous. */
    image: z.number(),
    /** Default anomaly-map threshold for the binary mask. */
    pixel: z.number(),
    method: z.string(),
  }),
  statistics: z.strictObject({
    image: stats,
    pixel: stats,
  }),
  /** Min and max used to map raw scores to [0,1] (threshold → 0.5). */
  normalizationRange: z.strictObject({ min: z.number(), max: z.number() }),
  tool: z.strictObject({ name: z.literal('shelfwatch'), version: z.string() }),
  createdAt: z.string(),
});
export type ModelManifest = z.infer<typeof manifestSchema>;

export class ManifestError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ManifestError';
  }
}

export function attachManifest(model: ModelProto, manifest: ModelManifest): void {
  const rest = (model.metadataProps ?? []).filter((p) => p.key !== MANIFEST_KEY);
  model.metadataProps = [...rest, { key: MANIFEST_KEY, value: JSON.stringify(manifest) }];
}

/** Reads and validates the manifest of a compiled model; refuses newer formats clearly. */
export function readManifest(model: ModelProto, origin: string): ModelManifest {
  const entry = (model.metadataProps ?? []).find((p) => p.key === MANIFEST_KEY);
  if (!entry) throw new ManifestError(`${origin}: not a shelfwatch model (no '${MANIFEST_KEY}' metadata; was it made by \`shelfwatch fit\`?)`);
  return parseManifest(entry.value, origin);
}

export function parseManifest(text: string, origin: string): ModelManifest {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new ManifestError(`${origin}: the model manifest is not valid JSON (${(e as Error).message})`);
  }
  const format = (json as { format?: unknown })?.format;
  if (typeof format === 'number' && format > MANIFEST_FORMAT) {
    throw new ManifestError(`${origin}: model format ${format} is newer than this shelfwatch understands (${MANIFEST_FORMAT}); upgrade shelfwatch`);
  }
  const r = manifestSchema.safeParse(json);
  if (!r.success) {
    throw new ManifestError(`${origin}: invalid model manifest\n${issueLines(r.error.issues, '(root)').map((l) => `  ${l}`).join('\n')}`);
  }
  return r.data;
}

/** Summary statistics of a sample of scores (sorted copy; percentiles by linear interpolation). */
export function scoreStatistics(values: ArrayLike<number>): ScoreStatistics {
  const n = values.length;
  if (n === 0) return { count: 0, min: 0, max: 0, mean: 0, std: 0, p95: 0, p99: 0, p999: 0 };
  const sorted = Float64Array.from(values as ArrayLike<number>).sort();
  let sum = 0;
  for (let i = 0; i < n; i++) sum += sorted[i]!;
  const mean = sum / n;
  let sq = 0;
  for (let i = 0; i < n; i++) sq += (sorted[i]! - mean) ** 2;
  const q = (p: number): number => {
    const pos = p * (n - 1);
    const lo = Math.floor(pos);
    const hi = Math.min(lo + 1, n - 1);
    return sorted[lo]! + (sorted[hi]! - sorted[lo]!) * (pos - lo);
  };
  return { count: n, min: sorted[0]!, max: sorted[n - 1]!, mean, std: Math.sqrt(sq / n), p95: q(0.95), p99: q(0.99), p999: q(0.999) };
}

/** Maps a raw score to [0,1] so that the threshold lands on 0.5 (anomalib's min-max scheme). */
export function normalizeScore(score: number, threshold: number, range: { min: number; max: number }): number {
  const span = range.max - range.min > 0 ? range.max - range.min : Math.max(Math.abs(threshold), 1e-6);
  const v = (score - threshold) / span + 0.5;
  return Math.min(1, Math.max(0, v));
}
