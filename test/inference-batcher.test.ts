/**
 * The cross-camera batcher with a scripted model (no ONNX): batch boundaries by size and wait,
 * growth while the model is busy, order and completeness of the results with few or many
 * buffers, preprocessing and inference failures.
 */
import test from 'ava';
import type { RawImage } from '../models/image-decode.js';
import type { Prediction } from '../models/types.js';
import { InferenceBatcher, type BatchModel } from '../pipelines/inference-batcher.js';

const SIZE = 4;
const norm = { mean: [0, 0, 0] as [number, number, number], std: [1, 1, 1] as [number, number, number] };

/** A w×1 grey image whose every pixel is `value`, so the model can tell crops apart. */
function image(value: number, width = 8): RawImage {
  return { data: new Uint8Array(width * 3).fill(value), width, height: 1, channels: 3, origin: `img${value}`, sourceWidth: width, sourceHeight: 1, shrink: 1 };
}

/** Echoes each crop's first input value (pixel / 255) as its score; records batch sizes. */
function scriptedModel(delayMs = 0, fail = false): BatchModel & { batches: number[] } {
  const batches: number[] = [];
  return {
    batches,
    manifest: { inputSize: SIZE, normalization: norm, thresholds: { image: 0.5 } },
    digest: 'd',
    async scan(batch, n, thresholds) {
      batches.push(n);
      await new Promise((r) => setTimeout(r, delayMs));
      if (fail) throw new Error('device lost');
      return Array.from({ length: n }, (_, i): Prediction => {
        const score = Math.round(batch[i * 3 * SIZE * SIZE]! * 255);
        const threshold = thresholds[i]?.image ?? 0.5;
        return { score, normalizedScore: 0, anomalyMap: new Float32Array(SIZE * SIZE), mapSize: SIZE, mask: new Uint8Array(SIZE * SIZE), threshold, isAnomalous: score > threshold, modelDigest: 'd' };
      });
    },
  };
}

const box = { x: 0, y: 0, width: 4, height: 1 };

for (const buffers of [1, 2, 3, 5]) {
  test(`every crop gets its own prediction, in any mix of waits (buffers: ${buffers})`, async (t) => {
    const model = scriptedModel(5);
    const batcher = new InferenceBatcher(model, { name: 'm', batchSize: 3, batchWaitMs: 2, buffers });
    const results = await Promise.all(Array.from({ length: 40 }, (_, i) => batcher.submit({ raw: image(i + 1), box, threshold: i })));
    t.deepEqual(results.map((p) => p.score), Array.from({ length: 40 }, (_, i) => i + 1));
    t.deepEqual(results.map((p) => p.threshold), Array.from({ length: 40 }, (_, i) => i));
    t.true(model.batches.every((n) => n >= 1 && n <= 3));
    t.is(model.batches.reduce((a, b) => a + b, 0), 40, 'no crop inferred twice');
    t.like(batcher.stats(), { queued: 0, crops: 40 });
  });
}

test('a batch goes when full, or when its first crop has waited batchWaitMs', async (t) => {
  const model = scriptedModel();
  const batcher = new InferenceBatcher(model, { name: 'm', batchSize: 4, batchWaitMs: 50 });
  const started = Date.now();
  await Promise.all([1, 2, 3, 4, 5].map((v) => batcher.submit({ raw: image(v), box })));
  t.deepEqual(model.batches, [4, 1]);
  t.true(Date.now() - started >= 45, 'the lone fifth crop waited for the timer');
});

test('while the model is busy a timed-out batch keeps filling', async (t) => {
  const model = scriptedModel(100);
  const batcher = new InferenceBatcher(model, { name: 'm', batchSize: 8, batchWaitMs: 5 });
  const first = batcher.submit({ raw: image(1), box });
  await new Promise((r) => setTimeout(r, 20)); // batch [1] is running for 100 ms
  const rest = [2, 3, 4, 5].map((v) => batcher.submit({ raw: image(v), box }));
  await Promise.all([first, ...rest]);
  t.deepEqual(model.batches, [1, 4], 'crops 2–5 went together once the model was free');
});

test('a crop that cannot be preprocessed is rejected alone; a failed inference rejects its batch', async (t) => {
  const batcher = new InferenceBatcher(scriptedModel(), { name: 'm', batchSize: 2, batchWaitMs: 1 });
  const outside = batcher.submit({ raw: image(1), box: { x: 6, y: 0, width: 4, height: 1 } });
  const fine = batcher.submit({ raw: image(2), box });
  await t.throwsAsync(outside, { message: /box|outside|inside/i });
  t.is((await fine).score, 2);
  t.is(batcher.stats().preprocessErrors, 1);

  const failing = new InferenceBatcher(scriptedModel(0, true), { name: 'shelf', batchSize: 2, batchWaitMs: 1 });
  const both = [failing.submit({ raw: image(1), box }), failing.submit({ raw: image(2), box })];
  for (const p of both) await t.throwsAsync(p, { message: 'model shelf: inference on a batch of 2 failed: device lost' });
  t.is(failing.stats().failedBatches, 1);
});

test('close() rejects what has not started', async (t) => {
  const batcher = new InferenceBatcher(scriptedModel(50), { name: 'm', batchSize: 1, batchWaitMs: 0, buffers: 1 });
  const running = batcher.submit({ raw: image(1), box });
  await new Promise((r) => setTimeout(r, 5));
  const waiting = batcher.submit({ raw: image(2), box });
  batcher.close();
  await t.throwsAsync(waiting, { message: /closed/ });
  t.is((await running).score, 1, 'the running batch finishes');
  await t.throwsAsync(batcher.submit({ raw: image(3), box }), { message: /closed/ });
});

test('a model with concurrency 2 runs two batches at once; a swap waits for both', async (t) => {
  let inModel = 0;
  let most = 0;
  const base = scriptedModel();
  const model: BatchModel & { batches: number[] } = {
    ...base,
    concurrency: 2,
    async scan(batch, n, thresholds) {
      inModel++;
      most = Math.max(most, inModel);
      await new Promise((r) => setTimeout(r, 30));
      inModel--;
      return base.scan(batch, n, thresholds);
    },
  };
  const batcher = new InferenceBatcher(model, { name: 'm', batchSize: 2, batchWaitMs: 1 });
  const all = Promise.all(Array.from({ length: 12 }, (_, i) => batcher.submit({ raw: image(i + 1), box })));
  await new Promise((r) => setTimeout(r, 10));
  let swappedAt = -1;
  const swapped = batcher.swapModel(scriptedModel()).then(() => (swappedAt = inModel));
  const results = await all;
  await swapped;
  t.deepEqual(results.map((p) => p.score), Array.from({ length: 12 }, (_, i) => i + 1));
  t.is(most, 2, 'two batches were in the model at once, never more');
  t.is(swappedAt, 0, 'the swap resolved only once no batch ran on the old model');
});
