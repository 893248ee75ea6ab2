/**
 * A model's manifest is checked against its graph when it loads, on every load path (the calling
 * thread, a worker thread, replicas, and readManifest for config check and rollback): a manifest
 * whose inputSize or patchGrid disagrees with the graph, an absurd inputSize or a zero std is
 * refused at load with an error naming the file and the field, instead of loading and then
 * failing every inference (or every scan, the agent's path).
 */
import test from 'ava';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadInferenceModel } from '../models/load-model.js';
import { MANIFEST_KEY, readManifest } from '../models/manifest.js';
import { decodeModel, encodeModel, type ModelProto } from '../models/onnx/proto.js';
import { OUTPUT_PATCH_DISTANCES, OUTPUT_SCORE } from '../models/patchcore-graph.js';
import { ReplicatedModel } from '../models/replicated-model.js';
import { PatchcoreModel } from '../models/runtime.js';
import { WorkerPatchcoreModel } from '../models/worker-model.js';
import { fittedModel, magneticTileTrain, sharedAvailable } from './helpers/fitted-model.js';

const available = sharedAvailable();
const maybe = available ? test : test.skip;

let work: string;
let original: Buffer;

test.before(async () => {
  if (!available) return;
  work = await mkdtemp(join(tmpdir(), 'shelfwatch-load-checks-'));
  // The fit the rollout tests use: cached on disk, shared.
  original = await readFile(await fittedModel(await magneticTileTrain(24), { name: 'rollout-a', seed: 1 }));
});

test.after.always(async () => {
  if (work) await rm(work, { recursive: true, force: true });
});

type Manifest = Record<string, any>;

/** Writes the fitted model with its manifest (and optionally its graph) edited; returns the path. */
async function tampered(name: string, editManifest: (m: Manifest) => void, editGraph?: (model: ModelProto) => void): Promise<string> {
  const model = decodeModel(original, 'original.onnx');
  const entry = model.metadataProps!.find((p) => p.key === MANIFEST_KEY)!;
  const manifest = JSON.parse(entry.value) as Manifest;
  editManifest(manifest);
  entry.value = JSON.stringify(manifest);
  editGraph?.(model);
  const path = join(work, `${name}.onnx`);
  await writeFile(path, encodeModel(model));
  return path;
}

const dropOutput = (name: string) => (model: ModelProto) => {
  const graph = model.graph!;
  graph.output = graph.output!.filter((o) => o.name !== name);
  graph.node = graph.node!.filter((n) => !n.output!.includes(name));
};

/** name → manifest/graph edit and the error it must load with (after the file path). */
const CASES: Array<{ name: string; manifest: (m: Manifest) => void; graph?: (model: ModelProto) => void; error: RegExp }> = [
  { name: 'input256', manifest: (m) => void (m.inputSize = 256), error: /manifest inputSize 256 does not match the graph: its input 'input' is \[\?,3,224,224\], expected \[N,3,256,256\]/ },
  { name: 'input256-grid32', manifest: (m) => Object.assign(m, { inputSize: 256, patchGrid: 32 }), error: /manifest inputSize 256 does not match the graph: its input 'input' is \[\?,3,224,224\]/ },
  { name: 'hugeinput', manifest: (m) => void (m.inputSize = 100000), error: /invalid model manifest\n {2}inputSize: Too big: expected number to be <=2048/ },
  { name: 'tinyinput', manifest: (m) => void (m.inputSize = 16), error: /invalid model manifest\n {2}inputSize: Too small: expected number to be >=32/ },
  { name: 'std0', manifest: (m) => void (m.normalization.std = [0, 0, 0]), error: /invalid model manifest\n {2}normalization\.std\.0: Too small: expected number to be >0/ },
  { name: 'std-negative', manifest: (m) => void (m.normalization.std = [0.229, -0.224, 0.225]), error: /invalid model manifest\n {2}normalization\.std\.1: Too small: expected number to be >0/ },
  { name: 'grid5', manifest: (m) => void (m.patchGrid = 5), error: /manifest patchGrid 5 does not match the graph: its output 'patch_distances' is \[\?,28,28\], expected \[N,5,5\]/ },
  {
    name: 'grid14-stride16',
    manifest: (m) => {
      m.patchGrid = 14;
      m.backbone.taps[0].stride = 16;
    },
    error: /manifest patchGrid 14 does not match the graph: its output 'patch_distances' is \[\?,28,28\]/,
  },
  { name: 'grid5-no-distances', manifest: (m) => void (m.patchGrid = 5), graph: dropOutput(OUTPUT_PATCH_DISTANCES), error: /manifest patchGrid 5 does not fit inputSize 224 with backbone\.taps\[0\]\.stride 8 \(expected 28\)/ },
  { name: 'no-score', manifest: () => undefined, graph: dropOutput(OUTPUT_SCORE), error: /the model graph has no output 'score'/ },
];

const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
/** `<path>: <error>` at the start of the message. */
const named = (path: string, error: RegExp) => new RegExp(`^${escape(path)}: ${error.source}`);

maybe('the calling thread: each disagreement between manifest and graph is refused at load, naming the file and the field', async (t) => {
  for (const c of CASES) {
    const path = await tampered(c.name, c.manifest, c.graph);
    const err = await t.throwsAsync(PatchcoreModel.load(path, { provider: 'cpu' }), { name: 'ModelLoadError' }, c.name);
    if (err) t.regex(err.message, named(path, c.error), c.name);
    // config check and rollback read manifests with readManifest: the same check.
    const bytes = await readFile(path);
    t.throws(() => readManifest(decodeModel(bytes, path), path), { name: 'ManifestError', message: named(path, c.error) }, c.name);
  }
});

maybe('worker threads, replicas and loadInferenceModel run the same check', async (t) => {
  for (const c of CASES.filter((x) => ['input256', 'std0', 'grid5'].includes(x.name))) {
    const path = await tampered(c.name, c.manifest, c.graph);
    const want = { name: 'ModelLoadError', message: named(path, c.error) };
    await t.throwsAsync(WorkerPatchcoreModel.load(path, { provider: 'cpu' }), want, `${c.name} in a worker`);
    await t.throwsAsync(ReplicatedModel.load(path, 2, { provider: 'cpu', intraOpThreads: 1 }), want, `${c.name} in replicas`);
    await t.throwsAsync(loadInferenceModel(path, { provider: 'cpu', workerThread: false }), want, `${c.name} via loadInferenceModel`);
  }
});

maybe('the untouched model (and one with only harmless manifest edits) still loads everywhere and scans', async (t) => {
  const path = await tampered('renamed', (m) => void (m.name = 'renamed'));
  const local = await PatchcoreModel.load(path, { provider: 'cpu' });
  const remote = await WorkerPatchcoreModel.load(original, { provider: 'cpu' }, 'original.onnx');
  try {
    const x = new Float32Array(3 * 224 * 224);
    for (const m of [local, remote]) {
      const [p] = await m.scan(x, 1, [{ image: Number.NEGATIVE_INFINITY }]);
      t.true(Number.isFinite(p!.score));
      t.is(p!.anomalyMap!.length, 224 * 224);
    }
  } finally {
    await Promise.all([local.release(), remote.release()]);
  }
});

maybe('a model file with two manifests is refused by readManifest; peekManifestText reads the first, as readManifest would', async (t) => {
  const { peekManifestText } = await import('../models/manifest.js');
  const model = decodeModel(original, 'original.onnx');
  const entry = model.metadataProps!.find((p) => p.key === MANIFEST_KEY)!;
  const other = JSON.stringify({ ...JSON.parse(entry.value), seed: 12345 });
  model.metadataProps = [...model.metadataProps!, { key: MANIFEST_KEY, value: other }];
  const bytes = encodeModel(model);
  t.throws(() => readManifest(decodeModel(bytes, 'two.onnx'), 'two.onnx'), { message: /two\.onnx: carries 2 'shelfwatch\.manifest' metadata entries/ });
  t.is(peekManifestText(bytes), entry.value);
});
