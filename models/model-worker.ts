/**
 * The worker-thread side of WorkerPatchcoreModel (worker-model.ts): owns one PatchcoreModel
 * (one onnxruntime session) and answers predict and scan requests from the main thread.
 *
 * Why a worker: onnxruntime-node's `session.run` is synchronous on the calling thread, so on the
 * main thread every inference call stops the event loop — no preprocessing of the next batch,
 * no MQTT, no metrics — for its whole duration. Here it blocks only this thread.
 */
import { parentPort } from 'node:worker_threads';
import type { ProviderChoice } from './execution-provider.js';
import { PatchcoreModel } from './runtime.js';
import { aliasShared } from './shared-alias.js';
import { hasMaps, type ImageThresholds, type Prediction, type ScanPrediction } from './types.js';

export interface ModelWorkerData {
  kind: 'shelfwatch-model';
  bytes: Uint8Array;
  origin: string;
  provider?: ProviderChoice;
  intraOpThreads?: number;
  allowSpinning?: boolean;
  expectBackboneSha256?: string;
  moduleUrl: string;
  loaderUrl: string;
}

/**
 * Main thread → worker. 'release': release the session and exit after the batches asked for
 * before it. 'cancel' (past release's deadline): skip the batches not started yet, so the worker
 * exits after the run it is in. 'exit': end the thread at once, between runs, as a crash would
 * (tests of worker deaths: terminating the thread during a run would abort the process). 'block':
 * hold the thread for `ms` as a run that does not come back would (tests of a stuck worker).
 */
export type ModelWorkerRequest =
  | { type: 'predict' | 'scan'; id: number; batch: Float32Array; n: number; thresholds: ImageThresholds[] }
  | { type: 'release' }
  | { type: 'cancel' }
  | { type: 'exit'; code: number }
  | { type: 'block'; ms: number };

/** Worker → main thread. */
export type ModelWorkerReply =
  | { type: 'loaded'; manifest: PatchcoreModel['manifest']; digest: string; provider: PatchcoreModel['provider']; fallbacks: PatchcoreModel['fallbacks'] }
  | { type: 'load-failed'; name: string; message: string }
  | { type: 'predicted'; id: number; predictions: Prediction[] | ScanPrediction[] }
  | { type: 'failed'; id: number; message: string }
  | { type: 'released' };

export async function serveModelWorker(data: ModelWorkerData): Promise<void> {
  const port = parentPort;
  if (!port) throw new Error('model worker: not running in a worker thread');
  let model: PatchcoreModel;
  try {
    model = await PatchcoreModel.load(data.bytes, { provider: data.provider, intraOpThreads: data.intraOpThreads, allowSpinning: data.allowSpinning, expectBackboneSha256: data.expectBackboneSha256 }, data.origin);
  } catch (e) {
    const err = e as Error;
    port.postMessage({ type: 'load-failed', name: err.name, message: err.message } satisfies ModelWorkerReply);
    port.close();
    return;
  }
  port.postMessage({ type: 'loaded', manifest: model.manifest, digest: model.digest, provider: model.provider, fallbacks: model.fallbacks } satisfies ModelWorkerReply);

  // onnxruntime refuses SharedArrayBuffer-backed tensors: batches are read through an ordinary
  // buffer over the same memory (shared-alias.ts), or else copied into this one.
  let input = new Float32Array(0);
  // Requests run one after another (one input buffer, one session), and a release waits for the
  // batches asked for before it.
  let queue: Promise<void> = Promise.resolve();
  let cancelled = false;
  port.on('message', (request: ModelWorkerRequest) => {
    // Messages are handled between runs (session.run holds this thread), never during one.
    if (request.type === 'exit') process.exit(request.code);
    if (request.type === 'block') {
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, request.ms);
      return;
    }
    if (request.type === 'cancel') {
      cancelled = true;
      return;
    }
    if (request.type === 'release') {
      queue = queue.then(() =>
        model.release().finally(() => {
          port.postMessage({ type: 'released' } satisfies ModelWorkerReply);
          port.close();
        }),
      );
      return;
    }
    const { id, batch, n, thresholds } = request;
    queue = queue.then(async () => {
      // Let a 'cancel' sent during the previous run arrive before this one starts (messages are
      // delivered before the immediates queued meanwhile).
      await new Promise<void>((resolve) => setImmediate(resolve));
      if (cancelled) return; // the main thread has failed this batch already
      try {
        const values = n * 3 * model.inputSize * model.inputSize;
        let x = batch;
        if (batch.buffer instanceof SharedArrayBuffer) {
          // The main thread writes this batch again only after this reply: reading it in place is safe.
          const alias = aliasShared(batch.subarray(0, values));
          if (alias) x = alias;
          else {
            if (input.length < values) input = new Float32Array(values);
            input.set(batch.subarray(0, values));
            x = input;
          }
        }
        const predictions = request.type === 'scan' ? await model.scan(x, n, thresholds) : await model.predict(x, n, thresholds);
        // The batch's maps and masks are views of (at most) two buffers: hand them over without copying.
        const transfer = [...new Set(predictions.flatMap((p) => (hasMaps(p) ? [p.anomalyMap.buffer as ArrayBuffer, p.mask.buffer as ArrayBuffer] : [])))];
        port.postMessage({ type: 'predicted', id, predictions } satisfies ModelWorkerReply, transfer);
      } catch (e) {
        port.postMessage({ type: 'failed', id, message: (e as Error).message } satisfies ModelWorkerReply);
      }
    });
  });
}
