/**
 * `shelfwatch run --config <file>`: load and check the config, start the agent, and run until
 * SIGINT/SIGTERM (or until every camera's frames have ended: a replay without loop).
 *
 * A first signal stops cleanly: cameras off, extensions stopped, the outbox flushed for up to a
 * few seconds while connected (what is left stays on disk for the next start), `offline` sent.
 * A signal while the agent is still starting (loading models) makes start() give up after its
 * current step. A second signal while stopping exits at once with 130. Under systemd
 * (Type=notify) it reports READY/STOPPING and feeds the watchdog only while the pipeline makes
 * progress; the health check (/healthz) turns 'stalled' after the same WatchdogSec.
 *
 * Every camera ended and at least one of them failed (no ffmpeg, a folder gone, ...): after a
 * clean stop runAgent rejects with a CamerasFailedError, so `shelfwatch run` exits with status 1
 * and systemd (Restart=on-failure) or Docker (restart: unless-stopped) starts it again. A replay
 * that simply ended resolves 'cameras-ended' (exit status 0).
 */
import { assertRunnable, checkConfigFiles, configWarnings, loadConfig, type AgentConfig } from '../config.js';
import { Agent, AgentStoppedError, type AgentOptions, type CamerasEnded } from '../agent.js';
import { SystemdNotifier, Watchdog, watchdogPingIntervalMs } from '../systemd-notify.js';
import { HEAP_FLOOR_FLAG, heapFloorWarning } from '../v8-heap.js';

export interface RunAgentOptions {
  /** Stop when this aborts (library use, tests); signals still work. */
  signal?: AbortSignal;
  /** Passed to the Agent (logger, extensions, ...). */
  agent?: AgentOptions;
  /** Called once the agent runs (tests use it to reach the Agent). */
  onStarted?: (agent: Agent, config: AgentConfig) => void;
  /** Install SIGINT/SIGTERM handlers (default true). */
  handleSignals?: boolean;
  env?: NodeJS.ProcessEnv;
}

export type RunOutcome = 'signal' | 'aborted' | 'cameras-ended';

/**
 * Every camera's frame stream ended and at least one failed: the agent has nothing left to do,
 * and must not look like a clean exit (systemd's Restart=on-failure would not restart it).
 * runAgent rejects with it after stopping the agent cleanly; the CLI exits with status 1.
 */
export class CamerasFailedError extends Error {
  readonly outcome = 'cameras-failed' as const;
  constructor(readonly failed: CamerasEnded['failed']) {
    // Camera ids only: the reasons are in the log (the logger redacts them; stderr does not).
    super(`every camera has stopped and ${failed.length} failed (${failed.map((f) => f.camera).join(', ')}): see the log for why; exiting with an error so that the service is restarted`);
    this.name = 'CamerasFailedError';
  }
}

/**
 * Runs the agent described by `configPath` until stopped; resolves with why it stopped. Rejects
 * when the config or the start fails, and with a CamerasFailedError when every camera ended and
 * at least one failed.
 */
export async function runAgent(configPath: string, options: RunAgentOptions = {}): Promise<RunOutcome> {
  const config = await loadConfig(configPath, { env: options.env });
  await checkConfigFiles(config, configPath);
  assertRunnable(config, configPath);

  const env = options.env ?? process.env;
  const notifier = new SystemdNotifier({ env });
  // /healthz calls the pipeline stalled when the systemd watchdog would: after WatchdogSec.
  const pingMs = notifier.enabled ? watchdogPingIntervalMs(env) : null;
  const agent = new Agent(config, { ...(pingMs !== null ? { stallAfterMs: pingMs * 2 } : {}), ...options.agent });
  const log = agent.logger;
  const heapWarning = heapFloorWarning();
  if (heapWarning) log.warn(heapWarning, { flag: HEAP_FLOOR_FLAG });
  // What `config check` warns about (e.g. a model folder the agent cannot write to) goes to the log.
  for (const warning of configWarnings(config)) log.warn(`config: ${warning}`, { config: configPath });
  const watchdog = new Watchdog({
    notifier,
    env,
    // The agent's own progress gauge (frames started/finished); the health check reads it too.
    progressed: agent.progress.progressed,
    onStall: (ms) => log.warn('pipeline has made no progress; withholding the systemd watchdog ping', { stalledForMs: ms }),
    onError: (err) => log.warn('systemd watchdog ping failed', { error: err }),
  });

  let resolveStopped: (why: RunOutcome) => void = () => undefined;
  const stopped = new Promise<RunOutcome>((resolve) => (resolveStopped = resolve));
  // Why the run ends (the first reason wins), and the cameras that failed when they all ended.
  const end: { why: RunOutcome | null; failed: CamerasEnded['failed'] } = { why: null, failed: [] };
  const stopRequested = (reason: RunOutcome) => {
    if (end.why !== null) return;
    end.why = reason;
    resolveStopped(reason);
    // Still loading models: start() gives up after its current step instead of running on.
    if (agent.state === 'starting') void agent.stop();
  };
  let signals = 0;
  const onSignal = (signal: NodeJS.Signals) => {
    signals++;
    if (signals === 1) {
      log.info('signal received; stopping', { signal });
      stopRequested('signal');
    } else {
      log.warn('second signal while stopping; exiting now', { signal });
      process.exit(130);
    }
  };
  const handleSignals = options.handleSignals ?? true;
  if (handleSignals) {
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
  }
  const onAbort = () => stopRequested('aborted');
  options.signal?.addEventListener('abort', onAbort, { once: true });
  if (options.signal?.aborted) onAbort();

  try {
    if (end.why !== null) return end.why; // aborted before the start
    try {
      await agent.start();
    } catch (err) {
      if (err instanceof AgentStoppedError && end.why !== null) return end.why;
      throw err;
    }
    options.onStarted?.(agent, config);
    void agent.finished.then((ended) => {
      end.failed = ended.failed;
      stopRequested('cameras-ended');
    });
    await notifier
      .ready(`watching ${config.cameras.length} camera${config.cameras.length === 1 ? '' : 's'}`)
      .catch((err: Error) => log.warn('sd_notify READY failed', { error: err }));
    watchdog.start();
    const why = await stopped;
    watchdog.stop();
    await notifier.stopping().catch(() => undefined);
    await agent.stop();
    if (why === 'cameras-ended' && end.failed.length > 0) {
      log.error('exiting with an error: every camera has stopped and at least one failed; the service manager restarts the agent (systemd Restart=on-failure)', {
        failed: end.failed.map((f) => f.camera),
      });
      throw new CamerasFailedError(end.failed);
    }
    return why;
  } finally {
    watchdog.stop();
    options.signal?.removeEventListener('abort', onAbort);
    if (handleSignals) {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
    }
    if (agent.state !== 'stopped') await agent.stop();
  }
}
