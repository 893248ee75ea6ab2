/**
 * Micro-batching for inference: group items (crops) into arrays of at most `maxSize`, and run
 * one batch at a time through an async inference function, emitting per-item results in order.
 *
 * `microBatch` differs from rxjs `bufferTime(ms, null, size)` in that its timer starts when the
 * FIRST item of a batch arrives (not on a fixed grid), so no item waits longer than `maxWaitMs`
 * and an idle stream schedules nothing.
 */
import {
  Observable,
  asyncScheduler,
  concatMap,
  from,
  mergeMap,
  map,
  type OperatorFunction,
  type SchedulerLike,
  type Subscription,
} from 'rxjs';

export interface MicroBatchOptions {
  /** Largest batch emitted (integer ≥ 1); a full batch is emitted at once. */
  maxSize: number;
  /** Longest time (ms, ≥ 0) the oldest item of a batch waits before the batch is flushed. */
  maxWaitMs: number;
  /** Scheduler for the wait timer; defaults to asyncScheduler (virtualised by TestScheduler.run). */
  scheduler?: SchedulerLike;
}

export interface InferInBatchesOptions {
  /** Batches in flight at once (integer ≥ 1, default 1). Results are emitted in input order. */
  concurrency?: number;
}

function requireInteger(name: string, value: unknown, min: number): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min) {
    throw new RangeError(`${name} must be an integer ≥ ${min}, got ${String(value)}`);
  }
  return value;
}

/**
 * Groups items into arrays of at most `maxSize`. A batch is emitted when it is full, or when its
 * oldest item has waited `maxWaitMs`; what is left is flushed when the source completes. On a
 * source error the pending items are discarded and the error is forwarded.
 */
export function microBatch<T>(options: MicroBatchOptions): OperatorFunction<T, T[]> {
  const maxSize = requireInteger('microBatch maxSize', options.maxSize, 1);
  const { maxWaitMs } = options;
  if (typeof maxWaitMs !== 'number' || !Number.isFinite(maxWaitMs) || maxWaitMs < 0) {
    throw new RangeError(`microBatch maxWaitMs must be a finite number ≥ 0, got ${String(maxWaitMs)}`);
  }
  const scheduler = options.scheduler ?? asyncScheduler;

  return (source) =>
    new Observable<T[]>((subscriber) => {
      let batch: T[] = [];
      let timer: Subscription | null = null;

      const flush = () => {
        timer?.unsubscribe();
        timer = null;
        if (batch.length === 0) return;
        const out = batch;
        batch = [];
        subscriber.next(out);
      };

      const sub = source.subscribe({
        next: (item) => {
          batch.push(item);
          if (batch.length >= maxSize) {
            flush();
          } else if (timer === null) {
            timer = scheduler.schedule(flush, maxWaitMs);
          }
        },
        error: (err) => {
          timer?.unsubscribe();
          batch = [];
          subscriber.error(err);
        },
        complete: () => {
          flush();
          subscriber.complete();
        },
      });

      return () => {
        timer?.unsubscribe();
        sub.unsubscribe();
        batch = [];
      };
    });
}

/**
 * Runs `infer` on each incoming batch and emits its results one by one, in input order.
 * With the default concurrency of 1 the next batch starts only when the previous one resolved
 * (concatMap). `infer` must return exactly one result per item; anything else is an error.
 * A rejected `infer` errors the stream: callers that want to survive a failed batch should
 * catch inside `infer` and return per-item error values.
 */
export function inferInBatches<T, R>(
  infer: (items: T[]) => Promise<R[]>,
  options: InferInBatchesOptions = {},
): OperatorFunction<T[], R> {
  const concurrency = requireInteger('inferInBatches concurrency', options.concurrency ?? 1, 1);

  const run = async (batch: T[]): Promise<R[]> => {
    const results = await infer(batch);
    if (!Array.isArray(results) || results.length !== batch.length) {
      const got = Array.isArray(results) ? `${results.length} results` : typeof results;
      throw new Error(`inferInBatches: infer returned ${got} for a batch of ${batch.length} items`);
    }
    return results;
  };

  if (concurrency === 1) {
    return (source) => source.pipe(concatMap((batch) => from(run(batch))), mergeMap((results) => results));
  }

  // Several batches in flight: results may resolve out of order, so hold them until every
  // earlier batch has been emitted.
  return (source) =>
    new Observable<R>((subscriber) => {
      const done = new Map<number, R[]>();
      let nextToEmit = 0;
      const sub = source
        .pipe(
          mergeMap((batch, index) => from(run(batch)).pipe(map((results) => ({ index, results }))), concurrency),
        )
        .subscribe({
          next: ({ index, results }) => {
            done.set(index, results);
            for (let ready = done.get(nextToEmit); ready !== undefined; ready = done.get(nextToEmit)) {
              done.delete(nextToEmit);
              nextToEmit += 1;
              for (const r of ready) subscriber.next(r);
            }
          },
          error: (err) => subscriber.error(err),
          complete: () => subscriber.complete(),
        });
      return () => sub.unsubscribe();
    });
}
