/**
 * `auto` keeps a GPU provider only where it is faster than the CPU for this model.
 *
 * Why: a provider takes only the nodes it has kernels for. The int8 backbone's QOperator nodes
 * (QLinearConv, QLinearAdd, …) have none in the WebGPU provider, so they stay on the CPU and the
 * tensors cross to the GPU and back for the head. Measured on an NVIDIA H200 box (16 cores):
 * WebGPU 3.7 ms/image against the CPU's 2.2 at batch 6. Whether a GPU wins depends on the model
 * (a float backbone, a large bank) and the box, so it is measured when the model loads.
 */
import ort from 'onnxruntime-node';
import { createSession, type SessionOptions, type SessionResult } from './execution-provider.js';

/** The batch timed: the agent's default micro-batch. */
export const SPEED_CHECK_BATCH = 8;
const TIMED_RUNS = 3;

/** A deterministic batch of smooth, image-like inputs in the model's normalised range. */
export function syntheticBatch(count: number, size: number): Float32Array {
  const plane = size * size;
  const data = new Float32Array(count * 3 * plane);
  for (let i = 0; i < count; i++) {
    for (let c = 0; c < 3; c++) {
      for (let y = 0; y < size; y++) {
        for (let x = 0; x < size; x++) {
          data[(i * 3 + c) * plane + y * size + x] = Math.sin((x + 7 * i) / (9 + c)) * Math.cos((y - 5 * i) / 13) * 1.5;
        }
      }
    }
  }
  return data;
}

/** Median ms per image of `runs` timed runs after one warm-up, on a synthetic batch (zeros could take shortcuts). */
export async function msPerImage(session: ort.InferenceSession, inputSize: number, batch = SPEED_CHECK_BATCH, runs = TIMED_RUNS): Promise<number> {
  const feeds = { [session.inputNames[0]!]: new ort.Tensor('float32', syntheticBatch(batch, inputSize), [batch, 3, inputSize, inputSize]) };
  await session.run(feeds);
  const times: number[] = [];
  for (let r = 0; r < runs; r++) {
    const t = performance.now();
    await session.run(feeds);
    times.push((performance.now() - t) / batch);
  }
  times.sort((a, b) => a - b);
  return times[Math.floor(times.length / 2)]!;
}

const SLOWER = 'slower than the CPU for this model';

/** True for the fallback reason keepFasterThanCpu records: the GPU worked, the CPU was faster. */
export function isSlowerThanCpu(reason: string): boolean {
  return reason.startsWith(SLOWER);
}

export type Timer = (session: ort.InferenceSession) => Promise<number>;

/**
 * Given a session on a GPU provider, also opens one on the CPU, times both, keeps the faster and
 * releases the other. When the CPU wins, the GPU provider joins the fallbacks with the figures.
 */
export async function keepFasterThanCpu(gpu: SessionResult, model: Uint8Array, opts: SessionOptions, time: Timer): Promise<SessionResult> {
  if (gpu.provider === 'cpu') return gpu;
  let cpu: SessionResult;
  try {
    cpu = await createSession(model, { ...opts, provider: 'cpu' });
  } catch {
    // Nothing to compare against: the session that loaded is the one to use.
    return gpu;
  }
  let gpuMs: number;
  try {
    gpuMs = await time(gpu.session);
  } catch (e) {
    // A provider that cannot even run the check is no better than one that is slow.
    await gpu.session.release();
    return { ...cpu, fallbacks: [...gpu.fallbacks, { provider: gpu.provider, reason: `failed its speed check: ${(e as Error).message.split('\n')[0]}` }] };
  }
  let cpuMs: number;
  try {
    cpuMs = await time(cpu.session);
  } catch {
    // The GPU ran the batch and the CPU could not: the GPU is the faster one.
    await cpu.session.release();
    return gpu;
  }
  if (gpuMs < cpuMs) {
    await cpu.session.release();
    return gpu;
  }
  await gpu.session.release();
  const reason = `${SLOWER} (${gpuMs.toFixed(2)} vs ${cpuMs.toFixed(2)} ms/image at batch ${SPEED_CHECK_BATCH}); ask for it by name to use it anyway`;
  return { ...cpu, fallbacks: [...gpu.fallbacks, { provider: gpu.provider, reason }] };
}
