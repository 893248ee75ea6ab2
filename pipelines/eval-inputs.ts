/**
 * Eval inputs and their placement: `InputLoader` turns image files into model inputs with the
 * agent's preprocessing (decodeImage with shrink-on-load, then toModelInput; in crop mode
 * planogram.ts `refineBox` first, recording where the crop sits), through the input cache;
 * `placeMap` undoes that placement, putting an anomaly map back onto the whole image's grid.
 */
import { readFile } from 'node:fs/promises';
import { decodeImage } from '../models/image-decode.js';
import { toModelInput } from '../models/preprocess.js';
import { contentDigest, EvalCache, type InputPlacement, type PreprocessKey } from './feature-cache.js';
import type { SkippedFile } from './image-files.js';
import { refineBox } from './planogram.js';

// ───────────────────────────── inputs ─────────────────────────────

export interface LoadedInput extends InputPlacement {
  file: string;
  data: Float32Array;
}

export interface DecodeStats {
  images: number;
  shrunk: number;
  fromCache: number;
  cpuMs: number;
}

/**
 * Turns image files into model inputs with the agent's preprocessing, through the input cache.
 * (Training images bypass the cache: their features are cached instead.) The cache is keyed on
 * the sha256 of the file's bytes, which are read once: hashed for the lookup, then decoded from
 * the same buffer on a miss.
 */
export class InputLoader {
  constructor(
    private readonly pre: PreprocessKey,
    private readonly cache: EvalCache,
    readonly stats: DecodeStats,
  ) {}

  async load(file: string, useCache: boolean): Promise<LoadedInput> {
    const { inputSize: size } = this.pre;
    const t = performance.now();
    const bytes = await readFile(file);
    let key: string | null = null;
    if (useCache && this.cache.dir) {
      key = EvalCache.inputKey(this.pre, contentDigest(bytes));
      const hit = await this.cache.readInput(key, 3 * size * size);
      if (hit) {
        this.stats.fromCache++;
        return { file, ...hit };
      }
    }
    try {
      const img = await decodeImage(bytes, { origin: file, targetSize: this.pre.shrinkOnLoad ? size : undefined });
      this.stats.images++;
      if (img.shrink > 1) this.stats.shrunk++;
      const normalization = this.pre.normalization as { mean: [number, number, number]; std: [number, number, number] };
      let crop: InputPlacement['crop'] = null;
      let data: Float32Array;
      if (this.pre.crop === 'auto') {
        const box = refineBox(img, { x: 0, y: 0, width: img.width, height: img.height });
        if (box.width !== img.width || box.height !== img.height) {
          crop = { x: box.x / img.width, y: box.y / img.height, width: box.width / img.width, height: box.height / img.height };
        }
        data = toModelInput(img, { size, normalization, box });
      } else {
        data = toModelInput(img, { size, normalization });
      }
      const input: LoadedInput = { file, data, crop, sourceWidth: img.sourceWidth, sourceHeight: img.sourceHeight, shrink: img.shrink };
      if (key) await this.cache.writeInput(key, input);
      return input;
    } finally {
      this.stats.cpuMs += performance.now() - t;
    }
  }

  /**
   * Batches of inputs in file order; files that fail to decode are reported and skipped.
   * `wait.ms` accumulates the time the consumer waited for decoding.
   */
  async *batches(
    files: readonly string[],
    batchSize: number,
    opts: { useCache: boolean; concurrency: number; onSkip: (s: SkippedFile) => void; wait: { ms: number } },
  ): AsyncGenerator<{ data: Float32Array; count: number; inputs: LoadedInput[] }> {
    const plane = 3 * this.pre.inputSize * this.pre.inputSize;
    const inflight: Array<Promise<LoadedInput | null>> = [];
    let next = 0;
    const fill = () => {
      while (inflight.length < opts.concurrency && next < files.length) {
        const file = files[next++]!;
        inflight.push(
          this.load(file, opts.useCache).catch((e: unknown) => {
            opts.onSkip({ file, reason: (e as Error).message });
            return null;
          }),
        );
      }
    };
    let batch = new Float32Array(batchSize * plane);
    let inputs: LoadedInput[] = [];
    fill();
    while (inflight.length > 0) {
      const t = performance.now();
      const input = await inflight.shift()!;
      opts.wait.ms += performance.now() - t;
      fill();
      if (!input) continue;
      batch.set(input.data, inputs.length * plane);
      inputs.push(input);
      if (inputs.length === batchSize) {
        yield { data: batch, count: inputs.length, inputs };
        batch = new Float32Array(batchSize * plane);
        inputs = [];
      }
    }
    if (inputs.length > 0) yield { data: batch, count: inputs.length, inputs };
  }
}

// ───────────────────────────── maps ─────────────────────────────

/**
 * Places an S×S anomaly map (made from `crop` of the image, or the whole image) onto an
 * outW×outH grid covering the whole image: bilinear, align_corners=false, no antialiasing,
 * edges clamped (torch `interpolate(mode='bilinear', align_corners=False)`); pixels outside the
 * crop get `fill`. Without a crop and with outW = outH = S this is the identity.
 */
export function placeMap(map: Float32Array, size: number, crop: InputPlacement['crop'], outW: number, outH: number, fill = 0): Float32Array {
  if (map.length !== size * size) throw new RangeError(`placeMap: map has ${map.length} values, expected ${size}×${size}`);
  if (!crop && outW === size && outH === size) return map.slice();
  const out = new Float32Array(outW * outH);
  const cx = crop?.x ?? 0;
  const cy = crop?.y ?? 0;
  const cw = crop?.width ?? 1;
  const ch = crop?.height ?? 1;
  // Per-axis source index and weight, computed once.
  const axis = (n: number, c0: number, cl: number) => {
    const i0 = new Int32Array(n);
    const lam = new Float64Array(n);
    const inside = new Uint8Array(n);
    for (let i = 0; i < n; i++) {
      // Without a crop use the reference formula directly: src = (i + 0.5) · S / n − 0.5.
      const u = (i + 0.5) / n;
      if (crop && (u < c0 || u >= c0 + cl)) continue;
      inside[i] = 1;
      let s = crop ? ((u - c0) / cl) * size - 0.5 : ((i + 0.5) * size) / n - 0.5;
      if (s < 0) s = 0;
      let f = Math.floor(s);
      if (f > size - 1) f = size - 1;
      i0[i] = f;
      lam[i] = Math.min(1, s - f);
    }
    return { i0, lam, inside };
  };
  const xs = axis(outW, cx, cw);
  const ys = axis(outH, cy, ch);
  for (let y = 0; y < outH; y++) {
    const row = y * outW;
    if (!ys.inside[y]) {
      out.fill(fill, row, row + outW);
      continue;
    }
    const y0 = ys.i0[y]!;
    const y1 = Math.min(y0 + 1, size - 1);
    const ly = ys.lam[y]!;
    for (let x = 0; x < outW; x++) {
      if (!xs.inside[x]) {
        out[row + x] = fill;
        continue;
      }
      const x0 = xs.i0[x]!;
      const x1 = Math.min(x0 + 1, size - 1);
      const lx = xs.lam[x]!;
      const top = map[y0 * size + x0]! * (1 - lx) + map[y0 * size + x1]! * lx;
      const bottom = map[y1 * size + x0]! * (1 - lx) + map[y1 * size + x1]! * lx;
      out[row + x] = top * (1 - ly) + bottom * ly;
    }
  }
  return out;
}
