/**
 * A small seeded pseudo-random generator: xoshiro128** (Blackman & Vigna) seeded through
 * splitmix32. Pure 32-bit integer arithmetic (Math.imul, >>>), so the same seed gives the same
 * sequence on every platform and Node version, forever — model files built from it are
 * byte-identical for the same inputs and seed. Not for cryptography.
 */

const TWO_POW_32 = 4294967296;
const TWO_POW_53 = 9007199254740992;

/** Checks that a seed is a non-negative safe integer and returns it. */
export function validateSeed(seed: number, where = 'seed'): number {
  if (!Number.isSafeInteger(seed) || seed < 0) {
    throw new RangeError(`${where} must be a non-negative safe integer, got ${String(seed)}`);
  }
  return seed;
}

export class Random {
  private s0: number;
  private s1: number;
  private s2: number;
  private s3: number;

  /**
   * @param seed non-negative safe integer (0 … 2^53 − 1); both 32-bit halves feed the state.
   */
  constructor(seed: number) {
    validateSeed(seed);
    const lo = seed >>> 0;
    const hi = Math.floor(seed / TWO_POW_32) >>> 0;
    // splitmix32 over a state that mixes both halves of the seed.
    let sm = (lo ^ Math.imul(hi, 0x9e3779b9) ^ 0x6a09e667) >>> 0;
    const next = (): number => {
      sm = (sm + 0x9e3779b9) >>> 0;
      let z = sm;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
      return (z ^ (z >>> 16)) >>> 0;
    };
    this.s0 = next();
    this.s1 = next();
    this.s2 = next();
    this.s3 = next();
    // xoshiro must not start from the all-zero state (splitmix32 makes this practically impossible).
    if ((this.s0 | this.s1 | this.s2 | this.s3) === 0) this.s0 = 1;
  }

  /** Next uniformly distributed unsigned 32-bit integer. */
  nextUint32(): number {
    const s0 = this.s0;
    const s1 = this.s1;
    const s2 = this.s2;
    const s3 = this.s3;
    const m = Math.imul(s1, 5);
    const result = Math.imul((m << 7) | (m >>> 25), 9) >>> 0;
    const t = s1 << 9;
    let n2 = s2 ^ s0;
    let n3 = s3 ^ s1;
    const n1 = s1 ^ n2;
    const n0 = s0 ^ n3;
    n2 ^= t;
    n3 = (n3 << 11) | (n3 >>> 21);
    this.s0 = n0 >>> 0;
    this.s1 = n1 >>> 0;
    this.s2 = n2 >>> 0;
    this.s3 = n3 >>> 0;
    return result;
  }

  /** Uniform double in [0, 1) with 53 random bits (two draws). */
  nextFloat(): number {
    const a = this.nextUint32() >>> 5; // 27 bits
    const b = this.nextUint32() >>> 6; // 26 bits
    return (a * 67108864 + b) / TWO_POW_53;
  }

  /** Uniform integer in [0, n), unbiased (rejection sampling). 1 ≤ n ≤ 2^32. */
  nextInt(n: number): number {
    if (!Number.isInteger(n) || n < 1 || n > TWO_POW_32) {
      throw new RangeError(`nextInt: n must be an integer in [1, 2^32], got ${String(n)}`);
    }
    // Reject the top partial block of the 32-bit range so every residue is equally likely.
    const limit = TWO_POW_32 - (TWO_POW_32 % n);
    for (;;) {
      const x = this.nextUint32();
      if (x < limit) return x % n;
    }
  }
}
