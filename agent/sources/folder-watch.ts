/**
 * `folder` source: image files dropped into a directory (cameras that upload by FTP/SMB, a
 * script that grabs stills). chokidar watches the directory; a file is read only once its size
 * has been stable for `stableMs`, so half-written uploads are never emitted. A file that is
 * replaced under the same name (`snapshot.jpg` overwritten each time) counts as a new frame.
 * Files that vanish or are not images are counted errors; the watch goes on.
 */
import { stat, readFile, unlink } from 'node:fs/promises';
import { basename, resolve } from 'node:path';
import { watch, type FSWatcher } from 'chokidar';
import { Observable, type Subscriber } from 'rxjs';
import type { Frame } from '../../pipelines/types.js';
import { Backoff } from './backoff.js';
import { DEFAULT_IMAGE_PATTERN, globToRegExp } from './file-pattern.js';
import { checkImage } from './image-magic.js';
import { SourceTracker } from './status.js';
import { silentLogger, type FolderSpec, type PushSource, type SourceOptions, type SourceStatus } from './types.js';

export const DEFAULT_STABLE_MS = 1000;

export interface FolderWatchOptions extends SourceOptions {
  /** Largest file accepted, default 64 MiB. */
  maxBytes?: number;
  /** Poll the directory instead of inotify (network shares), default false. */
  usePolling?: boolean;
}

export class FolderWatchSource implements PushSource {
  readonly kind = 'folder' as const;
  readonly mode = 'push' as const;
  readonly origin: string;
  readonly frames$: Observable<Frame>;
  readonly status$: Observable<SourceStatus>;
  private readonly dir: string;
  private readonly match: RegExp;
  private readonly tracker: SourceTracker;

  constructor(
    readonly camera: string,
    private readonly spec: FolderSpec,
    private readonly options: FolderWatchOptions = {},
  ) {
    this.dir = resolve(spec.path);
    this.origin = this.dir;
    this.match = globToRegExp(spec.pattern ?? DEFAULT_IMAGE_PATTERN);
    if (spec.stableMs !== undefined && !(spec.stableMs >= 0)) throw new Error(`camera ${camera}: folder stableMs must be >= 0, got ${spec.stableMs}`);
    this.tracker = new SourceTracker(camera, 'folder', options.clock ?? Date.now, options.logger ?? silentLogger);
    this.status$ = this.tracker.status$;
    this.frames$ = new Observable<Frame>((subscriber) => this.run(subscriber));
  }

  status(): SourceStatus {
    return this.tracker.status();
  }

  private run(subscriber: Subscriber<Frame>): () => void {
    const backoff = new Backoff(this.options.backoff);
    const stableMs = this.spec.stableMs ?? DEFAULT_STABLE_MS;
    const maxBytes = this.options.maxBytes ?? 64 * 1024 * 1024;
    let watcher: FSWatcher | undefined;
    let retry: NodeJS.Timeout | undefined;
    let closed = false;
    // Files are read one after another so frames keep the order the files were completed in.
    let queue: Promise<void> = Promise.resolve();
    this.tracker.setState('starting');

    const readOne = async (path: string) => {
      if (closed) return;
      try {
        const info = await stat(path);
        if (info.size > maxBytes) throw new Error(`${path} is ${info.size} bytes, over the ${maxBytes} byte limit`);
        const data = await readFile(path);
        checkImage(data, path);
        if (closed) return;
        subscriber.next(this.tracker.frame(data, path));
      } catch (err) {
        if (closed) return;
        const code = (err as NodeJS.ErrnoException).code;
        const message = code === 'ENOENT' ? `${path} vanished before it could be read` : err instanceof Error ? err.message : String(err);
        this.tracker.error(message, { file: path });
        return;
      }
      if (this.spec.deleteAfter) {
        await unlink(path).catch((err: Error) => this.tracker.error(`cannot delete ${path} after reading: ${err.message}`, { file: path }));
      }
    };

    const onFile = (path: string) => {
      if (!this.match.test(basename(path))) return;
      queue = queue.then(() => readOne(path));
    };

    const start = async () => {
      retry = undefined;
      try {
        const info = await stat(this.dir);
        if (!info.isDirectory()) throw new Error(`folder source path ${this.dir} is not a directory`);
      } catch (err) {
        if (closed) return;
        const code = (err as NodeJS.ErrnoException).code;
        this.tracker.error(code === 'ENOENT' ? `folder source path ${this.dir} does not exist` : (err as Error).message, { path: this.dir });
        // A share that is mounted late, or a drop folder created by another service: wait for it.
        const delay = backoff.next();
        this.tracker.reconnecting(delay);
        retry = setTimeout(() => void start(), delay);
        return;
      }
      if (closed) return;
      const w = watch(this.dir, {
        depth: 0,
        ignoreInitial: !this.spec.includeExisting,
        usePolling: this.options.usePolling ?? false,
        awaitWriteFinish: stableMs > 0 ? { stabilityThreshold: stableMs, pollInterval: Math.max(20, Math.min(100, stableMs / 4)) } : false,
        ignored: (path, stats) => path !== this.dir && stats?.isFile() === true && !this.match.test(basename(path)),
      });
      watcher = w;
      w.on('add', onFile);
      w.on('change', onFile);
      w.on('error', (err) => this.tracker.error(`watching ${this.dir}: ${(err as Error).message}`, { path: this.dir }));
      w.on('ready', () => {
        if (closed) return;
        backoff.reset();
        this.tracker.setState('running');
        this.tracker.log('debug', 'watching folder', { path: this.dir });
      });
    };

    void start();
    return () => {
      closed = true;
      if (retry) clearTimeout(retry);
      void watcher?.close();
      this.tracker.stop();
    };
  }
}
