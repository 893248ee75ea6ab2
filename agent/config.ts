/**
 * The agent's settings: one YAML or JSON file parsed once, at the edge, into a fully typed,
 * defaulted `AgentConfig` ("parse, don't validate"). Every problem in the file is reported at
 * once in a `ConfigError`, each naming the key path, the offending value (secrets redacted) and
 * what was expected. The annotated example lives in deploy/shelfwatch.example.yaml.
 *
 * Pipeline: text → YAML/JSON document → `${ENV}` substitution on string scalars → zod schema
 * (shape, types, defaults, per-field checks) + cross-field checks on the raw value (run even when
 * the schema fails, so duplicate ids are reported together with a wrong type elsewhere).
 *
 * Decisions worth knowing:
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
 * - JSON is held to YAML's rules: a duplicate key is an error, not "the last one wins"; a leading
 *   UTF-8 BOM is ignored (in YAML too). JSON syntax errors are described by our own scanner, with
 *   line and column, never with V8's message (it quotes the text, secrets included).
 * - Model names, header names and ids may not be `__proto__`, `constructor` or `prototype`.
 */
import { constants as fsConstants } from 'node:fs';
import { access, readFile, stat } from 'node:fs/promises';
import { dirname, extname, resolve, sep } from 'node:path';
import { validateDetailed } from 'node-cron';
import { isMap, isScalar, isSeq, LineCounter, parseDocument, type Document, type Node } from 'yaml';
import { z } from 'zod';
import { isSecretKey, redactUrl } from './redact.js';
import type { Box } from '../pipelines/types.js';
import { substituteEnv, type ConfigPath } from './config-env.js';
import { scanJson } from './config-json.js';
import { formatBytes, formatDurationMs, parseByteSize, parseDurationMs } from './duration.js';
import { classifyInput, type StreamInputKind } from './sources/ffmpeg-stream.js';
import { globToRegExp } from './sources/file-pattern.js';
import { splitCredentials } from './sources/http-auth.js';
import { describeHeaderProblem } from './sources/http-headers.js';

export type { ConfigPath } from './config-env.js';

// ---------------------------------------------------------------------------------------------
// Field builders
// ---------------------------------------------------------------------------------------------

const ID_RE = /^[A-Za-z0-9_-]{1,64}$/;
const ID_RULE = "1-64 letters, digits, '_' or '-'";
/**
 * Names that cannot be keys of a plain object: zod's records (and code that indexes by id) would
 * turn `__proto__` into a prototype and drop the entry, and `constructor`/`prototype` shadow or
 * collide with what every object inherits. Model names, header names and ids may not be one.
 */
const RESERVED_NAMES: readonly string[] = ['__proto__', 'constructor', 'prototype'];
const RESERVED_RULE = `not one of the reserved names ${RESERVED_NAMES.join(', ')}`;
const isReservedName = (name: string) => RESERVED_NAMES.includes(name);
const NUMERIC_RE = /^\s*-?\d+(?:\.\d+)?\s*$/;

const MQTT_SCHEMES = ['mqtt', 'mqtts', 'ws', 'wss'] as const;
const HTTP_SCHEMES = ['http', 'https'] as const;
const STREAM_SCHEMES = ['rtsp', 'rtsps', 'rtmp', 'rtmps', 'http', 'https', 'udp', 'tcp', 'srt'] as const;
const SOURCE_TYPES = ['http-snapshot', 'stream', 'folder', 'replay'] as const;
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

const asNumber = (v: unknown) => (typeof v === 'string' && NUMERIC_RE.test(v) ? Number(v) : v);
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
    fps: positive(120).default(1),
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
    continuous: strict({ maxFps: positive(120).default(DEFAULT_MAX_FPS) }).optional(),
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

// ---------------------------------------------------------------------------------------------
// Cross-field checks (on the raw, substituted document; tolerant of anything malformed)
// ---------------------------------------------------------------------------------------------

interface Problem {
  path: ConfigPath;
  message: string;
  /** The offending value; omitted when it would not help (or must not be shown). */
  value?: unknown;
  showValue?: boolean;
}

function triggerProblem(type: string, hasSchedule: boolean, hasContinuous: boolean): string | undefined {
  if (hasSchedule && hasContinuous) return "expected either 'schedule' or 'continuous', not both";
  if (!hasSchedule && !hasContinuous && !CONTINUOUS_BY_DEFAULT.includes(type)) {
    return `a ${type} camera needs 'schedule' (a cron expression) or 'continuous' ({ maxFps })`;
  }
  return undefined;
}

const record = (v: unknown): Record<string, unknown> | undefined =>
  v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;

function crossFieldProblems(doc: unknown): Problem[] {
  const problems: Problem[] = [];
  const root = record(doc);
  if (!root) return problems;

  const models = record(root.models);
  const modelNames = models ? Object.keys(models) : [];
  for (const name of modelNames) {
    if (!ID_RE.test(name)) {
      problems.push({ path: ['models', name], message: `expected a model name of ${ID_RULE}` });
    } else if (isReservedName(name)) {
      problems.push({ path: ['models', name], message: `expected a model name ${RESERVED_RULE}` });
    }
  }

  const mqtt = record(root.mqtt);
  const tls = record(mqtt?.tls);
  if (mqtt && tls) {
    if ((tls.cert === undefined) !== (tls.key === undefined)) {
      problems.push({ path: ['mqtt', 'tls'], message: "expected 'cert' and 'key' together (client certificate)" });
    }
    if (mqtt.url === undefined) {
      problems.push({
        path: ['mqtt', 'tls'],
        message: 'tls applies to a remote broker: set mqtt.url (mqtts:// or wss://)',
      });
    } else if (typeof mqtt.url === 'string' && /^(mqtt|ws):/i.test(mqtt.url)) {
      problems.push({
        path: ['mqtt', 'url'],
        message: 'tls is configured but the URL is not encrypted: expected mqtts:// or wss://',
        value: mqtt.url,
        showValue: true,
      });
    }
  }

  const debounce = record(root.debounce);
  if (debounce) {
    const raise = asNumber(debounce.raiseAfter ?? 2);
    const window = asNumber(debounce.window ?? 3);
    if (typeof raise === 'number' && typeof window === 'number' && raise > window) {
      problems.push({
        path: ['debounce', 'raiseAfter'],
        message: `expected at most debounce.window (${window}) — K anomalous scans among the last N`,
        value: raise,
        showValue: true,
      });
    }
  }

  const cameras = Array.isArray(root.cameras) ? root.cameras : [];
  const cameraIds = new Map<string, number>();
  cameras.forEach((raw, ci) => {
    const cam = record(raw);
    if (!cam) return;
    if (typeof cam.id === 'string') {
      const first = cameraIds.get(cam.id);
      if (first !== undefined) {
        problems.push({
          path: ['cameras', ci, 'id'],
          message: `duplicate camera id (already used by cameras[${first}])`,
          value: cam.id,
          showValue: true,
        });
      } else cameraIds.set(cam.id, ci);
    }

    const src = record(cam.source);
    const type = typeof src?.type === 'string' ? src.type : undefined;
    if (type && (SOURCE_TYPES as readonly string[]).includes(type)) {
      const problem = triggerProblem(type, cam.schedule !== undefined, cam.continuous !== undefined);
      if (problem) problems.push({ path: ['cameras', ci], message: problem });
    }
    // The schema's record drops a '__proto__' header before its checks see it: look at the keys here.
    const headers = type === 'http-snapshot' ? record(src?.headers) : undefined;
    for (const name of headers ? Object.keys(headers) : []) {
      if (isReservedName(name)) {
        problems.push({ path: ['cameras', ci, 'source', 'headers', name], message: `expected a header name ${RESERVED_RULE}` });
      }
    }
    if (src && type === 'replay') {
      if (src.files !== undefined && src.dir !== undefined) {
        problems.push({ path: ['cameras', ci, 'source'], message: "expected either 'files' or 'dir', not both" });
      } else if (src.files === undefined && src.dir === undefined) {
        problems.push({ path: ['cameras', ci, 'source'], message: "a replay source needs 'files' (a list) or 'dir'" });
      }
    }

    const slots = Array.isArray(cam.slots) ? cam.slots : [];
    const slotIds = new Map<string, number>();
    slots.forEach((rawSlot, si) => {
      const s = record(rawSlot);
      if (!s) return;
      if (typeof s.id === 'string') {
        const first = slotIds.get(s.id);
        if (first !== undefined) {
          problems.push({
            path: ['cameras', ci, 'slots', si, 'id'],
            message: `duplicate slot id in this camera (already used by slots[${first}])`,
            value: s.id,
            showValue: true,
          });
        } else slotIds.set(s.id, si);
      }
      if (typeof s.model === 'string' && s.model !== '' && !modelNames.includes(s.model)) {
        const guess = closest(s.model, modelNames);
        const known = modelNames.length ? `known: ${modelNames.join(', ')}` : '`models` is empty';
        problems.push({
          path: ['cameras', ci, 'slots', si, 'model'],
          message: `unknown model (${guess ? `did you mean '${guess}'? ` : ''}${known})`,
          value: s.model,
          showValue: true,
        });
      }
    });
  });
  return problems;
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/** One problem in a config file. */
export interface ConfigIssue {
  /** Key path such as `cameras[1].slots[0].box`; '' for the document itself. */
  path: string;
  /** What is wrong / what was expected. */
  message: string;
  /** The offending value, rendered and redacted; absent when not shown. */
  value?: string;
  /** 1-based position in the file, when known. */
  line?: number;
  column?: number;
}

/** A config that cannot be used; carries every problem found, not just the first. */
export class ConfigError extends Error {
  override readonly name = 'ConfigError';
  /** The file (or other origin) the config came from. */
  readonly origin: string;
  readonly issues: readonly ConfigIssue[];

  constructor(origin: string, issues: ConfigIssue[], headline = 'invalid config') {
    super(formatIssues(origin, headline, issues));
    this.origin = origin;
    this.issues = issues;
  }

  /** A readable multi-line description (the same text as `message`). */
  format(): string {
    return this.message;
  }
}

function formatIssues(origin: string, headline: string, issues: readonly ConfigIssue[]): string {
  const count = issues.length === 1 ? '1 problem' : `${issues.length} problems`;
  const lines = [`${headline} ${origin} (${count}):`];
  for (const issue of issues) {
    const where =
      issue.line !== undefined ? ` (line ${issue.line}${issue.column !== undefined ? `, column ${issue.column}` : ''})` : '';
    const got = issue.value !== undefined ? `; got ${issue.value}` : '';
    lines.push(`  - ${issue.path || '(document)'}${where}: ${issue.message}${got}`);
  }
  return lines.join('\n');
}

export function formatPath(path: ConfigPath): string {
  let out = '';
  for (const seg of path) {
    if (typeof seg === 'number') out += `[${seg}]`;
    else if (/^[A-Za-z_][A-Za-z0-9_-]*$/.test(seg)) out += out ? `.${seg}` : seg;
    else out += `[${JSON.stringify(seg)}]`;
  }
  return out;
}

const REDACTED = '<redacted>';

/** Decides which paths must not be printed: secret-looking keys, HTTP headers, ${ENV} values. */
class Redactor {
  private readonly envPaths: Set<string>;
  private readonly secrets: string[];

  constructor(envPaths: ConfigPath[], secretValues: string[]) {
    this.envPaths = new Set(envPaths.map((p) => JSON.stringify(p)));
    // Longest first so that a secret containing another is scrubbed whole.
    this.secrets = [...new Set(secretValues.filter((s) => s.length >= 4))].sort((a, b) => b.length - a.length);
  }

  isSecret(path: ConfigPath): boolean {
    if (this.envPaths.has(JSON.stringify(path))) return true;
    return path.some((seg, i) => typeof seg === 'string' && (isSecretKey(seg) || (seg === 'headers' && i < path.length - 1)));
  }

  render(value: unknown, path: ConfigPath, depth = 0): string {
    if (this.isSecret(path)) return REDACTED;
    if (value === undefined) return 'nothing';
    if (value === null || typeof value === 'number' || typeof value === 'boolean') return String(value);
    if (typeof value === 'string') return JSON.stringify(truncate(redactUrl(value), 80));
    if (depth >= 2) return Array.isArray(value) ? '[...]' : '{...}';
    if (Array.isArray(value)) {
      const items = value.slice(0, 6).map((v, i) => this.render(v, [...path, i], depth + 1));
      if (value.length > 6) items.push('...');
      return `[${items.join(', ')}]`;
    }
    if (typeof value === 'object') {
      const entries = Object.entries(value as object);
      const items = entries.slice(0, 4).map(([k, v]) => `${k}: ${this.render(v, [...path, k], depth + 1)}`);
      if (entries.length > 4) items.push('...');
      return `{ ${items.join(', ')} }`;
    }
    return typeof value;
  }

  /** Last line of defence: no known secret string survives in the text, whatever produced it. */
  scrub(text: string): string {
    let out = text;
    for (const s of this.secrets) out = out.split(s).join(REDACTED);
    return out;
  }
}

function truncate(s: string, max: number): string {
  return s.length > max ? `${s.slice(0, max - 3)}...` : s;
}

/** Where a path is in the source text; the nearest existing ancestor when the key is absent. */
class Locator {
  constructor(
    private readonly doc: Document | undefined,
    private readonly lines: LineCounter,
  ) {}

  locate(path: ConfigPath): { line: number; column: number } | undefined {
    let node: unknown = this.doc?.contents;
    let offset: number | undefined = rangeStart(node);
    for (const seg of path) {
      if (isMap(node)) {
        const pair = node.items.find((p) => isScalar(p.key) && String(p.key.value) === String(seg));
        if (!pair) break;
        offset = rangeStart(pair.key) ?? offset;
        node = pair.value;
      } else if (isSeq(node) && typeof seg === 'number' && seg < node.items.length) {
        node = node.items[seg];
        offset = rangeStart(node) ?? offset;
      } else break;
    }
    if (offset === undefined) return undefined;
    const pos = this.lines.linePos(offset);
    return { line: pos.line, column: pos.col };
  }
}

function rangeStart(node: unknown): number | undefined {
  const range = (node as Node | null | undefined)?.range;
  return Array.isArray(range) ? range[0] : undefined;
}

/** Turns zod issues into problems, splitting unknown-key issues into one per key. */
function zodProblems(error: z.ZodError): Problem[] {
  const problems: Problem[] = [];
  for (const iss of error.issues) {
    const path = iss.path.filter((s): s is string | number => typeof s !== 'symbol');
    const input = (iss as { input?: unknown }).input;
    if (iss.code === 'unrecognized_keys') {
      const messages = iss.message.split('\n');
      iss.keys.forEach((key, i) => {
        // Never echo the value of an unknown key: a misspelt 'pasword' is still a password.
        problems.push({ path: [...path, key], message: messages[i] ?? 'unknown key' });
      });
      continue;
    }
    if (iss.code === 'invalid_union' && 'discriminator' in iss) {
      const value = record(input)?.[String(iss.discriminator)];
      problems.push(
        value === undefined
          ? { path, message: `required key is missing (${iss.message})` }
          : { path, message: iss.message, value, showValue: true },
      );
      continue;
    }
    if (input === undefined && (iss.code === 'invalid_type' || iss.code === 'invalid_value')) {
      problems.push({ path, message: `required key is missing (${iss.message})` });
      continue;
    }
    // Transform-level custom issues on a whole object (e.g. a camera) carry the object; the
    // message says what is wrong, so the value would only be noise.
    const showValue = !(iss.code === 'custom' && record(input) !== undefined);
    problems.push({ path, message: iss.message, value: input, showValue });
  }
  return problems;
}

/** Messages for the built-in zod issue kinds, written as "what was expected". */
const errorMap: z.core.$ZodErrorMap = (iss) => {
  switch (iss.code) {
    case 'invalid_type':
      if (iss.expected === 'int') return 'expected a whole number';
      return `expected ${article(iss.expected)}`;
    case 'invalid_value':
      return iss.values.length === 1
        ? `expected ${JSON.stringify(iss.values[0])}`
        : `expected one of: ${iss.values.map((v) => String(v)).join(', ')}`;
    case 'too_small': {
      const op = iss.inclusive ? '>=' : '>';
      if (iss.origin === 'string') return Number(iss.minimum) <= 1 ? 'expected a non-empty string' : `expected at least ${iss.minimum} characters`;
      if (iss.origin === 'array') return `expected at least ${iss.minimum} item${Number(iss.minimum) === 1 ? '' : 's'}`;
      return `expected a number ${op} ${iss.minimum}`;
    }
    case 'too_big': {
      const op = iss.inclusive ? '<=' : '<';
      if (iss.origin === 'string') return `expected at most ${iss.maximum} characters`;
      if (iss.origin === 'array') return `expected at most ${iss.maximum} items`;
      return `expected a number ${op} ${iss.maximum}`;
    }
    default:
      return undefined;
  }
};

function article(type: string): string {
  return /^[aeiou]/.test(type) ? `an ${type}` : `a ${type}`;
}

// ---------------------------------------------------------------------------------------------
// Parsing entry points
// ---------------------------------------------------------------------------------------------

export type ConfigFormat = 'yaml' | 'json';

/**
 * yaml's guard against alias bombs: alias expansions times the aliases inside each expanded
 * node. Long slot lists written with `<<: *slot` (one per slot) stay far below it; an alias bomb
 * (10 × 10 × 10 … nested expansions) is refused long before it costs memory.
 */
const MAX_ALIAS_COUNT = 10_000;
/**
 * yaml's count does not weigh the size of the aliased node: 9 999 aliases of one list of 1 000
 * items pass it and expand to 10 million values. Configs are far smaller (a value per key and per
 * list item: 50 cameras of 200 slots are about 100 000).
 */
const MAX_EXPANDED_NODES = 500_000;

/** Whether `value` has more than `max` values (objects, arrays, scalars), counting shared ones each time. */
function exceedsNodeCount(value: unknown, max: number): boolean {
  const pending: unknown[] = [value];
  let count = 0;
  while (pending.length) {
    const v = pending.pop();
    if (++count > max) return true;
    // One push per item: spreading a huge list into push() would overflow the call stack.
    if (v !== null && typeof v === 'object') for (const item of Array.isArray(v) ? v : Object.values(v)) pending.push(item);
  }
  return false;
}

export interface ParseConfigOptions {
  /** Defaults to 'json' when `origin` ends in .json, else 'yaml'. */
  format?: ConfigFormat;
  /** Where the text came from (file path), for messages and relative paths. Default '<config>'. */
  origin?: string;
  /** Environment for `${VAR}` substitution. Default `process.env`. */
  env?: NodeJS.ProcessEnv;
  /** Directory relative paths are resolved against. Default: `origin`'s directory, else the cwd. */
  baseDir?: string;
}

/** Parse config text into a typed, defaulted `AgentConfig`, or throw a `ConfigError`. */
export function parseConfig(text: string, options: ParseConfigOptions = {}): AgentConfig {
  const origin = options.origin ?? '<config>';
  const format = options.format ?? (extname(origin).toLowerCase() === '.json' ? 'json' : 'yaml');
  // A UTF-8 byte order mark (some Windows editors write one) is not part of the document; positions
  // are counted without it, as editors show them.
  const source = text.startsWith('\uFEFF') ? text.slice(1) : text;
  const lines = new LineCounter();
  // YAML also gives positions for JSON documents (JSON is YAML 1.2 flow syntax).
  // merge: YAML 1.1 merge keys (`<<: *defaults`) are handy for long slot lists.
  const doc = parseDocument(source, { lineCounter: lines, prettyErrors: false, uniqueKeys: true, merge: true });
  let raw: unknown;
  if (format === 'json') {
    raw = parseJson(source, origin, lines);
  } else {
    if (doc.errors.length) {
      const issues = doc.errors.map((err) => {
        const pos = lines.linePos(err.pos[0]);
        return { path: '', message: err.message, line: pos.line, column: pos.col };
      });
      throw new ConfigError(origin, issues, 'YAML syntax error in');
    }
    try {
      raw = doc.toJS({ maxAliasCount: MAX_ALIAS_COUNT });
    } catch (e) {
      const message =
        e instanceof ReferenceError && /excessive alias count/i.test(e.message)
          ? `expected at most ${MAX_ALIAS_COUNT} alias (*anchor) expansions, counting aliases inside aliased nodes; this document has more (an alias bomb?)`
          : `cannot build the document: ${truncate(String((e as Error)?.message ?? e), 200)}`;
      throw new ConfigError(origin, [{ path: '', message }], 'YAML error in');
    }
    // toJS shares one object per anchor; substitution and validation copy every expansion.
    if (exceedsNodeCount(raw, MAX_EXPANDED_NODES)) {
      const message = `expected at most ${MAX_EXPANDED_NODES} values, counting every expansion of an alias (*anchor); this document has more`;
      throw new ConfigError(origin, [{ path: '', message }], 'YAML error in');
    }
  }
  if (raw === null || raw === undefined) raw = {};
  const baseDir = options.baseDir ?? (options.origin ? dirname(resolve(options.origin)) : process.cwd());
  return parseDocumentValue(raw, {
    origin,
    env: options.env ?? process.env,
    baseDir,
    locator: new Locator(doc.errors.length ? undefined : doc, lines),
  });
}

/** Validate an already-parsed value (e.g. a config built in code by the demo). */
export function configFromObject(
  value: unknown,
  options: { origin?: string; env?: NodeJS.ProcessEnv; baseDir?: string } = {},
): AgentConfig {
  return parseDocumentValue(value, {
    origin: options.origin ?? '<object>',
    env: options.env ?? process.env,
    baseDir: options.baseDir ?? process.cwd(),
    locator: new Locator(undefined, new LineCounter()),
  });
}

/** Read and parse a config file (format from the extension: .json, else YAML). */
export async function loadConfig(
  path: string,
  options: { env?: NodeJS.ProcessEnv; format?: ConfigFormat } = {},
): Promise<AgentConfig> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    throw new ConfigError(path, [{ path: '', message: `cannot read the config file: ${fsReason(e)}` }], 'cannot load');
  }
  return parseConfig(text, { origin: path, env: options.env, format: options.format });
}

/**
 * A valid config with every default and no cameras (the demo adds its own). `run` refuses it;
 * see `configWarnings`.
 */
export function defaultConfig(agentId = 'shelfwatch-demo', baseDir = process.cwd()): AgentConfig {
  return configFromObject({ agent: { id: agentId } }, { origin: '<defaults>', baseDir, env: {} });
}

function parseDocumentValue(
  raw: unknown,
  ctx: { origin: string; env: NodeJS.ProcessEnv; baseDir: string; locator: Locator },
): AgentConfig {
  const sub = substituteEnv(raw, ctx.env);
  const redactor = new Redactor(sub.substitutedPaths, [...sub.substitutedValues, ...secretStrings(sub.value)]);
  const problems: Problem[] = sub.problems.map((p) => ({ path: p.path, message: p.message }));
  const paths = new Set(problems.map((p) => JSON.stringify(p.path)));

  // A value with a bad ${...} reference is reported once, for the reference, not again for its
  // (meaningless) substituted content.
  const result = configSchema(ctx.baseDir).safeParse(sub.value, { error: errorMap, reportInput: true });
  if (!result.success) problems.push(...zodProblems(result.error).filter((p) => !paths.has(JSON.stringify(p.path))));
  problems.push(...crossFieldProblems(sub.value));

  if (result.success && problems.length === 0) {
    ENV_SECRETS.set(result.data, [...new Set(sub.fromEnvironment.filter((v) => !isPublicEnvPath(v.path)).map((v) => v.value))]);
    return result.data;
  }
  throw new ConfigError(ctx.origin, toIssues(dedupe(problems), redactor, ctx.locator));
}

/** Per parsed config: the values it took from the environment that are to be treated as secrets. */
const ENV_SECRETS = new WeakMap<object, readonly string[]>();

/**
 * Keys whose values are shown in logs even when they came from `${VAR}`: ids, names, numbers,
 * paths and schedules, which the logs must be able to name (an agent id from `${HOSTNAME}` must
 * not turn every log line's `agent` into "<redacted>"). `[]` stands for any list index.
 */
const PUBLIC_ENV_KEYS: readonly RegExp[] = [
  /^agent\.(id|stateDir|timezone)$/,
  /^(logging|metrics|inference|debounce|thumbnails|outbox)\./,
  /^mqtt\.(embeddedPort|baseTopic|clientId|keepaliveSeconds|statsIntervalSeconds|homeAssistant\..+|commands\..+)$/,
  /^models\.[^.]+\.(path|threshold)$/,
  /^cameras\.\[\]\.(id|schedule|shrinkOnLoad|continuous\..+|slots\..+)$/,
  /^cameras\.\[\]\.source\.(type|fps|transport|loop|timeoutMs|maxBytes|intervalMs|pattern|deleteAfter|path|dir|files\.\[\])$/,
];

function isPublicEnvPath(path: ConfigPath): boolean {
  const key = path.map((p) => (typeof p === 'number' ? '[]' : p)).join('.');
  return PUBLIC_ENV_KEYS.some((re) => re.test(key));
}

/**
 * The values `config` took from the environment (`${VAR}`) that must never reach a log line:
 * every one, except under the keys that only name things (ids, paths, numbers, schedules — see
 * PUBLIC_ENV_KEYS). The agent's default logger registers them as secrets (agent.ts), so a camera
 * password substituted into a URL's query (`…&pwd=${CAMERA_PASSWORD}`) is scrubbed wherever it
 * appears. Empty for a config not made by parseConfig/loadConfig/configFromObject.
 */
export function environmentSecrets(config: AgentConfig): readonly string[] {
  return ENV_SECRETS.get(config) ?? [];
}

function dedupe(problems: Problem[]): Problem[] {
  const seen = new Set<string>();
  return problems.filter((p) => {
    const k = `${JSON.stringify(p.path)}\u0000${p.message}`;
    if (seen.has(k)) return false;
    seen.add(k);
    return true;
  });
}

function toIssues(problems: Problem[], redactor: Redactor, locator: Locator): ConfigIssue[] {
  const issues = problems.map((p): ConfigIssue => {
    const issue: ConfigIssue = { path: formatPath(p.path), message: redactor.scrub(p.message) };
    if (p.showValue !== false && 'value' in p) issue.value = redactor.scrub(redactor.render(p.value, p.path));
    const pos = locator.locate(p.path);
    if (pos) {
      issue.line = pos.line;
      issue.column = pos.column;
    }
    return issue;
  });
  // Document order; issues without a position keep their relative order at the end.
  return issues
    .map((issue, i) => ({ issue, i }))
    .sort(
      (a, b) =>
        (a.issue.line ?? Infinity) - (b.issue.line ?? Infinity) ||
        (a.issue.column ?? 0) - (b.issue.column ?? 0) ||
        a.i - b.i,
    )
    .map(({ issue }) => issue);
}

/** String values under secret-looking keys anywhere in the document. */
function secretStrings(value: unknown, underSecret = false): string[] {
  if (typeof value === 'string') return underSecret ? [value] : [];
  if (Array.isArray(value)) return value.flatMap((v) => secretStrings(v, underSecret));
  const r = record(value);
  if (!r) return [];
  return Object.entries(r).flatMap(([k, v]) => secretStrings(v, underSecret || isSecretKey(k) || k === 'headers'));
}

/**
 * JSON text → value. JSON.parse decides what is valid; on a syntax error the message and position
 * come from scanJson, never from V8's message, which quotes a slice of the text (it may hold a
 * secret, and its "…" truncation defeats any attempt to strip the quote). Duplicate keys, which
 * JSON.parse silently resolves to the last one, are errors as they are in YAML.
 */
function parseJson(text: string, origin: string, lines: LineCounter): unknown {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    const scan = scanJson(text);
    let issue: ConfigIssue;
    if (scan.error) {
      const pos = lines.linePos(Math.min(scan.error.offset, text.length));
      issue = { path: '', message: scan.error.message, line: pos.line, column: pos.col };
    } else {
      // The scanner found nothing: report JSON.parse's verdict without its text.
      const at = /at position (\d+)/.exec(String((e as Error)?.message));
      const pos = at ? lines.linePos(Math.min(Number(at[1]), text.length)) : undefined;
      issue = { path: '', message: 'not valid JSON', ...(pos ? { line: pos.line, column: pos.col } : {}) };
    }
    throw new ConfigError(origin, [issue], 'JSON syntax error in');
  }
  const duplicates = scanJson(text).duplicates;
  if (duplicates.length) {
    const issues = duplicates.map((d): ConfigIssue => {
      const pos = lines.linePos(d.offset);
      return {
        path: formatPath(d.path),
        message: 'duplicate key: expected each key once in an object (JSON would silently keep only the last one)',
        line: pos.line,
        column: pos.col,
      };
    });
    throw new ConfigError(origin, issues, 'JSON syntax error in');
  }
  return value;
}

function looksLikeUrl(v: string): boolean {
  return /^[a-z][a-z0-9+.-]*:\/\//i.test(v);
}

// ---------------------------------------------------------------------------------------------
// Suggestions
// ---------------------------------------------------------------------------------------------

/** The candidate closest to `word` (case/underscore-insensitive, then edit distance), if close. */
export function closest(word: string, candidates: readonly string[]): string | undefined {
  const norm = (s: string) => s.toLowerCase().replace(/[-_\s]/g, '');
  const n = norm(word);
  const exact = candidates.find((c) => norm(c) === n);
  if (exact) return exact;
  let best: string | undefined;
  let bestDistance = Math.max(1, Math.floor(n.length / 3)) + 1;
  for (const c of candidates) {
    const d = editDistance(n, norm(c));
    if (d < bestDistance) {
      best = c;
      bestDistance = d;
    }
  }
  return best;
}

function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      cur[j] = Math.min(prev[j]! + 1, cur[j - 1]! + 1, prev[j - 1]! + cost);
    }
    prev = cur;
  }
  return prev[b.length]!;
}

// ---------------------------------------------------------------------------------------------
// Files on disk
// ---------------------------------------------------------------------------------------------

/** Where the installed config lives (deploy/install.sh, the Docker images). */
export const INSTALLED_CONFIG_DIR = '/etc/shelfwatch';
/**
 * The only places the agent may write when run from the installed config: the systemd unit
 * (ProtectSystem=strict; StateDirectory=, CacheDirectory=) and the Docker images (read_only root,
 * volumes) make everything else read-only.
 */
export const INSTALLED_WRITABLE_DIRS: readonly string[] = ['/var/lib/shelfwatch', '/var/cache/shelfwatch'];

/** Per checked config: warnings about the files and folders it names (see checkConfigFiles). */
const FILE_WARNINGS = new WeakMap<object, string[]>();

function isInside(dir: string, parent: string): boolean {
  const d = resolve(dir);
  return d === parent || d.startsWith(parent.endsWith(sep) ? parent : parent + sep);
}

/**
 * Checks that every file and folder the config names is usable: model files and TLS files are
 * readable regular files, folder sources and replay dirs are readable directories, replay files
 * and local stream inputs exist, and stateDir/outbox/thumbnails directories exist or can be
 * created. Throws one `ConfigError` listing every problem. `origin` names the file in messages.
 *
 * Warnings (configWarnings and `config check` show them; `run` logs them): a model's folder that
 * is not writable — replacing a model while running (a new file, command/model, command/rollback)
 * writes a temp file and `<model>.previous` next to it — and, for the installed config
 * (/etc/shelfwatch/…), a state, outbox, thumbnail or model folder outside /var/lib/shelfwatch and
 * /var/cache/shelfwatch, which the systemd unit and the Docker images keep read-only (checked by
 * path: `config check` run as root could write there, the service cannot).
 */
export async function checkConfigFiles(config: AgentConfig, origin = '<config>'): Promise<void> {
  const checks: Array<Promise<Problem | undefined>> = [];
  const need = (path: ConfigPath, file: string, kind: 'file' | 'dir' | 'any') => {
    checks.push(fileProblem(file, kind).then((message) => (message ? { path, message, value: file, showValue: true } : undefined)));
  };
  const writable = (path: ConfigPath, dir: string, hint = '') => {
    checks.push(writableDirProblem(dir).then((message) => (message ? { path, message: message + hint, value: dir, showValue: true } : undefined)));
  };
  const installed = origin !== '<config>' && isInside(dirname(resolve(origin)), INSTALLED_CONFIG_DIR);

  for (const [name, model] of Object.entries(config.models)) need(['models', name, 'path'], model.path, 'file');
  const tls = config.mqtt.tls;
  if (tls) {
    for (const k of ['ca', 'cert', 'key'] as const) {
      const file = tls[k];
      if (file) need(['mqtt', 'tls', k], file, 'file');
    }
  }
  config.cameras.forEach((cam, ci) => {
    const src = cam.source;
    const at: ConfigPath = ['cameras', ci, 'source'];
    if (src.type === 'folder') need([...at, 'path'], src.path, 'dir');
    else if (src.type === 'replay') {
      if (src.dir) need([...at, 'dir'], src.dir, 'dir');
      src.files?.forEach((f, fi) => need([...at, 'files', fi], f, 'file'));
    } else if (src.type === 'stream' && !looksLikeUrl(src.input)) need([...at, 'input'], src.input, 'any');
  });
  writable(
    ['agent', 'stateDir'],
    config.agent.stateDir,
    ` (the agent keeps its outbox, debounce states and downloaded models there; installed: agent.stateDir: ${INSTALLED_WRITABLE_DIRS[0]}. The default ./.shelfwatch lies next to the config file)`,
  );
  writable(['outbox', 'dir'], config.outbox.dir);
  if (config.thumbnails.dir) writable(['thumbnails', 'dir'], config.thumbnails.dir);

  const warnings: Array<Promise<string | undefined>> = [];
  // Model folders: one warning per folder, naming its models.
  const modelDirs = new Map<string, string[]>();
  for (const [name, model] of Object.entries(config.models)) {
    const dir = dirname(resolve(model.path));
    modelDirs.set(dir, [...(modelDirs.get(dir) ?? []), name]);
  }
  for (const [dir, names] of modelDirs) {
    const keys = names.map((n) => `models.${n}.path`).join(', ');
    warnings.push(
      fileProblem(dir, 'dir').then(async (missing) => {
        if (missing) return undefined; // the model file itself is reported as an error
        const problem = await writableDirProblem(dir);
        return problem
          ? `${keys}: the folder ${dir} is not writable by this user (${problem}): replacing a model while running (a new file, command/model, command/rollback) writes a temp file and <model>.previous there and would fail; keep models under ${INSTALLED_WRITABLE_DIRS[0]}/models or make the folder writable`
          : undefined;
      }),
    );
  }
  if (installed) {
    const readOnly = (what: string, dir: string) => {
      if (!INSTALLED_WRITABLE_DIRS.some((w) => isInside(dir, w))) {
        warnings.push(
          Promise.resolve(
            `${what}: ${resolve(dir)} is outside ${INSTALLED_WRITABLE_DIRS.join(' and ')}, which are the only places the systemd unit (ProtectSystem=strict) and the Docker images let the agent write: use a path under ${INSTALLED_WRITABLE_DIRS[0]}, or add ReadWritePaths= in a drop-in (systemctl edit shelfwatch) / a volume`,
          ),
        );
      }
    };
    readOnly('agent.stateDir', config.agent.stateDir);
    readOnly('outbox.dir', config.outbox.dir);
    if (config.thumbnails.dir) readOnly('thumbnails.dir', config.thumbnails.dir);
    for (const [dir, names] of modelDirs) readOnly(`${names.map((n) => `models.${n}.path`).join(', ')} (its folder: model rollout writes there)`, dir);
  }
  FILE_WARNINGS.set(config, (await Promise.all(warnings)).filter((w): w is string => w !== undefined));

  const problems = (await Promise.all(checks)).filter((p): p is Problem => p !== undefined);
  if (problems.length === 0) return;
  // File paths are shown (they are not secrets) — TLS key paths included, since "which file is
  // missing" is the whole point of the message.
  const issues = problems.map((p) => ({
    path: formatPath(p.path),
    message: p.message,
    value: JSON.stringify(p.value),
  }));
  throw new ConfigError(origin, issues, 'files named in');
}

async function fileProblem(file: string, kind: 'file' | 'dir' | 'any'): Promise<string | undefined> {
  let info;
  try {
    info = await stat(file);
  } catch (e) {
    return `${kind === 'dir' ? 'directory' : 'file'} not found or not accessible (${fsReason(e)})`;
  }
  if (kind === 'file' && !info.isFile()) return 'expected a regular file';
  if (kind === 'dir' && !info.isDirectory()) return 'expected a directory';
  const mode = kind === 'dir' ? fsConstants.R_OK | fsConstants.X_OK : fsConstants.R_OK;
  try {
    await access(file, mode);
  } catch (e) {
    return `not readable by this user (${fsReason(e)})`;
  }
  return undefined;
}

/** The directory exists and is writable, or its nearest existing ancestor is (mkdir -p works). */
async function writableDirProblem(dir: string): Promise<string | undefined> {
  let current = resolve(dir);
  for (;;) {
    try {
      const info = await stat(current);
      if (!info.isDirectory()) {
        return current === resolve(dir) ? 'expected a directory' : `cannot be created: ${current} is not a directory`;
      }
      try {
        await access(current, fsConstants.W_OK | fsConstants.X_OK);
      } catch {
        return current === resolve(dir) ? 'directory is not writable' : `cannot be created: ${current} is not writable`;
      }
      return undefined;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') return `not accessible (${fsReason(e)})`;
      const parent = dirname(current);
      if (parent === current) return 'no existing parent directory';
      current = parent;
    }
  }
}

function fsReason(e: unknown): string {
  const err = e as NodeJS.ErrnoException;
  switch (err.code) {
    case 'ENOENT':
      return 'ENOENT: does not exist';
    case 'EACCES':
    case 'EPERM':
      return `${err.code}: permission denied`;
    case 'ENOTDIR':
      return 'ENOTDIR: a parent is not a directory';
    case 'EISDIR':
      return 'EISDIR: is a directory';
    default:
      return err.code ? `${err.code}: ${err.message}` : String(err.message ?? e);
  }
}

// ---------------------------------------------------------------------------------------------
// Summary and warnings (for `shelfwatch config check`)
// ---------------------------------------------------------------------------------------------

/**
 * Things that are valid but probably not what was meant. A config with no cameras is valid (so
 * `config check` can explain) but `run` must refuse it: see `assertRunnable`.
 */
export function configWarnings(config: AgentConfig): string[] {
  const warnings: string[] = [];
  if (config.cameras.length === 0) {
    warnings.push('no cameras configured: `shelfwatch run` needs at least one entry under `cameras`');
  }
  const used = new Set(config.cameras.flatMap((c) => c.slots.map((s) => s.model)));
  for (const name of Object.keys(config.models)) {
    if (!used.has(name)) warnings.push(`model '${name}' is not used by any slot`);
  }
  if (!config.mqtt.embedded && config.mqtt.url.startsWith('mqtt://') && config.mqtt.password !== undefined) {
    warnings.push('mqtt.password is sent unencrypted over mqtt://; prefer mqtts://');
  }
  // Found by checkConfigFiles (folders the agent could not write to), when it ran on this config.
  warnings.push(...(FILE_WARNINGS.get(config) ?? []));
  return warnings;
}

/** Throws a ConfigError when the config cannot be run (no cameras). */
export function assertRunnable(config: AgentConfig, origin = '<config>'): void {
  if (config.cameras.length === 0) {
    throw new ConfigError(
      origin,
      [{ path: 'cameras', message: 'expected at least one camera to run; see deploy/shelfwatch.example.yaml' }],
      'cannot run',
    );
  }
}

/** The text `shelfwatch config check <file>` prints for a valid config. Secrets never appear. */
export function formatConfigSummary(config: AgentConfig, origin = '<config>'): string {
  const out: string[] = [`OK ${origin}`];
  const row = (label: string, text: string) => out.push(`${label.padEnd(11)}${text}`);
  const m = config.mqtt;

  const zone = config.agent.timezone ?? `${Intl.DateTimeFormat().resolvedOptions().timeZone}, the system's`;
  row('agent', `${config.agent.id} (state in ${config.agent.stateDir}; schedules in ${zone} time)`);
  if (m.embedded) {
    row('broker', `embedded on 127.0.0.1:${m.embeddedPort}`);
  } else {
    const auth = [m.username !== undefined ? 'username set' : 'no username', m.password !== undefined ? 'password set' : 'no password'];
    const tls = m.tls
      ? `tls: ${(['ca', 'cert', 'key'] as const).filter((k) => m.tls?.[k]).join('+') || 'system CAs'}${m.tls.rejectUnauthorized ? '' : ', certificate NOT verified'}`
      : 'no tls options';
    row('broker', `${redactUrl(m.url)} (${auth.join(', ')}, ${tls})`);
  }
  row('topics', `${m.baseTopic}/${config.agent.id}/... (client id ${m.clientId}${m.homeAssistant.enabled ? `, Home Assistant discovery under ${m.homeAssistant.discoveryPrefix}/` : ''})`);
  row('outbox', `${config.outbox.dir} (max ${config.outbox.maxRecords} records, ${formatBytes(config.outbox.maxBytes)})`);
  row(
    'inference',
    `provider ${config.inference.provider}${config.inference.workerThread ? ' in worker threads' : ' on the main thread'}, replicas ${config.inference.replicas}${config.inference.intraOpThreads ? `, ${config.inference.intraOpThreads} threads per session` : ''}, batches of ${config.inference.batchSize} within ${formatDurationMs(config.inference.batchWaitMs)}, ${config.inference.maxPendingFrames} pending frames max`,
  );
  row('debounce', `raise after ${config.debounce.raiseAfter} of ${config.debounce.window} scans, clear after ${config.debounce.clearAfter} normal`);
  row('metrics', config.metrics.enabled ? `http://${config.metrics.host}:${config.metrics.port}/metrics` : 'disabled');
  row('logging', config.logging.level);

  const models = Object.entries(config.models);
  row('models', models.length ? `${models.length}` : 'none');
  for (const [name, model] of models) {
    out.push(`  ${name}: ${model.path}${model.threshold !== undefined ? ` (threshold ${model.threshold})` : ''}`);
  }
  const slotCount = config.cameras.reduce((n, c) => n + c.slots.length, 0);
  row('cameras', config.cameras.length ? `${config.cameras.length} with ${slotCount} slot${slotCount === 1 ? '' : 's'}` : 'none');
  for (const cam of config.cameras) {
    const when = cam.schedule !== undefined ? `schedule '${cam.schedule}'` : cam.continuous ? `continuous, max ${cam.continuous.maxFps} fps` : 'every file as it comes';
    out.push(`  ${cam.id}: ${describeSource(cam.source)}; ${when}`);
    out.push(`    slots: ${cam.slots.map((s) => `${s.id}→${s.model}`).join(', ')}`);
  }
  const warnings = configWarnings(config);
  if (warnings.length) {
    out.push('warnings:');
    for (const w of warnings) out.push(`  - ${w}`);
  }
  return out.join('\n');
}

function describeSource(src: SourceConfig): string {
  switch (src.type) {
    case 'http-snapshot':
      return `http-snapshot ${redactUrl(src.url)}${Object.keys(src.headers).length ? ` (headers: ${Object.keys(src.headers).join(', ')})` : ''}`;
    case 'stream':
      return `stream ${redactUrl(src.input)} at ${src.fps} fps`;
    case 'folder':
      return `folder ${src.path}/${src.pattern}${src.deleteAfter ? ' (files deleted after scan)' : ''}`;
    case 'replay':
      return `replay ${src.dir ?? `${src.files?.length ?? 0} files`}${src.loop ? ' (looping)' : ''}`;
  }
}
