import test, { type ExecutionContext } from 'ava';
import { Subject, from, lastValueFrom, map, of, range, timer, toArray } from 'rxjs';
import { TestScheduler } from 'rxjs/testing';
import type { Prediction } from '../models/types.js';
import { DropOldestBuffer, dropOldestWhileBusy } from '../pipelines/bounded-queue.js';
import { debounceSlots, decisionOf, step, validateDebounceOptions, type DebounceOptions, type DebounceState, type SlotDecision } from '../pipelines/debounce.js';
import { EventBuilder, eventId, slotStatePayload, toEvents, toSlotOutputs } from '../pipelines/events.js';
import { inferInBatches, microBatch } from '../pipelines/micro-batch.js';
import { SlotBoxError, checkSlotBox, frameShrinkLimit, pixelBox, planCrops, refineBox, type RawLike } from '../pipelines/planogram.js';
import { toRegions, toSlotPrediction } from '../pipelines/postprocess.js';
import type { Box, Region, SlotPrediction } from '../pipelines/types.js';

const scheduler = (t: ExecutionContext) => new TestScheduler((actual, expected) => t.deepEqual(actual, expected));
const settle = () => new Promise<void>((resolve) => setImmediate(resolve));

// ---------------------------------------------------------------- micro-batch

test('microBatch flushes full batches at once, partial ones maxWaitMs after their first item, and the rest on completion', (t) => {
  scheduler(t).run(({ cold, expectObservable }) => {
    // a..d at 1..4, e at 20, complete at 21
    const source = cold('-abcd 15ms e|');
    // [a,b,c] full at 3; d waits from 4 → flushed at 14; e flushed by completion at 21
    expectObservable(source.pipe(microBatch({ maxSize: 3, maxWaitMs: 10 }))).toBe('---x 10ms y 6ms (z|)', {
      x: ['a', 'b', 'c'],
      y: ['d'],
      z: ['e'],
    });
  });
});

test('microBatch starts the wait at the first item of a batch, not on a fixed grid', (t) => {
  scheduler(t).run(({ cold, expectObservable }) => {
    // a at 0, b at 5, c at 12, complete at 40
    const source = cold('a 4ms b 6ms c 27ms |');
    expectObservable(source.pipe(microBatch({ maxSize: 8, maxWaitMs: 10 }))).toBe('10ms x 11ms y 17ms |', {
      x: ['a', 'b'],
      y: ['c'],
    });
  });
});

test('microBatch forwards an error and discards the pending items', (t) => {
  scheduler(t).run(({ cold, expectObservable }) => {
    expectObservable(cold('ab#').pipe(microBatch({ maxSize: 5, maxWaitMs: 10 }))).toBe('--#');
  });
});

test('microBatch rejects bad options with the option name', (t) => {
  t.throws(() => microBatch({ maxSize: 0, maxWaitMs: 10 }), { message: /maxSize must be an integer ≥ 1, got 0/ });
  t.throws(() => microBatch({ maxSize: 2, maxWaitMs: -1 }), { message: /maxWaitMs .* got -1/ });
});

function deferredInfer() {
  const calls: number[][] = [];
  const resolvers: (() => void)[] = [];
  const infer = (items: number[]) => {
    calls.push(items);
    return new Promise<string[]>((resolve) => resolvers.push(() => resolve(items.map((x) => `r${x}`))));
  };
  return { calls, resolvers, infer };
}

test('inferInBatches runs one batch at a time and emits per-item results in order', async (t) => {
  const { calls, resolvers, infer } = deferredInfer();
  const batches = new Subject<number[]>();
  const out: string[] = [];
  let completed = false;
  batches.pipe(inferInBatches(infer)).subscribe({ next: (r) => out.push(r), complete: () => (completed = true) });
  batches.next([1, 2]);
  batches.next([3]);
  batches.complete();
  await settle();
  t.deepEqual(calls, [[1, 2]], 'the second batch waits for the first');
  resolvers[0]();
  await settle();
  t.deepEqual(out, ['r1', 'r2']);
  t.deepEqual(calls, [[1, 2], [3]]);
  t.false(completed);
  resolvers[1]();
  await settle();
  t.deepEqual(out, ['r1', 'r2', 'r3']);
  t.true(completed);
});

test('inferInBatches with concurrency 2 keeps input order when batches resolve out of order', async (t) => {
  const { calls, resolvers, infer } = deferredInfer();
  const batches = new Subject<number[]>();
  const out: string[] = [];
  batches.pipe(inferInBatches(infer, { concurrency: 2 })).subscribe((r) => out.push(r));
  batches.next([1]);
  batches.next([2, 3]);
  batches.next([4]);
  await settle();
  t.deepEqual(calls, [[1], [2, 3]]);
  resolvers[1]();
  await settle();
  t.deepEqual(out, [], 'batch 2 is held until batch 1 is out');
  t.deepEqual(calls, [[1], [2, 3], [4]]);
  resolvers[0]();
  await settle();
  t.deepEqual(out, ['r1', 'r2', 'r3']);
});

test('inferInBatches errors when infer returns the wrong number of results', async (t) => {
  const op = inferInBatches(async (items: number[]) => items.slice(1));
  await t.throwsAsync(lastValueFrom(from([[1, 2, 3]]).pipe(op)), { message: 'inferInBatches: infer returned 2 results for a batch of 3 items' });
});

// ---------------------------------------------------------------- bounded queue

test('DropOldestBuffer keeps the newest `capacity` items in FIFO order and counts drops', (t) => {
  const buffer = new DropOldestBuffer<number>(3);
  const dropped: number[] = [];
  for (let i = 1; i <= 5; i++) {
    const r = buffer.push(i);
    if (r.dropped) dropped.push(r.item as number);
  }
  t.deepEqual(dropped, [1, 2]);
  t.is(buffer.dropped, 2);
  t.is(buffer.length, 3);
  t.deepEqual([buffer.shift(), buffer.shift(), buffer.shift(), buffer.shift()], [3, 4, 5, undefined]);
  t.throws(() => new DropOldestBuffer(0), { message: /capacity must be an integer ≥ 1, got 0/ });
});

test('dropOldestWhileBusy holds at most `capacity` waiting items and drops the oldest (virtual time)', (t) => {
  const dropped: string[] = [];
  scheduler(t).run(({ cold, expectObservable }) => {
    // Capture: a..h at 0..7, then complete. Inference takes 10 ms per item.
    const frames = cold('abcdefgh|');
    const slowInference = (f: string) => timer(10).pipe(map(() => f));
    // a starts at once; b..h arrive while busy, only the 2 newest (g, h) survive.
    expectObservable(frames.pipe(dropOldestWhileBusy(slowInference, { capacity: 2, onDrop: (f) => dropped.push(f) }))).toBe(
      '10ms a 9ms g 9ms (h|)',
    );
  });
  t.deepEqual(dropped, ['b', 'c', 'd', 'e', 'f']);
});

test('dropOldestWhileBusy with concurrency 2 works on two items at once', (t) => {
  const dropped: string[] = [];
  scheduler(t).run(({ cold, expectObservable }) => {
    const slow = (f: string) => timer(10).pipe(map(() => f));
    // a, b start at 0, 1; c waits; d pushes c out; d starts when a is done (10) and ends at 20.
    expectObservable(cold('abcd|').pipe(dropOldestWhileBusy(slow, { capacity: 1, concurrency: 2, onDrop: (f) => dropped.push(f) }))).toBe(
      '10ms ab 8ms (d|)',
    );
  });
  t.deepEqual(dropped, ['c']);
});

test('dropOldestWhileBusy applies backpressure to a slow async consumer: bounded, exact drop count, order kept', async (t) => {
  let active = 0;
  let maxActive = 0;
  let dropped = 0;
  const slowConsumer = async (i: number) => {
    active += 1;
    maxActive = Math.max(maxActive, active);
    await settle();
    await settle();
    active -= 1;
    return i;
  };
  // A burst of 1000 frames arrives synchronously while the first one is being processed.
  const kept = await lastValueFrom(range(0, 1000).pipe(dropOldestWhileBusy(slowConsumer, { capacity: 4, onDrop: () => (dropped += 1) }), toArray()));
  t.deepEqual(kept, [0, 996, 997, 998, 999]);
  t.is(dropped, 995);
  t.is(maxActive, 1);
});

test('dropOldestWhileBusy never drops when the worker keeps up (synchronous worker)', async (t) => {
  let dropped = 0;
  const out = await lastValueFrom(range(0, 10).pipe(dropOldestWhileBusy((i) => of(i * 2), { capacity: 1, onDrop: () => (dropped += 1) }), toArray()));
  t.deepEqual(out, [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]);
  t.is(dropped, 0);
});

test('dropOldestWhileBusy forwards a worker error', async (t) => {
  const failing = async (i: number) => {
    if (i === 1) throw new Error('inference failed on 1');
    return i;
  };
  await t.throwsAsync(lastValueFrom(from([0, 1, 2]).pipe(dropOldestWhileBusy(failing, { capacity: 4 }))), { message: 'inference failed on 1' });
});

// ---------------------------------------------------------------- planogram

const frame640 = { width: 640, height: 480 };

test('checkSlotBox keeps a box inside the frame and clips one that overshoots a little, with a warning', (t) => {
  t.deepEqual(checkSlotBox('cam1', 'A1', { x: 10, y: 20, width: 100, height: 200 }, frame640), {
    box: { x: 10, y: 20, width: 100, height: 200 },
    clipped: false,
  });
  // 50×100 box, 40×80 of it inside: 64 % inside → clipped
  const r = checkSlotBox('cam1', 'A1', { x: 600, y: 400, width: 50, height: 100 }, frame640);
  t.deepEqual(r.box, { x: 600, y: 400, width: 40, height: 80 });
  t.true(r.clipped);
  t.is(
    r.warning,
    'camera cam1 slot A1: box [600, 400, 50, 100] sticks 36.0% outside the 640×480 frame; clipped to [600, 400, 40, 80]',
  );
});

test('checkSlotBox rejects boxes mostly or entirely outside the frame, or malformed, naming camera, slot, box and frame', (t) => {
  const err = t.throws(() => checkSlotBox('cam1', 'A1', { x: 620, y: 0, width: 100, height: 100 }, frame640), { instanceOf: SlotBoxError });
  t.is(err?.message, 'camera cam1 slot A1: box [620, 0, 100, 100] (x, y, width, height) lies 80.0% outside the frame (frame is 640×480)');
  t.throws(() => checkSlotBox('cam1', 'B2', { x: 700, y: 0, width: 10, height: 10 }, frame640), { message: /slot B2: .*entirely outside.*640×480/ });
  t.throws(() => checkSlotBox('cam1', 'B2', { x: 0, y: 0, width: 0, height: 10 }, frame640), { message: /positive width and height/ });
  t.throws(() => checkSlotBox('cam1', 'B2', { x: 0.5, y: 0, width: 10, height: 10 }, frame640), { message: /non-integer x \(0\.5\)/ });
});

/** A white frame (with a slightly bluish-grey shelf band) and coloured rectangles on it. */
function shelfImage(width: number, height: number, rects: { box: Box; rgb: [number, number, number] }[]): RawLike {
  const data = new Uint8Array(width * height * 3);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const p = (y * width + x) * 3;
      const shelf = y >= 85 ? [225, 228, 235] : [250, 250, 250];
      data.set(shelf, p);
    }
  }
  for (const { box, rgb } of rects) {
    for (let y = box.y; y < box.y + box.height; y++) {
      for (let x = box.x; x < box.x + box.width; x++) data.set(rgb, (y * width + x) * 3);
    }
  }
  return { data, width, height, channels: 3 };
}

const slotBox: Box = { x: 20, y: 10, width: 100, height: 80 };
const speck = (x: number, y: number) => ({ box: { x, y, width: 1, height: 1 }, rgb: [20, 20, 20] as [number, number, number] });

test('refineBox tightens to the product plus a 4 % margin, ignoring specks and small blobs', (t) => {
  const rgb = shelfImage(200, 100, [
    { box: { x: 50, y: 30, width: 30, height: 40 }, rgb: [200, 30, 30] }, // the product (1200 px)
    speck(25, 15),
    speck(110, 80),
    { box: { x: 100, y: 15, width: 5, height: 5 }, rgb: [30, 30, 200] }, // price tag: 25 px < 20 % of 1200
  ]);
  // product 30×40 at (50, 30); margin ceil(0.04·30) = 2, ceil(0.04·40) = 2
  t.deepEqual(refineBox(rgb, slotBox), { x: 48, y: 28, width: 34, height: 44 });
});

test('refineBox keeps a product split in two by a white label as one box', (t) => {
  const rgb = shelfImage(200, 100, [
    { box: { x: 50, y: 30, width: 30, height: 15 }, rgb: [200, 30, 30] },
    { box: { x: 50, y: 50, width: 30, height: 20 }, rgb: [200, 30, 30] },
  ]);
  t.deepEqual(refineBox(rgb, slotBox), { x: 48, y: 28, width: 34, height: 44 });
});

test('refineBox clips the margin to the slot box and keeps a product that touches its edge', (t) => {
  const rgb = shelfImage(200, 100, [{ box: { x: 0, y: 30, width: 50, height: 40 }, rgb: [30, 150, 30] }]);
  // inside the box the product spans x 20..49 (30 px, margin 2 → clipped at 20), y 30..69 (margin 2)
  t.deepEqual(refineBox(rgb, slotBox), { x: 20, y: 28, width: 32, height: 44 });
});

test('refineBox never returns less than 25 % of the box, and returns the box itself on an empty shelf', (t) => {
  const tiny = shelfImage(200, 100, [{ box: { x: 60, y: 40, width: 4, height: 4 }, rgb: [200, 30, 30] }]);
  // local x 40..43 → [39, 45) with margin → widened to 25 px around 42 → [30, 55); y [29, 35) → 20 px around 32 → [22, 42)
  t.deepEqual(refineBox(tiny, slotBox), { x: 50, y: 32, width: 25, height: 20 });
  const empty = shelfImage(200, 100, [speck(60, 40)]);
  t.deepEqual(refineBox(empty, slotBox), slotBox);
  t.throws(() => refineBox(empty, { x: 150, y: 0, width: 100, height: 10 }), { message: /box \[150, 0, 100, 10\] is not inside the 200×100 image/ });
});

test('planCrops checks every slot, refines on request and carries product/category', (t) => {
  const rgb = shelfImage(200, 100, [{ box: { x: 50, y: 30, width: 30, height: 40 }, rgb: [200, 30, 30] }]);
  const frame = { id: 'cam1-1000-0', camera: 'cam1', capturedAt: 1000 };
  const slots = [
    { id: 'A1', box: slotBox, model: 'drinks', product: 'SKU-1', category: 'drink_bottle', refine: true },
    { id: 'A2', box: { x: 150, y: 50, width: 60, height: 40 }, model: 'drinks' },
  ];
  const { crops, warnings } = planCrops(frame, { width: 200, height: 100 }, slots, { raw: rgb });
  t.deepEqual(crops, [
    { frame, slot: 'A1', box: { x: 48, y: 28, width: 34, height: 44 }, model: 'drinks', product: 'SKU-1', category: 'drink_bottle' },
    { frame, slot: 'A2', box: { x: 150, y: 50, width: 50, height: 40 }, model: 'drinks' },
  ]);
  t.is(warnings.length, 1);
  t.regex(warnings[0], /slot A2: .*clipped to \[150, 50, 50, 40\]/);
  t.throws(() => planCrops(frame, { width: 200, height: 100 }, slots), { message: 'camera cam1 slot A1: refine is on but no decoded frame was given to planCrops' });
});

test('planCrops refines on a frame shrunk on load at its scale and returns full-resolution boxes inside the slot', (t) => {
  // The same shelf at a third of 600×300: the product 90×120 at (150, 90) becomes 30×40 at (50, 30).
  const small = shelfImage(200, 100, [{ box: { x: 50, y: 30, width: 30, height: 40 }, rgb: [200, 30, 30] }]);
  const frame = { id: 'cam1-1000-0', camera: 'cam1', capturedAt: 1000 };
  const slot = { id: 'A1', box: { x: 60, y: 30, width: 300, height: 240 }, model: 'drinks', refine: true };
  const { crops } = planCrops(frame, { width: 600, height: 300 }, [slot], { raw: small });
  // At 1/3 the slot is [20, 10, 100, 80] and refines to [48, 28, 34, 44] (as at full scale above); ×3.
  t.deepEqual(crops[0]!.box, { x: 144, y: 84, width: 102, height: 132 });
  t.throws(() => planCrops(frame, { width: 100, height: 50 }, [{ ...slot, box: { x: 0, y: 0, width: 50, height: 50 } }], { raw: small }), {
    message: 'camera cam1: decoded frame is 200×100, larger than the frame size given (100×50)',
  });
});

test('pixelBox maps a full-resolution box to a shrunk frame, covering it with whole pixels', (t) => {
  const full = { width: 3000, height: 2000 };
  t.is(pixelBox(slotBox, full, full), slotBox, 'same size: the box itself');
  // 1/6: x 20/6 = 3.33 → 3, right edge 120/6 = 20; y 10·0.167 = 1.67 → 1, bottom 90·0.167 = 15.03 → 16
  // (334 rows, ceil(2000/6), are a little more than a sixth)
  t.deepEqual(pixelBox(slotBox, full, { width: 500, height: 334 }), { x: 3, y: 1, width: 17, height: 15 });
  // A box at the far edge stays inside the shrunk frame (3000/7 = 428.57 → 429 px wide).
  t.deepEqual(pixelBox({ x: 2990, y: 1990, width: 10, height: 10 }, full, { width: 429, height: 286 }), { x: 427, y: 284, width: 2, height: 2 });
  // A box smaller than one shrunk pixel still gets one.
  t.deepEqual(pixelBox({ x: 7, y: 7, width: 1, height: 1 }, full, { width: 300, height: 200 }), { x: 0, y: 0, width: 1, height: 1 });
});

test('frameShrinkLimit keeps every slot at ≥ 2× its model input, refined slots counted at a quarter', (t) => {
  const size = (model: string) => (model === 'big' ? 448 : 224);
  const slot = (w: number, h: number, extra: object = {}) => ({ id: `s${w}`, box: { x: 0, y: 0, width: w, height: h }, model: 'm', ...extra });
  t.is(frameShrinkLimit([slot(3000, 3000)], size), 6);
  t.is(frameShrinkLimit([slot(3000, 1400)], size), 3, 'the short side decides');
  t.is(frameShrinkLimit([slot(3000, 3000), slot(1000, 1000)], size), 2, 'the smallest slot decides');
  t.is(frameShrinkLimit([slot(3000, 3000, { model: 'big' })], size), 3, 'the slot\'s own model input size');
  t.is(frameShrinkLimit([slot(3000, 3000, { refine: true })], size), 1, 'refinement may cut it to 750 px');
  t.is(frameShrinkLimit([slot(8000, 8000, { refine: true })], size), 4);
  t.is(frameShrinkLimit([slot(300, 300)], size), 1, 'never below 1');
  t.is(frameShrinkLimit([], size), 1);
});

// ---------------------------------------------------------------- postprocess

function prediction(mapSize: number, cells: [number, number, number][], extra: Partial<Prediction> = {}): Prediction {
  const mask = new Uint8Array(mapSize * mapSize);
  const anomalyMap = new Float32Array(mapSize * mapSize).fill(0.1);
  for (const [x, y, v] of cells) {
    mask[y * mapSize + x] = 1;
    anomalyMap[y * mapSize + x] = v;
  }
  return { score: 1, normalizedScore: 0.5, anomalyMap, mapSize, mask, threshold: 1, isAnomalous: true, modelDigest: 'abc', ...extra };
}

test('toRegions maps 8-connected mask regions to frame coordinates, sorted by peak', (t) => {
  // 8×8 map over an 80×40 crop at (100, 50): a cell is 10 × 5 frame pixels
  const p = prediction(8, [
    [1, 1, 0.9],
    [2, 2, 0.7], // diagonal to (1,1): same region
    [4, 5, 0.5],
    [5, 5, 0.95],
    [6, 5, 0.6],
  ]);
  p.anomalyMap[7 * 8 + 7] = 2.0; // high value outside the mask must not become a peak
  const box = { x: 100, y: 50, width: 80, height: 40 };
  const expected: Region[] = [
    { box: { x: 140, y: 75, width: 30, height: 5 }, area: 150, peak: Math.fround(0.95) },
    { box: { x: 110, y: 55, width: 20, height: 10 }, area: 100, peak: Math.fround(0.9) },
  ];
  t.deepEqual(toRegions(p, box), expected);
  // 2 of 64 cells = 3.1 % < 4 % → dropped; 3 of 64 = 4.7 % kept
  t.deepEqual(toRegions(p, box, { minAreaFraction: 0.04 }), [expected[0]]);
});

test('toRegions rounds region boxes outward when cells are fractional pixels', (t) => {
  // 8×8 map over 100×100: a cell is 12.5 px; cell (1,1) covers [12.5, 25) → pixels 12..24
  const p = prediction(8, [[1, 1, 3]]);
  t.deepEqual(toRegions(p, { x: 0, y: 0, width: 100, height: 100 }), [{ box: { x: 12, y: 12, width: 13, height: 13 }, area: 156, peak: 3 }]);
  t.deepEqual(toRegions(prediction(8, []), { x: 0, y: 0, width: 100, height: 100 }), []);
  t.throws(() => toRegions({ ...p, mask: new Uint8Array(10) }, { x: 0, y: 0, width: 100, height: 100 }), { message: /mask has 10 values, expected mapSize² = 64/ });
});

// ---------------------------------------------------------------- debounce

const K2N3M2: DebounceOptions = { raiseAfter: 2, window: 3, clearAfter: 2 };

function runSteps(options: DebounceOptions, decisions: (Partial<SlotDecision> & { anomalous: boolean })[]) {
  let state: DebounceState | undefined;
  const transitions: (string | null)[] = [];
  decisions.forEach((d, i) => {
    const r = step(state, { camera: 'cam1', slot: 'A1', score: d.anomalous ? 20 : 5, at: (i + 1) * 1000, ...d }, options);
    state = r.state;
    transitions.push(r.transition);
  });
  return { state: state as DebounceState, transitions };
}

test('debounce: raise after K of the last N, update on a ≥10 % score change, clear after M consecutive normal scans', (t) => {
  const { state, transitions } = runSteps(K2N3M2, [
    { anomalous: false },
    { anomalous: true },
    { anomalous: false },
    { anomalous: true, score: 20 }, // 2 of [A, N, A] → raised
    { anomalous: true, score: 21.9 }, // +9.5 % → nothing
    { anomalous: true, score: 22 }, // +10 % of the reported 20 → updated
    { anomalous: false },
    { anomalous: true, score: 22 }, // normal streak broken, same as reported → nothing
    { anomalous: false },
    { anomalous: false }, // 2 consecutive normal → cleared
    { anomalous: false },
  ]);
  t.deepEqual(transitions, [null, null, null, 'raised', null, 'updated', null, null, null, 'cleared', null]);
  t.like(state, { state: 'ok', since: 10000, lastScore: 5, history: [false, false, false], normalStreak: 3, reported: null });
});

test('debounce: anomalous decisions that fall out of the window do not count', (t) => {
  // [A, N, N, A]: at the 4th scan the window [N, N, A] holds only one
  t.deepEqual(runSteps(K2N3M2, [{ anomalous: true }, { anomalous: false }, { anomalous: false }, { anomalous: true }]).transitions, [
    null,
    null,
    null,
    null,
  ]);
});

test('debounce: a region that overlaps none of the reported ones is an update', (t) => {
  const r1 = { x: 0, y: 0, width: 10, height: 10 };
  const r2 = { x: 50, y: 50, width: 10, height: 10 };
  const r1moved = { x: 5, y: 5, width: 10, height: 10 };
  const { transitions, state } = runSteps({ raiseAfter: 1, window: 1, clearAfter: 1 }, [
    { anomalous: true, regions: [r1] },
    { anomalous: true, regions: [r1moved] }, // overlaps r1 → same region
    { anomalous: true, regions: [r1, r2] },
    { anomalous: true, regions: [r2] }, // fewer regions is not an update
  ]);
  t.deepEqual(transitions, ['raised', null, 'updated', null]);
  t.deepEqual(state.reported, { score: 20, regions: [r1, r2] });
});

test('debounce: clearAfter may exceed the window, and a normal scan never raises', (t) => {
  const long = runSteps({ raiseAfter: 1, window: 2, clearAfter: 4 }, [
    { anomalous: true },
    { anomalous: false },
    { anomalous: false },
    { anomalous: false },
    { anomalous: false },
  ]);
  t.deepEqual(long.transitions, ['raised', null, null, null, 'cleared']);
  // K=1, M=1: cleared with an anomalous decision still in the window; the next normal scan stays ok
  t.deepEqual(runSteps({ raiseAfter: 1, window: 3, clearAfter: 1 }, [{ anomalous: true }, { anomalous: false }, { anomalous: false }]).transitions, [
    'raised',
    'cleared',
    null,
  ]);
});

test('debounce: step is pure and validates its options', (t) => {
  const first = step(undefined, { camera: 'c', slot: 's', anomalous: true, score: 3, at: 1 }, K2N3M2).state;
  Object.freeze(first);
  Object.freeze(first.history);
  const second = step(first, { camera: 'c', slot: 's', anomalous: true, score: 3, at: 2 }, K2N3M2);
  t.is(second.transition, 'raised');
  t.deepEqual(first.history, [true]);
  t.is(first.state, 'ok');
  t.throws(() => step(undefined, { camera: 'c', slot: 's', anomalous: true, score: 3, at: 1 }, { raiseAfter: 4, window: 3, clearAfter: 1 }), {
    message: 'debounce.raiseAfter (4) must not exceed debounce.window (3)',
  });
  t.throws(() => step(first, { camera: 'c', slot: 'other', anomalous: true, score: 3, at: 2 }, K2N3M2), { message: /c\/other applied to the state of c\/s/ });
});

test('debounce: validated options are frozen and taken as they are (checked once, not per scan); plain options are checked every time', (t) => {
  const plain: DebounceOptions = { raiseAfter: 2, window: 3, clearAfter: 2 };
  const checked = validateDebounceOptions(plain);
  t.true(Object.isFrozen(checked));
  t.like(checked, { raiseAfter: 2, window: 3, clearAfter: 2, updateScoreChange: 0.1, run: '' });
  t.is(validateDebounceOptions(checked), checked, 'a checked object comes back as it is');
  t.throws(() => {
    (checked as { window: number }).window = 1;
  }, { instanceOf: TypeError }, 'so it cannot be changed into an invalid one');
  t.is(step(undefined, { camera: 'c', slot: 's', anomalous: true, score: 3, at: 1 }, checked).transition, null);
  plain.window = 1; // the caller's own object is not frozen: its next use is checked again
  t.throws(() => step(undefined, { camera: 'c', slot: 's', anomalous: true, score: 3, at: 1 }, plain), { message: /raiseAfter \(2\) must not exceed debounce.window \(1\)/ });
});

// ---------------------------------------------------------------- events

function scan(slot: string, at: number, score: number, regions: Region[] = []): SlotPrediction {
  const threshold = 10;
  return {
    crop: {
      frame: { id: `cam1-${at}-0`, camera: 'cam1', capturedAt: at },
      slot,
      box: { x: 0, y: 0, width: 100, height: 100 },
      model: 'drinks',
      product: 'SKU-1',
    },
    prediction: {
      score,
      normalizedScore: score / (2 * threshold),
      anomalyMap: new Float32Array(4),
      mapSize: 2,
      mask: new Uint8Array(4),
      threshold,
      isAnomalous: score > threshold,
      modelDigest: 'd1g3st',
    },
    regions,
  };
}

// eventId takes a raise key (run tag, raise ordinal) since ids must not rest on the wall clock
// alone; `firstRaise` is the key of a slot's first raise by a debouncer without a run tag.
const firstRaise = { run: '', raise: 1 };

test('eventId is deterministic and tells apart ids that concatenate alike', (t) => {
  const id = eventId('aisle3-left', 'A1', 1700000000000, firstRaise);
  t.regex(id, /^aisle3-left-A1-1700000000000-[0-9a-f]{8}$/);
  t.is(eventId('aisle3-left', 'A1', 1700000000000, { run: '', raise: 1 }), id);
  t.not(eventId('a-b', 'c', 5, firstRaise).slice(-8), eventId('a', 'b-c', 5, firstRaise).slice(-8));
  // Same slot and start time (the clock stepped back), a later raise or another run: another id.
  t.not(eventId('aisle3-left', 'A1', 1700000000000, { run: '', raise: 2 }), id);
  t.not(eventId('aisle3-left', 'A1', 1700000000000, { run: '1f2e3d4c', raise: 1 }), id);
});

test('event ids stay unique when the wall clock steps back, and are the same when the scans are replayed', async (t) => {
  // Two anomalous periods of A1; the clock stepped back one hour between them, so the second
  // starts BEFORE the first and the third at exactly the first one's start time.
  const scans = [
    scan('A1', 10_000, 20),
    scan('A1', 11_000, 20), // raised at 11000
    scan('A1', 12_000, 1),
    scan('A1', 13_000, 1), // cleared
    scan('A1', 13_000 - 3_600_000, 20),
    scan('A1', 14_000 - 3_600_000, 20), // raised, start before the first period's
    scan('A1', 15_000 - 3_600_000, 1),
    scan('A1', 16_000 - 3_600_000, 1), // cleared
    scan('A1', 10_000, 20),
    scan('A1', 11_000, 20), // raised at 11000 again: same start time as the first period
  ];
  const run = (tag?: string) => lastValueFrom(from(scans).pipe(debounceSlots({ ...K2N3M2, run: tag }, decisionOf), toEvents(), toArray()));
  const events = await run();
  t.deepEqual(events.map((e) => e.type), ['new', 'end', 'new', 'end', 'new']);
  const news = events.filter((e) => e.type === 'new').map((e) => e.after);
  t.deepEqual(news.map((a) => a.startTime), [11_000, 14_000 - 3_600_000, 11_000]);
  t.is(new Set(news.map((a) => a.id)).size, 3, 'three distinct periods, three ids');
  t.deepEqual(news.map((a) => a.id), [1, 2, 3].map((raise, i) => eventId('cam1', 'A1', news[i]!.startTime, { run: '', raise })));
  // Each end carries the id of the period it ends.
  t.is(events[1]!.after.id, news[0]!.id);
  t.is(events[3]!.after.id, news[1]!.id);
  // Deterministic: the same scans through a fresh debouncer give the same ids ...
  t.deepEqual((await run()).map((e) => e.after.id), events.map((e) => e.after.id));
  // ... and a debouncer of another run (agent restarted, fresh states) gives other ids.
  const other = await run('b7e1c0de');
  t.true(other.every((e, i) => e.after.id !== events[i]!.after.id));
});

test('events: new → update → end share one id, before/after snapshots in Frigate style, state payloads follow', async (t) => {
  const region: Region = { box: { x: 10, y: 10, width: 20, height: 20 }, area: 400, peak: 3 };
  const scans = [
    scan('A1', 1000, 5),
    scan('A1', 2000, 15, [region]),
    scan('A1', 3000, 16, [region]), // raised (2 of 3)
    scan('A1', 4000, 25, [region]), // silent? no: +56 % → updated
    scan('A1', 5000, 26, [region]), // +4 % → silent, but it raises topScore
    scan('A1', 6000, 4),
    scan('A1', 7000, 3), // cleared
  ];
  const outputs = await lastValueFrom(from(scans).pipe(debounceSlots(K2N3M2, decisionOf), toSlotOutputs({ thumbnail: true }), toArray()));
  const events = outputs.flatMap((o) => (o.event ? [o.event] : []));
  t.deepEqual(
    events.map((e) => e.type),
    ['new', 'update', 'end'],
  );
  const id = eventId('cam1', 'A1', 3000, firstRaise);
  const [created, updated, ended] = events;
  t.is(created.before, null);
  t.deepEqual(created.after, {
    id,
    camera: 'cam1',
    slot: 'A1',
    product: 'SKU-1',
    category: null,
    score: 16,
    topScore: 16,
    normalizedScore: 0.8,
    threshold: 10,
    regions: [{ box: { x: 10, y: 10, width: 20, height: 20 }, area: 400, peak: 3 }],
    frameId: 'cam1-3000-0',
    frameTime: 3000,
    startTime: 3000,
    endTime: null,
    modelId: 'drinks',
    modelDigest: 'd1g3st',
    thumbnail: true,
  });
  t.deepEqual(updated.before, created.after);
  t.like(updated.after, { id, score: 25, topScore: 25, frameTime: 4000, startTime: 3000, endTime: null });
  t.like(ended.before, { id, score: 25, topScore: 26, endTime: null });
  t.deepEqual(ended.after, { ...ended.before, endTime: 7000 });
  t.deepEqual(
    outputs.map((o) => o.state),
    [
      { state: 'ok', score: 5, since: 1000, eventId: null },
      { state: 'ok', score: 15, since: 1000, eventId: null },
      { state: 'anomalous', score: 16, since: 3000, eventId: id },
      { state: 'anomalous', score: 25, since: 3000, eventId: id },
      { state: 'anomalous', score: 26, since: 3000, eventId: id },
      { state: 'anomalous', score: 4, since: 3000, eventId: id },
      { state: 'ok', score: 3, since: 7000, eventId: null },
    ],
  );
});

test('events: slots are debounced independently and a replay yields identical events (de-duplicable)', async (t) => {
  const scans = [scan('A1', 1000, 20), scan('B2', 1000, 5), scan('A1', 2000, 20), scan('B2', 2000, 20), scan('B2', 3000, 20)];
  const run = () => lastValueFrom(from(scans).pipe(debounceSlots(K2N3M2, decisionOf), toEvents(), toArray()));
  const first = await run();
  t.deepEqual(
    first.map((e) => [e.type, e.after.id]),
    [
      ['new', eventId('cam1', 'A1', 2000, firstRaise)],
      ['new', eventId('cam1', 'B2', 3000, firstRaise)],
    ],
  );
  t.deepEqual(await run(), first);
});

test('EventBuilder without the open event (restored debouncer state) re-announces with the same id', (t) => {
  const states = new Map<string, DebounceState>();
  const builder = new EventBuilder({ thumbnail: false });
  const opts = { raiseAfter: 1, window: 1, clearAfter: 1, states };
  const results: ReturnType<EventBuilder['build']>[] = [];
  from([scan('A1', 1000, 20)])
    .pipe(debounceSlots(opts, decisionOf))
    .subscribe((d) => results.push(builder.build(d)));
  // "restart": a new builder, the debouncer states as saved to and read back from disk
  const restored = new Map<string, DebounceState>(JSON.parse(JSON.stringify([...states])) as Array<[string, DebounceState]>);
  const fresh = new EventBuilder({ thumbnail: false });
  from([scan('A1', 2000, 40), scan('A1', 3000, 1)])
    .pipe(debounceSlots({ ...opts, states: restored }, decisionOf))
    .subscribe((d) => results.push(fresh.build(d)));
  const id = eventId('cam1', 'A1', 1000, firstRaise);
  t.deepEqual(
    results.map((e) => [e?.type, e?.after.id, e?.after.endTime]),
    [
      ['new', id, null],
      ['new', id, null],
      ['end', id, 3000],
    ],
  );
  t.deepEqual(slotStatePayload(restored.get('cam1/A1') as DebounceState, 'ignored-while-ok'), { state: 'ok', score: 1, since: 3000, eventId: null });
});

test('toSlotPrediction pairs a crop with its frame-coordinate regions', (t) => {
  const sp = scan('A1', 1000, 20);
  const p = prediction(2, [[1, 1, 7]]);
  t.deepEqual(toSlotPrediction(sp.crop, p).regions, [{ box: { x: 50, y: 50, width: 50, height: 50 }, area: 2500, peak: 7 }]);
});

// ---------------------------------------------------------------- review fixes (debounce re-raise, end snapshot, drop hook, teardown signal)

test('debounce: after a clear only scans since the clear count, so one noisy scan cannot re-raise the slot', (t) => {
  // raiseAfter 3, window 5, clearAfter 2: window − clearAfter ≥ raiseAfter, so the three anomalous
  // scans of the ended period would still be in the window at the next anomalous scan.
  const K3N5M2: DebounceOptions = { raiseAfter: 3, window: 5, clearAfter: 2 };
  const A = { anomalous: true };
  const n = { anomalous: false };
  const { transitions, state } = runSteps(K3N5M2, [A, A, A, n, n, A, n, n, A]);
  t.deepEqual(transitions, [null, null, 'raised', null, 'cleared', null, null, null, null]);
  t.is(state.state, 'ok');
  t.deepEqual(state.history, [false, true, false, false, true]);
  // The cleared state keeps the normal streak that cleared it and nothing older.
  const cleared = runSteps(K3N5M2, [A, A, A, n, n]).state;
  t.like(cleared, { state: 'ok', history: [false, false], normalStreak: 2 });
  // Three anomalous scans after the clear still raise (a second period, raise ordinal 2).
  const again = runSteps(K3N5M2, [A, A, A, n, n, A, A, A]);
  t.deepEqual(again.transitions.slice(5), [null, null, 'raised']);
  t.is(again.state.raises, 2);
});

test('debounce: a state restored from an older file (no raises/raisedIn, stale history) still steps and its clear trims the history', (t) => {
  const K3N5M2: DebounceOptions = { raiseAfter: 3, window: 5, clearAfter: 2 };
  // As an older agent saved it: open anomaly, the fields added later missing.
  const legacy = JSON.parse(
    JSON.stringify({ camera: 'cam1', slot: 'A1', state: 'anomalous', since: 1000, lastScore: 20, history: [true, true, true, false], normalStreak: 1, reported: { score: 20, regions: [] } }),
  ) as DebounceState;
  let r = step(legacy, { camera: 'cam1', slot: 'A1', anomalous: false, score: 5, at: 5000 }, K3N5M2);
  t.is(r.transition, 'cleared');
  t.deepEqual(r.state.history, [false, false]);
  r = step(r.state, { camera: 'cam1', slot: 'A1', anomalous: true, score: 20, at: 6000 }, K3N5M2);
  t.is(r.transition, null, 'the ended period\'s scans do not count');
  for (const at of [7000, 8000]) r = step(r.state, { camera: 'cam1', slot: 'A1', anomalous: true, score: 20, at }, K3N5M2);
  t.is(r.transition, 'raised');
  t.is(r.state.raises, 1, 'a missing raise count counts as 0');
});

test('EventBuilder: an end made up for a restored period says thumbnail: false; build({ thumbnail }) sets the snapshot flag and keeps it', (t) => {
  // Restored anomalous state, no open event in a fresh builder; the first scan clears it.
  const restored: DebounceState = {
    camera: 'cam1', slot: 'A1', state: 'anomalous', since: 1000, lastScore: 20, history: [true, true, false], normalStreak: 1,
    reported: { score: 20, regions: [] }, raises: 1, raisedIn: 'previous-run',
  };
  const clearing = scan('A1', 5000, 1);
  const decision = decisionOf(clearing);
  const { state, transition } = step(restored, decision, K2N3M2);
  t.is(transition, 'cleared');
  const end = new EventBuilder({ thumbnail: true }).build({ item: clearing, decision, previous: restored, state, transition });
  t.is(end?.type, 'end');
  t.false(end!.before!.thumbnail, 'no thumbnail was published for the clearing scan');
  t.false(end!.after.thumbnail);

  // A raise whose thumbnail was not rendered: false in `new`, in the update's before and in the end.
  const builder = new EventBuilder({ thumbnail: true });
  let s: DebounceState | undefined;
  const events: (ReturnType<EventBuilder['build']>)[] = [];
  const flags = [true, false, true, true, true, true];
  [scan('A1', 1000, 20), scan('A1', 2000, 20), scan('A1', 3000, 40), scan('A1', 4000, 1), scan('A1', 5000, 1)].forEach((item, i) => {
    const d = decisionOf(item);
    const r = step(s, d, K2N3M2);
    events.push(builder.build({ item, decision: d, previous: s, state: r.state, transition: r.transition }, { thumbnail: flags[i] === true }));
    s = r.state;
  });
  const [created, updated, ended] = events.filter((e) => e !== null);
  t.deepEqual([created?.type, updated?.type, ended?.type], ['new', 'update', 'end']);
  t.false(created!.after.thumbnail);
  t.false(updated!.before!.thumbnail);
  t.true(updated!.after.thumbnail);
  t.true(ended!.before!.thumbnail);
  // Without the option the builder's default applies, as before.
  t.true(new EventBuilder({ thumbnail: true }).build({ item: scan('A1', 1, 20), decision: decisionOf(scan('A1', 1, 20)), previous: undefined, ...step(undefined, decisionOf(scan('A1', 1, 20)), { raiseAfter: 1, window: 1, clearAfter: 1 }) })!.after.thumbnail);
});

test('dropOldestWhileBusy: a throwing onDrop errors the output instead of escaping as an unhandled error', async (t) => {
  const source = new Subject<number>();
  const gate = new Subject<void>();
  const seen: number[] = [];
  let error: Error | null = null;
  let caught: unknown = null;
  const onUncaught = (e: unknown) => (caught = e);
  process.on('uncaughtException', onUncaught);
  try {
    source
      .pipe(
        dropOldestWhileBusy((x: number) => gate.pipe(map(() => x)), {
          capacity: 1,
          onDrop: () => {
            throw new Error('metrics bug');
          },
        }),
      )
      .subscribe({ next: (x) => seen.push(x), error: (e: Error) => (error = e) });
    source.next(1); // worked on
    source.next(2); // waits
    source.next(3); // drops 2 → the hook throws
    await new Promise((r) => setTimeout(r, 20));
    t.is((error as Error | null)?.message, 'metrics bug');
    t.is(caught, null, 'nothing reached uncaughtException');
    t.false(source.observed, 'the source was unsubscribed');
    t.false(gate.observed, 'the running work was unsubscribed');
  } finally {
    process.off('uncaughtException', onUncaught);
  }
});

test('dropOldestWhileBusy: the signal given to work is aborted at unsubscribe and when the source errors, not on completion', async (t) => {
  const signals: AbortSignal[] = [];
  const slow = (x: number, signal: AbortSignal) => {
    signals.push(signal);
    return new Promise<number>((r) => setTimeout(() => r(x), 30));
  };
  // Unsubscribe with two items in flight.
  const a = new Subject<number>();
  const out: number[] = [];
  const sub = a.pipe(dropOldestWhileBusy(slow, { capacity: 2, concurrency: 2 })).subscribe((x) => out.push(x));
  a.next(1);
  a.next(2);
  t.deepEqual(signals.map((s) => s.aborted), [false, false]);
  sub.unsubscribe();
  t.deepEqual(signals.map((s) => s.aborted), [true, true]);
  await new Promise((r) => setTimeout(r, 50));
  t.deepEqual(out, [], 'nothing comes out after unsubscribe');
  // The source errors with an item in flight.
  signals.length = 0;
  const b = new Subject<number>();
  let failed = false;
  b.pipe(dropOldestWhileBusy(slow, { capacity: 2 })).subscribe({ error: () => (failed = true) });
  b.next(1);
  b.error(new Error('stream dropped'));
  t.true(failed);
  t.true(signals[0]!.aborted);
  // Completion after the work is done: never aborted while it ran.
  signals.length = 0;
  const done = await lastValueFrom(from([1, 2, 3]).pipe(dropOldestWhileBusy((x: number, signal: AbortSignal) => Promise.resolve([x, signal.aborted] as const), { capacity: 5 }), toArray()));
  t.deepEqual(done, [[1, false], [2, false], [3, false]]);
});
