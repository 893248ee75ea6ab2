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
/**
 * Query parameter names cameras and signed URLs use for secrets that `isSecretKey` alone does not
 * catch (Foscam's `loginpas`, Azure SAS's `sig`, ...).
 */
const SECRET_PARAM_SHORTHAND = /^(pwd|pw|loginpas|auth|sig|jwt)$/i;

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
  // Query parameters, and fragment ones (`#access_token=…` of OAuth implicit-flow URLs).
  tail = tail.replace(/([?&;#])([^=&;#]+)=([^&;#]*)/g, (all, sep: string, key: string) => {
    const name = safeDecode(key);
    return isSecretKey(name) || SECRET_PARAM_SHORTHAND.test(name) ? `${sep}${key}=***` : all;
  });
  return scheme + hostPart + tail;
}

/** Punctuation that ends a sentence or a bracket around a URL rather than the URL itself. */
const TRAILING_PUNCTUATION = /[).,;:!?\]}]+$/;

/**
 * Text that may quote a URL anywhere (ffmpeg's stderr echoes its input: "rtsp://admin:pw@cam/s:
 * Connection refused"; a download reason "(at https://…?X-Amz-Signature=…)"): `raw` is replaced
 * by `redacted` first, then every URL in it is redacted. Punctuation right after a URL (a closing
 * bracket, a full stop) is kept out of it, so it is not masked along with a query value.
 */
export function redactText(text: string, raw?: string, redacted?: string): string {
  const out = raw && redacted && raw !== redacted ? text.split(raw).join(redacted) : text;
  if (!out.includes('://')) return out;
  return out.replace(URL_IN_TEXT, (u) => {
    const trailing = TRAILING_PUNCTUATION.exec(u)?.[0] ?? '';
    return redactUrl(u.slice(0, u.length - trailing.length)) + trailing;
  });
}

function safeDecode(s: string): string {
  try {
    return decodeURIComponent(s.replace(/\+/g, ' '));
  } catch {
    return s;
  }
}
