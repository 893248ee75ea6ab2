/**
 * The shelf pipeline in-process, with a real small PatchCore model (fitted on magnetic_tile) and
 * frames made from real tile images with a pasted dark blotch: events and region boxes in frame
 * coordinates, per-slot thresholds, decode errors, drop-oldest under a slow model, one failing
 * camera not stopping another, and crops of several cameras sharing one batch.
 */
import test from 'ava';
import { firstValueFrom, from, lastValueFrom, Subject, throwError, toArray, concat, of, delay } from 'rxjs';
import sharp from 'sharp';
import { PatchcoreModel } from '../models/runtime.js';
import { createShelfPipeline, defaultFramesInFlight, type BatchModel, type PipelineCamera, type PipelineObserver, type ShelfOutput, type ShelfPipelineOptions } from '../pipelines/shelf-pipeline.js';
import type { Frame } from '../pipelines/types.js';
import { fittedModel, magneticTileTrain, sharedAvailable } from './helpers/fitted-model.js';
import { inside, overlaps, tileFrame, unseenTiles, type TileFrame } from './helpers/shelf-frames.js';
import { pipelineOptions, until } from './helpers/pipeline-fixture.js';

const available = sharedAvailable();
const maybe = available ? test : test.skip;

/** Between the normal scores (~2.2–2.8 on unseen tiles) and the blotch scores (~5.5). */
const MODEL_THRESHOLD = 4;

let model: PatchcoreModel;
let normal: TileFrame;
let anomalous: TileFrame;

test.before(async () => {
  if (!available) return;
  model = await PatchcoreModel.load(await fittedModel(await magneticTileTrain(40), { name: 'pipeline-test' }), { provider: 'cpu' });
  const tiles = await unseenTiles(2);
  normal = await tileFrame(tiles);
  anomalous = await tileFrame(tiles, { blotch: [1] });
});

test.after.always(async () => {
  await model?.release();
});

function frame(camera: string, sequence: number, data: Buffer, at = 1_700_000_000_000 + sequence * 1000): Frame {
  return { id: `${camera}-${at}-${sequence}`, camera, capturedAt: at, sequence, data, origin: `test:${camera}#${sequence}` };
}

function camera(id: string, frames: Frame[] | PipelineCamera['frames$'], boxes = normal.boxes, extra: Partial<PipelineCamera['slots'][number]>[] = []): PipelineCamera {
  return {
    id,
    slots: boxes.map((box, i) => ({ id: `S${i}`, box, model: 'tile', ...extra[i] })),
    frames$: Array.isArray(frames) ? from(frames) : frames,
  };
}

function options(cameras: PipelineCamera[], over: Partial<ShelfPipelineOptions> = {}, m: BatchModel = model): ShelfPipelineOptions {
  return {
    cameras,
    models: new Map([['tile', { model: m, threshold: MODEL_THRESHOLD }]]),
    batchSize: 8,
    batchWaitMs: 10,
    maxPendingFrames: 16,
    debounce: { raiseAfter: 2, window: 3, clearAfter: 2 },
    ...over,
  };
}

maybe('a blotch raises new → end with regions in frame coordinates, thumbnails and retained state', async (t) => {
  const seq = [normal, anomalous, anomalous, anomalous, normal, normal, normal];
  const cam = camera('aisle1', seq.map((f, i) => frame('aisle1', i, f.jpeg)), normal.boxes, [{ product: 'SKU-1', category: 'tile' }, { product: 'SKU-2', category: 'tile' }]);
  const pipeline = createShelfPipeline(options([cam]));
  const outputs = await lastValueFrom(pipeline.outputs$.pipe(toArray()));

  t.is(outputs.length, seq.length * 2, 'one output per slot per frame');
  const bySlot = (slot: string) => outputs.filter((o) => o.item.crop.slot === slot);
  // S0 never changes; S1 carries the blotch on frames 1–3.
  t.deepEqual(bySlot('S0').map((o) => o.event), Array(seq.length).fill(null));
  t.deepEqual(bySlot('S0').map((o) => o.item.prediction.isAnomalous), Array(seq.length).fill(false));
  const s1 = bySlot('S1');
  t.deepEqual(s1.map((o) => o.item.prediction.isAnomalous), [false, true, true, true, false, false, false]);
  // Maps and masks travel only with anomalous crops (the agent never needs a normal crop's).
  for (const o of outputs) {
    const { anomalyMap, mask, isAnomalous } = o.item.prediction;
    t.is(anomalyMap?.length, isAnomalous ? 224 * 224 : undefined);
    t.is(mask?.length, isAnomalous ? 224 * 224 : undefined);
  }
  t.deepEqual(s1.map((o) => o.event?.type ?? null), [null, null, 'new', null, null, 'end', null]);
  t.deepEqual(s1.map((o) => o.state.state), ['ok', 'ok', 'anomalous', 'anomalous', 'anomalous', 'ok', 'ok']);

  const created = s1[2]!.event!;
  const ended = s1[5]!.event!;
  t.is(created.after.id, ended.after.id, 'one stable id from new to end');
  t.is(s1[3]!.state.eventId, created.after.id);
  t.is(s1[6]!.state.eventId, null);
  const ev = created.after;
  t.like(ev, { camera: 'aisle1', slot: 'S1', product: 'SKU-2', category: 'tile', threshold: MODEL_THRESHOLD, modelId: 'tile', modelDigest: model.digest, frameTime: 1_700_000_002_000, thumbnail: true });
  t.true(ev.score > MODEL_THRESHOLD && ev.normalizedScore > 0.5, `score ${ev.score}`);
  t.is(ended.after.endTime, 1_700_000_005_000);

  // Regions are frame coordinates: inside the slot box (which does not start at 0,0) and on the blotch.
  const slotBox = normal.boxes[1]!;
  const blotch = anomalous.blotches.get(1)!;
  t.true(ev.regions.length >= 1);
  for (const r of ev.regions) t.true(inside(r.box, slotBox), `region ${JSON.stringify(r.box)} outside slot ${JSON.stringify(slotBox)}`);
  t.true(overlaps(ev.regions[0]!.box, blotch), `strongest region ${JSON.stringify(ev.regions[0]!.box)} misses the blotch ${JSON.stringify(blotch)}`);
  t.true(ev.regions[0]!.area > 0 && ev.regions[0]!.area <= slotBox.width * slotBox.height);

  // Thumbnail only with new/update; a real JPEG no larger than maxSize, mask the same size.
  t.deepEqual(s1.map((o) => o.thumbnail !== null), [false, false, true, false, false, false, false]);
  const thumb = s1[2]!.thumbnail!;
  const meta = await sharp(thumb.jpeg).metadata();
  t.is(meta.format, 'jpeg');
  t.true(Math.max(meta.width!, meta.height!) <= 320);
  const maskMeta = await sharp(thumb.maskPng).metadata();
  t.like(maskMeta, { format: 'png', width: meta.width, height: meta.height });

  const stats = pipeline.stats().cameras.aisle1!;
  t.like(stats, { framesIn: 7, framesScanned: 7, framesDropped: 0, decodeErrors: 0, crops: 14, pending: 0, inFlight: 0, ended: true, decodeShrink: 1 });
  t.deepEqual(stats.events, { new: 1, update: 0, end: 1 });
});

maybe('thresholds: slot override > model threshold > manifest', async (t) => {
  const cam = camera('c', [frame('c', 0, anomalous.jpeg)], [normal.boxes[1]!, normal.boxes[1]!, normal.boxes[1]!], [{ threshold: 50 }, {}, {}]);
  cam.slots = cam.slots.map((s, i) => ({ ...s, model: i === 2 ? 'bare' : 'tile' }));
  const models = new Map([
    ['tile', { model, threshold: MODEL_THRESHOLD }],
    ['bare', { model }],
  ]);
  const outputs = await lastValueFrom(createShelfPipeline({ ...options([cam]), models }).outputs$.pipe(toArray()));
  const bySlot = Object.fromEntries(outputs.map((o) => [o.item.crop.slot, o.item.prediction]));
  t.is(bySlot.S0!.threshold, 50);
  t.false(bySlot.S0!.isAnomalous, 'the blotch stays under a slot threshold of 50');
  t.is(bySlot.S1!.threshold, MODEL_THRESHOLD);
  t.true(bySlot.S1!.isAnomalous);
  t.is(bySlot.S2!.threshold, model.manifest.thresholds.image);
  // Same crop, same model: the score does not depend on the threshold.
  t.is(bySlot.S0!.score, bySlot.S1!.score);
  t.is(bySlot.S1!.score, bySlot.S2!.score);
});

maybe('frames that do not decode are counted, reported and skipped; the camera goes on', async (t) => {
  const errors: string[] = [];
  const observer: PipelineObserver = { frameError: (_cam, f, kind, err) => errors.push(`${kind}:${f.sequence}:${err.message}`) };
  const truncated = normal.jpeg.subarray(0, Math.floor(normal.jpeg.length / 2));
  const frames = [frame('c', 0, Buffer.from('<html>not an image</html>')), frame('c', 1, truncated), frame('c', 2, normal.jpeg), frame('c', 3, Buffer.alloc(0))];
  const pipeline = createShelfPipeline(options([camera('c', frames)], { observer }));
  const outputs = await lastValueFrom(pipeline.outputs$.pipe(toArray()));
  t.is(outputs.length, 2, 'the one good frame gives both slots');
  t.true(outputs.every((o) => o.item.crop.frame.id === frames[2]!.id));
  t.like(pipeline.stats().cameras.c!, { framesIn: 4, framesScanned: 1, decodeErrors: 3 });
  t.is(errors.length, 3);
  // Frames in flight decode concurrently, so the reports come in completion order.
  const bySequence = [...errors].sort((a, b) => Number(a.split(':')[1]) - Number(b.split(':')[1]));
  t.regex(bySequence[0]!, /^decode:0:cannot decode image test:c#0: unsupported/);
  t.regex(bySequence[1]!, /^decode:1:.*truncated/);
  t.regex(bySequence[2]!, /^decode:3:.*empty/);
});

maybe('drop-oldest: with a slow model only the frame in flight and the newest pending ones are scanned', async (t) => {
  let calls = 0;
  const slow: BatchModel = {
    manifest: model.manifest,
    digest: model.digest,
    async scan(batch, n, thresholds) {
      calls++;
      await new Promise((r) => setTimeout(r, 300));
      return model.scan(batch, n, thresholds);
    },
  };
  const frames$ = new Subject<Frame>();
  const dropped: number[] = [];
  const pipeline = createShelfPipeline(
    options([camera('c', frames$)], { maxPendingFrames: 2, framesInFlight: 1, observer: { frameDropped: (_c, f) => dropped.push(f.sequence) } }, slow),
  );
  const done = lastValueFrom(pipeline.outputs$.pipe(toArray()));
  frames$.next(frame('c', 0, normal.jpeg));
  // Let frame 0 decode and reach the model, then flood the queue while the model is busy.
  await new Promise((r) => setTimeout(r, 150));
  for (let i = 1; i <= 7; i++) frames$.next(frame('c', i, normal.jpeg));
  t.like(pipeline.stats().cameras.c!, { pending: 2, inFlight: 1, framesDropped: 5 });
  frames$.complete();
  const outputs = await done;
  const scanned = [...new Set(outputs.map((o) => Number(o.item.crop.frame.id.split('-').at(-1))))];
  t.deepEqual(scanned, [0, 6, 7], 'frame in flight, then the two newest');
  t.deepEqual(dropped, [1, 2, 3, 4, 5]);
  t.like(pipeline.stats().cameras.c!, { framesIn: 8, framesScanned: 3, framesDropped: 5, pending: 0 });
  t.is(calls, 3);
});

maybe('frames in flight default to the model concurrency + 1: replicas stay busy while the next frame decodes', async (t) => {
  const slowReplicas = (concurrency: number): BatchModel => ({
    manifest: model.manifest,
    digest: model.digest,
    concurrency,
    async scan(batch, n, thresholds) {
      await new Promise((r) => setTimeout(r, 400));
      return model.scan(batch, n, thresholds);
    },
  });
  t.is(defaultFramesInFlight(new Map([['tile', { model }]])), 2);
  t.is(defaultFramesInFlight(new Map([['a', { model }], ['b', { model: slowReplicas(2) }]])), 3);
  for (const [concurrency, expected] of [[1, 2], [2, 3], [3, 4]] as const) {
    const frames$ = new Subject<Frame>();
    // One slot per frame: each frame is one batch, so only frames in flight can fill the replicas.
    const pipeline = createShelfPipeline(options([camera('c', frames$, [normal.boxes[0]!])], {}, slowReplicas(concurrency)));
    const done = lastValueFrom(pipeline.outputs$.pipe(toArray()));
    for (let i = 0; i < 6; i++) frames$.next(frame('c', i, normal.jpeg));
    await new Promise((r) => setTimeout(r, 250));
    t.like(pipeline.stats().cameras.c!, { inFlight: expected, pending: 6 - expected }, `concurrency ${concurrency}`);
    frames$.complete();
    t.is((await done).length, 6);
  }
});

maybe('a camera whose stream fails is reported and ends; the other cameras keep scanning', async (t) => {
  const failures: string[] = [];
  const broken = camera('broken', concat(of(frame('broken', 0, normal.jpeg)), throwError(() => new Error('camera unplugged'))));
  const healthy = camera('healthy', from([0, 1, 2].map((i) => frame('healthy', i, normal.jpeg))).pipe(delay(200)));
  const pipeline = createShelfPipeline(options([broken, healthy], { observer: { cameraError: (c, e) => failures.push(`${c}: ${e.message}`) } }));
  const outputs = await lastValueFrom(pipeline.outputs$.pipe(toArray()));
  t.deepEqual(failures, ['broken: camera unplugged']);
  t.is(outputs.filter((o) => o.item.crop.frame.camera === 'healthy').length, 6);
  t.is(pipeline.stats().cameras.broken!.failed, 'camera unplugged');
  t.is(pipeline.stats().cameras.healthy!.framesScanned, 3);
});

maybe('crops of several cameras share one batch, bounded by batchSize', async (t) => {
  const batches: number[] = [];
  const cams = ['a', 'b', 'c'].map((id) => camera(id, [frame(id, 0, normal.jpeg)]));
  // Hold every camera until all are subscribed, so their crops meet in the batcher.
  for (const c of cams) c.frames$ = c.frames$.pipe(delay(50));
  const pipeline = createShelfPipeline(options(cams, { batchSize: 4, batchWaitMs: 1000, observer: { batch: (_m, size) => batches.push(size) } }));
  const outputs = await lastValueFrom(pipeline.outputs$.pipe(toArray()));
  t.is(outputs.length, 6);
  t.deepEqual(batches, [4, 2], '6 crops from 3 cameras: one full batch of 4, then the rest after the wait');
  t.is(pipeline.stats().models.tile!.batches, 2);
  t.is(pipeline.stats().models.tile!.queued, 0);
});

maybe('wiring errors name the camera, slot and model', (t) => {
  const cam = camera('c', []);
  cam.slots = [{ id: 'A1', box: { x: 0, y: 0, width: 10, height: 10 }, model: 'drinks' }];
  t.throws(() => createShelfPipeline(options([cam])), { message: /camera c slot A1 uses model 'drinks', which is not loaded \(loaded: tile\)/ });
  t.throws(() => createShelfPipeline(options([camera('c', [])], { maxPendingFrames: 0 })), { message: /maxPendingFrames must be an integer ≥ 1/ });
});

maybe('unsubscribing stops the cameras and frees the batchers', async (t) => {
  const frames$ = new Subject<Frame>();
  const pipeline = createShelfPipeline(options([camera('c', frames$)]));
  const first = firstValueFrom(pipeline.outputs$);
  frames$.next(frame('c', 0, normal.jpeg));
  const out: ShelfOutput = await first;
  t.is(out.item.crop.frame.camera, 'c');
  t.false(frames$.observed, 'the camera stream was unsubscribed');
});

maybe('crops reach inference in capture order even when a later frame decodes first (a model swap splits frames cleanly)', async (t) => {
  // Frame 0: the normal shelf on a 4000×4000 canvas (slow to decode); frame 1: the blotched shelf
  // at its own size (fast). One slot, on the blotched tile, so the two crops differ.
  const meta = await sharp(normal.jpeg).metadata();
  const big = await sharp(normal.jpeg).extend({ right: 4000 - meta.width!, bottom: 4000 - meta.height!, background: '#ffffff' }).jpeg({ quality: 90 }).toBuffer();
  const seen: number[] = [];
  const plane = 3 * 224 * 224;
  const recording: BatchModel = {
    manifest: model.manifest,
    digest: model.digest,
    async scan(batch, n, thresholds) {
      for (let i = 0; i < n; i++) seen.push(batch.subarray(i * plane, (i + 1) * plane).reduce((a, v) => a + v, 0));
      return model.scan(batch, n, thresholds);
    },
  };
  const started: number[] = [];
  const pipeline = createShelfPipeline(
    options([camera('c', [frame('c', 0, big), frame('c', 1, anomalous.jpeg)], [normal.boxes[1]!])], { framesInFlight: 2, observer: { frameStarted: (_c, f) => started.push(f.sequence) } }, recording),
  );
  const outputs = await lastValueFrom(pipeline.outputs$.pipe(toArray()));
  t.deepEqual(started, [0, 1], 'both frames were in flight together');
  t.deepEqual(outputs.map((o) => o.item.crop.frame.id.split('-').at(-1)), ['0', '1']);
  t.is(seen.length, 2);
  // Fingerprints of each frame's crop, scanned alone.
  const alone = async (data: Buffer) => {
    const before = seen.length;
    await lastValueFrom(createShelfPipeline(options([camera('c', [frame('c', 0, data)], [normal.boxes[1]!])], {}, recording)).outputs$.pipe(toArray()));
    return seen[before]!;
  };
  const [fp0, fp1] = [await alone(big), await alone(anomalous.jpeg)];
  t.not(fp0, fp1);
  t.deepEqual(seen.slice(0, 2), [fp0, fp1], 'frame 0\'s crop went to the model before frame 1\'s');
});

maybe('a big frame is decoded shrunk on load when every slot allows it; boxes and regions stay in full-resolution pixels', async (t) => {
  // 1400 px slots for a 224 px model: floor(1400 / 448) = 3, so a third of each side is decoded.
  const big = await tileFrame(await unseenTiles(2), { tileSize: 1400, blotch: [1] });
  const run = async (shrinkOnLoad: boolean | undefined) => {
    const cam: PipelineCamera = { ...camera('big', [frame('big', 0, big.jpeg)], big.boxes), shrinkOnLoad };
    const pipeline = createShelfPipeline(options([cam], { debounce: { raiseAfter: 1, window: 1, clearAfter: 1 } }));
    const outputs = await lastValueFrom(pipeline.outputs$.pipe(toArray()));
    return { outputs, stats: pipeline.stats().cameras.big! };
  };
  const shrunk = await run(undefined);
  const full = await run(false);
  t.is(shrunk.stats.decodeShrink, 3, 'shrinkOnLoad defaults to on');
  t.is(full.stats.decodeShrink, 1);
  for (const { outputs } of [shrunk, full]) {
    t.deepEqual(outputs.map((o) => [o.item.crop.slot, o.item.prediction.isAnomalous, o.event?.type ?? null]), [['S0', false, null], ['S1', true, 'new']]);
    t.deepEqual(outputs.map((o) => o.item.crop.box), big.boxes, 'crop boxes in frame pixels');
    const ev = outputs[1]!.event!.after;
    for (const r of ev.regions) t.true(inside(r.box, big.boxes[1]!), `region ${JSON.stringify(r.box)} outside the slot`);
    t.true(overlaps(ev.regions[0]!.box, big.blotches.get(1)!), 'the strongest region is on the blotch, in full-resolution pixels');
    const thumb = await sharp(outputs[1]!.thumbnail!.jpeg).metadata();
    t.is(Math.max(thumb.width!, thumb.height!), 320);
  }
  // The model sees nearly the same input either way.
  for (let i = 0; i < 2; i++) {
    const [a, b] = [shrunk.outputs[i]!.item.prediction.score, full.outputs[i]!.item.prediction.score];
    t.true(Math.abs(a - b) < 0.1 * b, `slot ${i}: score ${a} shrunk vs ${b} full`);
  }
});

// ---------------------------------------------------------------- review fixes, with a synthetic model (no shared data needed)
// Abandoned frames after a teardown, a failing slot or hook not costing the frame, minRegionAreaFraction
// validation, and thumbnail flags that match what was published.

import type { DebounceState } from '../pipelines/debounce.js';
import type { ScanPrediction } from '../models/types.js';
import type { Box } from '../pipelines/types.js';

const SYN = 32;

/**
 * Darkness model: map = 1 − mean(rgb) per input cell, score = 10 × max, anomalous over the
 * threshold (5), mask = darkness > 0.5. `gate(call)` may hold a call; `badMask(max)` makes the
 * prediction of a crop with that peak darkness carry a mask of the wrong length.
 */
function darkModel(o: { gate?: (call: number) => Promise<void> | undefined; badMask?: (max: number) => boolean; delayMs?: number } = {}): BatchModel & { calls: number } {
  const m = {
    calls: 0,
    manifest: { inputSize: SYN, normalization: { mean: [0, 0, 0] as [number, number, number], std: [1, 1, 1] as [number, number, number] }, thresholds: { image: 5 } },
    digest: 'dark',
    async scan(batch: Float32Array, n: number, thresholds: { image?: number }[]): Promise<ScanPrediction[]> {
      const call = ++m.calls;
      await o.gate?.(call);
      if (o.delayMs) await new Promise((r) => setTimeout(r, o.delayMs));
      const plane = SYN * SYN;
      const out: ScanPrediction[] = [];
      for (let i = 0; i < n; i++) {
        const base = i * 3 * plane;
        const map = new Float32Array(plane);
        let max = 0;
        for (let p = 0; p < plane; p++) {
          const v = 1 - (batch[base + p]! + batch[base + plane + p]! + batch[base + 2 * plane + p]!) / 3;
          map[p] = v;
          if (v > max) max = v;
        }
        const threshold = thresholds[i]?.image ?? 5;
        const anomalous = 10 * max > threshold;
        const mask = new Uint8Array(o.badMask?.(max) ? 10 : plane);
        for (let p = 0; p < mask.length; p++) mask[p] = map[p]! > 0.5 ? 1 : 0;
        out.push({ score: 10 * max, normalizedScore: max, anomalyMap: anomalous ? map : null, mask: anomalous ? mask : null, mapSize: SYN, threshold, isAnomalous: anomalous, modelDigest: m.digest });
      }
      return out;
    },
  };
  return m;
}

/** A white PNG with filled rectangles (default black). */
async function synFrame(width: number, height: number, rects: (Box & { color?: string })[] = []): Promise<Buffer> {
  const composite = await Promise.all(
    rects.map(async (b) => ({ input: await sharp({ create: { width: b.width, height: b.height, channels: 3, background: b.color ?? '#000000' } }).png().toBuffer(), left: b.x, top: b.y })),
  );
  return sharp({ create: { width, height, channels: 3, background: '#ffffff' } }).composite(composite).png().toBuffer();
}

const LEFT: Box = { x: 0, y: 0, width: 200, height: 200 };
const RIGHT: Box = { x: 200, y: 0, width: 200, height: 200 };

test('a camera whose stream fails with a frame in flight abandons the frame: no debounce state, no event, nothing counted', async (t) => {
  const dark = await synFrame(400, 200, [{ x: 20, y: 20, width: 100, height: 100 }]);
  const frames$ = new Subject<Frame>();
  const states = new Map<string, DebounceState>();
  const seen: string[] = [];
  const pipeline = createShelfPipeline(
    pipelineOptions(frames$, darkModel({ delayMs: 100 }), {
      debounceStates: states,
      observer: { event: (e) => seen.push(`event ${e.type}`), frameScanned: () => seen.push('frameScanned'), frameError: (_c, _f, kind) => seen.push(`frameError ${kind}`), cameraError: (_c, e) => seen.push(`cameraError ${e.message}`) },
    }),
  );
  const done = lastValueFrom(pipeline.outputs$.pipe(toArray()));
  frames$.next(frame('c', 0, dark));
  setTimeout(() => frames$.error(new Error('rtsp dropped')), 30);
  t.deepEqual(await done, []);
  await until('the abandoned frame to finish', () => pipeline.stats().cameras.c!.inFlight === 0);
  await new Promise((r) => setTimeout(r, 50));
  t.deepEqual(seen, ['cameraError rtsp dropped'], 'the abandoned frame raised no event that was never published');
  t.is(states.size, 0, 'and left the shared debounce states alone');
  t.like(pipeline.stats().cameras.c!, { framesScanned: 0, inferenceErrors: 0, inFlight: 0, events: { new: 0, update: 0, end: 0 }, failed: 'rtsp dropped' });
});

test('unsubscribing with frames in flight: they change no debounce state and fire no event, and the crops the closed batcher rejects are no inference errors', async (t) => {
  const dark = await synFrame(400, 200, [{ x: 20, y: 20, width: 100, height: 100 }]);
  let open!: () => void;
  const gate = new Promise<void>((r) => (open = r));
  // Call 1 (frame 0) runs at once; call 2 (frame 1) waits for the gate; frame 2's crop queues behind it.
  const m = darkModel({ gate: (call) => (call >= 2 ? gate : undefined) });
  const frames$ = new Subject<Frame>();
  const states = new Map<string, DebounceState>();
  const events: string[] = [];
  const errors: string[] = [];
  const pipeline = createShelfPipeline(
    pipelineOptions(frames$, m, {
      debounceStates: states,
      framesInFlight: 3,
      batchSize: 1,
      debounce: { raiseAfter: 1, window: 5, clearAfter: 1 },
      observer: { event: (e) => events.push(e.type), frameError: (_c, f, kind, e) => errors.push(`${f.sequence} ${kind} ${e.message}`) },
    }),
  );
  const outputs: ShelfOutput[] = [];
  const sub = pipeline.outputs$.subscribe((o) => outputs.push(o));
  for (let i = 0; i < 3; i++) frames$.next(frame('c', i, dark));
  await until('frame 0 out and frame 1 in the model', () => outputs.length === 1 && m.calls === 2);
  await new Promise((r) => setTimeout(r, 20)); // frame 2's crop reaches the batcher
  const atUnsubscribe = JSON.stringify([...states]);
  sub.unsubscribe();
  open();
  await until('the abandoned frames to finish', () => pipeline.stats().cameras.c!.inFlight === 0);
  await new Promise((r) => setTimeout(r, 50));
  t.deepEqual(outputs.map((o) => o.item.crop.frame.id), [frame('c', 0, dark).id]);
  t.deepEqual(events, ['new'], 'only the event that was emitted');
  t.is(JSON.stringify([...states]), atUnsubscribe, 'frame 1 (scored after the unsubscribe) did not step the state');
  t.deepEqual(states.get('c/s0')?.history, [true]);
  t.deepEqual(errors, []);
  t.like(pipeline.stats().cameras.c!, { framesScanned: 1, inferenceErrors: 0, inFlight: 0, pending: 0, events: { new: 1, update: 0, end: 0 } });
});

test('an observer hook that throws is counted and reported; the frame still emits every slot (event) and the process lives (frameDropped)', async (t) => {
  const dark = await synFrame(400, 200, [{ x: 20, y: 20, width: 100, height: 100 }]);
  const states = new Map<string, DebounceState>();
  const reported: string[] = [];
  const pipeline = createShelfPipeline(
    pipelineOptions(from([frame('c', 0, dark)]), darkModel(), {
      debounceStates: states,
      observer: {
        event: () => {
          throw new Error('listener bug');
        },
        observerError: (hook, e) => reported.push(`${hook}: ${e.message}`),
      },
    }, [LEFT, RIGHT]),
  );
  const outputs = await lastValueFrom(pipeline.outputs$.pipe(toArray()));
  t.deepEqual(outputs.map((o) => [o.item.crop.slot, o.event?.type ?? null]), [['s0', 'new'], ['s1', null]]);
  t.deepEqual(reported, ['event: listener bug']);
  t.is(pipeline.stats().observerErrors, 1);
  t.deepEqual([...states.values()].map((s) => s.state), ['anomalous', 'ok']);

  // frameDropped throwing used to escape as an unhandled error (uncaughtException).
  let uncaught: unknown = null;
  const onUncaught = (e: unknown) => (uncaught = e);
  process.on('uncaughtException', onUncaught);
  try {
    const frames$ = new Subject<Frame>();
    const failures: string[] = [];
    const dropping = createShelfPipeline(
      pipelineOptions(frames$, darkModel({ delayMs: 100 }), {
        maxPendingFrames: 1,
        framesInFlight: 1,
        observer: {
          frameDropped: () => {
            throw new Error('metrics bug');
          },
          cameraError: (_c, e) => failures.push(e.message),
        },
      }),
    );
    const done = lastValueFrom(dropping.outputs$.pipe(toArray()));
    for (let i = 0; i < 4; i++) frames$.next(frame('c', i, dark));
    frames$.complete();
    const out = await done;
    await new Promise((r) => setTimeout(r, 20));
    t.is(uncaught, null);
    t.deepEqual(failures, [], 'the camera did not fail either');
    t.deepEqual(out.map((o) => o.item.crop.frame.id), [frame('c', 0, dark).id, frame('c', 3, dark).id], 'frame in flight, then the newest');
    t.like(dropping.stats(), { observerErrors: 2, cameras: { c: { framesDropped: 2, pending: 0 } } });
  } finally {
    process.off('uncaughtException', onUncaught);
  }
});

test('minRegionAreaFraction is checked at construction, and one slot that fails post-processing costs only that slot', async (t) => {
  const never = new Subject<Frame>();
  for (const bad of [1.5, -0.1, Number.NaN]) {
    t.throws(() => createShelfPipeline(pipelineOptions(never, darkModel(), { minRegionAreaFraction: bad })), { message: /minRegionAreaFraction must be a number in \[0, 1\], got/ });
  }
  t.notThrows(() => createShelfPipeline(pipelineOptions(never, darkModel(), { minRegionAreaFraction: 1 })));

  // s0: black square (peak darkness 1); s1: grey square (≈0.6, still anomalous), for which the
  // model returns a mask of the wrong length → toRegions throws for s1 only.
  const data = await synFrame(400, 200, [{ x: 20, y: 20, width: 100, height: 100 }, { x: 220, y: 20, width: 100, height: 100, color: '#666666' }]);
  const states = new Map<string, DebounceState>();
  const errors: string[] = [];
  const pipeline = createShelfPipeline(
    pipelineOptions(from([frame('c', 0, data), frame('c', 1, data)]), darkModel({ badMask: (max) => max < 0.8 }), {
      debounceStates: states,
      observer: { frameError: (_c, f, kind, e, slot) => errors.push(`${f.sequence} ${kind} ${slot}: ${e.message}`) },
    }, [LEFT, RIGHT]),
  );
  const outputs = await lastValueFrom(pipeline.outputs$.pipe(toArray()));
  t.deepEqual(outputs.map((o) => [o.item.crop.frame.id.split('-').at(-1), o.item.crop.slot, o.event?.type ?? null]), [['0', 's0', 'new'], ['1', 's0', null]]);
  t.is(errors.length, 2);
  for (const e of errors) t.regex(e, /^\d (postprocess) s1: toRegions: mask has 10 values/);
  t.false(states.has('c/s1'), 'the failed slot\'s state was not touched');
  t.like(pipeline.stats().cameras.c!, { framesScanned: 2, postprocessErrors: 2, inferenceErrors: 0, events: { new: 1, update: 0, end: 0 } });
});

test('event snapshots claim a thumbnail only when one was published: a restored period ending on its first scan, a render that fails', async (t) => {
  const white = await synFrame(400, 200);
  const restored: DebounceState = {
    camera: 'c', slot: 's0', state: 'anomalous', since: 1_600_000_000_000, lastScore: 9, history: [true, true, true], normalStreak: 1,
    reported: { score: 9, regions: [] }, raises: 1, raisedIn: 'previous-run',
  };
  const states = new Map([['c/s0', restored]]);
  const ended = await lastValueFrom(
    createShelfPipeline(pipelineOptions(from([frame('c', 0, white)]), darkModel(), { debounceStates: states, debounce: { raiseAfter: 2, window: 3, clearAfter: 2 } })).outputs$.pipe(toArray()),
  );
  t.is(ended[0]!.event?.type, 'end');
  t.is(ended[0]!.thumbnail, null);
  t.false(ended[0]!.event!.before!.thumbnail, 'no thumbnail was published for the clearing scan');
  t.false(ended[0]!.event!.after.thumbnail);

  // Thumbnails on, but every render fails (here: a quality the renderer refuses).
  const dark = await synFrame(400, 200, [{ x: 20, y: 20, width: 100, height: 100 }]);
  const errors: string[] = [];
  const pipeline = createShelfPipeline(
    pipelineOptions(from([frame('c', 0, dark), frame('c', 1, white)]), darkModel(), { thumbnails: { quality: 0 }, observer: { frameError: (_c, _f, kind) => errors.push(kind) } }),
  );
  const outputs = await lastValueFrom(pipeline.outputs$.pipe(toArray()));
  t.deepEqual(outputs.map((o) => o.event?.type), ['new', 'end']);
  t.is(outputs[0]!.thumbnail, null);
  t.false(outputs[0]!.event!.after.thumbnail, 'the render failed: no thumbnail published');
  t.false(outputs[1]!.event!.before!.thumbnail);
  t.deepEqual(errors, ['thumbnail']);
  t.is(pipeline.stats().cameras.c!.thumbnailErrors, 1);
  // A render that succeeds still says true.
  const ok = await lastValueFrom(createShelfPipeline(pipelineOptions(from([frame('c', 0, dark)]), darkModel())).outputs$.pipe(toArray()));
  t.not(ok[0]!.thumbnail, null);
  t.true(ok[0]!.event!.after.thumbnail);
});
