/**
 * The one URL redactor: keeps passwords out of logs, status, config errors and frame origins
 * (camera, broker and model-download URLs alike).
 *
 * Cameras take credentials in the userinfo (`rtsp://admin:pw@cam/…`) and, on many models, in the
 * query (`/snapshot.cgi?user=admin&pwd=…`). The userinfo is cut the way ffmpeg cuts it — the
 * authority ends at the first `/`, `?` or `#`, the userinfo at the LAST `@` before that — so a
 * password with an unencoded `@` is hidden whole, not half.
 */
/** Keys whose values are never printed: password, token, secret, anything ending in 'key', ... */
const SECRET_KEY = /(pass(word|wd|phrase)?$|secret|token|key$|credential|authorization|cookie|signature)/i;
/** Query parameter names cameras use for secrets that `isSecretKey` alone does not catch. */
const SECRET_PARAM_SHORTHAND = /^(pwd|pw|auth|sig)$/i;

/** Secret-looking config keys and query parameter names (config.ts and the logger use it too). */
export function isSecretKey(key: string): boolean {
  return SECRET_KEY.test(key);
}

const URL_IN_TEXT = /[a-z][a-z0-9+.-]*:\/\/[^\s"'<>]+/gi;

/** A URL (or a device/file path, returned as is) with its password and secret query values masked. */
export function redactUrl(input: string): string {
  const m = /^([a-z][a-z0-9+.-]*:\/\/)(.*)$/is.exec(input);
  if (!m) return input;
  const [, scheme, rest] = m;
  const authorityEnd = rest.search(/[/?#]/);
  const authority = authorityEnd < 0 ? rest : rest.slice(0, authorityEnd);
  let tail = authorityEnd < 0 ? '' : rest.slice(authorityEnd);
  let hostPart = authority;
  const at = authority.lastIndexOf('@');
  if (at >= 0) {
    const userinfo = authority.slice(0, at);
    const colon = userinfo.indexOf(':');
    hostPart = `${colon >= 0 ? `${userinfo.slice(0, colon)}:***` : userinfo}@${authority.slice(at + 1)}`;
  }
  tail = tail.replace(/([?&;])([^=&;#]+)=([^&;#]*)/g, (all, sep: string, key: string) => {
    const name = safeDecode(key);
    return isSecretKey(name) || SECRET_PARAM_SHORTHAND.test(name) ? `${sep}${key}=***` : all;
  });
  return scheme + hostPart + tail;
}

/**
 * Text that may quote a URL (ffmpeg's stderr echoes its input: "rtsp://admin:pw@cam/s: Connection
 * refused"): `raw` is replaced by `redacted` first, then any other URL in it is redacted.
 */
export function redactText(text: string, raw?: string, redacted?: string): string {
  const out = raw && redacted && raw !== redacted ? text.split(raw).join(redacted) : text;
  return out.replace(URL_IN_TEXT, (u) => redactUrl(u));
}

function safeDecode(s: string): string {
  try {
    return decodeURIComponent(s.replace(/\+/g, ' '));
  } catch {
    return s;
  }
}
