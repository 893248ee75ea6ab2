/**
 * `folder` source: image files dropped into a directory (cameras that upload by FTP/SMB, a
 * script that grabs stills). chokidar watches the directory; a file is read only once its size
 * has been stable for `stableMs`, so half-written uploads are never emitted. A file that is
 * replaced under the same name (`snapshot.jpg` overwritten each time) counts as a new frame.
 * Files that vanish or are not images are counted errors; the watch goes on.
 * If the directory itself goes away (removed, replaced, a share unmounted) the source goes
 * `reconnecting` and watches it again once it is back, taking the files already in it as new.
 * With no inotify watch left (fs.inotify limits reached) the folder is polled instead, and the
 * status says so.
 *
 * Files that arrive while chokidar makes its first scan are not lost: chokidar would take them
 * as already there (`ignoreInitial`), or — arriving after it read the folder but before it
 * watched it — not see them until the next change. An fs.watch opened at subscribe notes every
 * name created or written from then on, and when chokidar is ready those files are emitted once
 * their size is stable (a polled network folder, whose remote writes inotify does not see, also
 * takes files whose mtime is at most NEW_FILE_MARGIN_MS before subscribe). A file that comes
 * both ways is emitted once: each is checked against the version (inode, size, mtime) emitted.
 */
import { watch as watchDir, type Stats } from 'node:fs';
import { readdir, stat, unlink } from 'node:fs/promises';
import { basename, join, resolve } from 'node:path';
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

/**
 * Polled folders only (network shares): a file found when the watch is ready counts as new if its
 * mtime is no more than this before subscribe — mtime granularity (FAT/SMB: 2 s) and the file
 * server's clock. Local folders need no margin: their new files are known by name (fs.watch).
 */
export const NEW_FILE_MARGIN_MS = 2000;

/** Names noted between subscribe and chokidar's `ready`; past this many the folder is scanned by mtime instead. */
const MAX_EARLY_NAMES = 10_000;

/** Names of the entries created or written in `dir` from now on, until closed. */
interface EarlyChanges {
  names: Set<string>;
  /** Some change could not be noted by name (no name given, an error, too many): scan by mtime. */
  blind: boolean;
  close(): void;
}

function noteChanges(dir: string): EarlyChanges {
  const early: EarlyChanges = { names: new Set(), blind: false, close: () => {} };
  try {
    const w = watchDir(dir, { persistent: false }, (_event, name) => {
      if (typeof name === 'string' && name !== '' && early.names.size < MAX_EARLY_NAMES) early.names.add(name);
      else early.blind = true;
    });
    w.on('error', () => {
      early.blind = true;
    });
    early.close = () => w.close();
  } catch {
    early.blind = true; // no inotify watch left (ENOSPC), no such folder (start() reports that)
  }
  return early;
}

/**
 * fs.watch errors that mean no inotify watch is left for the folder (fs.inotify.max_user_watches
 * reached: ENOSPC; max_user_instances: EMFILE). chokidar reports them and then says `ready`
 * while watching nothing: the folder is polled instead.
 */
const NO_WATCH_LEFT = new Set(['ENOSPC', 'EMFILE']);

const version = (info: Stats) => `${info.dev}:${info.ino}:${info.size}:${info.mtimeMs}`;

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
    // Turned on for good when the system has no inotify watch left for the folder.
    let usePolling = this.options.usePolling ?? false;
    this.tracker.setState('starting');
    // Wall clock, as file mtimes are (options.clock only stamps frames).
    const subscribedAt = Date.now();
    // Names created or written from subscribe until the first watch is ready (see the header).
    let early: EarlyChanges | undefined = emitExisting ? undefined : noteChanges(this.dir);
    // Files that may reach readOne twice (from the early changes and from chokidar): path → the
    // version last read, emitted or refused ('' none yet). Until the early files are sorted out,
    // every file read is noted.
    let emitted = new Map<string, string>();
    let noteAll = false;
    const timers = new Set<NodeJS.Timeout>();
    const sleep = (ms: number) =>
      new Promise<void>((r) => {
        const t = setTimeout(() => {
          timers.delete(t);
          r();
        }, ms);
        timers.add(t);
      });

    const readOne = async (path: string) => {
      if (closed) return;
      let seen: string | undefined;
      if (noteAll || emitted.has(path)) {
        const before = emitted.get(path);
        try {
          seen = version(await stat(path));
        } catch {
          // Emitted already (and deleted after reading, or moved on): not an error the second time.
          if (before) return;
        }
        if (seen !== undefined && seen === before) return;
      }
      try {
        const data = await readRegularFile(path, maxBytes);
        checkImage(data, path);
        if (closed) return;
        if (seen !== undefined) emitted.set(path, seen);
        subscriber.next(this.tracker.frame(data, path));
      } catch (err) {
        if (closed) return;
        const code = (err as NodeJS.ErrnoException).code;
        // A broken file is one counted error, not one per way it came.
        if (seen !== undefined && code !== 'ENOENT') emitted.set(path, seen);
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

    /** Resolves true once the file's size and mtime have not changed for stableMs (chokidar's awaitWriteFinish for files it did not report). */
    const whenStable = async (path: string, w: FSWatcher): Promise<boolean> => {
      const pollMs = Math.max(20, Math.min(100, stableMs / 4));
      let last: Stats;
      try {
        last = await stat(path);
      } catch {
        return false;
      }
      let since = performance.now();
      while (stableMs > 0 && performance.now() - since < stableMs) {
        await sleep(pollMs);
        if (closed || watcher !== w) return false;
        let now: Stats;
        try {
          now = await stat(path);
        } catch {
          return false; // gone (renamed away, deleted): nothing to emit
        }
        if (now.size !== last.size || now.mtimeMs !== last.mtimeMs) {
          last = now;
          since = performance.now();
        }
      }
      return !closed && watcher === w;
    };

    /** At the first `ready`: emit the files that came since subscribe, which chokidar took as already there. */
    const pickUpEarly = async (w: FSWatcher, changes: EarlyChanges) => {
      const byMtime = changes.blind || usePolling;
      let names = [...changes.names];
      if (byMtime) {
        try {
          names = [...new Set([...names, ...(await readdir(this.dir))])];
        } catch {
          // The folder went away: checkDir reports it and the next watch takes every file.
        }
      }
      const picked: string[] = [];
      for (const name of names) {
        if (!this.match.test(name)) continue;
        const path = join(this.dir, name);
        let info: Stats;
        try {
          info = await stat(path);
        } catch {
          continue; // created and gone again
        }
        if (closed || watcher !== w) return;
        if (info.isDirectory()) continue;
        if (!changes.names.has(name) && !(info.mtimeMs >= subscribedAt - NEW_FILE_MARGIN_MS)) continue;
        if (!emitted.has(path)) emitted.set(path, '');
        picked.push(path);
      }
      noteAll = false;
      if (picked.length > 0) this.tracker.log('debug', 'files that came while the watch started', { path: this.dir, files: picked.length });
      for (const path of picked) {
        void whenStable(path, w).then((stable) => {
          if (stable) queue = queue.then(() => readOne(path));
        });
      }
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

    /** No inotify watch left: the watch sees nothing (and still says `ready`), so poll the folder from now on. */
    const pollInstead = (w: FSWatcher, err: Error) => {
      if (closed || watcher !== w) return;
      watcher = undefined;
      clearInterval(dirCheck);
      void w.close();
      usePolling = true;
      this.tracker.error(
        `watching ${this.dir}: ${err.message}; polling the folder instead (raise fs.inotify.max_user_watches or max_user_instances to watch it with inotify)`,
        { path: this.dir },
      );
      void start();
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
        early?.close();
        early = undefined;
        retryLater();
        return;
      }
      if (closed) return;
      // Only the first watch needs the early changes: a later one (the folder came back) takes every file.
      if (emitExisting && early) {
        early.close();
        early = undefined;
      }
      const changes = early;
      emitted = new Map();
      noteAll = changes !== undefined;
      const w = watch(this.dir, {
        depth: 0,
        ignoreInitial: !emitExisting,
        usePolling,
        awaitWriteFinish: stableMs > 0 ? { stabilityThreshold: stableMs, pollInterval: Math.max(20, Math.min(100, stableMs / 4)) } : false,
        ignored: (path, stats) => path !== this.dir && stats?.isFile() === true && !this.match.test(basename(path)),
      });
      watcher = w;
      w.on('add', onFile);
      w.on('change', onFile);
      w.on('error', (err) => {
        const code = (err as NodeJS.ErrnoException).code;
        if (!usePolling && code !== undefined && NO_WATCH_LEFT.has(code)) return pollInstead(w, err as Error);
        this.tracker.error(`watching ${this.dir}: ${(err as Error).message}`, { path: this.dir });
      });
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
        if (changes) {
          // chokidar watches the folder itself now: the early notes are complete.
          changes.close();
          early = undefined;
          void pickUpEarly(w, changes);
        }
      });
    };

    void start();
    return () => {
      closed = true;
      if (retry) clearTimeout(retry);
      clearInterval(dirCheck);
      early?.close();
      for (const t of timers) clearTimeout(t);
      timers.clear();
      void watcher?.close();
      this.tracker.stop();
    };
  }
}
