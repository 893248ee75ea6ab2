/**
 * Chooses the onnxruntime execution provider: CUDA when its provider library is installed and a
 * GPU is present, else WebGPU (bundled with onnxruntime-node) when a GPU device node exists,
 * else the CPU. Each candidate is tried for real by creating the session; the first that works
 * is used, and the caller is told which one it got and why the others were skipped.
 */
import { existsSync, readdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { arch } from 'node:os';
import { dirname, join } from 'node:path';
import ort from 'onnxruntime-node';
import { thisCpuNeedsExactInt8Path } from './cpu-features.js';

export type ProviderName = 'cuda' | 'webgpu' | 'cpu';
export type ProviderChoice = ProviderName | 'auto';

export interface SessionResult {
  session: ort.InferenceSession;
  provider: ProviderName;
  /** Why earlier candidates were not used (empty when the first choice worked). */
  fallbacks: Array<{ provider: ProviderName; reason: string }>;
}

/** The NVIDIA GPU device nodes provider selection looks for (`/dev/nvgpu`, `/dev/nvhost-gpu`: Jetson). */
export function nvidiaDeviceNodes(): string[] {
  return ['/dev/nvidia0', '/dev/nvgpu', '/dev/nvhost-gpu'].filter((d) => existsSync(d));
}

/** DRM render nodes (what WebGPU's Vulkan backend needs to reach a GPU). */
export function renderNodes(): string[] {
  try {
    return readdirSync('/dev/dri').filter((f) => f.startsWith('renderD')).map((f) => `/dev/dri/${f}`);
  } catch {
    return [];
  }
}

/** True when the machine shows an NVIDIA GPU device node. */
export function nvidiaGpuPresent(): boolean {
  return nvidiaDeviceNodes().length > 0;
}

/** True when a DRM render node exists. */
export function renderNodePresent(): boolean {
  return renderNodes().length > 0;
}

/**
 * onnxruntime-node's CUDA provider library, or null when it is not installed (npm ci with
 * ONNXRUNTIME_NODE_INSTALL=skip, or a download that failed). onnxruntime loads it from beside
 * its own library.
 */
export function cudaProviderLibrary(): string | null {
  try {
    const pkg = createRequire(import.meta.url).resolve('onnxruntime-node/package.json');
    const lib = join(dirname(pkg), 'bin', 'napi-v6', process.platform, arch(), 'libonnxruntime_providers_cuda.so');
    return existsSync(lib) ? lib : null;
  } catch {
    return null;
  }
}

/**
 * Why the CUDA provider cannot be tried here, or null when it can. Checked before asking
 * onnxruntime, whose own failure ("Failed to load shared library", plus an error line on stderr
 * from every session) says less.
 */
export function cudaSkipReason(nvidiaDevices: readonly string[], providerLibrary: string | null): string | null {
  if (nvidiaDevices.length === 0) return 'no NVIDIA GPU device found';
  if (!providerLibrary) return "onnxruntime-node's CUDA provider library is not installed (reinstall with ONNXRUNTIME_NODE_INSTALL=cuda12; deploy/GPU.md)";
  return null;
}

export function candidates(choice: ProviderChoice): ProviderName[] {
  if (choice === 'auto') return ['cuda', 'webgpu', 'cpu'];
  return choice === 'cpu' ? ['cpu'] : [choice, 'cpu'];
}

export interface SessionOptions {
  provider?: ProviderChoice;
  /** CPU threads for one session (0 = onnxruntime's default: one per core). */
  intraOpThreads?: number;
  /**
   * Let idle onnxruntime pool threads spin waiting for work (onnxruntime's default, true). Spinning
   * shaves a little off each call but burns CPU between calls; an agent that does other work
   * (decode, preprocessing, MQTT) between batches on the same cores is better off without it.
   */
  allowSpinning?: boolean;
  /**
   * int8 arithmetic: 'auto' (default) asks onnxruntime for its exact kernels only where its fast
   * ones would saturate (x86 without VNNI; models/cpu-features.ts); 'exact' always asks.
   */
  int8?: 'auto' | 'exact';
}

export async function createSession(model: Uint8Array, opts: SessionOptions = {}): Promise<SessionResult> {
  const fallbacks: SessionResult['fallbacks'] = [];
  for (const provider of candidates(opts.provider ?? 'auto')) {
    const cudaSkip = provider === 'cuda' ? cudaSkipReason(nvidiaDeviceNodes(), cudaProviderLibrary()) : null;
    if (cudaSkip) {
      fallbacks.push({ provider, reason: cudaSkip });
      continue;
    }
    if (provider === 'webgpu' && !renderNodePresent() && !nvidiaGpuPresent()) {
      fallbacks.push({ provider, reason: 'no GPU render node (/dev/dri/renderD*) found' });
      continue;
    }
    try {
      const session = await ort.InferenceSession.create(model, {
        executionProviders: provider === 'cpu' ? ['cpu'] : [provider, 'cpu'],
        graphOptimizationLevel: 'all',
        intraOpNumThreads: opts.intraOpThreads ?? 0,
        logSeverityLevel: 3,
        // Exact int8 arithmetic everywhere: the taps match the reference bit for bit.
        extra: {
          session: {
            ...(opts.int8 === 'exact' || thisCpuNeedsExactInt8Path() ? { x64quantprecision: '1' } : {}),
            ...(opts.allowSpinning === false ? { intra_op: { allow_spinning: '0' } } : {}),
          },
        },
      });
      return { session, provider, fallbacks };
    } catch (e) {
      fallbacks.push({ provider, reason: firstLine((e as Error).message) });
      if (provider === 'cpu') throw new Error(`onnxruntime could not load the model on the CPU: ${firstLine((e as Error).message)}`);
    }
  }
  throw new Error('no execution provider available');
}

function firstLine(s: string): string {
  const line = s.split('\n').find((l) => l.trim()) ?? s;
  return line.length > 300 ? `${line.slice(0, 300)}…` : line;
}
