/**
 * The agent's command entry points and its logger: `runAgent` on a replay config (embedded
 * broker) until the replay ends, `config check` (summary, model manifests, topic-level errors),
 * `planogram draw` (boxes over a snapshot; clipped and unusable boxes reported), and the JSON
 * logger's level filter and secret scrubbing.
 */
import test from 'ava';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { runConfigCheck } from '../agent/commands/config-check.js';
import { runPlanogramDraw } from '../agent/commands/planogram-draw.js';
import { runAgent } from '../agent/commands/run.js';
import { Logger } from '../agent/logger.js';
import { fittedModel, magneticTileTrain, sharedAvailable } from './helpers/fitted-model.js';
import { tileFrame, unseenTiles, type TileFrame } from './helpers/shelf-frames.js';

const maybe = sharedAvailable() ? test : test.skip;

let dir: string;
let modelPath: string;
let frame: TileFrame;

test.before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'shelfwatch-commands-'));
  if (!sharedAvailable()) return;
  modelPath = await fittedModel(await magneticTileTrain(40), { name: 'pipeline-test' });
  frame = await tileFrame(await unseenTiles(2), { blotch: [1] });
  await writeFile(join(dir, 'f0.jpg'), frame.jpeg);
  await writeFile(join(dir, 'f1.jpg'), frame.jpeg);
});

test.after.always(() => rm(dir, { recursive: true, force: true }));

function yaml(extra = '', stateDir = './state'): string {
  const [a, b] = frame.boxes;
  return `
agent: { id: box-1, stateDir: ${stateDir} }
mqtt: { embeddedPort: 0 }
models:
  tile: { path: ${JSON.stringify(modelPath)}, threshold: 4 }
inference: { provider: cpu }
metrics: { enabled: false }
logging: { level: warn }
cameras:
  - id: aisle
    source: { type: replay, files: [f0.jpg, f1.jpg], intervalMs: 50 }
    slots:
      - { id: A1, box: [${a!.x}, ${a!.y}, ${a!.width}, ${a!.height}], model: tile, product: SKU-1 }
      - { id: A2, box: [${b!.x}, ${b!.y}, ${b!.width}, ${b!.height}], model: tile }
${extra}`;
}

maybe('runAgent runs a replay config on the embedded broker until the replay ends', async (t) => {
  const file = join(dir, 'run.yaml');
  await writeFile(file, yaml());
  let raised = 0;
  const outcome = await runAgent(file, {
    handleSignals: false,
    agent: { logger: new Logger({ level: 'error', sink: { write: () => undefined } }) },
    onStarted: (agent) => agent.on('event', () => raised++),
  });
  t.is(outcome, 'cameras-ended');
  t.is(raised, 1, 'two anomalous scans of A2 raise one event (raiseAfter 2)');
});

maybe('runAgent stops when its signal aborts', async (t) => {
  const file = join(dir, 'abort.yaml');
  // Its own state dir: tests in a file run concurrently and an outbox is locked per process.
  await writeFile(file, yaml('', './state-abort').replace('intervalMs: 50 }', 'intervalMs: 50, loop: true }'));
  const controller = new AbortController();
  const outcome = runAgent(file, { handleSignals: false, signal: controller.signal, onStarted: () => setTimeout(() => controller.abort(), 300), agent: { logger: new Logger({ level: 'error', sink: { write: () => undefined } }) } });
  t.is(await outcome, 'aborted');
});

maybe('config check: summary with model digests; camera ids that would break topics are errors', async (t) => {
  const good = join(dir, 'good.yaml');
  await writeFile(good, yaml());
  const result = await runConfigCheck(good);
  t.regex(result.text, /^OK /);
  t.regex(result.text, /model files:\n {2}tile: sha256 [0-9a-f]{16}…, mobilenetv2-12-int8 at 224px, threshold 4\.0000 \(config\), 2 slots/);
  t.like(result.models[0], { name: 'tile', thresholdSource: 'config', slots: 2 });

  const bad = join(dir, 'bad.yaml');
  await writeFile(bad, yaml().replace('id: aisle', 'id: status'));
  const err = await t.throwsAsync(runConfigCheck(bad));
  t.regex(err!.message, /cameras\[0\]\.slots\[0\]: camera id "status" is reserved/);
});

maybe('config check: with Home Assistant on, two slots that would share one object id are refused, as the agent would at start', async (t) => {
  const [a] = frame.boxes;
  // camera aisle slot x_A1 and camera aisle_x slot A1 both become object id aisle_x_A1.
  const clash = yaml(`      - { id: x_A1, box: [${a!.x}, ${a!.y}, ${a!.width}, ${a!.height}], model: tile }\n  - id: aisle_x\n    source: { type: replay, files: [f0.jpg], intervalMs: 50 }\n    slots:\n      - { id: A1, box: [${a!.x}, ${a!.y}, ${a!.width}, ${a!.height}], model: tile }\n`);
  const off = join(dir, 'ha-off.yaml');
  await writeFile(off, clash);
  await t.notThrowsAsync(runConfigCheck(off), 'without Home Assistant object ids do not matter');
  const on = join(dir, 'ha-on.yaml');
  await writeFile(on, clash.replace('mqtt: { embeddedPort: 0 }', 'mqtt: { embeddedPort: 0, homeAssistant: { enabled: true } }'));
  const err = await t.throwsAsync(runConfigCheck(on));
  t.regex(err!.message, /mqtt\.homeAssistant: Home Assistant object id aisle_x_A1 is shared by camera aisle slot x_A1 and camera aisle_x slot A1/);
});

maybe('config check: a model file that is not a model is named with its key', async (t) => {
  const notModel = join(dir, 'not-a-model.onnx');
  await writeFile(notModel, 'hello');
  const file = join(dir, 'badmodel.yaml');
  await writeFile(file, yaml().replace(JSON.stringify(modelPath), JSON.stringify(notModel)));
  const err = await t.throwsAsync(runConfigCheck(file));
  t.regex(err!.message, /models\.tile\.path: not a usable shelfwatch model/);
});

maybe('planogram draw: boxes and ids over the snapshot; clipped and unusable boxes reported', async (t) => {
  const file = join(dir, 'draw.yaml');
  const offFrame = `      - { id: A3, box: [${frame.width - 50}, 10, 100, 100], model: tile }\n      - { id: A4, box: [${frame.width + 10}, 0, 20, 20], model: tile }\n`;
  await writeFile(file, yaml(offFrame));
  const out = join(dir, 'out', 'aisle.png');
  const result = await runPlanogramDraw({ config: file, camera: 'aisle', snapshot: join(dir, 'f0.jpg'), out });
  t.deepEqual(result.slots.map((s) => [s.id, s.status]), [['A1', 'ok'], ['A2', 'ok'], ['A3', 'clipped'], ['A4', 'unusable']]);
  t.regex(result.slots[3]!.note!, /camera aisle slot A4: box .* lies entirely outside the frame/);
  const meta = await sharp(out).metadata();
  t.like(meta, { format: 'png', width: frame.width, height: frame.height });
  // The box outline is drawn: the pixel on A1's left edge is green, not the white shelf.
  const a1 = frame.boxes[0]!;
  const { data, info } = await sharp(out).raw().toBuffer({ resolveWithObject: true });
  const p = ((a1.y + Math.round(a1.height / 2)) * info.width + a1.x) * info.channels;
  t.true(data[p + 1]! > 150 && data[p]! < 100, `edge pixel ${data[p]},${data[p + 1]},${data[p + 2]}`);

  await t.throwsAsync(runPlanogramDraw({ config: file, camera: 'nope', snapshot: join(dir, 'f0.jpg'), out }), { message: /no camera 'nope' \(cameras: aisle\)/ });
  await t.throwsAsync(runPlanogramDraw({ config: file, camera: 'aisle', snapshot: file, out }), { message: /snapshot .*draw\.yaml: cannot read it as an image/ });
});

test('logger: JSON lines, level filter, secrets never logged', (t) => {
  const lines: string[] = [];
  const log = new Logger({ level: 'info', sink: { write: (l: string) => lines.push(l) }, secrets: ['hunter2-secret'], fields: { agent: 'a1' }, clock: () => 0 });
  log.debug('hidden');
  log.info('connecting to mqtts://user:hunter2-secret@broker:8883', { password: 'hunter2-secret', headers: { Authorization: 'Bearer xyz' }, note: 'pw is hunter2-secret', n: 3 });
  log.child({ camera: 'c1' }).warn('bad frame', { error: new Error('boom hunter2-secret') });
  t.is(lines.length, 2);
  t.true(lines.every((l) => l.endsWith('\n')));
  const text = lines.join('');
  t.false(text.includes('hunter2-secret'));
  t.false(text.includes('xyz'));
  const first = JSON.parse(lines[0]!);
  t.like(first, { time: '1970-01-01T00:00:00.000Z', level: 'info', agent: 'a1', password: '<redacted>', headers: { Authorization: '<redacted>' }, note: 'pw is <redacted>', n: 3 });
  t.like(JSON.parse(lines[1]!), { level: 'warn', camera: 'c1', error: { name: 'Error', message: 'boom <redacted>' } });
});
