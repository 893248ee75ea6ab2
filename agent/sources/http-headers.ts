/**
 * Which request headers fetch would refuse, decided by fetch's own `Headers` (token names; values
 * without CR, LF, NUL or characters above U+00FF). Shared by the config schema, which names the
 * key, and the snapshot source, which guards library callers: both fail up front instead of on
 * every request. Never put the value in a message: it is often a secret.
 */
export function headerProblem(name: string, value: string): 'name' | 'value' | null {
  if (!accepted(name, 'x')) return 'name';
  return accepted(name, value) ? null : 'value';
}

function accepted(name: string, value: string): boolean {
  try {
    new Headers([[name, value]]);
    return true;
  } catch {
    return false;
  }
}
