/**
 * The bounded buffer between capture and inference. Live cameras keep producing frames whether
 * or not inference keeps up; a plain concatMap would queue them without limit. Here at most
 * `capacity` items wait, and when a new one arrives on a full queue the OLDEST waiting item is
 * dropped (the newest frame is the one worth scanning) and reported through `onDrop`.
 *
 * The operator owns the worker call so that backpressure is real: the next item is pulled from
 * the queue only when the worker's observable/promise for the previous one has finished.
 *
 * Teardown (unsubscribe, or an error from the source or a worker) unsubscribes the running
 * workers' observables, but a promise cannot be cancelled: the worker gets an AbortSignal that is
 * aborted at teardown, so work still running can tell that nobody takes its result any more and
 * leave shared state alone.
 */
import { Observable, from, type ObservableInput, type OperatorFunction, type Subscription } from 'rxjs';

/** A fixed-capacity FIFO ring buffer that drops its oldest entry when pushed while full. */
export class DropOldestBuffer<T> {
  private readonly slots: (T | undefined)[];
  private head = 0;
  private size = 0;
  /** How many items were dropped since construction. */
  dropped = 0;

  constructor(readonly capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 1) {
      throw new RangeError(`DropOldestBuffer capacity must be an integer ≥ 1, got ${String(capacity)}`);
    }
    this.slots = new Array<T | undefined>(capacity);
  }

  get length(): number {
    return this.size;
  }

  /** Appends `item`; when the buffer was full, the oldest item is evicted and returned. */
  push(item: T): { dropped: boolean; item?: T } {
    if (this.size < this.capacity) {
      this.slots[(this.head + this.size) % this.capacity] = item;
      this.size += 1;
      return { dropped: false };
    }
    const oldest = this.slots[this.head] as T;
    this.slots[this.head] = item;
    this.head = (this.head + 1) % this.capacity;
    this.dropped += 1;
    return { dropped: true, item: oldest };
  }

  /** Removes and returns the oldest item; `undefined` when empty. */
  shift(): T | undefined {
    if (this.size === 0) return undefined;
    const item = this.slots[this.head];
    this.slots[this.head] = undefined;
    this.head = (this.head + 1) % this.capacity;
    this.size -= 1;
    return item;
  }

  /** Empties the buffer (without counting drops) and returns what was in it, oldest first. */
  clear(): T[] {
    const out: T[] = [];
    while (this.size > 0) out.push(this.shift() as T);
    return out;
  }
}

export interface DropOldestOptions<T> {
  /** Items allowed to WAIT (not counting those being worked on); integer ≥ 1. */
  capacity: number;
  /**
   * Called synchronously with every item dropped from the queue. If it throws, the output errors
   * with that error (like a throwing worker); pass a hook that cannot throw to keep going.
   */
  onDrop?: (item: T) => void;
  /** Items worked on at once (integer ≥ 1, default 1). */
  concurrency?: number;
}

/**
 * Like `concatMap(work)`, but with a bounded drop-oldest queue in front of the worker.
 * Order is preserved among the kept items (with concurrency 1 their results come out in
 * input order). When the source completes, the queued items are still worked off before the
 * output completes. An error from the source, a worker or `onDrop` errors the output at once.
 * `signal` (the same for every item of one subscription) is aborted at teardown: unsubscribe, or
 * the output erroring (completion comes only once every item has been worked off).
 */
export function dropOldestWhileBusy<T, R>(
  work: (item: T, signal: AbortSignal) => ObservableInput<R>,
  options: DropOldestOptions<T>,
): OperatorFunction<T, R> {
  const { capacity, onDrop } = options;
  const concurrency = options.concurrency ?? 1;
  if (!Number.isInteger(concurrency) || concurrency < 1) {
    throw new RangeError(`dropOldestWhileBusy concurrency must be an integer ≥ 1, got ${String(concurrency)}`);
  }
  // Validate eagerly so a bad capacity fails at assembly, not at the first frame.
  new DropOldestBuffer<T>(capacity);

  return (source) =>
    new Observable<R>((subscriber) => {
      const queue = new DropOldestBuffer<T>(capacity);
      const running = new Set<Subscription>();
      const abort = new AbortController();
      let sourceDone = false;
      let closed = false;

      /** Errors the output once (the teardown below then aborts the running work). */
      const fail = (err: unknown) => {
        if (closed) return;
        closed = true;
        subscriber.error(err);
      };

      const finishIfIdle = () => {
        if (sourceDone && running.size === 0 && queue.length === 0 && !closed) {
          closed = true;
          subscriber.complete();
        }
      };

      const pump = () => {
        while (!closed && running.size < concurrency && queue.length > 0) {
          const item = queue.shift() as T;
          let inner: Subscription | null = null;
          let finishedSynchronously = false;
          const release = () => {
            if (inner) running.delete(inner);
            else finishedSynchronously = true;
          };
          let input: Observable<R>;
          try {
            input = from(work(item, abort.signal));
          } catch (err) {
            fail(err);
            return;
          }
          inner = input.subscribe({
            next: (r) => subscriber.next(r),
            error: (err) => {
              release();
              fail(err);
            },
            complete: () => {
              release();
              pump();
              finishIfIdle();
            },
          });
          if (!finishedSynchronously && !inner.closed) running.add(inner);
        }
      };

      const sub = source.subscribe({
        next: (item) => {
          if (closed) return;
          try {
            const res = queue.push(item);
            if (res.dropped) onDrop?.(res.item as T);
            pump();
          } catch (err) {
            // Thrown here it would escape as an unhandled error (a process crash): error the output.
            fail(err);
          }
        },
        error: (err) => fail(err),
        complete: () => {
          sourceDone = true;
          finishIfIdle();
        },
      });

      return () => {
        closed = true;
        sub.unsubscribe();
        for (const s of running) s.unsubscribe();
        running.clear();
        queue.clear();
        abort.abort();
      };
    });
}
