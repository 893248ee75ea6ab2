/**
 * The model rollout's bookkeeping around `.previous` and the serving copies, and its smoke test,
 * on real small PatchCore models (ModelRegistry + ModelRollout, no camera, no broker):
 *   1. two config models whose files hold identical bytes share one serving copy: swapping one
 *      must not delete it, so the other's swap still keeps the model it served as `.previous`
 *      (not an older `.previous` left from before), and `model rollback` restores that model;
 *   2. with no copy of the replaced bytes left anywhere, the older `.previous` is removed (a
 *      rollback says there is nothing to roll back to) instead of restoring a model the path did
 *      not serve last; with the serving copy gone but another loaded file holding the bytes,
 *      `.previous` is written from that file;
 *   3. the smoke test runs scan, the path the agent's pipeline takes: a model whose predict works
 *      but whose scan throws (or builds non-finite maps) is refused, in a worker thread too.
 */
import test, { type ExecutionContext } from 'ava';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { restorePreviousModel } from '../agent/commands/model-rollback.js';
import { Logger } from '../agent/logger.js';
import { ModelRegistry } from '../agent/model-registry.js';
import { ModelRollout } from '../agent/model-rollout.js';
import { MANIFEST_KEY } from '../models/manifest.js';
import { AttrType, DataType, decodeModel, encodeModel } from '../models/onnx/proto.js';
import { OUTPUT_PATCH_DISTANCES } from '../models/patchcore-graph.js';
import { fittedModel, magneticTileTrain, sharedAvailable } from './helpers/fitted-model.js';

const available = sharedAvailable();
const serial = available ? test.serial : test.serial.skip;

const digest = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
const fileDigest = async (path: string) => digest(await readFile(path));

let work: string;
/** X, Y: two fits; Z, W: valid models of their own digest (X with another createdAt). */
const models = new Map<string, Buffer>();
const sha = (name: string) => digest(models.get(name)!);

/** The model X with its graph or manifest edited. */
function variant(edit: (model: ReturnType<typeof decodeModel>) => void): Buffer {
  const model = decodeModel(models.get('X')!, 'X.onnx');
  edit(model);
  return Buffer.from(encodeModel(model));
}

function withCreatedAt(at: string): Buffer {
  return variant((model) => {
    const entry = model.metadataProps!.find((p) => p.key === MANIFEST_KEY)!;
    entry.value = JSON.stringify({ ...JSON.parse(entry.value), createdAt: at });
  });
}

/** X whose `patch_distances` output goes through `op` (the declared shapes stay right): predict still works. */
function brokenPatchDistances(op: 'twice' | 'nan'): Buffer {
  return variant((model) => {
    const graph = model.graph!;
    const at = graph.node!.findIndex((n) => n.output?.includes(OUTPUT_PATCH_DISTANCES));
    const out = graph.node![at]!;
    const from = out.input![0]!;
    if (op === 'twice') {
      // [N, 2g, g]: twice the values scan expects.
      graph.node!.splice(at, 0, { opType: 'Concat', name: 'test/twice', input: [from, from], output: ['test_broken'], attribute: [{ name: 'axis', type: AttrType.INT, i: 1 }] });
    } else {
      graph.initializer!.push({ name: 'test_nan', dataType: DataType.FLOAT, dims: [], floatData: [Number.NaN] });
      graph.node!.splice(at, 0, { opType: 'Mul', name: 'test/nan', input: [from, 'test_nan'], output: ['test_broken'], attribute: [] });
    }
    out.input![0] = 'test_broken';
  });
}

test.before(async () => {
  if (!available) return;
  work = await mkdtemp(join(tmpdir(), 'shelfwatch-rollout-shared-'));
  // The same fits as the other rollout tests: cached on disk, shared.
  const images = await magneticTileTrain(24);
  models.set('X', await readFile(await fittedModel(images, { name: 'rollout-a', seed: 1 })));
  models.set('Y', await readFile(await fittedModel(images, { name: 'rollout-b', seed: 2 })));
  models.set('Z', withCreatedAt('2026-03-01T00:00:00.000Z'));
  models.set('W', withCreatedAt('2026-03-02T00:00:00.000Z'));
});

test.after.always(async () => {
  if (work) await rm(work, { recursive: true, force: true });
});

/**
 * A registry of the config models `names` (files `<dir>/<name>.onnx`, written by `prepare`) and a
 * started rollout on it (files are checked by the test, not the watcher).
 */
async function setup(t: ExecutionContext, names: string[], prepare: (path: (name: string) => string) => Promise<unknown>, opts: { workerThread?: boolean } = {}) {
  const dir = await mkdtemp(join(work, 'case-'));
  const path = (n: string) => join(dir, `${n}.onnx`);
  await prepare(path);
  const lines: string[] = [];
  const logger = new Logger({ level: 'info', sink: { write: (line: string) => lines.push(line) } });
  const config = {
    models: Object.fromEntries(names.map((n) => [n, { path: join(dir, `${n}.onnx`) }])),
    cameras: [{ id: 'cam', slots: names.map((n) => ({ id: `slot-${n}`, model: n })) }],
    inference: { provider: 'cpu', workerThread: opts.workerThread ?? false, replicas: 1, intraOpThreads: 1, spinWait: false },
  } as unknown as Parameters<typeof ModelRegistry.load>[0];
  const registry = await ModelRegistry.load(config, logger);
  const swapped: string[] = [];
  const rollout = new ModelRollout({
    registry,
    pipeline: { swapModel: async (name) => void swapped.push(name), lastNormalInput: () => null },
    stateDir: join(dir, 'state'),
    provider: 'cpu',
    workerThread: opts.workerThread ?? false,
    intraOpThreads: 1,
    allowSpinning: false,
    logger,
    debounceMs: 60_000, // the test checks files itself
  });
  await rollout.start();
  t.teardown(async () => {
    await rollout.stop();
    await registry.release();
  });
  const serving = async () => (await readdir(join(dir, 'state', 'models', 'serving'))).sort();
  const servingDigest = (n: string) => registry.get(n)!.model.digest;
  return { dir, path, rollout, lines, serving, servingDigest, swapped };
}

serial('two models with identical bytes: swapping one keeps the shared serving copy; the other keeps its own model as .previous and rolls back to it', async (t) => {
  // a and b hold the same bytes X; b.onnx.previous is left from an older swap (W).
  const ctx = await setup(t, ['a', 'b'], async (path) => {
    await writeFile(path('a'), models.get('X')!);
    await writeFile(path('b'), models.get('X')!);
    await writeFile(`${path('b')}.previous`, models.get('W')!);
  });
  t.deepEqual(await ctx.serving(), [`${sha('X')}.onnx`], 'one serving copy for both files');

  await writeFile(ctx.path('a'), models.get('Y')!);
  const a = await ctx.rollout.checkFile(ctx.path('a'));
  t.is(a.outcome, 'swapped');
  t.is(await fileDigest(`${ctx.path('a')}.previous`), sha('X'));
  t.is(ctx.servingDigest('a'), sha('Y'));
  t.deepEqual(await ctx.serving(), [`${sha('X')}.onnx`, `${sha('Y')}.onnx`].sort(), 'X is still served by b: its copy stays');

  await writeFile(ctx.path('b'), models.get('Z')!);
  const b = await ctx.rollout.checkFile(ctx.path('b'));
  t.is(b.outcome, 'swapped');
  t.is(ctx.servingDigest('b'), sha('Z'));
  t.is(await fileDigest(`${ctx.path('b')}.previous`), sha('X'), 'b.previous is the model b served (X), not the older W');
  t.false(ctx.lines.some((l) => l.includes('could not keep the replaced model')), ctx.lines.join(''));
  t.deepEqual(await ctx.serving(), [`${sha('Y')}.onnx`, `${sha('Z')}.onnx`].sort(), 'X is served by nobody now: its copy is gone');

  // `shelfwatch model rollback` for b restores X, and the rollout swaps it back in.
  t.is((await restorePreviousModel(ctx.path('b'))).digest, sha('X'));
  t.is((await ctx.rollout.checkFile(ctx.path('b'))).outcome, 'swapped');
  t.is(ctx.servingDigest('b'), sha('X'));
  t.is(await fileDigest(`${ctx.path('b')}.previous`), sha('Z'), 'a second rollback would undo the first');
  t.is(ctx.servingDigest('a'), sha('Y'), 'a untouched');
});

serial('no copy of the replaced bytes left: the older .previous is removed, never restored; another file with the bytes is used when there is one', async (t) => {
  const ctx = await setup(t, ['a', 'b', 'c'], async (path) => {
    for (const n of ['a', 'b', 'c']) await writeFile(path(n), n === 'c' ? models.get('Y')! : models.get('X')!);
    for (const n of ['a', 'c']) await writeFile(`${path(n)}.previous`, models.get('W')!);
  });
  // The state directory lost its copies (wiped, another disk, …).
  await rm(join(ctx.dir, 'state', 'models', 'serving'), { recursive: true });
  await mkdir(join(ctx.dir, 'state', 'models', 'serving'));

  // a: b.onnx still holds X, so a.previous is written from it.
  await writeFile(ctx.path('a'), models.get('Z')!);
  t.is((await ctx.rollout.checkFile(ctx.path('a'))).outcome, 'swapped');
  t.is(await fileDigest(`${ctx.path('a')}.previous`), sha('X'));

  // c: nothing holds Y any more: the stale c.previous (W) goes, with a warning.
  await writeFile(ctx.path('c'), models.get('Z')!);
  t.is((await ctx.rollout.checkFile(ctx.path('c'))).outcome, 'swapped');
  const warning = ctx.lines.find((l) => l.includes('could not keep the replaced model') && l.includes('c.onnx'));
  t.truthy(warning, ctx.lines.join(''));
  t.regex(warning!, /"removed":"the older .*c\.onnx\.previous/);
  await t.throwsAsync(restorePreviousModel(ctx.path('c')), { message: /nothing to roll back to: .*c\.onnx\.previous does not exist/ });
});

for (const workerThread of [false, true]) {
  serial(`the smoke test runs scan, the agent's path: a model whose scan fails is refused (${workerThread ? 'worker thread' : 'main thread'})`, async (t) => {
    const ctx = await setup(t, ['a'], async (path) => writeFile(path('a'), models.get('X')!), { workerThread });

    await writeFile(ctx.path('a'), brokenPatchDistances('twice'));
    const twice = await ctx.rollout.checkFile(ctx.path('a'));
    t.is(twice.outcome, 'rejected');
    if (twice.outcome === 'rejected') t.regex(twice.rejection.reason, /a\.onnx: smoke inference \(scan, the agent's path\) failed: .*'patch_distances' has 1568 values for 1 images, expected 784/);

    await writeFile(ctx.path('a'), brokenPatchDistances('nan'));
    const nan = await ctx.rollout.checkFile(ctx.path('a'));
    t.is(nan.outcome, 'rejected');
    if (nan.outcome === 'rejected') t.regex(nan.rejection.reason, /a\.onnx: smoke inference \(scan\) on a synthetic \(all-zero\) input gave non-finite anomaly-map values/);

    t.is(ctx.servingDigest('a'), sha('X'), 'X keeps serving');
    t.deepEqual(ctx.swapped, []);
    // A good model still goes through both smoke inferences.
    await writeFile(ctx.path('a'), models.get('Y')!);
    t.is((await ctx.rollout.checkFile(ctx.path('a'))).outcome, 'swapped');
    t.deepEqual(ctx.swapped, ['a']);
  });
}
