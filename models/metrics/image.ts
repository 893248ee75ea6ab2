/**
 * Image-level metrics: one label (0 normal, 1 anomalous) and one score per image. Scores are
 * float64 (JavaScript numbers), sorted with a comparator: image counts are small.
 */
import type { MetricValue } from './result.js';
import { ThresholdSweep, type MetricCurves } from './sweep.js';

export interface ImageMetrics {
  auroc: MetricValue;
  ap: MetricValue;
  prAucTrapz: MetricValue;
  nPos: number;
  nNeg: number;
  curves?: Omit<MetricCurves, 'pro'>;
}

export interface ImageMetricsOptions {
  /** Also return ROC and PR curve points, at most this many each. */
  maxCurvePoints?: number;
}

/**
 * AUROC, AP and trapezoid PR-AUC of image scores (see sweep.ts for the exact definitions).
 * @throws on length mismatch, a label other than 0/1 (or false/true), or a NaN score.
 */
export function imageMetrics(
  labels: ArrayLike<number | boolean>,
  scores: ArrayLike<number>,
  options: ImageMetricsOptions = {},
): ImageMetrics {
  const n = labels.length;
  if (scores.length !== n) {
    throw new RangeError(`imageMetrics: ${n} labels but ${scores.length} scores`);
  }
  const isPos = new Uint8Array(n);
  let nPos = 0;
  for (let i = 0; i < n; i++) {
    const label = labels[i];
    if (label === 1 || label === true) {
      isPos[i] = 1;
      nPos++;
    } else if (label !== 0 && label !== false) {
      throw new RangeError(`imageMetrics: label ${i} must be 0 or 1, got ${String(label)}`);
    }
    const score = scores[i];
    if (typeof score !== 'number' || Number.isNaN(score)) {
      throw new RangeError(`imageMetrics: score ${i} is not a number (${String(score)})`);
    }
  }
  const order = Array.from({ length: n }, (_, i) => i).sort((a, b) => scores[b] - scores[a]);
  const sweep = new ThresholdSweep({
    sampleNoun: 'image',
    nPos,
    nNeg: n - nPos,
    maxCurvePoints: options.maxCurvePoints,
    maxSteps: n,
  });
  let k = 0;
  while (k < n) {
    const threshold = scores[order[k]];
    let dTp = 0;
    let dFp = 0;
    // `===` makes +0 and -0 one threshold.
    while (k < n && scores[order[k]] === threshold) {
      if (isPos[order[k]] === 1) dTp++;
      else dFp++;
      k++;
    }
    sweep.step(threshold + 0, dTp, dFp, 0);
  }
  const r = sweep.finish();
  const out: ImageMetrics = { auroc: r.auroc, ap: r.ap, prAucTrapz: r.prAucTrapz, nPos, nNeg: n - nPos };
  if (r.curves) out.curves = { roc: r.curves.roc, pr: r.curves.pr };
  return out;
}
