/**
 * The model manifest: everything a runtime needs to know about a compiled model, stored inside
 * the ONNX file as metadata (key `shelfwatch.manifest`, JSON), so one file is the whole model.
 */
import protobuf from 'protobufjs';
import { z } from 'zod';
import { declaredShape, showShape, type ModelProto } from './onnx/proto.js';
import { OUTPUT_MAP, OUTPUT_MAX, OUTPUT_PATCH_DISTANCES, OUTPUT_SCORE } from './patchcore-graph.js';
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

/** The input sizes a model may declare (as `fit --input-size` and backbone descriptors allow). */
export const INPUT_SIZE_RANGE = { min: 32, max: 2048 } as const;

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
  inputSize: z.number().int().min(INPUT_SIZE_RANGE.min).max(INPUT_SIZE_RANGE.max),
  normalization: z.strictObject({
    mean: z.tuple([z.number(), z.number(), z.number()]),
    // Preprocessing divides by it: 0 would make every pixel ±Infinity (every image then skipped).
    std: z.tuple([z.number().positive(), z.number().positive(), z.number().positive()]),
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

/**
 * Reads and validates the manifest of a compiled model; refuses newer formats clearly. The
 * manifest is also checked against the graph it describes (checkManifestAgainstGraph): every
 * loader of model files (runtime, worker threads, replicas, config check, rollback) goes through here.
 */
export function readManifest(model: ModelProto, origin: string): ModelManifest {
  const entries = (model.metadataProps ?? []).filter((p) => p.key === MANIFEST_KEY);
  if (entries.length > 1) throw new ManifestError(`${origin}: carries ${entries.length} '${MANIFEST_KEY}' metadata entries, a shelfwatch model has one (was the file edited by hand?)`);
  const entry = entries[0];
  if (!entry) throw new ManifestError(`${origin}: not a shelfwatch model (no '${MANIFEST_KEY}' metadata; was it made by \`shelfwatch fit\`?)`);
  const manifest = parseManifest(entry.value, origin);
  checkManifestAgainstGraph(manifest, model, origin);
  return manifest;
}

/**
 * Refuses a manifest that disagrees with the graph: the image input must be [N,3,S,S] with
 * S = inputSize, the outputs the runtime reads must exist, anomaly_map must be [N,1,S,S] and
 * patch_distances (when present) [N,g,g] with g = patchGrid. Symbolic dimensions are not checked
 * (the graph takes any size there). Otherwise a tampered or mismatched manifest loads and every
 * inference fails later (onnxruntime's "invalid dimensions", or scan's patch-distance count).
 */
export function checkManifestAgainstGraph(manifest: ModelManifest, model: ModelProto, origin: string): void {
  const graph = model.graph;
  if (!graph) throw new ManifestError(`${origin}: the model has no graph`);
  const initializers = new Set((graph.initializer ?? []).map((t) => t.name));
  const input = (graph.input ?? []).find((i) => !initializers.has(i.name));
  if (!input) throw new ManifestError(`${origin}: the model graph has no image input`);
  const s = manifest.inputSize;
  const inShape = declaredShape(input);
  if (inShape) {
    const want = [null, 3, s, s];
    if (inShape.length !== 4 || inShape.some((d, i) => i > 0 && d !== null && d !== want[i])) {
      const field = inShape.length === 4 && inShape[1] !== null && inShape[1] !== 3 ? 'the image input' : `manifest inputSize ${s}`;
      throw new ManifestError(`${origin}: ${field} does not match the graph: its input '${input.name}' is ${showShape(inShape)}, expected [N,3,${s},${s}]`);
    }
  }
  const outputs = new Map((graph.output ?? []).map((o) => [o.name ?? '', o]));
  for (const name of [OUTPUT_SCORE, OUTPUT_MAX, OUTPUT_MAP]) {
    if (!outputs.has(name)) throw new ManifestError(`${origin}: the model graph has no output '${name}' (outputs: ${[...outputs.keys()].join(', ') || 'none'}); was it made by \`shelfwatch fit\`?`);
  }
  const expect = (name: string, want: number[], field: string) => {
    const o = outputs.get(name);
    const shape = o && declaredShape(o);
    if (!shape) return;
    if (shape.length !== want.length + 1 || shape.some((d, i) => i > 0 && d !== null && d !== want[i - 1])) {
      throw new ManifestError(`${origin}: ${field} does not match the graph: its output '${name}' is ${showShape(shape)}, expected [N,${want.join(',')}]`);
    }
  };
  expect(OUTPUT_MAP, [1, s, s], `manifest inputSize ${s}`);
  expect(OUTPUT_PATCH_DISTANCES, [manifest.patchGrid, manifest.patchGrid], `manifest patchGrid ${manifest.patchGrid}`);
  // Also without that output (older files): the grid is the fine tap's map, ceil(S / stride) (patchcore-graph.ts geometry).
  const stride = manifest.backbone.taps[0]!.stride;
  if (manifest.patchGrid !== Math.ceil(s / stride)) {
    throw new ManifestError(`${origin}: manifest patchGrid ${manifest.patchGrid} does not fit inputSize ${s} with backbone.taps[0].stride ${stride} (expected ${Math.ceil(s / stride)})`);
  }
}

/**
 * The manifest text (unvalidated JSON) of model bytes, found without decoding the graph: the
 * top-level fields are skipped over, so a large file costs microseconds, not a full decode.
 * Null when the bytes are not a readable ModelProto or carry no manifest.
 */
export function peekManifestText(bytes: Uint8Array): string | null {
  const METADATA_PROPS = 14; // ModelProto.metadata_props (models/onnx/proto.ts)
  const LENGTH_DELIMITED = 2;
  try {
    const r = protobuf.Reader.create(bytes);
    let found: string | null = null;
    while (r.pos < r.len) {
      const tag = r.uint32();
      if (tag >>> 3 !== METADATA_PROPS || (tag & 7) !== LENGTH_DELIMITED) {
        r.skipType(tag & 7);
        continue;
      }
      const end = r.uint32() + r.pos;
      let key = '';
      let value = '';
      while (r.pos < end) {
        const t = r.uint32();
        if (t >>> 3 === 1 && (t & 7) === LENGTH_DELIMITED) key = r.string();
        else if (t >>> 3 === 2 && (t & 7) === LENGTH_DELIMITED) value = r.string();
        else r.skipType(t & 7);
      }
      if (key === MANIFEST_KEY && found === null) found = value; // the first, as readManifest (which refuses several)
    }
    return found;
  } catch {
    return null;
  }
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
