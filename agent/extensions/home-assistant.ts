/**
 * Home Assistant MQTT discovery (`mqtt.homeAssistant.enabled`): at start, one retained config
 * message per entity of every slot (see agent/mqtt/home-assistant.ts), so each slot appears in
 * HA as a problem sensor with its thumbnail. Slots removed from the config keep their entities
 * until HA is told otherwise; `shelfwatch` does not guess what was there before.
 */
import { homeAssistantDiscovery } from '../mqtt/home-assistant.js';
import type { AgentContext, Extension } from './types.js';

export class HomeAssistantDiscovery implements Extension {
  readonly name = 'home-assistant';

  constructor(private readonly ctx: AgentContext) {}

  start(): void {
    const { ctx } = this;
    const messages = homeAssistantDiscovery({
      topics: ctx.topics,
      discoveryPrefix: ctx.config.mqtt.homeAssistant.discoveryPrefix,
      swVersion: ctx.version,
      slots: ctx.config.cameras.flatMap((cam) =>
        cam.slots.map((s) => ({ camera: cam.id, slot: s.id, ...(s.product ? { product: s.product } : {}), ...(s.category ? { category: s.category } : {}) })),
      ),
    });
    for (const m of messages) ctx.publish(m);
    ctx.logger.info('Home Assistant discovery published', { entities: messages.length, prefix: ctx.config.mqtt.homeAssistant.discoveryPrefix });
  }

  stop(): void {}
}
