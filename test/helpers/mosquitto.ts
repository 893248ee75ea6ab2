/**
 * Test helper: a REAL mosquitto broker on a free 127.0.0.1 port, with a generated config in
 * its own temp dir. It can be stopped (SIGTERM), killed (SIGKILL) and restarted on the SAME
 * port, so tests can simulate broker outages.
 *
 *   const broker = await startMosquitto();
 *   ... connect to broker.url ...
 *   await broker.kill(); await broker.restart();
 *   await broker.dispose();          // stop + delete the temp dir
 *
 * `persistence: true` keeps mosquitto's session/queue database in the temp dir and saves it
 * after every change, so persistent sessions (clean=false) survive a kill. Requires the
 * `mosquitto` and (for passwordFile) `mosquitto_passwd` binaries.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createConnection, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

/**
 * Waits long enough for a persistent broker to autosave a subscription just made. A test that
 * SIGKILLs the broker right after a clean=false subscriber subscribed otherwise gets it back with
 * the session but without the subscription; mqtt.js (session present) does not resubscribe, and
 * the subscriber silently receives nothing.
 */
export function waitForAutosave(): Promise<void> {
  return new Promise((r) => setTimeout(r, 2500));
}

export interface MosquittoOptions {
  /** Default: a free port. */
  port?: number;
  /** Extra mosquitto.conf lines, appended after the generated ones. */
  extraConfig?: string | string[];
  /** Persist sessions/queues to disk after every change (survives kill). Default false. */
  persistence?: boolean;
}

export interface MosquittoBroker {
  readonly port: number;
  /** mqtt://127.0.0.1:<port> */
  readonly url: string;
  /** Temp dir holding the config, log and persistence database. */
  readonly dir: string;
  readonly pid: number | undefined;
  /** Graceful stop (SIGTERM); resolves once the process has exited. */
  stop(): Promise<void>;
  /** Hard kill (SIGKILL); resolves once the process has exited. */
  kill(): Promise<void>;
  /** Starts it again on the same port (stopping it first if it runs); resolves when it accepts connections. */
  restart(): Promise<void>;
  /** The broker's log so far (for assertion messages). */
  log(): Promise<string>;
  /** stop() and delete the temp dir. */
  dispose(): Promise<void>;
}

const running = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

export async function startMosquitto(options: MosquittoOptions = {}): Promise<MosquittoBroker> {
  const port = options.port ?? (await freePort());
  const dir = await mkdtemp(join(tmpdir(), 'shelfwatch-mosquitto-'));
  const extra = Array.isArray(options.extraConfig) ? options.extraConfig.join('\n') : (options.extraConfig ?? '');
  const lines = [
    `listener ${port} 127.0.0.1`,
    // mosquitto 2 refuses anonymous clients once a listener is configured; tests opt out.
    /^\s*(allow_anonymous|password_file)\b/m.test(extra) ? '' : 'allow_anonymous true',
    // As root, mosquitto would drop to user `mosquitto` and lose access to the temp dir.
    process.getuid?.() === 0 ? 'user root' : '',
    `log_dest file ${join(dir, 'mosquitto.log')}`,
    'log_type all',
    'max_queued_messages 100000',
    ...(options.persistence
      ? ['persistence true', `persistence_location ${dir}/`, 'autosave_on_changes true', 'autosave_interval 1']
      : ['persistence false']),
    extra,
  ].filter((l) => l !== '');
  const configPath = join(dir, 'mosquitto.conf');
  await writeFile(configPath, lines.join('\n') + '\n');

  let child: ChildProcess | null = null;
  const logPath = join(dir, 'mosquitto.log');
  const log = () => readFile(logPath, 'utf8').catch(() => '');

  const launch = async () => {
    // Right after a kill the port may still be held for a moment; retry a few times.
    let lastError: Error | null = null;
    for (let tries = 0; tries < 20; tries++) {
      const proc = spawn('mosquitto', ['-c', configPath], { stdio: ['ignore', 'ignore', 'pipe'] });
      let stderr = '';
      proc.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
      running.add(proc);
      const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
      proc.once('exit', () => running.delete(proc));
      proc.once('error', () => undefined);
      const ready = await Promise.race([waitForPort(port, 5000).then(() => 'ready' as const), exited.then(() => 'exited' as const)]);
      if (ready === 'ready' && proc.exitCode === null) {
        child = proc;
        return;
      }
      proc.kill('SIGKILL');
      lastError = new Error(`mosquitto on port ${port} did not start: ${stderr.trim()}\n${(await log()).split('\n').slice(-10).join('\n')}`);
      await sleep(100);
    }
    throw lastError ?? new Error('mosquitto did not start');
  };

  const terminate = async (signal: NodeJS.Signals) => {
    const proc = child;
    child = null;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
    proc.kill(signal);
    await exited;
  };

  await launch();
  return {
    port,
    url: `mqtt://127.0.0.1:${port}`,
    dir,
    get pid() {
      return (child as ChildProcess | null)?.pid;
    },
    stop: () => terminate('SIGTERM'),
    kill: () => terminate('SIGKILL'),
    async restart() {
      await terminate('SIGTERM');
      await launch();
    },
    log,
    async dispose() {
      await terminate('SIGTERM');
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** Writes a mosquitto password file (via `mosquitto_passwd -b`) and returns its path. */
export async function mosquittoPasswordFile(dir: string, users: Record<string, string>): Promise<string> {
  const path = join(dir, 'passwords');
  await writeFile(path, '', { mode: 0o600 });
  for (const [user, password] of Object.entries(users)) {
    await promisify(execFile)('mosquitto_passwd', ['-b', path, user, password]);
  }
  return path;
}

/** A port that was free a moment ago on 127.0.0.1. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

async function waitForPort(port: number, timeoutMs: number): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (Date.now() < until) {
    const ok = await new Promise<boolean>((resolve) => {
      const socket = createConnection({ host: '127.0.0.1', port });
      socket.once('connect', () => {
        socket.destroy();
        resolve(true);
      });
      socket.once('error', () => resolve(false));
    });
    if (ok) return;
    await sleep(25);
  }
  throw new Error(`nothing listens on 127.0.0.1:${port} after ${timeoutMs} ms`);
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
