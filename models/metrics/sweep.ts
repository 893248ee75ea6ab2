/**
 * The threshold sweep shared by image and pixel metrics. The caller feeds the distinct score
 * values in descending order, each with how many anomalous (dTp) and normal (dFp) samples have
 * exactly that score and, for AUPRO, the sum over those anomalous samples of 1 / (size of the
 * sample's ground-truth region). The sweep turns them into:
 *
 * - AUROC = sklearn roc_auc_score: trapezoid under (FPR, TPR), ties counting one half;
 * - AP = sklearn average_precision_score: Σ (R_n − R_(n−1)) · P_n, no interpolation;
 * - PR-AUC (trapezoid) = sklearn auc(recall, precision) on precision_recall_curve, which starts at
 *   (recall 0, precision 1);
 * - AUPRO up to an FPR limit, MVTec AD definition: curve (0,0) then one point (FPR, PRO) per
 *   threshold, trapezoid, the segment crossing the limit cut there by linear interpolation, area
 *   divided by the limit. PRO(t) = (Σ over regions of region pixels >= t / region size) / regions.
 *
 * Everything is accumulated in float64 (single precision is visibly off on large splits).
 */
import { CurveRecorder, type CurvePoint } from './curve.js';
import { definedMetric, undefinedMetric, type MetricValue } from './result.js';

export interface SweepOptions {
  /** What a sample is, for the reasons of undefined metrics: 'image' or 'pixel'. */
  sampleNoun: 'image' | 'pixel';
  nPos: number;
  nNeg: number;
  /** Number of ground-truth regions; omit for no AUPRO (image level). */
  nRegions?: number;
  /** FPR limit of AUPRO, in (0, 1]. */
  fprLimit?: number;
  /** Record downsampled ROC / PR / PRO curves of at most this many points each. */
  maxCurvePoints?: number;
  /** Upper bound of the number of steps to come; when it fits in maxCurvePoints the curves are exact. */
  maxSteps?: number;
}

export interface MetricCurves {
  /** x = FPR, y = TPR, from (0, 0). */
  roc: CurvePoint[];
  /** x = recall, y = precision, from (0, 1) as in sklearn. */
  pr: CurvePoint[];
  /** x = FPR, y = PRO, from (0, 0) up to the first point beyond the FPR limit (pixel level only). */
  pro: CurvePoint[];
}

export interface SweepResult {
  auroc: MetricValue;
  ap: MetricValue;
  prAucTrapz: MetricValue;
  aupro: MetricValue;
  curves?: MetricCurves;
}

export class ThresholdSweep {
  private readonly nPos: number;
  private readonly nNeg: number;
  private readonly nRegions: number;
  private readonly fprLimit: number;
  private tp = 0;
  private fp = 0;
  private proSum = 0;
  private rocArea = 0; // in units of (normal samples × anomalous samples)
  private apSum = 0; // Σ dTp · precision
  private prSum = 0; // Σ dTp · (precision + previous precision) / 2
  private prevPrecision = 1;
  private proArea = 0;
  private proPrevFpr = 0;
  private proPrevPro = 0;
  private proDone = false;
  private readonly recorders: { roc: CurveRecorder; pr: CurveRecorder; pro: CurveRecorder } | null;

  constructor(private readonly options: SweepOptions) {
    const { nPos, nNeg } = options;
    if (!Number.isSafeInteger(nPos) || nPos < 0 || !Number.isSafeInteger(nNeg) || nNeg < 0) {
      throw new RangeError(`sample counts must be non-negative integers, got nPos=${nPos} nNeg=${nNeg}`);
    }
    this.nPos = nPos;
    this.nNeg = nNeg;
    this.nRegions = options.nRegions ?? 0;
    this.fprLimit = options.fprLimit ?? 0.3;
    if (!(this.fprLimit > 0 && this.fprLimit <= 1)) {
      throw new RangeError(`fprLimit must be in (0, 1], got ${String(options.fprLimit)}`);
    }
    if (options.maxCurvePoints !== undefined) {
      const exact = options.maxSteps !== undefined && options.maxSteps + 1 <= options.maxCurvePoints;
      this.recorders = {
        roc: new CurveRecorder(options.maxCurvePoints, exact),
        pr: new CurveRecorder(options.maxCurvePoints, exact),
        pro: new CurveRecorder(options.maxCurvePoints, exact),
      };
      this.recorders.roc.add(0, 0, Infinity);
      this.recorders.pr.add(0, 1, Infinity);
      this.recorders.pro.add(0, 0, Infinity);
    } else {
      this.recorders = null;
    }
  }

  /** One distinct threshold, in descending order of threshold. */
  step(threshold: number, dTp: number, dFp: number, dProWeight: number): void {
    const tpPrev = this.tp;
    const tp = tpPrev + dTp;
    const fp = this.fp + dFp;
    this.tp = tp;
    this.fp = fp;
    this.rocArea += dFp * (tp + tpPrev) * 0.5;
    const precision = tp / (tp + fp);
    if (dTp > 0) {
      this.apSum += dTp * precision;
      this.prSum += dTp * (precision + this.prevPrecision) * 0.5;
    }
    this.prevPrecision = precision;

    let fpr = 0;
    let pro = 0;
    if (this.nRegions > 0 && this.nNeg > 0) {
      this.proSum += dProWeight;
      fpr = fp / this.nNeg;
      pro = this.proSum / this.nRegions;
      if (!this.proDone) {
        const limit = this.fprLimit;
        if (fpr <= limit) {
          this.proArea += (fpr - this.proPrevFpr) * (pro + this.proPrevPro) * 0.5;
        } else {
          const proAtLimit =
            this.proPrevPro + ((pro - this.proPrevPro) * (limit - this.proPrevFpr)) / (fpr - this.proPrevFpr);
          this.proArea += (limit - this.proPrevFpr) * (proAtLimit + this.proPrevPro) * 0.5;
          this.proDone = true;
          if (this.recorders !== null) this.recorders.pro.add(fpr, pro, threshold);
        }
        this.proPrevFpr = fpr;
        this.proPrevPro = pro;
      }
    }

    const rec = this.recorders;
    if (rec !== null) {
      const tpr = this.nPos > 0 ? tp / this.nPos : 0;
      rec.roc.add(this.nNeg > 0 ? fp / this.nNeg : 0, tpr, threshold);
      rec.pr.add(tpr, precision, threshold);
      if (this.nRegions > 0 && this.nNeg > 0 && fpr <= this.fprLimit) rec.pro.add(fpr, pro, threshold);
    }
  }

  finish(): SweepResult {
    const { nPos, nNeg, nRegions } = this;
    const noun = this.options.sampleNoun;
    if (this.tp !== nPos || this.fp !== nNeg) {
      throw new Error(
        `threshold sweep saw ${this.tp} anomalous and ${this.fp} normal ${noun}s, expected ${nPos} and ${nNeg}`,
      );
    }
    const noPos = `no anomalous ${noun}`;
    const noNeg = `no normal ${noun}`;
    const auroc =
      nPos === 0 ? undefinedMetric(noPos) : nNeg === 0 ? undefinedMetric(noNeg) : definedMetric(this.rocArea / nPos / nNeg);
    const ap = nPos === 0 ? undefinedMetric(noPos) : definedMetric(this.apSum / nPos);
    const prAucTrapz = nPos === 0 ? undefinedMetric(noPos) : definedMetric(this.prSum / nPos);
    let aupro: MetricValue;
    if (this.options.nRegions === undefined) aupro = undefinedMetric(`AUPRO is a pixel-level metric`);
    else if (nRegions === 0) aupro = undefinedMetric('no anomalous pixel (no ground-truth region)');
    else if (nNeg === 0) aupro = undefinedMetric('no normal pixel');
    else aupro = definedMetric(this.proArea / this.fprLimit);
    const result: SweepResult = { auroc, ap, prAucTrapz, aupro };
    if (this.recorders !== null) {
      result.curves = {
        roc: this.recorders.roc.finish(),
        pr: this.recorders.pr.finish(),
        pro: this.options.nRegions !== undefined && nRegions > 0 && nNeg > 0 ? this.recorders.pro.finish() : [],
      };
    }
    return result;
  }
}
