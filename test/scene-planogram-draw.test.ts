/**
 * `shelfwatch planogram draw`: the output path may not be one of its inputs, and every slot's
 * label stays inside the picture (a slot by the right edge, one outside the frame).
 */
import test from 'ava';
import { link, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { runPlanogramDraw } from '../agent/commands/planogram-draw.js';

let dir: string;
let config: string;
let snapshot: string;

test.before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'shelfwatch-scene-draw-'));
  config = join(dir, 'shelfwatch.yaml');
  // loadConfig does not open model files: the drawing needs none.
  await writeFile(
    config,
    `
agent: { id: a1 }
models: { m: { path: m.onnx } }
cameras:
  - id: cam
    source: { type: replay, dir: frames }
    slots:
      - { id: EDGE, box: [560, 100, 80, 80], model: m, product: SKU-RIGHT-EDGE-123456 }
      - { id: OUT, box: [700, 10, 20, 20], model: m }
`,
  );
  snapshot = join(dir, 'snapshot.png');
  await writeFile(snapshot, await sharp({ create: { width: 640, height: 480, channels: 3, background: '#ffffff' } }).png().toBuffer());
});

test.after.always(() => rm(dir, { recursive: true, force: true }));

test('planogram draw: --out naming the snapshot or the config (also through a hard link) is refused, both left intact', async (t) => {
  const snapshotBytes = await readFile(snapshot);
  const configText = await readFile(config, 'utf8');
  await t.throwsAsync(runPlanogramDraw({ config, camera: 'cam', snapshot, out: snapshot }), {
    message: `--out ${snapshot}: is the --snapshot file; give another path for the PNG`,
  });
  await t.throwsAsync(runPlanogramDraw({ config, camera: 'cam', snapshot, out: config }), {
    message: `--out ${config}: is the --config file; give another path for the PNG`,
  });
  const linked = join(dir, 'linked.png');
  await link(snapshot, linked);
  await t.throwsAsync(runPlanogramDraw({ config, camera: 'cam', snapshot, out: linked }), { message: /is the --snapshot file/ });
  t.true((await readFile(snapshot)).equals(snapshotBytes), 'the snapshot is untouched');
  t.is(await readFile(config, 'utf8'), configText, 'the config is untouched');
});

test('planogram draw: labels of a slot at the right edge and of one outside the frame are drawn inside the picture', async (t) => {
  const out = join(dir, 'labels.png');
  const result = await runPlanogramDraw({ config, camera: 'cam', snapshot, out });
  t.deepEqual(result.slots.map((s) => [s.id, s.status]), [['EDGE', 'ok'], ['OUT', 'unusable']]);
  const { data, info } = await sharp(out).raw().toBuffer({ resolveWithObject: true });
  // Label backgrounds: green (ok, #00c853 at 85 %) and red (unusable, #ff1744 at 85 %) on white.
  let red = 0;
  let greenLeftOfBox = 0;
  for (let y = 0; y < info.height; y++) {
    for (let x = 0; x < info.width; x++) {
      const p = (y * info.width + x) * info.channels;
      const [r, g, b] = [data[p]!, data[p + 1]!, data[p + 2]!];
      if (r > 200 && g < 120 && b < 140) red++;
      if (x < 500 && y < 100 && r < 100 && g > 150 && b < 150) greenLeftOfBox++;
    }
  }
  // Before, the label of OUT sat at x = 639 (one column of it visible) and EDGE's ran off the
  // right edge from x = 560.
  t.true(red > 1000, `red label pixels: ${red}`);
  t.true(greenLeftOfBox > 1000, `green label pixels left of the EDGE box: ${greenLeftOfBox}`);
});
