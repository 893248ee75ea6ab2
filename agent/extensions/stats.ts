/**
 * The periodic `<root>/stats` message (every `mqtt.statsIntervalSeconds`, not retained):
 * per-camera frame counters and queue depths, per-model batching, the MQTT connection and the
 * outbox, and the process' memory — the numbers of /metrics for those who only have MQTT.
 */
import type { CameraPipelineStats } from '../../pipelines/shelf-pipeline.js';
import type { InferenceBatcherStats } from '../../pipelines/inference-batcher.js';
import type { SourceStatus } from '../sources/types.js';
import type { AgentContext, Extension } from './types.js';

export interface AgentStats {
  agent: string;
  time: number;
  uptimeSeconds: number;
  cameras: Record<string, CameraPipelineStats & { source: SourceStatus }>;
  models: Record<string, InferenceBatcherStats>;
  mqtt: { state: string; protocolVersion: 4 | 5; connects: number; connectionLosses: number; published: number; publishErrors: number; publishRefused: number; inFlight: number };
  outbox: { records: number; bytes: number; oldestCreatedAt: number | null; enqueued: number; delivered: number; dropped: number; superseded: number; deadLettered: number; failedWrites: number };
  process: { rssBytes: number; heapUsedBytes: number };
}

export function agentStats(ctx: AgentContext): AgentStats {
  const now = ctx.clock();
  const pipeline = ctx.pipelineStats();
  const m = ctx.mqtt.metrics();
  const mem = process.memoryUsage();
  const cameras: AgentStats['cameras'] = {};
  for (const { config, source } of ctx.cameras) {
    const p = pipeline.cameras[config.id];
    if (p) cameras[config.id] = { ...p, source: source.status() };
  }
  return {
    agent: ctx.config.agent.id,
    time: now,
    uptimeSeconds: ctx.uptimeSeconds(),
    cameras,
    models: pipeline.models,
    mqtt: { state: m.state, protocolVersion: m.protocolVersion, connects: m.connects, connectionLosses: m.connectionLosses, published: m.published, publishErrors: m.publishErrors, publishRefused: m.publishRefused, inFlight: m.inFlight },
    outbox: {
      ...m.outbox.depth,
      enqueued: m.outbox.counters.enqueued,
      delivered: m.outbox.counters.delivered,
      dropped: m.outbox.counters.dropped,
      superseded: m.outbox.counters.superseded,
      deadLettered: m.outbox.counters.deadLettered,
      failedWrites: m.outbox.counters.failedWrites,
    },
    process: { rssBytes: mem.rss, heapUsedBytes: mem.heapUsed },
  };
}

export class StatsPublisher implements Extension {
  readonly name = 'stats';
  private timer: NodeJS.Timeout | null = null;
  private published = 0;

  constructor(private readonly ctx: AgentContext) {}

  start(): void {
    const ms = this.ctx.config.mqtt.statsIntervalSeconds * 1000;
    this.timer = setInterval(() => this.publish(), ms);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  publish(): void {
    const stats = agentStats(this.ctx);
    // The id carries the time, so a backlog keeps every sample (they are small and bounded by the
    // outbox); and a counter, since a wall clock that stepped back may repeat a time, and a pending
    // record with the same id would be superseded.
    this.ctx.publish({ id: `stats:${stats.time}:${this.published++}`, topic: this.ctx.topics.stats, payload: JSON.stringify(stats), qos: 1, retain: false });
  }
}
