/**
 * Fitting, the model file and the runtime: reproducibility, the manifest, bad inputs,
 * backbone checks, and the whole image → score path against the reference.
 */
import test from 'ava';
import { copyFile, mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import ort from 'onnxruntime-node';
import { BackboneError, loadBackbone, MOBILENETV2_INT8, parseDescriptor } from '../models/backbone.js';
import { readManifest, MANIFEST_KEY } from '../models/manifest.js';
import { decodeModel, encodeModel } from '../models/onnx/proto.js';
import { preprocessImage } from '../models/preprocess.js';
import { PatchcoreModel, verifyTapStrides } from '../models/runtime.js';
import { runFit } from '../agent/commands/fit.js';
import { runInfer } from '../agent/commands/infer.js';
import { BACKBONE_PATH, MAGNETIC_TILE, SHARED, magneticTileTrain, sharedAvailable, testBackbone } from './helpers/fitted-model.js';

const env = { ...process.env, SHELFWATCH_BACKBONE: BACKBONE_PATH, SOURCE_DATE_EPOCH: '1767225600' };

async function trainDir(n: number, extra: Record<string, Buffer> = {}): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'sw-fit-'));
  for (const f of await magneticTileTrain(n)) await copyFile(f, join(dir, f.split('/').pop()!));
  for (const [name, bytes] of Object.entries(extra)) await writeFile(join(dir, name), bytes);
  return dir;
}

const fitOpts = (images: string[], out: string, over: Partial<Parameters<typeof runFit>[0]> = {}) => ({
  images, out, name: 'tile', holdout: 0.1, coreset: 0.01, seed: 0, projection: 'jl' as const, batch: 8, provider: 'cpu' as const, json: true, env, log: () => {}, ...over,
});

test('fit: same inputs and seed give a byte-identical model; another seed another bank', async (t) => {
  if (!sharedAvailable()) return t.pass('../shared absent');
  const dir = await trainDir(16);
  const out = await mkdtemp(join(tmpdir(), 'sw-out-'));
  const a = await runFit(fitOpts([dir], join(out, 'a.onnx')));
  await runFit(fitOpts([dir], join(out, 'b.onnx')));
  await runFit(fitOpts([dir], join(out, 'c.onnx'), { seed: 7 }));
  const [ba, bb, bc] = await Promise.all(['a', 'b', 'c'].map((n) => readFile(join(out, `${n}.onnx`))));
  t.true(ba!.equals(bb!));
  t.false(ba!.equals(bc!));
  // 16 images, 2 held out → 14 × 784 patches; 1 % coreset = trunc(10976 × 0.01) = 109
  t.is(a.trainImages, 14);
  t.is(a.validationImages, 2);
  t.is(a.patches, 14 * 784);
  t.is(a.memoryBank, Math.trunc(14 * 784 * 0.01));
  const m = readManifest(decodeModel(ba!), 'a.onnx');
  t.is(m.format, 1);
  t.is(m.backbone.sha256, MOBILENETV2_INT8.sha256);
  t.is(m.coreset.entries, 109);
  t.is(m.createdAt, '2026-01-01T00:00:00.000Z');
  t.is(m.training.digest, a.trainingDigest);
  t.true(m.thresholds.image > 0 && m.thresholds.pixel > 0);
  t.is(m.thresholds.image, m.statistics.image.max);
});

test('fit: --val images that are also training images are warned about', async (t) => {
  if (!sharedAvailable()) return t.pass('../shared absent');
  const dir = await trainDir(6);
  const out = await mkdtemp(join(tmpdir(), 'sw-out-'));
  const lines: string[] = [];
  const one = (await magneticTileTrain(6))[0]!.split('/').pop()!;
  const s = await runFit(fitOpts([dir], join(out, 'v.onnx'), { val: [join(dir, one)], coreset: 0.1, log: (l: string) => lines.push(l) }));
  t.is(s.validationImages, 1);
  t.true(lines.some((l) => /^warning: 1 of the 1 --val image\(s\) are also training images \(.*\): the memory bank has seen them/.test(l)), lines.join('\n'));
  const separate = await mkdtemp(join(tmpdir(), 'sw-val-'));
  await copyFile(join(MAGNETIC_TILE, 'test', 'good', 'exp1_num_106729.jpg'), join(separate, 'v.jpg'));
  const quiet: string[] = [];
  await runFit(fitOpts([dir], join(out, 'w.onnx'), { val: [separate], coreset: 0.1, log: (l: string) => quiet.push(l) }));
  t.false(quiet.some((l) => l.includes('also training images')));
});

test('fit: unreadable files are reported and skipped; nothing usable is a clear error', async (t) => {
  if (!sharedAvailable()) return t.pass('../shared absent');
  const dir = await trainDir(6, { 'broken.jpg': Buffer.from('not a jpeg at all'), 'empty.png': Buffer.alloc(0) });
  const out = await mkdtemp(join(tmpdir(), 'sw-out-'));
  const s = await runFit(fitOpts([dir], join(out, 'm.onnx'), { coreset: 0.1 }));
  t.is(s.skipped.length, 2);
  t.true(s.skipped.some((k) => k.file.endsWith('broken.jpg') && /broken\.jpg/.test(k.reason)));
  t.is(s.trainImages + s.validationImages, 6);

  const bad = await mkdtemp(join(tmpdir(), 'sw-bad-'));
  await writeFile(join(bad, 'a.jpg'), 'x');
  await writeFile(join(bad, 'b.jpg'), 'y');
  await writeFile(join(bad, 'c.jpg'), 'z');
  await t.throwsAsync(runFit(fitOpts([bad], join(out, 'n.onnx'))), { message: /no usable/ });
  const empty = await mkdtemp(join(tmpdir(), 'sw-empty-'));
  await t.throwsAsync(runFit(fitOpts([empty], join(out, 'e.onnx'))), { message: /no image files/ });
  await t.throwsAsync(runFit(fitOpts([join(empty, 'nope')], join(out, 'e.onnx'))), { message: /no such file or folder/ });
});

test('fit: --coreset 1 keeps every patch (no subsampling)', async (t) => {
  if (!sharedAvailable()) return t.pass('../shared absent');
  const dir = await trainDir(4);
  const out = await mkdtemp(join(tmpdir(), 'sw-out-'));
  const s = await runFit(fitOpts([dir], join(out, 'full.onnx'), { coreset: 1 }));
  t.is(s.memoryBank, s.patches);
});

test('runtime: infer scores images and says which execution provider ran', async (t) => {
  if (!sharedAvailable()) return t.pass('../shared absent');
  const dir = await trainDir(12);
  const out = await mkdtemp(join(tmpdir(), 'sw-out-'));
  await runFit(fitOpts([dir], join(out, 'm.onnx'), { coreset: 0.1 }));
  const defect = join(MAGNETIC_TILE, 'test', 'break', 'exp1_num_116934.jpg');
  const good = join(MAGNETIC_TILE, 'test', 'good', 'exp1_num_106729.jpg');
  // A folder with the good image and a link whose target is gone.
  const folder = await mkdtemp(join(tmpdir(), 'sw-infer-'));
  await copyFile(good, join(folder, 'good.jpg'));
  const dangling = join(folder, 'gone.jpg');
  await symlink(join(folder, 'no-such-file.jpg'), dangling);
  const r = await runInfer({ model: join(out, 'm.onnx'), images: [defect, folder], batch: 2, provider: 'auto' });
  t.deepEqual(r.skipped, [{ file: dangling, reason: 'broken symbolic link (its target does not exist)' }], 'listed, reported, not scored');
  t.is(r.provider, 'cpu');
  t.true(r.fallbacks.some((f) => f.provider === 'cuda'));
  t.is(r.results.length, 2);
  for (const x of r.results) {
    t.true(Number.isFinite(x.score) && x.score > 0);
    t.true(x.normalizedScore >= 0 && x.normalizedScore <= 1);
  }
  const model = await PatchcoreModel.load(join(out, 'm.onnx'), { provider: 'cpu' });
  const img = await preprocessImage(readFileSync(good), { origin: good, size: 224, normalization: model.manifest.normalization });
  const [p] = await model.predict(img.data, 1, [{ image: 0, pixel: 1e9 }]);
  t.true(p!.isAnomalous); // threshold 0: anything is anomalous
  t.is(p!.mask.reduce((a, b) => a + b, 0), 0); // pixel threshold huge: empty mask
  t.is(p!.anomalyMap.length, 224 * 224);
  t.is(p!.modelDigest, model.digest);
  await model.release();
});

test('runtime: refuses a newer format, a non-shelfwatch ONNX file, a truncated file and a mismatched backbone', async (t) => {
  if (!sharedAvailable()) return t.pass('../shared absent');
  const dir = await trainDir(4);
  const out = await mkdtemp(join(tmpdir(), 'sw-out-'));
  const path = join(out, 'm.onnx');
  await runFit(fitOpts([dir], path, { coreset: 0.1 }));
  const bytes = await readFile(path);
  const model = decodeModel(bytes);
  const entry = model.metadataProps!.find((p) => p.key === MANIFEST_KEY)!;
  entry.value = JSON.stringify({ ...JSON.parse(entry.value), format: 99 });
  await t.throwsAsync(PatchcoreModel.load(encodeModel(model), {}, 'future.onnx'), { message: /format 99 is newer.*upgrade shelfwatch/ });
  await t.throwsAsync(PatchcoreModel.load(BACKBONE_PATH), { message: /not a shelfwatch model/ });
  await t.throwsAsync(PatchcoreModel.load(bytes.subarray(0, bytes.length >> 1), {}, 'half.onnx'), { message: /half\.onnx/ });
  await t.throwsAsync(PatchcoreModel.load(Buffer.alloc(0), {}, 'empty.onnx'), { message: /empty\.onnx.*empty/ });
  await t.throwsAsync(PatchcoreModel.load(path, { expectBackboneSha256: 'f'.repeat(64) }), { message: /built on backbone mobilenetv2-12-int8/ });
  await t.throwsAsync(PatchcoreModel.load(join(out, 'missing.onnx')), { message: /missing\.onnx: cannot read \(ENOENT\)/ });
});

test('backbone: missing file, wrong hash, unknown tap and wrong stride are clear errors', async (t) => {
  if (!sharedAvailable()) return t.pass('../shared absent');
  const dir = await mkdtemp(join(tmpdir(), 'sw-bb-'));
  await t.throwsAsync(loadBackbone(join(dir, 'nope.onnx'), MOBILENETV2_INT8), { instanceOf: BackboneError, message: /does not exist.*backbone fetch/ });
  const corrupt = Buffer.from(await readFile(BACKBONE_PATH));
  corrupt[corrupt.length - 10] ^= 0xff;
  await writeFile(join(dir, 'corrupt.onnx'), corrupt);
  await t.throwsAsync(loadBackbone(join(dir, 'corrupt.onnx'), MOBILENETV2_INT8), { message: /sha256 .* does not match/ });
  const badTap = { ...MOBILENETV2_INT8, taps: [{ ...MOBILENETV2_INT8.taps[0], tensor: 'no_such_tensor' }, MOBILENETV2_INT8.taps[1]] as typeof MOBILENETV2_INT8.taps };
  await t.throwsAsync(loadBackbone(BACKBONE_PATH, badTap), { message: /tap 'no_such_tensor' \(stride 8\) is not produced/ });
  const wrongStride = { ...MOBILENETV2_INT8, taps: [MOBILENETV2_INT8.taps[0], { ...MOBILENETV2_INT8.taps[1], tensor: '365_quantized', channels: 32, dequantize: { scale: '365_scale', zeroPoint: '365_zero_point' } }] as typeof MOBILENETV2_INT8.taps };
  const loaded = await loadBackbone(BACKBONE_PATH, wrongStride);
  await t.throwsAsync(verifyTapStrides(loaded, 224), { message: /tap '365_quantized' has shape \[2,32,28,28\].*stride 16/ });
  t.throws(() => parseDescriptor({ ...MOBILENETV2_INT8, sha256: 'abc' }, 'd.json'), { message: /d\.json: invalid backbone descriptor[\s\S]*sha256/ });
  t.throws(() => parseDescriptor({ ...MOBILENETV2_INT8, taps: [MOBILENETV2_INT8.taps[1], MOBILENETV2_INT8.taps[0]] }, 'd.json'), { message: /fine to coarse/ });
  await verifyTapStrides(await testBackbone(), 224);
  t.pass();
});

test('whole path from image files: taps bit-exact and scores of reference test images 6 and 7 within 1e-3', async (t) => {
  if (!sharedAvailable()) return t.pass('../shared absent');
  const { aggregate } = await import('../models/patchcore-math.js');
  const { buildModelGraph, buildTapProbeGraph } = await import('../models/patchcore-graph.js');
  const { createSession } = await import('../models/execution-provider.js');
  const REF = join(SHARED, 'reference', 'patchcore');
  const f32 = (n: string) => { const b = readFileSync(join(REF, n)); return new Float32Array(b.buffer, b.byteOffset, b.length / 4); };
  const backbone = await testBackbone();
  const files = [join(MAGNETIC_TILE, 'test/good/exp1_num_116270.jpg'), join(MAGNETIC_TILE, 'test/uneven/exp0_num_461.jpg')];
  const batch = new Float32Array(2 * 150528);
  for (const [i, f] of files.entries()) {
    const img = await preprocessImage(readFileSync(f), { origin: f, size: 224, normalization: MOBILENETV2_INT8.normalization, shrinkOnLoad: false });
    batch.set(img.data, i * 150528);
  }
  // The backbone through the product's session settings reproduces the reference taps exactly
  // (on CPUs without VNNI it turns on x64quantprecision: their fast int8 kernels saturate and ~40 % differ).
  const probe = (await createSession(encodeModel(buildTapProbeGraph(backbone.model, MOBILENETV2_INT8)), { provider: 'cpu' })).session;
  const taps = await probe.run({ input: new ort.Tensor('float32', batch, [2, 3, 224, 224]) });
  const r8 = f32('taps_test_s8.bin');
  const r16 = f32('taps_test_s16.bin');
  t.deepEqual(Array.from(taps.tap0!.data as Float32Array), Array.from(r8.subarray(6 * 25088, 8 * 25088)));
  t.deepEqual(Array.from(taps.tap1!.data as Float32Array), Array.from(r16.subarray(6 * 18816, 8 * 18816)));
  await probe.release();

  const s8 = f32('taps_train_s8.bin');
  const s16 = f32('taps_train_s16.bin');
  const bank = new Float32Array(24 * 784 * 128);
  for (let i = 0; i < 24; i++) bank.set(aggregate(s8.subarray(i * 25088, (i + 1) * 25088), 32, 28, 28, s16.subarray(i * 18816, (i + 1) * 18816), 96, 14, 14), i * 784 * 128);
  const { session } = await createSession(encodeModel(buildModelGraph(backbone.model, MOBILENETV2_INT8, { bank, entries: 18816 })), { provider: 'cpu' });
  const out = await session.run({ input: new ort.Tensor('float32', batch, [2, 3, 224, 224]) });
  const ref = JSON.parse(readFileSync(join(REF, 'scores.json'), 'utf8')).images as Array<{ score: number }>;
  for (const [i, refIndex] of [6, 7].entries()) {
    const rel = Math.abs((out.score!.data[i] as number) - ref[refIndex]!.score) / ref[refIndex]!.score;
    t.true(rel < 1e-3, `image ${refIndex}: ${out.score!.data[i]} vs ${ref[refIndex]!.score}`);
  }
  await session.release();
});

// ---- Fit input handling: unusable files, the hold-out split, the output path, values checked up front.
import { mkdir as mkdirP, readdir as readdirP, symlink, truncate } from 'node:fs/promises';
import { spawnSync } from 'node:child_process';
import { listImages, trainingDigest, type SkippedFile } from '../pipelines/image-files.js';

const sorted = async (dir: string) => (await readdirP(dir)).sort();

test('fit: a corrupt image in the held-out slice is skipped and the split redone over the usable ones; same bytes as without it', async (t) => {
  if (!sharedAvailable()) return t.pass('../shared absent');
  const dir = await trainDir(10);
  const names = await sorted(dir);
  // The one image the hold-out of 10 picks (position 5) is cut short: its header decodes, its pixels do not.
  const victim = join(dir, names[5]!);
  await truncate(victim, 2000);
  const clean = await mkdtemp(join(tmpdir(), 'sw-fit-clean-'));
  for (const n of names) if (n !== names[5]) await copyFile(join(dir, n), join(clean, n));
  const out = await mkdtemp(join(tmpdir(), 'sw-out-'));
  const s = await runFit(fitOpts([dir], join(out, 'a.onnx')));
  t.deepEqual(s.skipped.map((k) => k.file), [victim]);
  t.is(s.trainImages, 8);
  t.is(s.validationImages, 1);
  const c = await runFit(fitOpts([clean], join(out, 'b.onnx')));
  t.is(s.trainingDigest, c.trainingDigest, 'the digest covers the images used, not the skipped one');
  t.true((await readFile(join(out, 'a.onnx'))).equals(await readFile(join(out, 'b.onnx'))), 'an unusable extra file changed the model');
  t.is(readManifest(decodeModel(await readFile(join(out, 'a.onnx'))), 'a.onnx').training.validationSource, 'held-out');
});

test('fit: two images, the one left for training is corrupt: fits on the good one, thresholds from it, with the warning', async (t) => {
  if (!sharedAvailable()) return t.pass('../shared absent');
  const dir = await mkdtemp(join(tmpdir(), 'sw-fit-two-'));
  await writeFile(join(dir, 'a.jpg'), 'junk\n');
  await copyFile((await magneticTileTrain(1))[0]!, join(dir, 'b.jpg'));
  const out = await mkdtemp(join(tmpdir(), 'sw-out-'));
  const lines: string[] = [];
  const s = await runFit(fitOpts([dir], join(out, 'm.onnx'), { log: (l: string) => lines.push(l) }));
  t.is(s.trainImages, 1);
  t.is(s.validationImages, 1);
  t.deepEqual(s.skipped.map((k) => k.file), [join(dir, 'a.jpg')]);
  t.true(lines.some((l) => /^warning: only 1 usable image/.test(l)), lines.join('\n'));
  t.is(readManifest(decodeModel(await readFile(join(out, 'm.onnx'))), 'm.onnx').training.validationSource, 'training');
});

test('fit: a dangling symlink and a folder named like an image are reported and skipped; a symlink to an image is used', async (t) => {
  if (!sharedAvailable()) return t.pass('../shared absent');
  const dir = await trainDir(6);
  await mkdirP(join(dir, 'sub.jpg'));
  await symlink('/nonexistent/x.jpg', join(dir, 'dangling.jpg'));
  await symlink((await magneticTileTrain(7))[6]!, join(dir, 'linked.jpg'));
  const skipped: SkippedFile[] = [];
  const listed = await listImages([dir], (k) => skipped.push(k));
  t.is(listed.length, 7);
  t.true(listed.includes(join(dir, 'linked.jpg')));
  t.deepEqual(skipped.map((k) => k.file).sort(), [join(dir, 'dangling.jpg'), join(dir, 'sub.jpg')]);
  t.regex(skipped.find((k) => k.file.endsWith('sub.jpg'))!.reason, /folder/);
  t.regex(skipped.find((k) => k.file.endsWith('dangling.jpg'))!.reason, /symbolic link/);

  const out = await mkdtemp(join(tmpdir(), 'sw-out-'));
  const s = await runFit(fitOpts([dir], join(out, 'm.onnx')));
  t.is(s.trainImages + s.validationImages, 7);
  t.deepEqual(s.skipped.map((k) => k.file).sort(), [join(dir, 'dangling.jpg'), join(dir, 'sub.jpg')]);
});

test('trainingDigest: reads with bounded concurrency (no EMFILE) and a read failure names the file', async (t) => {
  if (!sharedAvailable()) return t.pass('../shared absent');
  const files = (await readdirP(join(MAGNETIC_TILE, 'train', 'good'))).map((f) => join(MAGNETIC_TILE, 'train', 'good', f));
  t.true(files.length > 200);
  const script = join(await mkdtemp(join(tmpdir(), 'sw-digest-')), 'digest.mts');
  await writeFile(script, `import { trainingDigest } from ${JSON.stringify(new URL('../pipelines/image-files.ts', import.meta.url).href)};\nconsole.log(await trainingDigest(${JSON.stringify(files)}));\n`);
  // The open-file limit is far below the number of files: all at once would fail with EMFILE.
  const r = spawnSync('bash', ['-c', `ulimit -n 96 && exec "${process.execPath}" --import tsx "${script}"`], { cwd: new URL('..', import.meta.url).pathname, encoding: 'utf8' });
  t.is(r.status, 0, r.stderr);
  t.is(r.stdout.trim(), await trainingDigest(files));

  const dir = await mkdtemp(join(tmpdir(), 'sw-digest-'));
  await mkdirP(join(dir, 'sub.jpg'));
  await t.throwsAsync(trainingDigest([files[0]!, join(dir, 'sub.jpg')]), { message: `cannot read image ${join(dir, 'sub.jpg')}: it is a folder (EISDIR)` });
});

test('fit: an --out that is an input image, a --val image or the backbone, or not a .onnx file, is refused before fitting', async (t) => {
  if (!sharedAvailable()) return t.pass('../shared absent');
  const dir = await trainDir(4);
  const names = await sorted(dir);
  const image = join(dir, names[0]!);
  const before = await readFile(image);
  const refuse = (out: string, message: RegExp, over: Partial<Parameters<typeof runFit>[0]> = {}) =>
    t.throwsAsync(runFit(fitOpts([dir], out, over)), { message }, out);
  await refuse(image, /--out .*\.onnx/);
  // An image given by name with a .onnx ending, reached through a symlinked folder.
  const odd = join(dir, 'frame.onnx');
  await copyFile(image, odd);
  const alias = join(await mkdtemp(join(tmpdir(), 'sw-alias-')), 'alias');
  await symlink(dir, alias);
  await t.throwsAsync(runFit(fitOpts([dir, odd], join(alias, 'frame.onnx'))), { message: /--out .*frame\.onnx.* is the input image/ });
  const val = await mkdtemp(join(tmpdir(), 'sw-val-'));
  await copyFile(image, join(val, 'v.onnx'));
  await t.throwsAsync(runFit(fitOpts([dir], join(val, 'v.onnx'), { val: [join(val, 'v.onnx')] })), { message: /--out .*v\.onnx.* is the --val image/ });
  const bbDir = await mkdtemp(join(tmpdir(), 'sw-bb-'));
  const bb = join(bbDir, 'bb.onnx');
  await copyFile(BACKBONE_PATH, bb);
  await t.throwsAsync(runFit(fitOpts([dir], bb, { backbone: bb })), { message: /--out .*bb\.onnx.* is the backbone file/ });
  await t.throwsAsync(runFit(fitOpts([dir], bb, { env: { ...env, SHELFWATCH_BACKBONE: bb } })), { message: /--out .*bb\.onnx.* is the backbone file/ });
  t.true((await readFile(image)).equals(before));
  t.true((await readFile(bb)).equals(await readFile(BACKBONE_PATH)));
  t.deepEqual(await sorted(dir), [...names, 'frame.onnx'].sort());
});

test('fit: bad --seed, --name, --out and SOURCE_DATE_EPOCH are refused up front, naming the flag or variable', async (t) => {
  if (!sharedAvailable()) return t.pass('../shared absent');
  const dir = await trainDir(2);
  const out = await mkdtemp(join(tmpdir(), 'sw-out-'));
  // A backbone that does not exist: a check that came after loading it would report that instead.
  const over = { backbone: join(out, 'no-backbone.onnx') };
  const refuse = (o: Partial<Parameters<typeof runFit>[0]>, message: RegExp, file = join(out, 'm.onnx')) =>
    t.throwsAsync(runFit(fitOpts([dir], file, { ...over, ...o })), { message }, String(message));
  await refuse({ seed: 1e30 }, /--seed must be .*got 1e\+30/);
  await refuse({ seed: 2 ** 53 }, /--seed must be .*9007199254740992/);
  await refuse({ seed: -1 }, /--seed must be/);
  await refuse({ name: '' }, /--name must not be empty/);
  await refuse({ name: ' \t' }, /--name must not be empty/);
  await refuse({ name: 'a\nb' }, /--name .*control character/);
  await refuse({ name: undefined }, /--out .*\.onnx.*needs a name before \.onnx/, join(out, '.onnx'));
  await refuse({}, /--out .*ends with a path separator/, `${join(out, 'newdir')}/`);
  await refuse({}, /--out .*model\.bin.*\.onnx/, join(out, 'model.bin'));
  await refuse({ env: { ...env, SOURCE_DATE_EPOCH: '99999999999999' } }, /SOURCE_DATE_EPOCH .*99999999999999/);
  await refuse({ env: { ...env, SOURCE_DATE_EPOCH: '-5' } }, /SOURCE_DATE_EPOCH .*-5/);
  t.deepEqual(await readdirP(out), [], 'something was written');
});

test('fit --holdout 0: an unusable file is reported once', async (t) => {
  if (!sharedAvailable()) return t.pass('../shared absent');
  const dir = await trainDir(4, { 'broken.jpg': Buffer.from('not a jpeg') });
  const out = await mkdtemp(join(tmpdir(), 'sw-out-'));
  const lines: string[] = [];
  const s = await runFit(fitOpts([dir], join(out, 'm.onnx'), { holdout: 0, json: false, log: (l: string) => lines.push(l) }));
  t.deepEqual(s.skipped.map((k) => k.file), [join(dir, 'broken.jpg')]);
  t.is(lines.filter((l) => l.startsWith('skipped ')).length, 1, lines.join('\n'));
  t.is(s.trainImages, 4);
  t.is(s.validationImages, 4);
});
