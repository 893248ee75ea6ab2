/**
 * Exact sorting of float32 scores as order-preserving uint32 keys: an LSD radix sort (11, 11 and
 * 10 bit digits) that carries an optional uint32 payload. For 150 M keys it is several times
 * faster than the native Float32Array sort and, unlike the native sort, it can carry a payload.
 */

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/**
 * The order-preserving key of a float32 given by its bit pattern: keys compare as unsigned
 * integers exactly as the floats compare as numbers. -0 (0x80000000) maps to the key of +0, so
 * the two zeros are one threshold. The caller rejects NaN bit patterns first.
 */
export function keyOfBits(bits: number): number {
  if (bits === 0x80000000) return 0x80000000; // -0 → key of +0
  return (bits & 0x80000000) !== 0 ? ~bits >>> 0 : (bits | 0x80000000) >>> 0;
}

/** True when the bit pattern is a float32 NaN. */
export function isNaNBits(bits: number): boolean {
  return (bits & 0x7fffffff) > 0x7f800000;
}

/** The float32 value (as a number) of a key made by keyOfBits. */
export function valueOfKey(key: number): number {
  u32[0] = (key & 0x80000000) !== 0 ? key ^ 0x80000000 : ~key >>> 0;
  return f32[0];
}

/** The key of a number, rounded to float32 first. */
export function keyOfNumber(x: number): number {
  f32[0] = x;
  return keyOfBits(u32[0]);
}

const DIGITS: readonly { shift: number; mask: number }[] = [
  { shift: 0, mask: 0x7ff },
  { shift: 11, mask: 0x7ff },
  { shift: 22, mask: 0x3ff },
];

export interface SortedKeys {
  keys: Uint32Array;
  /** Payload permuted with the keys (when payload segments were given). */
  payload: Uint32Array | null;
}

/**
 * Sorts keys ascending (stable), with an optional payload. The input is given as segments that
 * are concatenated; the function CONSUMES them: each entry of `segments` (and `payloads`) is
 * replaced by an empty array once copied, so that their memory can be reclaimed during the sort.
 * Peak memory is about two copies of the keys (and of the payload).
 */
export function radixSortSegments(segments: Uint32Array[], payloads?: Uint32Array[]): SortedKeys {
  const withPayload = payloads !== undefined;
  if (withPayload && payloads.length !== segments.length) {
    throw new RangeError(`radixSortSegments: ${segments.length} key segments but ${payloads.length} payload segments`);
  }
  let total = 0;
  for (let s = 0; s < segments.length; s++) {
    if (withPayload && payloads[s].length !== segments[s].length) {
      throw new RangeError(`radixSortSegments: segment ${s} has ${segments[s].length} keys but ${payloads[s].length} payloads`);
    }
    total += segments[s].length;
  }
  if (total >= 2 ** 32) throw new RangeError(`radixSortSegments: ${total} keys exceed the 2^32 limit`);
  // All digit histograms in one read pass.
  const hists = DIGITS.map((d) => new Uint32Array(d.mask + 1));
  const h0 = hists[0];
  const h1 = hists[1];
  const h2 = hists[2];
  for (const seg of segments) {
    for (let i = 0; i < seg.length; i++) {
      const k = seg[i];
      h0[k & 0x7ff]++;
      h1[(k >>> 11) & 0x7ff]++;
      h2[k >>> 22]++;
    }
  }
  const active = DIGITS.map((_, d) => !hists[d].some((c) => c === total)); // skip a digit all keys share
  if (total === 0 || !active.some((a) => a)) {
    return concatenate(segments, payloads, total);
  }
  // After the first pass the data lives in `src`; each later pass goes src → spare and swaps.
  let src: Uint32Array = new Uint32Array(total);
  let srcPay: Uint32Array | null = withPayload ? new Uint32Array(total) : null;
  let spare: Uint32Array | null = null;
  let sparePay: Uint32Array | null = null;
  let first = true;
  for (let d = 0; d < DIGITS.length; d++) {
    if (!active[d]) continue;
    const { shift, mask } = DIGITS[d];
    const offsets = new Uint32Array(mask + 1);
    let sum = 0;
    for (let b = 0; b <= mask; b++) {
      offsets[b] = sum;
      sum += hists[d][b];
    }
    if (first) {
      for (let s = 0; s < segments.length; s++) {
        if (withPayload) scatterWithPayload(segments[s], payloads[s], src, srcPay!, offsets, shift, mask);
        else scatter(segments[s], src, offsets, shift, mask);
        segments[s] = EMPTY;
        if (withPayload) payloads[s] = EMPTY;
      }
      first = false;
      continue;
    }
    spare ??= new Uint32Array(total);
    if (withPayload) sparePay ??= new Uint32Array(total);
    if (withPayload) scatterWithPayload(src, srcPay!, spare, sparePay!, offsets, shift, mask);
    else scatter(src, spare, offsets, shift, mask);
    [src, spare] = [spare, src];
    [srcPay, sparePay] = [sparePay, srcPay];
  }
  return { keys: src, payload: srcPay };
}

const EMPTY = new Uint32Array(0);

function scatter(src: Uint32Array, dst: Uint32Array, offsets: Uint32Array, shift: number, mask: number): void {
  for (let i = 0; i < src.length; i++) {
    const k = src[i];
    dst[offsets[(k >>> shift) & mask]++] = k;
  }
}

function scatterWithPayload(
  src: Uint32Array,
  srcPay: Uint32Array,
  dst: Uint32Array,
  dstPay: Uint32Array,
  offsets: Uint32Array,
  shift: number,
  mask: number,
): void {
  for (let i = 0; i < src.length; i++) {
    const k = src[i];
    const o = offsets[(k >>> shift) & mask]++;
    dst[o] = k;
    dstPay[o] = srcPay[i];
  }
}

function concatenate(segments: Uint32Array[], payloads: Uint32Array[] | undefined, total: number): SortedKeys {
  const keys = new Uint32Array(total);
  const payload = payloads !== undefined ? new Uint32Array(total) : null;
  let o = 0;
  for (let s = 0; s < segments.length; s++) {
    keys.set(segments[s], o);
    if (payload !== null) payload.set(payloads![s], o);
    o += segments[s].length;
    segments[s] = EMPTY;
    if (payloads !== undefined) payloads[s] = EMPTY;
  }
  return { keys, payload };
}
