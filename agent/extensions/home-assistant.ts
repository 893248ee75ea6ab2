/**
 * Home Assistant MQTT discovery (`mqtt.homeAssistant.enabled`):
 * - at start, one retained config message per entity of every slot (agent/mqtt/home-assistant.ts),
 *   so each slot appears in HA as a problem sensor with its thumbnail;
 * - when HA announces itself on `<discoveryPrefix>/status` with `online` (its birth message, after
 *   a restart), the configs are published again, as HA documents for integrations, and again on
 *   every reconnect to the broker: a broker restarted without persistence has lost its retained
 *   messages, and HA's birth message may have gone by while the agent was away;
 * - entities of slots no longer in the config are removed: the agent subscribes to its own
 *   node's config topics (`<prefix>/+/shelfwatch_<agent>/+/config`), and each retained config the
 *   broker still holds for an entity the agent no longer publishes gets an empty retained payload.
 */
import type { AgentConfig } from '../config.js';
import { homeAssistantDiscovery, homeAssistantNodeId, removalMessage, type DiscoveryMessage, type HomeAssistantSlot } from '../mqtt/home-assistant.js';
import type { ConnectionState, TopicMessage } from '../mqtt/client.js';
import type { AgentContext, Extension } from './types.js';

/** Every slot of the config as discovery sees it (config check runs the same discovery). */
export function discoverySlots(config: AgentConfig): HomeAssistantSlot[] {
  return config.cameras.flatMap((cam) =>
    cam.slots.map((s) => ({ camera: cam.id, slot: s.id, ...(s.product ? { product: s.product } : {}), ...(s.category ? { category: s.category } : {}) })),
  );
}

/** HA birth messages closer together than this republish once (a flapping or retained status). */
export const REDISCOVERY_MIN_INTERVAL_MS = 5000;

export class HomeAssistantDiscovery implements Extension {
  readonly name = 'home-assistant';
  private messages: DiscoveryMessage[] = [];
  private current = new Set<string>();
  private readonly removed = new Set<string>();
  private lastPublishAt = -Infinity;
  private readonly unsubscribe: Array<() => void> = [];
  private readonly onState = (state: ConnectionState, previous: ConnectionState): void => {
    if (state === 'connected' && previous !== 'connected') this.republish('reconnected to the broker');
  };

  constructor(private readonly ctx: AgentContext) {}

  start(): void {
    const { ctx } = this;
    const prefix = ctx.config.mqtt.homeAssistant.discoveryPrefix;
    this.messages = homeAssistantDiscovery({ topics: ctx.topics, discoveryPrefix: prefix, swVersion: ctx.version, slots: discoverySlots(ctx.config) });
    this.current = new Set(this.messages.map((m) => m.topic));
    this.publishAll('start');
    this.unsubscribe.push(
      ctx.mqtt.subscribe(`${prefix}/status`, (m) => this.onHomeAssistantStatus(m)),
      ctx.mqtt.subscribe(`${prefix}/+/${homeAssistantNodeId(ctx.topics.agentId)}/+/config`, (m) => this.onConfig(m)),
    );
    ctx.mqtt.on('state', this.onState);
    this.unsubscribe.push(() => ctx.mqtt.off('state', this.onState));
  }

  stop(): void {
    for (const off of this.unsubscribe.splice(0)) off();
  }

  private publishAll(reason: string): void {
    this.lastPublishAt = performance.now();
    for (const m of this.messages) this.ctx.publish(m);
    this.ctx.logger.info('Home Assistant discovery published', { entities: this.messages.length, prefix: this.ctx.config.mqtt.homeAssistant.discoveryPrefix, reason });
  }

  private onHomeAssistantStatus(m: TopicMessage): void {
    if (m.payload.toString('utf8').trim() === 'online') this.republish('Home Assistant came online');
  }

  /** publishAll, unless it ran less than REDISCOVERY_MIN_INTERVAL_MS ago. */
  private republish(reason: string): void {
    if (performance.now() - this.lastPublishAt >= REDISCOVERY_MIN_INTERVAL_MS) this.publishAll(reason);
  }

  /** A retained config under our node id that the agent no longer publishes: remove it. */
  private onConfig(m: TopicMessage): void {
    if (!m.retained || m.payload.length === 0 || this.current.has(m.topic) || this.removed.has(m.topic)) return;
    this.removed.add(m.topic);
    this.ctx.publish(removalMessage(m.topic));
    this.ctx.logger.info('removed a Home Assistant entity of a slot no longer in the config', { topic: m.topic });
  }
}
