/**
 * The live shelf pipeline: frames from every camera in, one SlotOutput per scanned slot out.
 *
 *   per camera: frames$ ─▶ bounded drop-oldest queue of pending frames (maxPendingFrames)
 *     ─▶ decode once (shrunk on load where every slot stays ≥ 2× its model input)
 *     ─▶ planogram crops (checked, optionally refined; boxes in full-resolution pixels)
 *     ─▶ each crop preprocessed straight into its model's batch buffer (InferenceBatcher,
 *        shared by all cameras: batches across cameras, grouped by model)
 *     ─▶ Prediction (slot threshold > model threshold > manifest) ─▶ regions in frame coords
 *     ─▶ per-slot debounce ─▶ events (new/update/end) + retained state + thumbnail/mask
 *
 * A frame counts as busy until its outputs (thumbnails included) are ready, so backpressure
 * reaches the pending-frame queue and every buffer is bounded: `maxPendingFrames` waiting plus
 * `framesInFlight` being worked on per camera, `buffers` batch buffers per model.
 * Frames of one camera are worked on concurrently (decode of the next overlaps inference of
 * the previous) but their results are debounced strictly in capture order.
 *
 * Nothing here throws at a bad frame: a frame that does not decode, a slot box that does not fit
 * and a failed inference call are counted, reported to the observer and skipped. A slot whose
 * post-processing (regions, debounce, event) fails is counted and skipped alone: the frame's other
 * slots still emit. A camera whose frame stream errors is reported and ends; the other cameras go
 * on. An observer hook that throws is counted (stats().observerErrors) and reported to
 * `observerError`; it never changes what the pipeline does or emits.
 *
 * Once a camera's output is torn down (the pipeline was unsubscribed, or the camera's stream
 * failed), its frames still in flight are abandoned: they change no debounce state, build no
 * event, call no `event`/`frameScanned` hook and count no error (the crops the closed batchers
 * reject are not inference errors) — nothing that would not be emitted leaves a trace. A frame's
 * slots are committed together, synchronously, right before its outputs are emitted.
 *
 * Models can be swapped while it runs (`swapModel`): the next batch of that model runs on the new
 * one, the running batch finishes on the old one, no frame is dropped.
 *
 * Pure pipelines/ code: no MQTT, no config files, no process; the agent wires sources in and
 * publishes what comes out.
 */
import { catchError, defer, EMPTY, finalize, from, merge, mergeMap, Observable, tap } from 'rxjs';
import { decodeImage, type RawImage } from '../models/image-decode.js';
import { hasMaps, type ScanPrediction } from '../models/types.js';
import { dropOldestWhileBusy } from './bounded-queue.js';
import { step, slotKey, validateDebounceOptions, type DebounceOptions, type DebounceState, type SlotDecision, type SlotTransition } from './debounce.js';
import { EventBuilder, slotStatePayload, type AnomalyEvent, type SlotOutput } from './events.js';
import { InferenceBatcher, type BatchModel, type InferenceBatcherStats } from './inference-batcher.js';
import { frameShrinkLimit, pixelBox, planCrops, type SlotSpec } from './planogram.js';
import { toRegions } from './postprocess.js';
import { renderThumbnail, type Thumbnail } from './thumbnail.js';
import type { Box, Crop, Frame, SlotPrediction } from './types.js';

export type { BatchModel } from './inference-batcher.js';

/** One slot of a camera: the planogram entry plus an optional threshold override. */
export interface PipelineSlot extends SlotSpec {
  /** Image-score threshold for this slot; overrides the model's. */
  threshold?: number;
}

export interface PipelineCamera {
  id: string;
  slots: readonly PipelineSlot[];
  /** The frames to scan (cold: subscribing to the pipeline subscribes to every camera). */
  frames$: Observable<Frame>;
  /**
   * Decode big JPEG/WebP frames at a reduced scale when every slot crop stays at least twice its
   * model's input size (frameShrinkLimit); default true. False: always full resolution.
   */
  shrinkOnLoad?: boolean;
}

export interface PipelineModelEntry {
  model: BatchModel;
  /** Image-score threshold for every slot of this model; overrides the manifest's. */
  threshold?: number;
}

/** 'postprocess': regions, debounce or event of one slot (reported with the slot). */
export type FrameErrorKind = 'decode' | 'crop' | 'inference' | 'thumbnail' | 'postprocess';

/**
 * Hooks for logs and metrics; every one optional, called synchronously. A hook that throws is
 * counted (stats().observerErrors) and reported to `observerError`; the pipeline goes on as if it
 * had returned.
 */
export interface PipelineObserver {
  frameReceived?(camera: string, frame: Frame): void;
  /** Work on a frame begins (it left the pending queue). */
  frameStarted?(camera: string, frame: Frame): void;
  /** Work on a frame ended, whatever the outcome (scanned, skipped after an error). */
  frameFinished?(camera: string, frame: Frame): void;
  /** A pending frame was dropped (the queue was full and a newer one arrived). */
  frameDropped?(camera: string, frame: Frame): void;
  /** Something about a frame (or one slot of it, when `slot` is given) failed and was skipped. */
  frameError?(camera: string, frame: Frame, kind: FrameErrorKind, error: Error, slot?: string): void;
  /** A frame was scanned: decode time, and capture → outputs ready. */
  frameScanned?(camera: string, frame: Frame, timings: { decodeMs: number; totalMs: number; slots: number }): void;
  /** A slot box was clipped to the frame (reported once per camera/slot). */
  cropWarning?(camera: string, slot: string, message: string): void;
  /** One inference call. */
  batch?(model: string, size: number, inferenceMs: number): void;
  event?(event: AnomalyEvent): void;
  /** The camera's frame stream failed; the camera is out of the pipeline. */
  cameraError?(camera: string, error: Error): void;
  /** The camera's frame stream completed (e.g. a replay without loop). */
  cameraEnded?(camera: string): void;
  /** Another hook threw (what it threw is swallowed; so is anything this one throws). */
  observerError?(hook: ObserverHook, error: Error): void;
}

/** The hooks of PipelineObserver that report pipeline activity (all but observerError). */
export type ObserverHook = Exclude<keyof PipelineObserver, 'observerError'>;

const OBSERVER_HOOKS = [
  'frameReceived',
  'frameStarted',
  'frameFinished',
  'frameDropped',
  'frameError',
  'frameScanned',
  'cropWarning',
  'batch',
  'event',
  'cameraError',
  'cameraEnded',
] as const satisfies readonly ObserverHook[];
// Every hook is guarded: a hook added to PipelineObserver but not to OBSERVER_HOOKS fails to compile.
const everyHookGuarded: [Exclude<ObserverHook, (typeof OBSERVER_HOOKS)[number]>] extends [never] ? true : false = true;
void everyHookGuarded;

export interface ShelfPipelineOptions {
  cameras: readonly PipelineCamera[];
  /** Model name (the slots' `model`) → loaded model. */
  models: ReadonlyMap<string, PipelineModelEntry>;
  /** Most crops per inference call. */
  batchSize: number;
  /** Longest wait for a batch to fill, ms. */
  batchWaitMs: number;
  /** Frames per camera allowed to wait for inference; beyond, the oldest is dropped. */
  maxPendingFrames: number;
  /**
   * Frames per camera worked on at once. Default: the largest model concurrency (session
   * replicas) + 1, at least 2 — with few slots per frame one frame fills one batch, so keeping
   * every replica busy takes one frame per replica in inference plus one decoding.
   */
  framesInFlight?: number;
  debounce: DebounceOptions;
  /** Thumbnail + mask for every new/update event (default enabled, 320 px, quality 80). */
  thumbnails?: { enabled?: boolean; maxSize?: number; quality?: number };
  /** Drop anomalous regions smaller than this fraction of the crop, in [0, 1] (default 0). */
  minRegionAreaFraction?: number;
  /** Per-slot debounce states (restore after a restart, inspect in tests); updated in place. */
  debounceStates?: Map<string, DebounceState>;
  observer?: PipelineObserver;
  /** Wall clock for latencies (default Date.now). */
  clock?: () => number;
}

/** One scanned slot: its SlotOutput plus the rendered thumbnail when it raised/updated an event. */
export interface ShelfOutput extends SlotOutput {
  thumbnail: Thumbnail | null;
  /** The slot's debounce state this scan committed (what a restart must continue from). */
  debounce: DebounceState;
}

export interface CameraPipelineStats {
  framesIn: number;
  framesDropped: number;
  framesScanned: number;
  decodeErrors: number;
  cropErrors: number;
  inferenceErrors: number;
  thumbnailErrors: number;
  /** Slots whose regions, debounce or event failed (skipped; the frame's other slots emitted). */
  postprocessErrors: number;
  /** Frames waiting in the drop-oldest queue right now. */
  pending: number;
  /** Frames being worked on right now. */
  inFlight: number;
  crops: number;
  /** Shrink-on-load factor of the last decoded frame (1 = full resolution; 0 = none yet). */
  decodeShrink: number;
  events: { new: number; update: number; end: number };
  ended: boolean;
  failed: string | null;
}

export interface ShelfPipelineStats {
  cameras: Record<string, CameraPipelineStats>;
  models: Record<string, InferenceBatcherStats>;
  /**
   * Observer hooks that threw (each swallowed and reported to `observerError`). Always set by
   * stats(); optional so that a placeholder before the pipeline exists may leave it out.
   */
  observerErrors?: number;
}

export interface ShelfPipeline {
  /** Cold: subscribing starts every camera; unsubscribing stops them and frees everything. */
  readonly outputs$: Observable<ShelfOutput>;
  /** Counters and gauges of the current (or last) subscription. */
  stats(): ShelfPipelineStats;
  /**
   * Replaces the model called `name` (same input size and normalization) for every later batch,
   * keeping its threshold. Resolves once the old model runs no batch any more (release it then).
   */
  swapModel(name: string, model: BatchModel): Promise<void>;
  /** The model called `name` now (the swapped-in one after a swap). */
  model(name: string): BatchModel | undefined;
  /** The last crop ([3,S,S], preprocessed) the model `name` scored normal, or null. */
  lastNormalInput(name: string): Float32Array | null;
}

interface ScannedSlot {
  crop: Crop;
  /** The crop's box in the pixels of the decoded frame (crop.box unless it was shrunk on load). */
  pixels: Box;
  prediction: ScanPrediction;
}

interface FrameScan {
  frame: Frame;
  raw: RawImage;
  slots: ScannedSlot[];
  decodeMs: number;
}

const emptyCameraStats = (): CameraPipelineStats => ({
  framesIn: 0,
  framesDropped: 0,
  framesScanned: 0,
  decodeErrors: 0,
  cropErrors: 0,
  inferenceErrors: 0,
  thumbnailErrors: 0,
  postprocessErrors: 0,
  pending: 0,
  inFlight: 0,
  crops: 0,
  decodeShrink: 0,
  events: { new: 0, update: 0, end: 0 },
  ended: false,
  failed: null,
});

const asError = (e: unknown): Error => (e instanceof Error ? e : new Error(String(e)));

/**
 * `observer` with every hook guarded: what a hook throws goes to `failed` (the count) and to
 * `observer.observerError` (whose own throw is swallowed), never to the caller. Hooks are looked
 * up at call time and called with `observer` as `this` (methods of a class instance work).
 */
function guardObserver(observer: PipelineObserver, failed: (hook: ObserverHook, error: Error) => void): Required<Omit<PipelineObserver, 'observerError'>> {
  const guarded: Partial<Record<ObserverHook, (...args: unknown[]) => void>> = {};
  for (const hook of OBSERVER_HOOKS) {
    guarded[hook] = (...args: unknown[]) => {
      const fn = observer[hook] as ((...a: unknown[]) => void) | undefined;
      if (typeof fn !== 'function') return;
      try {
        fn.apply(observer, args);
      } catch (err) {
        failed(hook, asError(err));
        try {
          observer.observerError?.(hook, asError(err));
        } catch {
          // nothing left to report it to
        }
      }
    };
  }
  return guarded as Required<Omit<PipelineObserver, 'observerError'>>;
}

/**
 * Checks the wiring (every slot's model exists, ids unique, options sane); throws naming the
 * culprit. Returns the checked (frozen) debounce options, which step() takes as they are.
 */
function validate(options: ShelfPipelineOptions): Required<DebounceOptions> {
  const int = (name: string, v: unknown, min: number) => {
    if (!Number.isInteger(v) || (v as number) < min) throw new RangeError(`shelf pipeline: ${name} must be an integer ≥ ${min}, got ${String(v)}`);
  };
  int('batchSize', options.batchSize, 1);
  int('maxPendingFrames', options.maxPendingFrames, 1);
  int('framesInFlight', options.framesInFlight ?? 2, 1);
  if (!(Number.isFinite(options.batchWaitMs) && options.batchWaitMs >= 0)) {
    throw new RangeError(`shelf pipeline: batchWaitMs must be a number ≥ 0, got ${String(options.batchWaitMs)}`);
  }
  const debounce = validateDebounceOptions(options.debounce);
  const minArea = options.minRegionAreaFraction;
  if (minArea !== undefined && !(typeof minArea === 'number' && minArea >= 0 && minArea <= 1)) {
    throw new RangeError(`shelf pipeline: minRegionAreaFraction must be a number in [0, 1], got ${String(minArea)}`);
  }
  const cameraIds = new Set<string>();
  for (const cam of options.cameras) {
    if (cameraIds.has(cam.id)) throw new Error(`shelf pipeline: camera ${cam.id} is listed twice`);
    cameraIds.add(cam.id);
    if (cam.slots.length === 0) throw new Error(`shelf pipeline: camera ${cam.id} has no slots`);
    const slotIds = new Set<string>();
    for (const slot of cam.slots) {
      if (slotIds.has(slot.id)) throw new Error(`shelf pipeline: camera ${cam.id} has two slots called ${slot.id}`);
      slotIds.add(slot.id);
      if (!options.models.has(slot.model)) {
        throw new Error(`shelf pipeline: camera ${cam.id} slot ${slot.id} uses model '${slot.model}', which is not loaded (loaded: ${[...options.models.keys()].join(', ') || 'none'})`);
      }
    }
  }
  return debounce;
}

/** One frame per session replica of the busiest model in inference, plus one decoding (≥ 2). */
export function defaultFramesInFlight(models: ShelfPipelineOptions['models']): number {
  let concurrency = 1;
  for (const { model } of models.values()) concurrency = Math.max(concurrency, model.concurrency ?? 1);
  return Math.max(2, concurrency + 1);
}

export function createShelfPipeline(options: ShelfPipelineOptions): ShelfPipeline {
  const debounceOptions = validate(options);
  const clock = options.clock ?? Date.now;
  let observerErrors = 0;
  const observer = guardObserver(options.observer ?? {}, () => observerErrors++);
  const framesInFlight = options.framesInFlight ?? defaultFramesInFlight(options.models);
  const thumbs = { enabled: options.thumbnails?.enabled ?? true, maxSize: options.thumbnails?.maxSize ?? 320, quality: options.thumbnails?.quality ?? 80 };
  const minAreaFraction = options.minRegionAreaFraction ?? 0;

  let cameraStats: Record<string, CameraPipelineStats> = {};
  let batchers = new Map<string, InferenceBatcher>();
  /** Our own copy: swapModel replaces entries. */
  const models = new Map<string, PipelineModelEntry>(options.models);

  const outputs$ = defer(() => {
    cameraStats = Object.fromEntries(options.cameras.map((c) => [c.id, emptyCameraStats()]));
    observerErrors = 0;
    batchers = new Map(
      [...models].map(([name, entry]) => [
        name,
        new InferenceBatcher(entry.model, {
          name,
          batchSize: options.batchSize,
          batchWaitMs: options.batchWaitMs,
          onBatch: (size, ms) => observer.batch(name, size, ms),
        }),
      ]),
    );
    const states = options.debounceStates ?? new Map<string, DebounceState>();
    const events = new EventBuilder({ thumbnail: thumbs.enabled });
    const localBatchers = batchers;

    const perCamera = options.cameras.map((cam) => {
      const st = cameraStats[cam.id]!;
      const warned = new Set<string>();
      // Model input sizes cannot change (swapModel refuses another size), so this holds for the run.
      const maxShrink = cam.shrinkOnLoad === false ? 1 : frameShrinkLimit(cam.slots, (name) => models.get(name)!.model.manifest.inputSize);
      /** Resolves when the previous frame of this camera has been debounced. */
      let chain: Promise<void> = Promise.resolve();
      /**
       * Resolves when the previous frame of this camera has handed its crops to the batchers.
       * Frames in flight decode concurrently and a later one can finish first; crops still go to
       * inference in capture order, so a model swapped in between batches scores every frame
       * captured after the last one the old model scored (no new-old-new flip around a swap).
       */
      let submitted: Promise<void> = Promise.resolve();

      /**
       * Decode, crops, inference. `signal` is aborted once this camera's output is torn down: the
       * frame is abandoned then, and what fails because of the teardown (the closed batchers
       * reject its crops) is no error of the frame.
       */
      const predictFrame = async (frame: Frame, signal: AbortSignal, previousSubmitted: Promise<void>, markSubmitted: () => void): Promise<FrameScan | null> => {
        const t0 = performance.now();
        let raw: RawImage;
        try {
          // Into the pixel arena: slots are read in place, and the buffer serves a later frame once this one is done.
          raw = await decodeImage(frame.data, { origin: frame.origin, maxShrink, arena: true });
        } catch (err) {
          if (!signal.aborted) {
            st.decodeErrors++;
            observer.frameError(cam.id, frame, 'decode', asError(err));
          }
          void previousSubmitted.then(markSubmitted); // nothing to submit: keep the order for the next frame
          return null;
        }
        const decodeMs = performance.now() - t0;
        st.decodeShrink = raw.shrink;
        const jobs: Array<Promise<ScannedSlot | null>> = [];
        let handedOver = false;
        try {
          await previousSubmitted;
          if (signal.aborted) {
            markSubmitted();
            return null; // abandoned: no inference for a result nobody takes
          }
          const scan = await submitSlots(frame, raw, signal, jobs, markSubmitted);
          handedOver = true;
          return { ...scan, decodeMs };
        } finally {
          // Not handed over (abandoned, or an unexpected throw): the buffer goes back once no crop can still read it.
          if (!handedOver) void Promise.allSettled(jobs).then(() => raw.release?.());
        }
      };

      /** Crops every slot of a decoded frame into the batchers; resolves with the predictions (`jobs` holds them meanwhile). */
      const submitSlots = async (frame: Frame, raw: RawImage, signal: AbortSignal, jobs: Array<Promise<ScannedSlot | null>>, markSubmitted: () => void): Promise<Omit<FrameScan, 'decodeMs'>> => {
        // Slot boxes are in the full-resolution frame's pixels, whatever scale it was decoded at.
        const frameSize = { width: raw.sourceWidth, height: raw.sourceHeight };
        for (const slot of cam.slots) {
          let crop: Crop;
          try {
            const planned = planCrops(frame, frameSize, [slot], { raw });
            crop = planned.crops[0]!;
            if (planned.warnings.length && !warned.has(slot.id)) {
              warned.add(slot.id);
              observer.cropWarning(cam.id, slot.id, planned.warnings[0]!);
            }
          } catch (err) {
            st.cropErrors++;
            observer.frameError(cam.id, frame, 'crop', asError(err), slot.id);
            continue;
          }
          const entry = models.get(slot.model)!;
          const batcher = localBatchers.get(slot.model)!;
          st.crops++;
          const pixels = pixelBox(crop.box, frameSize, raw);
          jobs.push(
            batcher.submit({ raw, box: pixels, threshold: slot.threshold ?? entry.threshold }).then(
              (prediction) => ({ crop, pixels, prediction }),
              (err: unknown) => {
                // After a teardown the rejection is the closed batcher's (or nobody wants the result).
                if (!signal.aborted) {
                  st.inferenceErrors++;
                  observer.frameError(cam.id, frame, 'inference', asError(err), slot.id);
                }
                return null;
              },
            ),
          );
        }
        markSubmitted();
        const slots = (await Promise.all(jobs)).filter((s): s is ScannedSlot => s !== null);
        return { frame, raw, slots };
      };

      /** One slot of a scan between its post-processing and its commit. */
      interface SlotResult {
        item: SlotPrediction;
        pixels: Box;
        key: string;
        decision: SlotDecision;
        previous: DebounceState | undefined;
        state: DebounceState;
        transition: SlotTransition;
        thumbnail: Thumbnail | null;
      }

      const slotFailed = (frame: Frame, slot: string, err: unknown) => {
        st.postprocessErrors++;
        observer.frameError(cam.id, frame, 'postprocess', asError(err), slot);
      };

      /**
       * Debounce + events + thumbnails of one scan (called in capture order). Null when the frame
       * was abandoned meanwhile (nothing committed). Each slot fails on its own.
       */
      const finishFrame = async (scan: FrameScan, signal: AbortSignal): Promise<ShelfOutput[] | null> => {
        // 1. Regions and the slot's next debounce state; nothing is committed yet (step is pure).
        const results: SlotResult[] = [];
        for (const { crop, pixels, prediction } of scan.slots) {
          try {
            const regions = prediction.isAnomalous && hasMaps(prediction) ? toRegions(prediction, crop.box, { minAreaFraction }) : [];
            const item: SlotPrediction = { crop, prediction, regions };
            const key = slotKey(cam.id, crop.slot);
            const previous = states.get(key);
            const decision: SlotDecision = {
              camera: cam.id,
              slot: crop.slot,
              anomalous: prediction.isAnomalous,
              score: prediction.score,
              at: crop.frame.capturedAt,
              regions: regions.map((r) => r.box),
            };
            const { state, transition } = step(previous, decision, debounceOptions);
            results.push({ item, pixels, key, decision, previous, state, transition, thumbnail: null });
          } catch (err) {
            slotFailed(scan.frame, crop.slot, err);
          }
        }
        // 2. Thumbnails for the scans that raise or update an event (new/update; a raise or update
        //    comes only from an anomalous scan, which keeps its mask).
        if (thumbs.enabled) {
          for (const r of results) {
            const { prediction } = r.item;
            if ((r.transition !== 'raised' && r.transition !== 'updated') || !hasMaps(prediction)) continue;
            try {
              r.thumbnail = await renderThumbnail({ frame: scan.raw, box: r.pixels }, prediction, { maxSize: thumbs.maxSize, quality: thumbs.quality });
            } catch (err) {
              if (signal.aborted) break;
              st.thumbnailErrors++;
              observer.frameError(cam.id, scan.frame, 'thumbnail', asError(err), r.item.crop.slot);
            }
            if (signal.aborted) break;
          }
        }
        if (signal.aborted) return null;
        // 3. Commit, synchronously from here on: the outputs are emitted right after.
        const outputs: ShelfOutput[] = [];
        for (const r of results) {
          const { item, decision, previous, state, transition, thumbnail } = r;
          let output: ShelfOutput;
          try {
            // The snapshot says thumbnail: true only when one was rendered for this scan.
            const event = events.build({ item, decision, previous, state, transition }, { thumbnail: thumbnail !== null });
            states.set(r.key, state);
            const open = events.openEvent(cam.id, item.crop.slot);
            output = { item, event, state: slotStatePayload(state, open?.id ?? null), thumbnail, debounce: state };
          } catch (err) {
            slotFailed(scan.frame, item.crop.slot, err);
            continue;
          }
          outputs.push(output);
          if (output.event) {
            st.events[output.event.type]++;
            observer.event(output.event);
          }
        }
        return outputs;
      };

      const work = async (frame: Frame, signal: AbortSignal): Promise<ShelfOutput[]> => {
        st.pending--;
        st.inFlight++;
        observer.frameStarted(cam.id, frame);
        const previous = chain;
        let release!: () => void;
        chain = new Promise<void>((resolve) => (release = resolve));
        const previousSubmitted = submitted;
        let markSubmitted!: () => void;
        submitted = new Promise<void>((resolve) => (markSubmitted = resolve));
        let scan: FrameScan | null = null;
        try {
          scan = await predictFrame(frame, signal, previousSubmitted, markSubmitted);
          await previous;
          if (!scan || signal.aborted) return [];
          const outputs = await finishFrame(scan, signal);
          if (!outputs) return [];
          st.framesScanned++;
          observer.frameScanned(cam.id, frame, { decodeMs: scan.decodeMs, totalMs: clock() - frame.capturedAt, slots: scan.slots.length });
          return outputs;
        } catch (err) {
          // Not expected (every step above reports its own failures); never let it kill the camera.
          if (!signal.aborted) observer.frameError(cam.id, frame, 'inference', asError(err));
          return [];
        } finally {
          st.inFlight--;
          void previousSubmitted.then(markSubmitted); // if this frame never got to submit (no-op otherwise)
          // Every crop is scored and every thumbnail rendered: nothing reads the decoded frame any more.
          scan?.raw.release?.();
          release();
          observer.frameFinished(cam.id, frame);
        }
      };

      return cam.frames$.pipe(
        tap({
          next: (frame) => {
            st.framesIn++;
            st.pending++;
            observer.frameReceived(cam.id, frame);
          },
          complete: () => {
            st.ended = true;
            observer.cameraEnded(cam.id);
          },
        }),
        // Its teardown (unsubscribe, the stream failing) aborts `signal` for the frames in flight.
        dropOldestWhileBusy(work, {
          capacity: options.maxPendingFrames,
          concurrency: framesInFlight,
          onDrop: (frame) => {
            st.pending--;
            st.framesDropped++;
            observer.frameDropped(cam.id, frame);
          },
        }),
        mergeMap((outputs) => from(outputs)),
        catchError((err: unknown) => {
          const error = asError(err);
          st.failed = error.message;
          st.pending = 0;
          observer.cameraError(cam.id, error);
          return EMPTY;
        }),
        finalize(() => {
          st.pending = 0; // frames still queued at an unsubscribe are never worked on
        }),
      );
    });

    return new Observable<ShelfOutput>((subscriber) => {
      const sub = merge(...perCamera).subscribe(subscriber);
      return () => {
        sub.unsubscribe();
        for (const b of localBatchers.values()) b.close();
      };
    });
  });

  return {
    outputs$,
    stats: () => ({
      cameras: Object.fromEntries(Object.entries(cameraStats).map(([id, s]) => [id, { ...s, events: { ...s.events } }])),
      models: Object.fromEntries([...batchers].map(([name, b]) => [name, b.stats()])),
      observerErrors,
    }),
    swapModel: async (name, model) => {
      const entry = models.get(name);
      if (!entry) throw new Error(`shelf pipeline: no model called '${name}' (loaded: ${[...models.keys()].join(', ') || 'none'})`);
      const batcher = batchers.get(name);
      // The batcher checks input size and normalization before anything changes.
      const oldIdle = batcher ? batcher.swapModel(model) : Promise.resolve();
      models.set(name, { ...entry, model });
      await oldIdle;
    },
    model: (name) => models.get(name)?.model,
    lastNormalInput: (name) => batchers.get(name)?.lastNormalInput() ?? null,
  };
}
