/**
 * `shelfwatch planogram draw --config <file> --camera <id> --snapshot <img> --out <png>`:
 * draws a camera's slot boxes and ids over a snapshot of that camera, to check a planogram by
 * eye before going live. Boxes are checked exactly as the agent checks them (checkSlotBox):
 * a box that sticks out a little is drawn clipped (orange, dashed), one that cannot be used is
 * listed with the reason (and drawn in red where it overlaps the picture). The snapshot is
 * read upright (EXIF orientation applied), as the agent decodes frames.
 */
import { mkdir, stat } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import sharp from 'sharp';
import { checkSlotBox, SlotBoxError } from '../../pipelines/planogram.js';
import type { Box } from '../../pipelines/types.js';
import { loadConfig } from '../config.js';
import { checkOutputFile, writeFileAtomic } from './output-paths.js';

export interface PlanogramDrawOptions {
  config: string;
  camera: string;
  snapshot: string;
  out: string;
  env?: NodeJS.ProcessEnv;
}

export interface DrawnSlot {
  id: string;
  box: Box;
  status: 'ok' | 'clipped' | 'unusable';
  /** The clipping warning or why the box is unusable. */
  note?: string;
}

export interface PlanogramDrawResult {
  out: string;
  width: number;
  height: number;
  slots: DrawnSlot[];
}

const COLORS = { ok: '#00c853', clipped: '#ff9100', unusable: '#ff1744' } as const;

const escapeXml = (s: string) => s.replace(/[<>&'"]/g, (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', "'": '&apos;', '"': '&quot;' })[c]!);

/** Whether two paths name the same file (the same path, or links to one file). */
async function sameFile(a: string, b: string): Promise<boolean> {
  if (resolve(a) === resolve(b)) return true;
  const [sa, sb] = await Promise.all([stat(a).catch(() => null), stat(b).catch(() => null)]);
  return sa !== null && sb !== null && sa.dev === sb.dev && sa.ino === sb.ino;
}

export async function runPlanogramDraw(o: PlanogramDrawOptions): Promise<PlanogramDrawResult> {
  await checkOutputFile('--out', o.out, 'planogram.png');
  // The PNG would replace the snapshot or the config it was drawn from.
  for (const [label, path] of [['--snapshot', o.snapshot], ['--config', o.config]] as const) {
    if (await sameFile(o.out, path)) throw new Error(`--out ${o.out}: is the ${label} file; give another path for the PNG`);
  }
  const config = await loadConfig(o.config, { env: o.env });
  const camera = config.cameras.find((c) => c.id === o.camera);
  if (!camera) {
    throw new Error(`${o.config}: no camera '${o.camera}' (cameras: ${config.cameras.map((c) => c.id).join(', ') || 'none'})`);
  }
  let width: number;
  let height: number;
  let base: Buffer;
  try {
    const { data, info } = await sharp(o.snapshot).autoOrient().removeAlpha().toColourspace('srgb').raw().toBuffer({ resolveWithObject: true });
    width = info.width;
    height = info.height;
    base = data;
  } catch (err) {
    throw new Error(`snapshot ${o.snapshot}: cannot read it as an image: ${(err as Error).message}`);
  }

  const slots: DrawnSlot[] = camera.slots.map((slot) => {
    try {
      const checked = checkSlotBox(camera.id, slot.id, slot.box, { width, height });
      return { id: slot.id, box: checked.box, status: checked.clipped ? 'clipped' : 'ok', ...(checked.warning ? { note: checked.warning } : {}) };
    } catch (err) {
      if (!(err instanceof SlotBoxError)) throw err;
      return { id: slot.id, box: slot.box, status: 'unusable', note: err.message };
    }
  });

  const stroke = Math.max(2, Math.round(Math.min(width, height) / 300));
  const font = Math.max(12, Math.round(Math.min(width, height) / 40));
  const shapes = slots.map((s, i) => {
    const slot = camera.slots[i]!;
    const color = COLORS[s.status];
    const dash = s.status === 'ok' ? '' : ` stroke-dasharray="${stroke * 4},${stroke * 2}"`;
    const label = `${s.id}${slot.product ? ` · ${slot.product}` : ''}${s.status === 'unusable' ? ' (unusable)' : ''}`;
    // Bold DejaVu Sans averages about 0.7 em per character (capitals and digits more).
    const labelWidth = Math.round(label.length * font * 0.72) + 8;
    // Keep the label inside the picture: at a box by the right edge or outside the frame it shifts left.
    const lx = Math.max(0, Math.min(s.box.x, width - labelWidth));
    const ly = Math.min(Math.max(font + 2, s.box.y - 4 > font ? s.box.y - 4 : s.box.y + font + 2), height - 2);
    return [
      `<rect x="${s.box.x}" y="${s.box.y}" width="${s.box.width}" height="${s.box.height}" fill="none" stroke="${color}" stroke-width="${stroke}"${dash}/>`,
      `<rect x="${lx}" y="${ly - font}" width="${labelWidth}" height="${font + 6}" fill="${color}" fill-opacity="0.85"/>`,
      `<text x="${lx + 4}" y="${ly}" font-family="DejaVu Sans, Arial, sans-serif" font-size="${font}" font-weight="bold" fill="#000">${escapeXml(label)}</text>`,
    ].join('');
  });
  const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}">${shapes.join('')}</svg>`;

  const png = await sharp(base, { raw: { width, height, channels: 3 } })
    .composite([{ input: Buffer.from(svg), top: 0, left: 0 }])
    .png()
    .toBuffer();
  await mkdir(dirname(o.out), { recursive: true });
  await writeFileAtomic(o.out, png);
  return { out: o.out, width, height, slots };
}
