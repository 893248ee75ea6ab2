/**
 * A seeded generator of small synthetic supermarket-goods datasets in the exact GoodsAD layout
 * (which is the MVTec AD layout):
 *
 *   <out>/<category>/train/good/<goods3><serial3>.jpg
 *   <out>/<category>/test/good/<goods3><serial3>.jpg
 *   <out>/<category>/test/<defect>/<goods3><serial3>.jpg
 *   <out>/<category>/ground_truth/<defect>/<goods3><serial3>_mask.png   (0 = normal, 255 = defect)
 *
 * Every image shows one product standing on a white shelf. Each goods id has its own design
 * (silhouette proportions, colours, label bands, text-like glyph rows, a logo); every image varies
 * a little (position, scale, lighting, sensor noise), so normal images differ slightly.
 *
 * Products and the defects each kind of product can show (a product kind per category):
 *
 * | category      | kind   | defect folders written                                          |
 * |---------------|--------|-----------------------------------------------------------------|
 * | drink_bottle  | bottle | cap_half_open, cap_open, surface_anomaly, surface_damage        |
 * | drink_can     | can    | deformation, surface_anomaly, surface_damage                    |
 * | food_bottle   | jar    | cap_half_open, cap_open, surface_anomaly, surface_damage        |
 * | food_box      | box    | deformation, opened, surface_damage                             |
 * | food_package  | pouch  | opened, surface_anomaly, surface_damage                         |
 * | cigarette_box | pack   | deformation, opened, surface_damage                             |
 *
 * Defects: surface_damage = a dent (shaded hollow) or scratches (scraped paint); cap_open = the cap
 * is gone, the open mouth shows; cap_half_open = the cap is lifted and tilted, the thread shows;
 * surface_anomaly = a stain; deformation = a crushed edge (the silhouette bites inwards, wrinkles
 * around it); opened = a torn flap at the top with the dark inside showing.
 *
 * The mask is exact: after a defect is painted, every mask pixel differs from the normal rendering
 * and no pixel outside the mask does (checked by the tests against the same product rendered
 * without the defect). Deterministic: the project PRNG and integer hashes only, so the same seed
 * gives byte-identical files.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import sharp from 'sharp';
import { Random, validateSeed } from '../models/random.js';

export const GOODS_CATEGORIES = ['drink_bottle', 'drink_can', 'food_bottle', 'food_box', 'food_package', 'cigarette_box'] as const;
export type GoodsCategory = (typeof GOODS_CATEGORIES)[number];

export const DEFECT_TYPES = ['surface_damage', 'cap_open', 'cap_half_open', 'surface_anomaly', 'deformation', 'opened'] as const;
export type DefectType = (typeof DEFECT_TYPES)[number];

export type ProductKind = 'bottle' | 'jar' | 'can' | 'box' | 'pack' | 'pouch';
export const PRODUCT_KINDS: readonly ProductKind[] = ['bottle', 'jar', 'can', 'box', 'pack', 'pouch'];

export const CATEGORY_KIND: Readonly<Record<GoodsCategory, ProductKind>> = {
  drink_bottle: 'bottle',
  drink_can: 'can',
  food_bottle: 'jar',
  food_box: 'box',
  food_package: 'pouch',
  cigarette_box: 'pack',
};

/** Defect folders the generator writes per category (byte-sorted, as a scan lists them). */
export const CATEGORY_DEFECTS: Readonly<Record<GoodsCategory, readonly DefectType[]>> = {
  drink_bottle: ['cap_half_open', 'cap_open', 'surface_anomaly', 'surface_damage'],
  drink_can: ['deformation', 'surface_anomaly', 'surface_damage'],
  food_bottle: ['cap_half_open', 'cap_open', 'surface_anomaly', 'surface_damage'],
  food_box: ['deformation', 'opened', 'surface_damage'],
  food_package: ['opened', 'surface_anomaly', 'surface_damage'],
  cigarette_box: ['deformation', 'opened', 'surface_damage'],
};

/** Every defect renderProduct can draw on a kind (a superset of what the generator writes). */
export const KIND_DEFECTS: Readonly<Record<ProductKind, readonly DefectType[]>> = {
  bottle: ['cap_half_open', 'cap_open', 'deformation', 'surface_anomaly', 'surface_damage'],
  jar: ['cap_half_open', 'cap_open', 'deformation', 'surface_anomaly', 'surface_damage'],
  can: ['deformation', 'surface_anomaly', 'surface_damage'],
  box: ['deformation', 'opened', 'surface_anomaly', 'surface_damage'],
  pack: ['deformation', 'opened', 'surface_anomaly', 'surface_damage'],
  pouch: ['deformation', 'opened', 'surface_anomaly', 'surface_damage'],
};

// ---------------------------------------------------------------------------------------------
// Integer hashing (deterministic per-pixel noise and per-item seeds without a PRNG stream).

/** 32-bit avalanche mix of one value (murmur3 finaliser). */
function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** Hashes a list of non-negative integers (each taken modulo 2^53 as two 32-bit halves). */
export function hash32(...parts: number[]): number {
  let h = 0x9747b28c;
  for (const p of parts) {
    const lo = p >>> 0;
    const hi = Math.floor(p / 4294967296) >>> 0;
    h = fmix32((h ^ lo) + 0x9e3779b9);
    h = fmix32((h ^ hi) + 0x7f4a7c15);
  }
  return h;
}

function hashString(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

/** Per-pixel noise in [-1, 1), a hash of the position and a seed. */
export function pixelNoise(x: number, y: number, seed: number): number {
  let h = Math.imul(x, 0x27d4eb2d) ^ Math.imul(y, 0x165667b1) ^ seed;
  h = Math.imul(h ^ (h >>> 15), 0x2c1b3c6d);
  h = Math.imul(h ^ (h >>> 12), 0x297a2d39);
  h ^= h >>> 15;
  return ((h >>> 0) & 0xffff) / 32768 - 1;
}

// ---------------------------------------------------------------------------------------------
// Small helpers.

export type RGB = [number, number, number];

const clamp255 = (v: number): number => (v < 0 ? 0 : v > 255 ? 255 : Math.round(v));
const smoothstep = (a: number, b: number, x: number): number => {
  const t = Math.min(1, Math.max(0, (x - a) / (b - a)));
  return t * t * (3 - 2 * t);
};
const lerp = (a: number, b: number, t: number): number => a + (b - a) * t;
const range = (rng: Random, lo: number, hi: number): number => lo + (hi - lo) * rng.nextFloat();

/** A saturated-ish product colour from a hue wheel. */
function hueColor(h: number, s: number, v: number): RGB {
  const i = Math.floor(h * 6) % 6;
  const f = h * 6 - Math.floor(h * 6);
  const p = v * (1 - s);
  const q = v * (1 - f * s);
  const t = v * (1 - (1 - f) * s);
  const c = [
    [v, t, p],
    [q, v, p],
    [p, v, t],
    [p, q, v],
    [t, p, v],
    [v, p, q],
  ][i]!;
  return [c[0]! * 255, c[1]! * 255, c[2]! * 255];
}

// ---------------------------------------------------------------------------------------------
// Product design: fixed per (kind, goods id, design seed), independent of the image.

/** Which part of the product a pixel belongs to (stored per pixel while rendering). */
const PART_NONE = 0;
const PART_CAP = 1;
const PART_NECK = 2;
const PART_BODY = 3;
const PART_TOP = 4; // can rim, box top face, pack lid, pouch seal

interface Band {
  t0: number;
  t1: number;
  color: RGB;
}
interface GlyphRow {
  t0: number;
  t1: number;
  /** Pairs [u0, u1, heightFraction] of glyph blocks. */
  glyphs: number[];
}
interface Design {
  kind: ProductKind;
  heightFrac: number;
  aspect: number;
  body: RGB;
  cap: RGB;
  top: RGB;
  text: RGB;
  bands: Band[];
  glyphRows: GlyphRow[];
  logo: { u: number; t: number; ru: number; rt: number; color: RGB };
}

const KIND_SHAPE: Record<ProductKind, { heightFrac: number; aspect: number }> = {
  bottle: { heightFrac: 0.7, aspect: 0.3 },
  jar: { heightFrac: 0.48, aspect: 0.7 },
  can: { heightFrac: 0.5, aspect: 0.52 },
  box: { heightFrac: 0.58, aspect: 0.75 },
  pack: { heightFrac: 0.5, aspect: 0.58 },
  pouch: { heightFrac: 0.6, aspect: 0.68 },
};

/** t range of the labelled body per kind (below caps, necks and lids). */
function bodyRange(kind: ProductKind): [number, number] {
  switch (kind) {
    case 'bottle':
      return [0.36, 0.94];
    case 'jar':
      return [0.28, 0.93];
    case 'can':
      return [0.1, 0.93];
    case 'box':
      return [0.1, 0.96];
    case 'pack':
      return [0.27, 0.96];
    case 'pouch':
      return [0.14, 0.95];
  }
}

function makeDesign(kind: ProductKind, goodsId: string, designSeed: number): Design {
  const rng = new Random(hash32(hashString(kind), hashString(goodsId), designSeed));
  const shape = KIND_SHAPE[kind];
  const hue = rng.nextFloat();
  const body = hueColor(hue, range(rng, 0.45, 0.85), range(rng, 0.55, 0.9));
  const accent = hueColor((hue + range(rng, 0.3, 0.7)) % 1, range(rng, 0.5, 0.9), range(rng, 0.6, 0.95));
  const paper: RGB = [range(rng, 225, 250), range(rng, 225, 250), range(rng, 220, 245)];
  const cap = hueColor(rng.nextFloat(), range(rng, 0.3, 0.9), range(rng, 0.3, 0.9));
  const top: RGB = kind === 'can' ? [196, 198, 202] : kind === 'box' || kind === 'pack' ? [paper[0] - 10, paper[1] - 10, paper[2] - 12] : [body[0] * 0.9 + 20, body[1] * 0.9 + 20, body[2] * 0.9 + 20];
  const darkText = rng.nextFloat() < 0.5;
  const [b0, b1] = bodyRange(kind);
  const span = b1 - b0;
  // A label area with one to three bands in paper and accent colours.
  const bands: Band[] = [];
  const labelT0 = b0 + span * range(rng, 0.08, 0.22);
  const labelT1 = b1 - span * range(rng, 0.08, 0.2);
  const label = rng.nextFloat() < 0.5 ? paper : accent;
  bands.push({ t0: labelT0, t1: labelT1, color: label });
  // Text contrasts with the label: dark on light labels, paper-white (or dark, by design) on others.
  const labelLuma = 0.299 * label[0] + 0.587 * label[1] + 0.114 * label[2];
  const text: RGB = labelLuma > 150 || darkText ? [30, 30, 38] : [paper[0], paper[1], paper[2]];
  const stripes = rng.nextInt(3);
  for (let i = 0; i < stripes; i++) {
    const c = labelT0 + (labelT1 - labelT0) * range(rng, 0.1, 0.9);
    const h = span * range(rng, 0.015, 0.05);
    bands.push({ t0: c - h / 2, t1: c + h / 2, color: i % 2 === 0 ? accent : body });
  }
  // Rows of text-like glyph blocks inside the label.
  const glyphRows: GlyphRow[] = [];
  const rows = 2 + rng.nextInt(3);
  for (let r = 0; r < rows; r++) {
    const rowH = span * range(rng, 0.025, 0.05);
    const t0 = labelT0 + (labelT1 - labelT0) * (0.5 + (r + 0.2) / (rows + 1) / 2) - rowH / 2;
    const glyphs: number[] = [];
    let u = range(rng, 0.18, 0.3);
    const uEnd = 1 - range(rng, 0.18, 0.3);
    while (u < uEnd) {
      const w = range(rng, 0.015, 0.045);
      if (rng.nextFloat() < 0.15) {
        u += w; // a word gap
        continue;
      }
      glyphs.push(u, Math.min(uEnd, u + w), range(rng, 0.55, 1));
      u += w + range(rng, 0.008, 0.015);
    }
    glyphRows.push({ t0, t1: t0 + rowH, glyphs });
  }
  const logo = {
    u: range(rng, 0.35, 0.65),
    t: labelT0 + (labelT1 - labelT0) * range(rng, 0.18, 0.3),
    ru: range(rng, 0.12, 0.22),
    rt: span * range(rng, 0.05, 0.09),
    color: hueColor(rng.nextFloat(), 0.8, 0.75),
  };
  return {
    kind,
    heightFrac: shape.heightFrac * range(rng, 0.93, 1.07),
    aspect: shape.aspect * range(rng, 0.9, 1.1),
    body,
    cap,
    top,
    text,
    bands,
    glyphRows,
    logo,
  };
}

/** Half width (fraction of the full half width) and part at height t ∈ [0, 1) from the top. */
function profile(kind: ProductKind, t: number): { half: number; part: number } {
  switch (kind) {
    case 'bottle': {
      if (t < 0.075) return { half: t > 0.062 ? 0.33 : 0.3, part: PART_CAP };
      if (t < 0.3) return { half: 0.27 + 0.73 * smoothstep(0.14, 0.3, t), part: PART_NECK };
      const r = t > 0.97 ? 1 - ((t - 0.97) / 0.03) ** 2 * 0.1 : 1;
      return { half: r, part: PART_BODY };
    }
    case 'jar': {
      if (t < 0.15) return { half: 0.88, part: PART_CAP };
      if (t < 0.2) return { half: 0.8, part: PART_NECK };
      const r = t < 0.27 ? 0.8 + 0.2 * smoothstep(0.2, 0.27, t) : t > 0.96 ? 1 - ((t - 0.96) / 0.04) ** 2 * 0.12 : 1;
      return { half: r, part: PART_BODY };
    }
    case 'can': {
      if (t < 0.03) return { half: 0.88, part: PART_TOP };
      if (t < 0.08) return { half: 0.88 + 0.12 * smoothstep(0.03, 0.08, t), part: PART_TOP };
      if (t > 0.95) return { half: 1 - 0.1 * smoothstep(0.95, 1, t), part: PART_TOP };
      return { half: 1, part: PART_BODY };
    }
    case 'box':
      return { half: 1, part: t < 0.05 ? PART_TOP : PART_BODY };
    case 'pack':
      return { half: 1, part: t < 0.22 ? PART_TOP : PART_BODY };
    case 'pouch': {
      if (t < 0.09) return { half: 0.9, part: PART_TOP };
      return { half: 0.86 + 0.14 * Math.sin(Math.PI * Math.min(1, (t - 0.09) / 0.91)), part: PART_BODY };
    }
  }
}

/** Brightness across the product (u ∈ [0,1] left to right): cylinders, flat faces, a soft pouch. */
function shadeTable(kind: ProductKind): Float32Array {
  const table = new Float32Array(257);
  for (let i = 0; i <= 256; i++) {
    const u = i / 256;
    let s: number;
    if (kind === 'bottle' || kind === 'jar' || kind === 'can') {
      s = 0.7 + 0.38 * Math.pow(Math.sin(Math.PI * u), 0.6);
      const d = Math.abs(u - 0.3);
      if (d < 0.05) s += 0.22 * (1 - d / 0.05); // specular highlight
    } else if (kind === 'pouch') {
      s = 0.82 + 0.22 * Math.sin(Math.PI * u);
    } else {
      s = u < 0.04 ? 0.8 : 0.94 + 0.08 * u; // darker edge where the side face turns away
    }
    table[i] = s;
  }
  return table;
}

// ---------------------------------------------------------------------------------------------
// The canvas and the scene of one product.

export interface RenderedProduct {
  /** Interleaved RGB, width × height × 3. */
  rgb: Uint8Array;
  /** 0/1 per pixel: 1 where the defect changed the image (all 0 without a defect). */
  mask: Uint8Array;
  width: number;
  height: number;
  /** Pixels set in the mask. */
  defectPixels: number;
}

export interface RenderProductOptions {
  width: number;
  height: number;
  /** A defect the kind supports (KIND_DEFECTS); none: a normal product. */
  defect?: string;
  /** Seeds the goods designs together with the goods id (a dataset passes its seed). Default 0. */
  designSeed?: number;
  /** Height of the shelf surface line as a fraction of the height (default 0.86). */
  shelfLine?: number;
  /**
   * Column light factors of a surrounding scene (length = width). When given, the image's own
   * lighting and vertical jitter are not applied (still drawn, so the generator advances the
   * same), and the background lines up with the scene around it.
   */
  sceneLight?: Float32Array;
}

interface Scene {
  w: number;
  h: number;
  rgb: Uint8Array;
  part: Uint8Array;
  mask: Uint8Array;
  design: Design;
  shelfY: number;
  /** Per column light factor (brightness and a horizontal gradient). */
  light: Float32Array;
  noiseSeed: number;
  cx: number;
  top: number;
  pw: number;
  ph: number;
  /** Left/right x of the product per row (NaN where the row has no product). */
  left: Float64Array;
  right: Float64Array;
  /** Pixels a defect painted, in first-painted order, with their normal values (3 per pixel). */
  painted: number[];
  paintedBefore: number[];
}

/** Wall, shelf surface and shelf lip colours (unlit). */
export const SHELF_COLORS = {
  wall: [230, 231, 228] as RGB,
  surface: [244, 244, 241] as RGB,
  lip: [212, 213, 210] as RGB,
};

/**
 * Unlit background colour of a row and its brightness factor: the wall, the shelf surface the
 * product stands on (from 4 % of the height above the shelf line to 6 % below) and the shelf lip
 * with its lit front edge. `y` and `shelfY` in pixels of a canvas `h` pixels high.
 */
export function shelfBackground(y: number, h: number, shelfY: number): { c: RGB; f: number } {
  const surfaceTop = shelfY - 0.04 * h;
  const lipTop = shelfY + 0.06 * h;
  if (y < surfaceTop) return { c: SHELF_COLORS.wall, f: 1.02 - 0.04 * (y / h) };
  if (y < lipTop) return { c: SHELF_COLORS.surface, f: 1 };
  return { c: SHELF_COLORS.lip, f: y < lipTop + Math.max(1, 0.006 * h) ? 1.1 : 1 };
}

function backgroundRow(s: Scene, y: number): { c: RGB; f: number } {
  return shelfBackground(y, s.h, s.shelfY);
}

/** Background colour (lit, without noise or shadows) at a pixel; writes into out. */
function backgroundAt(s: Scene, x: number, y: number, out: RGB): void {
  const { c, f } = backgroundRow(s, y);
  const l = s.light[x]! * f;
  out[0] = c[0] * l;
  out[1] = c[1] * l;
  out[2] = c[2] * l;
}

/** Unlit colour of a product row before spans (logo, glyphs) are laid over it. */
function rowBaseColor(d: Design, part: number, t: number): RGB {
  if (part === PART_CAP) return d.cap;
  if (part === PART_TOP) return d.top;
  let c = d.body;
  if (part === PART_BODY) for (const b of d.bands) if (t >= b.t0 && t < b.t1) c = b.color;
  return c;
}

/**
 * Draws the normal product scene: background, shadows, product, noise. Works row by row in a
 * float buffer and writes each row once (a 3000×3000 image renders in a fraction of a second).
 * Consumes a fixed number of draws from rng.
 */
function renderNormal(kind: ProductKind, goodsId: string, rng: Random, o: RenderProductOptions): Scene {
  const w = o.width;
  const h = o.height;
  const design = makeDesign(kind, goodsId, o.designSeed ?? 0);
  // Per-image variation: always the same number of draws, so a defect drawn afterwards leaves
  // the normal part of the image identical to the normal rendering from the same generator state.
  const dx = range(rng, -0.015, 0.015);
  const dy = range(rng, -0.004, 0.004);
  const scale = range(rng, 0.975, 1.025);
  const brightness = range(rng, 0.96, 1.03);
  const gradient = range(rng, -0.05, 0.05);
  const noiseSeed = rng.nextUint32();
  const scene = o.sceneLight;
  if (scene !== undefined && scene.length !== w) throw new RangeError(`renderProduct: sceneLight has ${scene.length} entries for a width of ${w}`);
  const shelfY = Math.round(h * ((o.shelfLine ?? 0.86) + (scene ? 0 : dy)));
  let ph = design.heightFrac * h * scale;
  let pw = ph * design.aspect;
  if (pw > 0.82 * w) {
    ph *= (0.82 * w) / pw;
    pw = 0.82 * w;
  }
  const cx = w * (0.5 + dx);
  const top = shelfY - ph;
  const light = new Float32Array(w);
  for (let x = 0; x < w; x++) light[x] = scene ? scene[x]! : brightness * (1 + gradient * (x / w - 0.5));
  const s: Scene = {
    w,
    h,
    rgb: new Uint8Array(w * h * 3),
    part: new Uint8Array(w * h),
    mask: new Uint8Array(w * h),
    design,
    shelfY,
    light,
    noiseSeed,
    cx,
    top,
    pw,
    ph,
    left: new Float64Array(h).fill(Number.NaN),
    right: new Float64Array(h).fill(Number.NaN),
    painted: [],
    paintedBefore: [],
  };
  const out = new Uint8ClampedArray(s.rgb.buffer, s.rgb.byteOffset, s.rgb.length);
  const row = new Float32Array(w * 3);
  const shade = shadeTable(kind);
  const shRx = pw * 0.62;
  const shRy = Math.max(2, 0.025 * h);
  const shCx = cx + pw * 0.06;
  const castW = pw * 0.12;
  const lineT = kind === 'pack' ? 0.22 : kind === 'box' ? 0.05 : -1;
  const lineY0 = Math.round(top + lineT * ph);
  const lineY1 = lineY0 + Math.max(1, Math.round(0.004 * h));
  const ridges = kind === 'bottle';
  const logo = design.logo;
  for (let y = 0; y < h; y++) {
    // Background.
    const bg = backgroundRow(s, y);
    const [br, bgc, bb] = bg.c;
    for (let x = 0, p = 0; x < w; x++, p += 3) {
      const l = light[x]! * bg.f;
      row[p] = br * l;
      row[p + 1] = bgc * l;
      row[p + 2] = bb * l;
    }
    // Soft contact shadow on the shelf.
    const ey = (y - shelfY) / shRy;
    if (ey > -1 && ey < 1) {
      const xa = Math.max(0, Math.floor(shCx - shRx));
      const xb = Math.min(w, Math.ceil(shCx + shRx));
      for (let x = xa; x < xb; x++) {
        const ex = (x - shCx) / shRx;
        const d = ex * ex + ey * ey;
        if (d >= 1) continue;
        const f = 1 - 0.3 * (1 - d);
        row[3 * x] *= f;
        row[3 * x + 1] *= f;
        row[3 * x + 2] *= f;
      }
    }
    const t = (y + 0.5 - top) / ph;
    if (t >= 0 && t < 1 && y < shelfY) {
      const pr = profile(kind, t);
      const half = (pr.half * pw) / 2;
      // A faint cast shadow on the wall to the right of the product.
      if (t > 0.08) {
        const x0 = cx + half;
        const strength = 0.08 * smoothstep(0.08, 0.3, t);
        for (let x = Math.max(0, Math.floor(x0)); x < Math.min(w, Math.ceil(x0 + castW)); x++) {
          const f = 1 - strength * (1 - (x - x0) / castW);
          row[3 * x] *= f;
          row[3 * x + 1] *= f;
          row[3 * x + 2] *= f;
        }
      }
      // The product span.
      const l = cx - half;
      const r = cx + half;
      s.left[y] = l;
      s.right[y] = r;
      const part = pr.part;
      const base = rowBaseColor(design, part, t);
      const topShade = part === PART_TOP && (kind === 'box' || kind === 'pack') ? 1.05 : 1;
      const lineShade = y >= lineY0 && y < lineY1 ? 0.7 : 1;
      // Logo span and the active glyph row of this row, in u.
      let logoU0 = 2;
      let logoU1 = 2;
      let glyphs: number[] | null = null;
      let glyphRowT0 = 0;
      let glyphRowH = 0;
      if (part === PART_BODY) {
        const lt = (t - logo.t) / logo.rt;
        if (lt > -1 && lt < 1) {
          const hu = logo.ru * Math.sqrt(1 - lt * lt);
          logoU0 = logo.u - hu;
          logoU1 = logo.u + hu;
        }
        for (const g of design.glyphRows) {
          if (t >= g.t0 && t < g.t1) {
            glyphs = g.glyphs;
            glyphRowT0 = g.t0;
            glyphRowH = g.t1 - g.t0;
          }
        }
      }
      const xa = Math.max(0, Math.ceil(l - 0.5));
      const xb = Math.min(w, Math.ceil(r - 0.5));
      const span = r - l;
      let gi = 0;
      for (let x = xa; x < xb; x++) {
        const u = (x + 0.5 - l) / span;
        let c = base;
        if (u >= logoU0 && u < logoU1) c = logo.color;
        if (glyphs !== null) {
          while (gi < glyphs.length && u >= glyphs[gi + 1]!) gi += 3;
          if (gi < glyphs.length && u >= glyphs[gi]! && t >= glyphRowT0 + glyphRowH * (1 - glyphs[gi + 2]!)) c = design.text;
        }
        let f = shade[Math.round(u * 256)]! * light[x]! * topShade * lineShade;
        if (ridges && part === PART_CAP && ((x >> 2) & 3) === 0) f *= 0.85;
        const p = 3 * x;
        row[p] = c[0] * f;
        row[p + 1] = c[1] * f;
        row[p + 2] = c[2] * f;
        s.part[y * w + x] = part;
      }
    }
    // Write the row with sensor noise (luminance, from a hash of the position: no PRNG draws).
    const base = y * w * 3;
    for (let x = 0, p = 0; x < w; x++, p += 3) {
      const n = pixelNoise(x, y, noiseSeed) * 3.5;
      out[base + p] = row[p]! + n;
      out[base + p + 1] = row[p + 1]! + n;
      out[base + p + 2] = row[p + 2]! + n;
    }
  }
  return s;
}

// ---------------------------------------------------------------------------------------------
// Defect painting. Painters write pixels and mark the mask; afterwards every mask pixel is made
// to differ visibly from its normal value, so the mask is exactly the set of changed pixels.

type Painter = (x: number, y: number, old: RGB, out: RGB) => void;

interface Bounds {
  x0: number;
  y0: number;
  x1: number;
  y1: number;
}

function clipBounds(s: Scene, x0: number, y0: number, x1: number, y1: number): Bounds {
  return {
    x0: Math.max(0, Math.floor(x0)),
    y0: Math.max(0, Math.floor(y0)),
    x1: Math.min(s.w, Math.ceil(x1)),
    y1: Math.min(s.h, Math.ceil(y1)),
  };
}

/** Paints every pixel of a bounds for which `inside` holds. */
function paintWhere(s: Scene, b: Bounds, inside: (x: number, y: number) => boolean, paint: Painter): void {
  const old: RGB = [0, 0, 0];
  const out: RGB = [0, 0, 0];
  for (let y = b.y0; y < b.y1; y++) {
    for (let x = b.x0; x < b.x1; x++) {
      if (!inside(x + 0.5, y + 0.5)) continue;
      const i = y * s.w + x;
      const p = i * 3;
      old[0] = s.rgb[p]!;
      old[1] = s.rgb[p + 1]!;
      old[2] = s.rgb[p + 2]!;
      paint(x, y, old, out);
      if (s.mask[i] === 0) {
        s.mask[i] = 1;
        s.painted.push(i);
        s.paintedBefore.push(s.rgb[p]!, s.rgb[p + 1]!, s.rgb[p + 2]!);
      }
      s.rgb[p] = clamp255(out[0]);
      s.rgb[p + 1] = clamp255(out[1]);
      s.rgb[p + 2] = clamp255(out[2]);
    }
  }
}

/** Even-odd point-in-polygon test (points as flat [x0, y0, x1, y1, …]). */
function inPolygon(poly: number[], x: number, y: number): boolean {
  let inside = false;
  const n = poly.length / 2;
  for (let i = 0, j = n - 1; i < n; j = i++) {
    const xi = poly[2 * i]!;
    const yi = poly[2 * i + 1]!;
    const xj = poly[2 * j]!;
    const yj = poly[2 * j + 1]!;
    if (yi > y !== yj > y && x < ((xj - xi) * (y - yi)) / (yj - yi) + xi) inside = !inside;
  }
  return inside;
}

function polygonBounds(s: Scene, poly: number[]): Bounds {
  let x0 = Infinity;
  let y0 = Infinity;
  let x1 = -Infinity;
  let y1 = -Infinity;
  for (let i = 0; i < poly.length; i += 2) {
    x0 = Math.min(x0, poly[i]!);
    x1 = Math.max(x1, poly[i]!);
    y0 = Math.min(y0, poly[i + 1]!);
    y1 = Math.max(y1, poly[i + 1]!);
  }
  return clipBounds(s, x0, y0, x1 + 1, y1 + 1);
}

const isProduct = (s: Scene, x: number, y: number): boolean => s.part[Math.floor(y) * s.w + Math.floor(x)]! !== PART_NONE;

/** Background colour with noise, for pixels where the product is no longer in front. */
function backgroundPainter(s: Scene): Painter {
  return (x, y, _old, out) => {
    backgroundAt(s, x, y, out);
    const n = pixelNoise(x, y, s.noiseSeed) * 3.5;
    out[0] += n;
    out[1] += n;
    out[2] += n;
  };
}

/** A random point on the labelled body, away from its edges. */
function bodyPoint(s: Scene, rng: Random, margin: number): [number, number] {
  const [b0, b1] = bodyRange(s.design.kind);
  const t = range(rng, b0 + (b1 - b0) * margin, b1 - (b1 - b0) * margin);
  const y = s.top + t * s.ph;
  const row = Math.min(s.h - 1, Math.max(0, Math.floor(y)));
  const l = s.left[row]!;
  const r = s.right[row]!;
  const x = lerp(l, r, range(rng, margin, 1 - margin));
  return [x, y];
}

function drawSurfaceDamage(s: Scene, rng: Random, areaTarget: number): void {
  const minSide = Math.min(s.pw, s.ph);
  if (rng.nextFloat() < 0.5) {
    // A dent: an elliptic hollow, dark on the side away from the light, bright on the other.
    const r = Math.min(Math.sqrt(areaTarget / Math.PI), 0.3 * s.pw);
    const rx = r * range(rng, 0.8, 1.2);
    const ry = (r * r) / rx;
    const [cx, cy] = bodyPoint(s, rng, 0.3);
    const ang = range(rng, 0, Math.PI);
    const ca = Math.cos(ang);
    const sa = Math.sin(ang);
    paintWhere(
      s,
      clipBounds(s, cx - r * 1.3, cy - r * 1.3, cx + r * 1.3, cy + r * 1.3),
      (x, y) => {
        if (!isProduct(s, x, y)) return false;
        const u = ((x - cx) * ca + (y - cy) * sa) / rx;
        const v = (-(x - cx) * sa + (y - cy) * ca) / ry;
        return u * u + v * v < 1;
      },
      (x, y, old, out) => {
        x += 0.5;
        y += 0.5;
        const u = ((x - cx) * ca + (y - cy) * sa) / rx;
        const v = (-(x - cx) * sa + (y - cy) * ca) / ry;
        const f = 0.78 + 0.42 * (u * 0.7 - v * 0.7) * Math.sqrt(Math.max(0, 1 - (u * u + v * v) * 0.5));
        const crease = Math.abs(u + v * 0.3) < 0.06 ? 0.7 : 1;
        for (let c = 0; c < 3; c++) out[c] = old[c]! * f * crease;
      },
    );
  } else {
    // Scratches: three to five thick strokes of scraped paint.
    const strokes = 3 + rng.nextInt(3);
    const th = Math.max(2, 0.004 * minSide + 0.0075 * Math.min(s.w, s.h));
    const len = Math.min(0.8 * s.pw, Math.max(8 * th, areaTarget / th / strokes));
    for (let k = 0; k < strokes; k++) {
      const [x0, y0] = bodyPoint(s, rng, 0.2);
      const a = range(rng, -0.6, 0.6) + (rng.nextFloat() < 0.5 ? 0 : Math.PI);
      const l = len * range(rng, 0.7, 1);
      const x1 = x0 + Math.cos(a) * l;
      const y1 = y0 + Math.sin(a) * l;
      const dxs = x1 - x0;
      const dys = y1 - y0;
      const l2 = dxs * dxs + dys * dys || 1;
      paintWhere(
        s,
        clipBounds(s, Math.min(x0, x1) - th, Math.min(y0, y1) - th, Math.max(x0, x1) + th, Math.max(y0, y1) + th),
        (x, y) => {
          if (!isProduct(s, x, y)) return false;
          const t = Math.min(1, Math.max(0, ((x - x0) * dxs + (y - y0) * dys) / l2));
          const ex = x - (x0 + t * dxs);
          const ey = y - (y0 + t * dys);
          return ex * ex + ey * ey <= (th / 2) * (th / 2);
        },
        (x, y, old, out) => {
          const n = pixelNoise(x, y, s.noiseSeed ^ 0x5a5a5a5a) * 12;
          for (let c = 0; c < 3; c++) out[c] = old[c]! * 0.3 + 168 + n;
        },
      );
    }
  }
}

function drawStain(s: Scene, rng: Random, areaTarget: number): void {
  const palette: RGB[] = [
    [112, 78, 40],
    [70, 66, 60],
    [235, 232, 220],
    [150, 120, 30],
  ];
  const color = palette[rng.nextInt(palette.length)]!;
  const r = Math.min(Math.sqrt(areaTarget / Math.PI), 0.28 * s.pw);
  const [cx, cy] = bodyPoint(s, rng, 0.3);
  const blobs: number[] = [];
  const n = 3 + rng.nextInt(3);
  for (let i = 0; i < n; i++) {
    blobs.push(cx + range(rng, -0.5, 0.5) * r, cy + range(rng, -0.5, 0.5) * r, r * range(rng, 0.35, 0.7), r * range(rng, 0.35, 0.7));
  }
  const alpha = range(rng, 0.5, 0.7);
  paintWhere(
    s,
    clipBounds(s, cx - 1.3 * r, cy - 1.3 * r, cx + 1.3 * r, cy + 1.3 * r),
    (x, y) => {
      if (!isProduct(s, x, y)) return false;
      for (let i = 0; i < blobs.length; i += 4) {
        const ex = (x - blobs[i]!) / blobs[i + 2]!;
        const ey = (y - blobs[i + 1]!) / blobs[i + 3]!;
        if (ex * ex + ey * ey < 1) return true;
      }
      return false;
    },
    (x, y, old, out) => {
      const n2 = pixelNoise(x >> 1, y >> 1, s.noiseSeed ^ 0x1234567) * 10;
      for (let c = 0; c < 3; c++) out[c] = old[c]! * (1 - alpha) + color[c]! * alpha + n2;
    },
  );
}

/** Cap geometry of bottles and jars (pixel box of the cap). */
function capBox(s: Scene): { x0: number; x1: number; y0: number; y1: number; neckHalf: number } {
  const kind = s.design.kind;
  const capEnd = kind === 'bottle' ? 0.075 : 0.15;
  const capHalf = ((kind === 'bottle' ? 0.33 : 0.88) * s.pw) / 2;
  const neckHalf = ((kind === 'bottle' ? 0.27 : 0.8) * s.pw) / 2;
  return { x0: s.cx - capHalf, x1: s.cx + capHalf, y0: s.top, y1: s.top + capEnd * s.ph, neckHalf };
}

function neckPainter(s: Scene, capY1: number): Painter {
  const body = s.design.body;
  return (x, y, _old, out) => {
    // The threaded neck finish, in the body colour, with thread lines.
    const period = Math.max(3, Math.round((capY1 - s.top) / 4));
    const thread = Math.floor((capY1 - y) / period) % 2 === 0 && (capY1 - y) % period < period * 0.35 ? 0.7 : 1;
    const u = (x - (s.cx - s.pw / 2)) / s.pw;
    const f = (0.75 + 0.3 * Math.sin(Math.PI * Math.min(1, Math.max(0, u)))) * s.light[x]! * thread * 1.08;
    const n = pixelNoise(x, y, s.noiseSeed) * 3.5;
    for (let c = 0; c < 3; c++) out[c] = body[c]! * f + 12 + n;
  };
}

function drawCapOpen(s: Scene, rng: Random): void {
  const cap = capBox(s);
  const bgPaint = backgroundPainter(s);
  const neckPaint = neckPainter(s, cap.y1);
  // The neck continues up to where the cap started; above the mouth the background shows.
  const mouthY = cap.y1 - (cap.y1 - cap.y0) * range(rng, 0.35, 0.6);
  const mouthRy = Math.max(1.5, cap.neckHalf * 0.22);
  paintWhere(
    s,
    clipBounds(s, cap.x0 - 1, cap.y0 - 1, cap.x1 + 1, cap.y1 + 1),
    (x, y) => s.part[Math.floor(y) * s.w + Math.floor(x)] === PART_CAP,
    (x, y, old, out) => {
      if (Math.abs(x + 0.5 - s.cx) < cap.neckHalf && y + 0.5 >= mouthY) neckPaint(x, y, old, out);
      else bgPaint(x, y, old, out);
    },
  );
  // The open mouth: a dark ellipse with a light rim.
  paintWhere(
    s,
    clipBounds(s, s.cx - cap.neckHalf - 1, mouthY - mouthRy - 1, s.cx + cap.neckHalf + 1, mouthY + mouthRy + 1),
    (x, y) => {
      const ex = (x - s.cx) / cap.neckHalf;
      const ey = (y - mouthY) / mouthRy;
      return ex * ex + ey * ey < 1;
    },
    (x, y, _old, out) => {
      const ex = (x + 0.5 - s.cx) / cap.neckHalf;
      const ey = (y + 0.5 - mouthY) / mouthRy;
      const d = ex * ex + ey * ey;
      const v = d > 0.6 ? 205 : 38 + 20 * d;
      for (let c = 0; c < 3; c++) out[c] = v * s.light[x]!;
    },
  );
}

function drawCapHalfOpen(s: Scene, rng: Random): void {
  const cap = capBox(s);
  const capH = cap.y1 - cap.y0;
  const capW = cap.x1 - cap.x0;
  const lift = capH * range(rng, 0.3, 0.55);
  const angle = range(rng, 0.12, 0.3) * (rng.nextFloat() < 0.5 ? -1 : 1);
  // Pivot at the bottom corner on the side the cap tilts towards.
  const px = angle > 0 ? cap.x1 : cap.x0;
  const py = cap.y1 - lift;
  const ca = Math.cos(angle);
  const sa = Math.sin(angle);
  const corners = [cap.x0, cap.y0, cap.x1, cap.y0, cap.x1, cap.y1, cap.x0, cap.y1];
  const poly: number[] = [];
  for (let i = 0; i < 8; i += 2) {
    const x = corners[i]! - px;
    const y = corners[i + 1]! - lift - py;
    poly.push(px + x * ca - y * sa, py + x * sa + y * ca);
  }
  const bgPaint = backgroundPainter(s);
  const neckPaint = neckPainter(s, cap.y1);
  // Where the cap was: the threaded neck inside the neck width, background outside it.
  paintWhere(
    s,
    clipBounds(s, cap.x0 - 1, cap.y0 - 1, cap.x1 + 1, cap.y1 + 1),
    (x, y) => s.part[Math.floor(y) * s.w + Math.floor(x)] === PART_CAP && !inPolygon(poly, x, y),
    (x, y, old, out) => (Math.abs(x + 0.5 - s.cx) < cap.neckHalf ? neckPaint(x, y, old, out) : bgPaint(x, y, old, out)),
  );
  // The cap in its new place.
  const capColor = s.design.cap;
  paintWhere(
    s,
    polygonBounds(s, poly),
    (x, y) => inPolygon(poly, x, y),
    (x, y, _old, out) => {
      // Position across the tilted cap, for cylinder shading.
      const rx = (x + 0.5 - px) * ca + (y + 0.5 - py) * sa + px;
      const u = Math.min(1, Math.max(0, (rx - cap.x0) / capW));
      const f = (0.68 + 0.34 * Math.sin(Math.PI * u)) * s.light[x]!;
      const n = pixelNoise(x, y, s.noiseSeed) * 3.5;
      for (let c = 0; c < 3; c++) out[c] = capColor[c]! * f + n;
    },
  );
}

function drawDeformation(s: Scene, rng: Random, areaTarget: number): void {
  const kind = s.design.kind;
  const boxy = kind === 'box' || kind === 'pack';
  const [b0, b1] = bodyRange(kind);
  // Boxes get crushed at a top corner, round products dented at the side.
  const t = boxy && rng.nextFloat() < 0.6 ? range(rng, 0.02, 0.12) : range(rng, b0 + (b1 - b0) * 0.25, b1 - (b1 - b0) * 0.15);
  const row = Math.min(s.h - 1, Math.max(0, Math.floor(s.top + t * s.ph)));
  const side = rng.nextFloat() < 0.5 ? -1 : 1;
  const edgeX = side < 0 ? s.left[row]! : s.right[row]!;
  // Part of the ellipse falls outside the silhouette: aim a little larger.
  const r = Math.min(Math.sqrt((1.4 * areaTarget) / Math.PI), 0.35 * s.pw);
  const ry = r * range(rng, 1.0, 1.5);
  const rx = r * range(rng, 0.55, 0.85);
  const cx = edgeX + side * rx * 0.45;
  const cy = s.top + t * s.ph;
  const outerX = rx * 1.6;
  const outerY = ry * 1.3;
  const bgPaint = backgroundPainter(s);
  const freq = range(rng, 5, 9);
  paintWhere(
    s,
    clipBounds(s, cx - outerX, cy - outerY, cx + outerX, cy + outerY),
    (x, y) => {
      if (!isProduct(s, x, y)) return false;
      const ex = (x - cx) / outerX;
      const ey = (y - cy) / outerY;
      return ex * ex + ey * ey < 1;
    },
    (x, y, old, out) => {
      const ex = (x + 0.5 - cx) / rx;
      const ey = (y + 0.5 - cy) / ry;
      if (ex * ex + ey * ey < 1) {
        bgPaint(x, y, old, out); // the edge pushed in: the shelf behind shows
        return;
      }
      // Wrinkles around the dent.
      const a = Math.atan2(y - cy, x - cx);
      const f = 0.62 + 0.3 * Math.abs(Math.sin(a * freq));
      for (let c = 0; c < 3; c++) out[c] = old[c]! * f;
    },
  );
}

function drawOpened(s: Scene, rng: Random, areaTarget: number): void {
  const kind = s.design.kind;
  const yTop = s.top;
  const width = Math.min(0.6 * s.pw, Math.max(0.15 * s.pw, Math.sqrt(areaTarget * range(rng, 1.2, 2.2))));
  const depth = Math.min(0.25 * s.ph, Math.max(0.05 * s.ph, areaTarget / width));
  const uc = range(rng, 0.3, 0.7);
  const rowTop = Math.min(s.h - 1, Math.max(0, Math.ceil(yTop + 0.5)));
  const xl = lerp(s.left[rowTop]!, s.right[rowTop]!, uc) - width / 2;
  const xr = xl + width;
  // The torn hole: from the top edge down to a jagged lower boundary.
  const hole: number[] = [xl, yTop - 1, xr, yTop - 1];
  const teeth = 5 + rng.nextInt(5);
  for (let i = teeth; i >= 0; i--) {
    const x = xl + (width * i) / teeth;
    const d = depth * (i === 0 || i === teeth ? 0.35 : range(rng, 0.55, 1));
    hole.push(x, yTop + d);
  }
  // The flap: torn up and bent outwards above the top edge.
  const side = rng.nextFloat() < 0.5 ? -1 : 1;
  const hinge = side < 0 ? xl : xr;
  const flapH = depth * range(rng, 0.6, 0.9);
  const flap: number[] = [hinge, yTop + 1, hinge - side * width * 0.55, yTop + 1, hinge - side * width * 0.35 + side * flapH * 0.6, yTop - flapH, hinge + side * flapH * 0.5, yTop - flapH * 0.8];
  const inner: RGB = kind === 'pouch' ? [215, 215, 220] : [192, 168, 128];
  const cavity: RGB = [52, 44, 40];
  paintWhere(
    s,
    polygonBounds(s, hole),
    (x, y) => inPolygon(hole, x, y) && isProduct(s, x, y),
    (x, y, _old, out) => {
      const d = (y + 0.5 - yTop) / depth;
      const c = d > 0.75 ? inner : cavity; // the torn cardboard edge catches the light
      const n = pixelNoise(x, y, s.noiseSeed ^ 0x77) * 6;
      for (let k = 0; k < 3; k++) out[k] = c[k]! * s.light[x]! + n;
    },
  );
  paintWhere(
    s,
    polygonBounds(s, flap),
    (x, y) => inPolygon(flap, x, y),
    (x, y, _old, out) => {
      const n = pixelNoise(x, y, s.noiseSeed ^ 0x99) * 5;
      const f = 0.85 + 0.15 * ((y + 0.5 - (yTop - flapH)) / flapH);
      for (let k = 0; k < 3; k++) out[k] = inner[k]! * f * s.light[x]! + n;
    },
  );
}

/** Makes every mask pixel differ from its normal value by at least a visible step. */
function enforceChange(s: Scene): void {
  const { rgb, painted, paintedBefore: before } = s;
  for (let k = 0; k < painted.length; k++) {
    const p = painted[k]! * 3;
    const b = 3 * k;
    const d = Math.abs(rgb[p]! - before[b]!) + Math.abs(rgb[p + 1]! - before[b + 1]!) + Math.abs(rgb[p + 2]! - before[b + 2]!);
    if (d >= 12) continue;
    for (let c = 0; c < 3; c++) {
      const v = before[b + c]!;
      rgb[p + c] = v > 127 ? v - 16 : v + 16;
    }
  }
}

function checkKind(kind: string): asserts kind is ProductKind {
  if (!(PRODUCT_KINDS as readonly string[]).includes(kind)) throw new Error(`unknown product kind '${kind}' (known: ${PRODUCT_KINDS.join(', ')})`);
}

/**
 * Renders one product on a shelf. Draws the per-image variation from `rng` first, then (only with a
 * defect) the defect's parameters, so that the same generator state rendered with and without a
 * defect gives images that differ exactly on the defect mask.
 */
export function renderProduct(kind: ProductKind, goodsId: string, rng: Random, o: RenderProductOptions): RenderedProduct {
  checkKind(kind);
  if (!Number.isInteger(o.width) || !Number.isInteger(o.height) || o.width < 16 || o.height < 16 || o.width > 20000 || o.height > 20000) {
    throw new RangeError(`renderProduct: width and height must be integers in [16, 20000], got ${o.width}×${o.height}`);
  }
  if (o.defect !== undefined && !(KIND_DEFECTS[kind] as readonly string[]).includes(o.defect)) {
    throw new Error(`renderProduct: a ${kind} cannot show defect '${o.defect}' (supported: ${KIND_DEFECTS[kind].join(', ')})`);
  }
  const s = renderNormal(kind, goodsId, rng, o);
  if (o.defect !== undefined) {
    // Most GoodsAD defects cover under 2 % of the image: a log-uniform target in [0.4 %, 3 %].
    const areaTarget = s.w * s.h * Math.exp(range(rng, Math.log(0.004), Math.log(0.03)));
    switch (o.defect as DefectType) {
      case 'surface_damage':
        drawSurfaceDamage(s, rng, areaTarget);
        break;
      case 'surface_anomaly':
        drawStain(s, rng, areaTarget);
        break;
      case 'cap_open':
        drawCapOpen(s, rng);
        break;
      case 'cap_half_open':
        drawCapHalfOpen(s, rng);
        break;
      case 'deformation':
        drawDeformation(s, rng, areaTarget);
        break;
      case 'opened':
        drawOpened(s, rng, areaTarget);
        break;
    }
    enforceChange(s);
  }
  return { rgb: s.rgb, mask: s.mask, width: s.w, height: s.h, defectPixels: s.painted.length };
}

// ---------------------------------------------------------------------------------------------
// The dataset generator.

export interface GenerateGoodsOptions {
  seed: number;
  /** Default: all six GoodsAD categories. */
  categories?: string[];
  /** Goods (product designs) per category, 1–99. Default 2. */
  goodsPerCategory?: number;
  /** Normal training images per goods. Default 10. */
  trainPerGoods?: number;
  /** Normal test images per goods. Default 3. */
  testGoodPerGoods?: number;
  /** Defective test images per goods and per defect type of the category. Default 1. */
  testDefectPerGoods?: number;
  /** Square image side in pixels (GoodsAD: 3000). Default 3000. */
  size?: number;
  /** JPEG quality 1–100. Default 90. */
  jpegQuality?: number;
  /** Called after each image is written. */
  onImage?: (image: GeneratedImage, done: number, total: number) => void;
}

export interface GeneratedImage {
  /** Path relative to the output folder, '/'-separated. */
  file: string;
  category: GoodsCategory;
  goodsId: string;
  split: 'train' | 'test';
  defect: DefectType | null;
  /** Relative path of the mask, null for good images. */
  mask: string | null;
  /** Defect pixels (mask area). */
  defectPixels: number;
}

export interface GeneratedDataset {
  root: string;
  size: number;
  categories: Array<{ name: GoodsCategory; kind: ProductKind; goods: string[]; defects: DefectType[] }>;
  images: GeneratedImage[];
}

function checkCount(name: string, v: number, lo: number, hi: number): number {
  if (!Number.isInteger(v) || v < lo || v > hi) throw new RangeError(`generateGoodsDataset: ${name} must be an integer in [${lo}, ${hi}], got ${String(v)}`);
  return v;
}

/** The goods id of the k-th goods (0-based) of a category: '<category number><k+1, two digits>'. */
export function goodsIdFor(category: GoodsCategory, k: number): string {
  return `${GOODS_CATEGORIES.indexOf(category) + 1}${String(k + 1).padStart(2, '0')}`;
}

/**
 * Seed of the generator of one dataset image: the generator renders image `serial` (1-based) of
 * the k-th goods of a category with renderProduct(kind, goodsId, new Random(imageSeed(…)), …).
 */
export function imageSeed(seed: number, category: GoodsCategory, goodsIndex: number, serial: number): number {
  return hash32(seed, GOODS_CATEGORIES.indexOf(category), goodsIndex, serial);
}

/** Encodes an RGB render as JPEG. */
export function encodeJpeg(rgb: Uint8Array, width: number, height: number, quality: number): Promise<Buffer> {
  return sharp(rgb, { raw: { width, height, channels: 3 } }).jpeg({ quality }).toBuffer();
}

/** Encodes a 0/1 mask as an 8-bit grey PNG with values 0 and 255. */
export function encodeMaskPng(mask: Uint8Array, width: number, height: number): Promise<Buffer> {
  const grey = new Uint8Array(mask.length);
  for (let i = 0; i < mask.length; i++) grey[i] = mask[i] ? 255 : 0;
  return sharp(grey, { raw: { width, height, channels: 1 } }).toColourspace('b-w').png({ compressionLevel: 6 }).toBuffer();
}

/**
 * Writes a synthetic GoodsAD-layout dataset under outDir and returns what it wrote. Every image has
 * its own generator, seeded from (seed, category, goods, serial), so the files do not depend on the
 * order of generation. Serials run per goods id across train, test/good and the defect folders, so
 * a name is unique within its category.
 */
export async function generateGoodsDataset(outDir: string, o: GenerateGoodsOptions): Promise<GeneratedDataset> {
  const seed = validateSeed(o.seed, 'generateGoodsDataset: seed');
  const categories = (o.categories ?? [...GOODS_CATEGORIES]).map((c) => {
    if (!(GOODS_CATEGORIES as readonly string[]).includes(c)) throw new Error(`generateGoodsDataset: unknown category '${c}' (known: ${GOODS_CATEGORIES.join(', ')})`);
    return c as GoodsCategory;
  });
  if (categories.length === 0) throw new Error('generateGoodsDataset: no categories');
  const goodsPer = checkCount('goodsPerCategory', o.goodsPerCategory ?? 2, 1, 99);
  const trainPer = checkCount('trainPerGoods', o.trainPerGoods ?? 10, 1, 999);
  const testGoodPer = checkCount('testGoodPerGoods', o.testGoodPerGoods ?? 3, 0, 999);
  const defectPer = checkCount('testDefectPerGoods', o.testDefectPerGoods ?? 1, 0, 999);
  const size = checkCount('size', o.size ?? 3000, 32, 12000);
  const quality = checkCount('jpegQuality', o.jpegQuality ?? 90, 1, 100);

  interface Job {
    category: GoodsCategory;
    goodsIndex: number;
    goodsId: string;
    serial: number;
    split: 'train' | 'test';
    defect: DefectType | null;
  }
  const jobs: Job[] = [];
  const summary: GeneratedDataset['categories'] = [];
  for (const category of categories) {
    const defects = [...CATEGORY_DEFECTS[category]];
    const goods: string[] = [];
    const perGoods = trainPer + testGoodPer + defectPer * defects.length;
    if (perGoods > 999) throw new RangeError(`generateGoodsDataset: ${perGoods} images per goods id do not fit a 3-digit serial (at most 999)`);
    for (let k = 0; k < goodsPer; k++) {
      const goodsId = goodsIdFor(category, k);
      goods.push(goodsId);
      let serial = 1;
      const add = (split: 'train' | 'test', defect: DefectType | null) => jobs.push({ category, goodsIndex: k, goodsId, serial: serial++, split, defect });
      for (let i = 0; i < trainPer; i++) add('train', null);
      for (let i = 0; i < testGoodPer; i++) add('test', null);
      for (const d of defects) for (let i = 0; i < defectPer; i++) add('test', d);
    }
    summary.push({ name: category, kind: CATEGORY_KIND[category], goods, defects });
  }

  const images: GeneratedImage[] = [];
  const madeDirs = new Set<string>();
  const ensureDir = async (dir: string) => {
    if (madeDirs.has(dir)) return;
    await mkdir(join(outDir, dir), { recursive: true });
    madeDirs.add(dir);
  };
  // Rendering is synchronous; encoding and writing overlap with the next render (two in flight).
  let pending: Promise<void> = Promise.resolve();
  let done = 0;
  for (const job of jobs) {
    const name = `${job.goodsId}${String(job.serial).padStart(3, '0')}`;
    const folder = job.defect ?? 'good';
    const rng = new Random(imageSeed(seed, job.category, job.goodsIndex, job.serial));
    const r = renderProduct(CATEGORY_KIND[job.category], job.goodsId, rng, { width: size, height: size, defect: job.defect ?? undefined, designSeed: seed });
    const image: GeneratedImage = {
      file: `${job.category}/${job.split}/${folder}/${name}.jpg`,
      category: job.category,
      goodsId: job.goodsId,
      split: job.split,
      defect: job.defect,
      mask: job.defect === null ? null : `${job.category}/ground_truth/${job.defect}/${name}_mask.png`,
      defectPixels: r.defectPixels,
    };
    images.push(image);
    const write = async () => {
      await ensureDir(`${job.category}/${job.split}/${folder}`);
      await writeFile(join(outDir, image.file), await encodeJpeg(r.rgb, size, size, quality));
      if (image.mask !== null) {
        await ensureDir(`${job.category}/ground_truth/${folder}`);
        await writeFile(join(outDir, image.mask), await encodeMaskPng(r.mask, size, size));
      }
      done++;
      o.onImage?.(image, done, jobs.length);
    };
    const previous = pending;
    const current = write();
    current.catch(() => undefined); // observed below; avoids an unhandled rejection meanwhile
    await previous;
    pending = current;
  }
  await pending;
  return { root: outDir, size, categories: summary, images };
}
