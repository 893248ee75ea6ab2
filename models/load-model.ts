/**
 * One entry point for loading a compiled model for serving: in a worker thread (the agent's
 * default: inference does not stop the event loop) or on the calling thread (CLI, evaluator).
 */
import { PatchcoreModel, type LoadModelOptions } from './runtime.js';
import { WorkerPatchcoreModel } from './worker-model.js';

/** What serving code needs from a model, whichever thread runs it. */
export type InferenceModel = PatchcoreModel | WorkerPatchcoreModel;

export interface LoadInferenceModelOptions extends LoadModelOptions {
  /** Run the onnxruntime session in a worker thread (default true). */
  workerThread?: boolean;
}

export function loadInferenceModel(source: string | Uint8Array, opts: LoadInferenceModelOptions = {}, origin?: string): Promise<InferenceModel> {
  const { workerThread = true, ...load } = opts;
  return workerThread ? WorkerPatchcoreModel.load(source, load, origin) : PatchcoreModel.load(source, load, origin);
}
