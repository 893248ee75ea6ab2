/**
 * `${VAR}` substitution in config values.
 *
 * Runs on the already-parsed document (string scalars only, never keys), so a variable's value is
 * always a plain string and cannot inject YAML/JSON structure. Syntax:
 *   `${VAR}`            the variable's value; unset → error naming the variable and the key
 *   `${VAR:-fallback}`  the fallback when VAR is unset or empty (shell semantics)
 *   `$${`               a literal `${`
 * A `$` not followed by `{` is kept as is. Any other `${...}` (bad name, no closing brace) is an
 * error, so a typo never silently reaches the agent.
 *
 * References do not nest: a reference ends at the first `}`, and a `${` inside one — as in
 * `${A:-${B}}` — is an error naming the key (it would otherwise yield `x}` when A is set and the
 * literal text `${B}` when it is not). The fallback is plain text and cannot contain `${` (not
 * even as `$${`); to fall back to another variable, give A its default where the environment is
 * set.
 *
 * Values that came from the environment are secrets until proven otherwise: the paths that
 * received them and the substituted values are reported so error messages can redact them, and
 * `fromEnvironment` pairs each value with its path so the agent can register the values as logger
 * secrets (config.ts' environmentSecrets; agent.ts).
 */

export type ConfigPathSegment = string | number;
export type ConfigPath = ConfigPathSegment[];

export interface EnvProblem {
  path: ConfigPath;
  message: string;
}

export interface EnvSubstitution {
  /** A deep copy of the input with every string scalar substituted. */
  value: unknown;
  problems: EnvProblem[];
  /** Paths of string values that contained at least one `${...}` reference. */
  substitutedPaths: ConfigPath[];
  /** The values the environment provided (for redaction of error messages). */
  substitutedValues: string[];
  /** Each value the environment provided, with the path of the string it went into. */
  fromEnvironment: EnvValue[];
}

export interface EnvValue {
  path: ConfigPath;
  value: string;
}

const NAME_RE = /^[A-Za-z_][A-Za-z0-9_]*$/;

interface StringExpansion {
  value: string;
  /** Whether any `${...}` reference was expanded. */
  substituted: boolean;
  fromEnv: string[];
  errors: string[];
}

/** Expand the references in one string. */
export function expandEnvString(text: string, env: NodeJS.ProcessEnv): StringExpansion {
  let out = '';
  let substituted = false;
  const fromEnv: string[] = [];
  const errors: string[] = [];
  let i = 0;
  while (i < text.length) {
    const dollar = text.indexOf('$', i);
    if (dollar < 0) {
      out += text.slice(i);
      break;
    }
    out += text.slice(i, dollar);
    if (text.startsWith('$${', dollar)) {
      out += '${';
      i = dollar + 3;
      continue;
    }
    if (text[dollar + 1] !== '{') {
      out += '$';
      i = dollar + 1;
      continue;
    }
    const close = text.indexOf('}', dollar + 2);
    if (close < 0) {
      errors.push("unterminated '${' (write '$${' for a literal '${')");
      out += text.slice(dollar);
      break;
    }
    const body = text.slice(dollar + 2, close);
    const nested = body.indexOf('${');
    if (nested >= 0) {
      // Skip to the '}' that would close the nested reference too, so that its '}' is not left
      // over in the (already invalid) value.
      const end = text.indexOf('}', close + 1);
      i = end < 0 ? text.length : end + 1;
      substituted = true;
      errors.push(
        `nested reference in '\${${body.slice(0, nested)}...': a '\${' inside '\${...}' is not supported ` +
          "(the fallback after ':-' is plain text and cannot contain '${')",
      );
      continue;
    }
    const sep = body.indexOf(':-');
    const name = sep >= 0 ? body.slice(0, sep) : body;
    const fallback = sep >= 0 ? body.slice(sep + 2) : undefined;
    i = close + 1;
    substituted = true;
    if (!NAME_RE.test(name)) {
      errors.push(
        `invalid variable reference '\${${name}}': names are letters, digits and '_' ` +
          "(write '$${' for a literal '${')",
      );
      continue;
    }
    const v = env[name];
    if (v !== undefined && (fallback === undefined || v !== '')) {
      out += v;
      fromEnv.push(v);
    } else if (fallback !== undefined) {
      out += fallback;
    } else {
      errors.push(`environment variable ${name} is not set`);
    }
  }
  return { value: out, substituted, fromEnv, errors };
}

/** Substitute every string scalar of a parsed document (objects, arrays, scalars). */
export function substituteEnv(document: unknown, env: NodeJS.ProcessEnv): EnvSubstitution {
  const problems: EnvProblem[] = [];
  const substitutedPaths: ConfigPath[] = [];
  const substitutedValues: string[] = [];
  const fromEnvironment: EnvValue[] = [];

  const walk = (node: unknown, path: ConfigPath): unknown => {
    if (typeof node === 'string') {
      if (!node.includes('$')) return node;
      const r = expandEnvString(node, env);
      for (const message of r.errors) problems.push({ path, message });
      if (r.substituted) substitutedPaths.push(path);
      substitutedValues.push(...r.fromEnv);
      for (const value of r.fromEnv) fromEnvironment.push({ path, value });
      return r.value;
    }
    if (Array.isArray(node)) return node.map((item, index) => walk(item, [...path, index]));
    if (node !== null && typeof node === 'object') {
      const copy: Record<string, unknown> = {};
      for (const [key, item] of Object.entries(node)) {
        // defineProperty, not assignment: a '__proto__' key must stay an own key (and be
        // reported as unknown), never replace the prototype.
        Object.defineProperty(copy, key, {
          value: walk(item, [...path, key]),
          enumerable: true,
          writable: true,
          configurable: true,
        });
      }
      return copy;
    }
    return node;
  };

  const value = walk(document, []);
  return { value, problems, substitutedPaths, substitutedValues, fromEnvironment };
}
