/**
 * `folder` source: image files dropped into a directory (cameras that upload by FTP/SMB, a
 * script that grabs stills). chokidar watches the directory; a file is read only once its size
 * has been stable for `stableMs`, so half-written uploads are never emitted. A file that is
 * replaced under the same name (`snapshot.jpg` overwritten each time) counts as a new frame.
 * Files that vanish or are not images are counted errors; the watch goes on.
 * If the directory itself goes away (removed, replaced, a share unmounted) the source goes
 * `reconnecting` and watches it again once it is back, taking the files already in it as new.
 */
import { stat, unlink } from 'node:fs/promises';
import { basename, resolve } from 'node:path';
import { watch, type FSWatcher } from 'chokidar';
import { Observable, type Subscriber } from 'rxjs';
import type { Frame } from '../../pipelines/types.js';
import { Backoff } from './backoff.js';
import { DEFAULT_IMAGE_PATTERN, globToRegExp } from './file-pattern.js';
import { checkImage } from './image-magic.js';
import { DEFAULT_MAX_FILE_BYTES, readRegularFile } from './read-file.js';
import { SourceTracker } from './status.js';
import { silentLogger, type FolderSpec, type PushSource, type SourceOptions, type SourceStatus } from './types.js';

export const DEFAULT_STABLE_MS = 1000;

export interface FolderWatchOptions extends SourceOptions {
  /** Largest file accepted, default 64 MiB. */
  maxBytes?: number;
  /** Poll the directory instead of inotify (network shares), default false. */
  usePolling?: boolean;
  /** How often to check that the watched directory is still there, default 2000 ms. */
  dirCheckMs?: number;
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
    const maxBytes = this.options.maxBytes ?? DEFAULT_MAX_FILE_BYTES;
    let watcher: FSWatcher | undefined;
    let retry: NodeJS.Timeout | undefined;
    let dirCheck: NodeJS.Timeout | undefined;
    let closed = false;
    // Files already in the folder are new to us when asked for, and after the folder was missing.
    let emitExisting = this.spec.includeExisting ?? false;
    // Files are read one after another so frames keep the order the files were completed in.
    let queue: Promise<void> = Promise.resolve();
    this.tracker.setState('starting');

    const readOne = async (path: string) => {
      if (closed) return;
      try {
        const data = await readRegularFile(path, maxBytes);
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

    const retryLater = () => {
      const delay = backoff.next();
      this.tracker.reconnecting(delay);
      retry = setTimeout(() => void start(), delay);
    };

    /** The watched folder was removed or replaced: inotify watches the old inode, so watch anew. */
    const checkDir = async (w: FSWatcher, identity: string) => {
      let problem: string | undefined;
      try {
        const info = await stat(this.dir);
        if (!info.isDirectory()) problem = `folder source path ${this.dir} is no longer a directory`;
        else if (`${info.dev}:${info.ino}` !== identity) problem = `folder source path ${this.dir} was replaced by another directory`;
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        problem = code === 'ENOENT' ? `folder source path ${this.dir} was removed` : `folder source path ${this.dir}: ${(err as Error).message}`;
      }
      if (problem === undefined || closed || watcher !== w) return;
      watcher = undefined;
      clearInterval(dirCheck);
      void w.close();
      this.tracker.error(problem, { path: this.dir });
      emitExisting = true;
      retryLater();
    };

    const start = async () => {
      retry = undefined;
      let identity: string;
      try {
        const info = await stat(this.dir);
        if (!info.isDirectory()) throw new Error(`folder source path ${this.dir} is not a directory`);
        identity = `${info.dev}:${info.ino}`;
      } catch (err) {
        if (closed) return;
        const code = (err as NodeJS.ErrnoException).code;
        this.tracker.error(code === 'ENOENT' ? `folder source path ${this.dir} does not exist` : (err as Error).message, { path: this.dir });
        // A share that is mounted late, or a drop folder created by another service: wait for it.
        emitExisting = true;
        retryLater();
        return;
      }
      if (closed) return;
      const w = watch(this.dir, {
        depth: 0,
        ignoreInitial: !emitExisting,
        usePolling: this.options.usePolling ?? false,
        awaitWriteFinish: stableMs > 0 ? { stabilityThreshold: stableMs, pollInterval: Math.max(20, Math.min(100, stableMs / 4)) } : false,
        ignored: (path, stats) => path !== this.dir && stats?.isFile() === true && !this.match.test(basename(path)),
      });
      watcher = w;
      w.on('add', onFile);
      w.on('change', onFile);
      w.on('error', (err) => this.tracker.error(`watching ${this.dir}: ${(err as Error).message}`, { path: this.dir }));
      // inotify reports the folder's own removal/rename as a raw event on it; the timer covers the rest (polling, NFS).
      w.on('raw', (_event, name, details) => {
        if ((details as { watchedPath?: string }).watchedPath === this.dir && name === basename(this.dir)) void checkDir(w, identity);
      });
      dirCheck = setInterval(() => void checkDir(w, identity), this.options.dirCheckMs ?? 2000);
      w.on('ready', () => {
        if (closed || watcher !== w) return;
        backoff.reset();
        this.tracker.setState('running');
        this.tracker.log('debug', 'watching folder', { path: this.dir });
      });
    };

    void start();
    return () => {
      closed = true;
      if (retry) clearTimeout(retry);
      clearInterval(dirCheck);
      void watcher?.close();
      this.tracker.stop();
    };
  }
}
