/**
 * Curve points kept for plots and reports (ROC, precision-recall, PRO). A split can have tens of
 * millions of distinct thresholds, so when the exact curve would not fit in `maxPoints` the
 * recorder keeps a point only once the curve has moved by at least 1/maxPoints along either axis
 * since the last kept point, then thins the result evenly; the first and the last point are
 * always kept. Plots only: the metrics themselves are computed from every threshold.
 */
export interface CurvePoint {
  readonly x: number;
  readonly y: number;
  /** The score threshold of the point (score >= threshold is predicted anomalous); Infinity for the start point. */
  readonly threshold: number;
}

export class CurveRecorder {
  private readonly points: CurvePoint[] = [];
  private readonly minStep: number;
  private lastX = Number.NaN;
  private lastY = Number.NaN;
  private pending: CurvePoint | null = null;

  /**
   * @param maxPoints upper bound of the returned curve's length (≥ 2)
   * @param exact keep every point offered (the caller knows they fit in maxPoints)
   */
  constructor(
    private readonly maxPoints: number,
    exact: boolean,
  ) {
    if (!Number.isInteger(maxPoints) || maxPoints < 2) {
      throw new RangeError(`maxCurvePoints must be an integer >= 2, got ${String(maxPoints)}`);
    }
    this.minStep = exact ? 0 : 1 / maxPoints;
  }

  add(x: number, y: number, threshold: number): void {
    if (
      this.points.length === 0 ||
      Math.abs(x - this.lastX) >= this.minStep ||
      Math.abs(y - this.lastY) >= this.minStep
    ) {
      this.points.push({ x, y, threshold });
      this.lastX = x;
      this.lastY = y;
      this.pending = null;
    } else {
      this.pending = { x, y, threshold };
    }
  }

  finish(): CurvePoint[] {
    if (this.pending !== null) this.points.push(this.pending);
    this.pending = null;
    const all = this.points;
    if (all.length <= this.maxPoints) return all.slice();
    // Even thinning that keeps both ends.
    const out: CurvePoint[] = [];
    const last = all.length - 1;
    for (let k = 0; k < this.maxPoints; k++) {
      out.push(all[Math.round((k * last) / (this.maxPoints - 1))]);
    }
    return out;
  }
}
