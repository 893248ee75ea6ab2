#!/usr/bin/env -S node --initial-old-space-size=96
/**
 * The `shelfwatch` command line. Each subcommand lives in agent/commands/; this file only
 * parses arguments, prints results (tables for people, JSON with --json) and sets exit codes.
 */
import { Command, InvalidArgumentError, Option } from 'commander';
import { TOOL_VERSION } from '../models/version.js';
import { int8PathNote } from '../models/cpu-features.js';

const program = new Command();
program
  .name('shelfwatch')
  .description('Find damaged goods on supermarket shelves with PatchCore-1% (ONNX).')
  .version(TOOL_VERSION)
  .showHelpAfterError();

/** A --seed value: digits only and exactly representable ('1e30', '0x10' or 2^53 + 1, which rounds, are refused). */
function seed(v: string): number {
  if (!/^\d+$/.test(v) || BigInt(v) > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new InvalidArgumentError(`--seed must be a whole number from 0 to ${Number.MAX_SAFE_INTEGER}, got '${v}'`);
  }
  return Number(v);
}

function number(name: string, { integer = false, min = -Infinity, max = Infinity } = {}) {
  return (v: string): number => {
    const n = Number(v);
    if (v.trim() === '' || !Number.isFinite(n) || (integer && !Number.isInteger(n)) || n < min || n > max) {
      throw new InvalidArgumentError(`${name} must be ${integer ? 'an integer' : 'a number'}${min > -Infinity ? ` ≥ ${min}` : ''}${max < Infinity ? ` ≤ ${max}` : ''}, got '${v}'`);
    }
    return n;
  };
}

const providerOption = () =>
  new Option('--provider <name>', 'execution provider').choices(['auto', 'cuda', 'webgpu', 'cpu']).default('auto');

function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

program
  .command('fit')
  .description('fit PatchCore on normal images and compile one ONNX model file')
  .argument('<images...>', 'folders and/or image files of normal goods (one category or product)')
  .requiredOption('-o, --out <file>', 'model file to write (.onnx)')
  .option('--name <name>', 'model name (default: the output file name)')
  .option('--val <images...>', 'separate normal images for thresholds (default: hold out a slice)')
  .option('--holdout <fraction>', 'fraction of the images held out for thresholds', number('--holdout', { min: 0, max: 0.9 }), 0.1)
  .option('--coreset <ratio>', 'memory-bank fraction kept by greedy k-center (1 = no subsampling)', number('--coreset', { min: 1e-9, max: 1 }), 0.01)
  .option('--seed <n>', 'random seed (same inputs, seed and --provider → byte-identical model)', seed, 0)
  .addOption(new Option('--projection <kind>', 'random projection before k-center').choices(['jl', 'none']).default('jl'))
  .option('--backbone <file>', 'local backbone ONNX file (default: the cached download; env SHELFWATCH_BACKBONE)')
  .option('--backbone-id <id|descriptor.json>', 'built-in backbone id or a descriptor JSON file', 'mobilenetv2-12-int8')
  .option('--input-size <px>', 'model input size (default: the backbone\'s)', number('--input-size', { integer: true, min: 32, max: 2048 }))
  .option('--batch <n>', 'images per backbone call', number('--batch', { integer: true, min: 1, max: 256 }), 8)
  .addOption(
    // CPU by default: a GPU computes the int8 backbone differently, so the same inputs and seed give
    // byte-identical models per provider only; the CPU gives the same bytes on every machine.
    new Option('--provider <name>', 'execution provider for features and thresholds; byte-identical models hold per provider (the default CPU gives the same bytes on any machine, a GPU may differ)')
      .choices(['auto', 'cuda', 'webgpu', 'cpu'])
      .default('cpu'),
  )
  .option('--json', 'machine-readable output')
  .action(async (images: string[], o) => {
    const { runFit } = await import('./commands/fit.js');
    const s = await runFit({ images, out: o.out, name: o.name, val: o.val, holdout: o.holdout, coreset: o.coreset, seed: o.seed, projection: o.projection, backbone: o.backbone, backboneId: o.backboneId, inputSize: o.inputSize, batch: o.batch, provider: o.provider, json: Boolean(o.json) });
    if (o.json) return printJson(s);
    const t = s.timingsMs;
    console.log(`model ${s.model}`);
    console.log(`  ${s.trainImages} training images → ${s.patches} patches → memory bank of ${s.memoryBank}; ${s.validationImages} validation images; ${s.skipped.length} skipped`);
    console.log(`  thresholds: image ${s.thresholds.image.toFixed(4)}, pixel ${s.thresholds.pixel.toFixed(4)}`);
    console.log(`  time: total ${(t.total / 1000).toFixed(1)} s = decode ${(t.decode / 1000).toFixed(1)} s (overlapped) + features ${(t.features / 1000).toFixed(1)} s + coreset ${(t.coreset / 1000).toFixed(1)} s + compile ${(t.compile / 1000).toFixed(1)} s + thresholds ${(t.validation / 1000).toFixed(1)} s`);
  });

program
  .command('infer')
  .description('score images with a compiled model')
  .argument('<model>', 'model file made by `shelfwatch fit`')
  .argument('<images...>', 'image files and/or folders')
  .option('--batch <n>', 'images per inference call', number('--batch', { integer: true, min: 1, max: 256 }), 8)
  .option('--threshold <score>', 'image threshold, a raw score (distance) ≥ 0 (default: the model\'s)', number('--threshold', { min: 0 }))
  .addOption(providerOption())
  .option('--json', 'machine-readable output')
  .action(async (model: string, images: string[], o) => {
    const { runInfer } = await import('./commands/infer.js');
    const s = await runInfer({ model, images, batch: o.batch, provider: o.provider, threshold: o.threshold });
    // Not one image scored is a failure, with --json too (the JSON still lists what was skipped).
    if (s.results.length === 0) {
      process.exitCode = 1;
      process.stderr.write(`shelfwatch: none of the ${s.skipped.length} image(s) could be scored: ${s.skipped.map((k) => `${k.file}: ${k.reason}`).join('; ')}\n`);
    }
    if (o.json) return printJson(s);
    console.log(`model ${s.model} (${s.modelDigest.slice(0, 12)}) on ${s.provider}${s.provider === 'cpu' ? ` with ${int8PathNote()}` : ''}${s.fallbacks.length ? ` (not used: ${s.fallbacks.map((f) => `${f.provider}: ${f.reason}`).join('; ')})` : ''}; threshold ${s.threshold.toFixed(4)}`);
    for (const r of s.results) console.log(`${r.anomalous ? 'ANOMALY' : 'ok     '} ${r.score.toFixed(4)} (${r.normalizedScore.toFixed(3)}) ${r.file}`);
    for (const k of s.skipped) console.log(`skipped ${k.file}: ${k.reason}`);
  });

const backbone = program.command('backbone').description('manage the feature backbone');
backbone
  .command('fetch')
  .description('download the backbone from its official location, verify its sha256 and cache it')
  .option('--backbone-id <id|descriptor.json>', 'built-in backbone id or a descriptor JSON file', 'mobilenetv2-12-int8')
  .option('--url <url...>', 'download from these URLs instead (mirrors)')
  .action(async (o) => {
    const { fetchBackbone, resolveDescriptor } = await import('./backbones.js');
    const { progressBar } = await import('./progress.js');
    const d = await resolveDescriptor(o.backboneId);
    const bar = progressBar(`fetch ${d.id}`);
    // Ctrl-C or a stop aborts the download, which removes its temp file (no .part left behind).
    const interrupted = new AbortController();
    const onSignal = (signal: NodeJS.Signals) => interrupted.abort(new Error(`backbone fetch interrupted (${signal}): nothing was cached`));
    process.once('SIGINT', onSignal).once('SIGTERM', onSignal);
    let r;
    try {
      r = await fetchBackbone(d, { urls: o.url, signal: interrupted.signal, onProgress: (got, total) => bar.update(got, total ?? got) });
    } catch (err) {
      if (interrupted.signal.aborted) process.exitCode = 130;
      throw err;
    } finally {
      process.off('SIGINT', onSignal).off('SIGTERM', onSignal);
      bar.done();
    }
    console.log(`${r.cached ? 'already cached' : `downloaded from ${r.url}`}: ${r.path} (${r.bytes} bytes, sha256 ${r.sha256})`);
  });
backbone
  .command('info')
  .description('show the built-in backbones and where the cached copy lives')
  .action(async () => {
    const { BUILTIN_BACKBONES } = await import('../models/backbone.js');
    const { cachedBackbonePath } = await import('./backbones.js');
    const { existsSync } = await import('node:fs');
    for (const d of Object.values(BUILTIN_BACKBONES)) {
      const p = cachedBackbonePath(d);
      console.log(`${d.id}: input ${d.inputSize}, taps ${d.taps.map((t) => `${t.tensor}@${t.stride}`).join(' + ')}, sha256 ${d.sha256}\n  cache: ${p} (${existsSync(p) ? 'present' : 'missing'})`);
    }
  });

program
  .command('run')
  .description('run the agent: cameras → slot crops → model → debounced events over MQTT')
  .requiredOption('-c, --config <file>', 'agent configuration (YAML or JSON); see deploy/shelfwatch.example.yaml')
  .action(async (o) => {
    const { runAgent } = await import('./commands/run.js');
    await runAgent(o.config);
  });

program
  .command('demo')
  .description('the main job on a simulated shelf camera: fits a model on first run, prints events, writes thumbnails')
  .option('--dir <dir>', 'working folder (model, frames, thumbnails, state)', '.shelfwatch-demo')
  .option('--duration <seconds>', 'stop after this many seconds (default: until Ctrl-C)', number('--duration', { min: 1 }))
  // No commander default: the demo falls back to a free port only when 1883 was not asked for.
  .option('--port <port>', 'embedded MQTT broker port (default 1883; when that is taken, e.g. by mosquitto, a free one; 0 = any free port)', number('--port', { integer: true, min: 0, max: 65535 }))
  .addOption(new Option('--log-level <level>', 'agent JSON log level (stderr)').choices(['trace', 'debug', 'info', 'warn', 'error']).default('warn'))
  .action(async (o) => {
    const { runDemo } = await import('./demo.js');
    await runDemo({ dir: o.dir, durationSec: o.duration, port: o.port, logLevel: o.logLevel });
  });

const config = program.command('config').description('agent configuration');
config
  .command('check')
  .description('validate a config file (every error at once, with key paths) and the files it names')
  .argument('<file>', 'YAML or JSON config')
  .action(async (file: string) => {
    const { runConfigCheck } = await import('./commands/config-check.js');
    const r = await runConfigCheck(file);
    console.log(r.text);
  });

const planogram = program.command('planogram').description('product slots of a camera');
planogram
  .command('draw')
  .description('draw the slot boxes of a camera over a snapshot (PNG)')
  .requiredOption('-c, --config <file>', 'agent configuration')
  .requiredOption('--camera <id>', 'camera id')
  .requiredOption('--snapshot <image>', 'a full-resolution frame of that camera')
  .requiredOption('-o, --out <png>', 'output PNG')
  .action(async (o) => {
    const { runPlanogramDraw } = await import('./commands/planogram-draw.js');
    const r = await runPlanogramDraw({ config: o.config, camera: o.camera, snapshot: o.snapshot, out: o.out });
    const flagged = r.slots.filter((s) => s.status !== 'ok');
    console.log(`wrote ${o.out} (${r.slots.length} slots${flagged.length ? `, ${flagged.length} not fully inside the snapshot` : ''})`);
    for (const s of flagged) console.log(`  ${s.id}: ${s.status}${s.note ? ` — ${s.note}` : ''}`);
  });

program
  .command('eval')
  .description('offline evaluation on a GoodsAD / MVTec-layout dataset with the paper\'s metrics')
  .requiredOption('--dataset <root>', 'dataset root (a folder of categories, or one category)')
  .requiredOption('--out <dir>', 'output folder (results.json, results.md, report.html)')
  .option('--force', 'overwrite the results of an earlier run in --out')
  .option('--category <names...>', 'only these categories')
  .option('--coreset <ratio>', 'memory-bank fraction', number('--coreset', { min: 1e-9, max: 1 }), 0.01)
  .option('--seed <n>', 'random seed', seed, 0)
  .option('--models <dir>', 'reuse fitted models from here when they match (and save new ones)')
  .option('--cache <dir>', 'feature cache folder (default <out>/.cache)')
  .option('--no-cache', 'do not cache features')
  .option('--pixel-size <n|native>', 'pixel metrics at N×N (default 224) or at each mask\'s size', (v: string) => (v === 'native' ? 'native' : number('--pixel-size', { integer: true, min: 8 })(v)))
  .option('--per-goods', 'one memory bank per goods id (from the file names)')
  .addOption(new Option('--crop <mode>', 'tighten each image to the product against the white shelf first').choices(['none', 'auto']).default('none'))
  .option('--modes <list>', 'several modes side by side, e.g. category,per-goods,crop')
  .option('--min-goods-train <n>', "fewest fit images for a goods id's own model (--per-goods)", number('--min-goods-train', { integer: true, min: 1 }), 10)
  .option('--holdout <fraction>', 'fraction of train/good held out for thresholds', number('--holdout', { min: 0.0001, max: 0.9 }), 0.1)
  .option('--backbone <file>', 'local backbone ONNX file')
  .option('--backbone-id <id|descriptor.json>', 'built-in backbone id or a descriptor JSON file', 'mobilenetv2-12-int8')
  .option('--input-size <px>', 'model input size', number('--input-size', { integer: true, min: 32, max: 2048 }))
  .option('--batch <n>', 'images per inference call', number('--batch', { integer: true, min: 1, max: 256 }), 8)
  .option('--examples <n>', 'worst false negatives/positives per category in the report', number('--examples', { integer: true, min: 0 }), 4)
  .option('--no-html', 'skip report.html')
  .option('--no-shrink-on-load', 'decode big JPEGs at full resolution')
  .addOption(providerOption())
  .option('--json', 'print results.json instead of the table')
  .action(async (o) => {
    const { runEval } = await import('./commands/eval.js');
    const s = await runEval({
      dataset: o.dataset, out: o.out, categories: o.category, coreset: o.coreset, seed: o.seed, models: o.models, cache: o.cache,
      pixelSize: o.pixelSize, perGoods: Boolean(o.perGoods), crop: o.crop, modes: o.modes, minGoodsTrain: o.minGoodsTrain, holdout: o.holdout, inputSize: o.inputSize, examples: o.examples, backbone: o.backbone,
      backboneId: o.backboneId, batch: o.batch, html: o.html, shrinkOnLoad: o.shrinkOnLoad, provider: o.provider, json: Boolean(o.json), force: Boolean(o.force),
    });
    if (o.json) printJson(s.results);
    else {
      console.log(s.table);
      console.log(`wrote ${s.files.json}, ${s.files.markdown}${s.files.html ? `, ${s.files.html}` : ''}`);
    }
    // Failed categories are in the outputs; the run as a whole failed.
    if (s.failed.length > 0) {
      for (const f of s.failed) process.stderr.write(`shelfwatch: eval: ${f.category}${s.result.modes.length > 1 ? ` (${f.mode})` : ''} failed: ${f.reason}\n`);
      process.stderr.write(`shelfwatch: eval: ${s.failed.length} category evaluation(s) failed; results of the others are in ${s.out}\n`);
      process.exitCode = 1;
    }
  });

const modelCmd = program.command('model').description('check a model on this box; roll back a running agent\'s model');
modelCmd
  .command('rollback')
  .description('restore the previous model file (<path>.previous); a running agent verifies and swaps it in')
  .requiredOption('-c, --config <file>', 'agent configuration')
  .requiredOption('--model <name>', 'model name from the config')
  .action(async (o) => {
    const { runModelRollback } = await import('./commands/model-rollback.js');
    const r = await runModelRollback(o.config, { model: o.model });
    console.log(`restored ${r.model}: ${r.path} is now ${r.digest.slice(0, 12)}…${r.replaced ? ` (was ${r.replaced.slice(0, 12)}…)` : ''}`);
  });

modelCmd
  .command('check')
  .description('is this box ready for the model: devices, the provider it gets, and agreement with the CPU')
  .argument('<model>', 'model file made by `shelfwatch fit`')
  .argument('[images...]', 'images to compare on (default: a synthetic batch)')
  .option('--batch <n>', 'images per inference call', number('--batch', { integer: true, min: 1, max: 256 }), 8)
  .addOption(providerOption())
  .option('--json', 'machine-readable output')
  .action(async (model: string, images: string[], o) => {
    const { runModelCheck, formatModelCheck } = await import('./commands/model-check.js');
    const r = await runModelCheck({ model, images, provider: o.provider, batch: o.batch });
    if (o.json) printJson(r);
    else console.log(formatModelCheck(r));
    if (r.warnings.length) process.exitCode = 2;
  });

const dataset = program.command('dataset').description('GoodsAD / MVTec-layout datasets');
dataset
  .command('generate')
  .description('write a seeded synthetic dataset in the exact GoodsAD layout and naming (tests, demos)')
  .argument('<dir>', 'output folder (must be empty or absent)')
  .option('--seed <n>', 'random seed', seed, 0)
  .option('--categories <list>', 'comma-separated categories (default: all six)')
  .option('--goods <n>', 'goods (products) per category', number('--goods', { integer: true, min: 1, max: 99 }), 2)
  .option('--train <n>', 'normal training images per goods', number('--train', { integer: true, min: 1 }), 10)
  .option('--test-good <n>', 'normal test images per goods', number('--test-good', { integer: true, min: 0 }), 3)
  .option('--test-defect <n>', 'defective test images per goods and defect type', number('--test-defect', { integer: true, min: 0 }), 1)
  .option('--size <px>', 'square image side (GoodsAD: 3000)', number('--size', { integer: true, min: 64, max: 6000 }), 3000)
  .option('--quality <q>', 'JPEG quality', number('--quality', { integer: true, min: 1, max: 100 }), 90)
  .action(async (dir: string, o) => {
    const { generateDatasetCommand, formatGenerateSummary } = await import('./commands/dataset.js');
    const s = await generateDatasetCommand({
      out: dir, seed: o.seed, categories: o.categories ? String(o.categories).split(',') : undefined, goodsPerCategory: o.goods,
      trainPerGoods: o.train, testGoodPerGoods: o.testGood, testDefectPerGoods: o.testDefect, size: o.size, jpegQuality: o.quality,
    });
    console.log(formatGenerateSummary(s));
  });
dataset
  .command('check')
  .description('validate a GoodsAD / MVTec-layout dataset and list every problem at once')
  .argument('<root>', 'dataset root (a folder of categories, or one category)')
  .option('--categories <list>', 'comma-separated categories')
  .option('--no-images', 'skip reading image and mask headers')
  .action(async (root: string, o) => {
    const { checkDatasetCommand } = await import('./commands/dataset.js');
    const r = await checkDatasetCommand(root, { categories: o.categories ? String(o.categories).split(',') : undefined, checkImages: o.images });
    console.log(r.text);
    if (!r.ok) process.exitCode = 1;
  });

program.parseAsync(process.argv).catch((e: unknown) => {
  const err = e as Error;
  process.stderr.write(`shelfwatch: ${err.message}\n`);
  if (process.env.SHELFWATCH_DEBUG) process.stderr.write(`${err.stack}\n`);
  process.exitCode = process.exitCode || 1;
});
