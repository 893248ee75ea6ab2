/**
 * How many sessions (replicas) of each model the agent runs, and how many CPU threads each gets.
 *
 * `inference.replicas: auto` (the default) gives a CPU-only box two single-model replicas with half
 * the cores each, and a box with a GPU one session: the int8 backbone's small feature maps
 * parallelise poorly inside one onnxruntime session (its threads wait on each other at every
 * node, and more so when the rest of the pipeline takes a core for a moment), while two sessions
 * working on different batches keep both halves of the CPU busy. On this project's 2-core
 * benchmark box that took the pipeline's overhead over the bare model from about 24 % to about
 * 5 % (bench:pipeline, mode replicas). A GPU box gets one session: each replica would hold its own
 * device context and memory.
 */
import { cpus } from 'node:os';
import { nvidiaGpuPresent, renderNodePresent } from '../models/execution-provider.js';
import type { InferenceConfig } from './config.js';

export interface InferenceParallelism {
  replicas: number;
  /** onnxruntime intra-op threads per replica (0 = onnxruntime's default, one per core). */
  intraOpThreads: number;
}

export interface MachineView {
  cores: number;
  gpu: boolean;
}

export function currentMachine(): MachineView {
  return { cores: Math.max(1, cpus().length), gpu: nvidiaGpuPresent() || renderNodePresent() };
}

export function resolveParallelism(inference: Pick<InferenceConfig, 'provider' | 'replicas' | 'intraOpThreads' | 'workerThread'>, machine: MachineView = currentMachine()): InferenceParallelism {
  const cpuOnly = inference.provider === 'cpu' || (inference.provider === 'auto' && !machine.gpu);
  let replicas: number;
  if (inference.replicas === 'auto') replicas = inference.workerThread && cpuOnly && machine.cores >= 2 ? 2 : 1;
  else replicas = inference.replicas;
  const intraOpThreads = inference.intraOpThreads || (replicas > 1 ? Math.max(1, Math.floor(machine.cores / replicas)) : 0);
  return { replicas, intraOpThreads };
}
