/**
 * Ground-truth masks for the pixel metrics: read as 0/1 (`loadMask`) and resized by nearest
 * neighbour with PyTorch's legacy 'nearest' indices (`nearestIndex`, `resizeMaskNearest`), so
 * the anomalous-pixel and region counts match the reference's.
 */
import sharp, { type OutputInfo } from 'sharp';

export interface BinaryMask {
  /** 0/1, row-major. */
  data: Uint8Array;
  width: number;
  height: number;
}

/**
 * Reads a ground-truth mask as 0/1: anomalous where any colour channel is non-zero (the metrics'
 * "non-zero = anomalous"; the dataset scan has already refused masks with more than two values).
 * With `size`, the mask is resized by nearest neighbour (see resizeMaskNearest) while reading,
 * which only looks at the sampled pixels.
 */
export async function loadMask(file: string, size?: { width: number; height: number }): Promise<BinaryMask> {
  let raw: { data: Buffer; info: OutputInfo };
  try {
    // Decoding as stored is ~3× faster than converting to grey first on big masks.
    raw = await sharp(file).removeAlpha().raw().toBuffer({ resolveWithObject: true });
  } catch (e) {
    throw new Error(`ground-truth mask ${file}: cannot read (${(e as Error).message})`);
  }
  const { width, height, channels } = raw.info;
  const src = raw.data;
  const at = channels === 1 ? (p: number) => src[p]! : (p: number) => {
    const o = p * channels;
    let v = 0;
    for (let c = 0; c < channels; c++) v |= src[o + c]!;
    return v;
  };
  const outW = size?.width ?? width;
  const outH = size?.height ?? height;
  const data = new Uint8Array(outW * outH);
  if (outW === width && outH === height) {
    for (let i = 0; i < data.length; i++) data[i] = at(i) !== 0 ? 1 : 0;
  } else {
    const sx = nearestIndex(width, outW);
    const sy = nearestIndex(height, outH);
    for (let y = 0; y < outH; y++) for (let x = 0; x < outW; x++) data[y * outW + x] = at(sy[y]! * width + sx[x]!) !== 0 ? 1 : 0;
  }
  return { data, width: outW, height: outH };
}

/**
 * Source indices of PyTorch's legacy 'nearest' resize: floor(dst · scale) with scale = in / out,
 * both steps in float32 as ATen computes them (identity when the sizes are equal). Exact
 * arithmetic, floor(dst · in / out), picks the previous row or column where dst · in / out is a
 * whole number that float32 rounds just below (248 → 224: dst 28, 56, …): on magnetic_tile that
 * is 4 of 1,717,372 anomalous pixels, and the reference counts are PyTorch's.
 */
export function nearestIndex(inSize: number, outSize: number): Int32Array {
  const idx = new Int32Array(outSize);
  const scale = Math.fround(inSize / outSize);
  for (let i = 0; i < outSize; i++) idx[i] = inSize === outSize ? i : Math.min(inSize - 1, Math.floor(Math.fround(i * scale)));
  return idx;
}

/** Nearest-neighbour resize of a mask with PyTorch's legacy 'nearest' indices (see nearestIndex). */
export function resizeMaskNearest(mask: BinaryMask, outW: number, outH: number): BinaryMask {
  if (mask.width === outW && mask.height === outH) return mask;
  const out = new Uint8Array(outW * outH);
  const sx = nearestIndex(mask.width, outW);
  const sy = nearestIndex(mask.height, outH);
  for (let y = 0; y < outH; y++) {
    const srow = sy[y]! * mask.width;
    for (let x = 0; x < outW; x++) out[y * outW + x] = mask.data[srow + sx[x]!]!;
  }
  return { data: out, width: outW, height: outH };
}
