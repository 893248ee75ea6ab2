/**
 * The published GoodsAD numbers the evaluator puts beside a run.
 *
 * Source: the GoodsAD paper (PKU-GoodsAD, "A Supermarket Goods Dataset for Unsupervised Anomaly
 * Detection and Segmentation", IEEE RA-L 2024), Table IV (image AUROC per category) and Table V
 * (means over the six categories), rows "PatchCore-1%" and "PatchCore-100%". Values are
 * percentages as printed (one decimal); they were transcribed into the project brief from those
 * tables — check them against the paper before quoting them elsewhere.
 *
 * Only numbers taken from those tables are stored. A value we do not have is `null` and is shown
 * as "–": never fill it in by guessing or by averaging. The paper reports no image AP.
 */

/** The metrics of one row, in percent; null = not known from the paper. */
export interface PaperMetrics {
  imageAuroc: number | null;
  imageAp: number | null;
  pixelAuroc: number | null;
  /** Pixel AUPR; compared with this tool's pixel AP (sklearn average precision). */
  pixelAp: number | null;
  /** AUPRO up to FPR 0.3. */
  pro: number | null;
}

export interface PaperMethod {
  /** Row label in tables. */
  label: string;
  /** Coreset ratio of the method, to pick the row closest to a run. */
  coreset: number;
  categories: Record<string, PaperMetrics>;
  mean: PaperMetrics;
}

export const GOODSAD_CATEGORIES = ['cigarette_box', 'drink_bottle', 'drink_can', 'food_bottle', 'food_box', 'food_package'] as const;

const unknown: PaperMetrics = { imageAuroc: null, imageAp: null, pixelAuroc: null, pixelAp: null, pro: null };
const imageOnly = (imageAuroc: number): PaperMetrics => ({ ...unknown, imageAuroc });

/** PatchCore with a 1 % coreset (Table IV image AUROC per category; Table V means). */
export const PATCHCORE_1: PaperMethod = {
  label: 'PatchCore-1 % (paper)',
  coreset: 0.01,
  categories: {
    cigarette_box: imageOnly(98.8),
    drink_bottle: imageOnly(77.2),
    drink_can: imageOnly(86.3),
    food_bottle: imageOnly(86.3),
    food_box: imageOnly(72.7),
    food_package: imageOnly(66.9),
  },
  mean: { imageAuroc: 81.4, imageAp: null, pixelAuroc: 97.0, pixelAp: 51.6, pro: 80.5 },
};

/** PatchCore with the full memory bank (Table V means; per-category values not stored). */
export const PATCHCORE_100: PaperMethod = {
  label: 'PatchCore-100 % (paper)',
  coreset: 1,
  categories: {},
  mean: { imageAuroc: 85.5, imageAp: null, pixelAuroc: 98.4, pixelAp: 53.8, pro: 89.9 },
};

export const PAPER_METHODS: readonly PaperMethod[] = [PATCHCORE_1, PATCHCORE_100];

export const PAPER_SOURCE =
  'GoodsAD paper (PKU-GoodsAD, IEEE RA-L 2024), Table IV (image AUROC per category) and Table V (means)';

/** The paper's row for a category, or all-null when the paper has none for it. */
export function paperCategory(method: PaperMethod, category: string): PaperMetrics {
  return method.categories[category] ?? unknown;
}

/** True when at least one of the names is a GoodsAD category (only then are paper rows shown). */
export function isGoodsAdRun(categories: readonly string[]): boolean {
  return categories.some((c) => (GOODSAD_CATEGORIES as readonly string[]).includes(c));
}
