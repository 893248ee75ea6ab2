/**
 * The agent's logger: one JSON object per line (`{"time":…,"level":"info","msg":…,…fields}`),
 * a level filter, child loggers with bound fields, and secret hygiene:
 *  - fields under secret-looking keys (password, token, …key, authorization — redact.ts'
 *    isSecretKey) are replaced by "<redacted>", at any depth;
 *  - every URL — anywhere in the message, in a field's string value, in an Error's message,
 *    stack or cause — loses its password and secret query parameters (redact.ts' redactText);
 *  - every string registered as a secret (the MQTT password, HTTP header values, values the
 *    config took from the environment) is scrubbed from messages and field values, whatever
 *    produced them.
 * Errors become `{ name, message }` (plus `cause` when there is one, and `stack` at trace
 * level). Writing never throws.
 */
import type { LogLevel } from './config.js';
import { isSecretKey, redactText, redactUrl } from './redact.js';

export type { LogLevel } from './config.js';

const LEVELS: Record<LogLevel, number> = { trace: 10, debug: 20, info: 30, warn: 40, error: 50 };
const REDACTED = '<redacted>';
const MAX_DEPTH = 6;
const URL_START = /^[a-z][a-z0-9+.-]*:\/\//i;

export type LogFields = Record<string, unknown>;

export interface LogSink {
  write(line: string): unknown;
}

export interface LoggerOptions {
  level?: LogLevel;
  /** Where lines go (default process.stdout). */
  sink?: LogSink;
  /** Strings that must never appear in a log line (shorter than 4 characters are ignored). */
  secrets?: readonly string[];
  /** Fields added to every line. */
  fields?: LogFields;
  clock?: () => number;
}

export class Logger {
  private readonly threshold: number;
  private readonly sink: LogSink;
  private readonly secrets: string[];
  private readonly fields: LogFields;
  private readonly clock: () => number;

  constructor(private readonly options: LoggerOptions = {}) {
    const level = options.level ?? 'info';
    if (!(level in LEVELS)) throw new RangeError(`log level must be one of ${Object.keys(LEVELS).join(', ')}, got ${JSON.stringify(level)}`);
    this.threshold = LEVELS[level];
    this.sink = options.sink ?? process.stdout;
    // Longest first, so a secret that contains another is scrubbed whole.
    this.secrets = [...new Set((options.secrets ?? []).filter((s) => typeof s === 'string' && s.length >= 4))].sort((a, b) => b.length - a.length);
    this.fields = options.fields ?? {};
    this.clock = options.clock ?? Date.now;
  }

  get level(): LogLevel {
    return this.options.level ?? 'info';
  }

  /** A logger that adds `fields` to every line. */
  child(fields: LogFields): Logger {
    return new Logger({ ...this.options, fields: { ...this.fields, ...fields } });
  }

  enabled(level: LogLevel): boolean {
    return LEVELS[level] >= this.threshold;
  }

  trace(msg: string, fields?: LogFields): void {
    this.log('trace', msg, fields);
  }
  debug(msg: string, fields?: LogFields): void {
    this.log('debug', msg, fields);
  }
  info(msg: string, fields?: LogFields): void {
    this.log('info', msg, fields);
  }
  warn(msg: string, fields?: LogFields): void {
    this.log('warn', msg, fields);
  }
  error(msg: string, fields?: LogFields): void {
    this.log('error', msg, fields);
  }

  log(level: LogLevel, msg: string, fields: LogFields = {}): void {
    if (!this.enabled(level)) return;
    const record: LogFields = { time: new Date(this.clock()).toISOString(), level, msg: this.text(String(msg)) };
    const merged = { ...this.fields, ...fields };
    for (const [key, value] of Object.entries(merged)) {
      if (key === 'time' || key === 'level' || key === 'msg') continue;
      record[key] = this.clean(key, value, 0);
    }
    let line: string;
    try {
      line = JSON.stringify(record);
    } catch {
      line = JSON.stringify({ time: record.time, level, msg: record.msg, logError: 'fields could not be serialised' });
    }
    try {
      this.sink.write(`${line}\n`);
    } catch {
      // A closed stdout must not take the agent down.
    }
  }

  /** The `(level, msg, fields)` function the camera sources take. */
  readonly forSources = (level: LogLevel, msg: string, fields?: LogFields): void => this.log(level, msg, fields);

  private clean(key: string, value: unknown, depth: number): unknown {
    if (isSecretKey(key)) return value === undefined || value === null ? value : REDACTED;
    if (value === null || value === undefined || typeof value === 'number' || typeof value === 'boolean') return value;
    if (typeof value === 'string') return this.text(value);
    if (typeof value === 'bigint') return value.toString();
    if (value instanceof Error) {
      const out: LogFields = { name: value.name, message: this.text(String(value.message)) };
      if (this.enabled('trace') && value.stack) out.stack = this.text(value.stack);
      // The cause often holds the lower-level message (with the URL it was about).
      if (value.cause !== undefined && value.cause !== null) out.cause = depth >= MAX_DEPTH ? '<…>' : this.clean('cause', value.cause, depth + 1);
      return out;
    }
    if (Buffer.isBuffer(value) || ArrayBuffer.isView(value)) return `<${(value as ArrayBufferView).byteLength} bytes>`;
    if (depth >= MAX_DEPTH) return '<…>';
    if (Array.isArray(value)) return value.slice(0, 50).map((v) => this.clean('', v, depth + 1));
    if (typeof value === 'object') {
      const out: LogFields = {};
      for (const [k, v] of Object.entries(value as LogFields)) out[k] = this.clean(k, v, depth + 1);
      return out;
    }
    return String(value);
  }

  /**
   * A string as it may be written: URLs redacted, then the registered secrets scrubbed. A string
   * that starts with a URL is first redacted as one URL to its end (as it always was), so a
   * password with a space in a camera URL is masked whole; then every URL in it is.
   */
  private text(text: string): string {
    return this.scrub(redactText(URL_START.test(text) ? redactUrl(text) : text));
  }

  private scrub(text: string): string {
    let out = text;
    for (const s of this.secrets) if (out.includes(s)) out = out.split(s).join(REDACTED);
    return out;
  }
}

/** A logger that writes nothing. */
export const silentLogger = new Logger({ level: 'error', sink: { write: () => undefined } });
