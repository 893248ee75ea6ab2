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
  const credentials = { username: decodeURIComponent(u.username), password: decodeURIComponent(u.password) };
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

/** Parse the first challenge of a WWW-Authenticate header. */
export function parseChallenge(header: string): Challenge | undefined {
  const m = /^\s*([A-Za-z]+)\s*(.*)$/.exec(header);
  if (!m) return undefined;
  const params: Record<string, string> = {};
  const re = /([A-Za-z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))/g;
  for (let p = re.exec(m[2]); p; p = re.exec(m[2])) {
    params[p[1].toLowerCase()] = p[2] !== undefined ? p[2].replace(/\\(.)/g, '$1') : p[3];
  }
  return { scheme: m[1].toLowerCase(), params };
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
    if (!['MD5', 'MD5-SESS', 'SHA-256', 'SHA-256-SESS'].includes(algo)) {
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
