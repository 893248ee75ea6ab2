/**
 * The CLI, run as an operator runs it (a child process), given bad input: each case must exit
 * non-zero, say what is wrong and where (the option, the path), print no stack trace, and leave
 * the file system as it was — no half-written or temp files, an existing output untouched.
 */
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test, { type ExecutionContext } from 'ava';
import sharp from 'sharp';
import { generateGoodsDataset } from '../pipelines/synthetic-goods.js';
import { runCli, type CliRun } from './helpers/cli.js';
import { BACKBONE_PATH, fittedModel, magneticTileTrain, sharedAvailable } from './helpers/fitted-model.js';

const maybe = sharedAvailable() ? test : test.skip;

const cli = runCli;

/** Non-zero exit, no stack trace, and a `shelfwatch:` error line that contains every `needle`. */
function failsClearly(t: ExecutionContext, r: CliRun, ...needles: string[]): void {
  t.not(r.code, 0, `exit code 0; stderr: ${r.stderr}`);
  t.notRegex(r.stderr, /^\s+at /m, 'a stack trace was printed');
  const line = r.stderr.split('\n').find((l) => l.startsWith('shelfwatch: '));
  t.truthy(line, `no 'shelfwatch:' error line in: ${r.stderr}`);
  for (const n of needles) t.true(line!.includes(n), `error line does not name '${n}': ${line}`);
}

async function scratch(t: ExecutionContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'shelfwatch-cli-bad-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

const listing = async (dir: string) => (await readdir(dir)).sort();

maybe('fit --out naming a folder: refused before fitting, nothing written next to it', async (t) => {
  const dir = await scratch(t);
  const out = join(dir, 'model.onnx');
  await mkdir(out);
  const r = await cli(['fit', '--backbone', BACKBONE_PATH, '-o', out, ...(await magneticTileTrain(4))]);
  failsClearly(t, r, '--out', out, 'is a folder');
  t.deepEqual(await listing(dir), ['model.onnx'], 'a temp model file was left behind');
  t.deepEqual(await listing(out), []);
});

maybe('fit --out below a file: names the file that is in the way', async (t) => {
  const dir = await scratch(t);
  const blocker = join(dir, 'models');
  await writeFile(blocker, 'not a folder');
  const r = await cli(['fit', '--backbone', BACKBONE_PATH, '-o', join(blocker, 'shelf', 'm.onnx'), ...(await magneticTileTrain(4))]);
  failsClearly(t, r, '--out', `${blocker} is a file`);
  t.is(await readFile(blocker, 'utf8'), 'not a folder');
});

test('fit with a mistyped image folder says so before it tries to download a backbone', async (t) => {
  const dir = await scratch(t);
  const cache = join(dir, 'cache');
  const missing = join(dir, 'no-such-folder');
  const r = await cli(['fit', '-o', join(dir, 'm.onnx'), missing], { SHELFWATCH_CACHE: cache, SHELFWATCH_BACKBONE: '' });
  failsClearly(t, r, missing, 'no such file or folder');
  t.false(existsSync(join(cache, 'backbones')), 'a backbone download was attempted');
});

maybe('fit --json on images that cannot be decoded: the error says which and why; the old model stays', async (t) => {
  const dir = await scratch(t);
  const bad = join(dir, 'shelf.jpg');
  await writeFile(bad, 'hello, not a JPEG');
  const out = join(dir, 'model.onnx');
  await writeFile(out, 'previous model bytes');
  const r = await cli(['fit', '--json', '--backbone', BACKBONE_PATH, '-o', out, bad]);
  failsClearly(t, r, 'no usable training image', bad, 'cannot decode');
  t.is(await readFile(out, 'utf8'), 'previous model bytes');
  t.deepEqual(await listing(dir), ['model.onnx', 'shelf.jpg']);
});

maybe('fit --val naming a folder without images: names --val and the folder', async (t) => {
  const dir = await scratch(t);
  const empty = join(dir, 'val');
  await mkdir(empty);
  const r = await cli(['fit', '--backbone', BACKBONE_PATH, '-o', join(dir, 'm.onnx'), '--val', empty, '--', ...(await magneticTileTrain(4))]);
  failsClearly(t, r, '--val', empty, 'no image files');
  t.deepEqual(await listing(dir), ['val']);
});

maybe('infer --json where no image can be read: exit 1 and an error naming the file', async (t) => {
  const model = await fittedModel(await magneticTileTrain(40), { name: 'cli-bad-input' });
  const dir = await scratch(t);
  const bad = join(dir, 'frame.jpg');
  await writeFile(bad, Buffer.alloc(64, 0xff));
  const r = await cli(['infer', '--json', '--provider', 'cpu', model, bad]);
  failsClearly(t, r, 'none of the 1 image(s) could be scored', bad);
  const json = JSON.parse(r.stdout) as { results: unknown[]; skipped: Array<{ file: string }> };
  t.deepEqual(json.results, []);
  t.deepEqual(json.skipped.map((s) => s.file), [bad]);
});

maybe('infer says which int8 kernels the CPU runs (VNNI fast path, or the exact one without VNNI)', async (t) => {
  const model = await fittedModel(await magneticTileTrain(40), { name: 'cli-bad-input' });
  const { thisCpuNeedsExactInt8Path } = await import('../models/cpu-features.js');
  const r = await cli(['infer', '--provider', 'cpu', model, (await magneticTileTrain(1))[0]!]);
  t.is(r.code, 0, r.stderr);
  t.regex(r.stdout, thisCpuNeedsExactInt8Path() ? /on cpu with exact u8u8 kernels \(this CPU has no VNNI/ : /on cpu with fast VNNI kernels \(exact on this CPU\)/);
});

/** A tiny GoodsAD-layout dataset (one category, 64 px). */
async function tinyDataset(dir: string): Promise<string> {
  const root = join(dir, 'ds');
  await generateGoodsDataset(root, { seed: 1, categories: ['cigarette_box'], goodsPerCategory: 1, trainPerGoods: 4, testGoodPerGoods: 1, testDefectPerGoods: 1, size: 64 });
  return root;
}

maybe('eval --out naming a file: refused up front, the file untouched', async (t) => {
  const dir = await scratch(t);
  const ds = await tinyDataset(dir);
  const out = join(dir, 'results');
  await writeFile(out, 'keep me');
  const r = await cli(['eval', '--dataset', ds, '--out', out, '--backbone', BACKBONE_PATH]);
  failsClearly(t, r, '--out', out, 'not a folder');
  t.is(await readFile(out, 'utf8'), 'keep me');
});

maybe('eval --models naming a file: refused before the output folder is made', async (t) => {
  const dir = await scratch(t);
  const ds = await tinyDataset(dir);
  const models = join(dir, 'models.txt');
  await writeFile(models, 'x');
  const r = await cli(['eval', '--dataset', ds, '--out', join(dir, 'out'), '--models', models, '--backbone', BACKBONE_PATH]);
  failsClearly(t, r, '--models', models, 'not a folder');
  t.false(existsSync(join(dir, 'out')));
});

maybe('eval that cannot write results.json: names it and leaves no temp file', async (t) => {
  const dir = await scratch(t);
  const ds = await tinyDataset(dir);
  const out = join(dir, 'out');
  await mkdir(join(out, 'results.json'), { recursive: true });
  const r = await cli(['eval', '--dataset', ds, '--out', out, '--backbone', BACKBONE_PATH, '--coreset', '0.1', '--no-cache', '--no-html']);
  failsClearly(t, r, `cannot write ${join(out, 'results.json')}`);
  t.deepEqual(await listing(out), ['results.json']);
});

maybe('planogram draw --out naming a folder: one clear line, no libvips noise', async (t) => {
  const dir = await scratch(t);
  const config = join(dir, 'shelfwatch.yaml');
  await writeFile(
    config,
    ['agent: { id: box-1 }', 'models: { tile: { path: tile.onnx } }', 'cameras:', '  - id: cam1', '    source: { type: replay, dir: frames }', '    slots: [{ id: A1, box: [0, 0, 50, 50], model: tile }]', ''].join('\n'),
  );
  const out = join(dir, 'drawn');
  await mkdir(out);
  const [snapshot] = await magneticTileTrain(1);
  const r = await cli(['planogram', 'draw', '-c', config, '--camera', 'cam1', '--snapshot', snapshot!, '-o', out]);
  failsClearly(t, r, '--out', out, 'is a folder');
  t.is(r.stderr.trim().split('\n').length, 1, r.stderr);
  t.deepEqual(await listing(out), []);
});

maybe('planogram draw prints the reason for each slot that is clipped or unusable', async (t) => {
  const dir = await scratch(t);
  const config = join(dir, 'shelfwatch.yaml');
  const [snapshot] = await magneticTileTrain(1);
  const { width } = await sharp(snapshot!).metadata();
  await writeFile(
    config,
    ['agent: { id: box-1 }', 'models: { tile: { path: tile.onnx } }', 'cameras:', '  - id: cam1', '    source: { type: replay, dir: frames }',
      `    slots: [{ id: A1, box: [0, 0, 50, 50], model: tile }, { id: A2, box: [${width! + 10}, 0, 20, 20], model: tile }]`, ''].join('\n'),
  );
  const out = join(dir, 'drawn.png');
  const r = await cli(['planogram', 'draw', '-c', config, '--camera', 'cam1', '--snapshot', snapshot!, '-o', out]);
  t.is(r.code, 0, r.stderr);
  t.regex(r.stdout, /wrote .*drawn\.png \(2 slots, 1 not fully inside the snapshot\)\n {2}A2: unusable — .*lies entirely outside the frame/);
});

test('demo --dir naming a file: refused before anything is rendered, the file untouched', async (t) => {
  const dir = await scratch(t);
  const blocker = join(dir, 'demo');
  await writeFile(blocker, 'a file, not a folder');
  const r = await cli(['demo', '--dir', blocker, '--duration', '1']);
  failsClearly(t, r, '--dir', blocker, 'is not a folder');
  t.is(await readFile(blocker, 'utf8'), 'a file, not a folder');
  t.deepEqual(await listing(dir), ['demo']);
});

test('infer --threshold below 0 (scores are distances): refused with the option and value named', async (t) => {
  const r = await cli(['infer', '--threshold', '-5', 'model.onnx', 'image.png']);
  t.not(r.code, 0);
  t.regex(r.stderr, /--threshold must be a number ≥ 0, got '-5'/);
  t.notRegex(r.stderr, /^\s+at /m);
});

test('fit --seed that is not a plain safe integer (1e30, 2^53 + 1, 0x10): refused by the parser, naming --seed', async (t) => {
  for (const seed of ['1e30', '9007199254740993', '0x10', '1.0', '-1']) {
    const r = await cli(['fit', '--seed', seed, '-o', 'm.onnx', 'no-such-images']);
    t.not(r.code, 0, seed);
    t.regex(r.stderr, new RegExp(`--seed must be a whole number from 0 to 9007199254740991, got '${seed.replace(/[.]/g, '\\.')}'`), seed);
    t.notRegex(r.stderr, /^\s+at /m);
  }
});

maybe('fit -o onto one of its input images: refused, the image untouched', async (t) => {
  const dir = await scratch(t);
  const images = join(dir, 'shelf');
  await mkdir(images);
  const [src] = await magneticTileTrain(1);
  const image = join(images, 'a.jpg');
  await writeFile(image, await readFile(src!));
  await writeFile(join(images, 'b.onnx'), await readFile(src!));
  const before = await readFile(image);
  const r = await cli(['fit', '--backbone', BACKBONE_PATH, images, '-o', image]);
  failsClearly(t, r, '--out', image, '.onnx');
  const r2 = await cli(['fit', '--backbone', BACKBONE_PATH, images, join(images, 'b.onnx'), '-o', join(images, 'b.onnx')]);
  failsClearly(t, r2, '--out', join(images, 'b.onnx'), 'is the input image');
  t.true((await readFile(image)).equals(before));
  t.deepEqual(await listing(images), ['a.jpg', 'b.onnx']);
});

test('fit defaults to the CPU execution provider (same bytes on any box); infer, eval and model check keep auto', async (t) => {
  const fit = await cli(['fit', '--help']);
  t.regex(fit.stdout.replace(/\s+/g, ' '), /--provider <name>.*byte-identical.*\(choices: "auto", "cuda", "webgpu", "cpu", default: "cpu"\)/);
  for (const cmd of [['infer'], ['eval'], ['model', 'check']]) {
    const r = await cli([...cmd, '--help']);
    t.regex(r.stdout.replace(/\s+/g, ' '), /--provider <name> execution provider \(choices: "auto", "cuda", "webgpu", "cpu", default: "auto"\)/, cmd.join(' '));
  }
});

test('demo --port has no fixed default, so a busy 1883 (mosquitto from the quick start) falls back to a free port', async (t) => {
  const r = await cli(['demo', '--help']);
  const help = r.stdout.replace(/\s+/g, ' ');
  t.regex(help, /--port <port> embedded MQTT broker port \(default 1883; when that is taken/);
  t.notRegex(help, /default: 1883/, 'a commander default would look like an explicit --port 1883 to the demo');
});
