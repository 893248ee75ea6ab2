/**
 * `shelfwatch run --config <file>`: load and check the config, start the agent, and run until
 * SIGINT/SIGTERM (or until every camera's frames have ended: a replay without loop).
 *
 * A first signal stops cleanly: cameras off, extensions stopped, the outbox flushed for up to a
 * few seconds while connected (what is left stays on disk for the next start), `offline` sent.
 * A second signal while stopping exits at once with 130. Under systemd (Type=notify) it reports
 * READY/STOPPING and feeds the watchdog only while the pipeline makes progress.
 */
import { assertRunnable, checkConfigFiles, loadConfig, type AgentConfig } from '../config.js';
import { Agent, type AgentOptions } from '../agent.js';
import { ProgressGauge, SystemdNotifier, Watchdog } from '../systemd-notify.js';
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

/** Runs the agent described by `configPath` until stopped; resolves with why it stopped. */
export async function runAgent(configPath: string, options: RunAgentOptions = {}): Promise<RunOutcome> {
  const config = await loadConfig(configPath, { env: options.env });
  await checkConfigFiles(config, configPath);
  assertRunnable(config, configPath);

  const gauge = new ProgressGauge();
  const agent = new Agent(config, {
    ...options.agent,
    observer: {
      ...options.agent?.observer,
      frameStarted: (camera, frame) => {
        gauge.started();
        options.agent?.observer?.frameStarted?.(camera, frame);
      },
      frameFinished: (camera, frame) => {
        gauge.finished();
        options.agent?.observer?.frameFinished?.(camera, frame);
      },
    },
  });
  const log = agent.logger;
  const heapWarning = heapFloorWarning();
  if (heapWarning) log.warn(heapWarning, { flag: HEAP_FLOOR_FLAG });
  const notifier = new SystemdNotifier({ env: options.env ?? process.env });
  const watchdog = new Watchdog({
    notifier,
    env: options.env ?? process.env,
    progressed: gauge.progressed,
    onStall: (ms) => log.warn('pipeline has made no progress; withholding the systemd watchdog ping', { stalledForMs: ms }),
    onError: (err) => log.warn('systemd watchdog ping failed', { error: err }),
  });

  let stopRequested: (why: RunOutcome) => void = () => undefined;
  const stopped = new Promise<RunOutcome>((resolve) => (stopRequested = resolve));
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
    await agent.start();
    options.onStarted?.(agent, config);
    void agent.finished.then(() => stopRequested('cameras-ended'));
    await notifier
      .ready(`watching ${config.cameras.length} camera${config.cameras.length === 1 ? '' : 's'}`)
      .catch((err: Error) => log.warn('sd_notify READY failed', { error: err }));
    watchdog.start();
    const why = await stopped;
    watchdog.stop();
    await notifier.stopping().catch(() => undefined);
    await agent.stop();
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
