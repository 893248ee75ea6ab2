/**
 * How config problems are reported: the `Problem` every check produces, `ConfigIssue` and
 * `ConfigError` (every problem at once), key-path formatting, redaction of values, positions in
 * the source text, zod issues turned into problems (with the zod error map), and the "did you
 * mean" suggestions (`closest`).
 */
import { isMap, isScalar, isSeq, type Document, type LineCounter, type Node } from 'yaml';
import { z } from 'zod';
import { isSecretKey, redactUrl } from './redact.js';
import type { ConfigPath } from './config-env.js';

// ---------------------------------------------------------------------------------------------
// Problems (what the schema, the cross-field checks and the file checks find)
// ---------------------------------------------------------------------------------------------

export interface Problem {
  path: ConfigPath;
  message: string;
  /** The offending value; omitted when it would not help (or must not be shown). */
  value?: unknown;
  showValue?: boolean;
}

export const record = (v: unknown): Record<string, unknown> | undefined =>
  v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;

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
export class Redactor {
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

export function truncate(s: string, max: number): string {
  return s.length > max ? `${s.slice(0, max - 3)}...` : s;
}

/** Where a path is in the source text; the nearest existing ancestor when the key is absent. */
export class Locator {
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
export function zodProblems(error: z.ZodError): Problem[] {
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
export const errorMap: z.core.$ZodErrorMap = (iss) => {
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
