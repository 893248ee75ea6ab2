/** Serves /metrics and /healthz (agent/health.ts) while the agent runs, when `metrics.enabled`. */
import { startHealthServer, type HealthServer } from '../health.js';
import type { AgentContext, Extension } from './types.js';

export class HealthHttp implements Extension {
  readonly name = 'health-http';
  private server: HealthServer | null = null;

  constructor(private readonly ctx: AgentContext) {}

  get url(): string | null {
    return this.server?.url ?? null;
  }

  async start(): Promise<void> {
    const { host, port } = this.ctx.config.metrics;
    this.server = await startHealthServer({ host, port, metrics: this.ctx.metrics, health: () => this.ctx.health(), logger: this.ctx.logger });
    this.ctx.logger.info('metrics listening', { url: `${this.server.url}/metrics`, health: `${this.server.url}/healthz` });
  }

  async stop(): Promise<void> {
    await this.server?.close();
    this.server = null;
  }
}
