/**
 * Credentials for IP-camera snapshot URLs: `http://user:pass@cam/snapshot.jpg`.
 * fetch refuses URLs with credentials, so they are taken out of the URL and answered to the
 * camera's 401 challenge: Basic, or Digest (RFC 7616, MD5/SHA-256, qop=auth) which many cameras
 * require by default.
 */
import { createHash, randomBytes } from 'node:crypto';
import { redactUrl } from '../redact.js';

export interface Credentials {
  username: string;
  password: string;
}

/** The URL without credentials, the credentials, and a form safe to log (password and secret query values masked). */
export function splitCredentials(raw: string): { url: string; credentials?: Credentials; redacted: string } {
  let u: URL;
  try {
    u = new URL(raw);
  } catch {
    throw new Error(`http-snapshot url ${JSON.stringify(redactUrl(raw))} is not a valid URL`);
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') {
    throw new Error(`http-snapshot url ${JSON.stringify(redactUrl(raw))} must be http:// or https://`);
  }
  if (!u.username && !u.password) return { url: u.href, redacted: redactUrl(u.href) };
  // decodeURIComponent throws a bare "URIError: URI malformed" on a raw '%' ("50%off"): say which
  // part and how to write it, and show the URL only redacted (the password is never printed).
  const decode = (part: string, what: string) => {
    try {
      return decodeURIComponent(part);
    } catch {
      throw new Error(
        `http-snapshot url ${JSON.stringify(redactUrl(raw))}: the ${what} holds a '%' that is not a valid percent-escape; write a literal '%' as %25`,
      );
    }
  };
  const credentials = { username: decode(u.username, 'user name'), password: decode(u.password, 'password') };
  u.username = '';
  u.password = '';
  const url = u.href;
  const redacted = redactUrl(url.replace('://', `://${encodeURIComponent(credentials.username)}:***@`));
  return { url, credentials, redacted };
}

export interface Challenge {
  scheme: string;
  params: Record<string, string>;
}

const TOKEN = /[!#$%&'*+.^_`|~0-9A-Za-z-]+/y;
const TOKEN68 = /[A-Za-z0-9._~+/-]+=*/y;
const QUOTED = /"((?:[^"\\]|\\.)*)"/y;
const WS = /[ \t]*/y;

/**
 * Every challenge of a WWW-Authenticate header (RFC 7235 §4.1), in order. A camera that offers
 * several sends several headers, which fetch joins with ", " into one string:
 * `Digest realm="a", nonce="n", qop="auth", Basic realm="b"`. A challenge starts at a token that
 * is followed by a space or the end (not by `=`: that is a `key=value` parameter of the
 * challenge before it); commas inside quoted strings are not separators. Scheme and parameter
 * names are lower-cased; `token68` holds a bare credential-style value (`Negotiate abc==`).
 */
export function parseChallenges(header: string): Array<Challenge & { token68?: string }> {
  const out: Array<Challenge & { token68?: string }> = [];
  let current: (Challenge & { token68?: string }) | undefined;
  let i = 0;
  const match = (re: RegExp): RegExpExecArray | null => {
    re.lastIndex = i;
    const m = re.exec(header);
    if (m) i = re.lastIndex;
    return m;
  };
  const skipToComma = () => {
    // Garbage: skip to the next comma outside a quoted string.
    while (i < header.length && header[i] !== ',') {
      if (header[i] === '"' && match(QUOTED)) continue;
      i++;
    }
  };
  while (i < header.length) {
    if (header[i] === ',' || header[i] === ' ' || header[i] === '\t') {
      i++;
      continue;
    }
    const token = match(TOKEN);
    if (!token) {
      skipToComma();
      continue;
    }
    const afterToken = i;
    match(WS);
    if (header[i] === '=' && current) {
      // key = value, a parameter of the current challenge.
      i++;
      match(WS);
      const quoted = header[i] === '"' ? match(QUOTED) : null;
      const value = quoted ? quoted[1].replace(/\\(.)/g, '$1') : (match(TOKEN)?.[0] ?? '');
      const key = token[0].toLowerCase();
      // RFC 7235: each parameter at most once per challenge; keep the first.
      if (!(key in current.params)) current.params[key] = value;
      if (!quoted && i < header.length && header[i] !== ',' && header[i] !== ' ' && header[i] !== '\t') skipToComma();
      continue;
    }
    i = afterToken;
    current = { scheme: token[0].toLowerCase(), params: {} };
    out.push(current);
    // An optional token68 right after the scheme: `Negotiate YIIC…==`, then a comma or the end.
    match(WS);
    const start = i;
    const t68 = match(TOKEN68);
    if (t68) {
      const end = i;
      match(WS);
      if (i >= header.length || header[i] === ',') {
        current.token68 = t68[0];
        i = end;
      } else {
        i = start; // `realm="…"` and the like: parameters, read by the loop
      }
    }
  }
  return out;
}

/** Digest algorithms DigestAuth answers. */
const DIGEST_ALGORITHMS = ['MD5', 'MD5-SESS', 'SHA-256', 'SHA-256-SESS'];

/**
 * The challenge to answer in a WWW-Authenticate header that may hold several: the first Digest
 * one whose algorithm is supported, else Basic, else the first challenge (which the caller then
 * refuses by name: an unsupported scheme or Digest algorithm). Parameters are those of that
 * challenge only. undefined for an empty header.
 */
export function parseChallenge(header: string): Challenge | undefined {
  const all = parseChallenges(header).map(({ scheme, params }) => ({ scheme, params }));
  const digest = all.filter((c) => c.scheme === 'digest');
  return (
    digest.find((c) => DIGEST_ALGORITHMS.includes((c.params.algorithm ?? 'MD5').toUpperCase())) ??
    all.find((c) => c.scheme === 'basic') ??
    digest[0] ??
    all[0]
  );
}

export function basicAuthorization(c: Credentials): string {
  return `Basic ${Buffer.from(`${c.username}:${c.password}`).toString('base64')}`;
}

/** Answers one Digest challenge; keeps the nonce count so the challenge can be reused. */
export class DigestAuth {
  private nc = 0;

  constructor(
    private readonly challenge: Challenge,
    private readonly credentials: Credentials,
  ) {
    const algo = (challenge.params.algorithm ?? 'MD5').toUpperCase();
    if (!DIGEST_ALGORITHMS.includes(algo)) {
      throw new Error(`camera asks for Digest algorithm ${algo}, which is not supported (MD5, SHA-256)`);
    }
  }

  authorization(method: string, url: string): string {
    const p = this.challenge.params;
    const algo = (p.algorithm ?? 'MD5').toUpperCase();
    const hash = (s: string) => createHash(algo.startsWith('SHA-256') ? 'sha256' : 'md5').update(s).digest('hex');
    const u = new URL(url);
    const uri = u.pathname + u.search;
    const realm = p.realm ?? '';
    const nonce = p.nonce ?? '';
    const qop = p.qop?.split(',').map((q) => q.trim()).includes('auth') ? 'auth' : undefined;
    const cnonce = randomBytes(8).toString('hex');
    const nc = (++this.nc).toString(16).padStart(8, '0');
    let ha1 = hash(`${this.credentials.username}:${realm}:${this.credentials.password}`);
    if (algo.endsWith('-SESS')) ha1 = hash(`${ha1}:${nonce}:${cnonce}`);
    const ha2 = hash(`${method}:${uri}`);
    const response = qop ? hash(`${ha1}:${nonce}:${nc}:${cnonce}:${qop}:${ha2}`) : hash(`${ha1}:${nonce}:${ha2}`);
    const parts = [
      `username="${this.credentials.username}"`,
      `realm="${realm}"`,
      `nonce="${nonce}"`,
      `uri="${uri}"`,
      `algorithm=${p.algorithm ?? 'MD5'}`,
      `response="${response}"`,
    ];
    if (qop) parts.push(`qop=${qop}`, `nc=${nc}`, `cnonce="${cnonce}"`);
    if (p.opaque !== undefined) parts.push(`opaque="${p.opaque}"`);
    return `Digest ${parts.join(', ')}`;
  }
}
