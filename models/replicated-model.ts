/**
 * Several sessions of ONE model, each in its own worker thread, used as one model: each batch
 * goes to the replica with the fewest batches in flight, and the micro-batcher runs up to
 * `concurrency` batches at once. On a CPU with more cores than one session uses well (small
 * feature maps parallelise poorly inside a convolution), replicas with fewer intra-op threads
 * each keep every core busy.
 */
import type { ProviderName, SessionResult } from './execution-provider.js';
import type { ModelManifest } from './manifest.js';
import { readModelSource, type LoadModelOptions } from './runtime.js';
import type { ImageThresholds, Prediction, ScanPrediction } from './types.js';
import { WorkerPatchcoreModel } from './worker-model.js';

export class ReplicatedModel {
  private readonly inFlight: number[];

  private constructor(private readonly replicas: readonly WorkerPatchcoreModel[]) {
    this.inFlight = replicas.map(() => 0);
  }

  /** Loads `count` (≥ 2) replicas from the same bytes; fails, releasing any loaded, if one fails. */
  static async load(source: string | Uint8Array, count: number, opts: LoadModelOptions = {}, origin = typeof source === 'string' ? source : 'model'): Promise<ReplicatedModel> {
    if (!Number.isInteger(count) || count < 2) throw new RangeError(`model ${origin}: replicas must be an integer ≥ 2, got ${String(count)}`);
    const bytes = await readModelSource(source);
    const loaded = await Promise.allSettled(Array.from({ length: count }, () => WorkerPatchcoreModel.load(bytes, opts, origin)));
    const failed = loaded.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    const ok = loaded.filter((r): r is PromiseFulfilledResult<WorkerPatchcoreModel> => r.status === 'fulfilled').map((r) => r.value);
    if (failed) {
      await Promise.all(ok.map((m) => m.release()));
      throw failed.reason;
    }
    return new ReplicatedModel(ok);
  }

  get manifest(): ModelManifest {
    return this.replicas[0]!.manifest;
  }
  get digest(): string {
    return this.replicas[0]!.digest;
  }
  get provider(): ProviderName {
    return this.replicas[0]!.provider;
  }
  get fallbacks(): SessionResult['fallbacks'] {
    return this.replicas[0]!.fallbacks;
  }
  get origin(): string {
    return this.replicas[0]!.origin;
  }
  get inputSize(): number {
    return this.manifest.inputSize;
  }
  /** Batches it runs at once: one per replica. */
  get concurrency(): number {
    return this.replicas.length;
  }
  /** Worker restarts, all replicas together. */
  get restarts(): number {
    return this.replicas.reduce((n, r) => n + r.restarts, 0);
  }

  allocateBatch(values: number): Float32Array {
    return this.replicas[0]!.allocateBatch(values);
  }

  predict(batch: Float32Array, n: number, thresholds: ImageThresholds[] = []): Promise<Prediction[]> {
    return this.onLeastBusy((r) => r.predict(batch, n, thresholds));
  }

  scan(batch: Float32Array, n: number, thresholds: ImageThresholds[] = []): Promise<ScanPrediction[]> {
    return this.onLeastBusy((r) => r.scan(batch, n, thresholds));
  }

  /** Runs `call` on the replica with the fewest batches in flight. */
  private async onLeastBusy<T>(call: (replica: WorkerPatchcoreModel) => Promise<T>): Promise<T> {
    let pick = 0;
    for (let i = 1; i < this.replicas.length; i++) if (this.inFlight[i]! < this.inFlight[pick]!) pick = i;
    this.inFlight[pick]!++;
    try {
      return await call(this.replicas[pick]!);
    } finally {
      this.inFlight[pick]!--;
    }
  }

  async release(): Promise<void> {
    await Promise.all(this.replicas.map((r) => r.release()));
  }
}
