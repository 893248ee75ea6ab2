/**
 * Agent extensions (the Zigbee2MQTT pattern): each feature around the pipeline — status,
 * event publishing, stats, Home Assistant discovery, the health server — is a self-contained
 * object with start/stop that sees the running agent only through an AgentContext.
 * The agent starts them in order after the MQTT client and before the cameras, and stops them
 * in reverse order after the cameras.
 */
import type { Observable } from 'rxjs';
import type { ShelfOutput, ShelfPipelineStats } from '../../pipelines/shelf-pipeline.js';
import type { AgentConfig, CameraConfig } from '../config.js';
import type { HealthReport } from '../health.js';
import type { AgentMetrics } from '../health.js';
import type { Logger } from '../logger.js';
import type { ModelRegistry } from '../model-registry.js';
import type { AgentMqttClient } from '../mqtt/client.js';
import type { OutboxMessage } from '../mqtt/outbox.js';
import type { AgentTopics } from '../mqtt/topics.js';
import type { CameraSource } from '../sources/types.js';

export interface AgentCamera {
  config: CameraConfig;
  source: CameraSource;
}

export interface AgentContext {
  readonly config: AgentConfig;
  readonly logger: Logger;
  readonly topics: AgentTopics;
  readonly mqtt: AgentMqttClient;
  readonly models: ModelRegistry;
  readonly cameras: readonly AgentCamera[];
  /** Every slot output of the pipeline (hot; starts when the agent subscribes the pipeline). */
  readonly outputs$: Observable<ShelfOutput>;
  readonly metrics: AgentMetrics;
  readonly version: string;
  /** Wall-clock time of the start, ms since the epoch (the agent's clock). */
  readonly startedAt: number;
  /**
   * The agent's wall clock (AgentOptions.clock, default Date.now) for every time stamp it
   * publishes. It may jump; measure intervals with `uptimeSeconds` or performance.now().
   */
  clock(): number;
  /** Seconds since the start, on the monotonic clock (unaffected by wall-clock jumps). */
  uptimeSeconds(): number;
  /** The broker the agent talks to (the embedded one's real address when embedded). */
  readonly brokerUrl: string;
  pipelineStats(): ShelfPipelineStats;
  health(): HealthReport;
  /** Queues a message in the durable outbox; never throws (a refused message is logged). */
  publish(message: OutboxMessage): void;
}

export interface Extension {
  readonly name: string;
  start(): void | Promise<void>;
  stop(): void | Promise<void>;
}
