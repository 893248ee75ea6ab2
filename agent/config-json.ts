/**
 * A strict RFC 8259 scanner for config files: where JSON.parse only says "invalid" (quoting a slice
 * of the text, which may hold a secret), this finds the first syntax error with its offset and a
 * message that never quotes the text, and every duplicate key (which JSON.parse silently resolves
 * to the last one). It builds no values; agent/config.ts turns offsets into lines and columns.
 */
import type { ConfigPath } from './config-env.js';

export interface JsonScan {
  /** The first syntax error; the message never quotes the text except one structural character. */
  error?: { offset: number; message: string };
  /** Every repeat of a key within one object: its path and where the repeat starts. */
  duplicates: Array<{ path: ConfigPath; offset: number }>;
}

const JSON_STRUCTURAL = '{}[],:"';
const JSON_NUMBER = /-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?/y;

/**
 * A strict RFC 8259 scanner (iterative: nesting depth cannot overflow the stack) that finds the
 * first syntax error and every duplicate key, with offsets. It builds no values.
 */
export function scanJson(text: string): JsonScan {
  interface Container {
    object: boolean;
    path: ConfigPath;
    keys: Set<string>;
    key: string;
    index: number;
  }
  const duplicates: JsonScan['duplicates'] = [];
  const stack: Container[] = [];
  let i = 0;
  const fail = (message: string, offset = i): JsonScan => ({ error: { offset, message }, duplicates });
  const end = (): JsonScan =>
    fail(stack.length ? "unexpected end of the text: an unclosed '{' or '['?" : 'expected a JSON value, found the end of the text');
  const skipSpace = () => {
    while (i < text.length && (text[i] === ' ' || text[i] === '\t' || text[i] === '\n' || text[i] === '\r')) i++;
  };
  const childPath = (): ConfigPath => {
    const top = stack.at(-1);
    return top ? [...top.path, top.object ? top.key : top.index] : [];
  };
  /** A string token at i; its decoded text, or the error. */
  const string = (): string | JsonScan => {
    const start = i;
    i++;
    for (;;) {
      if (i >= text.length) return fail("unterminated string: a missing closing '\"'?", start);
      const c = text.charCodeAt(i);
      if (c === 0x22) {
        i++;
        return JSON.parse(text.slice(start, i)) as string;
      }
      if (c === 0x5c) {
        const e = text[i + 1];
        if (e !== undefined && '"\\/bfnrt'.includes(e)) i += 2;
        else if (e === 'u' && /^[0-9a-fA-F]{4}$/.test(text.slice(i + 2, i + 6))) i += 6;
        else return fail('invalid escape in a string: expected \\" \\\\ \\/ \\b \\f \\n \\r \\t or \\uXXXX');
      } else if (c < 0x20) {
        return fail("line break or control character inside a string: expected \\n or \\t, or a missing closing '\"'?");
      } else i++;
    }
  };
  /** Why the character at i cannot start a value (or a property name). */
  const unexpected = (what: string, afterComma: boolean): JsonScan => {
    const c = text[i]!;
    if (JSON_STRUCTURAL.includes(c)) {
      const trailing = afterComma && (c === '}' || c === ']') ? ' (JSON allows no trailing comma)' : '';
      return fail(`expected ${what}, not '${c}'${trailing}`);
    }
    if (c === "'") return fail(`expected ${what}: JSON strings and names need double quotes, not single quotes`);
    if (c === '/') return fail(`expected ${what}: JSON allows no comments (YAML does)`);
    return fail(`expected ${what}: strings and names need double quotes; true, false and null are lowercase`);
  };

  type State = 'value' | 'value-or-close' | 'after-value' | 'name' | 'name-or-close';
  let state: State = 'value';
  for (;;) {
    skipSpace();
    const top = stack.at(-1);
    if (state === 'after-value') {
      if (!top) return i < text.length ? fail('unexpected text after the end of the JSON document') : { duplicates };
      if (i >= text.length) return end();
      const c = text[i]!;
      if (c === ',') {
        i++;
        if (top.object) state = 'name';
        else {
          top.index++;
          state = 'value';
        }
      } else if (c === (top.object ? '}' : ']')) {
        stack.pop();
        i++;
      } else {
        const expected = top.object ? "',' or '}' after a property value" : "',' or ']' after an array element";
        return fail(`expected ${expected}${JSON_STRUCTURAL.includes(c) ? `, not '${c}'` : ' (a missing comma?)'}`);
      }
      continue;
    }
    if (i >= text.length) return end();
    const c = text[i]!;
    if (state === 'name' || state === 'name-or-close') {
      if (c === '}' && state === 'name-or-close') {
        stack.pop();
        i++;
        state = 'after-value';
        continue;
      }
      if (c !== '"') return unexpected('a property name in double quotes', state === 'name');
      const start = i;
      const name = string();
      if (typeof name !== 'string') return name;
      top!.key = name;
      if (top!.keys.has(name)) duplicates.push({ path: [...top!.path, name], offset: start });
      else top!.keys.add(name);
      skipSpace();
      if (text[i] !== ':') return i >= text.length ? end() : fail("expected ':' after a property name");
      i++;
      state = 'value';
      continue;
    }
    // A value (state 'value' or 'value-or-close').
    if (c === ']' && state === 'value-or-close') {
      stack.pop();
      i++;
      state = 'after-value';
      continue;
    }
    if (c === '{' || c === '[') {
      stack.push({ object: c === '{', path: childPath(), keys: new Set(), key: '', index: 0 });
      i++;
      state = c === '{' ? 'name-or-close' : 'value-or-close';
      continue;
    }
    const afterComma = state === 'value' && top !== undefined && !top.object;
    state = 'after-value';
    if (c === '"') {
      const r = string();
      if (typeof r !== 'string') return r;
      continue;
    }
    if (c === '-' || (c >= '0' && c <= '9')) {
      JSON_NUMBER.lastIndex = i;
      const m = JSON_NUMBER.exec(text);
      if (!m) return fail('invalid number');
      i += m[0].length;
      continue;
    }
    const literal = ['true', 'false', 'null'].find((w) => text.startsWith(w, i));
    if (literal) {
      i += literal.length;
      continue;
    }
    return unexpected('a value', afterComma);
  }
}
