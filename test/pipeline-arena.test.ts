/**
 * The shelf pipeline decodes JPEG frames into the pixel arena (models/pixel-arena.ts): slots are
 * read in place and every frame's buffer goes back to the arena once the frame is done, whether
 * it was scanned, abandoned by a teardown or failed. Serial: the arena is the process's.
 */
import test from 'ava';
import { lastValueFrom, Subject, toArray } from 'rxjs';
import sharp from 'sharp';
import { allocateKernelBatch, pixelArenaStats } from '../models/resize-kernel.js';
import { turboJpeg } from '../models/turbojpeg.js';
import type { ScanPrediction } from '../models/types.js';
import { createShelfPipeline, type BatchModel } from '../pipelines/shelf-pipeline.js';
import type { Box, Frame } from '../pipelines/types.js';
import { noiseRgb } from './helpers/noise.js';
import { pipelineOptions, until } from './helpers/pipeline-fixture.js';

const maybe = turboJpeg() ? test.serial : test.skip;
const SIZE = 32;

/** Darkness model (map = 1 − mean RGB), anomalous when 10 × the darkest cell > 5; batches in the arena like a worker model's. */
function darkModel(gate?: (call: number) => Promise<void> | undefined): BatchModel & { calls: number } {
  const m = {
    calls: 0,
    manifest: { inputSize: SIZE, normalization: { mean: [0, 0, 0] as [number, number, number], std: [1, 1, 1] as [number, number, number] }, thresholds: { image: 5 } },
    digest: 'dark',
    allocateBatch: (values: number) => allocateKernelBatch(values),
    async scan(batch: Float32Array, n: number): Promise<ScanPrediction[]> {
      const call = ++m.calls;
      await gate?.(call);
      const plane = SIZE * SIZE;
      return Array.from({ length: n }, (_, i) => {
        const map = new Float32Array(plane);
        let max = 0;
        for (let p = 0; p < plane; p++) {
          const base = i * 3 * plane + p;
          map[p] = 1 - (batch[base]! + batch[base + plane]! + batch[base + 2 * plane]!) / 3;
          max = Math.max(max, map[p]!);
        }
        const anomalous = 10 * max > 5;
        const mask = Uint8Array.from(map, (v) => (v > 0.5 ? 1 : 0));
        return { score: 10 * max, normalizedScore: max, anomalyMap: anomalous ? map : null, mask: anomalous ? mask : null, mapSize: SIZE, threshold: 5, isAnomalous: anomalous, modelDigest: 'dark' };
      });
    },
  };
  return m;
}

/** A white 400×200 JPEG, with a black square in the left slot when `dark`. */
async function jpegFrame(dark: boolean): Promise<Buffer> {
  const composite = dark ? [{ input: await sharp({ create: { width: 100, height: 100, channels: 3, background: '#000000' } }).png().toBuffer(), left: 20, top: 20 }] : [];
  return sharp({ create: { width: 400, height: 200, channels: 3, background: '#ffffff' } }).composite(composite).jpeg({ quality: 95 }).toBuffer();
}

const frame = (sequence: number, data: Buffer): Frame => ({ id: `c:${sequence}`, camera: 'c', sequence, capturedAt: 1_700_000_000_000 + sequence * 1000, data, origin: `c#${sequence}` });

// The left slot is resized to the model's 32 px, the 32×32 one at the right goes through the table.
const BOXES: Box[] = [
  { x: 0, y: 0, width: 200, height: 200 },
  { x: 300, y: 100, width: SIZE, height: SIZE },
];

maybe('scanned frames: slots read in place score as they should, and each frame\'s buffer is back in the arena after it, reused by the next', async (t) => {
  const [dark, white] = await Promise.all([jpegFrame(true), jpegFrame(false)]);
  const frames$ = new Subject<Frame>();
  const pipeline = createShelfPipeline(pipelineOptions(frames$, darkModel(), {}, BOXES));
  const done = lastValueFrom(pipeline.outputs$.pipe(toArray()));
  // After the first frame: the batch buffers are allocated (in the arena too) and that frame is done.
  let base = pixelArenaStats();
  for (let i = 0; i < 6; i++) {
    frames$.next(frame(i, i % 2 === 0 ? dark : white));
    await until(`frame ${i}`, () => pipeline.stats().cameras.c!.framesScanned === i + 1);
    if (i === 0) base = pixelArenaStats();
  }
  frames$.complete();
  const outputs = await done;
  const events = outputs.filter((o) => o.event).map((o) => `${o.item.crop.slot} ${o.event!.type}`);
  t.deepEqual(events, ['s0 new', 's0 end', 's0 new', 's0 end', 's0 new', 's0 end'], 'the dark square is seen in the left slot only');
  t.true(outputs.filter((o) => o.item.crop.slot === 's1').every((o) => !o.item.prediction.isAnomalous));
  const after = pixelArenaStats();
  t.is(after.framesInUse, 0, 'every frame buffer went back');
  t.true(after.reused - base.reused >= 4, `frames reused the buffer (${after.reused - base.reused} times)`);
});

maybe('frames abandoned by a teardown give their buffers back once their crops are settled', async (t) => {
  const dark = await jpegFrame(true);
  let open!: () => void;
  const gate = new Promise<void>((r) => (open = r));
  const m = darkModel((call) => (call >= 2 ? gate : undefined));
  const frames$ = new Subject<Frame>();
  const pipeline = createShelfPipeline(pipelineOptions(frames$, m, { framesInFlight: 3, batchSize: 2 }, BOXES));
  const sub = pipeline.outputs$.subscribe();
  frames$.next(frame(0, dark));
  await until('frame 0', () => pipeline.stats().cameras.c!.framesScanned === 1);
  t.is(pixelArenaStats().framesInUse, 0);
  for (let i = 1; i < 3; i++) frames$.next(frame(i, dark));
  await until('frame 1 in the model', () => m.calls === 2);
  await new Promise((r) => setTimeout(r, 20));
  t.is(pixelArenaStats().framesInUse, 2, 'frames 1 and 2 hold their buffers');
  sub.unsubscribe();
  open();
  await until('the abandoned frames to finish', () => pipeline.stats().cameras.c!.inFlight === 0);
  await until('their buffers to be back', () => pixelArenaStats().framesInUse === 0);
  t.pass();
});

maybe('frames abandoned before their crops were submitted (a teardown while an earlier frame still decodes) give their buffers back too', async (t) => {
  // Frame 0 is big (its decode takes a while), frame 1 small: frame 1 decodes first and waits for
  // frame 0 to submit; the teardown comes meanwhile, so neither submits a crop.
  const big = await sharp(noiseRgb(3000, 2000, 7), { raw: { width: 3000, height: 2000, channels: 3 } }).jpeg({ quality: 95 }).toBuffer();
  const small = await jpegFrame(true);
  const m = darkModel();
  const frames$ = new Subject<Frame>();
  const pipeline = createShelfPipeline(pipelineOptions(frames$, m, { framesInFlight: 2 }, BOXES));
  const sub = pipeline.outputs$.subscribe();
  frames$.next(frame(0, small));
  await until('frame 0', () => pipeline.stats().cameras.c!.framesScanned === 1);
  t.is(pixelArenaStats().framesInUse, 0);
  frames$.next(frame(1, big));
  frames$.next(frame(2, small));
  await until('both frames decoding', () => pixelArenaStats().framesInUse === 0 + 2);
  sub.unsubscribe();
  await until('the abandoned frames to finish', () => pipeline.stats().cameras.c!.inFlight === 0);
  await until('their buffers to be back', () => pixelArenaStats().framesInUse === 0)
  await until('their buffers to be back', () => pixelArenaStats().framesInUse === 0);
  t.is(m.calls, 1, 'no crop of frames 1 and 2 reached the model');
});
