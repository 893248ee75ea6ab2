/**
 * Home Assistant discovery against a REAL mosquitto: the configs published at start, published
 * again when HA announces itself on `<prefix>/status` (its birth message after a restart), and
 * the retained configs of slots no longer in the config removed.
 */
import test from 'ava';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect } from 'mqtt';
import { configFromObject } from '../agent/config.js';
import { HomeAssistantDiscovery, REDISCOVERY_MIN_INTERVAL_MS } from '../agent/extensions/home-assistant.js';
import type { AgentContext } from '../agent/extensions/types.js';
import { startMqttClient } from '../agent/mqtt/client.js';
import { agentTopics, topicMatches } from '../agent/mqtt/topics.js';
import { captureLogger, until } from './helpers/agent-scene.js';
import { startMosquitto } from './helpers/mosquitto.js';
import { recordingSubscriber } from './helpers/mqtt-subscribers.js';

const PREFIX = 'homeassistant';
const NODE = `${PREFIX}/+/shelfwatch_store-9/+/config`;

test('topicMatches follows MQTT wildcard rules', (t) => {
  t.true(topicMatches('a/+/c', 'a/b/c'));
  t.false(topicMatches('a/+/c', 'a/b/c/d'));
  t.true(topicMatches('a/#', 'a'));
  t.true(topicMatches('a/#', 'a/b/c'));
  t.false(topicMatches('a/+', 'a'));
  t.true(topicMatches('+/+', '/x'), 'an empty level is a level');
  t.false(topicMatches('#', '$SYS/broker/uptime'), 'wildcards never match $ topics at the first level');
  t.true(topicMatches('homeassistant/status', 'homeassistant/status'));
});

/** Publishes `payload` on `topic` (retained or not) with a plain client, and waits for its PUBACK. */
async function publishRaw(url: string, topic: string, payload: string, retain: boolean): Promise<void> {
  const c = connect(url, { reconnectPeriod: 0 });
  try {
    await c.publishAsync(topic, payload, { qos: 1, retain });
  } finally {
    await c.endAsync();
  }
}

test('discovery: published at start, again when Home Assistant comes online, and stale slot entities removed', async (t) => {
  const broker = await startMosquitto();
  t.teardown(() => broker.dispose());
  // A config from an earlier run of this agent, for a slot that is gone now, and one of another agent.
  const stale = `${PREFIX}/binary_sensor/shelfwatch_store-9/shelf_OLD/config`;
  const foreign = `${PREFIX}/binary_sensor/shelfwatch_store-8/shelf_A1/config`;
  await publishRaw(broker.url, stale, JSON.stringify({ name: 'old slot' }), true);
  await publishRaw(broker.url, foreign, JSON.stringify({ name: 'other agent' }), true);

  const dir = await mkdtemp(join(tmpdir(), 'shelfwatch-ha-it-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const config = configFromObject(
    {
      agent: { id: 'store-9', stateDir: dir },
      mqtt: { url: broker.url, homeAssistant: { enabled: true } },
      models: { tile: { path: join(dir, 'tile.onnx') } },
      cameras: [{ id: 'shelf', source: { type: 'replay', dir }, slots: [{ id: 'A1', box: [0, 0, 10, 10], model: 'tile' }, { id: 'A2', box: [10, 0, 10, 10], model: 'tile' }] }],
    },
    { origin: 'ha.integration', env: {} },
  );
  const topics = agentTopics('shelfwatch', 'store-9');
  const { logger, lines } = captureLogger();
  const mqtt = await startMqttClient({ url: broker.url, topics, logger, outbox: { dir: join(dir, 'outbox'), maxRecords: 1000, maxBytes: 1 << 20 }, reconnect: { minDelayMs: 100, maxDelayMs: 500 } });
  t.teardown(() => mqtt.stop({ flushTimeoutMs: 0 }));
  const live = await recordingSubscriber(broker.url, `${PREFIX}/#`, t);
  await until('the retained configs to reach the watcher', () => live.messages.length >= 2);
  live.messages.length = 0;

  const ctx = { config, logger, topics, mqtt, version: '9.9.9', publish: (m: Parameters<AgentContext['publish']>[0]) => void mqtt.publish(m) } as unknown as AgentContext;
  const ha = new HomeAssistantDiscovery(ctx);
  await mqtt.waitUntilConnected(10_000);
  ha.start();
  t.teardown(() => ha.stop());

  const ours = (from = 0) => live.messages.slice(from).filter((m) => topicMatches(NODE, m.topic) && m.payload.length > 0);
  await until('the 6 discovery configs', () => ours().length >= 6, 10_000, lines);
  await until('the stale entity removed', () => live.messages.some((m) => m.topic === stale && m.payload.length === 0), 10_000, lines);
  t.deepEqual(new Set(ours().map((m) => m.topic.split('/').slice(1, 2).concat(m.topic.split('/')[3]!).join(':'))), new Set([
    'binary_sensor:shelf_A1', 'image:shelf_A1_thumbnail', 'image:shelf_A1_mask', 'binary_sensor:shelf_A2', 'image:shelf_A2_thumbnail', 'image:shelf_A2_mask',
  ]));
  t.true(lines.some((l) => l.includes('no longer in the config') && l.includes('shelf_OLD')));

  // The broker keeps the current configs and the other agent's, not the stale one.
  const late = await recordingSubscriber(broker.url, `${PREFIX}/#`, t);
  await until('the retained configs', () => late.messages.length >= 7);
  await new Promise((r) => setTimeout(r, 300));
  const retained = late.messages.filter((m) => m.retain).map((m) => m.topic);
  t.true(retained.includes(foreign), 'another agent’s entity is left alone');
  t.false(retained.includes(stale));
  t.is(retained.length, 7);

  // HA restarts: its birth message brings every config again (once within the minimum interval).
  await new Promise((r) => setTimeout(r, REDISCOVERY_MIN_INTERVAL_MS));
  const before = live.messages.length;
  await publishRaw(broker.url, `${PREFIX}/status`, 'online', false);
  await publishRaw(broker.url, `${PREFIX}/status`, 'online', false);
  await until('the configs again', () => ours(before).length >= 6, 10_000, lines);
  await new Promise((r) => setTimeout(r, 500));
  t.is(ours(before).length, 6, 'two birth messages in a row publish once');
  // `offline` (HA's last will) publishes nothing.
  const afterOnline = live.messages.length;
  await new Promise((r) => setTimeout(r, REDISCOVERY_MIN_INTERVAL_MS));
  await publishRaw(broker.url, `${PREFIX}/status`, 'offline', false);
  await new Promise((r) => setTimeout(r, 500));
  t.is(ours(afterOnline).length, 0);

  // The broker restarts without persistence: every retained config is gone. The agent publishes
  // them again when it reconnects, with no birth message from HA.
  await broker.restart();
  await until('the agent to reconnect', () => mqtt.state === 'connected' && mqtt.outbox.depth().records === 0, 15_000, lines);
  const restored = await recordingSubscriber(broker.url, NODE, t);
  await until('the retained configs again', () => restored.messages.filter((m) => m.retain && m.payload.length > 0).length >= 6, 10_000, lines);
  t.false(restored.messages.some((m) => m.topic === stale), 'the removed entity stays removed');
});
