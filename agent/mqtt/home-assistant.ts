/**
 * Home Assistant MQTT discovery: retained config messages that make every shelf slot appear
 * in HA without YAML — a `binary_sensor` (device_class `problem`, on while the slot is
 * anomalous, the state JSON as attributes) and an `image` entity showing the slot thumbnail
 * (raw JPEG on the thumbnail topic), plus a mask image that is disabled by default. All
 * entities of one agent hang off one HA device and follow `<root>/availability`.
 *
 * Pure functions: they return the messages; the caller publishes them (retained) through the
 * outbox. Publishing the removal messages (empty retained payloads) deletes the entities.
 */
import { TopicError, validateBaseTopic, type AgentTopics } from './topics.js';

export interface HomeAssistantSlot {
  camera: string;
  slot: string;
  product?: string;
  category?: string;
}

export interface HomeAssistantDiscoveryOptions {
  topics: AgentTopics;
  slots: readonly HomeAssistantSlot[];
  /** Default 'homeassistant'. */
  discoveryPrefix?: string;
  /** Shown as the device's software version. */
  swVersion?: string;
}

/** One discovery message, ready for `client.publish` (retained, QoS 1, stable id). */
export interface DiscoveryMessage {
  id: string;
  topic: string;
  payload: string;
  qos: 1;
  retain: true;
}

/** HA accepts only these characters in node_id / object_id (and so in unique ids we derive). */
function haId(value: string): string {
  return value.replace(/[^A-Za-z0-9_-]/g, '_');
}

/** The HA node id of an agent: every discovery topic of the agent has it as its third level. */
export function homeAssistantNodeId(agentId: string): string {
  return `shelfwatch_${haId(agentId)}`;
}

/** Discovery config messages for every slot (binary sensor + thumbnail image + mask image). */
export function homeAssistantDiscovery(options: HomeAssistantDiscoveryOptions): DiscoveryMessage[] {
  const { topics } = options;
  const prefix = validateBaseTopic(options.discoveryPrefix ?? 'homeassistant');
  const nodeId = homeAssistantNodeId(topics.agentId);
  const device = {
    identifiers: [nodeId],
    name: `Shelfwatch ${topics.agentId}`,
    manufacturer: 'shelfwatch',
    model: 'Shelf anomaly agent (PatchCore)',
    ...(options.swVersion ? { sw_version: options.swVersion } : {}),
  };
  const origin = { name: 'shelfwatch', ...(options.swVersion ? { sw_version: options.swVersion } : {}) };
  const availability = {
    availability_topic: topics.availability,
    payload_available: 'online',
    payload_not_available: 'offline',
  };
  const messages: DiscoveryMessage[] = [];
  const seen = new Map<string, HomeAssistantSlot>();
  for (const slot of options.slots) {
    const slotTopics = topics.slot(slot.camera, slot.slot);
    const objectId = `${haId(slot.camera)}_${haId(slot.slot)}`;
    const clash = seen.get(objectId);
    if (clash) {
      throw new TopicError(
        `Home Assistant object id ${objectId} is shared by camera ${clash.camera} slot ${clash.slot} and camera ${slot.camera} slot ${slot.slot}; rename one of them`,
      );
    }
    seen.set(objectId, slot);
    const label = `${slot.camera} ${slot.slot}${slot.product ? ` (${slot.product})` : ''}`;
    const uniqueBase = `${nodeId}_${objectId}`;
    messages.push(
      message(prefix, 'binary_sensor', nodeId, objectId, {
        name: label,
        unique_id: `${uniqueBase}_problem`,
        device_class: 'problem',
        state_topic: slotTopics.state,
        value_template: "{{ 'ON' if value_json.state == 'anomalous' else 'OFF' }}",
        payload_on: 'ON',
        payload_off: 'OFF',
        json_attributes_topic: slotTopics.state,
        qos: 1,
        ...availability,
        device,
        origin,
      }),
      message(prefix, 'image', nodeId, `${objectId}_thumbnail`, {
        name: `${label} thumbnail`,
        unique_id: `${uniqueBase}_thumbnail`,
        image_topic: slotTopics.thumbnail,
        content_type: 'image/jpeg',
        ...availability,
        device,
        origin,
      }),
      message(prefix, 'image', nodeId, `${objectId}_mask`, {
        name: `${label} anomaly mask`,
        unique_id: `${uniqueBase}_mask`,
        image_topic: slotTopics.mask,
        content_type: 'image/png',
        enabled_by_default: false,
        ...availability,
        device,
        origin,
      }),
    );
  }
  return messages;
}

/** Empty retained payloads on the same config topics: HA removes the entities. */
export function homeAssistantRemoval(options: HomeAssistantDiscoveryOptions): DiscoveryMessage[] {
  return homeAssistantDiscovery(options).map((m) => ({ ...m, payload: '' }));
}

/** An empty retained payload on a config topic: HA removes that entity. */
export function removalMessage(topic: string): DiscoveryMessage {
  return { id: `ha:${topic}`, topic, payload: '', qos: 1, retain: true };
}

function message(prefix: string, component: string, nodeId: string, objectId: string, config: Record<string, unknown>): DiscoveryMessage {
  const topic = `${prefix}/${component}/${nodeId}/${objectId}/config`;
  // The id is the topic: a newer config for the same entity supersedes a pending older one.
  return { id: `ha:${topic}`, topic, payload: JSON.stringify(config), qos: 1, retain: true };
}
