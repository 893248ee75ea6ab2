/**
 * A simulated shelf camera for the demo (`npm start` with no config): a row of products on a white
 * shelf, seen by a fixed camera. Frame i varies a little (lighting over the whole shelf, each
 * product's position and sensor noise); defects can be made to appear on chosen slots, and the
 * scene returns the exact mask of each one in slot coordinates.
 *
 * Every frame is a pure function of (seed, frame index, defects): the same call gives the same
 * bytes, and a frame with defects differs from the normal frame of the same index only inside the
 * defect masks (before JPEG encoding; after it, only in the 8×8/16×16 blocks that touch them).
 */
import sharp from 'sharp';
import { Random, validateSeed } from '../models/random.js';
import type { Box } from './types.js';
import {
  CATEGORY_DEFECTS,
  CATEGORY_KIND,
  encodeJpeg,
  goodsIdFor,
  hash32,
  KIND_DEFECTS,
  pixelNoise,
  renderProduct,
  shelfBackground,
  type DefectType,
  type GoodsCategory,
  type ProductKind,
} from './synthetic-goods.js';

export interface ShelfSceneOptions {
  seed: number;
  /** Frame size in pixels. Default 1280 × 720. */
  width?: number;
  height?: number;
  /** Products in a row, 1–12. Default 4. */
  slots?: number;
  /** JPEG quality of the frames, 1–100. Default 85. */
  jpegQuality?: number;
}

export interface ShelfSlot {
  index: number;
  /** Stable slot id for planograms and topics: 'slot-1', 'slot-2', … */
  id: string;
  /** The slot's product region in frame coordinates. */
  box: Box;
  category: GoodsCategory;
  kind: ProductKind;
  goodsId: string;
  /** Defects this product can show (the dataset's defects of its category). */
  defects: readonly DefectType[];
}

export interface SlotDefect {
  slot: number;
  defect: string;
}

export interface RenderedFrame {
  /** Interleaved RGB, width × height × 3. */
  rgb: Uint8Array;
  width: number;
  height: number;
  /** Per defective slot: a 0/1 mask of box.width × box.height (slot coordinates, row-major). */
  masks: Map<number, Uint8Array>;
}

/** Categories placed along the shelf, cycling: a mix of silhouettes in the first four slots. */
const SLOT_CATEGORIES: readonly GoodsCategory[] = ['drink_bottle', 'drink_can', 'food_box', 'food_package', 'food_bottle', 'cigarette_box'];

/** Streams of frame indices: live frames and training frames never share a generator state. */
const LIVE = 0;
const TRAINING = 1;

export class ShelfScene {
  readonly seed: number;
  readonly width: number;
  readonly height: number;
  readonly jpegQuality: number;
  private readonly slotList: ShelfSlot[];
  /** Shelf line (top of the shelf surface the products stand on) in frame rows. */
  private readonly shelfY: number;
  private readonly slotTop: number;
  private readonly slotHeight: number;
  /** Fraction of the slot height at which the shelf line lies (passed to renderProduct). */
  private readonly shelfLine = 0.86;

  constructor(o: ShelfSceneOptions) {
    this.seed = validateSeed(o.seed, 'ShelfScene: seed');
    this.width = o.width ?? 1280;
    this.height = o.height ?? 720;
    const slots = o.slots ?? 4;
    this.jpegQuality = o.jpegQuality ?? 85;
    if (!Number.isInteger(this.width) || !Number.isInteger(this.height) || this.width < 64 || this.height < 64 || this.width > 8192 || this.height > 8192) {
      throw new RangeError(`ShelfScene: width and height must be integers in [64, 8192], got ${this.width}×${this.height}`);
    }
    if (!Number.isInteger(slots) || slots < 1 || slots > 12) throw new RangeError(`ShelfScene: slots must be an integer in [1, 12], got ${String(slots)}`);
    if (!Number.isInteger(this.jpegQuality) || this.jpegQuality < 1 || this.jpegQuality > 100) {
      throw new RangeError(`ShelfScene: jpegQuality must be an integer in [1, 100], got ${String(this.jpegQuality)}`);
    }
    const margin = Math.round(this.width * 0.03);
    const slotWidth = Math.floor((this.width - 2 * margin) / slots);
    if (slotWidth < 24) throw new RangeError(`ShelfScene: ${slots} slots leave ${slotWidth} px per slot in a ${this.width} px wide frame (need at least 24)`);
    this.slotTop = Math.round(this.height * 0.04);
    this.slotHeight = Math.round(this.height * 0.82);
    this.shelfY = this.slotTop + Math.round(this.slotHeight * this.shelfLine);
    this.slotList = [];
    const perCategory = new Map<GoodsCategory, number>();
    for (let k = 0; k < slots; k++) {
      const category = SLOT_CATEGORIES[k % SLOT_CATEGORIES.length]!;
      const n = perCategory.get(category) ?? 0;
      perCategory.set(category, n + 1);
      this.slotList.push({
        index: k,
        id: `slot-${k + 1}`,
        box: { x: margin + k * slotWidth, y: this.slotTop, width: slotWidth, height: this.slotHeight },
        category,
        kind: CATEGORY_KIND[category],
        goodsId: goodsIdFor(category, n),
        defects: CATEGORY_DEFECTS[category],
      });
    }
  }

  /** The product slots, left to right. */
  slots(): ShelfSlot[] {
    return this.slotList.map((s) => ({ ...s, box: { ...s.box } }));
  }

  /** Frame coordinates of each product slot, left to right. */
  slotBoxes(): Box[] {
    return this.slotList.map((s) => ({ ...s.box }));
  }

  /** Renders frame i of the live stream with the given defects (raw RGB and slot masks). */
  renderFrame(i: number, defects: readonly SlotDefect[] = []): RenderedFrame {
    return this.render(LIVE, i, defects);
  }

  /** JPEG of the normal shelf at time i. */
  async normalFrame(i: number): Promise<Buffer> {
    return (await this.frame(i, [])).jpeg;
  }

  /** JPEG of the shelf at time i with defects on the given slots, and each defect's mask. */
  async frame(i: number, defects: readonly SlotDefect[]): Promise<{ jpeg: Buffer; masks: Map<number, Uint8Array> }> {
    const f = this.render(LIVE, i, defects);
    return { jpeg: await encodeJpeg(f.rgb, f.width, f.height, this.jpegQuality), masks: f.masks };
  }

  /** n normal JPEG frames for fitting, from a stream separate from the live frames. */
  async trainingFrames(n: number): Promise<Buffer[]> {
    checkCount(n);
    const out: Buffer[] = [];
    for (let i = 0; i < n; i++) {
      const f = this.render(TRAINING, i, []);
      out.push(await encodeJpeg(f.rgb, f.width, f.height, this.jpegQuality));
    }
    return out;
  }

  /**
   * Normal crops per slot for fitting one model per product: each training frame is encoded as
   * the camera would send it, decoded, and every slot box cut out as a lossless PNG.
   */
  async trainingCrops(n: number): Promise<Map<number, Buffer[]>> {
    const crops = new Map<number, Buffer[]>(this.slotList.map((s) => [s.index, []]));
    for (const jpeg of await this.trainingFrames(n)) {
      const { data, info } = await sharp(jpeg).raw().toBuffer({ resolveWithObject: true });
      for (const s of this.slotList) {
        const png = await sharp(data, { raw: { width: info.width, height: info.height, channels: info.channels } })
          .extract({ left: s.box.x, top: s.box.y, width: s.box.width, height: s.box.height })
          .png()
          .toBuffer();
        crops.get(s.index)!.push(png);
      }
    }
    return crops;
  }

  private checkDefects(defects: readonly SlotDefect[]): Map<number, string> {
    const bySlot = new Map<number, string>();
    for (const d of defects) {
      const slot = this.slotList[d.slot];
      if (!Number.isInteger(d.slot) || slot === undefined) throw new RangeError(`ShelfScene: no slot ${String(d.slot)} (slots 0–${this.slotList.length - 1})`);
      if (bySlot.has(d.slot)) throw new Error(`ShelfScene: slot ${d.slot} is given two defects (${bySlot.get(d.slot)} and ${d.defect})`);
      if (!(KIND_DEFECTS[slot.kind] as readonly string[]).includes(d.defect)) {
        throw new Error(`ShelfScene: slot ${d.slot} (${slot.category}, a ${slot.kind}) cannot show '${d.defect}' (supported: ${KIND_DEFECTS[slot.kind].join(', ')})`);
      }
      bySlot.set(d.slot, d.defect);
    }
    return bySlot;
  }

  private render(stream: number, i: number, defects: readonly SlotDefect[]): RenderedFrame {
    if (!Number.isSafeInteger(i) || i < 0) throw new RangeError(`ShelfScene: frame index must be a non-negative integer, got ${String(i)}`);
    const bySlot = this.checkDefects(defects);
    const { width: w, height: h } = this;
    // Lighting of the whole shelf at this instant: brightness and a left-right gradient.
    const frameRng = new Random(hash32(this.seed, stream, i, 0));
    const brightness = 0.97 + 0.06 * frameRng.nextFloat();
    const gradient = -0.04 + 0.08 * frameRng.nextFloat();
    const noiseSeed = frameRng.nextUint32();
    const light = new Float32Array(w);
    for (let x = 0; x < w; x++) light[x] = brightness * (1 + gradient * (x / w - 0.5));

    const rgb = new Uint8Array(w * h * 3);
    const out = new Uint8ClampedArray(rgb.buffer);
    // The shelf (in slot-canvas units, so that it lines up with each product's own background).
    for (let y = 0; y < h; y++) {
      const bg = shelfBackground(y - this.slotTop, this.slotHeight, this.shelfY - this.slotTop);
      for (let x = 0, p = y * w * 3; x < w; x++, p += 3) {
        const l = light[x]! * bg.f;
        const n = pixelNoise(x, y, noiseSeed) * 3.5;
        out[p] = bg.c[0] * l + n;
        out[p + 1] = bg.c[1] * l + n;
        out[p + 2] = bg.c[2] * l + n;
      }
    }
    this.drawPriceTags(out, light);
    // The products, each rendered into its slot box.
    const masks = new Map<number, Uint8Array>();
    for (const s of this.slotList) {
      const { x: bx, y: by, width: bw, height: bh } = s.box;
      const rng = new Random(hash32(this.seed, stream, i, s.index + 1));
      const defect = bySlot.get(s.index);
      const r = renderProduct(s.kind, s.goodsId, rng, {
        width: bw,
        height: bh,
        defect,
        designSeed: this.seed,
        shelfLine: this.shelfLine,
        sceneLight: light.subarray(bx, bx + bw),
      });
      for (let y = 0; y < bh; y++) rgb.set(r.rgb.subarray(y * bw * 3, (y + 1) * bw * 3), ((by + y) * w + bx) * 3);
      if (defect !== undefined) masks.set(s.index, r.mask);
    }
    return { rgb, width: w, height: h, masks };
  }

  /** Price tags on the shelf lip below each slot box (part of the fixed scene). */
  private drawPriceTags(out: Uint8ClampedArray, light: Float32Array): void {
    const w = this.width;
    const lipTop = this.slotTop + this.slotHeight + Math.max(2, Math.round(0.01 * this.height));
    const tagH = Math.max(4, Math.round(this.height * 0.045));
    for (const s of this.slotList) {
      const tagW = Math.max(8, Math.round(s.box.width * 0.32));
      const x0 = s.box.x + Math.round((s.box.width - tagW) / 2);
      const tagRng = new Random(hash32(this.seed, 7, s.index));
      const digits: number[] = [];
      for (let d = 0; d < 4; d++) digits.push(tagRng.nextInt(3));
      for (let y = lipTop; y < Math.min(this.height, lipTop + tagH); y++) {
        for (let x = x0; x < x0 + tagW; x++) {
          const p = (y * w + x) * 3;
          // White tag with a yellow band and four dark price "digits".
          const v = (y - lipTop) / tagH;
          const u = (x - x0) / tagW;
          let c: [number, number, number] = v < 0.25 ? [238, 200, 40] : [250, 250, 248];
          const slotDigit = Math.floor((u - 0.45) / 0.12);
          if (v > 0.4 && v < 0.85 && slotDigit >= 0 && slotDigit < 4 && (u - 0.45) % 0.12 < 0.09 - 0.02 * digits[slotDigit]!) c = [35, 35, 40];
          out[p] = c[0] * light[x]!;
          out[p + 1] = c[1] * light[x]!;
          out[p + 2] = c[2] * light[x]!;
        }
      }
    }
  }
}

function checkCount(n: number): void {
  if (!Number.isInteger(n) || n < 1) throw new RangeError(`ShelfScene: the number of training frames must be a positive integer, got ${String(n)}`);
}
