/**
 * The MQTT topic tree of one agent (see DESIGN.md, "MQTT topic tree"):
 *
 *   <base>/<agent>/availability                online | offline (retained; offline is the last will)
 *   <base>/<agent>/events                      JSON events, QoS 1, not retained
 *   <base>/<agent>/<camera>/<slot>/state       JSON slot state (retained)
 *   <base>/<agent>/<camera>/<slot>/thumbnail   JPEG bytes (retained)
 *   <base>/<agent>/<camera>/<slot>/mask        PNG bytes (retained)
 *   <base>/<agent>/stats                       JSON, periodic
 *   <base>/<agent>/status                      JSON (retained)
 *   <base>/<agent>/command/<name>              inbound commands
 *
 * Every id that becomes a topic level is checked here once, so a camera called `a/b` or `#`
 * can never address somebody else's topics.
 */

/** Top-level names under `<base>/<agent>/`; a camera may not take one (it would shadow it). */
export const RESERVED_LEVELS: readonly string[] = ['availability', 'events', 'stats', 'status', 'command'];

/** Longest id accepted for one topic level (the config allows 64 for ids). */
const MAX_LEVEL_LENGTH = 128;

export class TopicError extends Error {
  override name = 'TopicError';
}

/**
 * Checks one topic level (an agent, camera, slot or command id): non-empty, no MQTT wildcard
 * (`+`, `#`), no separator (`/`), no NUL or other control character, no unpaired surrogate,
 * at most 128 characters. `what` names the value in
 * the error, e.g. `camera id`.
 */
export function validateTopicLevel(value: string, what: string): string {
  if (typeof value !== 'string' || value.length === 0) {
    throw new TopicError(`${what} must be a non-empty string, got ${JSON.stringify(value)}`);
  }
  if (value.length > MAX_LEVEL_LENGTH) {
    throw new TopicError(`${what} ${JSON.stringify(value.slice(0, 32))}… is ${value.length} characters, at most ${MAX_LEVEL_LENGTH} allowed`);
  }
  const bad = /[+#/\u0000]/.exec(value);
  if (bad) {
    const shown = bad[0] === '\u0000' ? 'NUL' : `'${bad[0]}'`;
    throw new TopicError(`${what} ${JSON.stringify(value)} contains ${shown}; MQTT topic levels may not contain '+', '#', '/' or NUL`);
  }
  // Mosquitto drops the connection of a client that names such a topic (a PUBLISH, the will of
  // CONNECT): the agent would never get a message through, with no hint why.
  const control = /[\u0001-\u001f\u007f-\u009f]|\p{Cs}/u.exec(value);
  if (control) {
    const code = `U+${control[0].charCodeAt(0).toString(16).toUpperCase().padStart(4, '0')}`;
    const kind = /\p{Cs}/u.test(control[0]) ? 'an unpaired surrogate (not valid UTF-8)' : 'a control character';
    throw new TopicError(`${what} ${JSON.stringify(value)} contains ${kind} (${code}); MQTT brokers refuse such topics`);
  }
  return value;
}

/**
 * Checks a base topic: one or more non-empty levels separated by `/`, no wildcards, no
 * leading or trailing `/`, and not starting with `$` (reserved for broker topics like $SYS).
 */
export function validateBaseTopic(base: string): string {
  if (typeof base !== 'string' || base.length === 0) {
    throw new TopicError(`base topic must be a non-empty string, got ${JSON.stringify(base)}`);
  }
  if (base.startsWith('$')) {
    throw new TopicError(`base topic ${JSON.stringify(base)} starts with '$', which brokers reserve for their own topics`);
  }
  if (base.startsWith('/') || base.endsWith('/')) {
    throw new TopicError(`base topic ${JSON.stringify(base)} has a leading or trailing '/'`);
  }
  const levels = base.split('/');
  levels.forEach((level, i) => {
    if (level.length === 0) throw new TopicError(`base topic ${JSON.stringify(base)} has an empty level at position ${i}`);
    validateTopicLevel(level, `base topic ${JSON.stringify(base)} level`);
  });
  return base;
}

/** The three retained topics of one slot. */
export interface SlotTopics {
  state: string;
  thumbnail: string;
  mask: string;
}

export interface AgentTopics {
  readonly baseTopic: string;
  readonly agentId: string;
  /** `<base>/<agent>`. */
  readonly root: string;
  readonly availability: string;
  readonly events: string;
  readonly stats: string;
  readonly status: string;
  /** Subscription filter for inbound commands: `<base>/<agent>/command/#`. */
  readonly commandFilter: string;
  /** `<base>/<agent>/command/<name>`. */
  command(name: string): string;
  /**
   * The command name of an inbound topic, or `null` when the topic is not exactly
   * `<root>/command/<one level>`.
   */
  parseCommand(topic: string): string | null;
  slot(camera: string, slot: string): SlotTopics;
}

/** Builds (and validates) the topic tree of one agent. Throws TopicError naming the bad value. */
export function agentTopics(baseTopic: string, agentId: string): AgentTopics {
  validateBaseTopic(baseTopic);
  validateTopicLevel(agentId, 'agent id');
  const root = `${baseTopic}/${agentId}`;
  const commandPrefix = `${root}/command/`;
  return {
    baseTopic,
    agentId,
    root,
    availability: `${root}/availability`,
    events: `${root}/events`,
    stats: `${root}/stats`,
    status: `${root}/status`,
    commandFilter: `${root}/command/#`,
    command(name) {
      return commandPrefix + validateTopicLevel(name, 'command name');
    },
    parseCommand(topic) {
      if (!topic.startsWith(commandPrefix)) return null;
      const name = topic.slice(commandPrefix.length);
      if (name.length === 0 || name.includes('/')) return null;
      return name;
    },
    slot(camera, slot) {
      validateTopicLevel(camera, 'camera id');
      if (RESERVED_LEVELS.includes(camera)) {
        throw new TopicError(`camera id ${JSON.stringify(camera)} is reserved (it would collide with ${root}/${camera}); reserved: ${RESERVED_LEVELS.join(', ')}`);
      }
      validateTopicLevel(slot, `slot id (camera ${camera})`);
      const prefix = `${root}/${camera}/${slot}`;
      return { state: `${prefix}/state`, thumbnail: `${prefix}/thumbnail`, mask: `${prefix}/mask` };
    },
  };
}

/** Checks a full topic name for publishing: non-empty levels are not required by MQTT, but wildcards are forbidden. */
export function validatePublishTopic(topic: string): string {
  if (typeof topic !== 'string' || topic.length === 0) {
    throw new TopicError(`publish topic must be a non-empty string, got ${JSON.stringify(topic)}`);
  }
  if (/[+#\u0000]/.test(topic)) {
    throw new TopicError(`publish topic ${JSON.stringify(topic)} contains a wildcard or NUL`);
  }
  if (/[\u0001-\u001f\u007f-\u009f]|\p{Cs}/u.test(topic)) {
    throw new TopicError(`publish topic ${JSON.stringify(topic)} contains a control character or an unpaired surrogate, which brokers refuse`);
  }
  if (Buffer.byteLength(topic) > 65535) {
    throw new TopicError(`publish topic is ${Buffer.byteLength(topic)} bytes, MQTT allows at most 65535`);
  }
  return topic;
}

/** True when `topic` matches the subscription `filter` (`+` one level, `#` the rest, MQTT 3.1.1 §4.7). */
export function topicMatches(filter: string, topic: string): boolean {
  const f = filter.split('/');
  const t = topic.split('/');
  // Topics starting with $ (broker internals) never match a filter starting with a wildcard.
  if (topic.startsWith('$') && (f[0] === '+' || f[0] === '#')) return false;
  for (let i = 0; i < f.length; i++) {
    if (f[i] === '#') return i === f.length - 1;
    if (i >= t.length) return false;
    if (f[i] !== '+' && f[i] !== t[i]) return false;
  }
  return f.length === t.length;
}
