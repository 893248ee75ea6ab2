/**
 * Exponential backoff with jitter for reconnecting sources.
 *
 * The n-th consecutive failure waits `min(maxMs, initialMs * factor^n)` scaled down by a random
 * fraction of up to `jitter` (so 0.5 → between 50 % and 100 % of the step). Jitter keeps many
 * cameras that lost the same switch from hammering it in lock-step. `reset()` after a success.
 */
export interface BackoffOptions {
  /** First delay, default 500 ms. */
  initialMs?: number;
  /** Cap, default 60 000 ms. */
  maxMs?: number;
  /** Growth per failure, default 2. */
  factor?: number;
  /** Fraction of the delay that is randomised, 0…1, default 0.5. */
  jitter?: number;
  /** Uniform [0, 1) source, injectable for tests. */
  random?: () => number;
}

/** Longest delay setTimeout honours: it runs anything over 2^31-1 ms (or Infinity) after 1 ms. */
export const MAX_TIMER_MS = 2 ** 31 - 1;

export class Backoff {
  readonly initialMs: number;
  readonly maxMs: number;
  readonly factor: number;
  readonly jitter: number;
  private readonly random: () => number;
  private failures = 0;

  constructor(options: BackoffOptions = {}) {
    this.initialMs = options.initialMs ?? 500;
    this.maxMs = options.maxMs ?? 60_000;
    this.factor = options.factor ?? 2;
    this.jitter = options.jitter ?? 0.5;
    this.random = options.random ?? Math.random;
    if (!(this.initialMs >= 0)) throw new RangeError(`backoff initialMs must be >= 0, got ${this.initialMs}`);
    // A larger cap would retry in a tight loop (see MAX_TIMER_MS).
    if (!(this.maxMs <= MAX_TIMER_MS)) throw new RangeError(`backoff maxMs must be at most ${MAX_TIMER_MS} ms, got ${this.maxMs}`);
    if (!(this.maxMs >= this.initialMs)) throw new RangeError(`backoff maxMs (${this.maxMs}) must be >= initialMs (${this.initialMs})`);
    if (!(this.factor >= 1)) throw new RangeError(`backoff factor must be >= 1, got ${this.factor}`);
    if (!(this.jitter >= 0 && this.jitter <= 1)) throw new RangeError(`backoff jitter must be within [0, 1], got ${this.jitter}`);
  }

  /** Consecutive failures since the last reset. */
  get attempts(): number {
    return this.failures;
  }

  /** Delay before the next attempt; counts one more failure. */
  next(): number {
    const step = Math.min(this.maxMs, this.initialMs * this.factor ** this.failures);
    this.failures++;
    return Math.round(step * (1 - this.jitter * this.random()));
  }

  reset(): void {
    this.failures = 0;
  }
}
