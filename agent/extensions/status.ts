/**
 * The retained `<root>/status` message: what this agent is and how its parts are doing —
 * version, broker, models (digest, provider, threshold), cameras with their source state.
 * Published at start, whenever a source changes state (coalesced over one second), and once
 * more with `state: 'stopped'` on a clean stop. (`availability` online/offline, with the last
 * will, is the MQTT client's job.) Also re-published after every model swap (the agent calls
 * `publish`), so the retained message always names the digests that are serving.
 */
import { auditTime, combineLatest, distinctUntilChanged, map, type Subscription } from 'rxjs';
import { redactUrl } from '../redact.js';
import type { ModelStatus } from '../model-registry.js';
import type { ModelRolloutStats } from '../model-rollout.js';
import type { SourceStatus } from '../sources/types.js';
import type { AgentContext, Extension } from './types.js';

export interface CameraStatus {
  id: string;
  source: string;
  origin: string;
  state: SourceStatus['state'];
  lastFrameAt: number | null;
  frames: number;
  errors: number;
  lastError: string | null;
  reconnects: number;
  trigger: string;
  slots: Array<{ id: string; model: string; product: string | null; category: string | null; threshold: number | null }>;
}

export interface AgentStatus {
  agent: string;
  version: string;
  state: 'running' | 'stopped';
  startedAt: number;
  time: number;
  broker: { url: string; embedded: boolean };
  models: ModelStatus[];
  cameras: CameraStatus[];
  homeAssistant: boolean;
  /** Hot-swap counters (swaps, rejected model files), when the agent runs a model rollout. */
  rollout?: ModelRolloutStats;
}

export function agentStatus(ctx: AgentContext, state: AgentStatus['state'], rollout?: () => ModelRolloutStats): AgentStatus {
  return {
    agent: ctx.config.agent.id,
    version: ctx.version,
    state,
    startedAt: ctx.startedAt,
    time: ctx.clock(),
    broker: { url: redactUrl(ctx.brokerUrl), embedded: ctx.config.mqtt.embedded },
    models: ctx.models.status(),
    cameras: ctx.cameras.map(({ config, source }) => {
      const s = source.status();
      return {
        id: config.id,
        source: source.kind,
        origin: redactUrl(source.origin),
        state: s.state,
        lastFrameAt: s.lastFrameAt,
        frames: s.frames,
        errors: s.errors,
        lastError: s.lastError,
        reconnects: s.reconnects,
        trigger: config.schedule !== undefined ? `schedule ${config.schedule}` : config.continuous ? `continuous ${config.continuous.maxFps} fps` : 'every file',
        slots: config.slots.map((slot) => ({
          id: slot.id,
          model: slot.model,
          product: slot.product ?? null,
          category: slot.category ?? null,
          threshold: slot.threshold ?? null,
        })),
      };
    }),
    homeAssistant: ctx.config.mqtt.homeAssistant.enabled,
    ...(rollout ? { rollout: rollout() } : {}),
  };
}

export class StatusPublisher implements Extension {
  readonly name = 'status';
  private subscription: Subscription | null = null;

  constructor(
    private readonly ctx: AgentContext,
    private readonly options: { rollout?: () => ModelRolloutStats } = {},
  ) {}

  start(): void {
    this.publish('running');
    if (this.ctx.cameras.length === 0) return;
    this.subscription = combineLatest(this.ctx.cameras.map((c) => c.source.status$.pipe(map((s) => s.state))))
      .pipe(
        map((states) => states.join(',')),
        distinctUntilChanged(),
        auditTime(1000),
      )
      .subscribe(() => this.publish('running'));
  }

  stop(): void {
    this.subscription?.unsubscribe();
    this.subscription = null;
    this.publish('stopped');
  }

  publish(state: AgentStatus['state']): void {
    this.ctx.publish({ id: 'status', topic: this.ctx.topics.status, payload: JSON.stringify(agentStatus(this.ctx, state, this.options.rollout)), qos: 1, retain: true });
  }
}
