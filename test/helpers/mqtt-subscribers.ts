/**
 * Test helper: plain mqtt.js subscribers that check what the agent publishes, from outside.
 *
 * - `recordingSubscriber`: records every message on a topic filter (topic, payload, retain flag);
 * - `eventSubscriber`: collects the anomaly events on `<root>/events`, parsed, with their event
 *   message ids (duplicates included: delivery is at least once) and the de-duplicated set.
 *
 * Both connect, subscribe at QoS 1, resolve once subscribed, swallow client errors (a broker a
 * test kills makes the client error, then reconnect) and end the client in the test's teardown.
 */
import { connect, type IClientOptions, type MqttClient } from 'mqtt';
import { eventMessageId } from '../../agent/extensions/events-publisher.js';
import type { AnomalyEvent } from '../../pipelines/events.js';

/** The part of ava's execution context the helpers use. */
export type TeardownContext = { teardown(fn: () => unknown): void };

export interface Received {
  topic: string;
  payload: Buffer;
  retain: boolean;
}

/** Records everything received on `filter`. Reconnects every 200 ms unless `options` say otherwise. */
export async function recordingSubscriber(url: string, filter: string, t: TeardownContext, options: IClientOptions = {}): Promise<{ client: MqttClient; messages: Received[] }> {
  const messages: Received[] = [];
  const client = connect(url, { reconnectPeriod: 200, ...options });
  client.on('error', () => undefined);
  client.on('message', (topic, payload, packet) => messages.push({ topic, payload, retain: packet.retain }));
  t.teardown(() => client.end(true));
  await subscribed(client, filter);
  return { client, messages };
}

export interface EventSubscriber {
  client: MqttClient;
  /** Every event received, in arrival order, duplicates included. */
  events: AnomalyEvent[];
  /** The event message id of each of `events` (same order, duplicates included). */
  ids: string[];
  /** The distinct event message ids received so far. */
  delivered(): Set<string>;
}

/**
 * Collects the events published on `<root>/events`. Pass `{ clientId, clean: false }` for a
 * persistent session, so that what the broker queues while the subscriber reconnects still arrives.
 */
export async function eventSubscriber(url: string, root: string, t: TeardownContext, options: IClientOptions = {}): Promise<EventSubscriber> {
  const topic = `${root}/events`;
  const events: AnomalyEvent[] = [];
  const ids: string[] = [];
  const client = connect(url, { reconnectPeriod: 200, ...options });
  client.on('error', () => undefined);
  client.on('message', (received, payload) => {
    if (received !== topic) return;
    const event = JSON.parse(payload.toString()) as AnomalyEvent;
    events.push(event);
    ids.push(eventMessageId(event));
  });
  t.teardown(() => client.end(true));
  await subscribed(client, topic);
  return { client, events, ids, delivered: () => new Set(ids) };
}

/** Resolves once the client has connected and its QoS 1 subscription to `filter` is acknowledged. */
function subscribed(client: MqttClient, filter: string): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    client.once('connect', () => client.subscribe(filter, { qos: 1 }, (err) => (err ? reject(err) : resolve())));
  });
}
