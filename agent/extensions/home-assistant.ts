/**
 * Home Assistant MQTT discovery (`mqtt.homeAssistant.enabled`): at start, one retained config
 * message per entity of every slot (see agent/mqtt/home-assistant.ts), so each slot appears in
 * HA as a problem sensor with its thumbnail. Slots removed from the config keep their entities
 * until HA is told otherwise; `shelfwatch` does not guess what was there before.
 */
import type { AgentConfig } from '../config.js';
import { homeAssistantDiscovery, type HomeAssistantSlot } from '../mqtt/home-assistant.js';
import type { AgentContext, Extension } from './types.js';

/** Every slot of the config as discovery sees it (config check runs the same discovery). */
export function discoverySlots(config: AgentConfig): HomeAssistantSlot[] {
  return config.cameras.flatMap((cam) =>
    cam.slots.map((s) => ({ camera: cam.id, slot: s.id, ...(s.product ? { product: s.product } : {}), ...(s.category ? { category: s.category } : {}) })),
  );
}

export class HomeAssistantDiscovery implements Extension {
  readonly name = 'home-assistant';

  constructor(private readonly ctx: AgentContext) {}

  start(): void {
    const { ctx } = this;
    const messages = homeAssistantDiscovery({
      topics: ctx.topics,
      discoveryPrefix: ctx.config.mqtt.homeAssistant.discoveryPrefix,
      swVersion: ctx.version,
      slots: discoverySlots(ctx.config),
    });
    for (const m of messages) ctx.publish(m);
    ctx.logger.info('Home Assistant discovery published', { entities: messages.length, prefix: ctx.config.mqtt.homeAssistant.discoveryPrefix });
  }

  stop(): void {}
}
