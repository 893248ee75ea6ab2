/**
 * systemd service notifications (sd_notify) and a progress-gated watchdog.
 *
 * How the messages travel: sd_notify is a datagram on the AF_UNIX socket named by
 * $NOTIFY_SOCKET, and Node has no unix datagram sockets. Rather than a native add-on, each
 * notification runs the `systemd-notify` binary (package `systemd`, present wherever systemd
 * is) with the fields as arguments. The datagram then comes from a child process, so the unit
 * needs `NotifyAccess=all`. Since systemd 246 systemd-notify waits (sd_notify_barrier) until
 * PID 1 has processed the message, so the child is still alive when PID 1 attributes it to
 * the unit; `--pid=<our pid>` adds MAINPID=, which keeps node the service's main process even
 * when it was started through a wrapper. One process spawn per message is cheap at the rates
 * used here (a ping per WatchdogSec/2, a STATUS now and then).
 *
 * Outside systemd ($NOTIFY_SOCKET unset) every call is a no-op that resolves to false.
 *
 *   const notifier = new SystemdNotifier();
 *   const gauge = new ProgressGauge();              // pipeline calls gauge.started()/finished()
 *   const watchdog = new Watchdog({ notifier, progressed: gauge.progressed, onStall: (ms) => log.warn(...) });
 *   await notifier.ready('watching 3 cameras');
 *   watchdog.start();
 *   ...
 *   watchdog.stop(); await notifier.stopping();
 */
import { spawn } from 'node:child_process';

export interface SystemdNotifierOptions {
  /** Environment holding NOTIFY_SOCKET; also passed to systemd-notify. Default: process.env. */
  env?: NodeJS.ProcessEnv;
  /** The systemd-notify executable. Default: `systemd-notify` from PATH. */
  command?: string;
  /** Main PID to announce with --pid=. Default: process.pid. */
  pid?: number;
  /** Kill a systemd-notify that has not finished after this long. Default 10 s. */
  timeoutMs?: number;
}

export type NotifyFields = Record<string, string | number>;

const FIELD_NAME = /^[A-Z][A-Z0-9_]*$/;

export class SystemdNotifier {
  /** True when running under systemd with a notify socket (Type=notify). */
  readonly enabled: boolean;
  private readonly env: NodeJS.ProcessEnv;
  private readonly command: string;
  private readonly pid: number;
  private readonly timeoutMs: number;
  /** Messages go out one at a time, in call order (READY=1 before the first WATCHDOG=1). */
  private queue: Promise<unknown> = Promise.resolve();

  constructor(options: SystemdNotifierOptions = {}) {
    this.env = options.env ?? process.env;
    this.enabled = Boolean(this.env.NOTIFY_SOCKET);
    this.command = options.command ?? 'systemd-notify';
    this.pid = options.pid ?? process.pid;
    this.timeoutMs = options.timeoutMs ?? 10_000;
  }

  /** Start-up finished: models loaded, sources running. */
  ready(status?: string): Promise<boolean> {
    return this.notify(status === undefined ? { READY: 1 } : { READY: 1, STATUS: status });
  }

  /** One line shown by `systemctl status shelfwatch`. */
  status(text: string): Promise<boolean> {
    return this.notify({ STATUS: text });
  }

  /** Keep-alive ping; see Watchdog for when to send it. */
  watchdog(): Promise<boolean> {
    return this.notify({ WATCHDOG: 1 });
  }

  /** Shutdown has begun (systemd then expects the process to exit within TimeoutStopSec). */
  stopping(status?: string): Promise<boolean> {
    return this.notify(status === undefined ? { STOPPING: 1 } : { STOPPING: 1, STATUS: status });
  }

  /**
   * Sends the fields as one message. Resolves true once systemd-notify delivered it, false when
   * not under systemd; rejects with what systemd-notify said when it failed.
   */
  notify(fields: NotifyFields): Promise<boolean> {
    const args = [`--pid=${this.pid}`];
    for (const [name, value] of Object.entries(fields)) {
      if (!FIELD_NAME.test(name)) return Promise.reject(new Error(`sd_notify field name '${name}' is invalid: use A-Z, 0-9 and _`));
      // The protocol is newline-separated NAME=value lines: a newline would start a new field.
      args.push(`${name}=${String(value).replace(/[\r\n]+/g, ' ')}`);
    }
    if (!this.enabled) return Promise.resolve(false);
    const sent = this.queue.then(() => this.run(args));
    this.queue = sent.catch(() => undefined);
    return sent;
  }

  private run(args: string[]): Promise<boolean> {
    const what = `${this.command} ${args.slice(1).join(' ')}`;
    return new Promise((resolve, reject) => {
      const child = spawn(this.command, args, { env: this.env, stdio: ['ignore', 'ignore', 'pipe'] });
      let stderr = '';
      child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr = (stderr + d).slice(-2000)));
      const timer = setTimeout(() => child.kill('SIGKILL'), this.timeoutMs);
      child.once('error', (err: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        const hint = err.code === 'ENOENT' ? ' (systemd-notify ships with the systemd package)' : '';
        reject(new Error(`sd_notify: cannot run ${this.command}: ${err.message}${hint}`));
      });
      child.once('close', (code, signal) => {
        clearTimeout(timer);
        if (code === 0) return resolve(true);
        const how = signal ? `killed by ${signal}${signal === 'SIGKILL' ? ` after ${this.timeoutMs} ms` : ''}` : `exit code ${code}`;
        reject(new Error(`sd_notify: ${what} failed (${how})${stderr.trim() ? `: ${stderr.trim()}` : ''}`));
      });
    });
  }
}

/**
 * How often to ping the systemd watchdog: half of $WATCHDOG_USEC, in ms. Null when the
 * watchdog is off, or when $WATCHDOG_PID names another process (the watchdog is not ours).
 */
export function watchdogPingIntervalMs(env: NodeJS.ProcessEnv = process.env, pid = process.pid): number | null {
  const usec = env.WATCHDOG_USEC;
  if (!usec) return null;
  if (!/^\d+$/.test(usec) || Number(usec) === 0) throw new Error(`WATCHDOG_USEC must be a positive integer (microseconds), got '${usec}'`);
  if (env.WATCHDOG_PID && env.WATCHDOG_PID !== String(pid)) return null;
  return Math.max(1, Math.floor(Number(usec) / 2000));
}

export interface WatchdogOptions {
  notifier: SystemdNotifier;
  /**
   * Asked once per round: has the pipeline made progress since the previous call? The ping is
   * sent only when it answers true. ProgressGauge.progressed is a ready-made answer.
   */
  progressed: () => boolean;
  /** Environment with WATCHDOG_USEC / WATCHDOG_PID. Default: the process environment. */
  env?: NodeJS.ProcessEnv;
  pid?: number;
  /** Called for each withheld ping with how long the pipeline has shown no progress. */
  onStall?: (stalledForMs: number) => void;
  /** Called when a ping could not be sent or progressed() threw. Default: ignore. */
  onError?: (err: Error) => void;
}

export type WatchdogRound = 'pinged' | 'withheld' | 'skipped';

/**
 * Tells systemd "alive" only while the pipeline progresses: every WatchdogSec/2 it asks
 * progressed() and sends WATCHDOG=1 when the answer is yes. A pipeline stuck for a whole
 * WatchdogSec (or an event loop too blocked to run the timer) gets no pings, and systemd kills
 * and restarts the service.
 */
export class Watchdog {
  /** Ping period in ms; null when systemd set no watchdog (then start() does nothing). */
  readonly pingIntervalMs: number | null;
  private readonly options: WatchdogOptions;
  private timer: NodeJS.Timeout | null = null;
  private inFlight = false;
  private lastProgressAt = Date.now();

  constructor(options: WatchdogOptions) {
    this.options = options;
    const interval = watchdogPingIntervalMs(options.env ?? process.env, options.pid ?? process.pid);
    this.pingIntervalMs = options.notifier.enabled ? interval : null;
  }

  /** Starts the periodic rounds; returns false when there is no systemd watchdog to feed. */
  start(): boolean {
    if (this.pingIntervalMs === null) return false;
    if (this.timer) return true;
    this.lastProgressAt = Date.now();
    this.timer = setInterval(() => void this.tick(), this.pingIntervalMs);
    this.timer.unref(); // the watchdog never keeps the process alive by itself
    return true;
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  /** One round (what the timer runs; callable directly). */
  async tick(): Promise<WatchdogRound> {
    if (this.inFlight) return 'skipped'; // the previous ping has not finished yet
    let moved: boolean;
    try {
      moved = this.options.progressed();
    } catch (err) {
      this.options.onError?.(new Error(`watchdog: progressed() threw: ${(err as Error).message}`, { cause: err }));
      moved = false;
    }
    const now = Date.now();
    if (!moved) {
      this.options.onStall?.(now - this.lastProgressAt);
      return 'withheld';
    }
    this.lastProgressAt = now;
    this.inFlight = true;
    try {
      await this.options.notifier.watchdog();
    } catch (err) {
      this.options.onError?.(err as Error);
    } finally {
      this.inFlight = false;
    }
    return 'pinged';
  }
}

/**
 * Counts pipeline work so the watchdog can tell "idle" from "stuck". The pipeline calls
 * started() when a unit of work (a scan, an inference batch) begins and finished() when it
 * ends; beat() records progress that has no start/end. progressed() is true when some work
 * finished since its previous call, or when nothing is in flight: an agent waiting for its
 * next scheduled scan is healthy; one whose inference has not returned for a whole
 * WatchdogSec is not.
 */
export class ProgressGauge {
  private completed = 0;
  private seen = 0;
  private active = 0;

  started(): void {
    this.active++;
  }

  finished(): void {
    if (this.active > 0) this.active--;
    this.completed++;
  }

  beat(): void {
    this.completed++;
  }

  get inFlight(): number {
    return this.active;
  }

  /** Bound, so it can be handed over as `progressed: gauge.progressed`. */
  readonly progressed = (): boolean => {
    const moved = this.completed !== this.seen;
    this.seen = this.completed;
    return moved || this.active === 0;
  };
}
