/**
 * Text outputs of an evaluation: the terminal table (this run beside the paper's PatchCore-1 %
 * and -100 % rows, with the differences), `results.json` (every number, the settings, model
 * digests, timings) and `results.md`.
 *
 * Tables show percentages with one decimal, as the paper prints them. An undefined metric is
 * "n/a" with its reason in a footnote; a paper value we do not have is "–". NaN never appears.
 * A category whose evaluation failed shows "failed" with the reason in a footnote (and in its
 * own section); results.json has the reason as `failed` on the category and in a top-level list.
 */
import type { MetricValue } from '../models/metrics/index.js';
import { TOOL_VERSION } from '../models/version.js';
import { failedCategories, METRIC_KEYS, type CategoryResult, type EvaluationResult, type MeanValue, type MetricKey } from './eval-types.js';
import { isGoodsAdRun, PAPER_METHODS, PAPER_SOURCE, paperCategory, PATCHCORE_1, type PaperMetrics } from './paper-results.js';

export const METRIC_LABELS: Record<MetricKey, string> = {
  imageAuroc: 'img AUROC',
  imageAp: 'img AP',
  pixelAuroc: 'px AUROC',
  pixelAp: 'px AP',
  pro: 'PRO@0.3',
};

type Cell = string;

/** What a table needs to know beyond the result. */
export interface ReportContext {
  dataset: string;
  createdAt: string;
}

// ───────────────────────────── cells ─────────────────────────────

class Footnotes {
  private readonly notes: string[] = [];
  constructor(private readonly prefix = '') {}
  add(text: string): string {
    let i = this.notes.indexOf(text);
    if (i < 0) {
      this.notes.push(text);
      i = this.notes.length - 1;
    }
    return `[${this.prefix}${i + 1}]`;
  }
  lines(): string[] {
    return this.notes.map((n, i) => `[${this.prefix}${i + 1}] ${n}`);
  }
}

function pctCell(v: MetricValue | MeanValue, notes: Footnotes, where: string): Cell {
  if (!v.defined) return `n/a${notes.add(`${where}: ${v.reason}`)}`;
  const text = (v.value * 100).toFixed(1);
  if ('outOf' in v && v.categories < v.outOf) return `${text}${notes.add(`${where}: mean over ${v.categories} of ${v.outOf} categories (undefined in the others)`)}`;
  return text;
}

function paperCell(v: number | null): Cell {
  return v === null ? '–' : v.toFixed(1);
}

function deltaCell(run: MetricValue | MeanValue, paper: number | null): Cell {
  if (!run.defined || paper === null) return '–';
  const d = run.value * 100 - paper;
  return `${d >= 0 ? '+' : ''}${d.toFixed(1)}`;
}

// ───────────────────────────── the comparison table ─────────────────────────────

interface TableRow {
  group: string;
  label: string;
  cells: Cell[];
}

function comparisonRows(result: EvaluationResult, notes: Footnotes): TableRow[] {
  const rows: TableRow[] = [];
  const names = result.modes[0]?.categories.map((c) => c.category) ?? [];
  const showPaper = isGoodsAdRun(names);
  const single = result.modes.length === 1;
  const runLabel = (mode: string) => (single ? `this run${mode === 'category' ? '' : ` (${mode})`}` : `this run (${mode})`);

  for (const name of names) {
    let first = true;
    const group = () => {
      const g = first ? name : '';
      first = false;
      return g;
    };
    for (const m of result.modes) {
      const c = m.categories.find((x) => x.category === name)!;
      if (c.failed !== undefined) {
        const mark = notes.add(`${name} (${m.mode.name}): evaluation failed: ${c.failed}`);
        rows.push({ group: group(), label: runLabel(m.mode.name), cells: METRIC_KEYS.map(() => `failed${mark}`) });
        continue;
      }
      rows.push({ group: group(), label: runLabel(m.mode.name), cells: METRIC_KEYS.map((k) => pctCell(c.metrics[k], notes, `${name} (${m.mode.name}) ${METRIC_LABELS[k]}`)) });
    }
    if (!showPaper) continue;
    const p = paperCategory(PATCHCORE_1, name);
    if (METRIC_KEYS.every((k) => p[k] === null)) continue;
    rows.push({ group: group(), label: PATCHCORE_1.label, cells: METRIC_KEYS.map((k) => paperCell(p[k])) });
    for (const m of result.modes) {
      const c = m.categories.find((x) => x.category === name)!;
      rows.push({ group: group(), label: `Δ ${single ? '' : `(${m.mode.name}) `}vs PatchCore-1 %`, cells: METRIC_KEYS.map((k) => deltaCell(c.metrics[k], p[k])) });
    }
  }

  let first = true;
  const group = () => {
    const g = first ? (names.length > 1 ? `mean (${names.length})` : 'mean') : '';
    first = false;
    return g;
  };
  for (const m of result.modes) {
    rows.push({ group: group(), label: runLabel(m.mode.name), cells: METRIC_KEYS.map((k) => pctCell(m.mean[k], notes, `mean (${m.mode.name}) ${METRIC_LABELS[k]}`)) });
  }
  if (showPaper) {
    for (const method of PAPER_METHODS) rows.push({ group: group(), label: method.label, cells: METRIC_KEYS.map((k) => paperCell(method.mean[k])) });
    for (const method of PAPER_METHODS) {
      for (const m of result.modes) {
        rows.push({
          group: group(),
          label: `Δ ${single ? '' : `(${m.mode.name}) `}vs ${method.label.replace(' (paper)', '')}`,
          cells: METRIC_KEYS.map((k) => deltaCell(m.mean[k], method.mean[k as keyof PaperMetrics])),
        });
      }
    }
    const missing = 6 - names.filter((n) => paperCategory(PATCHCORE_1, n).imageAuroc !== null).length;
    if (missing > 0) notes.add(`the paper's means are over its six categories; this run has ${names.length} category(ies)`);
  }
  return rows;
}

function settingsLine(result: EvaluationResult): string {
  const s = result.settings;
  const px = s.pixelSize === 'native' ? 'native mask size' : `${s.pixelSize}×${s.pixelSize}`;
  return `backbone ${s.backbone.id} (${s.backbone.sha256.slice(0, 12)}…), input ${s.inputSize}, coreset ${formatRatio(s.coreset)}, seed ${s.seed}, pixel metrics at ${px}, modes ${s.modes.join(', ')}`;
}

function formatRatio(r: number): string {
  return `${+(r * 100).toPrecision(6)} %`;
}

/** The comparison table as data (for the HTML report): header, rows and footnote lines. */
export function comparisonTable(result: EvaluationResult): { header: string[]; rows: Array<{ group: string; label: string; cells: string[] }>; notes: string[]; paper: boolean } {
  const notes = new Footnotes();
  const rows = comparisonRows(result, notes);
  const names = result.modes[0]?.categories.map((c) => c.category) ?? [];
  return { header: ['category', 'row', ...METRIC_KEYS.map((k) => METRIC_LABELS[k])], rows, notes: notes.lines(), paper: isGoodsAdRun(names) };
}

/** The terminal table: aligned columns, this run beside the paper, then footnotes. */
export function formatTerminalTable(result: EvaluationResult): string {
  const notes = new Footnotes();
  const rows = comparisonRows(result, notes);
  const header = ['category', 'row', ...METRIC_KEYS.map((k) => METRIC_LABELS[k])];
  const all = [header, ...rows.map((r) => [r.group, r.label, ...r.cells])];
  const widths = header.map((_, i) => Math.max(...all.map((r) => [...r[i]!].length)));
  const fmt = (r: string[]) =>
    r.map((c, i) => (i < 2 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ').trimEnd();
  const lines = [settingsLine(result), '', fmt(header), widths.map((w) => '─'.repeat(w)).join('  ')];
  let prevGroup = '';
  for (const r of rows) {
    if (r.group && prevGroup) lines.push('');
    if (r.group) prevGroup = r.group;
    lines.push(fmt([r.group, r.label, ...r.cells]));
  }
  const names = result.modes[0]?.categories.map((c) => c.category) ?? [];
  lines.push('');
  if (isGoodsAdRun(names)) lines.push(`paper: ${PAPER_SOURCE}; "–" = not reported there (or not transcribed)`);
  else lines.push('paper rows left out: these are not GoodsAD categories');
  lines.push(...notes.lines());
  const failed = failedCategories(result);
  if (failed.length > 0) lines.push(`FAILED: ${failed.length} category evaluation(s) (${failed.map((f) => `${f.category}${result.modes.length > 1 ? ` (${f.mode})` : ''}`).join(', ')}); the other categories' results are complete`);
  const t = result.timings;
  lines.push(
    `time ${sec(t.total)}: decode ${sec(t.decodeWait)} waited (${sec(t.decodeCpu)} summed over concurrent decodes, ${result.decode.shrunk}/${result.decode.images} decodes shrunk on load, ${result.decode.fromCache} inputs from cache), features ${sec(t.features)}, coreset ${sec(t.coreset)}, compile ${sec(t.compile)}, thresholds ${sec(t.thresholds)}, inference ${sec(t.inference)}, metrics ${sec(t.metrics)}`,
  );
  lines.push(
    `feature cache: ${result.cache.featureHits} hit(s), ${result.cache.featureMisses} miss(es); ${result.backboneTrainImages} training image(s) through the backbone${result.cache.dir ? `; cache ${result.cache.dir}` : '; cache off'}`,
  );
  return lines.join('\n');
}

function sec(ms: number): string {
  return `${(ms / 1000).toFixed(1)} s`;
}

// ───────────────────────────── results.json ─────────────────────────────

function metricJson(v: MetricValue): number | null {
  return v.defined ? v.value : null;
}

function metricsJson(m: Record<MetricKey, MetricValue>) {
  const values = {} as Record<MetricKey, number | null>;
  const undefinedReasons: Partial<Record<MetricKey, string>> = {};
  for (const k of METRIC_KEYS) {
    values[k] = metricJson(m[k]);
    const v = m[k];
    if (!v.defined) undefinedReasons[k] = v.reason;
  }
  return { ...values, ...(Object.keys(undefinedReasons).length ? { undefinedReasons } : {}) };
}

function meanJson(m: Record<MetricKey, MeanValue>) {
  const out = {} as Record<MetricKey, { value: number; categories: number; outOf: number } | { value: null; reason: string }>;
  for (const k of METRIC_KEYS) {
    const v = m[k];
    out[k] = v.defined ? { value: v.value, categories: v.categories, outOf: v.outOf } : { value: null, reason: v.reason };
  }
  return out;
}

const round = (x: number) => Math.round(x * 1000) / 1000;

function categoryJson(c: CategoryResult) {
  return {
    category: c.category,
    /** The reason the evaluation of this category failed, or null. */
    failed: c.failed ?? null,
    counts: c.counts,
    metrics: metricsJson(c.metrics),
    pixels: c.pixels,
    threshold: c.failed !== undefined ? null : c.threshold,
    featureCache: c.featureCache,
    backboneTrainImages: c.backboneTrainImages,
    models: c.models,
    byDefect: c.byDefect.map((g) => ({ defect: g.defect, images: g.images, anomalous: g.anomalous, normal: g.normal, metrics: metricsJson(g.metrics) })),
    byGoods: c.byGoods.map((g) => ({ goodsId: g.goodsId, model: g.model, images: g.images, anomalous: g.anomalous, normal: g.normal, metrics: metricsJson(g.metrics) })),
    notes: c.notes,
    skipped: c.skipped,
    timingsMs: Object.fromEntries(Object.entries(c.timings).map(([k, v]) => [k, round(v)])),
    curves: c.curves,
    images: c.images.map((r) => ({
      name: r.name,
      defect: r.defect,
      goodsId: r.goodsId,
      label: r.label,
      score: r.score,
      threshold: r.threshold,
      evalScore: r.evalScore,
      model: r.model,
      crop: r.placement.crop,
      sourceSize: [r.placement.sourceWidth, r.placement.sourceHeight],
      shrink: r.placement.shrink,
    })),
  };
}

/** Everything of a run as plain JSON (metrics as fractions 0…1, null when undefined). */
export function resultsJson(result: EvaluationResult, ctx: ReportContext) {
  return {
    tool: { name: 'shelfwatch', version: TOOL_VERSION },
    createdAt: ctx.createdAt,
    dataset: ctx.dataset,
    settings: result.settings,
    provider: result.provider,
    /** Categories (per mode) whose evaluation failed: the run as a whole failed when any. */
    failed: failedCategories(result),
    paper: { source: PAPER_SOURCE, methods: PAPER_METHODS },
    modes: result.modes.map((m) => ({
      mode: m.mode.name,
      perGoods: m.mode.perGoods,
      crop: m.mode.crop,
      mean: meanJson(m.mean),
      categories: m.categories.map(categoryJson),
    })),
    cache: result.cache,
    backboneTrainImages: result.backboneTrainImages,
    decode: result.decode,
    timingsMs: Object.fromEntries(Object.entries(result.timings).map(([k, v]) => [k, round(v)])),
  };
}

// ───────────────────────────── results.md ─────────────────────────────

function mdTable(header: string[], rows: string[][], rightFrom = 1): string {
  const esc = (s: string) => s.replace(/\|/g, '\\|');
  return [
    `| ${header.map(esc).join(' | ')} |`,
    `| ${header.map((_, i) => (i >= rightFrom ? '---:' : '---')).join(' | ')} |`,
    ...rows.map((r) => `| ${r.map(esc).join(' | ')} |`),
  ].join('\n');
}

/** results.md: settings, the comparison table, per-defect and per-goods tables, models, timings. */
export function resultsMarkdown(result: EvaluationResult, ctx: ReportContext): string {
  const notes = new Footnotes();
  const rows = comparisonRows(result, notes);
  const out: string[] = [];
  out.push(`# Evaluation of ${ctx.dataset}`, '');
  out.push(`shelfwatch ${TOOL_VERSION}, ${ctx.createdAt}. ${settingsLine(result)}.`, '');
  out.push('## This run and the paper', '');
  out.push(mdTable(['category', 'row', ...METRIC_KEYS.map((k) => METRIC_LABELS[k])], rows.map((r) => [r.group, r.label, ...r.cells]), 2), '');
  const names = result.modes[0]?.categories.map((c) => c.category) ?? [];
  out.push(isGoodsAdRun(names) ? `Paper: ${PAPER_SOURCE}. "–" = not reported there (or not transcribed). Percent.` : 'Percent. Paper rows left out: these are not GoodsAD categories.', '');
  const failed = failedCategories(result);
  if (failed.length > 0) {
    out.push(`**${failed.length} category evaluation(s) failed** (the run exits non-zero):`, '');
    for (const f of failed) out.push(`- ${f.category} (${f.mode}): ${f.reason}`);
    out.push('');
  }
  const breakdownNotes = new Footnotes('b');
  for (const m of result.modes) {
    for (const c of m.categories) {
      const where = `${c.category} (${m.mode.name})`;
      out.push(`## ${where}`, '');
      if (c.failed !== undefined) {
        out.push(`**Evaluation failed:** ${c.failed}`, '', 'Nothing of this category was scored; its metrics are undefined and left out of the means.', '');
        continue;
      }
      out.push(
        `${c.counts.test} test images (${c.counts.anomalous} anomalous, ${c.counts.normal} normal${c.counts.skipped ? `, ${c.counts.skipped} skipped` : ''}); ` +
          (c.pixels ? `${c.pixels.anomalous} anomalous / ${c.pixels.normal} normal pixels at ${c.pixels.size}, ${c.pixels.regions} regions; ` : '') +
          `threshold ${c.threshold.toPrecision(5)}; feature cache: ${c.featureCache}.`,
        '',
      );
      for (const n of c.notes) out.push(`- ${n}`);
      if (c.notes.length) out.push('');
      if (c.byDefect.length) {
        out.push('Per defect type (its images + every good image):', '');
        out.push(
          mdTable(
            ['defect', 'images', ...METRIC_KEYS.map((k) => METRIC_LABELS[k])],
            c.byDefect.map((g) => [g.defect, String(g.images), ...METRIC_KEYS.map((k) => pctCell(g.metrics[k], breakdownNotes, `${where} ${g.defect} ${METRIC_LABELS[k]}`))]),
          ),
          '',
        );
      }
      if (c.byGoods.length) {
        out.push('Per goods id:', '');
        out.push(
          mdTable(
            ['goods', 'model', 'images', 'anomalous', ...METRIC_KEYS.map((k) => METRIC_LABELS[k])],
            c.byGoods.map((g) => [g.goodsId, g.model, String(g.images), String(g.anomalous), ...METRIC_KEYS.map((k) => pctCell(g.metrics[k], breakdownNotes, `${where} goods ${g.goodsId} ${METRIC_LABELS[k]}`))]),
            2,
          ),
          '',
        );
      }
      out.push('Models:', '');
      out.push(
        mdTable(
          ['model', 'sha256', 'train', 'val', 'bank', 'image thr', 'pixel thr', 'source'],
          c.models.map((md) => [md.name, md.digest.slice(0, 16), String(md.trainImages), String(md.validationImages), String(md.bankSize), md.thresholds.image.toPrecision(5), md.thresholds.pixel.toPrecision(5), md.reused ? `reused ${md.file}` : md.file ? `fitted → ${md.file}` : 'fitted']),
        ),
        '',
      );
    }
  }
  const allNotes = [...notes.lines(), ...breakdownNotes.lines()];
  if (allNotes.length) out.push('## Notes', '', ...allNotes.map((l) => `- ${l}`), '');
  const t = result.timings;
  out.push('## Time', '');
  out.push(
    mdTable(
      ['stage', 'seconds'],
      [
        ['decode (waited)', (t.decodeWait / 1000).toFixed(2)],
        ['decode (summed over concurrent decodes)', (t.decodeCpu / 1000).toFixed(2)],
        ['features (backbone, train)', (t.features / 1000).toFixed(2)],
        ['coreset', (t.coreset / 1000).toFixed(2)],
        ['compile', (t.compile / 1000).toFixed(2)],
        ['thresholds', (t.thresholds / 1000).toFixed(2)],
        ['inference (test)', (t.inference / 1000).toFixed(2)],
        ['metrics', (t.metrics / 1000).toFixed(2)],
        ['total', (t.total / 1000).toFixed(2)],
      ],
    ),
    '',
  );
  out.push(
    `Decodes: ${result.decode.images} (${result.decode.shrunk} with shrink-on-load), ${result.decode.fromCache} inputs from the cache. ` +
      `Feature cache: ${result.cache.featureHits} hit(s), ${result.cache.featureMisses} miss(es); ${result.backboneTrainImages} training images through the backbone.`,
    '',
  );
  return out.join('\n');
}
