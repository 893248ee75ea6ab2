/**
 * The edge agent: config in, a running shelf watcher out.
 *
 *   const agent = new Agent(config);
 *   await agent.start();      // models, broker (embedded if no url), MQTT + outbox, extensions, cameras
 *   ...
 *   await agent.stop();       // cameras, extensions, MQTT (flushes; pending records stay on disk)
 *
 * start() loads every model some slot uses (once each, shared), starts the embedded broker when
 * the config has no broker URL, opens the durable outbox and starts connecting (it does NOT wait
 * for the broker: everything waits in the outbox), starts the extensions (health server, status,
 * events, stats, Home Assistant discovery) and finally subscribes the shelf pipeline, which
 * starts the cameras. A failure at any step undoes the steps before it and rethrows.
 *
 * While running, the model rollout (model-rollout.ts) watches the model files and hot-swaps a
 * replaced one between batches; the status is re-published after each swap.
 *
 * The per-slot debounce states survive restarts (debounce-store.ts): start() loads them from
 * `<stateDir>/debounce-state.a|b` before the pipeline exists, every scan that makes an event
 * (new/update/end) asks for a write (coalesced: one in flight, at most one more queued) and stop()
 * writes them once more after the pipeline has drained. A slot anomalous at the stop therefore
 * keeps its open event: the next scans update or end it under the same id.
 *
 * Time: one wall clock (`AgentOptions.clock`, default Date.now) stamps everything the agent
 * publishes — frame capture times, event start/end times, status/stats times, outbox records.
 * It may jump (NTP, an RTC without battery); nothing that measures an interval uses it (timers,
 * backoff, frame-rate caps, frame ages, state refreshes and uptime run on the monotonic clock),
 * and event ids do not rest on it (pipelines/events.ts): each start draws a random run tag that
 * the debouncer stores with every raise.
 *
 * Emits 'event' (every AnomalyEvent) and 'output' (every scanned slot) for library users;
 * `finished` resolves when every camera's frame stream has ended (a replay without loop, or a
 * camera whose stream failed: the pipeline takes a failed camera out), with the cameras that
 * failed — `shelfwatch run` exits non-zero when there is one, so systemd restarts it.
 *
 * stop() is safe at any time: during start() it sets a flag that start() checks after each step;
 * start() then undoes what it did and rejects with an AgentStoppedError, and stop() resolves once
 * that teardown is done. Every stop() call while stopping gets the same promise.
 *
 * Health (/healthz) includes pipeline progress: frames in flight with none finished for
 * `stallAfterMs` (default the systemd WatchdogSec when `shelfwatch run` runs under a watchdog,
 * else 2 min) make it 'stalled' (503), like the withheld watchdog ping does for systemd.
 */
import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { mkdir } from 'node:fs/promises';
import { Subject, takeUntil, type Observable, type Subscription } from 'rxjs';
import { TOOL_VERSION } from '../models/version.js';
import { slotKey, type DebounceState } from '../pipelines/debounce.js';
import type { AnomalyEvent } from '../pipelines/events.js';
import type { Frame } from '../pipelines/types.js';
import { createShelfPipeline, type PipelineObserver, type ShelfOutput, type ShelfPipeline, type ShelfPipelineStats } from '../pipelines/shelf-pipeline.js';
import { environmentSecrets, type AgentConfig } from './config.js';
import { DebounceStore } from './debounce-store.js';
import { EventJournal } from './event-journal.js';
import { EventsPublisher } from './extensions/events-publisher.js';
import { HealthHttp } from './extensions/health-http.js';
import { HomeAssistantDiscovery } from './extensions/home-assistant.js';
import { agentStats, StatsPublisher, type AgentStats } from './extensions/stats.js';
import { StatusPublisher } from './extensions/status.js';
import type { AgentCamera, AgentContext, Extension } from './extensions/types.js';
import { AgentMetrics, type HealthReport, type HealthState } from './health.js';
import { ProgressGauge } from './systemd-notify.js';
import type { ModelStatus } from './model-registry.js';
import { Logger } from './logger.js';
import { ModelRegistry } from './model-registry.js';
import { ModelRollout, type ModelRolloutStats } from './model-rollout.js';
import { nvidiaGpuPresent, renderNodePresent, type ProviderChoice } from '../models/execution-provider.js';
import { startMqttClient, type AgentMqttClient } from './mqtt/client.js';
import { startEmbeddedBroker, type EmbeddedBroker } from './mqtt/embedded-broker.js';
import { int8PathNote } from '../models/cpu-features.js';
import { jpegDecoderNote } from '../models/image-decode.js';
import type { OutboxMessage } from './mqtt/outbox.js';
import { agentTopics, type AgentTopics } from './mqtt/topics.js';
import { createCameraFeed } from './sources/index.js';
import { isSlowerThanCpu } from '../models/provider-speed.js';

export type AgentState = 'idle' | 'starting' | 'running' | 'stopping' | 'stopped';

export interface AgentOptions {
  /** Default: JSON lines on stdout at `logging.level`, with the config's secrets scrubbed. */
  logger?: Logger;
  /** Replaces the default extension list (library use); gets the context once it exists. */
  extensions?: (ctx: AgentContext) => Extension[];
  /** Passed to the outbox; false only for tests and benchmarks (default true). */
  outboxFsync?: boolean;
  /** MQTT reconnect backoff, ms (default 1000 → 30000). */
  reconnect?: { minDelayMs?: number; maxDelayMs?: number };
  /** Extra pipeline hooks (e.g. the systemd watchdog's progress gauge). */
  observer?: PipelineObserver;
  /** How long stop() waits for the outbox to drain while connected (default 3000 ms). */
  flushTimeoutMs?: number;
  /** How long stop() waits for frames already captured to be finished (default 10 s). */
  drainTimeoutMs?: number;
  /** Quiet time after a model file changes before it is verified (default 300 ms). */
  modelWatchDebounceMs?: number;
  /**
   * The wall clock, ms since the epoch (default Date.now): stamps frames, events, status, stats
   * and outbox records. Injectable so tests can step it back and forth; timers stay on real time.
   */
  clock?: () => number;
  /**
   * Health turns 'stalled' (503) when frames are in flight and none has finished for this long
   * (default 120000 ms, the unit's WatchdogSec; `shelfwatch run` passes the watchdog's own).
   */
  stallAfterMs?: number;
}

/** How the cameras ended (`Agent.finished`). */
export interface CamerasEnded {
  /** The cameras whose frame stream failed (or whose source gave up), with why; empty when they all simply ended. */
  failed: Array<{ camera: string; error: string }>;
}

/** start() was given up because stop() was called while it ran; everything it started is stopped. */
export class AgentStoppedError extends Error {
  constructor(agentId: string) {
    super(`agent ${agentId}: stopped while starting (stop() was called before start() finished)`);
    this.name = 'AgentStoppedError';
  }
}

const DEFAULT_STALL_AFTER_MS = 120_000;

export interface AgentEvents {
  event: [AnomalyEvent];
  output: [ShelfOutput];
  state: [AgentState];
}

/**
 * Strings from the config that must never reach a log line: the MQTT password, HTTP header
 * values, URL passwords, and the values substituted from the environment (config.ts'
 * environmentSecrets), also as they look percent-encoded in a URL.
 */
export function configSecrets(config: AgentConfig): string[] {
  const secrets: string[] = [];
  for (const value of environmentSecrets(config)) {
    secrets.push(value);
    const encoded = encodeURIComponent(value);
    if (encoded !== value) secrets.push(encoded);
  }
  if (config.mqtt.password) secrets.push(config.mqtt.password);
  for (const cam of config.cameras) {
    if (cam.source.type === 'http-snapshot') secrets.push(...Object.values(cam.source.headers));
    const url = cam.source.type === 'http-snapshot' ? cam.source.url : cam.source.type === 'stream' ? cam.source.input : '';
    try {
      const parsed = new URL(url);
      if (parsed.password) secrets.push(decodeURIComponent(parsed.password));
    } catch {
      // not a URL
    }
  }
  return secrets;
}

export function defaultLogger(config: AgentConfig): Logger {
  return new Logger({ level: config.logging.level, secrets: configSecrets(config), fields: { agent: config.agent.id } });
}

export class Agent extends EventEmitter<AgentEvents> {
  readonly logger: Logger;
  readonly topics: AgentTopics;
  readonly metrics: AgentMetrics;
  private stateValue: AgentState = 'idle';
  private broker: EmbeddedBroker | null = null;
  private client: AgentMqttClient | null = null;
  private registry: ModelRegistry | null = null;
  private pipeline: ShelfPipeline | null = null;
  private debounceStore: DebounceStore | null = null;
  /** Writes each event ahead of the outbox, with the state that raised it (event-journal.ts). */
  private journal: EventJournal | null = null;
  /** Outbox writes not finished yet, each resolving to whether its message reached the disk. */
  private readonly outboxWrites = new Set<Promise<boolean>>();
  /** The pipeline's per-slot debounce states (restored at start, updated in place by the pipeline). */
  private debounceStates = new Map<string, DebounceState>();
  private rollout: ModelRollout | null = null;
  private commandOff: Array<() => void> = [];
  private subscription: Subscription | null = null;
  private cameras: RunningCamera[] = [];
  private extensions: Extension[] = [];
  private started: Extension[] = [];
  private readonly outputs = new Subject<ShelfOutput>();
  private startedAt = 0;
  /** performance.now() at start, for the uptime (the wall clock may jump). */
  private startedMono = 0;
  private readonly clock: () => number;
  /**
   * Random per start; the debouncer stores it with every raise, so an event raised after a
   * restart never gets the id of one raised before it, whatever the wall clock says.
   */
  readonly runTag = randomBytes(4).toString('hex');
  private brokerUrlValue: string;
  private finishedResolve!: (ended: CamerasEnded) => void;
  /** Ends every camera's frames so the pipeline can finish what it already captured. */
  private readonly stopCapture = new Subject<void>();
  /**
   * Resolves when every camera's frame stream has ended (never, for live cameras that keep
   * running), with the cameras that failed.
   */
  readonly finished: Promise<CamerasEnded>;
  /**
   * Pipeline work in flight and finished (frames): the systemd watchdog's progressed() and the
   * health check's stall verdict both read it.
   */
  readonly progress = new ProgressGauge();
  /** performance.now() of the last progress: a frame finished, or work began after none was in flight. */
  private lastProgressMono = 0;
  private readonly stallAfterMs: number;
  /** Set by stop() during start(); start() checks it after each step. */
  private stopRequested = false;
  /** The one teardown of this agent, shared by every stop() call. */
  private stopPromise: Promise<void> | null = null;
  private stoppedResolve!: () => void;
  /** Resolves when the state becomes 'stopped'. */
  private readonly reachedStopped = new Promise<void>((resolve) => (this.stoppedResolve = resolve));

  constructor(
    readonly config: AgentConfig,
    private readonly options: AgentOptions = {},
  ) {
    super();
    this.logger = options.logger ?? defaultLogger(config);
    this.clock = options.clock ?? Date.now;
    this.topics = agentTopics(config.mqtt.baseTopic, config.agent.id);
    // Validate every camera/slot id as a topic level up front, not at the first event.
    for (const cam of config.cameras) for (const slot of cam.slots) this.topics.slot(cam.id, slot.id);
    this.brokerUrlValue = config.mqtt.url;
    this.metrics = new AgentMetrics(
      {
        pipeline: () => this.pipeline?.stats() ?? null,
        mqtt: () => this.client?.metrics() ?? null,
        sources: () => this.cameras.map((c) => ({ camera: c.config.id, kind: c.source.kind, status: c.source.status() })),
        models: () => this.registry?.status() ?? [],
        journal: () => this.journal?.stats() ?? null,
      },
      { batchSize: config.inference.batchSize },
    );
    this.finished = new Promise<CamerasEnded>((resolve) => (this.finishedResolve = resolve));
    this.stallAfterMs = options.stallAfterMs ?? DEFAULT_STALL_AFTER_MS;
    if (!(this.stallAfterMs > 0)) throw new RangeError(`stallAfterMs must be a positive number of ms, got ${this.stallAfterMs}`);
  }

  get state(): AgentState {
    return this.stateValue;
  }

  /** The broker in use (the embedded broker's real address when embedded). */
  get brokerUrl(): string {
    return this.brokerUrlValue;
  }

  get mqtt(): AgentMqttClient | null {
    return this.client;
  }

  /** Base URL of the health/metrics server, or null when disabled or not started. */
  get metricsUrl(): string | null {
    const http = this.started.find((e): e is HealthHttp => e instanceof HealthHttp);
    return http?.url ?? null;
  }

  /** The model hot-swap (null before start). */
  get modelRollout(): ModelRollout | null {
    return this.rollout;
  }

  pipelineStats(): ShelfPipelineStats {
    return this.pipeline?.stats() ?? { cameras: {}, models: {} };
  }

  /** The payload of the `stats` topic, now. Throws before start. */
  stats(): AgentStats {
    return agentStats(this.context());
  }

  health(): HealthReport {
    const problems: string[] = [];
    const mqttState = this.client?.state ?? 'offline';
    if (this.stateValue === 'running' && mqttState !== 'connected') problems.push(`MQTT broker not connected (${mqttState})`);
    const cameras: Record<string, string> = {};
    let failed = 0;
    for (const c of this.cameras) {
      const s = c.source.status();
      cameras[c.config.id] = s.state;
      if (s.state === 'failed' || s.state === 'reconnecting') problems.push(`camera ${c.config.id}: ${s.state}${s.lastError ? ` (${s.lastError})` : ''}`);
      if (s.state === 'failed') failed++;
    }
    const inFlight = this.progress.inFlight;
    const sinceProgressMs = this.lastProgressMono ? performance.now() - this.lastProgressMono : null;
    const stalled = this.stateValue === 'running' && inFlight > 0 && sinceProgressMs !== null && sinceProgressMs > this.stallAfterMs;
    if (stalled) {
      problems.unshift(
        `pipeline stalled: ${inFlight} frame${inFlight === 1 ? '' : 's'} in flight and none finished for ${Math.round(sinceProgressMs / 1000)} s ` +
          `(limit ${Math.round(this.stallAfterMs / 1000)} s): inference or decoding is stuck`,
      );
    }
    let status: HealthState;
    if (this.stateValue === 'running') {
      if (this.cameras.length > 0 && failed === this.cameras.length) status = 'stopped';
      else if (stalled) status = 'stalled';
      else status = problems.length ? 'degraded' : 'ok';
    } else status = this.stateValue === 'idle' ? 'starting' : this.stateValue === 'starting' ? 'starting' : this.stateValue;
    const pipeline = { inFlight, secondsSinceProgress: sinceProgressMs === null ? null : Math.round(sinceProgressMs / 1000) };
    return { status, problems, uptimeSeconds: this.uptimeSeconds(), mqtt: mqttState, cameras, pipeline };
  }

  private uptimeSeconds(): number {
    return this.startedMono ? Math.round((performance.now() - this.startedMono) / 1000) : 0;
  }

  async start(): Promise<void> {
    if (this.stateValue !== 'idle') throw new Error(`agent ${this.config.agent.id}: start() called in state ${this.stateValue}`);
    this.setState('starting');
    this.startedAt = this.clock();
    this.startedMono = performance.now();
    const { config, logger } = this;
    try {
      await mkdir(config.agent.stateDir, { recursive: true });
      this.throwIfStopRequested();
      this.debounceStore = new DebounceStore({
        dir: config.agent.stateDir,
        logger: logger.child({ component: 'debounce-store' }),
        slots: config.cameras.flatMap((cam) => cam.slots.map((slot) => slotKey(cam.id, slot.id))),
        clock: this.clock,
      });
      this.debounceStates = await this.debounceStore.load();
      this.throwIfStopRequested();
      const open = [...this.debounceStates.values()].filter((s) => s.state === 'anomalous').map((s) => slotKey(s.camera, s.slot));
      if (this.debounceStates.size > 0) logger.info('debounce states restored from the previous run', { slots: this.debounceStates.size, anomalous: open });
      this.registry = await ModelRegistry.load(config, logger);
      this.throwIfStopRequested();
      for (const m of this.registry.status()) this.logProvider(m);
      this.metrics.trackModels(this.registry.names());

      if (config.mqtt.embedded) {
        this.broker = await startEmbeddedBroker({ port: config.mqtt.embeddedPort });
        this.brokerUrlValue = this.broker.url;
        logger.info('embedded MQTT broker listening', { url: this.broker.url });
        this.throwIfStopRequested();
      }
      this.client = await startMqttClient({
        url: this.brokerUrlValue,
        topics: this.topics,
        clientId: config.mqtt.clientId,
        username: config.mqtt.username,
        password: config.mqtt.password,
        tls: config.mqtt.tls,
        keepaliveSeconds: config.mqtt.keepaliveSeconds,
        // The embedded broker (aedes) speaks 3.1.1 only: no MQTT 5 attempt to fall back from.
        protocolVersion: config.mqtt.embedded && config.mqtt.protocolVersion === 'auto' ? 4 : config.mqtt.protocolVersion,
        commands: { maxPayloadBytes: config.mqtt.commands.maxPayloadBytes, ratePerSecond: config.mqtt.commands.ratePerSecond, burst: config.mqtt.commands.burst },
        outbox: { dir: config.outbox.dir, maxRecords: config.outbox.maxRecords, maxBytes: config.outbox.maxBytes, fsync: this.options.outboxFsync, clock: this.clock },
        reconnect: this.options.reconnect,
        logger: logger.child({ component: 'mqtt' }),
      });
      this.throwIfStopRequested();
      const pendingAtStart = this.client.outbox.depth().records;
      if (pendingAtStart > 0) logger.info('outbox holds messages from a previous run; they go first', { records: pendingAtStart });

      this.cameras = config.cameras.map((cam) => {
        // Cron schedules run in agent.timezone; absent, in the system's local zone (TZ, /etc/localtime).
        const feed = createCameraFeed(cam, { logger: logger.child({ component: 'source' }).forSources, clock: this.clock, timezone: config.agent.timezone });
        return { config: cam, source: feed.source, scans$: feed.scans$ };
      });
      this.pipeline = createShelfPipeline({
        cameras: this.cameras.map((cam) => ({
          id: cam.config.id,
          slots: cam.config.slots,
          shrinkOnLoad: cam.config.shrinkOnLoad,
          frames$: cam.scans$.pipe(takeUntil(this.stopCapture)),
        })),
        models: this.registry.pipelineModels(),
        batchSize: config.inference.batchSize,
        batchWaitMs: config.inference.batchWaitMs,
        maxPendingFrames: config.inference.maxPendingFrames,
        debounce: { ...config.debounce, run: this.runTag },
        debounceStates: this.debounceStates,
        thumbnails: { enabled: true, maxSize: config.thumbnails.maxSize, quality: config.thumbnails.quality },
        observer: combineObservers(this.progressObserver(), this.metrics.observer(), this.logObserver(), { event: (e) => this.emit('event', e) }, this.options.observer ?? {}),
        clock: this.clock,
      });

      const rollout = new ModelRollout({
        registry: this.registry,
        pipeline: this.pipeline,
        stateDir: config.agent.stateDir,
        provider: config.inference.provider as ProviderChoice,
        workerThread: config.inference.workerThread,
        ...this.registry.parallelism,
        allowSpinning: config.inference.spinWait,
        maxDownloadBytes: config.mqtt.commands.maxDownloadMiB * 1024 * 1024,
        logger: logger.child({ component: 'rollout' }),
        debounceMs: this.options.modelWatchDebounceMs,
        clock: this.clock,
        // The retained status carries the serving digests and the rollout counts: keep it current.
        onSwap: (swap) => {
          for (const name of swap.names) this.metrics.modelRollout(name, 'accepted');
          this.republishStatus();
        },
        onReject: (_rejection, names) => {
          for (const name of names) this.metrics.modelRollout(name, 'rejected');
          this.republishStatus();
        },
      });
      this.rollout = rollout;

      const ctx = this.context();
      this.extensions = this.options.extensions ? this.options.extensions(ctx) : defaultExtensions(ctx, { rollout: () => rollout.stats() });
      for (const ext of this.extensions) {
        await ext.start();
        this.started.push(ext);
        this.throwIfStopRequested();
      }
      await rollout.start();
      this.throwIfStopRequested();
      this.commandOff.push(this.client.onCommand('model', rollout.onModelCommand), this.client.onCommand('rollback', rollout.onRollbackCommand));

      const journal = new EventJournal({
        store: this.debounceStore,
        states: new Map(this.debounceStates),
        pending: this.debounceStore.pendingEvents(),
        release: (output) => this.releaseOutput(output),
        outboxWritten: () => this.outboxWritten(),
        warn: (message, fields) => logger.warn(message, fields),
      });
      this.journal = journal;
      // Events a crash cut off between the journal and the outbox: enqueued under their own ids.
      const replayed = journal.replay((p) => ctx.publish({ id: p.id, topic: this.topics.events, payload: p.payload, qos: 1, retain: false }));
      if (replayed > 0) logger.info('events written ahead by the previous run enqueued again', { events: replayed });
      this.subscription = this.pipeline.outputs$.subscribe({
        next: (output) => journal.push(output),
        error: (err: Error) => logger.error('shelf pipeline failed', { error: err }),
        complete: () => {
          const ended = this.camerasEnded();
          if (ended.failed.length > 0) {
            logger.error(`every camera has stopped; ${ended.failed.length} of ${this.cameras.length} failed`, {
              failed: Object.fromEntries(ended.failed.map((f) => [f.camera, f.error])),
            });
          } else logger.info('every camera has ended');
          this.finishedResolve(ended);
        },
      });
      this.setState('running');
      logger.info('agent running', {
        version: TOOL_VERSION,
        broker: this.brokerUrlValue,
        embeddedBroker: config.mqtt.embedded,
        cameras: config.cameras.map((c) => c.id),
        models: this.registry.status().map((m) => ({ name: m.name, digest: m.digest.slice(0, 12), provider: m.provider })),
        metrics: this.metricsUrl,
        jpegDecoder: jpegDecoderNote(),
      });
    } catch (err) {
      const givenUp = err instanceof AgentStoppedError;
      if (givenUp) logger.info('start given up: stop() was called; stopping what was started');
      else logger.error('agent failed to start', { error: err as Error });
      try {
        await this.teardown();
      } finally {
        this.setState('stopped');
      }
      if (givenUp) logger.info('agent stopped');
      throw err;
    }
  }

  /**
   * Stops cameras, extensions, MQTT (flushing while connected), models and the embedded broker.
   * During start(): start() gives up after its current step, undoes what it did and rejects with
   * an AgentStoppedError; this resolves once that is done. While stopping: the same promise.
   */
  stop(): Promise<void> {
    if (this.stopPromise) return this.stopPromise;
    switch (this.stateValue) {
      case 'stopped':
        return Promise.resolve();
      case 'idle':
        this.setState('stopped');
        return Promise.resolve();
      case 'starting':
        this.stopRequested = true;
        this.logger.info('agent stopping: stop() called while starting; start() gives up after its current step');
        this.stopPromise = this.reachedStopped;
        this.setState('stopping');
        return this.stopPromise;
      default:
        this.stopPromise = this.stopRunning();
        return this.stopPromise;
    }
  }

  private async stopRunning(): Promise<void> {
    this.setState('stopping');
    this.logger.info('agent stopping');
    try {
      await this.teardown();
    } finally {
      this.setState('stopped');
    }
    this.logger.info('agent stopped');
  }

  private throwIfStopRequested(): void {
    if (this.stopRequested) throw new AgentStoppedError(this.config.agent.id);
  }

  /** The cameras whose stream failed or whose source gave up (after the pipeline completed). */
  private camerasEnded(): CamerasEnded {
    const stats = this.pipeline?.stats().cameras ?? {};
    const failed: CamerasEnded['failed'] = [];
    for (const c of this.cameras) {
      const status = c.source.status();
      const error = stats[c.config.id]?.failed ?? (status.state === 'failed' ? (status.lastError ?? 'source failed') : null);
      if (error !== null) failed.push({ camera: c.config.id, error });
    }
    return { failed };
  }

  private async teardown(): Promise<void> {
    for (const off of this.commandOff.splice(0)) off();
    await this.rollout?.stop();
    if (this.subscription) {
      // Graceful stop: no new frames, but every frame already captured is finished and its
      // events reach the outbox (bounded wait; an event announced must not be lost on stop).
      this.stopCapture.next();
      const drained = await Promise.race([
        this.finished.then(() => true),
        new Promise<boolean>((r) => setTimeout(() => r(false), this.options.drainTimeoutMs ?? 10_000).unref()),
      ]);
      if (!drained) this.logger.warn('pipeline did not drain in time; frames in flight are dropped');
    }
    const ran = this.subscription !== null;
    this.subscription?.unsubscribe();
    this.subscription = null;
    // Release what the journal holds, and write the states once more (the scans since the last
    // event) with no event left pending.
    if (ran) await this.journal?.flush();
    for (const ext of [...this.started].reverse()) {
      try {
        await ext.stop();
      } catch (err) {
        this.logger.warn('extension failed to stop', { extension: ext.name, error: err as Error });
      }
    }
    this.started = [];
    this.outputs.complete();
    if (this.client) {
      await this.client.stop({ flushTimeoutMs: this.options.flushTimeoutMs ?? 3000 }).catch((err: Error) => this.logger.warn('MQTT client failed to stop cleanly', { error: err }));
      // Records only in memory (the disk failed) are lost with the process: client.stop() logs those.
      const { records, memoryOnly } = this.client.outbox.depth();
      const left = records - memoryOnly;
      if (left > 0) this.logger.info('messages kept in the outbox for the next start', { records: left });
    }
    await this.registry?.release();
    await this.broker?.close();
    this.broker = null;
  }

  private context(): AgentContext {
    const client = this.client;
    const registry = this.registry;
    if (!client || !registry) throw new Error(`agent ${this.config.agent.id} is not started`);
    return {
      config: this.config,
      logger: this.logger,
      topics: this.topics,
      mqtt: client,
      models: registry,
      cameras: this.cameras,
      outputs$: this.outputs.asObservable(),
      metrics: this.metrics,
      version: TOOL_VERSION,
      startedAt: this.startedAt,
      clock: this.clock,
      uptimeSeconds: () => this.uptimeSeconds(),
      brokerUrl: this.brokerUrlValue,
      pipelineStats: () => this.pipelineStats(),
      health: () => this.health(),
      publish: (message: OutboxMessage) => {
        const write = client.publish(message).then(
          (result) => result.persisted,
          (err: Error) => {
            this.logger.warn('message not queued', { id: message.id, topic: message.topic, error: err });
            return false;
          },
        );
        this.outboxWrites.add(write);
        void write.then(() => this.outboxWrites.delete(write));
      },
    };
  }

  /** Whether every message published so far reached the outbox's disk, once their writes end. */
  private async outboxWritten(): Promise<boolean> {
    const results = await Promise.all(this.outboxWrites);
    return results.every(Boolean);
  }

  /** An output the journal lets through: to the extensions and the 'output' listeners. */
  private releaseOutput(output: ShelfOutput): void {
    this.outputs.next(output);
    try {
      this.emit('output', output);
    } catch (err) {
      this.logger.error("an 'output' listener failed", { error: err as Error });
    }
  }

  /** Publishes the retained status again (after a model swap or a refused model). */
  private republishStatus(): void {
    this.started.find((e): e is StatusPublisher => e instanceof StatusPublisher)?.publish('running');
  }

  /**
   * One line per model: the execution provider it got and why each earlier candidate was not
   * used, e.g. `model tile: provider cpu (cuda skipped: no NVIDIA GPU device found; webgpu
   * skipped: …)`. A warning when the model ended on the CPU although a GPU was asked for or a
   * GPU device is present (a driver or library problem, not a CPU-only box).
   */
  private logProvider(m: ModelStatus): void {
    const fields = { model: m.name, provider: m.provider, fallbacks: m.fallbacks, requested: this.config.inference.provider, ...(m.provider === 'cpu' ? { int8: int8PathNote() } : {}) };
    const level = providerLogLevel(this.config.inference.provider, m, nvidiaGpuPresent() || renderNodePresent());
    this.logger[level](providerLine(m), fields);
  }

  private setState(state: AgentState): void {
    this.stateValue = state;
    if (state === 'stopped') this.stoppedResolve();
    this.emit('state', state);
  }

  /** Feeds `progress` and the time of the last progress (for the health check's stall verdict). */
  private progressObserver(): PipelineObserver {
    return {
      frameStarted: () => {
        // Work beginning after a quiet spell starts the clock; a stall counts from here.
        if (this.progress.inFlight === 0) this.lastProgressMono = performance.now();
        this.progress.started();
      },
      frameFinished: () => {
        this.progress.finished();
        this.lastProgressMono = performance.now();
      },
    };
  }

  /** Logs pipeline trouble; repeated errors of one camera and kind at most once a minute. */
  private logObserver(): PipelineObserver {
    const log = this.logger.child({ component: 'pipeline' });
    const last = new Map<string, { at: number; suppressed: number }>();
    const throttled = (key: string, write: (suppressed: number) => void) => {
      const now = performance.now();
      const entry = last.get(key);
      if (entry && now - entry.at < 60_000) {
        entry.suppressed++;
        return;
      }
      write(entry?.suppressed ?? 0);
      last.set(key, { at: now, suppressed: 0 });
    };
    return {
      frameError: (camera, frame, kind, error, slot) =>
        throttled(`${camera}:${kind}`, (suppressed) =>
          log.warn(`${kind} error; frame skipped${slot ? ' for this slot' : ''}`, { camera, slot, frame: frame.id, origin: frame.origin, error, ...(suppressed ? { suppressedSinceLast: suppressed } : {}) }),
        ),
      frameDropped: (camera, frame) =>
        throttled(`${camera}:drop`, (suppressed) =>
          log.warn('inference is behind: dropped the oldest pending frame', { camera, frame: frame.id, maxPendingFrames: this.config.inference.maxPendingFrames, ...(suppressed ? { droppedSinceLast: suppressed } : {}) }),
        ),
      cropWarning: (camera, slot, message) => log.warn(message, { camera, slot }),
      cameraError: (camera, error) => log.error('camera stopped: its frame stream failed', { camera, error }),
      cameraEnded: (camera) => log.info('camera frame stream ended', { camera }),
    };
  }
}

/**
 * `warn` when a model ended on the CPU although a GPU was asked for, or (auto) a GPU device is
 * present: a driver or library problem. Not when auto measured the GPU slower for this model
 * (models/provider-speed.ts): that is a choice. Otherwise `info`.
 */
export function providerLogLevel(requested: string, m: Pick<ModelStatus, 'provider' | 'fallbacks'>, gpuPresent: boolean): 'info' | 'warn' {
  const gpuExpected = requested === 'cuda' || requested === 'webgpu' || (requested === 'auto' && gpuPresent);
  const chosenCpu = m.fallbacks.some((f) => isSlowerThanCpu(f.reason));
  return m.provider === 'cpu' && m.fallbacks.length > 0 && gpuExpected && !chosenCpu ? 'warn' : 'info';
}

/** `model tile: provider cpu (cuda skipped: no NVIDIA GPU device found; webgpu skipped: …)`. */
export function providerLine(m: Pick<ModelStatus, 'name' | 'provider' | 'fallbacks'>): string {
  const skipped = m.fallbacks.map((f) => `${f.provider} skipped: ${f.reason}`).join('; ');
  return `model ${m.name}: provider ${m.provider}${skipped ? ` (${skipped})` : ''}`;
}

/** A camera with the frames to scan (its source plus its schedule). */
type RunningCamera = AgentCamera & { scans$: Observable<Frame> };

export function defaultExtensions(ctx: AgentContext, extra: { rollout?: () => ModelRolloutStats } = {}): Extension[] {
  const list: Extension[] = [];
  if (ctx.config.metrics.enabled) list.push(new HealthHttp(ctx));
  list.push(new StatusPublisher(ctx, { rollout: extra.rollout }), new EventsPublisher(ctx), new StatsPublisher(ctx));
  if (ctx.config.mqtt.homeAssistant.enabled) list.push(new HomeAssistantDiscovery(ctx));
  return list;
}

/** Calls every observer's hook in turn; one throwing does not keep the others from running. */
export function combineObservers(...observers: PipelineObserver[]): PipelineObserver {
  const keys = new Set(observers.flatMap((o) => Object.keys(o))) as Set<keyof PipelineObserver>;
  const combined: PipelineObserver = {};
  for (const key of keys) {
    (combined as Record<string, unknown>)[key] = (...args: unknown[]) => {
      for (const o of observers) {
        const fn = o[key] as ((...a: unknown[]) => void) | undefined;
        try {
          fn?.(...args);
        } catch {
          // an observer is never allowed to break the pipeline
        }
      }
    };
  }
  return combined;
}
