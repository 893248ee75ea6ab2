/**
 * `replay` source: an image sequence — an explicit file list, or a directory's image files in
 * natural name order — for tests and field validation. Files are read one at a time, never all
 * at once.
 *
 * `frames$` emits one file every `intervalMs` (the first at once); with `intervalMs: 0` the next
 * file is read only after the consumer's `next` returned and the event loop had a turn.
 * `onDemand(demand$)` is the pull form: one file per demand signal, for consumers that want
 * strict backpressure (ask for the next frame when done with the last).
 * A file that cannot be read or is not an image is a counted error and is skipped; a pass in
 * which no file at all could be read fails the source rather than spin.
 */
import { readdir } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { Observable, type Subscriber } from 'rxjs';
import type { Frame } from '../../pipelines/types.js';
import { DEFAULT_IMAGE_PATTERN, globToRegExp } from './file-pattern.js';
import { checkImage } from './image-magic.js';
import { DEFAULT_MAX_FILE_BYTES, readRegularFile } from './read-file.js';
import { SourceTracker } from './status.js';
import { silentLogger, type PushSource, type ReplaySpec, type SourceOptions, type SourceStatus } from './types.js';

const IMAGE_FILE = globToRegExp(DEFAULT_IMAGE_PATTERN);
const naturalOrder = new Intl.Collator('en', { numeric: true, sensitivity: 'base' }).compare;

/** The image files of a directory in natural name order (frame2 before frame10). */
export async function listImageFiles(dir: string): Promise<string[]> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new Error(code === 'ENOENT' ? `replay dir ${dir} does not exist` : `replay dir ${dir}: ${(err as Error).message}`);
  }
  return names.filter((n) => IMAGE_FILE.test(n)).sort(naturalOrder).map((n) => join(dir, n));
}

/** A file read (stamped as a frame only when delivered: the consumer may have left meanwhile), the end, or a failure. */
type Step = { file: { data: Buffer; path: string } } | { done: true } | { failed: Error };

export interface ReplayOptions extends SourceOptions {
  /** Largest file accepted, default 64 MiB. */
  maxBytes?: number;
}

export class ReplaySource implements PushSource {
  readonly kind = 'replay' as const;
  readonly mode = 'push' as const;
  readonly origin: string;
  readonly frames$: Observable<Frame>;
  readonly status$: Observable<SourceStatus>;
  private readonly tracker: SourceTracker;
  private readonly intervalMs: number;
  private readonly maxBytes: number;

  constructor(
    readonly camera: string,
    private readonly spec: ReplaySpec,
    options: ReplayOptions = {},
  ) {
    this.maxBytes = options.maxBytes ?? DEFAULT_MAX_FILE_BYTES;
    if ((spec.files === undefined) === (spec.dir === undefined)) {
      throw new Error(`camera ${camera}: replay source needs exactly one of \`files\` or \`dir\``);
    }
    this.intervalMs = spec.intervalMs ?? 1000;
    if (!(this.intervalMs >= 0)) throw new Error(`camera ${camera}: replay intervalMs must be >= 0, got ${spec.intervalMs}`);
    this.origin = spec.dir !== undefined ? resolve(spec.dir) : `${spec.files!.length} files`;
    this.tracker = new SourceTracker(camera, 'replay', options.clock ?? Date.now, options.logger ?? silentLogger);
    this.status$ = this.tracker.status$;
    this.frames$ = new Observable<Frame>((subscriber) => {
      let timer: NodeJS.Timeout | undefined;
      let closed = false;
      const cursor = this.cursor();
      const tick = async () => {
        timer = undefined;
        const step = await cursor.next();
        if (closed) return;
        // The consumer may have left in next() (take(1)): read nothing more.
        if (!this.deliver(step, subscriber) || closed) return;
        // setTimeout(0) rather than a tight loop: lets I/O and the consumer's async work run.
        timer = setTimeout(() => void tick(), this.intervalMs);
      };
      void tick();
      return () => {
        closed = true;
        if (timer) clearTimeout(timer);
        this.tracker.stop();
      };
    });
  }

  status(): SourceStatus {
    return this.tracker.status();
  }

  /** One frame per value of `demand$` (demands that arrive while a file is read are queued as a count). */
  onDemand(demand$: Observable<unknown>): Observable<Frame> {
    return new Observable<Frame>((subscriber) => {
      const cursor = this.cursor();
      let wanted = 0;
      let reading = false;
      let closed = false;
      const pump = async () => {
        if (reading) return;
        reading = true;
        while (wanted > 0 && !closed) {
          wanted--;
          const step = await cursor.next();
          if (closed || !this.deliver(step, subscriber)) break;
        }
        reading = false;
      };
      const demands = demand$.subscribe({
        next: () => {
          wanted++;
          void pump();
        },
        error: (err) => subscriber.error(err),
      });
      return () => {
        closed = true;
        demands.unsubscribe();
        this.tracker.stop();
      };
    });
  }

  /** Pushes a step to the subscriber; false when the stream ended. */
  private deliver(step: Step, subscriber: Subscriber<Frame>): boolean {
    if ('file' in step) {
      subscriber.next(this.tracker.frame(step.file.data, step.file.path));
      return true;
    }
    if ('done' in step) {
      this.tracker.setState('stopped');
      subscriber.complete();
    } else {
      this.tracker.error(step.failed, {}, 'error');
      this.tracker.setState('failed');
      subscriber.error(step.failed);
    }
    return false;
  }

  /** Walks the sequence (and around again when looping), one file per `next()`. */
  private cursor(): { next(): Promise<Step> } {
    let files: string[] | undefined;
    let index = 0;
    let framesThisPass = 0;
    this.tracker.setState('starting');
    const list = async () => (this.spec.dir !== undefined ? listImageFiles(resolve(this.spec.dir)) : this.spec.files!.map((f) => resolve(f)));
    const next = async (): Promise<Step> => {
      for (;;) {
        try {
          if (files === undefined || (index >= files.length && this.spec.loop && framesThisPass > 0)) {
            files = await list(); // re-listed each pass: a replay dir may gain files
            index = 0;
            framesThisPass = 0;
            if (files.length === 0) throw new Error(`replay source of camera ${this.camera} has no image files (${this.origin})`);
          }
        } catch (err) {
          return { failed: err as Error };
        }
        if (index >= files.length) {
          if (this.spec.loop) return { failed: new Error(`replay source of camera ${this.camera}: none of ${files.length} files could be read (${this.origin})`) };
          return { done: true };
        }
        const path = files[index++];
        try {
          const data = await readRegularFile(path, this.maxBytes);
          checkImage(data, path);
          framesThisPass++;
          return { file: { data, path } };
        } catch (err) {
          const code = (err as NodeJS.ErrnoException).code;
          this.tracker.error(code === 'ENOENT' ? `replay file ${path} does not exist` : (err as Error).message, { file: path });
        }
      }
    };
    return { next };
  }
}
