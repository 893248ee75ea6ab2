/**
 * Builds a crop's anomaly map from its patch distances on the CPU: map = A · D · Aᵀ, where
 * A [size×grid] is nearest upsampling followed by the Gaussian blur (the same matrix the model
 * graph multiplies by). The agent's scan needs a map only for the rare anomalous crop; building it
 * here instead of fetching the graph's [N,1,S,S] output saves onnxruntime-node a fresh 200 KB
 * buffer per crop, whose churn kept V8 in back-to-back full collections.
 */
import { mapAxisMatrix } from './patchcore-math.js';

export class AnomalyMapBuilder {
  /** A as float64 [size×grid] (accumulation is in float64, like the reference). */
  private readonly a: Float64Array;
  /** Per row of A, the first and one-past-last column that is not zero (the blur is local). */
  private readonly lo: Int32Array;
  private readonly hi: Int32Array;
  /** A · D scratch, [size×grid]. */
  private readonly ad: Float64Array;

  constructor(readonly grid: number, readonly size: number) {
    if (!Number.isInteger(grid) || grid < 1 || !Number.isInteger(size) || size < grid) {
      throw new RangeError(`anomaly map of ${size} pixels from a ${grid}×${grid} patch grid is not possible`);
    }
    this.a = mapAxisMatrix(grid, size);
    this.lo = new Int32Array(size);
    this.hi = new Int32Array(size);
    for (let i = 0; i < size; i++) {
      let lo = grid;
      let hi = 0;
      for (let j = 0; j < grid; j++) {
        if (this.a[i * grid + j] !== 0) {
          lo = Math.min(lo, j);
          hi = j + 1;
        }
      }
      this.lo[i] = lo;
      this.hi[i] = Math.max(lo, hi);
    }
    this.ad = new Float64Array(size * grid);
  }

  /** distances [grid×grid] (row = patch y) → out [size×size]; returns out. */
  build(distances: Float32Array, out: Float32Array = new Float32Array(this.size * this.size)): Float32Array {
    const { grid, size, a, lo, hi, ad } = this;
    if (distances.length !== grid * grid) throw new RangeError(`${grid}×${grid} patch distances expected, got ${distances.length}`);
    if (out.length !== size * size) throw new RangeError(`${size}×${size} map expected, got ${out.length}`);
    // ad = A · D: row i of A touches only rows lo[i]..hi[i] of D.
    for (let i = 0; i < size; i++) {
      const row = i * grid;
      for (let x = 0; x < grid; x++) {
        let v = 0;
        for (let k = lo[i]!; k < hi[i]!; k++) v += a[row + k]! * distances[k * grid + x]!;
        ad[row + x] = v;
      }
    }
    // out = ad · Aᵀ: out[i][j] = Σ_k ad[i][k] · A[j][k], k over row j's support.
    for (let i = 0; i < size; i++) {
      const row = i * grid;
      for (let j = 0; j < size; j++) {
        let v = 0;
        const arow = j * grid;
        for (let k = lo[j]!; k < hi[j]!; k++) v += ad[row + k]! * a[arow + k]!;
        out[i * size + j] = v;
      }
    }
    return out;
  }
}
