/**
 * Several sessions of ONE model, each in its own worker thread, used as one model: each batch
 * goes to the healthy replica with the fewest batches in flight, and the micro-batcher runs up to
 * `concurrency` batches at once. On a CPU with more cores than one session uses well (small
 * feature maps parallelise poorly inside a convolution), replicas with fewer intra-op threads
 * each keep every core busy.
 *
 * A replica whose worker dies or cannot be started again (an InferenceWorkerError) is set aside
 * for a backoff (1 s, doubling up to 30 s while it keeps failing) before the next batch tries to
 * start it again, and the batch it failed is run once more on another replica. While every
 * replica is set aside, batches fail at once with an error that names each replica's failure.
 * A batch that fails for its own sake (bad input, a run error) fails as on one worker.
 */
import type { ProviderName, SessionResult } from './execution-provider.js';
import type { ModelManifest } from './manifest.js';
import { readModelSource } from './runtime.js';
import type { ImageThresholds, Prediction, ScanPrediction } from './types.js';
import { InferenceWorkerError, WorkerPatchcoreModel, type WorkerModelOptions } from './worker-model.js';

export interface ReplicatedModelOptions extends WorkerModelOptions {
  /** @internal First backoff after a replica fails (default 1000 ms; it doubles up to 30 times that). Tests shorten it. */
  restartBackoffMs?: number;
}

const RESTART_BACKOFF_MS = 1000;
const MAX_BACKOFF_FACTOR = 30;

interface Replica {
  readonly model: WorkerPatchcoreModel;
  /** 1-based, for messages. */
  readonly index: number;
  inFlight: number;
  /** Failures since its last success: sets the backoff. */
  failures: number;
  /** No batch goes to it before this time (ms, Date.now()); 0 when healthy. */
  retryAt: number;
  lastError: Error | null;
}

/** Every replica is set aside after failures: the batch cannot run. */
export class ReplicasUnavailableError extends InferenceWorkerError {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = 'ReplicasUnavailableError';
  }
}

export class ReplicatedModel {
  private readonly replicas: Replica[];
  private released = false;

  private constructor(
    models: readonly WorkerPatchcoreModel[],
    private readonly backoffMs: number,
  ) {
    this.replicas = models.map((model, i) => ({ model, index: i + 1, inFlight: 0, failures: 0, retryAt: 0, lastError: null }));
  }

  /** Loads `count` (≥ 2) replicas from the same bytes; fails, releasing any loaded, if one fails. */
  static async load(source: string | Uint8Array, count: number, opts: ReplicatedModelOptions = {}, origin = typeof source === 'string' ? source : 'model'): Promise<ReplicatedModel> {
    if (!Number.isInteger(count) || count < 2) throw new RangeError(`model ${origin}: replicas must be an integer ≥ 2, got ${String(count)}`);
    const { restartBackoffMs = RESTART_BACKOFF_MS, ...workerOpts } = opts;
    const bytes = await readModelSource(source);
    const loaded = await Promise.allSettled(Array.from({ length: count }, () => WorkerPatchcoreModel.load(bytes, workerOpts, origin)));
    const failed = loaded.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    const ok = loaded.filter((r): r is PromiseFulfilledResult<WorkerPatchcoreModel> => r.status === 'fulfilled').map((r) => r.value);
    if (failed) {
      await Promise.all(ok.map((m) => m.release()));
      throw failed.reason;
    }
    return new ReplicatedModel(ok, restartBackoffMs);
  }

  private get first(): WorkerPatchcoreModel {
    return this.replicas[0]!.model;
  }
  get manifest(): ModelManifest {
    return this.first.manifest;
  }
  get digest(): string {
    return this.first.digest;
  }
  get provider(): ProviderName {
    return this.first.provider;
  }
  get fallbacks(): SessionResult['fallbacks'] {
    return this.first.fallbacks;
  }
  get origin(): string {
    return this.first.origin;
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
    return this.replicas.reduce((n, r) => n + r.model.restarts, 0);
  }
  /** Replicas set aside after a failure, waiting out their backoff. */
  get unhealthy(): number {
    const now = Date.now();
    return this.replicas.filter((r) => r.retryAt > now).length;
  }

  allocateBatch(values: number): Float32Array {
    return this.first.allocateBatch(values);
  }

  predict(batch: Float32Array, n: number, thresholds: ImageThresholds[] = []): Promise<Prediction[]> {
    return this.route((m) => m.predict(batch, n, thresholds));
  }

  scan(batch: Float32Array, n: number, thresholds: ImageThresholds[] = []): Promise<ScanPrediction[]> {
    return this.route((m) => m.scan(batch, n, thresholds));
  }

  /**
   * Runs `call` on the healthy replica with the fewest batches in flight; when that replica's
   * worker fails, sets it aside and runs the batch once more on another healthy replica.
   */
  private async route<T>(call: (model: WorkerPatchcoreModel) => Promise<T>): Promise<T> {
    if (this.released) throw new Error(`model ${this.origin}: released`);
    const first = this.pick(null);
    if (!first) throw this.unavailable();
    try {
      return await this.runOn(first, call);
    } catch (e) {
      if (!(e instanceof InferenceWorkerError) || this.released) throw e;
      const second = this.pick(first);
      if (!second) throw this.unavailable(e);
      try {
        return await this.runOn(second, call);
      } catch (e2) {
        if (e2 instanceof InferenceWorkerError && !this.released && !this.pick(null)) throw this.unavailable(e2);
        throw e2;
      }
    }
  }

  /** The healthy replica (other than `except`) with the fewest batches in flight, or null. */
  private pick(except: Replica | null): Replica | null {
    const now = Date.now();
    let pick: Replica | null = null;
    for (const r of this.replicas) {
      if (r === except || r.retryAt > now) continue;
      if (!pick || r.inFlight < pick.inFlight) pick = r;
    }
    return pick;
  }

  /** The error of a batch no replica can run: each replica's failure and when the next start is tried. */
  private unavailable(cause?: Error): ReplicasUnavailableError {
    const now = Date.now();
    const reasons = this.replicas.map((r) => `replica ${r.index}: ${r.retryAt > now && r.lastError ? r.lastError.message : 'failed this batch'}`).join('; ');
    const next = Math.min(...this.replicas.map((r) => r.retryAt).filter((t) => t > now));
    const wait = Number.isFinite(next) ? `; the next attempt to start one is in ${((next - now) / 1000).toFixed(1)} s` : '';
    return new ReplicasUnavailableError(`model ${this.origin}: no replica can run the batch, all ${this.replicas.length} failed (${reasons})${wait}`, {
      cause: cause ?? this.replicas.find((r) => r.lastError)?.lastError ?? undefined,
    });
  }

  private async runOn<T>(replica: Replica, call: (model: WorkerPatchcoreModel) => Promise<T>): Promise<T> {
    replica.inFlight++;
    try {
      const result = await call(replica.model);
      replica.failures = 0;
      replica.retryAt = 0;
      replica.lastError = null;
      return result;
    } catch (e) {
      // One death fails every batch the worker held: count it once, on the first of them.
      if (e instanceof InferenceWorkerError && !this.released && replica.retryAt <= Date.now()) {
        replica.failures++;
        replica.lastError = e;
        replica.retryAt = Date.now() + this.backoffMs * Math.min(2 ** (replica.failures - 1), MAX_BACKOFF_FACTOR);
      }
      throw e;
    } finally {
      replica.inFlight--;
    }
  }

  /** Releases every replica; rejects with the first failure (a stuck worker) once all are done. */
  async release(): Promise<void> {
    this.released = true;
    const results = await Promise.allSettled(this.replicas.map((r) => r.model.release()));
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
  }
}
