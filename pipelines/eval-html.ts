/**
 * The self-contained HTML report of an evaluation: one file, no external asset (no script, font,
 * style sheet or image is fetched), charts as inline SVG, example images as base64 JPEG.
 *
 * Per mode and category: image and pixel ROC and precision-recall curves (PRO up to FPR 0.3 too),
 * a histogram of the image scores of normal vs anomalous images with the threshold line, and the
 * worst false negatives and false positives, each shown as the image with its ground-truth contour
 * (green) and as the anomaly heat map over the image (same contour). Heat maps are scaled per image
 * (its own min → blue, max → red): they show where, not how much.
 */
import sharp from 'sharp';
import type { CurvePoint } from '../models/metrics/index.js';
import { TOOL_VERSION } from '../models/version.js';
import { comparisonTable, METRIC_LABELS, type ReportContext } from './eval-report.js';
import { placeMap } from './eval-inputs.js';
import { loadMask } from './eval-masks.js';
import { METRIC_KEYS, type CategoryResult, type EvaluationResult, type ExampleImage } from './eval-types.js';

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');

// ───────────────────────────── SVG charts ─────────────────────────────

interface Series {
  name: string;
  color: string;
  points: ReadonlyArray<{ x: number; y: number }>;
}

const W = 300;
const H = 230;
const PAD = { l: 42, r: 10, t: 24, b: 36 };

function axes(title: string, xLabel: string, yLabel: string, x0: number, x1: number, y0: number, y1: number): string {
  const pw = W - PAD.l - PAD.r;
  const ph = H - PAD.t - PAD.b;
  const ticks: string[] = [];
  for (let i = 0; i <= 4; i++) {
    const fx = PAD.l + (pw * i) / 4;
    const fy = PAD.t + ph - (ph * i) / 4;
    ticks.push(`<line x1="${fx}" y1="${PAD.t + ph}" x2="${fx}" y2="${PAD.t + ph + 4}" stroke="#555"/>`);
    ticks.push(`<text x="${fx}" y="${PAD.t + ph + 15}" font-size="9" text-anchor="middle">${fmtTick(x0 + ((x1 - x0) * i) / 4)}</text>`);
    ticks.push(`<line x1="${PAD.l - 4}" y1="${fy}" x2="${PAD.l}" y2="${fy}" stroke="#555"/>`);
    ticks.push(`<text x="${PAD.l - 6}" y="${fy + 3}" font-size="9" text-anchor="end">${fmtTick(y0 + ((y1 - y0) * i) / 4)}</text>`);
    ticks.push(`<line x1="${PAD.l}" y1="${fy}" x2="${PAD.l + pw}" y2="${fy}" stroke="#eee"/>`);
  }
  return (
    `<text x="${W / 2}" y="14" font-size="12" text-anchor="middle" font-weight="bold">${esc(title)}</text>` +
    ticks.join('') +
    `<rect x="${PAD.l}" y="${PAD.t}" width="${pw}" height="${ph}" fill="none" stroke="#555"/>` +
    `<text x="${PAD.l + pw / 2}" y="${H - 4}" font-size="10" text-anchor="middle">${esc(xLabel)}</text>` +
    `<text x="10" y="${PAD.t + ph / 2}" font-size="10" text-anchor="middle" transform="rotate(-90 10 ${PAD.t + ph / 2})">${esc(yLabel)}</text>`
  );
}

function fmtTick(v: number): string {
  const a = Math.abs(v);
  return a !== 0 && (a < 0.01 || a >= 1000) ? v.toExponential(1) : +v.toFixed(2) + '';
}

/** A line chart of curve points (x and y within the given ranges). */
export function lineChart(opts: { title: string; xLabel: string; yLabel: string; series: Series[]; xRange?: [number, number]; yRange?: [number, number]; diagonal?: boolean; note?: string }): string {
  const [x0, x1] = opts.xRange ?? [0, 1];
  const [y0, y1] = opts.yRange ?? [0, 1];
  const pw = W - PAD.l - PAD.r;
  const ph = H - PAD.t - PAD.b;
  const sx = (x: number) => PAD.l + ((Math.min(Math.max(x, x0), x1) - x0) / (x1 - x0 || 1)) * pw;
  const sy = (y: number) => PAD.t + ph - ((Math.min(Math.max(y, y0), y1) - y0) / (y1 - y0 || 1)) * ph;
  let body = axes(opts.title, opts.xLabel, opts.yLabel, x0, x1, y0, y1);
  if (opts.diagonal) body += `<line x1="${sx(x0)}" y1="${sy(y0)}" x2="${sx(x1)}" y2="${sy(y1)}" stroke="#bbb" stroke-dasharray="4 3"/>`;
  opts.series.forEach((s, i) => {
    if (s.points.length === 0) return;
    const d = s.points.map((p, k) => `${k ? 'L' : 'M'}${sx(p.x).toFixed(1)},${sy(p.y).toFixed(1)}`).join('');
    body += `<path d="${d}" fill="none" stroke="${s.color}" stroke-width="1.6"/>`;
    body += `<text x="${PAD.l + pw - 4}" y="${PAD.t + ph - 8 - 12 * i}" font-size="10" text-anchor="end" fill="${s.color}">${esc(s.name)}</text>`;
  });
  if (opts.note) body += `<text x="${PAD.l + pw / 2}" y="${PAD.t + ph / 2}" font-size="11" text-anchor="middle" fill="#999">${esc(opts.note)}</text>`;
  return svg(body, opts.title);
}

function svg(body: string, label: string): string {
  return `<svg class="chart" viewBox="0 0 ${W} ${H}" width="${W}" height="${H}" role="img" aria-label="${esc(label)}" font-family="sans-serif">${body}</svg>`;
}

/** Histogram of normal vs anomalous scores with the threshold as a dashed line. */
export function scoreHistogram(title: string, normal: readonly number[], anomalous: readonly number[], threshold: number, bins = 30): string {
  const all = [...normal, ...anomalous, threshold];
  let lo = Math.min(...all);
  let hi = Math.max(...all);
  if (!(hi > lo)) {
    lo -= 0.5;
    hi += 0.5;
  }
  const count = (v: readonly number[]) => {
    const c = new Array<number>(bins).fill(0);
    for (const x of v) c[Math.min(bins - 1, Math.floor(((x - lo) / (hi - lo)) * bins))]!++;
    return c;
  };
  const cn = count(normal);
  const ca = count(anomalous);
  const top = Math.max(1, ...cn, ...ca);
  const pw = W - PAD.l - PAD.r;
  const ph = H - PAD.t - PAD.b;
  let body = axes(title, 'image score', 'images', lo, hi, 0, top);
  const bw = pw / bins;
  const bar = (c: number[], color: string) =>
    c.map((n, i) => (n ? `<rect x="${(PAD.l + i * bw).toFixed(1)}" y="${(PAD.t + ph - (n / top) * ph).toFixed(1)}" width="${Math.max(1, bw - 1).toFixed(1)}" height="${((n / top) * ph).toFixed(1)}" fill="${color}" fill-opacity="0.55"/>` : '')).join('');
  body += bar(cn, '#1f77b4') + bar(ca, '#d62728');
  const tx = PAD.l + ((threshold - lo) / (hi - lo)) * pw;
  body += `<line x1="${tx.toFixed(1)}" y1="${PAD.t}" x2="${tx.toFixed(1)}" y2="${PAD.t + ph}" stroke="#000" stroke-dasharray="5 3"/>`;
  body += `<text x="${(tx + 3).toFixed(1)}" y="${PAD.t + ph - 6}" font-size="9">threshold</text>`;
  body += `<text x="${PAD.l + pw - 4}" y="${PAD.t + 12}" font-size="10" text-anchor="end" fill="#1f77b4">normal (${normal.length})</text>`;
  body += `<text x="${PAD.l + pw - 4}" y="${PAD.t + 24}" font-size="10" text-anchor="end" fill="#d62728">anomalous (${anomalous.length})</text>`;
  return svg(body, title);
}

// ───────────────────────────── example images ─────────────────────────────

const DISPLAY = 240;

/** Jet-like colour map of t in [0, 1]. */
function heat(t: number): [number, number, number] {
  const c = (x: number) => Math.round(255 * Math.min(1, Math.max(0, x)));
  return [c(1.5 - Math.abs(4 * t - 3)), c(1.5 - Math.abs(4 * t - 2)), c(1.5 - Math.abs(4 * t - 1))];
}

/** Renders one example as two JPEG data URIs: image + ground-truth contour, heat map + contour. */
export async function renderExample(ex: ExampleImage): Promise<{ image: string; overlay: string; width: number; height: number }> {
  const r = ex.record;
  const { data, info } = await sharp(r.file)
    .autoOrient()
    .resize(DISPLAY, DISPLAY, { fit: 'inside' })
    .flatten({ background: '#ffffff' })
    .toColourspace('srgb')
    .removeAlpha()
    .raw()
    .toBuffer({ resolveWithObject: true });
  const w = info.width;
  const h = info.height;
  const base = new Uint8Array(data.buffer, data.byteOffset, w * h * 3);
  let lo = Infinity;
  let hi = -Infinity;
  for (const v of ex.map) {
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  const map = placeMap(ex.map, ex.mapSize, r.placement.crop, w, h, lo);
  const contour = new Uint8Array(w * h);
  if (r.mask) {
    const m = (await loadMask(r.mask, { width: w, height: h })).data;
    const at = (x: number, y: number) => x >= 0 && y >= 0 && x < w && y < h && m[y * w + x] === 1;
    for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) if (at(x, y) && (!at(x - 1, y) || !at(x + 1, y) || !at(x, y - 1) || !at(x, y + 1))) contour[y * w + x] = 1;
  }
  const plain = Buffer.from(base);
  const overlay = Buffer.alloc(w * h * 3);
  for (let i = 0; i < w * h; i++) {
    const [hr, hg, hb] = heat(hi > lo ? (map[i]! - lo) / (hi - lo) : 0);
    overlay[i * 3] = Math.round(0.5 * base[i * 3]! + 0.5 * hr);
    overlay[i * 3 + 1] = Math.round(0.5 * base[i * 3 + 1]! + 0.5 * hg);
    overlay[i * 3 + 2] = Math.round(0.5 * base[i * 3 + 2]! + 0.5 * hb);
    if (r.placement.crop) {
      // Dim what the model did not see in crop mode.
      const x = (i % w) + 0.5;
      const y = Math.floor(i / w) + 0.5;
      const c = r.placement.crop;
      if (x / w < c.x || x / w >= c.x + c.width || y / h < c.y || y / h >= c.y + c.height) for (let k = 0; k < 3; k++) overlay[i * 3 + k] = overlay[i * 3 + k]! >> 1;
    }
    if (contour[i]) {
      for (const b of [plain, overlay]) {
        b[i * 3] = 0;
        b[i * 3 + 1] = 255;
        b[i * 3 + 2] = 0;
      }
    }
  }
  const jpeg = async (b: Buffer) => `data:image/jpeg;base64,${(await sharp(b, { raw: { width: w, height: h, channels: 3 } }).jpeg({ quality: 82 }).toBuffer()).toString('base64')}`;
  return { image: await jpeg(plain), overlay: await jpeg(overlay), width: w, height: h };
}

// ───────────────────────────── the page ─────────────────────────────

const STYLE = `
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1400px}
h1{font-size:1.5em}h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #ccc}h3{font-size:1.05em}
table{border-collapse:collapse;font-size:.9em;margin:.5em 0}td,th{padding:.2em .6em;border-bottom:1px solid #eee}
td.num{text-align:right;font-variant-numeric:tabular-nums}tr.paper td{color:#555;font-style:italic}tr.delta td{color:#777}
.charts{display:flex;flex-wrap:wrap;gap:.5em}.chart{border:1px solid #ddd;background:#fff}
.examples{display:flex;flex-wrap:wrap;gap:1em}.ex{border:1px solid #ddd;padding:.4em;font-size:.8em}.ex img{display:inline-block;margin-right:2px}
.note{color:#8a5300}.small{color:#666;font-size:.85em}`;

function curvePoints(c: readonly CurvePoint[]): Array<{ x: number; y: number }> {
  return c.map((p) => ({ x: p.x, y: p.y }));
}

async function categorySection(c: CategoryResult, mode: string, examples: boolean): Promise<string> {
  const parts: string[] = [];
  parts.push(`<h3 id="${esc(`${mode}-${c.category}`)}">${esc(c.category)} — ${esc(mode)}</h3>`);
  parts.push(
    `<p class="small">${c.counts.test} test images (${c.counts.anomalous} anomalous, ${c.counts.normal} normal)${c.pixels ? `; pixels at ${c.pixels.size}: ${c.pixels.anomalous} anomalous in ${c.pixels.regions} regions` : ''}; models: ${c.models.map((m) => `${esc(m.name)} <code>${m.digest.slice(0, 12)}</code>${m.reused ? ' (reused)' : ''}`).join(', ')}</p>`,
  );
  for (const n of c.notes) parts.push(`<p class="note">${esc(n)}</p>`);
  parts.push(
    `<table><tr>${METRIC_KEYS.map((k) => `<th>${METRIC_LABELS[k]}</th>`).join('')}</tr><tr>${METRIC_KEYS.map((k) => {
      const v = c.metrics[k];
      return `<td class="num">${v.defined ? (v.value * 100).toFixed(1) : `<span title="${esc(v.reason)}">n/a</span>`}</td>`;
    }).join('')}</tr></table>`,
  );
  const noCurve = (v: { defined: boolean }) => (v.defined ? undefined : 'undefined');
  const charts = [
    lineChart({ title: 'Image ROC', xLabel: 'false positive rate', yLabel: 'true positive rate', series: [{ name: 'image', color: '#d62728', points: curvePoints(c.curves.imageRoc) }], diagonal: true, note: noCurve(c.metrics.imageAuroc) }),
    lineChart({ title: 'Image precision-recall', xLabel: 'recall', yLabel: 'precision', series: [{ name: 'image', color: '#d62728', points: curvePoints(c.curves.imagePr) }], note: noCurve(c.metrics.imageAp) }),
    lineChart({ title: 'Pixel ROC', xLabel: 'false positive rate', yLabel: 'true positive rate', series: [{ name: 'pixel', color: '#2ca02c', points: curvePoints(c.curves.pixelRoc) }], diagonal: true, note: noCurve(c.metrics.pixelAuroc) }),
    lineChart({ title: 'Pixel precision-recall', xLabel: 'recall', yLabel: 'precision', series: [{ name: 'pixel', color: '#2ca02c', points: curvePoints(c.curves.pixelPr) }], note: noCurve(c.metrics.pixelAp) }),
    lineChart({ title: 'PRO (FPR ≤ 0.3)', xLabel: 'false positive rate', yLabel: 'per-region overlap', series: [{ name: 'PRO', color: '#9467bd', points: curvePoints(c.curves.pixelPro) }], xRange: [0, 0.3], note: noCurve(c.metrics.pro) }),
    scoreHistogram(
      'Image scores',
      c.images.filter((r) => r.label === 0).map((r) => r.evalScore),
      c.images.filter((r) => r.label === 1).map((r) => r.evalScore),
      c.threshold,
    ),
  ];
  parts.push(`<div class="charts">${charts.join('')}</div>`);
  if (examples) {
    for (const kind of ['false-negative', 'false-positive'] as const) {
      const list = c.examples.filter((e) => e.kind === kind);
      const title = kind === 'false-negative' ? 'Worst false negatives (anomalous, lowest scores)' : 'Worst false positives (normal, highest scores)';
      if (list.length === 0) {
        parts.push(`<p class="small">${title}: none at this threshold.</p>`);
        continue;
      }
      const cells: string[] = [];
      for (const ex of list) {
        const r = await renderExample(ex);
        cells.push(
          `<div class="ex"><img src="${r.image}" width="${r.width}" height="${r.height}" alt="image"><img src="${r.overlay}" width="${r.width}" height="${r.height}" alt="anomaly map"><br>` +
            `${esc(ex.record.name)} — score ${ex.record.evalScore.toPrecision(4)} (threshold ${c.threshold.toPrecision(4)})${ex.record.defect ? `, ${esc(ex.record.defect)}` : ''}</div>`,
        );
      }
      parts.push(`<h4>${title}</h4><div class="examples">${cells.join('')}</div>`);
    }
  }
  return parts.join('\n');
}

export interface HtmlOptions {
  /** Render the worst-case images (default true). */
  examples?: boolean;
}

/** The whole report as one HTML string. */
export async function renderHtmlReport(result: EvaluationResult, ctx: ReportContext, opts: HtmlOptions = {}): Promise<string> {
  const table = comparisonTable(result);
  const s = result.settings;
  const rows = table.rows
    .map((r) => {
      const cls = r.label.startsWith('Δ') ? 'delta' : r.label.includes('(paper)') ? 'paper' : '';
      return `<tr class="${cls}"><td>${esc(r.group)}</td><td>${esc(r.label)}</td>${r.cells.map((c) => `<td class="num">${esc(c)}</td>`).join('')}</tr>`;
    })
    .join('\n');
  const sections: string[] = [];
  for (const m of result.modes) {
    sections.push(`<h2>Mode: ${esc(m.mode.name)}</h2>`);
    for (const c of m.categories) sections.push(await categorySection(c, m.mode.name, opts.examples ?? true));
  }
  const t = result.timings;
  return `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>shelfwatch evaluation — ${esc(ctx.dataset)}</title>
<style>${STYLE}</style></head><body>
<h1>Evaluation of ${esc(ctx.dataset)}</h1>
<p class="small">shelfwatch ${esc(TOOL_VERSION)}, ${esc(ctx.createdAt)}. Backbone ${esc(s.backbone.id)} <code>${s.backbone.sha256.slice(0, 12)}</code>, input ${s.inputSize}, coreset ${+(s.coreset * 100).toPrecision(6)} %, seed ${s.seed}, pixel metrics at ${s.pixelSize === 'native' ? 'native mask size' : `${s.pixelSize}×${s.pixelSize}`}, execution provider ${esc(result.provider)}.</p>
<table><tr>${table.header.map((h) => `<th>${esc(h)}</th>`).join('')}</tr>
${rows}</table>
${table.notes.map((n) => `<p class="small">${esc(n)}</p>`).join('\n')}
<p class="small">${table.paper ? 'Paper rows: GoodsAD paper, Tables IV and V; "–" = not reported there. ' : ''}Percent. Time ${(t.total / 1000).toFixed(1)} s: features ${(t.features / 1000).toFixed(1)} s, coreset ${(t.coreset / 1000).toFixed(1)} s, inference ${(t.inference / 1000).toFixed(1)} s, metrics ${(t.metrics / 1000).toFixed(1)} s, decode waited ${(t.decodeWait / 1000).toFixed(1)} s.</p>
${sections.join('\n')}
</body></html>
`;
}
