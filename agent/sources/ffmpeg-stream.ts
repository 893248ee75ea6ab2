/**
 * `stream` source: ffmpeg reads RTSP, HTTP (MJPEG), V4L2 or a video file and writes MJPEG frames
 * at a capped rate to stdout (`-f image2pipe -vcodec mjpeg`), which the JPEG splitter cuts into
 * Frames.
 *
 * When ffmpeg exits — the camera rebooted, the network dropped, RTSP timed out — the source goes
 * `reconnecting` and restarts it with backoff (reset once a run has sent frames for
 * HEALTHY_RUN_MS, not by a first frame alone); a finite file without `loop` completes instead.
 * A finite file whose ffmpeg fails part-way resumes after the frames already sent (`-ss`), so
 * no frame is sent twice; after FILE_ATTEMPTS failures in a row without a new frame the source
 * fails with ffmpeg's last words rather than retrying a broken file forever.
 * A watchdog restarts an ffmpeg that is alive but silent. The last stderr lines are kept for the
 * error message, bounded and with the input's password masked (ffmpeg echoes its input URL).
 * Images the splitter drops (over maxFrameBytes, broken) are counted errors, not silent.
 * Unsubscribing kills that subscription's ffmpeg (SIGTERM, then SIGKILL if it lingers).
 *
 * RTSP's socket timeout option changed name in ffmpeg 5.0: `-timeout` (µs) there, `-stimeout` in
 * 4.x, where `-timeout` means "listen for an incoming connection" and would make ffmpeg wait as a
 * server instead of connecting to the camera. The binary's major version is asked once
 * (`ffmpeg -version`, cached per binary path) before the first RTSP run.
 */
import { execFile, spawn, type ChildProcessByStdio } from 'node:child_process';
import type { Readable } from 'node:stream';
import { Observable, type Subscriber } from 'rxjs';
import type { Frame } from '../../pipelines/types.js';
import { Backoff, MAX_TIMER_MS } from './backoff.js';
import { JpegSplitter } from './jpeg-splitter.js';
import { redactText, redactUrl } from '../redact.js';
import { SourceTracker } from './status.js';
import { silentLogger, type PushSource, type SourceOptions, type SourceStatus, type StreamSpec } from './types.js';

export type StreamInputKind = 'rtsp' | 'http' | 'v4l2' | 'url' | 'file';

export interface FfmpegStreamOptions extends SourceOptions {
  /** ffmpeg binary, default `ffmpeg` from PATH. */
  ffmpegPath?: string;
  /** Grace period between SIGTERM and SIGKILL, default 2000 ms. */
  killTimeoutMs?: number;
  /** Restart ffmpeg when it sends no frame for this long, default 30 000 ms (at least 3 frame periods). */
  stallTimeoutMs?: number;
  /** Largest JPEG accepted from ffmpeg, default 32 MiB. */
  maxFrameBytes?: number;
  /** How many stderr lines to keep, default 20. */
  stderrLines?: number;
  /** A run that has sent frames for this long resets the restart backoff, default HEALTHY_RUN_MS. */
  healthyRunMs?: number;
}

type Child = ChildProcessByStdio<null, Readable, Readable>;

/** Failed ffmpeg runs in a row, none sending a frame, after which a finite video file is given up. */
export const FILE_ATTEMPTS = 3;

/** Longest stderr line kept: status and logs carry it, a garbage line must not make them huge. */
const MAX_STDERR_LINE = 1000;

/**
 * A run resets the restart backoff once it has sent frames for this long (from its first frame to
 * a later one): a camera that drops every connection right after a frame would otherwise be
 * reconnected at the first backoff step forever (ffmpeg started twice a second, day and night).
 */
export const HEALTHY_RUN_MS = 10_000;

/** spawn() errors that may pass (memory, process or file limits): restarted with backoff; any other fails the source. */
const TRANSIENT_SPAWN_ERRORS = new Set(['EAGAIN', 'ENOMEM', 'EMFILE', 'ENFILE']);

export function classifyInput(input: string): StreamInputKind {
  if (/^rtsps?:\/\//i.test(input)) return 'rtsp';
  if (/^https?:\/\//i.test(input)) return 'http';
  // A V4L2 device by number or by its stable udev name (/dev/v4l/by-id/…, /dev/v4l/by-path/…).
  if (/^\/dev\/(video\d+|v4l\/by-(id|path)\/[^/]+)$/.test(input)) return 'v4l2';
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(input)) return 'url';
  return 'file';
}

/** RTSP socket I/O timeout: a camera that stops answering ends ffmpeg (and the source restarts it). */
const RTSP_TIMEOUT_US = '10000000';

/**
 * The major version in `ffmpeg -version` output: "ffmpeg version 4.4.2-0ubuntu0.22.04.1",
 * "ffmpeg version n6.1", "ffmpeg version 7.0.2-static …". A git build ("N-111234-gabc…",
 * "2023-03-05-git-…") has no release number; its libavformat line tells 4.x (58 and older) from
 * 5.0 on (59+). undefined when neither can be read: the caller treats that as a current ffmpeg.
 */
export function parseFfmpegMajor(versionOutput: string): number | undefined {
  const release = /^\s*ffmpeg version\s+n?(\d{1,2})\.\d+/im.exec(versionOutput);
  if (release) return Number(release[1]);
  const lavf = /^\s*libavformat\s+(\d+)\.\s*\d+/im.exec(versionOutput);
  if (lavf) {
    const major = Number(lavf[1]);
    // libavformat 59 shipped with ffmpeg 5.0, 60 with 6.0, 61 with 7.0 …; 58 was all of 4.x
    // (older ones are reported as 4 too: what matters is "before 5").
    if (major >= 59) return major - 54;
    if (major >= 1) return 4;
  }
  return undefined;
}

const runVersion = (ffmpegPath: string) =>
  new Promise<{ stdout: string }>((resolve, reject) => {
    // SIGKILL: a binary that ignores SIGTERM would otherwise leave the probe, and every RTSP
    // camera waiting on it, pending forever.
    execFile(ffmpegPath, ['-version'], { timeout: 10_000, killSignal: 'SIGKILL', maxBuffer: 1024 * 1024 }, (err, stdout) => {
      if (err) reject(err);
      else resolve({ stdout: String(stdout) });
    });
  });

const majorVersions = new Map<string, Promise<number | undefined>>();

/**
 * The major version of the ffmpeg at `ffmpegPath` (`ffmpeg -version`), undefined when it cannot be
 * told. Asked once per path: concurrent and later callers share the answer. A probe that could
 * not run (no binary yet, a timeout) is not cached, so a later start asks again.
 */
export function ffmpegMajorVersion(ffmpegPath = 'ffmpeg'): Promise<number | undefined> {
  let probe = majorVersions.get(ffmpegPath);
  if (!probe) {
    probe = runVersion(ffmpegPath).then(
      ({ stdout }) => parseFfmpegMajor(stdout),
      () => {
        majorVersions.delete(ffmpegPath);
        return undefined;
      },
    );
    majorVersions.set(ffmpegPath, probe);
  }
  return probe;
}

/**
 * The ffmpeg command line for a stream spec (without the binary). `seekSeconds` (video files
 * only) starts reading that far into the file. `ffmpegMajor`: the binary's major version
 * (`ffmpegMajorVersion`), which decides the RTSP timeout option; undefined = ffmpeg 5 or later.
 */
export function ffmpegArgs(spec: StreamSpec, seekSeconds = 0, ffmpegMajor?: number): string[] {
  // spawn() throws on a NUL byte; from a restart timer that would crash the process.
  if (typeof spec.input !== 'string' || spec.input.trim() === '' || spec.input.includes('\0')) {
    throw new Error(`stream input must be a non-empty file path, device or URL without NUL bytes, got ${JSON.stringify(typeof spec.input === 'string' ? redactUrl(spec.input) : spec.input)}`);
  }
  const kind = classifyInput(spec.input);
  const fps = spec.fps ?? 1;
  const quality = spec.quality ?? 3;
  if (!(fps > 0)) throw new Error(`stream fps must be > 0, got ${spec.fps}`);
  if (!Number.isFinite(fps)) throw new Error(`stream fps must be a finite number, got ${spec.fps}`);
  if (!Number.isInteger(quality) || quality < 2 || quality > 31) throw new Error(`stream quality must be an integer 2…31, got ${spec.quality}`);
  if (spec.loop && kind !== 'file') throw new Error(`stream loop applies to video files only, not ${kind} input ${redactUrl(spec.input)}`);
  const input: string[] = [];
  switch (kind) {
    case 'rtsp':
      // The RTSP socket I/O timeout in microseconds: a dead camera ends ffmpeg. ffmpeg 4.x calls it
      // `-stimeout`; its `-timeout` is the wait for an incoming connection (it would listen).
      input.push('-rtsp_transport', spec.transport ?? 'tcp', ffmpegMajor !== undefined && ffmpegMajor < 5 ? '-stimeout' : '-timeout', RTSP_TIMEOUT_US);
      break;
    case 'http':
      input.push('-rw_timeout', '10000000');
      break;
    case 'v4l2':
      input.push('-f', 'v4l2');
      break;
    case 'file':
      if (spec.realtime ?? spec.loop ?? false) input.push('-re');
      if (spec.loop) input.push('-stream_loop', '-1');
      if (seekSeconds > 0) input.push('-ss', seekSeconds.toFixed(3));
      break;
    case 'url':
      break;
  }
  return [
    '-hide_banner', '-nostdin', '-loglevel', 'error',
    ...input,
    '-i', spec.input,
    '-an', '-sn', '-dn',
    '-vf', `fps=${fps}`,
    '-f', 'image2pipe', '-vcodec', 'mjpeg', '-q:v', String(quality),
    'pipe:1',
  ];
}

export class FfmpegStreamSource implements PushSource {
  readonly kind = 'stream' as const;
  readonly mode = 'push' as const;
  readonly origin: string;
  readonly inputKind: StreamInputKind;
  readonly frames$: Observable<Frame>;
  readonly status$: Observable<SourceStatus>;
  private readonly tracker: SourceTracker;
  private stderr: string[] = [];
  private child?: Child;
  private currentArgs: readonly string[];
  /** ffmpeg's major version once asked (RTSP inputs only); undefined before, or when it cannot be told. */
  private ffmpegMajor?: number;

  constructor(
    readonly camera: string,
    private readonly spec: StreamSpec,
    private readonly options: FfmpegStreamOptions = {},
  ) {
    this.inputKind = classifyInput(spec.input);
    this.currentArgs = ffmpegArgs(spec);
    this.origin = `ffmpeg:${redactUrl(spec.input)}`;
    this.tracker = new SourceTracker(camera, 'stream', options.clock ?? Date.now, options.logger ?? silentLogger);
    this.status$ = this.tracker.status$;
    this.frames$ = new Observable<Frame>((subscriber) => this.run(subscriber));
  }

  status(): SourceStatus {
    return this.tracker.status();
  }

  /** The command line ffmpeg is run with (for RTSP, fitted to its version once that is known). */
  get args(): readonly string[] {
    return this.currentArgs;
  }

  /** The last lines ffmpeg wrote to stderr. */
  stderrTail(): string[] {
    return [...this.stderr];
  }

  /** pid of the running ffmpeg, if any. */
  childPid(): number | undefined {
    return this.child?.pid;
  }

  private run(subscriber: Subscriber<Frame>): () => void {
    const opts = this.options;
    const backoff = new Backoff(opts.backoff);
    const fps = this.spec.fps ?? 1;
    // Capped at what a timer can wait: beyond it (fps below ~1.4e-6) the watchdog would fire after
    // 1 ms and kill every ffmpeg before its first frame.
    const stallMs = Math.min(MAX_TIMER_MS, Math.max(opts.stallTimeoutMs ?? 30_000, 3000 / fps));
    const keepLines = opts.stderrLines ?? 20;
    const healthyMs = opts.healthyRunMs ?? HEALTHY_RUN_MS;
    const finite = this.inputKind === 'file' && !this.spec.loop;
    // Frames sent from a finite file (where a restart resumes) and failed runs since the last frame.
    let sent = 0;
    let failuresWithoutFrame = 0;
    let closed = false;
    let restart: NodeJS.Timeout | undefined;
    let stall: NodeJS.Timeout | undefined;
    // This subscription's ffmpeg: what its teardown kills (another subscription has its own).
    let current: Child | undefined;
    this.tracker.setState('starting');

    let stalled: Child | undefined;
    const armStall = (child: Child) => {
      if (stall) clearTimeout(stall);
      stall = setTimeout(() => {
        this.tracker.log('warn', `no frame from ffmpeg for ${stallMs} ms; restarting it`, { input: this.origin });
        stalled = child;
        this.kill(child);
      }, stallMs);
    };
    const input = this.spec.input;
    const safeInput = redactUrl(input);
    const keepLine = (lines: string[], line: string) => {
      const clean = redactText(line.trim(), input, safeInput);
      if (clean) lines.push(clean.length > MAX_STDERR_LINE ? `${clean.slice(0, MAX_STDERR_LINE)}…` : clean);
    };
    /** Retrying cannot help: fail the source loudly. */
    const fail = (message: string) => {
      this.tracker.error(message, { input: this.origin }, 'error');
      this.tracker.setState('failed');
      if (!closed) subscriber.error(new Error(message));
    };
    const restartLater = () => {
      const delay = backoff.next();
      this.tracker.reconnecting(delay);
      restart = setTimeout(start, delay);
    };

    const ffmpegPath = opts.ffmpegPath ?? 'ffmpeg';
    /** RTSP needs the binary's version for its timeout option: ask (cached) before running it. */
    const start = () => {
      restart = undefined;
      if (this.inputKind !== 'rtsp') return launch();
      void ffmpegMajorVersion(ffmpegPath).then((major) => {
        if (closed) return;
        if (major !== undefined && major < 5 && this.ffmpegMajor !== major) {
          this.tracker.log('info', `ffmpeg ${major}.x: the RTSP timeout is given as -stimeout`, { ffmpeg: ffmpegPath });
        }
        this.ffmpegMajor = major;
        this.currentArgs = ffmpegArgs(this.spec, 0, major);
        launch();
      });
    };

    const launch = () => {
      const splitter = new JpegSplitter(opts.maxFrameBytes);
      // This run's stderr: a dying earlier ffmpeg does not write into it.
      const stderr: string[] = [];
      this.stderr = stderr;
      let partial = '';
      let spawnFailed = false;
      // When this run sent its first frame (monotonic), for the backoff reset.
      let firstFrameAt: number | undefined;
      // The fps filter sends frame k at k / fps: resuming at sent / fps continues the sequence.
      const args = finite && sent > 0 ? ffmpegArgs(this.spec, sent / fps) : this.currentArgs;
      let child: Child;
      try {
        // Its own process group, so that stopping it also stops what it started: a wrapper
        // script that runs ffmpeg without `exec` would otherwise leave ffmpeg running, holding
        // the camera's stream and our pipe open.
        child = spawn(ffmpegPath, args, { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
      } catch (err) {
        // spawn() throws rather than emitting 'error' for some failures (E2BIG: an input over
        // 128 KiB; ENOTDIR; ENOMEM): from a restart timer or the RTSP version probe's callback
        // that would take the whole agent down.
        const e = err as NodeJS.ErrnoException;
        if (e.code !== undefined && TRANSIENT_SPAWN_ERRORS.has(e.code)) {
          this.tracker.error(`cannot start ffmpeg (${ffmpegPath}) reading ${this.origin}: ${e.message}`, { input: this.origin });
          restartLater();
          return;
        }
        const why = e.code === 'E2BIG' ? ' (the input is too long for a command line)' : '';
        fail(`camera ${this.camera}: cannot run ffmpeg (${ffmpegPath}) reading ${this.origin}: ${e.message}${why}`);
        return;
      }
      current = child;
      this.child = child;
      this.tracker.log('debug', 'ffmpeg started', { pid: child.pid, args: args.map((a) => (a === input ? safeInput : a)).join(' ') });
      armStall(child);
      let dropped = { oversized: 0, corrupt: 0 };

      child.stdout.on('data', (chunk: Buffer) => {
        if (closed) return;
        const jpegs = splitter.push(chunk);
        const { oversized, corrupt } = splitter.stats;
        for (let n = dropped.oversized + 1; n <= oversized; n++) {
          this.tracker.error(`ffmpeg sent an image over maxFrameBytes ${splitter.maxFrameBytes} reading ${this.origin}; dropped (${n} so far)`, { input: this.origin });
        }
        for (let n = dropped.corrupt + 1; n <= corrupt; n++) {
          this.tracker.error(`ffmpeg sent a broken JPEG reading ${this.origin}; dropped (${n} so far)`, { input: this.origin });
        }
        // ffmpeg is alive and sending: not a stall, whatever happened to the images.
        if (oversized > dropped.oversized || corrupt > dropped.corrupt) armStall(child);
        dropped = { oversized, corrupt };
        for (const jpeg of jpegs) {
          // The consumer may unsubscribe in next() (take(1)): stamp nothing after that.
          if (closed) return;
          const now = performance.now();
          firstFrameAt ??= now;
          if (now - firstFrameAt >= healthyMs) backoff.reset();
          armStall(child);
          sent++;
          failuresWithoutFrame = 0;
          subscriber.next(this.tracker.frame(jpeg, this.origin));
        }
      });
      child.stderr.on('data', (chunk: Buffer) => {
        const lines = (partial + chunk.toString('utf8')).split(/\r?\n/);
        partial = lines.pop() ?? '';
        for (const line of lines) keepLine(stderr, line);
        if (partial.length > 4096) partial = partial.slice(-4096);
        if (stderr.length > keepLines) stderr.splice(0, stderr.length - keepLines);
      });
      child.on('error', (err: NodeJS.ErrnoException) => {
        if (err.code !== 'ENOENT' && err.code !== 'EACCES') {
          this.tracker.error(`ffmpeg: ${err.message}`, { input: this.origin });
          return;
        }
        // No ffmpeg to run: retrying cannot help, so fail loudly.
        spawnFailed = true;
        if (stall) clearTimeout(stall);
        if (this.child === child) this.child = undefined;
        if (current === child) current = undefined;
        fail(`camera ${this.camera}: cannot run ffmpeg (${ffmpegPath}): ${err.message}; install ffmpeg or set its path`);
      });
      child.on('close', (code, signal) => {
        if (spawnFailed) return;
        if (stall) clearTimeout(stall);
        if (this.child === child) this.child = undefined;
        if (current === child) current = undefined;
        keepLine(stderr, partial);
        if (closed) return;
        if (finite && code === 0) {
          this.tracker.log('info', 'video file finished', { input: this.origin });
          this.tracker.setState('stopped');
          subscriber.complete();
          return;
        }
        // After the watchdog's kill, say why it was killed (ffmpeg may exit 255 on SIGTERM).
        const how = stalled === child ? `stalled (no frame for ${stallMs} ms, restarted)` : signal ? `was killed by ${signal}` : `exited with code ${code}`;
        const last = stderr.at(-1);
        this.tracker.error(`ffmpeg ${how} reading ${this.origin}${last ? `: ${last}` : ''}`, {
          input: this.origin,
          code,
          signal,
          stderr: stderr.slice(-5),
        });
        if (finite && ++failuresWithoutFrame >= FILE_ATTEMPTS) {
          fail(`camera ${this.camera}: ffmpeg failed ${FILE_ATTEMPTS} times in a row reading the video file ${this.origin} without a new frame (after ${sent} frame(s)); giving up${last ? `: ${last}` : ''}`);
          return;
        }
        restartLater();
      });
    };

    start();
    return () => {
      closed = true;
      if (restart) clearTimeout(restart);
      if (stall) clearTimeout(stall);
      if (current) this.kill(current);
      if (this.child === current) this.child = undefined;
      this.tracker.stop();
    };
  }

  /**
   * SIGTERM to ffmpeg's process group, SIGKILL to what is left of it after killTimeoutMs, even
   * when ffmpeg itself is gone by then (a wrapper's child may ignore SIGTERM).
   */
  private kill(child: Child): void {
    // ffmpeg (or the wrapper that leads the group) may be gone while what it started still runs,
    // holding our pipe: its 'close' comes only once the whole group has let go.
    if ((child.exitCode !== null || child.signalCode !== null) && !signalGroup(child, 0)) return;
    signalGroup(child, 'SIGTERM');
    const force = setTimeout(() => signalGroup(child, 'SIGKILL'), this.options.killTimeoutMs ?? 2000);
    child.once('exit', () => {
      if (!signalGroup(child, 0)) clearTimeout(force);
    });
  }
}

/**
 * Sends `signal` to the process group `child` leads (see spawn's `detached`); signal 0 only
 * checks. False once every process of the group has exited (ESRCH).
 */
function signalGroup(child: Child, signal: NodeJS.Signals | 0): boolean {
  if (child.pid === undefined) return false;
  try {
    process.kill(-child.pid, signal);
    return true;
  } catch {
    return false;
  }
}
