/**
 * Human-friendly sizes and durations for config values: `256MB`, `1.5 GiB`, `250ms`, `1m30s`.
 *
 * Sizes are binary: `KB`/`KiB` = 1024, `MB`/`MiB` = 1024², `GB`/`GiB` = 1024³, so that the
 * config example's `maxBytes: 256MB` is exactly 268435456 bytes. A bare number is bytes.
 * Durations combine `ms`, `s`, `m`, `h`, `d` parts (`1h30m`, `2.5s`).
 * Both parsers return `undefined` for anything they do not understand; callers report the error.
 */

const SIZE_UNITS: Record<string, number> = {
  b: 1,
  k: 1024,
  kb: 1024,
  kib: 1024,
  m: 1024 ** 2,
  mb: 1024 ** 2,
  mib: 1024 ** 2,
  g: 1024 ** 3,
  gb: 1024 ** 3,
  gib: 1024 ** 3,
  t: 1024 ** 4,
  tb: 1024 ** 4,
  tib: 1024 ** 4,
};

const SIZE_RE = /^(\d+(?:\.\d+)?)\s*([a-z]*)$/i;

/** `'256MB'` → 268435456, `'512'` → 512, `'1.5 KiB'` → 1536; fractional bytes are rounded down. */
export function parseByteSize(text: string): number | undefined {
  const m = SIZE_RE.exec(text.trim());
  if (!m) return undefined;
  const unit = SIZE_UNITS[(m[2] ?? '').toLowerCase() || 'b'];
  if (unit === undefined) return undefined;
  const bytes = Math.floor(Number(m[1]) * unit);
  return Number.isSafeInteger(bytes) ? bytes : undefined;
}

const DURATION_UNITS_MS: Record<string, number> = {
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
};

const DURATION_PART_RE = /(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)/gy;

/** `'250ms'` → 250, `'1m30s'` → 90000, `'2.5s'` → 2500. A bare number is not accepted (no unit). */
export function parseDurationMs(text: string): number | undefined {
  const s = text.trim().toLowerCase();
  if (s === '') return undefined;
  DURATION_PART_RE.lastIndex = 0;
  let total = 0;
  let consumed = 0;
  for (;;) {
    // Allow whitespace between parts: '1m 30s'.
    while (s[consumed] === ' ') consumed++;
    if (consumed === s.length) break;
    DURATION_PART_RE.lastIndex = consumed;
    const m = DURATION_PART_RE.exec(s);
    if (!m) return undefined;
    total += Number(m[1]) * (DURATION_UNITS_MS[m[2]!] ?? NaN);
    consumed = DURATION_PART_RE.lastIndex;
  }
  return Number.isFinite(total) ? total : undefined;
}

/** 268435456 → '256 MiB' (for summaries). */
export function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = bytes;
  let i = 0;
  while (v >= 1024 && i < units.length - 1 && v % 1024 === 0) {
    v /= 1024;
    i++;
  }
  if (i === 0 && bytes >= 1024) {
    // Not a whole multiple: show one decimal of the largest unit.
    while (v >= 1024 && i < units.length - 1) {
      v /= 1024;
      i++;
    }
    return `${v.toFixed(1)} ${units[i]}`;
  }
  return `${v} ${units[i]}`;
}

/** 90000 → '1m30s', 250 → '250ms' (for summaries). */
export function formatDurationMs(ms: number): string {
  if (ms < 1000) return `${ms}ms`;
  const parts: string[] = [];
  let rest = ms;
  for (const [unit, size] of [
    ['d', 86_400_000],
    ['h', 3_600_000],
    ['m', 60_000],
    ['s', 1000],
  ] as const) {
    const n = Math.floor(rest / size);
    if (n > 0) parts.push(`${n}${unit}`);
    rest -= n * size;
  }
  if (rest > 0) parts.push(`${rest}ms`);
  return parts.join('');
}
