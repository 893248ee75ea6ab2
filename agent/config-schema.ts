/**
 * The config file's shape: the field builders (numbers, durations, sizes, ids, URLs, cron, boxes…),
 * `configSchema` (types, defaults and per-field checks) and the `AgentConfig` types it produces.
 * Cross-field rules that need the raw document live in config-checks.ts.
 */
/*
 * Decisions worth knowing about the schema:
 * - Relative paths (stateDir, model files, TLS files, folder/replay sources, local stream inputs,
 *   thumbnails.dir, outbox.dir) are resolved against the config file's directory, so a config
 *   works whatever the working directory. The defaults (`./.shelfwatch`) follow the same rule.
 * - `mqtt.url` absent → embedded broker on 127.0.0.1:`mqtt.embeddedPort` (1883); the parsed
 *   value then has `embedded: true` and `url: 'mqtt://127.0.0.1:<port>'`.
 * - Each camera has at most one of `schedule` (cron) and `continuous` ({ maxFps }). Folder and
 *   replay sources with neither scan every file as it comes (both undefined in the parsed value);
 *   `continuous` caps them at maxFps. http-snapshot and stream cameras must say which, because
 *   polling a camera "as fast as possible" is rarely intended.
 * - Slot boxes are written `[x, y, width, height]` (or `{ x, y, width, height }`) and parse into
 *   the pipelines' `Box` object.
 * - Numbers may be written as numeric strings (so `port: ${METRICS_PORT}` works); sizes accept
 *   `256MB` (binary units), `*Ms`/`*Seconds` fields accept durations like `5s` or `1m30s`.
 * - What the sources would refuse when the agent starts is refused here, at its key, by the
 *   sources' own functions: folder `pattern` (globToRegExp), stream `loop` (video files only,
 *   classifyInput), http-snapshot `url` credentials (splitCredentials) and `headers` (what fetch
 *   sends).
 * - Model names, header names and ids may not be `__proto__`, `constructor` or `prototype`.
 */
import { resolve } from 'node:path';
import { validateDetailed } from 'node-cron';
import { z } from 'zod';
import type { Box } from '../pipelines/types.js';
import { closest, record } from './config-errors.js';
import { parseByteSize, parseDurationMs } from './duration.js';
import { classifyInput, type StreamInputKind } from './sources/ffmpeg-stream.js';
import { globToRegExp } from './sources/file-pattern.js';
import { splitCredentials } from './sources/http-auth.js';
import { describeHeaderProblem } from './sources/http-headers.js';
import { MIN_MAX_FPS } from './schedule.js';

// ---------------------------------------------------------------------------------------------
// Field builders
// ---------------------------------------------------------------------------------------------

export const ID_RE = /^[A-Za-z0-9_-]{1,64}$/;
export const ID_RULE = "1-64 letters, digits, '_' or '-'";
/**
 * Names that cannot be keys of a plain object: zod's records (and code that indexes by id) would
 * turn `__proto__` into a prototype and drop the entry, and `constructor`/`prototype` shadow or
 * collide with what every object inherits. Model names, header names and ids may not be one.
 */
const RESERVED_NAMES: readonly string[] = ['__proto__', 'constructor', 'prototype'];
export const RESERVED_RULE = `not one of the reserved names ${RESERVED_NAMES.join(', ')}`;
export const isReservedName = (name: string) => RESERVED_NAMES.includes(name);
const NUMERIC_RE = /^\s*-?\d+(?:\.\d+)?\s*$/;

const MQTT_SCHEMES = ['mqtt', 'mqtts', 'ws', 'wss'] as const;
const HTTP_SCHEMES = ['http', 'https'] as const;
const STREAM_SCHEMES = ['rtsp', 'rtsps', 'rtmp', 'rtmps', 'http', 'https', 'udp', 'tcp', 'srt'] as const;
export const SOURCE_TYPES = ['http-snapshot', 'stream', 'folder', 'replay'] as const;
const CONTINUOUS_BY_DEFAULT: readonly string[] = ['folder', 'replay'];
const DEFAULT_MAX_FPS = 2;

export const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error'] as const;
export const INFERENCE_PROVIDERS = ['auto', 'cuda', 'webgpu', 'cpu'] as const;

/** Strict object: unknown keys are errors, each with a "did you mean" suggestion. */
function strict<S extends Record<string, z.ZodType>>(shape: S) {
  const known = Object.keys(shape);
  return z.strictObject(shape, {
    // One line per unknown key, in `iss.keys` order; toIssues() splits them back apart.
    error: (iss) =>
      iss.code === 'unrecognized_keys' ? iss.keys.map((k) => unknownKeyMessage(k, known)).join('\n') : undefined,
  });
}

function unknownKeyMessage(key: string, known: readonly string[]): string {
  const guess = closest(key, known);
  return guess ? `unknown key (did you mean '${guess}'?)` : `unknown key (expected one of: ${known.join(', ')})`;
}

export const asNumber = (v: unknown) => (typeof v === 'string' && NUMERIC_RE.test(v) ? Number(v) : v);
const asBoolean = (v: unknown) => (v === 'true' ? true : v === 'false' ? false : v);

function int(min: number, max: number) {
  return z.preprocess(asNumber, z.number().int().min(min).max(max));
}

function positive(max = Number.MAX_VALUE) {
  return z.preprocess(asNumber, z.number().positive().max(max));
}

const bool = z.preprocess(asBoolean, z.boolean());

/** A `*Ms` or `*Seconds` field: a number in that unit, or a duration string such as '5s'. */
function duration(unit: 'ms' | 's', min: number, max: number, integer = true) {
  const unitName = unit === 'ms' ? 'milliseconds' : 'seconds';
  const base = z.number({
    error: (iss) =>
      iss.code === 'invalid_type' && iss.input !== undefined
        ? `expected a number of ${unitName} or a duration such as '5s'`
        : undefined,
  });
  return z.preprocess(
    (v) => {
      if (typeof v !== 'string') return v;
      if (NUMERIC_RE.test(v)) return Number(v);
      const ms = parseDurationMs(v);
      return ms === undefined ? v : unit === 'ms' ? ms : ms / 1000;
    },
    (integer ? base.int() : base).min(min).max(max),
  );
}

/** A byte count, or a size string such as '256MB' (binary units). */
function byteSize(min: number) {
  return z.preprocess(
    (v) => (typeof v === 'string' ? (parseByteSize(v) ?? v) : v),
    z
      .number({
        error: (iss) =>
          iss.code === 'invalid_type' && iss.input !== undefined
            ? "expected a number of bytes or a size such as '256MB'"
            : undefined,
      })
      .int()
      .min(min),
  );
}

function id(what: string) {
  return z
    .string()
    .regex(ID_RE, { error: `expected a ${what}: ${ID_RULE}` })
    .refine((v) => !isReservedName(v), { error: `expected a ${what} ${RESERVED_RULE}` });
}

function nonEmpty() {
  return z.string().min(1);
}

/** An IANA time zone name (`agent.timezone`), as Intl — and node-cron, which uses it — knows it. */
function timeZone() {
  return z.string().superRefine((v, ctx) => {
    const problem = timeZoneProblem(v);
    if (problem) ctx.addIssue({ code: 'custom', message: problem, input: v });
  });
}

/** What is wrong with a time zone name; undefined when Intl knows it. */
export function timeZoneProblem(v: string): string | undefined {
  const expected = "expected an IANA time zone name such as 'Europe/Berlin', 'America/New_York' or 'UTC'";
  // Names only: no UTC offsets ('+01:00'), which do not follow daylight saving time anyway.
  if (!/^[A-Za-z][A-Za-z0-9_+\-/]*$/.test(v)) return expected;
  try {
    new Intl.DateTimeFormat('en-US', { timeZone: v });
    return undefined;
  } catch {
    const guess = closest(v, Intl.supportedValuesOf('timeZone'));
    return guess ? `${expected} (did you mean '${guess}'?)` : expected;
  }
}

/** A URL whose scheme is one of `schemes`. */
function url(schemes: readonly string[]) {
  return z.string().superRefine((v, ctx) => {
    const problem = urlProblem(v, schemes);
    if (problem) ctx.addIssue({ code: 'custom', message: problem, input: v });
  });
}

const STREAM_KIND_NAMES: Readonly<Record<StreamInputKind, string>> = {
  rtsp: 'an rtsp://',
  http: 'an http(s)://',
  v4l2: 'a V4L2 device (/dev/videoN, /dev/v4l/by-id/…)',
  url: 'a URL',
  file: 'a file',
};

/** What is wrong with a folder source's file pattern, as the folder source would find it. */
function patternProblem(pattern: string): string | undefined {
  try {
    globToRegExp(pattern);
    return undefined;
  } catch (e) {
    // "file pattern "x[" has an unclosed '['" → "has an unclosed '['" (the value is shown anyway).
    const why = String((e as Error).message).replace(`file pattern ${JSON.stringify(pattern)} `, '');
    return `expected a file-name glob such as '*.jpg' or 'IMG_*.{jpg,png}' (*, ?, [abc], [!abc], {a,b}; no '/'): ${why}`;
  }
}

/** `scheme://user[:password]@host…` */
function hasUserinfo(v: string): boolean {
  const m = /^[a-z][a-z0-9+.-]*:\/\/([^/?#]*)/i.exec(v);
  return m !== null && m[1]!.includes('@');
}

function urlProblem(v: string, schemes: readonly string[]): string | undefined {
  const expected = `expected a URL with scheme ${schemes.map((s) => `${s}://`).join(', ')}`;
  let parsed: URL;
  try {
    parsed = new URL(v);
  } catch {
    return expected;
  }
  const scheme = parsed.protocol.replace(/:$/, '');
  if (!schemes.includes(scheme)) return `${expected} (not ${scheme}://)`;
  if (!parsed.hostname) return `${expected} with a host name`;
  return undefined;
}

export function looksLikeUrl(v: string): boolean {
  return /^[a-z][a-z0-9+.-]*:\/\//i.test(v);
}

/** An MQTT topic prefix: no wildcards, no leading/trailing or doubled '/', not `$`-reserved. */
function topicPrefix() {
  return z.string().superRefine((v, ctx) => {
    let problem: string | undefined;
    if (v === '') problem = 'expected a non-empty topic prefix';
    else if (/[+#]/.test(v)) problem = "expected a topic prefix without the MQTT wildcards '+' and '#'";
    else if (v.startsWith('/') || v.endsWith('/')) problem = "expected a topic prefix without a leading or trailing '/'";
    else if (v.includes('//')) problem = "expected a topic prefix without empty levels ('//')";
    else if (v.startsWith('$')) problem = "expected a topic prefix not starting with '$' (reserved for the broker)";
    else if (v.includes('\u0000')) problem = 'expected a topic prefix without NUL characters';
    // Brokers drop a client that names such a topic (mosquitto does): the agent would reconnect forever.
    else if (/[\u0001-\u001f\u007f-\u009f]|\p{Cs}/u.test(v)) problem = 'expected a topic prefix without control characters or unpaired surrogates (brokers refuse them)';
    if (problem) ctx.addIssue({ code: 'custom', message: problem, input: v });
  });
}

const cron = z.string().superRefine((v, ctx) => {
  const result = validateDetailed(v);
  if (!result.valid) {
    const why = result.errors.map((e) => `${e.field}: ${e.message}`).join('; ');
    ctx.addIssue({ code: 'custom', message: `expected a cron expression (${why})`, input: v });
  }
});

const BOX_EXPECTED = 'expected [x, y, width, height] (or { x, y, width, height }) in frame pixels';

/** `[x, y, w, h]` or `{ x, y, width, height }` → `Box`; integers, x/y >= 0, width/height > 0. */
const box = z.unknown().transform((v, ctx): Box => {
  const fail = (message: string): never => {
    ctx.addIssue({ code: 'custom', message, input: v });
    return z.NEVER;
  };
  if (v === undefined) return fail(`required key is missing (${BOX_EXPECTED})`);
  let parts: unknown[];
  if (Array.isArray(v)) {
    if (v.length !== 4) return fail(`${BOX_EXPECTED}: 4 numbers, not ${v.length}`);
    parts = v;
  } else if (v !== null && typeof v === 'object') {
    const o = v as Record<string, unknown>;
    const keys = Object.keys(o).sort().join(',');
    if (keys !== 'height,width,x,y') return fail(`${BOX_EXPECTED}: exactly the keys x, y, width, height`);
    parts = [o.x, o.y, o.width, o.height];
  } else {
    return fail(BOX_EXPECTED);
  }
  const [x, y, width, height] = parts.map(asNumber);
  const nums = [x, y, width, height];
  if (!nums.every((n) => typeof n === 'number' && Number.isInteger(n))) return fail(`${BOX_EXPECTED}: whole numbers`);
  const [bx, by, bw, bh] = nums as number[];
  if (bx < 0 || by < 0) return fail('expected x and y >= 0 (the box starts inside the frame)');
  if (bw <= 0 || bh <= 0) return fail('expected width and height > 0');
  return { x: bx, y: by, width: bw, height: bh };
});

// ---------------------------------------------------------------------------------------------
// The schema
// ---------------------------------------------------------------------------------------------

/**
 * Builds the schema; `baseDir` is where relative paths in the file are resolved (the config
 * file's directory). Cross-field rules that need the whole document live in crossFieldProblems().
 */
export function configSchema(baseDir: string) {
  const path = () => nonEmpty().transform((p) => resolve(baseDir, p));

  const streamInput = nonEmpty().superRefine((v, ctx) => {
    // ffmpegArgs refuses it (spawn() would throw on it).
    if (v.includes('\0')) ctx.addIssue({ code: 'custom', message: 'expected a file path, device or URL without NUL characters', input: v });
    else if (looksLikeUrl(v)) {
      const problem = urlProblem(v, STREAM_SCHEMES);
      if (problem) ctx.addIssue({ code: 'custom', message: `${problem}, or a device or file path`, input: v });
    }
  });

  const httpSnapshotSource = strict({
    type: z.literal('http-snapshot'),
    // The source takes the credentials out of the URL (fetch refuses them) and decodes them; a
    // raw '%' in the password cannot be decoded.
    url: url(HTTP_SCHEMES).superRefine((v, ctx) => {
      if (urlProblem(v, HTTP_SCHEMES)) return; // reported by url()
      try {
        splitCredentials(v);
      } catch {
        // The error text is not reused: it may quote the credentials.
        ctx.addIssue({
          code: 'custom',
          message: hasUserinfo(v)
            ? "expected the user name and password in the URL to be percent-encoded ('%25' for '%', '%40' for '@', '%3A' for ':')"
            : 'expected a snapshot URL the http-snapshot source can use',
          input: v,
        });
      }
    }),
    timeoutMs: duration('ms', 1, 600_000).default(5000),
    // Names and values fetch would refuse on every request; a value is never echoed (often a secret).
    headers: z
      .record(z.string(), z.string())
      .superRefine((headers, ctx) => {
        for (const [name, value] of Object.entries(headers)) {
          const problem = describeHeaderProblem(name, value);
          // The value is given so the issue says one was there; it always renders as <redacted>.
          if (problem) ctx.addIssue({ code: 'custom', path: [name], message: problem.expected, input: value });
        }
      })
      .default({}),
    // Largest snapshot body accepted; a camera that sends more is reported, not buffered.
    maxBytes: byteSize(1024).default(20 * 1024 * 1024),
  });
  const streamSource = strict({
    type: z.literal('stream'),
    // URLs pass through; local files and devices are resolved like every other path.
    input: streamInput.transform((v) => (looksLikeUrl(v) ? v : resolve(baseDir, v))),
    // Below MIN_MAX_FPS the stall watchdog (a few frame intervals) exceeds what a timer can wait.
    fps: z.preprocess(asNumber, z.number().min(MIN_MAX_FPS, `expected at least ${MIN_MAX_FPS.toPrecision(3)} (one frame every ~24.8 days)`).max(120)).default(1),
    transport: z.enum(['tcp', 'udp']).default('tcp'),
    loop: bool.default(false),
  }).superRefine(
    (src, ctx) => {
      // The stream source's own rule (ffmpegArgs): `-stream_loop` applies to video files only.
      const kind = classifyInput(src.input);
      if (src.loop && kind !== 'file') {
        ctx.addIssue({
          code: 'custom',
          path: ['loop'],
          message: `expected loop: false for ${STREAM_KIND_NAMES[kind]} input (loop applies to video files only)`,
          input: src.loop,
        });
      }
    },
    // Also when a sibling key has a problem, so that every problem is reported at once.
    { when: (payload) => typeof record(payload.value)?.input === 'string' && record(payload.value)?.loop === true },
  );
  const folderSource = strict({
    type: z.literal('folder'),
    path: path(),
    // The folder source compiles it with globToRegExp when the camera starts.
    pattern: nonEmpty()
      .superRefine((v, ctx) => {
        const problem = patternProblem(v);
        if (problem) ctx.addIssue({ code: 'custom', message: problem, input: v });
      })
      .default('*.jpg'),
    deleteAfter: bool.default(false),
  });
  const replaySource = strict({
    type: z.literal('replay'),
    files: z.array(path()).min(1).optional(),
    dir: path().optional(),
    intervalMs: duration('ms', 0, 86_400_000).default(1000),
    loop: bool.default(false),
  });
  const source = z.discriminatedUnion('type', [httpSnapshotSource, streamSource, folderSource, replaySource], {
    error: (iss) =>
      iss.code === 'invalid_union' ? `expected 'type' to be one of: ${SOURCE_TYPES.join(', ')}` : undefined,
  });

  const slot = strict({
    id: id('slot id'),
    box,
    model: nonEmpty(),
    product: nonEmpty().optional(),
    category: nonEmpty().optional(),
    threshold: positive().optional(),
    refine: bool.default(false),
  });

  const camera = strict({
    id: id('camera id'),
    source,
    schedule: cron.optional(),
    continuous: strict({
      // Below MIN_MAX_FPS the frame interval exceeds what a timer can wait (~24.8 days).
      maxFps: z.preprocess(asNumber, z.number().min(MIN_MAX_FPS, `expected at least ${MIN_MAX_FPS.toPrecision(3)} (one frame every ~24.8 days; use a cron schedule for rarer scans)`).max(120)).default(DEFAULT_MAX_FPS),
    }).optional(),
    shrinkOnLoad: bool.default(true),
    slots: z.array(slot).min(1),
  }).transform((c, ctx) => {
    const { schedule, continuous, ...rest } = c;
    const problem = triggerProblem(c.source.type, schedule !== undefined, continuous !== undefined);
    if (problem) {
      ctx.addIssue({ code: 'custom', message: problem, input: c });
      return z.NEVER;
    }
    // Folder and replay cameras with neither: every file as it comes (no cap).
    const trigger: CameraTrigger = schedule !== undefined ? { schedule, continuous: undefined } : { schedule: undefined, continuous };
    return { ...rest, ...trigger };
  });

  const tls = strict({
    ca: path().optional(),
    cert: path().optional(),
    key: path().optional(),
    rejectUnauthorized: bool.default(true),
    servername: nonEmpty().optional(),
  });

  const mqtt = strict({
    url: url(MQTT_SCHEMES).optional(),
    embeddedPort: int(0, 65535).default(1883),
    baseTopic: topicPrefix().default('shelfwatch'),
    clientId: z.string().min(1).max(256).optional(),
    username: z.string().optional(),
    password: z.string().optional(),
    tls: tls.optional(),
    keepaliveSeconds: duration('s', 0, 65535).default(30),
    // MQTT 5 lets the broker refuse one publish (reason code: an ACL denial); 3.1.1 brokers drop
    // it silently. auto: 5, and 3.1.1 for a broker that refuses 5 (the embedded one, old ones).
    protocolVersion: z.union([z.literal('auto'), z.literal(4), z.literal(5)], { error: 'expected auto, 4 (MQTT 3.1.1) or 5' }).default('auto'),
    statsIntervalSeconds: duration('s', 1, 86_400).default(60),
    homeAssistant: strict({
      enabled: bool.default(false),
      discoveryPrefix: topicPrefix().default('homeassistant'),
    }).prefault({}),
    // Inbound `command/<name>` messages: size and rate limits, and the size cap of a model that
    // `command/model` downloads.
    commands: strict({
      maxPayloadBytes: int(64, 1024 * 1024).default(65536),
      ratePerSecond: positive(1000).default(5),
      burst: int(1, 10_000).default(10),
      maxDownloadMiB: int(1, 4096).default(512),
    }).prefault({}),
  });

  return strict({
    agent: strict({
      id: id('agent id'),
      stateDir: path().prefault('./.shelfwatch'),
      /** IANA zone the cameras' cron schedules run in; absent: the system's local zone (TZ, /etc/localtime). */
      timezone: timeZone().optional(),
    }),
    mqtt: mqtt.prefault({}),
    outbox: strict({
      dir: path().optional(),
      maxRecords: int(1, 100_000_000).default(10_000),
      maxBytes: byteSize(1024).default(256 * 1024 * 1024),
    }).prefault({}),
    models: z.record(z.string(), strict({ path: path(), threshold: positive().optional() })).default({}),
    inference: strict({
      provider: z.enum(INFERENCE_PROVIDERS).default('auto'),
      batchSize: int(1, 1024).default(8),
      batchWaitMs: duration('ms', 0, 60_000).default(25),
      maxPendingFrames: int(1, 10_000).default(4),
      workerThread: bool.default(true),
      intraOpThreads: int(0, 1024).default(0),
      replicas: z.union([z.literal('auto'), int(1, 64)], { error: 'expected "auto" or a whole number from 1 to 64' }).default('auto'),
      spinWait: bool.default(false),
    }).prefault({}),
    debounce: strict({
      raiseAfter: int(1, 1000).default(2),
      window: int(1, 1000).default(3),
      clearAfter: int(1, 1000).default(3),
    }).prefault({}),
    thumbnails: strict({
      maxSize: int(16, 8192).default(320),
      quality: int(1, 100).default(80),
      dir: path().nullable().default(null),
      keep: int(1, 100_000).default(1000),
    }).prefault({}),
    metrics: strict({
      enabled: bool.default(true),
      host: nonEmpty().default('127.0.0.1'),
      port: int(0, 65535).default(9464),
    }).prefault({}),
    logging: strict({ level: z.enum(LOG_LEVELS).default('info') }).prefault({}),
    cameras: z.array(camera).default([]),
  }).transform((c) => {
    const { url: mqttUrl, clientId, ...mqttRest } = c.mqtt;
    return {
      ...c,
      mqtt: {
        ...mqttRest,
        /** True when no `mqtt.url` was given: the agent runs its own broker on 127.0.0.1. */
        embedded: mqttUrl === undefined,
        url: mqttUrl ?? `mqtt://127.0.0.1:${mqttRest.embeddedPort}`,
        clientId: clientId ?? `shelfwatch-${c.agent.id}`,
      },
      outbox: { ...c.outbox, dir: c.outbox.dir ?? resolve(c.agent.stateDir, 'outbox') },
    };
  });
}

export function triggerProblem(type: string, hasSchedule: boolean, hasContinuous: boolean): string | undefined {
  if (hasSchedule && hasContinuous) return "expected either 'schedule' or 'continuous', not both";
  if (!hasSchedule && !hasContinuous && !CONTINUOUS_BY_DEFAULT.includes(type)) {
    return `a ${type} camera needs 'schedule' (a cron expression) or 'continuous' ({ maxFps })`;
  }
  return undefined;
}

type CameraTrigger =
  | { schedule: string; continuous: undefined }
  | { schedule: undefined; continuous: { maxFps: number } }
  /** folder and replay only: every file as it comes. */
  | { schedule: undefined; continuous: undefined };

// ---------------------------------------------------------------------------------------------
// Exported types
// ---------------------------------------------------------------------------------------------

export type AgentConfig = z.output<ReturnType<typeof configSchema>>;
export type AgentSection = AgentConfig['agent'];
export type MqttConfig = AgentConfig['mqtt'];
export type MqttTlsConfig = NonNullable<MqttConfig['tls']>;
export type HomeAssistantConfig = MqttConfig['homeAssistant'];
export type OutboxConfig = AgentConfig['outbox'];
export type ModelConfig = AgentConfig['models'][string];
export type InferenceConfig = AgentConfig['inference'];
export type InferenceProvider = InferenceConfig['provider'];
export type DebounceConfig = AgentConfig['debounce'];
export type ThumbnailsConfig = AgentConfig['thumbnails'];
export type MetricsConfig = AgentConfig['metrics'];
export type LoggingConfig = AgentConfig['logging'];
export type LogLevel = LoggingConfig['level'];
export type CameraConfig = AgentConfig['cameras'][number];
export type SourceConfig = CameraConfig['source'];
export type SourceType = SourceConfig['type'];
export type HttpSnapshotSourceConfig = Extract<SourceConfig, { type: 'http-snapshot' }>;
export type StreamSourceConfig = Extract<SourceConfig, { type: 'stream' }>;
export type FolderSourceConfig = Extract<SourceConfig, { type: 'folder' }>;
export type ReplaySourceConfig = Extract<SourceConfig, { type: 'replay' }>;
export type SlotConfig = CameraConfig['slots'][number];
