/**
 * The agent's one MQTT connection (mqtt.js 5).
 *
 * - Every outbound message goes through the durable outbox ({@link Outbox}): written to disk,
 *   published with its QoS, deleted on PUBACK. Nothing is lost across broker outages or agent
 *   restarts; a message may arrive twice (at-least-once), its record id is stable.
 * - Last will: `<root>/availability` = `offline`, retained, QoS 1. On every (re)connect the
 *   client publishes `online` (retained), subscribes to commands, then drains the outbox in
 *   order with at most `maxInFlight` unacknowledged publishes.
 * - Each connection attempt uses a fresh mqtt.js client with its own reconnect turned off: on
 *   a lost connection the in-flight records simply stay in the outbox and the next connection
 *   re-publishes them, so mqtt.js' in-memory store never re-sends behind the outbox' back.
 *   Reconnects back off exponentially with jitter.
 * - Inbound `<root>/command/<name>` messages are checked (size, rate, not retained, known
 *   name) before a registered handler sees them.
 *
 * - TLS files (CA, client certificate, key) are read again before every connection attempt, so
 *   renewed certificates are used from the next reconnect on.
 *
 * Passwords never reach a log line; URLs are logged without their user-info.
 */
import { EventEmitter } from 'node:events';
import { readFileSync } from 'node:fs';
import { connect as mqttConnect, type IClientOptions, type IConnackPacket, type IPublishPacket, type MqttClient } from 'mqtt';
import { Outbox, type EnqueueResult, type OutboxCounters, type OutboxDepth, type OutboxLimits, type OutboxMessage, type OutboxRecord } from './outbox.js';
import { topicMatches, type AgentTopics } from './topics.js';
import { redactUrl } from '../redact.js';

export type ConnectionState = 'connecting' | 'connected' | 'reconnecting' | 'offline';

/** TLS material as file paths (the config's `mqtt.tls`). */
export interface MqttTlsFiles {
  ca?: string;
  cert?: string;
  key?: string;
  rejectUnauthorized?: boolean;
  servername?: string;
}

/** Minimal structured logger; the agent's logger fits it. Defaults to silence. */
export interface MqttLogger {
  debug(message: string, fields?: Record<string, unknown>): void;
  info(message: string, fields?: Record<string, unknown>): void;
  warn(message: string, fields?: Record<string, unknown>): void;
  error(message: string, fields?: Record<string, unknown>): void;
}

export interface CommandLimits {
  /** Larger command payloads are rejected (default 65536). */
  maxPayloadBytes?: number;
  /** Token bucket: sustained commands per second (default 5) ... */
  ratePerSecond?: number;
  /** ... and burst size (default 10). */
  burst?: number;
}

export interface MqttClientOptions {
  /** mqtt://, mqtts://, ws:// or wss:// */
  url: string;
  topics: AgentTopics;
  /** Default `shelfwatch-<agent id>`. */
  clientId?: string;
  username?: string;
  password?: string;
  tls?: MqttTlsFiles;
  /** Default 30. */
  keepaliveSeconds?: number;
  /**
   * MQTT protocol: 5 lets the broker refuse a single publish with a reason code (an ACL denial),
   * which a 3.1.1 broker acknowledges and drops silently; 'auto' (default) speaks 5 and falls back
   * to 3.1.1 for a broker that refuses it.
   */
  protocolVersion?: 'auto' | 4 | 5;
  /** How long to wait for CONNACK, ms (default 10000). */
  connectTimeoutMs?: number;
  outbox: { dir: string } & OutboxLimits;
  /** Most unacknowledged publishes at once (default 16). */
  maxInFlight?: number;
  /**
   * Reconnect backoff: first delay and cap, ms (defaults 1000 and 30000). The backoff starts over
   * only once a connection proved good: a PUBACK arrived, or it stayed up `stableMs` (default 30000).
   */
  reconnect?: { minDelayMs?: number; maxDelayMs?: number; stableMs?: number };
  /**
   * A record is set aside (outbox dead/) once the connection was lost this many times in a row
   * with it as the oldest record in flight and nothing acknowledged (default 5): a broker that
   * drops the connection on a message (too large, forbidden topic) would otherwise block the
   * whole queue forever.
   */
  poisonAfterLosses?: number;
  commands?: CommandLimits;
  logger?: MqttLogger;
}

/** An inbound command that passed the checks. */
export interface CommandMessage {
  /** The last topic level: `<root>/command/<name>`. */
  name: string;
  topic: string;
  payload: Buffer;
  receivedAt: number;
  /** The payload parsed as JSON; throws an Error naming the command when it is not JSON. */
  json(): unknown;
}

export type CommandHandler = (command: CommandMessage) => void | Promise<void>;

/** An inbound message on a topic subscribed with {@link AgentMqttClient.subscribe}. */
export interface TopicMessage {
  topic: string;
  payload: Buffer;
  /** The broker sent it as a retained message (it was stored before we subscribed). */
  retained: boolean;
}
export type TopicHandler = (message: TopicMessage) => void;

export interface MqttClientMetrics {
  state: ConnectionState;
  connectedSince: number | null;
  /** Successful connections (the first one included). */
  connects: number;
  /** Established connections that were lost. */
  connectionLosses: number;
  /** Records acknowledged by the broker. */
  published: number;
  publishErrors: number;
  /** Publishes the broker refused with an MQTT 5 reason code (set aside in dead/). */
  publishRefused: number;
  /** The protocol of the current or last connection: 4 (MQTT 3.1.1) or 5. */
  protocolVersion: 4 | 5;
  inFlight: number;
  lastError: string | null;
  outbox: { depth: OutboxDepth; counters: OutboxCounters };
  commands: {
    accepted: number;
    rejected: { tooLarge: number; rateLimited: number; retained: number; unknown: number; invalidTopic: number };
    handlerErrors: number;
  };
}

/** Why the broker could not be reached or refused us; `refused` = CONNACK said no. */
export class MqttConnectError extends Error {
  override name = 'MqttConnectError';
  constructor(
    message: string,
    /** CONNACK return/reason code when the broker refused, else undefined. */
    readonly returnCode: number | undefined,
    /** True when retrying with the same settings cannot help (bad credentials, not authorized, bad client id). */
    readonly permanent: boolean,
  ) {
    super(message);
  }
}

export interface MqttClientEvents {
  state: [ConnectionState, ConnectionState];
  connectError: [MqttConnectError];
}

interface Connection {
  client: MqttClient;
  connected: boolean;
  /** 'close' was handled (mqtt.js may report it more than once). */
  closed: boolean;
  /** Highest seq handed to mqtt.js on this connection. */
  cursor: number;
  inFlight: Map<number, OutboxRecord>;
  /** A PUBACK arrived on this connection. */
  acked: boolean;
  /**
   * Nothing more is published on it: a publish failed (mqtt.js fails them only when the
   * connection goes down: its queue flushed on a keepalive timeout, or end() was called) or
   * stop() is closing it.
   */
  closing: boolean;
  /** Resets the backoff once the connection has stayed up long enough. */
  stableTimer: NodeJS.Timeout | null;
  /** mqtt.js reported an error on it (refused, unreachable, TLS, CONNACK timeout…). */
  errored: boolean;
  /**
   * QoS 1 publishes it may have unacknowledged at once: maxInFlight, lowered to the broker's
   * Receive Maximum (MQTT 5 CONNACK; a broker may disconnect a client that sends more).
   */
  limit: number;
  /** Availability publishes unacknowledged (they count against the broker's Receive Maximum too). */
  othersInFlight: number;
  /** The broker's Maximum Packet Size (MQTT 5 CONNACK): a larger PUBLISH must not be sent. */
  maxPacketBytes: number | undefined;
}

const NOOP_LOGGER: MqttLogger = { debug() {}, info() {}, warn() {}, error() {} };

/** CONNACK codes (3.1.1 and 5) that mean our settings are wrong, not that the broker is busy. */
const PERMANENT_CONNACK_CODES = new Set([1, 2, 4, 5, 128, 129, 130, 132, 133, 134, 135, 138, 140]);

/** Opens the outbox, then starts connecting (does not wait for the broker; see waitUntilConnected). */
export async function startMqttClient(options: MqttClientOptions): Promise<AgentMqttClient> {
  const tls = loadTlsFiles(options.tls);
  const { dir, ...limits } = options.outbox;
  const outbox = await Outbox.open(dir, limits);
  const client = new AgentMqttClient(options, outbox, tls);
  client.connectNow();
  return client;
}

export class AgentMqttClient extends EventEmitter<MqttClientEvents> {
  private current: Connection | null = null;
  private stateValue: ConnectionState = 'connecting';
  private stopping = false;
  private reconnectTimer: NodeJS.Timeout | null = null;
  private attempt = 0;
  /** The protocol the next connection attempt speaks ('auto' starts at 5, see onConnectError). */
  private protocolVersion: 4 | 5;
  /** protocolVersion 'auto': the version may change with what the broker answers. */
  private readonly autoProtocol: boolean;
  /** The next attempt follows without a backoff delay (after falling back to 3.1.1). */
  private reconnectAtOnce = false;
  /**
   * 3.1.1 is spoken because a broker closed the connection on an MQTT 5 CONNECT without a
   * CONNACK (no refusal code to be sure of): after a connection in 3.1.1 is lost, 5 is tried again.
   */
  private fellBackOnClose = false;
  private loggedCloseFallback = false;
  private connectedSince: number | null = null;
  private lastErrorValue: MqttConnectError | Error | null = null;
  private readonly handlers = new Map<string, CommandHandler>();
  /** Subscriptions outside the command tree (filter → handler), made again on every connection. */
  private readonly subscriptions = new Map<string, TopicHandler>();
  private readonly bucket: TokenBucket;
  private readonly stats = {
    connects: 0,
    connectionLosses: 0,
    published: 0,
    publishErrors: 0,
    publishRefused: 0,
    commandsAccepted: 0,
    tooLarge: 0,
    rateLimited: 0,
    retained: 0,
    unknown: 0,
    invalidTopic: 0,
    handlerErrors: 0,
  };
  private readonly log: MqttLogger;
  private readonly clientId: string;
  private readonly maxInFlight: number;
  private readonly minDelayMs: number;
  private readonly maxDelayMs: number;
  private readonly maxCommandBytes: number;
  private readonly stableMs: number;
  private readonly poisonAfterLosses: number;
  /** The oldest record in flight at the last connection losses without any PUBACK, and how many. */
  private suspect: { id: string; seq: number; losses: number } | null = null;

  /** Use {@link startMqttClient}. */
  constructor(
    private readonly options: MqttClientOptions,
    readonly outbox: Outbox,
    /** TLS material read at start; re-read before each connection attempt (see tlsForAttempt). */
    private tls: Pick<IClientOptions, 'ca' | 'cert' | 'key' | 'rejectUnauthorized' | 'servername'>,
  ) {
    super();
    this.log = options.logger ?? NOOP_LOGGER;
    this.clientId = options.clientId ?? `shelfwatch-${options.topics.agentId}`;
    this.protocolVersion = options.protocolVersion === 4 ? 4 : 5;
    this.autoProtocol = (options.protocolVersion ?? 'auto') === 'auto';
    this.maxInFlight = positive(options.maxInFlight ?? 16, 'maxInFlight');
    this.minDelayMs = positive(options.reconnect?.minDelayMs ?? 1000, 'reconnect.minDelayMs');
    this.maxDelayMs = Math.max(this.minDelayMs, positive(options.reconnect?.maxDelayMs ?? 30000, 'reconnect.maxDelayMs'));
    this.maxCommandBytes = positive(options.commands?.maxPayloadBytes ?? 65536, 'commands.maxPayloadBytes');
    this.stableMs = positive(options.reconnect?.stableMs ?? 30000, 'reconnect.stableMs');
    this.poisonAfterLosses = positive(options.poisonAfterLosses ?? 5, 'poisonAfterLosses');
    this.bucket = new TokenBucket(
      positive(options.commands?.ratePerSecond ?? 5, 'commands.ratePerSecond'),
      positive(options.commands?.burst ?? 10, 'commands.burst'),
    );
    if (outbox.degradedReason) {
      this.log.error('outbox directory cannot be written: records on disk are delivered, new ones kept in memory only', { reason: outbox.degradedReason });
    }
    outbox.on('ready', () => this.drain());
    outbox.on('diskError', (err) => this.log.error('outbox disk error; record kept in memory and retried', { error: err.message }));
    outbox.on('dropped', (record) => this.log.warn('outbox full: dropped oldest record', { id: record.id, topic: record.topic }));
  }

  get state(): ConnectionState {
    return this.stateValue;
  }

  get lastError(): Error | null {
    return this.lastErrorValue;
  }

  /**
   * Queues a message for delivery (durably; see Outbox). Resolves once it is on disk (or kept
   * in memory after a disk error — `persisted: false`); delivery follows when connected.
   */
  async publish(message: OutboxMessage): Promise<EnqueueResult> {
    if (this.stopping) throw new Error('MQTT client is stopped');
    return this.outbox.enqueue(message);
  }

  /**
   * Registers the handler of `<root>/command/<name>` (one per name); returns an unregister
   * function. The client subscribes to `<root>/command/#` once a handler exists.
   */
  onCommand(name: string, handler: CommandHandler): () => void {
    this.options.topics.command(name); // validates the name
    if (this.handlers.has(name)) throw new Error(`a handler for MQTT command ${JSON.stringify(name)} is already registered`);
    this.handlers.set(name, handler);
    if (this.handlers.size === 1 && this.current?.connected) this.subscribeCommands(this.current);
    return () => {
      if (this.handlers.get(name) === handler) this.handlers.delete(name);
    };
  }

  /**
   * Subscribes (QoS 1) to `filter` on this and every later connection; `handler` sees each
   * message whose topic matches it, with the payload size capped like commands'. For topics
   * outside the agent's own tree (e.g. Home Assistant's `homeassistant/status`). Returns an
   * unsubscribe function.
   */
  subscribe(filter: string, handler: TopicHandler): () => void {
    if (this.subscriptions.has(filter)) throw new Error(`MQTT topic filter ${JSON.stringify(filter)} is already subscribed`);
    this.subscriptions.set(filter, handler);
    const conn = this.current;
    if (conn?.connected) this.subscribeFilter(conn, filter);
    return () => {
      if (this.subscriptions.get(filter) !== handler) return;
      this.subscriptions.delete(filter);
      if (this.current?.connected) this.current.client.unsubscribe(filter);
    };
  }

  /**
   * Resolves once connected. Rejects with the MqttConnectError at once when the broker refuses
   * our settings (bad credentials…), or with the last error when `timeoutMs` passes.
   */
  waitUntilConnected(timeoutMs: number): Promise<void> {
    if (this.stateValue === 'connected') return Promise.resolve();
    return new Promise((resolve, reject) => {
      const done = (err?: Error) => {
        clearTimeout(timer);
        this.off('state', onState);
        this.off('connectError', onError);
        if (err) reject(err);
        else resolve();
      };
      const onState = (state: ConnectionState) => {
        if (state === 'connected') done();
        else if (state === 'offline') done(new Error('MQTT client stopped before it connected'));
      };
      const onError = (err: MqttConnectError) => {
        if (err.permanent) done(err);
      };
      const timer = setTimeout(() => {
        const why = this.lastErrorValue ? `: ${this.lastErrorValue.message}` : '';
        done(new Error(`not connected to MQTT broker ${redactUrl(this.options.url)} after ${timeoutMs} ms${why}`));
      }, timeoutMs);
      this.on('state', onState);
      this.on('connectError', onError);
    });
  }

  metrics(): MqttClientMetrics {
    const s = this.stats;
    return {
      state: this.stateValue,
      connectedSince: this.connectedSince,
      connects: s.connects,
      connectionLosses: s.connectionLosses,
      published: s.published,
      publishErrors: s.publishErrors,
      publishRefused: s.publishRefused,
      protocolVersion: this.protocolVersion,
      inFlight: this.current?.inFlight.size ?? 0,
      lastError: this.lastErrorValue?.message ?? null,
      outbox: { depth: this.outbox.depth(), counters: this.outbox.counters() },
      commands: {
        accepted: s.commandsAccepted,
        rejected: { tooLarge: s.tooLarge, rateLimited: s.rateLimited, retained: s.retained, unknown: s.unknown, invalidTopic: s.invalidTopic },
        handlerErrors: s.handlerErrors,
      },
    };
  }

  /**
   * Stops cleanly: when connected, waits up to `flushTimeoutMs` (default 2000) for the outbox
   * to empty, publishes `offline` (retained) and disconnects (so the broker does not fire the
   * will); records still pending stay on disk for the next start. Closes the outbox.
   */
  async stop(options: { flushTimeoutMs?: number } = {}): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    const conn = this.current;
    if (conn?.connected) {
      const flushUntil = performance.now() + (options.flushTimeoutMs ?? 2000);
      // stopping = true stops new publishes; let the drain loop keep going while we flush.
      while (performance.now() < flushUntil && conn.connected && (this.outbox.depth().records > 0 || conn.inFlight.size > 0)) {
        this.drain(true);
        await sleep(20);
      }
      // Nothing more after `offline`: a record published into the DISCONNECT that follows fails at
      // once, and each failure used to publish the next (a stack overflow with a large backlog).
      conn.closing = true;
      if (conn.connected) {
        await withTimeout(publishAsync(conn.client, this.options.topics.availability, 'offline', { qos: 1, retain: true }), 2000).catch((err: Error) =>
          this.log.warn('could not publish offline availability', { error: err.message }),
        );
      }
      // end(false) waits for mqtt.js' queue (records in flight, `offline`); when the broker does
      // not acknowledge them, end(true) would be a no-op (already disconnecting): close the socket
      // so that no connection and keepalive timer outlive stop(). Unacknowledged records stay on disk.
      await withTimeout(new Promise<void>((resolve) => conn.client.end(false, {}, () => resolve())), 2000).catch(() => conn.client.stream.destroy());
    } else if (conn) {
      conn.client.end(true);
    }
    this.current = null;
    this.connectedSince = null;
    this.setState('offline');
    await this.outbox.close();
    const lost = this.outbox.depth().memoryOnly;
    if (lost > 0) this.log.error('outbox records that could not be written to disk are lost with this stop', { records: lost, dir: this.outbox.dir });
  }

  // ---- connection lifecycle -------------------------------------------------------------

  /** @internal Starts one connection attempt. */
  connectNow(): void {
    if (this.stopping) return;
    const { topics } = this.options;
    const client = mqttConnect(this.options.url, {
      clientId: this.clientId,
      username: this.options.username,
      password: this.options.password,
      keepalive: this.options.keepaliveSeconds ?? 30,
      connectTimeout: this.options.connectTimeoutMs ?? 10000,
      clean: true,
      reconnectPeriod: 0, // we reconnect ourselves, with backoff and a fresh client
      resubscribe: false,
      protocolVersion: this.protocolVersion,
      will: { topic: topics.availability, payload: Buffer.from('offline'), qos: 1, retain: true },
      ...this.tlsForAttempt(),
    });
    const conn: Connection = {
      client,
      connected: false,
      closed: false,
      cursor: 0,
      inFlight: new Map(),
      acked: false,
      closing: false,
      stableTimer: null,
      errored: false,
      limit: this.maxInFlight,
      othersInFlight: 0,
      maxPacketBytes: undefined,
    };
    this.current = conn;
    client.on('connect', (connack) => this.onConnected(conn, connack));
    client.on('message', (topic, payload, packet) => this.onMessage(topic, payload, packet));
    // mqtt.js emits 'error' on instances; an EventEmitter without a listener would throw.
    client.on('error', (err) => {
      conn.errored = true;
      this.onConnectError(conn, err);
    });
    client.on('disconnect', (packet) => {
      // MQTT 5: the broker says why it ends the connection (session taken over: another client
      // with our client id; packet too large; receive maximum exceeded…).
      if (conn === this.current && !this.stopping) {
        const code = packet.reasonCode ?? 0;
        this.log.warn('the MQTT broker ended the connection', { reasonCode: `0x${code.toString(16)}`, reason: packet.properties?.reasonString ?? DISCONNECT_REASONS[code] ?? 'unknown' });
      }
    });
    client.on('close', () => this.onClosed(conn));
  }

  /**
   * The TLS files read again for this attempt, so that an agent running for months follows a
   * rotated CA, client certificate or key without a restart. A file that cannot be read now (in
   * the middle of being replaced) keeps the material read before, with a warning; a certificate
   * and key that do not match yet fail the handshake, which is retried with the backoff.
   */
  private tlsForAttempt(): Pick<IClientOptions, 'ca' | 'cert' | 'key' | 'rejectUnauthorized' | 'servername'> {
    if (!this.options.tls) return this.tls;
    let fresh: Pick<IClientOptions, 'ca' | 'cert' | 'key' | 'rejectUnauthorized' | 'servername'>;
    try {
      fresh = loadTlsFiles(this.options.tls);
    } catch (err) {
      this.log.warn('could not read the TLS files again; connecting with the ones read before', { error: (err as Error).message });
      return this.tls;
    }
    const changed = (['ca', 'cert', 'key'] as const).filter((k) => !sameBytes(fresh[k], this.tls[k]));
    if (changed.length > 0) this.log.info('MQTT TLS files changed; connecting with the new ones', { changed });
    this.tls = fresh;
    return fresh;
  }

  private onConnected(conn: Connection, connack: IConnackPacket | undefined): void {
    if (conn !== this.current || this.stopping) return;
    conn.connected = true;
    const receiveMaximum = connack?.properties?.receiveMaximum;
    if (typeof receiveMaximum === 'number' && receiveMaximum >= 1) conn.limit = Math.min(this.maxInFlight, receiveMaximum);
    const maximumPacketSize = connack?.properties?.maximumPacketSize;
    if (typeof maximumPacketSize === 'number' && maximumPacketSize >= 1) conn.maxPacketBytes = maximumPacketSize;
    // Not yet a fresh backoff: a broker that accepts the connection and then drops it on a
    // message would otherwise be hammered several times a second.
    conn.stableTimer = setTimeout(() => (this.attempt = 0), this.stableMs);
    conn.stableTimer.unref();
    this.stats.connects++;
    this.connectedSince = Date.now();
    this.lastErrorValue = null;
    this.log.info('MQTT connected', { url: redactUrl(this.options.url), clientId: this.clientId, pending: this.outbox.depth().records });
    // MQTT keeps per-connection order, so `online` precedes everything the drain sends.
    conn.othersInFlight++;
    publishAsync(conn.client, this.options.topics.availability, 'online', { qos: 1, retain: true })
      .catch((err: Error) => this.log.warn('could not publish online availability', { error: err.message }))
      .finally(() => {
        conn.othersInFlight--;
        this.drain(this.stopping);
      });
    if (this.handlers.size > 0) this.subscribeCommands(conn);
    for (const filter of this.subscriptions.keys()) this.subscribeFilter(conn, filter);
    this.setState('connected');
    this.drain();
  }

  private onConnectError(conn: Connection, err: Error & { code?: unknown }): void {
    if (conn !== this.current) return;
    const url = redactUrl(this.options.url);
    const returnCode = typeof err.code === 'number' ? err.code : undefined;
    if (this.protocolVersion === 5 && this.autoProtocol && (returnCode === 1 || returnCode === 132)) {
      // "Unacceptable / unsupported protocol version": a 3.1.1 broker (the embedded one among them).
      this.protocolVersion = 4;
      this.attempt = 0;
      this.reconnectAtOnce = true;
      this.log.info('the MQTT broker does not speak MQTT 5: using 3.1.1, where a publish the broker refuses (ACL) is dropped without notice', { url });
      return;
    }
    let wrapped: MqttConnectError;
    if (returnCode !== undefined) {
      const hint = returnCode === 4 || returnCode === 5 || returnCode === 134 || returnCode === 135 ? ' (check mqtt.username / mqtt.password and the broker ACL)' : '';
      wrapped = new MqttConnectError(
        `MQTT broker ${url} refused client ${JSON.stringify(this.clientId)}: ${err.message} (code ${returnCode})${hint}`,
        returnCode,
        PERMANENT_CONNACK_CODES.has(returnCode),
      );
    } else {
      wrapped = new MqttConnectError(`MQTT connection to ${url} failed: ${err.message}`, undefined, false);
    }
    if (this.lastErrorValue?.message !== wrapped.message) this.log.error(wrapped.message);
    this.lastErrorValue = wrapped;
    this.emit('connectError', wrapped);
  }

  private onClosed(conn: Connection): void {
    if (conn !== this.current || conn.closed) return;
    conn.closed = true;
    const wasConnected = conn.connected;
    if (!wasConnected && !conn.errored && !this.stopping) this.lastErrorValue = new Error(CLOSED_BEFORE_CONNACK);
    if (this.autoProtocol && !this.stopping) this.chooseProtocolAfterClose(wasConnected, conn.errored);
    conn.connected = false;
    if (conn.stableTimer) clearTimeout(conn.stableTimer);
    if (wasConnected && !this.stopping) this.noteLossWithRecordsInFlight(conn);
    // In-flight records stay in the outbox; the next connection publishes them again.
    conn.inFlight.clear();
    conn.client.end(true);
    if (this.stopping) return;
    if (wasConnected) {
      this.stats.connectionLosses++;
      this.connectedSince = null;
      this.log.warn('MQTT connection lost', { url: redactUrl(this.options.url), pending: this.outbox.depth().records });
    }
    this.setState('reconnecting');
    const delay = this.reconnectAtOnce ? 0 : Math.min(this.maxDelayMs, this.minDelayMs * 2 ** this.attempt) * (0.5 + Math.random() / 2);
    this.reconnectAtOnce = false;
    this.attempt = Math.min(this.attempt + 1, 30);
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      this.connectNow();
    }, delay);
  }

  /**
   * protocolVersion auto, beyond a CONNACK refusal (onConnectError): a broker that only speaks
   * 3.1.1 may close the connection on an MQTT 5 CONNECT without a CONNACK. A connection closed
   * before its CONNACK with no error (the broker hung up) switches the next attempt to the other
   * protocol; 3.1.1 chosen that way lasts until that connection is lost, then 5 is tried again
   * (a broker that speaks 5 and hung up for another reason is not stuck with 3.1.1).
   */
  private chooseProtocolAfterClose(wasConnected: boolean, errored: boolean): void {
    if (wasConnected) {
      if (this.fellBackOnClose && this.protocolVersion === 4) {
        this.protocolVersion = 5;
        this.fellBackOnClose = false;
      }
      return;
    }
    if (errored) return;
    if (this.protocolVersion === 5) {
      this.protocolVersion = 4;
      this.fellBackOnClose = true;
      this.reconnectAtOnce = true;
      if (!this.loggedCloseFallback) this.log.info('the MQTT broker closed the connection on an MQTT 5 CONNECT without answering: trying 3.1.1', { url: redactUrl(this.options.url) });
      this.loggedCloseFallback = true;
    } else if (this.fellBackOnClose) {
      this.protocolVersion = 5;
      this.fellBackOnClose = false;
    }
  }

  /**
   * A connection lost with records in flight and none acknowledged points at its oldest record;
   * the same record at the head of `poisonAfterLosses` such losses in a row is set aside.
   */
  private noteLossWithRecordsInFlight(conn: Connection): void {
    if (conn.acked || conn.inFlight.size === 0) {
      this.suspect = null;
      return;
    }
    const head = [...conn.inFlight.values()].reduce((a, b) => (b.seq < a.seq ? b : a));
    this.suspect = this.suspect?.seq === head.seq ? { ...this.suspect, losses: this.suspect.losses + 1 } : { id: head.id, seq: head.seq, losses: 1 };
    if (this.suspect.losses < this.poisonAfterLosses) return;
    const { losses } = this.suspect;
    this.suspect = null;
    this.log.error('the broker dropped the connection every time this message was sent: set aside in the outbox dead/ folder', {
      id: head.id,
      topic: head.topic,
      bytes: head.payload.length,
      losses,
    });
    void this.outbox.deadLetter(head.id, head.seq);
  }

  private setState(next: ConnectionState): void {
    const previous = this.stateValue;
    if (previous === next) return;
    this.stateValue = next;
    this.emit('state', next, previous);
  }

  // ---- outbound ----------------------------------------------------------------------------

  /** Publishes pending records in order while there is room in flight. */
  private drain(duringStop = false): void {
    const conn = this.current;
    if (!conn?.connected || conn.closing || (this.stopping && !duringStop) || this.outbox.isClosed) return;
    const room = conn.limit - conn.inFlight.size - conn.othersInFlight;
    if (room <= 0) return;
    for (const record of this.outbox.pendingAfter(conn.cursor, room)) {
      conn.cursor = record.seq;
      const bytes = conn.maxPacketBytes === undefined ? 0 : publishPacketBytes(record);
      if (conn.maxPacketBytes !== undefined && bytes > conn.maxPacketBytes) {
        // MQTT 5: the broker announced it takes no packet this large (it would disconnect us).
        this.stats.publishRefused++;
        this.log.error('message larger than the MQTT broker accepts (its Maximum Packet Size): set aside in the outbox dead/ folder', {
          id: record.id,
          topic: record.topic,
          bytes,
          max: conn.maxPacketBytes,
        });
        void this.outbox.deadLetter(record.id, record.seq);
        continue;
      }
      conn.inFlight.set(record.seq, record);
      conn.client.publish(record.topic, record.payload, { qos: record.qos, retain: record.retain }, (err) => this.onPublished(conn, record, err));
    }
  }

  private onPublished(conn: Connection, record: OutboxRecord, err: Error | undefined): void {
    if (!conn.inFlight.has(record.seq)) return; // the connection was lost meanwhile
    const reasonCode = (err as (Error & { code?: unknown }) | undefined)?.code;
    if (err && typeof reasonCode === 'number' && reasonCode >= 0x80 && !TRANSIENT_PUBACK_CODES.has(reasonCode)) {
      // MQTT 5: the broker refused this message (not authorized, invalid topic…) and keeps the
      // connection. Sending it again gets the same answer: set it aside, go on with the rest.
      conn.inFlight.delete(record.seq);
      this.stats.publishRefused++;
      this.log.error('the broker refused this message: set aside in the outbox dead/ folder', {
        id: record.id,
        topic: record.topic,
        reasonCode: `0x${reasonCode.toString(16)}`,
        reason: err.message,
        ...(reasonCode === 0x87 ? { hint: 'the broker ACL does not allow this topic for this client: check agent.id / mqtt.baseTopic against the ACL' } : {}),
      });
      void this.outbox.deadLetter(record.id, record.seq);
      this.drain(this.stopping);
      return;
    }
    if (err) {
      // mqtt.js fails a publish when the connection goes down (a keepalive timeout flushes its
      // queue before 'close'; end() was called). Publishing more on it would only fail too (at
      // stop, synchronously, once per pending record), so this connection is done: the record
      // stays in flight (the poison check at 'close' must see the real oldest one) and pending,
      // and the next connection publishes it again.
      this.stats.publishErrors++;
      if (!conn.closing) {
        conn.closing = true;
        this.log.warn('MQTT publish failed; records in flight are sent again on the next connection', { id: record.id, topic: record.topic, error: err.message });
        // Not synchronously: mqtt.js may be iterating its queue right now.
        setImmediate(() => {
          if (!conn.closed) conn.client.end(true);
        });
      }
      return;
    }
    conn.inFlight.delete(record.seq);
    this.stats.published++;
    conn.acked = true;
    this.attempt = 0;
    this.suspect = null;
    void this.outbox.ack(record.id, record.seq);
    this.drain(this.stopping);
  }

  // ---- inbound commands ----------------------------------------------------------------

  private subscribeCommands(conn: Connection): void {
    conn.client.subscribe(this.options.topics.commandFilter, { qos: 1 }, (err) => {
      if (err) this.log.error('could not subscribe to commands', { topic: this.options.topics.commandFilter, error: err.message });
    });
  }

  private subscribeFilter(conn: Connection, filter: string): void {
    conn.client.subscribe(filter, { qos: 1 }, (err) => {
      if (err) this.log.error('could not subscribe', { topic: filter, error: err.message });
    });
  }

  /** The handlers of the subscriptions `topic` matches (none for command topics). */
  private topicHandlers(topic: string): TopicHandler[] {
    const out: TopicHandler[] = [];
    for (const [filter, handler] of this.subscriptions) if (topicMatches(filter, topic)) out.push(handler);
    return out;
  }

  private onMessage(topic: string, payload: Buffer, packet: IPublishPacket): void {
    const subscribers = this.options.topics.parseCommand(topic) === null ? this.topicHandlers(topic) : [];
    if (subscribers.length > 0) {
      if (payload.length > this.maxCommandBytes) {
        this.stats.tooLarge++;
        this.log.warn('ignored MQTT message: payload too large', { topic, bytes: payload.length, max: this.maxCommandBytes });
        return;
      }
      for (const handler of subscribers) {
        try {
          handler({ topic, payload, retained: packet.retain === true });
        } catch (err) {
          this.stats.handlerErrors++;
          this.log.error('MQTT message handler failed', { topic, error: (err as Error)?.message ?? String(err) });
        }
      }
      return;
    }
    const name = this.options.topics.parseCommand(topic);
    if (name === null) {
      this.stats.invalidTopic++;
      this.log.warn('ignored MQTT message on an unexpected topic', { topic });
      return;
    }
    if (packet.retain) {
      // A retained command would run again on every reconnect.
      this.stats.retained++;
      this.log.warn('ignored retained MQTT command', { topic });
      return;
    }
    if (payload.length > this.maxCommandBytes) {
      this.stats.tooLarge++;
      this.log.warn('ignored MQTT command: payload too large', { topic, bytes: payload.length, max: this.maxCommandBytes });
      return;
    }
    if (!this.bucket.take()) {
      this.stats.rateLimited++;
      this.log.warn('ignored MQTT command: rate limit', { topic });
      return;
    }
    const handler = this.handlers.get(name);
    if (!handler) {
      this.stats.unknown++;
      this.log.warn('ignored unknown MQTT command', { topic, known: [...this.handlers.keys()] });
      return;
    }
    this.stats.commandsAccepted++;
    const command: CommandMessage = {
      name,
      topic,
      payload,
      receivedAt: Date.now(),
      json() {
        try {
          return JSON.parse(payload.toString('utf8'));
        } catch (err) {
          throw new Error(`MQTT command ${name} (${topic}): payload is not JSON: ${(err as Error).message}`);
        }
      },
    };
    const fail = (err: unknown) => {
      this.stats.handlerErrors++;
      this.log.error('MQTT command handler failed', { command: name, error: (err as Error)?.message ?? String(err) });
    };
    try {
      Promise.resolve(handler(command)).catch(fail);
    } catch (err) {
      fail(err);
    }
  }
}

/** Reads the TLS files named in the config; errors name the key and the path. */
export function loadTlsFiles(tls: MqttTlsFiles | undefined): Pick<IClientOptions, 'ca' | 'cert' | 'key' | 'rejectUnauthorized' | 'servername'> {
  if (!tls) return {};
  const read = (key: 'ca' | 'cert' | 'key') => {
    const path = tls[key];
    if (path === undefined) return undefined;
    try {
      return readFileSync(path);
    } catch (err) {
      throw new Error(`mqtt.tls.${key}: cannot read ${path}: ${(err as Error).message}`);
    }
  };
  if ((tls.cert === undefined) !== (tls.key === undefined)) {
    throw new Error('mqtt.tls: cert and key must be given together (client certificate authentication)');
  }
  const out: Pick<IClientOptions, 'ca' | 'cert' | 'key' | 'rejectUnauthorized' | 'servername'> = {};
  const ca = read('ca');
  const cert = read('cert');
  const key = read('key');
  if (ca) out.ca = ca;
  if (cert) out.cert = cert;
  if (key) out.key = key;
  if (tls.rejectUnauthorized !== undefined) out.rejectUnauthorized = tls.rejectUnauthorized;
  if (tls.servername !== undefined) out.servername = tls.servername;
  return out;
}

/** Bytes of the MQTT 5 PUBLISH packet of `record` (no properties, no topic alias). */
function publishPacketBytes(record: OutboxRecord): number {
  const remaining = 2 + Buffer.byteLength(record.topic) + (record.qos > 0 ? 2 : 0) + 1 + record.payload.length;
  const lengthBytes = remaining < 128 ? 1 : remaining < 16384 ? 2 : remaining < 2097152 ? 3 : 4;
  return 1 + lengthBytes + remaining;
}

/** Names of MQTT 5 DISCONNECT reason codes a broker sends (for the log). */
const DISCONNECT_REASONS: Record<number, string> = {
  0x80: 'unspecified error',
  0x81: 'malformed packet',
  0x82: 'protocol error',
  0x83: 'implementation specific error',
  0x87: 'not authorized',
  0x89: 'server busy',
  0x8b: 'server shutting down',
  0x8d: 'keep alive timeout',
  0x8e: 'session taken over (another client connected with the same client id)',
  0x90: 'topic name invalid',
  0x93: 'receive maximum exceeded',
  0x95: 'packet too large',
  0x96: 'message rate too high',
  0x97: 'quota exceeded',
  0x98: 'administrative action',
  0x9c: 'use another server',
  0x9d: 'server moved',
  0xa0: 'maximum connect time',
};

function sameBytes(a: unknown, b: unknown): boolean {
  if (a === undefined || b === undefined) return a === b;
  return Buffer.isBuffer(a) && Buffer.isBuffer(b) && a.equals(b);
}

/**
 * MQTT 5 PUBACK reason codes that may pass (quota exceeded: the broker is busy now); the record
 * is sent again on the next connection instead of being set aside.
 */
const TRANSIENT_PUBACK_CODES = new Set([0x97]);

const CLOSED_BEFORE_CONNACK = 'the broker closed the connection before answering CONNECT';

/** Refills on the monotonic clock: a wall clock stepped back must not starve it for that long. */
class TokenBucket {
  private tokens: number;
  private last = performance.now();
  constructor(
    private readonly perSecond: number,
    private readonly burst: number,
  ) {
    this.tokens = burst;
  }
  take(): boolean {
    const now = performance.now();
    this.tokens = Math.min(this.burst, this.tokens + ((now - this.last) / 1000) * this.perSecond);
    this.last = now;
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }
}

function publishAsync(client: MqttClient, topic: string, payload: string, opts: { qos: 0 | 1 | 2; retain: boolean }): Promise<void> {
  return new Promise((resolve, reject) => client.publish(topic, payload, opts, (err) => (err ? reject(err) : resolve())));
}

function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms`)), ms);
    promise.then(
      (v) => {
        clearTimeout(timer);
        resolve(v);
      },
      (e) => {
        clearTimeout(timer);
        reject(e);
      },
    );
  });
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function positive(value: number, what: string): number {
  if (!(typeof value === 'number' && value > 0 && Number.isFinite(value))) {
    throw new RangeError(`MQTT client option ${what} must be a positive number, got ${JSON.stringify(value)}`);
  }
  return value;
}
