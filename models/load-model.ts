/**
 * One entry point for loading a compiled model for serving: in a worker thread (the agent's
 * default: inference does not stop the event loop) or on the calling thread (CLI, evaluator).
 */
import { ReplicatedModel } from './replicated-model.js';
import { PatchcoreModel, type LoadModelOptions } from './runtime.js';
import { WorkerPatchcoreModel } from './worker-model.js';

/** What serving code needs from a model, whichever thread runs it. */
export type InferenceModel = PatchcoreModel | WorkerPatchcoreModel | ReplicatedModel;

export interface LoadInferenceModelOptions extends LoadModelOptions {
  /** Run the onnxruntime session in a worker thread (default true). */
  workerThread?: boolean;
  /** Sessions of the model, each in its own worker thread (default 1; > 1 needs workerThread). */
  replicas?: number;
}

export function loadInferenceModel(source: string | Uint8Array, opts: LoadInferenceModelOptions = {}, origin?: string): Promise<InferenceModel> {
  const { workerThread = true, replicas = 1, ...load } = opts;
  if (replicas > 1) {
    if (!workerThread) return Promise.reject(new RangeError(`model ${origin ?? String(source)}: ${replicas} replicas need workerThread (sessions on the main thread run one at a time)`));
    return ReplicatedModel.load(source, replicas, load, origin);
  }
  return workerThread ? WorkerPatchcoreModel.load(source, load, origin) : PatchcoreModel.load(source, load, origin);
}
