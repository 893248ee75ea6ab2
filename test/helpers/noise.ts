/** Deterministic pseudo-random RGB pixels (an LCG's high bytes): `width`·`height`·3 bytes. */
export function noiseRgb(width: number, height: number, seed: number): Buffer {
  const out = Buffer.alloc(width * height * 3);
  let s = seed;
  for (let i = 0; i < out.length; i++) {
    s = (s * 1103515245 + 12345) >>> 0;
    out[i] = s >>> 24;
  }
  return out;
}
