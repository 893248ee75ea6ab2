/**
 * Health and Prometheus metrics (prom-client), served over HTTP — on 127.0.0.1 unless the config
 * says otherwise (`metrics.host`), because the numbers name cameras and products.
 *
 *   GET /metrics   Prometheus text format
 *   GET /healthz   JSON summary; 200 while the agent runs (ok or degraded), 503 otherwise:
 *                  starting, stopping, stopped (also: every camera failed) and stalled (frames in
 *                  flight and none finished for a while — stuck inference or decoding; the same
 *                  verdict that withholds the systemd watchdog ping). `problems` says why.
 *
 * Event-like numbers (frames, drops, errors, batch latencies) are pushed by the pipeline
 * observer; state-like numbers (queue depths, outbox, broker, sources) are read at scrape time.
 * Each AgentMetrics has its own Registry, so several agents can live in one process (tests).
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import { pixelArenaStats } from '../models/resize-kernel.js';
import type { PipelineObserver, ShelfPipelineStats } from '../pipelines/shelf-pipeline.js';
import type { EventJournalStats } from './event-journal.js';
import type { Logger } from './logger.js';
import type { MqttClientMetrics } from './mqtt/client.js';
import type { SourceState, SourceStatus } from './sources/types.js';

const SOURCE_STATES: readonly SourceState[] = ['starting', 'running', 'reconnecting', 'failed', 'stopped'];
const MQTT_STATES = ['connecting', 'connected', 'reconnecting', 'offline'] as const;

export interface CameraSourceSnapshot {
  camera: string;
  kind: string;
  status: SourceStatus;
}

/** Where scrape-time values come from (null while not started). */
export interface MetricsSources {
  pipeline(): ShelfPipelineStats | null;
  mqtt(): MqttClientMetrics | null;
  sources(): CameraSourceSnapshot[];
  /** The serving models (config name, file digest, execution provider); empty before start. */
  models?(): Array<{ name: string; digest: string; provider: string; workerRestarts: number }>;
  /** The event journal (agent/event-journal.ts); null before start. */
  journal?(): EventJournalStats | null;
}

/** How a model rollout ended: the candidate file serves now, or it was refused. */
export type ModelRolloutResult = 'accepted' | 'rejected';

export class AgentMetrics {
  readonly registry = new Registry();
  private readonly frames: Counter<'camera'>;
  private readonly framesDropped: Counter<'camera'>;
  private readonly framesScanned: Counter<'camera'>;
  private readonly frameErrors: Counter<'camera' | 'kind'>;
  private readonly crops: Counter<'camera'>;
  private readonly events: Counter<'camera' | 'type'>;
  private readonly inferenceSeconds: Histogram<'model'>;
  private readonly batchSize: Histogram<'model'>;
  private readonly scanSeconds: Histogram<'camera'>;
  private readonly decodeSeconds: Histogram<'camera'>;
  private readonly modelRollouts: Counter<'model' | 'result'>;
  /** Last values of externally kept counters, to turn them into prom-client increments. */
  private readonly last = new Map<string, number>();

  constructor(
    private readonly sources: MetricsSources,
    options: { batchSize?: number; defaultMetrics?: boolean } = {},
  ) {
    const registers = [this.registry];
    const self = this;
    this.frames = new Counter({ name: 'shelfwatch_frames_total', help: 'Frames received from the camera sources', labelNames: ['camera'], registers });
    this.framesDropped = new Counter({
      name: 'shelfwatch_frames_dropped_total',
      help: 'Pending frames dropped because inference.maxPendingFrames newer ones were waiting',
      labelNames: ['camera'],
      registers,
    });
    this.framesScanned = new Counter({ name: 'shelfwatch_frames_scanned_total', help: 'Frames fully scanned (every slot inferred and debounced)', labelNames: ['camera'], registers });
    this.frameErrors = new Counter({
      name: 'shelfwatch_frame_errors_total',
      help: 'Frames or slots skipped because of an error, by kind (decode, crop, inference, thumbnail, postprocess)',
      labelNames: ['camera', 'kind'],
      registers,
    });
    this.crops = new Counter({ name: 'shelfwatch_crops_total', help: 'Slot crops sent to inference', labelNames: ['camera'], registers });
    this.events = new Counter({ name: 'shelfwatch_events_total', help: 'Anomaly events by type (new, update, end)', labelNames: ['camera', 'type'], registers });
    const maxBatch = Math.max(1, options.batchSize ?? 8);
    this.inferenceSeconds = new Histogram({
      name: 'shelfwatch_inference_seconds',
      help: 'Duration of one inference call (one batch)',
      labelNames: ['model'],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers,
    });
    this.batchSize = new Histogram({
      name: 'shelfwatch_batch_size',
      help: 'Crops per inference call',
      labelNames: ['model'],
      buckets: [...new Set([1, 2, 4, 8, 16, 32, 64, 128, 256].filter((b) => b < maxBatch).concat(maxBatch))],
      registers,
    });
    this.scanSeconds = new Histogram({
      name: 'shelfwatch_scan_latency_seconds',
      help: 'From frame capture to its slot outputs (events, thumbnails) being ready',
      labelNames: ['camera'],
      buckets: [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30],
      registers,
    });
    this.decodeSeconds = new Histogram({
      name: 'shelfwatch_decode_seconds',
      help: 'Decode time of one frame (shrunk on load where the slots allow: shelfwatch_decode_shrink)',
      labelNames: ['camera'],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1],
      registers,
    });

    new Gauge({
      name: 'shelfwatch_pending_frames',
      help: 'Frames waiting for inference, per camera (bounded by inference.maxPendingFrames)',
      labelNames: ['camera'],
      registers,
      collect() {
        this.reset();
        for (const [camera, s] of Object.entries(self.sources.pipeline()?.cameras ?? {})) this.set({ camera }, s.pending);
      },
    });
    new Gauge({
      name: 'shelfwatch_decode_shrink',
      help: 'Shrink-on-load factor of the last decoded frame, per camera (1 = full resolution)',
      labelNames: ['camera'],
      registers,
      collect() {
        this.reset();
        for (const [camera, s] of Object.entries(self.sources.pipeline()?.cameras ?? {})) if (s.decodeShrink > 0) this.set({ camera }, s.decodeShrink);
      },
    });
    new Gauge({
      name: 'shelfwatch_frames_in_flight',
      help: 'Frames being decoded, inferred or post-processed, per camera',
      labelNames: ['camera'],
      registers,
      collect() {
        this.reset();
        for (const [camera, s] of Object.entries(self.sources.pipeline()?.cameras ?? {})) this.set({ camera }, s.inFlight);
      },
    });
    new Gauge({
      name: 'shelfwatch_inference_queue',
      help: 'Crops waiting for an inference call, per model',
      labelNames: ['model'],
      registers,
      collect() {
        this.reset();
        for (const [model, s] of Object.entries(self.sources.pipeline()?.models ?? {})) this.set({ model }, s.queued);
      },
    });
    new Gauge({
      name: 'shelfwatch_pixel_arena_bytes',
      help: 'Memory of the pixel arena that holds decoded frames and batch buffers (it keeps its peak)',
      registers,
      collect() {
        this.set(pixelArenaStats().memoryBytes);
      },
    });
    new Gauge({
      name: 'shelfwatch_pixel_arena_frames',
      help: 'Decoded frames holding a pixel arena buffer (back to 0 between scans; growth means a leak)',
      registers,
      collect() {
        this.set(pixelArenaStats().framesInUse);
      },
    });
    new Gauge({
      name: 'shelfwatch_outbox_records',
      help: 'MQTT messages waiting in the durable outbox',
      registers,
      collect() {
        this.set(self.sources.mqtt()?.outbox.depth.records ?? 0);
      },
    });
    new Gauge({
      name: 'shelfwatch_outbox_bytes',
      help: 'Bytes of the MQTT messages waiting in the durable outbox',
      registers,
      collect() {
        this.set(self.sources.mqtt()?.outbox.depth.bytes ?? 0);
      },
    });
    new Gauge({
      name: 'shelfwatch_outbox_oldest_age_seconds',
      help: 'Age of the oldest message waiting in the outbox (0 when empty)',
      registers,
      collect() {
        // The monotonic age: a wall clock stepped back or forward must not make it 0 or a day.
        const age = self.sources.mqtt()?.outbox.depth.oldestAgeMs ?? null;
        this.set(age === null ? 0 : age / 1000);
      },
    });
    this.modelRollouts = new Counter({
      name: 'shelfwatch_model_rollouts_total',
      help: 'Replacement model files checked while running, by config name and result (accepted: swapped in; rejected: refused, the old model kept serving)',
      labelNames: ['model', 'result'],
      registers,
    });
    new Gauge({
      name: 'shelfwatch_model_info',
      help: 'The model serving each config name: 1 for its file digest (sha256) and execution provider',
      labelNames: ['model', 'digest', 'provider'],
      registers,
      collect() {
        this.reset();
        for (const m of self.sources.models?.() ?? []) this.set({ model: m.name, digest: m.digest, provider: m.provider }, 1);
      },
    });
    new Gauge({
      name: 'shelfwatch_model_worker_restarts',
      help: 'Times the inference worker thread of the serving model died and was started again (since that model was loaded)',
      labelNames: ['model'],
      registers,
      collect() {
        this.reset();
        for (const m of self.sources.models?.() ?? []) this.set({ model: m.name }, m.workerRestarts);
      },
    });
    this.mirrorCounter('shelfwatch_outbox_dropped_total', 'Outbox records dropped (oldest first) because the outbox was full', () => self.sources.mqtt()?.outbox.counters.dropped);
    this.mirrorCounter(
      'shelfwatch_outbox_dead_lettered_total',
      'Outbox records set aside in dead/ because the broker dropped the connection on each attempt to send them',
      () => self.sources.mqtt()?.outbox.counters.deadLettered,
    );
    new Gauge({
      name: 'shelfwatch_journal_pending_events',
      help: 'Events written ahead with their debounce state and not yet known to be in the outbox (a restart enqueues them again)',
      registers,
      collect() {
        this.set(self.sources.journal?.()?.pending ?? 0);
      },
    });
    this.mirrorCounter(
      'shelfwatch_journal_released_unjournalled_total',
      'Events sent to the outbox without waiting for their debounce-state write, which took too long (a slow or hung disk)',
      () => self.sources.journal?.()?.releasedUnjournalled,
    );
    this.mirrorCounter(
      'shelfwatch_journal_dropped_pending_total',
      'Pending events no longer kept for a restart because too many were pending (the outbox disk kept failing)',
      () => self.sources.journal?.()?.droppedPending,
    );
    this.mirrorCounter('shelfwatch_outbox_delivered_total', 'Outbox records acknowledged by the broker', () => self.sources.mqtt()?.outbox.counters.delivered);
    this.mirrorCounter('shelfwatch_mqtt_connection_losses_total', 'Established broker connections that were lost', () => self.sources.mqtt()?.connectionLosses);
    new Gauge({
      name: 'shelfwatch_mqtt_state',
      help: 'MQTT connection state (1 for the current state)',
      labelNames: ['state'],
      registers,
      collect() {
        const state = self.sources.mqtt()?.state ?? 'offline';
        for (const s of MQTT_STATES) this.set({ state: s }, s === state ? 1 : 0);
      },
    });
    new Gauge({
      name: 'shelfwatch_source_state',
      help: 'Camera source state (1 for the current state)',
      labelNames: ['camera', 'source', 'state'],
      registers,
      collect() {
        this.reset();
        for (const src of self.sources.sources()) {
          for (const s of SOURCE_STATES) this.set({ camera: src.camera, source: src.kind, state: s }, s === src.status.state ? 1 : 0);
        }
      },
    });
    new Gauge({
      name: 'shelfwatch_source_last_frame_timestamp_seconds',
      help: 'Capture time of the newest frame of each source (unix seconds; 0 before the first)',
      labelNames: ['camera'],
      registers,
      collect() {
        this.reset();
        for (const src of self.sources.sources()) this.set({ camera: src.camera }, (src.status.lastFrameAt ?? 0) / 1000);
      },
    });
    new Gauge({
      name: 'shelfwatch_source_errors',
      help: 'Errors a camera source counted (connection failures, bad files, timeouts), since start',
      labelNames: ['camera'],
      registers,
      collect() {
        this.reset();
        for (const src of self.sources.sources()) this.set({ camera: src.camera }, src.status.errors);
      },
    });
    new Gauge({
      name: 'shelfwatch_source_reconnects',
      help: 'Restarts/retries of a camera source after a failure, since start',
      labelNames: ['camera'],
      registers,
      collect() {
        this.reset();
        for (const src of self.sources.sources()) this.set({ camera: src.camera }, src.status.reconnects);
      },
    });
    if (options.defaultMetrics !== false) collectDefaultMetrics({ register: this.registry, prefix: 'shelfwatch_' });
  }

  /** A counter whose value is kept elsewhere (outbox, MQTT client); synced at scrape time. */
  private mirrorCounter(name: string, help: string, read: () => number | undefined): void {
    const last = this.last;
    new Counter({
      name,
      help,
      registers: [this.registry],
      collect() {
        const value = read();
        if (value === undefined) return;
        const delta = value - (last.get(name) ?? 0);
        if (delta > 0) this.inc(delta);
        last.set(name, value);
      },
    });
  }

  /** Pipeline hooks that feed the event-like metrics. */
  observer(): PipelineObserver {
    return {
      frameReceived: (camera) => this.frames.inc({ camera }),
      frameDropped: (camera) => this.framesDropped.inc({ camera }),
      frameError: (camera, _frame, kind) => this.frameErrors.inc({ camera, kind }),
      frameScanned: (camera, _frame, t) => {
        this.framesScanned.inc({ camera });
        this.crops.inc({ camera }, t.slots);
        this.scanSeconds.observe({ camera }, t.totalMs / 1000);
        this.decodeSeconds.observe({ camera }, t.decodeMs / 1000);
      },
      batch: (model, size, ms) => {
        this.inferenceSeconds.observe({ model }, ms / 1000);
        this.batchSize.observe({ model }, size);
      },
      event: (event) => this.events.inc({ camera: event.after.camera, type: event.type }),
    };
  }

  /** Makes both results of every named model visible (at 0) before the first rollout. */
  trackModels(models: readonly string[]): void {
    for (const model of models) for (const result of ['accepted', 'rejected'] as const) this.modelRollouts.inc({ model, result }, 0);
  }

  /** Counts one rollout of the model `model` (a config name). */
  modelRollout(model: string, result: ModelRolloutResult): void {
    this.modelRollouts.inc({ model, result });
  }

  async text(): Promise<string> {
    return this.registry.metrics();
  }
}

/** 'ok' and 'degraded' are healthy (HTTP 200); the others are not (503). */
export type HealthState = 'starting' | 'ok' | 'degraded' | 'stalled' | 'stopping' | 'stopped';

export interface HealthReport {
  status: HealthState;
  /** Why the agent is degraded (broker down, a source failing), empty when ok. */
  problems: string[];
  uptimeSeconds: number;
  mqtt: string;
  cameras: Record<string, string>;
  /**
   * Pipeline progress: frames being worked on, and seconds since the last one finished (or since
   * work began after none was in flight); null before the first frame.
   */
  pipeline?: { inFlight: number; secondsSinceProgress: number | null };
}

/** The states /healthz answers 200 for. */
export function isHealthy(status: HealthState): boolean {
  return status === 'ok' || status === 'degraded';
}

export interface HealthServer {
  readonly url: string;
  readonly port: number;
  close(): Promise<void>;
}

/** Serves /metrics and /healthz on host:port (port 0 picks a free one). */
export async function startHealthServer(options: {
  host: string;
  port: number;
  metrics: AgentMetrics;
  health: () => HealthReport;
  logger?: Logger;
}): Promise<HealthServer> {
  const server: Server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end();
      return;
    }
    if (path === '/metrics') {
      options.metrics
        .text()
        .then((body) => res.writeHead(200, { 'content-type': options.metrics.registry.contentType }).end(req.method === 'HEAD' ? undefined : body))
        .catch((err: Error) => {
          options.logger?.error('metrics collection failed', { error: err });
          res.writeHead(500, { 'content-type': 'text/plain' }).end(`metrics collection failed: ${err.message}\n`);
        });
      return;
    }
    if (path === '/healthz') {
      const report = options.health();
      const code = isHealthy(report.status) ? 200 : 503;
      res.writeHead(code, { 'content-type': 'application/json' }).end(req.method === 'HEAD' ? undefined : `${JSON.stringify(report)}\n`);
      return;
    }
    res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: try /metrics or /healthz\n');
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) =>
      reject(new Error(`metrics: cannot listen on ${options.host}:${options.port}${err.code ? ` (${err.code})` : ''}: ${err.message}; change metrics.port or set metrics.enabled: false`)),
    );
    server.listen(options.port, options.host, () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  const host = options.host.includes(':') ? `[${options.host}]` : options.host;
  return {
    url: `http://${host}:${port}`,
    port,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
