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
 * - JSON is held to YAML's rules: a duplicate key is an error, not "the last one wins"; a leading
 *   UTF-8 BOM is ignored (in YAML too). JSON syntax errors are described by our own scanner, with
 *   line and column, never with V8's message (it quotes the text, secrets included).
 *
 * This module holds parsing and loading, environment secrets, warnings and the summary; the rest
 * lives in config-schema.ts (schema, field rules, types), config-checks.ts (cross-field checks),
 * config-errors.ts (ConfigError, redaction, suggestions), config-files.ts (files on disk),
 * config-env.ts (`${ENV}` substitution) and config-json.ts (JSON scanner). Everything they export
 * for other code is re-exported here.
 */
import { readFile } from 'node:fs/promises';
import { dirname, extname, resolve } from 'node:path';
import { LineCounter, parseDocument } from 'yaml';
import { isSecretKey, redactUrl } from './redact.js';
import { substituteEnv, type ConfigPath } from './config-env.js';
import { scanJson } from './config-json.js';
import { crossFieldProblems } from './config-checks.js';
import {
  ConfigError,
  errorMap,
  formatPath,
  Locator,
  record,
  Redactor,
  truncate,
  zodProblems,
  type ConfigIssue,
  type Problem,
} from './config-errors.js';
import { FILE_WARNINGS, fsReason } from './config-files.js';
import { configSchema, type AgentConfig, type SourceConfig } from './config-schema.js';
import { formatBytes, formatDurationMs } from './duration.js';

export type { ConfigPath } from './config-env.js';
export { closest, ConfigError, formatPath, type ConfigIssue } from './config-errors.js';
export { checkConfigFiles, INSTALLED_CONFIG_DIR, INSTALLED_WRITABLE_DIRS } from './config-files.js';
export { configSchema, INFERENCE_PROVIDERS, LOG_LEVELS, timeZoneProblem } from './config-schema.js';
export type {
  AgentConfig,
  AgentSection,
  CameraConfig,
  DebounceConfig,
  FolderSourceConfig,
  HomeAssistantConfig,
  HttpSnapshotSourceConfig,
  InferenceConfig,
  InferenceProvider,
  LoggingConfig,
  LogLevel,
  MetricsConfig,
  ModelConfig,
  MqttConfig,
  MqttTlsConfig,
  OutboxConfig,
  ReplaySourceConfig,
  SlotConfig,
  SourceConfig,
  SourceType,
  StreamSourceConfig,
  ThumbnailsConfig,
} from './config-schema.js';

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
  /^mqtt\.(embeddedPort|baseTopic|clientId|keepaliveSeconds|protocolVersion|statsIntervalSeconds|homeAssistant\..+|commands\..+)$/,
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
