/**
 * The planogram cropper: turns a camera's configured slot boxes into Crops of one frame.
 *
 * Box policy (checkSlotBox): a box must have integer coordinates and a positive size. A box that
 * sticks out of the frame is CLIPPED to the frame with a warning as long as at least
 * `minInsideFraction` (default 1/2) of its area is inside — hand-measured boxes often overshoot
 * an edge by a few pixels. A box mostly or entirely outside the frame is REJECTED with a
 * SlotBoxError naming camera, slot, box and frame size: that is a wrong config or a camera whose
 * resolution changed, and clipping would silently scan the wrong thing.
 *
 * Optional refinement (refineBox) tightens a box to the product standing on a white shelf.
 *
 * Boxes are always in the frame's full-resolution pixels. A frame decoded at a reduced scale
 * (shrink-on-load, see frameShrinkLimit) is cropped through pixelBox, and refinement on such a
 * frame maps its result back to full-resolution pixels.
 */
import { labelRegions } from '../models/metrics/regions.js';
import type { Box, Crop, Frame } from './types.js';

/** Decoded pixels, RGB interleaved (a 4th channel, if any, is ignored). Structural on purpose. */
export interface RawLike {
  data: Uint8Array;
  width: number;
  height: number;
  channels: number;
}

export interface FrameSize {
  width: number;
  height: number;
}

const fmtBox = (b: Box) => `[${b.x}, ${b.y}, ${b.width}, ${b.height}]`;

/** A slot box that cannot be used with this frame. */
export class SlotBoxError extends Error {
  constructor(
    readonly camera: string,
    readonly slot: string,
    readonly box: Box,
    readonly frame: FrameSize,
    reason: string,
  ) {
    super(`camera ${camera} slot ${slot}: box ${fmtBox(box)} (x, y, width, height) ${reason} (frame is ${frame.width}×${frame.height})`);
    this.name = 'SlotBoxError';
  }
}

export interface CheckedBox {
  box: Box;
  clipped: boolean;
  /** Set when the box was clipped; meant for a log line. */
  warning?: string;
}

export interface CheckBoxOptions {
  /** Smallest fraction of the box area that must lie inside the frame to clip rather than reject. */
  minInsideFraction?: number;
}

/** Validates (and if needed clips) one slot box against a frame size; see the policy above. */
export function checkSlotBox(
  camera: string,
  slot: string,
  box: Box,
  frame: FrameSize,
  options: CheckBoxOptions = {},
): CheckedBox {
  const minInside = options.minInsideFraction ?? 0.5;
  const fail = (reason: string): never => {
    throw new SlotBoxError(camera, slot, box, frame, reason);
  };
  for (const key of ['x', 'y', 'width', 'height'] as const) {
    if (!Number.isInteger(box[key])) fail(`has a non-integer ${key} (${String(box[key])})`);
  }
  if (box.width <= 0 || box.height <= 0) fail('must have a positive width and height');
  if (!(Number.isInteger(frame.width) && Number.isInteger(frame.height) && frame.width > 0 && frame.height > 0)) {
    throw new RangeError(`checkSlotBox: invalid frame size ${frame.width}×${frame.height}`);
  }
  const x0 = Math.max(0, box.x);
  const y0 = Math.max(0, box.y);
  const x1 = Math.min(frame.width, box.x + box.width);
  const y1 = Math.min(frame.height, box.y + box.height);
  if (x1 <= x0 || y1 <= y0) fail('lies entirely outside the frame');
  const clipped: Box = { x: x0, y: y0, width: x1 - x0, height: y1 - y0 };
  const insideFraction = (clipped.width * clipped.height) / (box.width * box.height);
  if (insideFraction === 1) return { box: clipped, clipped: false };
  const pct = ((1 - insideFraction) * 100).toFixed(1);
  if (insideFraction < minInside) fail(`lies ${pct}% outside the frame`);
  return {
    box: clipped,
    clipped: true,
    warning: `camera ${camera} slot ${slot}: box ${fmtBox(box)} sticks ${pct}% outside the ${frame.width}×${frame.height} frame; clipped to ${fmtBox(clipped)}`,
  };
}

/** One slot of a camera's planogram (mirrors the config's `cameras[].slots[]`, box as a Box). */
export interface SlotSpec {
  id: string;
  box: Box;
  model: string;
  product?: string;
  category?: string;
  /** Tighten the crop to the product against the white shelf (needs the decoded frame). */
  refine?: boolean;
}

/** Converts the config's `[x, y, width, height]` tuple to a Box. */
export function boxFromTuple([x, y, width, height]: readonly [number, number, number, number]): Box {
  return { x, y, width, height };
}

export interface PlanCropsOptions extends CheckBoxOptions {
  /**
   * The decoded frame; required when any slot has `refine: true`. It may be the frame shrunk on
   * load (smaller than `size`, same aspect): refinement then works at its scale.
   */
  raw?: RawLike;
  refine?: RefineOptions;
}

export interface PlannedCrops {
  crops: Crop[];
  /** One line per clipped box. */
  warnings: string[];
}

/**
 * The crops of one frame: every slot box checked against the frame size (throws SlotBoxError
 * for an unusable box) and refined where the slot asks for it.
 */
export function planCrops(
  frame: Pick<Frame, 'id' | 'camera' | 'capturedAt'>,
  size: FrameSize,
  slots: readonly SlotSpec[],
  options: PlanCropsOptions = {},
): PlannedCrops {
  const crops: Crop[] = [];
  const warnings: string[] = [];
  for (const slot of slots) {
    const checked = checkSlotBox(frame.camera, slot.id, slot.box, size, options);
    if (checked.warning) warnings.push(checked.warning);
    let box = checked.box;
    if (slot.refine) {
      if (!options.raw) throw new Error(`camera ${frame.camera} slot ${slot.id}: refine is on but no decoded frame was given to planCrops`);
      const { raw } = options;
      if (raw.width > size.width || raw.height > size.height) {
        throw new Error(`camera ${frame.camera}: decoded frame is ${raw.width}×${raw.height}, larger than the frame size given (${size.width}×${size.height})`);
      }
      const pixels = pixelBox(box, size, raw);
      // On a shrunk frame, refine at its scale; back in full-resolution pixels, stay in the slot box.
      box = pixels === box ? refineBox(raw, box, options.refine) : intersect(pixelBox(refineBox(raw, pixels, options.refine), raw, size), box);
    }
    const crop: Crop = { frame: { id: frame.id, camera: frame.camera, capturedAt: frame.capturedAt }, slot: slot.id, box, model: slot.model };
    if (slot.product !== undefined) crop.product = slot.product;
    if (slot.category !== undefined) crop.category = slot.category;
    crops.push(crop);
  }
  return { crops, warnings };
}

/**
 * `box` (pixels of an image of size `from`) in the pixels of the same image at size `to`: the
 * smallest box of whole pixels that covers it, inside `to`. Returns `box` itself when the sizes
 * are equal.
 */
export function pixelBox(box: Box, from: FrameSize, to: FrameSize): Box {
  if (from.width === to.width && from.height === to.height) return box;
  const sx = to.width / from.width;
  const sy = to.height / from.height;
  const x0 = Math.max(0, Math.floor(box.x * sx));
  const y0 = Math.max(0, Math.floor(box.y * sy));
  const x1 = Math.min(to.width, Math.max(x0 + 1, Math.ceil((box.x + box.width) * sx)));
  const y1 = Math.min(to.height, Math.max(y0 + 1, Math.ceil((box.y + box.height) * sy)));
  return { x: x0, y: y0, width: x1 - x0, height: y1 - y0 };
}

function intersect(a: Box, b: Box): Box {
  const x0 = Math.max(a.x, b.x);
  const y0 = Math.max(a.y, b.y);
  return { x: x0, y: y0, width: Math.max(1, Math.min(a.x + a.width, b.x + b.width) - x0), height: Math.max(1, Math.min(a.y + a.height, b.y + b.height) - y0) };
}

/** refineBox never returns a box narrower or shorter than this fraction of the slot box. */
export const REFINE_MIN_SIZE_FRACTION = 0.25;

/**
 * The largest shrink-on-load factor for a camera's frames that keeps every slot crop at least
 * twice its model's input size on each side (a refined slot counted at the smallest size
 * refinement can make it), so the model input still comes from an antialiased downscale of
 * enough pixels. A box clipped at the frame edge can end up smaller; it still covers the input.
 */
export function frameShrinkLimit(slots: readonly SlotSpec[], inputSize: (model: string) => number): number {
  let limit = Infinity;
  for (const slot of slots) {
    const side = Math.min(slot.box.width, slot.box.height) * (slot.refine ? REFINE_MIN_SIZE_FRACTION : 1);
    limit = Math.min(limit, Math.floor(side / (2 * inputSize(slot.model))));
  }
  return Number.isFinite(limit) ? Math.max(1, limit) : 1;
}

export interface RefineOptions {
  /** A pixel is shelf when its HSV value (max/255) is at least this ... (default 0.70) */
  shelfMinValue?: number;
  /** ... and its HSV saturation ((max−min)/max) at most this (default 0.20). */
  shelfMaxSaturation?: number;
  /** Radius (px) of the square morphological opening that removes specks (default 1; 0 = none). */
  openRadius?: number;
  /** Components smaller than this fraction of the largest one are ignored (default 0.2). */
  minComponentFraction?: number;
  /** Margin added on each side, as a fraction of the found width/height (default 0.04). */
  marginFraction?: number;
  /** The result is never narrower/shorter than this fraction of the original box (default 0.25). */
  minSizeFraction?: number;
}

/**
 * Tightens `box` (frame coordinates, inside `rgb`) to the product in it, assuming a white shelf:
 *   1. foreground = pixels that are NOT (bright and unsaturated);
 *   2. morphological opening (erode, then dilate) removes specks of sensor noise and dust;
 *   3. the bounding box of the largest 8-connected component, together with every component at
 *      least `minComponentFraction` of its size (a product can be split by a white label);
 *   4. plus a margin, clipped to the original box, grown back to `minSizeFraction` of it if smaller.
 * Returns the original box when no foreground is found.
 */
export function refineBox(rgb: RawLike, box: Box, options: RefineOptions = {}): Box {
  const shelfMinValue = options.shelfMinValue ?? 0.7;
  const shelfMaxSaturation = options.shelfMaxSaturation ?? 0.2;
  const openRadius = options.openRadius ?? 1;
  const minComponentFraction = options.minComponentFraction ?? 0.2;
  const marginFraction = options.marginFraction ?? 0.04;
  const minSizeFraction = options.minSizeFraction ?? REFINE_MIN_SIZE_FRACTION;
  if (rgb.channels < 3) throw new RangeError(`refineBox: image needs at least 3 channels, got ${rgb.channels}`);
  if (rgb.data.length < rgb.width * rgb.height * rgb.channels) {
    throw new RangeError(`refineBox: image data has ${rgb.data.length} bytes, expected ${rgb.width}×${rgb.height}×${rgb.channels}`);
  }
  if (box.x < 0 || box.y < 0 || box.width <= 0 || box.height <= 0 || box.x + box.width > rgb.width || box.y + box.height > rgb.height) {
    throw new RangeError(`refineBox: box ${fmtBox(box)} is not inside the ${rgb.width}×${rgb.height} image`);
  }

  const w = box.width;
  const h = box.height;
  const minValue = shelfMinValue * 255;
  let fg: Uint8Array = new Uint8Array(w * h);
  for (let y = 0; y < h; y++) {
    let src = ((box.y + y) * rgb.width + box.x) * rgb.channels;
    for (let x = 0; x < w; x++, src += rgb.channels) {
      const r = rgb.data[src];
      const g = rgb.data[src + 1];
      const b = rgb.data[src + 2];
      const max = Math.max(r, g, b);
      const min = Math.min(r, g, b);
      const shelf = max >= minValue && (max === 0 ? 0 : (max - min) / max) <= shelfMaxSaturation;
      fg[y * w + x] = shelf ? 0 : 1;
    }
  }
  if (openRadius > 0) fg = dilate(erode(fg, w, h, openRadius), w, h, openRadius);

  const { labels, count, sizes } = labelRegions(fg, w, h, 8);
  if (count === 0) return { ...box };
  const largest = Math.max(...sizes);
  const keep = new Uint8Array(count + 1);
  for (let k = 1; k <= count; k++) keep[k] = sizes[k - 1] >= minComponentFraction * largest ? 1 : 0;
  let fx0 = w;
  let fy0 = h;
  let fx1 = -1;
  let fy1 = -1;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      if (!keep[labels[y * w + x]]) continue;
      if (x < fx0) fx0 = x;
      if (x > fx1) fx1 = x;
      if (y < fy0) fy0 = y;
      if (y > fy1) fy1 = y;
    }
  }
  const fw = fx1 - fx0 + 1;
  const fh = fy1 - fy0 + 1;
  const [x0, x1] = growSpan(fx0 - Math.ceil(marginFraction * fw), fx1 + 1 + Math.ceil(marginFraction * fw), w, minSizeFraction);
  const [y0, y1] = growSpan(fy0 - Math.ceil(marginFraction * fh), fy1 + 1 + Math.ceil(marginFraction * fh), h, minSizeFraction);
  return { x: box.x + x0, y: box.y + y0, width: x1 - x0, height: y1 - y0 };
}

/** Clips [a, b) to [0, length) and widens it around its centre to ≥ minFraction·length. */
function growSpan(a: number, b: number, length: number, minFraction: number): [number, number] {
  let lo = Math.max(0, a);
  let hi = Math.min(length, b);
  const min = Math.min(length, Math.ceil(minFraction * length));
  if (hi - lo < min) {
    const centre = (lo + hi) / 2;
    lo = Math.round(centre - min / 2);
    lo = Math.min(Math.max(0, lo), length - min);
    hi = lo + min;
  }
  return [lo, hi];
}

/** Square (2r+1)² min filter, separable; pixels outside the image are ignored. */
function erode(src: Uint8Array, w: number, h: number, r: number): Uint8Array {
  return filter(filter(src, w, h, r, true, 1, 0), w, h, r, false, 1, 0);
}

/** Square (2r+1)² max filter, separable; pixels outside the image are ignored. */
function dilate(src: Uint8Array, w: number, h: number, r: number): Uint8Array {
  return filter(filter(src, w, h, r, true, 0, 1), w, h, r, false, 0, 1);
}

/**
 * One pass of a 1-D min (identity 1, absorbing 0) or max (identity 0, absorbing 1) filter over
 * a binary image, along rows (`horizontal`) or columns.
 */
function filter(src: Uint8Array, w: number, h: number, r: number, horizontal: boolean, identity: number, absorbing: number): Uint8Array {
  const out = new Uint8Array(w * h);
  const lines = horizontal ? h : w;
  const len = horizontal ? w : h;
  const step = horizontal ? 1 : w;
  for (let line = 0; line < lines; line++) {
    const base = horizontal ? line * w : line;
    for (let i = 0; i < len; i++) {
      let v = identity;
      const lo = Math.max(0, i - r);
      const hi = Math.min(len - 1, i + r);
      for (let j = lo; j <= hi; j++) {
        if (src[base + j * step] === absorbing) {
          v = absorbing;
          break;
        }
      }
      out[base + i * step] = v;
    }
  }
  return out;
}
