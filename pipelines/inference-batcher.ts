/**
 * Micro-batching of slot crops into ONE model's batch buffers, shared by every camera.
 *
 * Why not `microBatch` (micro-batch.ts): that operator groups finished items, so every crop would
 * first need its own tensor and a copy into the batch. Here a crop is preprocessed at submit
 * time (`toModelInput`, cropping straight from the full-resolution frame) into its row of the
 * batch buffer being filled, while the model may still be running the previous batch — on a
 * GPU that overlap is what keeps the accelerator busy. The batching rule is the same as
 * microBatch's: a batch goes when it holds `batchSize` crops, or when its oldest crop has waited
 * `batchWaitMs` (the timer starts at the first crop). One difference: while the model is busy a
 * timed-out batch keeps filling until the model is free, so batches grow under load.
 *
 * Memory is bounded: `buffers` batch buffers (default: one per batch the model can run at once,
 * plus one filling; see BatchModel.concurrency). Crops that
 * arrive while every buffer is taken wait unprocessed (holding only a reference to their decoded
 * frame); upstream bounds how many frames are in flight, and so how many crops can wait.
 * The model runs at most `concurrency` batches at a time (1 unless it has session replicas).
 *
 * Hot swap: `swapModel` replaces the model between batches. Crops already preprocessed stay
 * valid (the new model must share input size and normalization), the batch running at the swap
 * finishes on the old model, every later batch runs on the new one; nothing is dropped.
 */
import { toModelInput } from '../models/preprocess.js';
import type { RawImage } from '../models/image-decode.js';
import type { ImageThresholds, Normalization, ScanPrediction } from '../models/types.js';
import type { Box } from './types.js';

/** The part of PatchcoreModel the pipeline uses (structural, so tests can wrap a real model). */
export interface BatchModel {
  readonly manifest: { readonly inputSize: number; readonly normalization: Normalization; readonly thresholds: { readonly image: number } };
  readonly digest: string;
  /** Scores a batch; maps and masks come back for anomalous crops only (PatchcoreModel.scan). */
  scan(batch: Float32Array, n: number, thresholds: ImageThresholds[]): Promise<ScanPrediction[]>;
  /** A batch buffer of `values` floats suited to this model (a worker model shares it without a copy). */
  allocateBatch?(values: number): Float32Array;
  /** Batches the model can run at once (session replicas); default 1. */
  readonly concurrency?: number;
}

export interface InferenceBatcherOptions {
  /** Name used in errors and batch reports (the config's model name). */
  name: string;
  /** Most crops per inference call (integer ≥ 1). */
  batchSize: number;
  /** Longest time (ms) the oldest crop of a batch waits for the batch to fill. */
  batchWaitMs: number;
  /** Batch buffers allocated (integer ≥ 1, default the model's concurrency + 1). */
  buffers?: number;
  /** Called after every inference call with its size and duration. */
  onBatch?: (size: number, inferenceMs: number) => void;
}

export interface CropRequest {
  raw: RawImage;
  /** Crop box in pixels of `raw` (frame coordinates). */
  box: Box;
  /** Image threshold for this crop; undefined = the model manifest's. */
  threshold?: number;
}

interface Pending extends CropRequest {
  resolve: (p: ScanPrediction) => void;
  reject: (e: Error) => void;
}

interface BatchBuffer {
  data: Float32Array;
  items: Pending[];
  /** The oldest crop has waited batchWaitMs. */
  due: boolean;
  timer: NodeJS.Timeout | null;
}

export interface InferenceBatcherStats {
  /** Crops submitted but not yet in a running batch. */
  queued: number;
  batches: number;
  crops: number;
  /** Crops whose preprocessing failed (rejected at submit). */
  preprocessErrors: number;
  /** Inference calls that failed (every crop of the batch rejected). */
  failedBatches: number;
}

export class InferenceBatcher {
  private readonly plane: number;
  private readonly free: BatchBuffer[] = [];
  private filling: BatchBuffer | null = null;
  /** Sealed batches waiting for the model. */
  private readonly ready: BatchBuffer[] = [];
  /** Crops that found no free buffer, oldest first. */
  private readonly waiting: Pending[] = [];
  /** Batches in the model now. */
  private running = 0;
  private closed = false;
  private readonly counters = { batches: 0, crops: 0, preprocessErrors: 0, failedBatches: 0 };
  private current: BatchModel;
  /** The batches running now. */
  private readonly runningBatches = new Set<Promise<void>>();
  /** A copy of the last preprocessed crop the model found normal (smoke test input for a new model). */
  private normal: Float32Array | null = null;

  constructor(
    model: BatchModel,
    private readonly options: InferenceBatcherOptions,
  ) {
    this.current = model;
    const { batchSize, batchWaitMs } = options;
    const buffers = options.buffers ?? (model.concurrency ?? 1) + 1;
    if (!Number.isInteger(batchSize) || batchSize < 1) throw new RangeError(`model ${options.name}: batchSize must be an integer ≥ 1, got ${String(batchSize)}`);
    if (!(Number.isFinite(batchWaitMs) && batchWaitMs >= 0)) throw new RangeError(`model ${options.name}: batchWaitMs must be a number ≥ 0, got ${String(batchWaitMs)}`);
    if (!Number.isInteger(buffers) || buffers < 1) throw new RangeError(`model ${options.name}: buffers must be an integer ≥ 1, got ${String(buffers)}`);
    const size = model.manifest.inputSize;
    this.plane = 3 * size * size;
    for (let i = 0; i < buffers; i++) {
      const data = model.allocateBatch?.(batchSize * this.plane) ?? new Float32Array(batchSize * this.plane);
      this.free.push({ data, items: [], due: false, timer: null });
    }
  }

  /** The model the next batch runs on. */
  get model(): BatchModel {
    return this.current;
  }

  /** The last crop (preprocessed, [3,S,S]) that the model scored as normal, or null before one. */
  lastNormalInput(): Float32Array | null {
    return this.normal && this.normal.slice();
  }

  /**
   * Makes `next` the model of every batch that has not started yet. Resolves once the old model
   * runs no batch any more (at once when idle), so the caller can release it. Throws when `next`
   * needs a different input (size or normalization): crops already preprocessed would be wrong.
   */
  swapModel(next: BatchModel): Promise<void> {
    const a = this.current.manifest;
    const b = next.manifest;
    if (a.inputSize !== b.inputSize) throw new RangeError(`model ${this.options.name}: the new model takes ${b.inputSize} px input, the running one ${a.inputSize} px`);
    if (JSON.stringify(a.normalization) !== JSON.stringify(b.normalization)) {
      throw new RangeError(`model ${this.options.name}: the new model's normalization ${JSON.stringify(b.normalization)} differs from the running one's ${JSON.stringify(a.normalization)}`);
    }
    this.current = next;
    return Promise.all(this.runningBatches).then(() => undefined);
  }

  stats(): InferenceBatcherStats {
    const queued = this.waiting.length + (this.filling?.items.length ?? 0) + this.ready.reduce((n, b) => n + b.items.length, 0);
    return { queued, ...this.counters };
  }

  /**
   * Preprocesses the crop into the batch being filled (or queues it when no buffer is free) and
   * resolves with its prediction. Rejects when preprocessing or the inference call fails.
   */
  submit(request: CropRequest): Promise<ScanPrediction> {
    if (this.closed) return Promise.reject(new Error(`model ${this.options.name}: the inference batcher is closed`));
    return new Promise<ScanPrediction>((resolve, reject) => {
      const pending: Pending = { ...request, resolve, reject };
      if (this.waiting.length > 0 || !this.place(pending)) this.waiting.push(pending);
    });
  }

  /** Rejects everything not yet running; a running batch finishes. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    const error = new Error(`model ${this.options.name}: the inference batcher was closed`);
    const dropped = [...this.waiting.splice(0), ...(this.filling?.items ?? []), ...this.ready.flatMap((b) => b.items)];
    if (this.filling?.timer) clearTimeout(this.filling.timer);
    this.filling = null;
    this.ready.length = 0;
    for (const p of dropped) p.reject(error);
  }

  /** Writes the crop into the filling buffer; false when no buffer is free. */
  private place(p: Pending): boolean {
    if (!this.filling) {
      const buffer = this.free.pop();
      if (!buffer) return false;
      buffer.items = [];
      buffer.due = false;
      this.filling = buffer;
    }
    const buffer = this.filling;
    const { inputSize, normalization } = this.model.manifest;
    try {
      toModelInput(p.raw, { size: inputSize, normalization, box: p.box }, buffer.data, buffer.items.length * this.plane);
    } catch (err) {
      this.counters.preprocessErrors++;
      p.reject(err as Error);
      this.releaseIfEmpty();
      return true;
    }
    buffer.items.push(p);
    if (buffer.items.length >= this.options.batchSize) {
      this.seal();
    } else if (buffer.items.length === 1) {
      buffer.timer = setTimeout(() => {
        buffer.timer = null;
        buffer.due = true;
        // While the model is busy the batch keeps filling; it goes when the model is free.
        if (this.filling === buffer && !this.busy) this.seal();
      }, this.options.batchWaitMs);
    }
    return true;
  }

  private releaseIfEmpty(): void {
    const buffer = this.filling;
    if (buffer && buffer.items.length === 0) {
      if (buffer.timer) clearTimeout(buffer.timer);
      buffer.timer = null;
      this.filling = null;
      this.free.push(buffer);
    }
  }

  private seal(): void {
    const buffer = this.filling;
    if (!buffer) return;
    if (buffer.timer) clearTimeout(buffer.timer);
    buffer.timer = null;
    this.filling = null;
    this.ready.push(buffer);
    this.pump();
    this.admitWaiting();
  }

  /** Moves waiting crops into free buffers, oldest first. */
  private admitWaiting(): void {
    while (this.waiting.length > 0 && !this.closed) {
      if (!this.filling && this.free.length === 0) return;
      // Shift before placing: place() may seal a full batch, which re-enters admitWaiting().
      this.place(this.waiting.shift()!);
    }
  }

  /** The model runs as many batches as it can take. */
  private get busy(): boolean {
    return this.running >= Math.max(1, this.current.concurrency ?? 1);
  }

  private pump(): void {
    while (!this.busy && !this.closed) {
      const buffer = this.ready.shift();
      if (!buffer) return;
      this.running++;
      const batch = this.run(buffer);
      this.runningBatches.add(batch);
      void batch.finally(() => this.runningBatches.delete(batch));
    }
  }

  private async run(buffer: BatchBuffer): Promise<void> {
    const items = buffer.items;
    const n = items.length;
    const started = performance.now();
    // Read once: a swap during this call must not change the model this batch runs on.
    const model = this.current;
    try {
      const predictions = await model.scan(buffer.data, n, items.map((p) => ({ image: p.threshold })));
      if (predictions.length !== n) throw new Error(`model ${this.options.name} returned ${predictions.length} predictions for a batch of ${n}`);
      const ms = performance.now() - started;
      const normalRow = predictions.findIndex((p) => !p.isAnomalous);
      if (normalRow >= 0) {
        // One buffer for the life of the batcher: a plain copy per batch, no allocation.
        this.normal ??= new Float32Array(this.plane);
        this.normal.set(buffer.data.subarray(normalRow * this.plane, (normalRow + 1) * this.plane));
      }
      this.counters.batches++;
      this.counters.crops += n;
      this.options.onBatch?.(n, ms);
      items.forEach((p, i) => p.resolve(predictions[i]!));
    } catch (err) {
      this.counters.failedBatches++;
      const error = err instanceof Error ? err : new Error(String(err));
      const wrapped = new Error(`model ${this.options.name}: inference on a batch of ${n} failed: ${error.message}`, { cause: error });
      for (const p of items) p.reject(wrapped);
    } finally {
      buffer.items = [];
      this.free.push(buffer);
      this.running--;
    }
    if (this.closed) return;
    // Restart the model first, then preprocess waiting crops while it runs: preprocessing
    // before the restart would leave the model idle for the whole time.
    if (this.ready.length > 0) this.pump();
    else if (this.filling?.due) this.seal(); // timed out while the model was busy: goes now, full or not
    this.admitWaiting();
    if (!this.busy && this.filling?.due) this.seal();
  }
}
