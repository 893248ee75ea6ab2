/**
 * Which request headers fetch would refuse. Shared by the config schema, which names the key, and
 * the snapshot source, which guards library callers: both fail up front instead of on every
 * request. Never put the value in a message: it is often a secret.
 *
 * Two layers refuse headers, and both are checked:
 * - fetch's own `Headers`: names must be tokens; values without CR, LF, NUL or characters above
 *   U+00FF;
 * - undici, when it sends the request (lib/core/request.js; tried against a local server on
 *   Node 20): `Keep-Alive`, `Transfer-Encoding` and `Upgrade` are refused whatever their value
 *   ("invalid … header"), `Expect` is "not supported", `Connection` is accepted only as `close` or
 *   `keep-alive` (any case), and `Content-Length` only as a number (required here: digits only).
 *   Names are compared ignoring case.
 */

export type HeaderProblemPart = 'name' | 'value';

export interface HeaderProblemDetail {
  /** Whether the name (whatever the value) or only this value is refused. */
  part: HeaderProblemPart;
  /** What is expected instead, phrased for a config error; never quotes the value. */
  expected: string;
}

/** Headers fetch refuses whatever their value, with what to do instead. */
const REFUSED_NAMES: ReadonlyMap<string, string> = new Map([
  ['keep-alive', 'fetch manages the connection itself'],
  ['transfer-encoding', 'fetch sets the framing itself; a snapshot GET has no body'],
  ['upgrade', 'fetch cannot switch protocols'],
  ['expect', 'fetch does not support Expect'],
]);

/** The problem fetch would have with this header, or null if it sends it. */
export function describeHeaderProblem(name: string, value: string): HeaderProblemDetail | null {
  if (!acceptedByHeaders(name, 'x')) {
    return { part: 'name', expected: "expected an HTTP header name (letters, digits and !#$%&'*+-.^_`|~)" };
  }
  const lower = name.toLowerCase();
  const refused = REFUSED_NAMES.get(lower);
  if (refused !== undefined) {
    return { part: 'name', expected: `expected no ${name} header: fetch refuses it on every request (${refused})` };
  }
  if (!acceptedByHeaders(name, value)) {
    return { part: 'value', expected: 'expected a header value without line breaks, NUL or characters above U+00FF' };
  }
  // `Headers` strips leading and trailing HTTP whitespace (not String.trim()'s) before undici sees it.
  const v = value.replace(/^[\t\n\r ]+|[\t\n\r ]+$/g, '').toLowerCase();
  if (lower === 'connection' && v !== 'close' && v !== 'keep-alive') {
    return { part: 'value', expected: "expected Connection to be 'close' or 'keep-alive' (fetch refuses any other value)" };
  }
  if (lower === 'content-length' && !/^\d+$/.test(v)) {
    return { part: 'value', expected: 'expected Content-Length to be a whole number of bytes (fetch refuses one that is not a number)' };
  }
  return null;
}

/** Which part of a header fetch would refuse: 'name', 'value', or null when it is sent. */
export function headerProblem(name: string, value: string): HeaderProblemPart | null {
  return describeHeaderProblem(name, value)?.part ?? null;
}

function acceptedByHeaders(name: string, value: string): boolean {
  try {
    new Headers([[name, value]]);
    return true;
  } catch {
    return false;
  }
}
