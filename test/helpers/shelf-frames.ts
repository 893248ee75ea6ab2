/**
 * Test frames made from real images: magnetic_tile pictures laid out in a grid on a white
 * "shelf", one slot per tile, with an optional dark blotch pasted into chosen tiles (a visible
 * defect the model has never seen). Returns the JPEG, the slot boxes and the blotch boxes, all in
 * frame pixels, so tests can check region boxes against where the defect really is.
 */
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import sharp from 'sharp';
import type { Box } from '../../pipelines/types.js';
import { MAGNETIC_TILE } from './fitted-model.js';

export interface TileFrameOptions {
  /** Tiles per row (default: all in one row). */
  columns?: number;
  /** Resize every tile to this square size first (default: native size). */
  tileSize?: number;
  /** Indexes of the tiles that get a blotch. */
  blotch?: readonly number[];
  /** White margin around the grid and between tiles, px (default 16). */
  gap?: number;
  quality?: number;
}

export interface TileFrame {
  jpeg: Buffer;
  width: number;
  height: number;
  /** One box per tile, frame pixels. */
  boxes: Box[];
  /** Bounding box of the blotch per tile index that has one. */
  blotches: Map<number, Box>;
}

/** Normal magnetic_tile images that the test models never saw (train/good from index 200 on). */
export async function unseenTiles(n: number, offset = 0): Promise<string[]> {
  const dir = join(MAGNETIC_TILE, 'train', 'good');
  const files = (await readdir(dir)).filter((f) => f.endsWith('.jpg')).sort();
  return files.slice(200 + offset, 200 + offset + n).map((f) => join(dir, f));
}

/** Where the blotch goes inside a w×h tile: an ellipse centred at (0.4 w, 0.5 h). */
function blotchEllipse(w: number, h: number) {
  const cx = Math.round(w * 0.4);
  const cy = Math.round(h * 0.5);
  const rx = Math.round(w * 0.12);
  const ry = Math.round(h * 0.09);
  return { cx, cy, rx, ry, box: { x: cx - rx, y: cy - ry, width: 2 * rx, height: 2 * ry } };
}

export async function tileFrame(tiles: readonly string[], options: TileFrameOptions = {}): Promise<TileFrame> {
  const gap = options.gap ?? 16;
  const columns = options.columns ?? tiles.length;
  const blotch = new Set(options.blotch ?? []);
  const images = await Promise.all(
    tiles.map(async (file, i) => {
      let img = sharp(file).removeAlpha().toColourspace('srgb');
      if (options.tileSize) img = img.resize(options.tileSize, options.tileSize, { fit: 'fill' });
      const { data, info } = await img.raw().toBuffer({ resolveWithObject: true });
      let pixels = sharp(data, { raw: { width: info.width, height: info.height, channels: info.channels } });
      let blotchBox: Box | undefined;
      if (blotch.has(i)) {
        const e = blotchEllipse(info.width, info.height);
        blotchBox = e.box;
        const svg = `<svg width="${info.width}" height="${info.height}"><ellipse cx="${e.cx}" cy="${e.cy}" rx="${e.rx}" ry="${e.ry}" fill="#101010"/></svg>`;
        pixels = pixels.composite([{ input: Buffer.from(svg) }]);
      }
      return { png: await pixels.png().toBuffer(), width: info.width, height: info.height, blotchBox };
    }),
  );
  const cellW = Math.max(...images.map((i) => i.width));
  const cellH = Math.max(...images.map((i) => i.height));
  const rows = Math.ceil(images.length / columns);
  const width = gap + columns * (cellW + gap);
  const height = gap + rows * (cellH + gap);
  const boxes: Box[] = [];
  const blotches = new Map<number, Box>();
  const composite = images.map((img, i) => {
    const x = gap + (i % columns) * (cellW + gap);
    const y = gap + Math.floor(i / columns) * (cellH + gap);
    boxes.push({ x, y, width: img.width, height: img.height });
    if (img.blotchBox) blotches.set(i, { ...img.blotchBox, x: img.blotchBox.x + x, y: img.blotchBox.y + y });
    return { input: img.png, left: x, top: y };
  });
  const jpeg = await sharp({ create: { width, height, channels: 3, background: '#ffffff' } })
    .composite(composite)
    .jpeg({ quality: options.quality ?? 92 })
    .toBuffer();
  return { jpeg, width, height, boxes, blotches };
}

/** Two boxes overlap (share at least one pixel). */
export function overlaps(a: Box, b: Box): boolean {
  return a.x < b.x + b.width && b.x < a.x + a.width && a.y < b.y + b.height && b.y < a.y + a.height;
}

/** `inner` lies inside `outer`. */
export function inside(inner: Box, outer: Box): boolean {
  return inner.x >= outer.x && inner.y >= outer.y && inner.x + inner.width <= outer.x + outer.width && inner.y + inner.height <= outer.y + outer.height;
}
