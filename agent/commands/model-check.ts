/**
 * `shelfwatch model check <model>`: is this box ready to serve this model, and on which device?
 *
 * For an operator before a model goes live on an edge box (and for the GPU check of a box we
 * cannot reach): what the machine offers (NVIDIA device nodes, a DRM render node, the
 * onnxruntime CUDA provider library), which execution provider the model gets with the requested
 * choice and why the others were skipped, and whether that provider scores like the CPU: both
 * run the same inputs (the given images, or a deterministic synthetic batch) and the largest
 * score and map differences are reported beside the throughput of each. GPU providers round the
 * int8 backbone their own way, so agreement is judged with a tolerance, not bit for bit.
 */
import { createRequire } from 'node:module';
import { cudaProviderLibrary, nvidiaDeviceNodes, renderNodes, type ProviderChoice } from '../../models/execution-provider.js';
import { PatchcoreModel } from '../../models/runtime.js';
import { isSlowerThanCpu, syntheticBatch } from '../../models/provider-speed.js';
import type { Prediction } from '../../models/types.js';
import { describeSkipped, listImages, preprocessedBatches, type SkippedFile } from '../../pipelines/image-files.js';

/** Largest relative score difference (vs the CPU) still called agreement. */
export const SCORE_TOLERANCE = 0.02;

export interface MachineFacts {
  node: string;
  onnxruntime: string;
  /** The device nodes provider selection looks at (models/execution-provider.ts). */
  nvidiaDevices: string[];
  renderNodes: string[];
  /** onnxruntime-node's CUDA provider library, when installed (ONNXRUNTIME_NODE_INSTALL=cuda12). */
  cudaProviderLibrary: string | null;
}

export interface ProviderRun {
  provider: string;
  /** Median ms per image at the check's batch size. */
  msPerImage: number;
}

export interface ModelCheckResult {
  model: string;
  digest: string;
  machine: MachineFacts;
  requested: ProviderChoice;
  provider: string;
  fallbacks: Array<{ provider: string; reason: string }>;
  inputs: { source: 'images' | 'synthetic'; count: number; skipped: SkippedFile[] };
  cpu: ProviderRun;
  /** Null when the requested choice ended on the CPU (nothing to compare). */
  chosen: ProviderRun | null;
  /** Versus the CPU; zeros when the chosen provider is the CPU. */
  agreement: { maxScoreRelDiff: number; maxMapAbsDiff: number; sameDecisions: boolean; withinTolerance: boolean };
  /** One line per finding an operator should act on. */
  warnings: string[];
}

export function machineFacts(): MachineFacts {
  let onnxruntime = 'unknown';
  try {
    onnxruntime = (createRequire(import.meta.url)('onnxruntime-node/package.json') as { version: string }).version;
  } catch {
    // reported as unknown
  }
  return {
    node: process.version,
    onnxruntime,
    nvidiaDevices: nvidiaDeviceNodes(),
    renderNodes: renderNodes(),
    cudaProviderLibrary: cudaProviderLibrary(),
  };
}

async function timePerImage(model: PatchcoreModel, batch: Float32Array, n: number): Promise<{ ms: number; predictions: Prediction[] }> {
  const predictions = await model.predict(batch, n); // also the warm-up
  const times: number[] = [];
  for (let r = 0; r < 5; r++) {
    const t = performance.now();
    await model.predict(batch, n);
    times.push((performance.now() - t) / n);
  }
  times.sort((a, b) => a - b);
  return { ms: times[2]!, predictions };
}

export async function runModelCheck(o: { model: string; provider: ProviderChoice; images?: string[]; batch?: number }): Promise<ModelCheckResult> {
  const batchSize = o.batch ?? 8;
  const machine = machineFacts();
  const cpuModel = await PatchcoreModel.load(o.model, { provider: 'cpu' });
  let chosenModel: PatchcoreModel | null = null;
  try {
    const { inputSize: size, normalization } = cpuModel.manifest;
    // Inputs: the first batch of the given images, or a synthetic batch.
    let batch: Float32Array;
    let count: number;
    const skipped: SkippedFile[] = [];
    let source: 'images' | 'synthetic' = 'synthetic';
    if (o.images?.length) {
      const files = await listImages(o.images, (s) => skipped.push(s));
      if (files.length === 0) throw new Error(`no image files in ${o.images.join(', ')}${skipped.length ? ` (${describeSkipped(skipped)})` : ''}`);
      const first = await preprocessedBatches(files, { size, normalization, batchSize, onSkip: (s) => skipped.push(s) })[Symbol.asyncIterator]().next();
      if (first.done) throw new Error(`none of the ${files.length} image(s) could be read: ${skipped.map((s) => `${s.file}: ${s.reason}`).join('; ')}`);
      batch = first.value.data;
      count = first.value.count;
      source = 'images';
    } else {
      count = batchSize;
      batch = syntheticBatch(count, size);
    }

    const cpu = await timePerImage(cpuModel, batch, count);
    const warnings: string[] = [];
    let provider = 'cpu';
    let fallbacks: ModelCheckResult['fallbacks'] = [];
    let chosen: ProviderRun | null = null;
    let agreement = { maxScoreRelDiff: 0, maxMapAbsDiff: 0, sameDecisions: true, withinTolerance: true };
    if (o.provider !== 'cpu') {
      chosenModel = await PatchcoreModel.load(o.model, { provider: o.provider });
      provider = chosenModel.provider;
      fallbacks = chosenModel.fallbacks.map((f) => ({ provider: f.provider, reason: f.reason }));
      if (provider !== 'cpu') {
        const run = await timePerImage(chosenModel, batch, count);
        chosen = { provider, msPerImage: run.ms };
        agreement = agreementOf(run.predictions, cpu.predictions);
        const { maxScoreRelDiff, withinTolerance, sameDecisions } = agreement;
        if (!withinTolerance) warnings.push(`${provider} scores differ from the CPU's by up to ${(maxScoreRelDiff * 100).toFixed(1)} % (tolerance ${SCORE_TOLERANCE * 100} %): re-check the thresholds on this box (shelfwatch eval) before going live`);
        if (!sameDecisions) warnings.push(`${provider} and the CPU disagree on which inputs are anomalous at the model's threshold`);
        if (run.ms >= cpu.ms) warnings.push(`${provider} is not faster than the CPU for this model (${run.ms.toFixed(2)} vs ${cpu.ms.toFixed(2)} ms/image at batch ${count})`);
      } else if (o.provider !== 'auto' || ((machine.nvidiaDevices.length || machine.renderNodes.length) && !fallbacks.some((f) => isSlowerThanCpu(f.reason)))) {
        warnings.push(`asked for ${o.provider} but the model runs on the CPU: ${fallbacks.map((f) => `${f.provider}: ${f.reason}`).join('; ')}`);
      }
    }
    warnings.push(...gpuSetupHints(machine, fallbacks));
    return {
      model: o.model,
      digest: cpuModel.digest,
      machine,
      requested: o.provider,
      provider,
      fallbacks,
      inputs: { source, count, skipped },
      cpu: { provider: 'cpu', msPerImage: cpu.ms },
      chosen,
      agreement,
      warnings,
    };
  } finally {
    await cpuModel.release();
    await chosenModel?.release();
  }
}

/**
 * What to install, when the machine shows an NVIDIA GPU that a provider could not use:
 * the CUDA provider library, or (WebGPU found no adapter) NVIDIA's Vulkan driver's own needs.
 */
export function gpuSetupHints(machine: Pick<MachineFacts, 'nvidiaDevices' | 'cudaProviderLibrary'>, fallbacks: ReadonlyArray<{ provider: string; reason: string }>): string[] {
  if (machine.nvidiaDevices.length === 0) return [];
  const hints: string[] = [];
  if (!machine.cudaProviderLibrary) {
    hints.push('an NVIDIA GPU is present but onnxruntime-node has no CUDA provider library: reinstall with ONNXRUNTIME_NODE_INSTALL=cuda12 (deploy/GPU.md)');
  }
  // Dawn's words when Vulkan lists no device. On an NVIDIA box that is most often a missing
  // Vulkan loader or GLVND (NVIDIA's Vulkan driver is libGLX_nvidia.so.0): seen on an H200 box.
  if (fallbacks.some((f) => f.provider === 'webgpu' && /adapter/i.test(f.reason))) {
    hints.push('WebGPU found no GPU adapter: NVIDIA\'s Vulkan driver needs the Vulkan loader and GLVND (apt-get install libvulkan1 libglvnd0 libglx0 libegl1; deploy/GPU.md)');
  }
  return hints;
}

/** How far a provider's predictions are from the CPU's for the same inputs. */
export function agreementOf(got: readonly Prediction[], cpu: readonly Prediction[]): ModelCheckResult['agreement'] {
  if (got.length !== cpu.length) throw new Error(`agreementOf: ${got.length} predictions against ${cpu.length} from the CPU`);
  let maxScoreRelDiff = 0;
  let maxMapAbsDiff = 0;
  let sameDecisions = true;
  got.forEach((p, i) => {
    const ref = cpu[i]!;
    maxScoreRelDiff = Math.max(maxScoreRelDiff, Math.abs(p.score - ref.score) / Math.max(Math.abs(ref.score), 1e-12));
    for (let j = 0; j < p.anomalyMap.length; j++) maxMapAbsDiff = Math.max(maxMapAbsDiff, Math.abs(p.anomalyMap[j]! - ref.anomalyMap[j]!));
    if (p.isAnomalous !== ref.isAnomalous) sameDecisions = false;
  });
  return { maxScoreRelDiff, maxMapAbsDiff, sameDecisions, withinTolerance: maxScoreRelDiff <= SCORE_TOLERANCE };
}

/** The human-readable report. */
export function formatModelCheck(r: ModelCheckResult): string {
  const m = r.machine;
  const lines = [
    `model ${r.model} (${r.digest.slice(0, 12)}…)`,
    `machine: node ${m.node}, onnxruntime-node ${m.onnxruntime}; NVIDIA devices: ${m.nvidiaDevices.join(', ') || 'none'}; render nodes: ${m.renderNodes.join(', ') || 'none'}; CUDA provider library: ${m.cudaProviderLibrary ?? 'not installed'}`,
    `provider: asked ${r.requested}, got ${r.provider}${r.fallbacks.length ? ` (skipped: ${r.fallbacks.map((f) => `${f.provider}: ${f.reason}`).join('; ')})` : ''}`,
    `inputs: ${r.inputs.count} ${r.inputs.source === 'images' ? 'image(s)' : 'synthetic input(s)'}${r.inputs.skipped.length ? `, ${r.inputs.skipped.length} skipped` : ''}`,
    `cpu: ${r.cpu.msPerImage.toFixed(2)} ms/image`,
  ];
  if (r.chosen) {
    const a = r.agreement;
    lines.push(`${r.chosen.provider}: ${r.chosen.msPerImage.toFixed(2)} ms/image; vs cpu: scores within ${(a.maxScoreRelDiff * 100).toFixed(3)} %, maps within ${a.maxMapAbsDiff.toExponential(2)}, ${a.sameDecisions ? 'same' : 'DIFFERENT'} decisions`);
  }
  for (const w of r.warnings) lines.push(`warning: ${w}`);
  lines.push(r.warnings.length ? 'verdict: check the warnings above' : 'verdict: ready');
  return lines.join('\n');
}
