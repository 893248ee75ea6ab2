/**
 * The runtime the agent and the evaluator share: load a compiled model (ONNX + manifest),
 * pick the execution provider, run batches of preprocessed images and turn the raw outputs
 * into Predictions (raw and normalised score, anomaly map, binary mask at the threshold).
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import ort from 'onnxruntime-node';
import { keepFasterThanCpu, msPerImage } from './provider-speed.js';
import { createSession, type ProviderChoice, type ProviderName, type SessionResult } from './execution-provider.js';
import { normalizeScore, readManifest, type ModelManifest } from './manifest.js';
import { decodeModel, encodeModel, OnnxFormatError } from './onnx/proto.js';
import { AnomalyMapBuilder } from './anomaly-map.js';
import { buildFeatureGraph, buildTapProbeGraph, geometry, OUTPUT_EMBEDDING, OUTPUT_MAP, OUTPUT_MAX, OUTPUT_PATCH_DISTANCES, OUTPUT_SCORE } from './patchcore-graph.js';
import type { LoadedBackbone } from './backbone.js';
import { BackboneError } from './backbone.js';
import type { ImageThresholds, Prediction, ScanPrediction } from './types.js';

export interface RawOutputs {
  scores: Float32Array;
  maxDistances: Float32Array;
  /** [n, size, size] */
  maps: Float32Array;
}

export interface LoadModelOptions {
  provider?: ProviderChoice;
  intraOpThreads?: number;
  /** See SessionOptions.allowSpinning (default true, onnxruntime's). */
  allowSpinning?: boolean;
  /** Refuse the model unless it was built on this backbone digest. */
  expectBackboneSha256?: string;
}

export class ModelLoadError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ModelLoadError';
  }
}

export class PatchcoreModel {
  /** Builds maps from patch distances in scan; null for model files without that output. */
  private readonly mapBuilder: AnomalyMapBuilder | null;
  /** session.run calls not yet returned: release() waits for them (onnxruntime-node starts a run in a setImmediate). */
  private runs = 0;
  private drained: (() => void) | null = null;
  private releasing: Promise<void> | null = null;

  private constructor(
    readonly manifest: ModelManifest,
    /** sha256 of the model file: the identity events and statuses carry. */
    readonly digest: string,
    private readonly session: ort.InferenceSession,
    readonly provider: ProviderName,
    readonly fallbacks: SessionResult['fallbacks'],
    readonly origin: string,
  ) {
    this.mapBuilder = session.outputNames.includes(OUTPUT_PATCH_DISTANCES) ? new AnomalyMapBuilder(manifest.patchGrid, manifest.inputSize) : null;
  }

  get inputSize(): number {
    return this.manifest.inputSize;
  }

  /**
   * Load from a file path or bytes; validates the manifest, and the manifest against the graph
   * (input [N,3,S,S], outputs, patch grid: readManifest), before creating the session. Worker
   * threads and replicas load through here too (model-worker.ts).
   */
  static async load(source: string | Uint8Array, opts: LoadModelOptions = {}, origin = typeof source === 'string' ? source : 'model'): Promise<PatchcoreModel> {
    const bytes = await readModelSource(source);
    let manifest: ModelManifest;
    try {
      manifest = readManifest(decodeModel(bytes, origin), origin);
    } catch (e) {
      if (e instanceof OnnxFormatError) throw new ModelLoadError(e.message);
      throw new ModelLoadError((e as Error).message);
    }
    if (opts.expectBackboneSha256 && manifest.backbone.sha256 !== opts.expectBackboneSha256) {
      throw new ModelLoadError(
        `${origin}: built on backbone ${manifest.backbone.id} (${manifest.backbone.sha256.slice(0, 12)}…), expected ${opts.expectBackboneSha256.slice(0, 12)}…`,
      );
    }
    const digest = createHash('sha256').update(bytes).digest('hex');
    let created: SessionResult;
    try {
      const sessionOpts = { provider: opts.provider, intraOpThreads: opts.intraOpThreads, allowSpinning: opts.allowSpinning };
      created = await createSession(bytes, sessionOpts);
      if ((opts.provider ?? 'auto') === 'auto' && created.provider !== 'cpu') {
        created = await keepFasterThanCpu(created, bytes, sessionOpts, (session) => msPerImage(session, manifest.inputSize));
      }
    } catch (e) {
      throw new ModelLoadError(`${origin}: ${(e as Error).message}`);
    }
    return new PatchcoreModel(manifest, digest, created.session, created.provider, created.fallbacks, origin);
  }

  /** Run n preprocessed images ([n,3,S,S] float32) through the model. */
  async run(batch: Float32Array, n: number): Promise<RawOutputs> {
    const out = await this.runSession(this.feeds(batch, n));
    return {
      scores: out[OUTPUT_SCORE]!.data as Float32Array,
      maxDistances: out[OUTPUT_MAX]!.data as Float32Array,
      maps: out[OUTPUT_MAP]!.data as Float32Array,
    };
  }

  /** session.run, counted for release(); refused once release() has been called. */
  private async runSession(feeds: ort.InferenceSession.FeedsType, fetches?: string[]): Promise<ort.InferenceSession.ReturnType> {
    if (this.releasing) throw new Error(`model ${this.origin}: released`);
    this.runs++;
    try {
      return await (fetches ? this.session.run(feeds, fetches) : this.session.run(feeds));
    } finally {
      if (--this.runs === 0) this.drained?.();
    }
  }

  private feeds(batch: Float32Array, n: number): ort.InferenceSession.FeedsType {
    const s = this.inputSize;
    if (n < 1 || batch.length < n * 3 * s * s) {
      throw new RangeError(`batch of ${n} needs ${n * 3 * s * s} values, got ${batch.length}`);
    }
    const input = new ort.Tensor('float32', batch.length === n * 3 * s * s ? batch : batch.subarray(0, n * 3 * s * s), [n, 3, s, s]);
    return { [this.session.inputNames[0]!]: input };
  }

  /**
   * Run a batch and build one Prediction per image. Thresholds default to the manifest's.
   * The maps of one batch are views of onnxruntime's output and the masks views of one
   * allocation: a batch allocates two buffers, not two per image (the agent runs this many times
   * a second, and V8 collects garbage by the bytes allocated).
   */
  async predict(batch: Float32Array, n: number, thresholds: ImageThresholds[] = []): Promise<Prediction[]> {
    const raw = await this.run(batch, n);
    const plane = this.inputSize * this.inputSize;
    const masks = new Uint8Array(n * plane);
    return this.decide(raw.scores, thresholds).map((d, i) => {
      const map = raw.maps.subarray(i * plane, (i + 1) * plane);
      const mask = masks.subarray(i * plane, (i + 1) * plane);
      fillMask(map, mask, d.pixelThreshold);
      return { ...d.prediction, anomalyMap: map, mask };
    });
  }

  /**
   * As predict, but only anomalous images get a map and mask (one buffer each for the batch), and
   * a batch of normal images allocates none. The model's full-size maps are not fetched: scan takes
   * the patch distances (3 KB a crop, not 200 KB) and builds the few maps it needs on the CPU.
   * Model files from before that output existed take the maps from the graph.
   */
  async scan(batch: Float32Array, n: number, thresholds: ImageThresholds[] = []): Promise<ScanPrediction[]> {
    if (!this.mapBuilder) return this.scanGraphMaps(batch, n, thresholds);
    const out = await this.runSession(this.feeds(batch, n), [OUTPUT_SCORE, OUTPUT_PATCH_DISTANCES]);
    const distances = out[OUTPUT_PATCH_DISTANCES]!.data as Float32Array;
    const cells = this.mapBuilder.grid * this.mapBuilder.grid;
    if (distances.length !== n * cells) {
      throw new Error(`${this.origin}: '${OUTPUT_PATCH_DISTANCES}' has ${distances.length} values for ${n} images, expected ${n * cells}`);
    }
    return this.withMaps(out[OUTPUT_SCORE]!.data as Float32Array, thresholds, (i, map) => {
      this.mapBuilder!.build(distances.subarray(i * cells, (i + 1) * cells), map);
    });
  }

  private async scanGraphMaps(batch: Float32Array, n: number, thresholds: ImageThresholds[]): Promise<ScanPrediction[]> {
    const raw = await this.run(batch, n);
    const plane = this.inputSize * this.inputSize;
    return this.withMaps(raw.scores, thresholds, (i, map) => map.set(raw.maps.subarray(i * plane, (i + 1) * plane)));
  }

  /** ScanPredictions for a batch's scores; fillMap writes image i's map for the anomalous ones. */
  private withMaps(scores: Float32Array, thresholds: ImageThresholds[], fillMap: (i: number, map: Float32Array) => void): ScanPrediction[] {
    const plane = this.inputSize * this.inputSize;
    const decided = this.decide(scores, thresholds);
    const anomalous = decided.filter((d) => d.prediction.isAnomalous).length;
    const maps = anomalous > 0 ? new Float32Array(anomalous * plane) : null;
    const masks = anomalous > 0 ? new Uint8Array(anomalous * plane) : null;
    let k = 0;
    return decided.map((d, i) => {
      if (!d.prediction.isAnomalous || !maps || !masks) return { ...d.prediction, anomalyMap: null, mask: null };
      const map = maps.subarray(k * plane, (k + 1) * plane);
      const mask = masks.subarray(k * plane, (k + 1) * plane);
      k++;
      fillMap(i, map);
      fillMask(map, mask, d.pixelThreshold);
      return { ...d.prediction, anomalyMap: map, mask };
    });
  }

  /** Per image: everything of a Prediction but the map and mask, and the pixel threshold for the mask. */
  private decide(scores: Float32Array, thresholds: ImageThresholds[]): Array<{ prediction: Omit<Prediction, 'anomalyMap' | 'mask'>; pixelThreshold: number }> {
    return Array.from(scores, (score, i) => {
      const imageThreshold = thresholds[i]?.image ?? this.manifest.thresholds.image;
      return {
        prediction: {
          score,
          normalizedScore: normalizeScore(score, imageThreshold, this.manifest.normalizationRange),
          mapSize: this.inputSize,
          threshold: imageThreshold,
          isAnomalous: score > imageThreshold,
          modelDigest: this.digest,
        },
        pixelThreshold: thresholds[i]?.pixel ?? this.manifest.thresholds.pixel,
      };
    });
  }

  /**
   * Releases the session once the runs already asked for have finished (a predict or scan called
   * before release() completes); calls after it fail with "released". Calling it again is a no-op.
   */
  release(): Promise<void> {
    this.releasing ??= (async () => {
      if (this.runs > 0) await new Promise<void>((resolve) => (this.drained = resolve));
      await this.session.release();
    })();
    return this.releasing;
  }
}

/** The bytes of a model given as a file path or as bytes; an unreadable file is a ModelLoadError. */
export async function readModelSource(source: string | Uint8Array): Promise<Uint8Array> {
  if (typeof source !== 'string') return source;
  try {
    return await readFile(source);
  } catch (e) {
    throw new ModelLoadError(`model ${source}: cannot read (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
}

/** Backbone + aggregation only: turns images into patch embeddings (used by fit and eval caches). */
export class FeatureExtractor {
  private constructor(
    private readonly session: ort.InferenceSession,
    readonly provider: ProviderName,
    readonly patches: number,
    readonly dim: number,
    readonly inputSize: number,
  ) {}

  static async create(backbone: LoadedBackbone, opts: { inputSize?: number; provider?: ProviderChoice; intraOpThreads?: number } = {}): Promise<FeatureExtractor> {
    const d = backbone.descriptor;
    const inputSize = opts.inputSize ?? d.inputSize;
    await verifyTapStrides(backbone, inputSize, opts.provider);
    const g = geometry(d, inputSize);
    const { session, provider } = await createSession(encodeModel(buildFeatureGraph(backbone.model, d, inputSize)), opts);
    return new FeatureExtractor(session, provider, g.grid * g.grid, g.dim, inputSize);
  }

  /** [n,3,S,S] → [n, patches, dim] */
  async embed(batch: Float32Array, n: number): Promise<Float32Array> {
    const s = this.inputSize;
    const input = new ort.Tensor('float32', batch.subarray(0, n * 3 * s * s), [n, 3, s, s]);
    const out = await this.session.run({ [this.session.inputNames[0]!]: input });
    return out[OUTPUT_EMBEDDING]!.data as Float32Array;
  }

  async release(): Promise<void> {
    await this.session.release();
  }
}

/** Runs the backbone once on a blank image and checks each tap's channels and stride. */
export async function verifyTapStrides(backbone: LoadedBackbone, inputSize: number, provider: ProviderChoice = 'cpu'): Promise<void> {
  const d = backbone.descriptor;
  let session: ort.InferenceSession;
  try {
    ({ session } = await createSession(encodeModel(buildTapProbeGraph(backbone.model, d, inputSize)), { provider }));
  } catch (e) {
    throw new BackboneError(`backbone ${backbone.path}: the tap graph does not load (${(e as Error).message})`);
  }
  try {
    // A batch of 2: fit, eval and the agent run batches, and a graph that hard-codes batch 1 (a
    // Reshape to [1,C,H,W]) should fail here, naming the backbone, not in the middle of a fit.
    const n = 2;
    let out: ort.InferenceSession.OnnxValueMapType;
    try {
      out = await session.run({ [d.input]: new ort.Tensor('float32', new Float32Array(n * 3 * inputSize * inputSize), [n, 3, inputSize, inputSize]) });
    } catch (e) {
      throw new BackboneError(
        `backbone ${backbone.path}: the taps cannot be computed for a batch of ${n} images of ${inputSize}×${inputSize} ` +
          `(a backbone must take any batch size and this input size): ${(e as Error).message.split('\n')[0]}`,
      );
    }
    d.taps.forEach((tap, i) => {
      const dims = out[`tap${i}`]!.dims;
      const expected = Math.ceil(inputSize / tap.stride);
      if (dims.length !== 4 || dims[0] !== n || dims[1] !== tap.channels || dims[2] !== expected || dims[3] !== expected) {
        throw new BackboneError(
          `backbone ${backbone.path}: tap '${tap.tensor}' has shape [${dims.join(',')}] for ${n} images of ${inputSize}×${inputSize}; ` +
            `the descriptor says stride ${tap.stride} and ${tap.channels} channels, i.e. [${n},${tap.channels},${expected},${expected}]` +
            (inputSize % tap.stride !== 0 && dims[1] === tap.channels ? `; ${inputSize} is not a multiple of ${tap.stride}: use an input size that is` : ''),
        );
      }
    });
  } finally {
    await session.release();
  }
}

/** mask[j] = 1 where the anomaly map is over the pixel threshold, else 0. */
function fillMask(map: Float32Array, mask: Uint8Array, pixelThreshold: number): void {
  for (let j = 0; j < map.length; j++) mask[j] = map[j]! > pixelThreshold ? 1 : 0;
}
