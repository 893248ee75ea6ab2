/**
 * A PatchcoreModel that runs in a worker thread, with the same surface (manifest, digest,
 * provider, predict, release), so the agent's event loop keeps going while a batch infers:
 * the next batch is preprocessed, MQTT keeps its keepalives, /metrics answers.
 *
 * Batches travel in SharedArrayBuffer-backed buffers (`allocateBatch`, memories the
 * preprocessing kernels write into directly): posting one costs nothing on the main thread; the
 * worker copies it into onnxruntime's input. Maps and masks
 * come back as transferred buffers. A worker that dies (a native crash in a provider, an
 * out-of-memory kill of the thread) fails the batches it held with a clear error (an
 * InferenceWorkerError) and is started again from the same model bytes on the next batch;
 * `restarts` counts that.
 *
 * The worker is never terminated while it may be inside onnxruntime's `session.run`: terminating a
 * thread there (or ending the process with it there) aborts the whole process (SIGABRT, "terminate
 * called after throwing an instance of 'Napi::Error'"). Only a worker known to be idle between runs
 * is terminated; otherwise it is asked to stop and exits by itself when its run returns.
 */
import { setFlagsFromString } from 'node:v8';
import { Worker } from 'node:worker_threads';
import { allocateKernelBatch } from './resize-kernel.js';
import type { ProviderName, SessionResult } from './execution-provider.js';
import type { ModelManifest } from './manifest.js';
import type { ModelWorkerData, ModelWorkerReply, ModelWorkerRequest } from './model-worker.js';
import { ModelLoadError, readModelSource, type LoadModelOptions } from './runtime.js';
import type { ImageThresholds, Prediction, ScanPrediction } from './types.js';
import { resolveWorkerModule } from './worker-module.js';

// Dynamic imports only: eval'd worker code is CommonJS or ESM depending on the parent's flags
// (`--input-type=module`), and `require` exists in only one of them.
const BOOTSTRAP = `
import('node:worker_threads').then(({ workerData, parentPort }) => {
  const loader = workerData.loaderUrl ? import(workerData.loaderUrl).then((api) => api.register()) : Promise.resolve();
  return loader.then(() => import(workerData.moduleUrl)).then(
    (m) => m.serveModelWorker(workerData),
    (error) => {
      parentPort.postMessage({ type: 'load-failed', name: 'Error', message: 'could not start the model worker (' + workerData.moduleUrl + '): ' + ((error && error.stack) || error) });
      parentPort.close();
    },
  );
});
`;

interface Loaded {
  manifest: ModelManifest;
  digest: string;
  provider: ProviderName;
  fallbacks: SessionResult['fallbacks'];
}

/** The worker thread died, or could not be started again: the model, not the batch, failed. */
export class InferenceWorkerError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = 'InferenceWorkerError';
  }
}

export interface WorkerModelOptions extends LoadModelOptions {
  /**
   * @internal How long release() lets the batches already asked for finish (default 5000 ms).
   * Past it, those not answered fail with "released before the batch finished", the worker skips
   * the ones it has not started, and release() resolves once the worker has exited after the run
   * it is in. Tests shorten it.
   */
  releaseDeadlineMs?: number;
  /**
   * @internal How long release() then waits for the worker to exit (default 30000 ms) before it
   * gives up on a worker stuck in a run: it rejects with a WorkerStuckError and lets the process
   * end without it. Tests shorten it.
   */
  stuckAfterMs?: number;
}

const RELEASE_DEADLINE_MS = 5000;
const STUCK_AFTER_MS = 30_000;

/**
 * release() gave up waiting: the worker has not come back from a run for the stuck deadline after
 * the release deadline (a hung provider). The thread is left behind, unreferenced; ending the
 * process while it is inside onnxruntime aborts the process (see the class comment).
 */
export class WorkerStuckError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'WorkerStuckError';
  }
}

interface InFlight {
  resolve: (p: Prediction[] | ScanPrediction[]) => void;
  reject: (e: Error) => void;
}

/**
 * Worker isolates read V8's heap flags when they start, so a floor under the old generation
 * meant for the main thread (`--initial-old-space-size`, agent/v8-heap.ts) would also hold each
 * model worker's heap up to it, and the worker's promoted buffers with it (measured: RSS crept
 * ~10 MB a minute). The main isolate is configured by now; this leaves the workers at V8's defaults.
 */
export function workersAtDefaultHeap(): void {
  if (process.execArgv.some((a) => /^--initial[-_]old[-_]space[-_]size=/.test(a))) setFlagsFromString('--initial-old-space-size=0');
}

/** Starts a worker and waits for its model to load; rejects with the load error. */
function spawn(data: ModelWorkerData, onReply: (reply: ModelWorkerReply) => void, onGone: (reason: string) => void): Promise<{ worker: Worker; loaded: Loaded }> {
  return new Promise((resolve, reject) => {
    workersAtDefaultHeap();
    const worker = new Worker(BOOTSTRAP, { eval: true, workerData: data, name: `shelfwatch model ${data.origin}` });
    let settled = false;
    let serving = false;
    worker.on('message', (reply: ModelWorkerReply) => {
      if (!settled) {
        settled = true;
        serving = reply.type === 'loaded';
        if (reply.type === 'loaded') resolve({ worker, loaded: reply });
        else if (reply.type === 'load-failed') {
          // Idle: the load has ended (no session.run can be in progress) and the worker is exiting.
          void worker.terminate();
          reject(new ModelLoadError(reply.message));
        } else reject(new Error(`model ${data.origin}: the inference worker answered '${reply.type}' before loading`));
        return;
      }
      onReply(reply);
    });
    const gone = (reason: string) => {
      if (!settled) {
        settled = true;
        reject(new ModelLoadError(`${data.origin}: the inference worker stopped while loading the model (${reason})`));
      } else if (serving) {
        serving = false; // 'error' is followed by 'exit': report once
        onGone(reason);
      }
    };
    worker.on('error', (err) => gone(err.message));
    worker.on('exit', (code) => gone(`exit code ${code}`));
  });
}

export class WorkerPatchcoreModel {
  private worker: Worker | null;
  private starting: Promise<void> | null = null;
  private nextId = 1;
  private readonly inFlight = new Map<number, InFlight>();
  private released = false;
  private releasing: Promise<void> | null = null;
  private restartCount = 0;

  private constructor(
    private readonly data: ModelWorkerData,
    worker: Worker,
    loaded: Loaded,
    readonly origin: string,
    private readonly releaseDeadlineMs: number,
    private readonly stuckAfterMs: number,
  ) {
    this.worker = worker;
    this.manifest = loaded.manifest;
    this.digest = loaded.digest;
    this.provider = loaded.provider;
    this.fallbacks = loaded.fallbacks;
    worker.unref();
  }

  readonly manifest: ModelManifest;
  /** sha256 of the model file: the identity events and statuses carry. */
  readonly digest: string;
  readonly provider: ProviderName;
  readonly fallbacks: SessionResult['fallbacks'];

  get inputSize(): number {
    return this.manifest.inputSize;
  }

  /** Times the worker died and was started again. */
  get restarts(): number {
    return this.restartCount;
  }

  /** Loads a model file or bytes in a new worker thread; errors are PatchcoreModel.load's. */
  static async load(source: string | Uint8Array, opts: WorkerModelOptions = {}, origin = typeof source === 'string' ? source : 'model'): Promise<WorkerPatchcoreModel> {
    const bytes = await readModelSource(source);
    const data: ModelWorkerData = {
      kind: 'shelfwatch-model',
      bytes,
      origin,
      provider: opts.provider,
      intraOpThreads: opts.intraOpThreads,
      allowSpinning: opts.allowSpinning,
      expectBackboneSha256: opts.expectBackboneSha256,
      ...resolveWorkerModule('model-worker', import.meta.url, `model ${origin}`),
    };
    let model: WorkerPatchcoreModel | null = null;
    const { worker, loaded } = await spawn(
      data,
      (reply) => model!.onReply(reply),
      (reason) => model!.onGone(reason),
    );
    model = new WorkerPatchcoreModel(data, worker, loaded, origin, opts.releaseDeadlineMs ?? RELEASE_DEADLINE_MS, opts.stuckAfterMs ?? STUCK_AFTER_MS);
    return model;
  }

  /** A batch buffer the worker reads without a copy on this thread. */
  allocateBatch(values: number): Float32Array {
    return allocateKernelBatch(values);
  }

  /** Run a batch ([n,3,S,S] float32) and build one Prediction per image, as PatchcoreModel.predict. */
  predict(batch: Float32Array, n: number, thresholds: ImageThresholds[] = []): Promise<Prediction[]> {
    return this.call('predict', batch, n, thresholds) as Promise<Prediction[]>;
  }

  /** As PatchcoreModel.scan: only anomalous images come back with a map and mask. */
  scan(batch: Float32Array, n: number, thresholds: ImageThresholds[] = []): Promise<ScanPrediction[]> {
    return this.call('scan', batch, n, thresholds);
  }

  private async call(type: 'predict' | 'scan', batch: Float32Array, n: number, thresholds: ImageThresholds[]): Promise<Prediction[] | ScanPrediction[]> {
    if (this.released) throw new Error(`model ${this.origin}: released`);
    const s = this.inputSize;
    if (!Number.isInteger(n) || n < 1 || batch.length < n * 3 * s * s) {
      throw new RangeError(`batch of ${n} needs ${n * 3 * s * s} values, got ${batch.length}`);
    }
    if (!this.worker) await this.restart();
    if (this.released) throw new Error(`model ${this.origin}: released`);
    const worker = this.worker;
    if (!worker) throw new InferenceWorkerError(`model ${this.origin}: the inference worker stopped as it started; it starts again with the next batch`);
    const id = this.nextId++;
    const view = batch.subarray(0, n * 3 * s * s);
    return new Promise<Prediction[] | ScanPrediction[]>((resolve, reject) => {
      this.inFlight.set(id, { resolve, reject });
      if (this.inFlight.size === 1) worker.ref();
      worker.postMessage({ type, id, batch: view, n, thresholds } satisfies ModelWorkerRequest);
    });
  }

  /**
   * Releases the session and ends the worker, after the batches already asked for. Those still
   * unanswered after the release deadline (5 s) fail with "released before the batch finished";
   * the worker then skips the ones it has not started and exits after the run it is in (it is not
   * terminated: that would abort the process). Resolves once the worker has exited; until then it
   * keeps the process alive, as ending the process during a run aborts it too. A worker that has
   * not exited 30 s after that deadline is stuck in its run: release() rejects with a
   * WorkerStuckError and no longer keeps the process alive.
   */
  release(): Promise<void> {
    this.releasing ??= this.releaseOnce();
    return this.releasing;
  }

  private async releaseOnce(): Promise<void> {
    this.released = true;
    await this.starting?.catch(() => undefined);
    const worker = this.worker;
    this.worker = null;
    const unanswered = new Error(`model ${this.origin}: released before the batch finished`);
    if (worker) {
      worker.ref();
      const exited = new Promise<void>((resolve) => worker.once('exit', () => resolve()));
      worker.postMessage({ type: 'release' } satisfies ModelWorkerRequest);
      let timer: NodeJS.Timeout | undefined;
      const deadline = new Promise<'deadline'>((resolve) => {
        timer = setTimeout(() => resolve('deadline'), this.releaseDeadlineMs);
      });
      if ((await Promise.race([exited, deadline])) === 'deadline') {
        worker.postMessage({ type: 'cancel' } satisfies ModelWorkerRequest);
        this.failInFlight(unanswered);
        const stuck = new Promise<'stuck'>((resolve) => {
          timer = setTimeout(() => resolve('stuck'), this.stuckAfterMs);
        });
        if ((await Promise.race([exited, stuck])) === 'stuck') {
          // Never terminate it (see the class comment): leave it, and let the process end without waiting for it.
          worker.unref();
          const seconds = ((this.releaseDeadlineMs + this.stuckAfterMs) / 1000).toFixed(1);
          throw new WorkerStuckError(`model ${this.origin}: the inference worker has not come back from a run ${seconds} s after release; it is left behind (a hung execution provider?)`);
        }
      }
      clearTimeout(timer);
    }
    // Left only when the worker exited without answering (it died while releasing).
    this.failInFlight(unanswered);
  }

  private failInFlight(error: Error): void {
    const calls = [...this.inFlight.values()];
    this.inFlight.clear();
    for (const call of calls) call.reject(error);
  }

  private onReply(reply: ModelWorkerReply): void {
    if (reply.type !== 'predicted' && reply.type !== 'failed') return;
    const call = this.inFlight.get(reply.id);
    if (!call) return;
    this.inFlight.delete(reply.id);
    if (this.inFlight.size === 0) this.worker?.unref();
    if (reply.type === 'predicted') call.resolve(reply.predictions);
    else call.reject(new Error(reply.message));
  }

  private onGone(reason: string): void {
    this.worker = null;
    if (this.released) return; // release() settles its calls
    this.failInFlight(new InferenceWorkerError(`model ${this.origin}: the inference worker stopped (${reason}); it starts again with the next batch`));
  }

  private restart(): Promise<void> {
    this.starting ??= spawn(
      this.data,
      (reply) => this.onReply(reply),
      (reason) => this.onGone(reason),
    ).then(
      ({ worker }) => {
        this.starting = null;
        this.restartCount++;
        this.worker = worker;
        worker.unref();
        // release() is waiting for this start: it takes the worker and ends it as any other.
        if (this.released) throw new Error(`model ${this.origin}: released`);
      },
      (err: Error) => {
        this.starting = null;
        throw new InferenceWorkerError(`model ${this.origin}: the inference worker could not be started again: ${err.message}`, { cause: err });
      },
    );
    return this.starting;
  }
}
