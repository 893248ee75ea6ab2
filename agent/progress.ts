/**
 * A progress bar with ETA for long steps, drawn on stderr only when it is a terminal
 * (logs and pipes stay clean). `--json` runs pass `enabled: false`.
 */
export interface Progress {
  update(done: number, total: number, label?: string): void;
  done(message?: string): void;
}

export function progressBar(title: string, opts: { enabled?: boolean; stream?: NodeJS.WriteStream } = {}): Progress {
  const stream = opts.stream ?? process.stderr;
  const enabled = (opts.enabled ?? true) && Boolean(stream.isTTY);
  const start = performance.now();
  let last = 0;
  let drawn = false;
  return {
    update(done, total, label) {
      if (!enabled) return;
      const now = performance.now();
      if (now - last < 100 && done < total) return;
      last = now;
      const frac = total > 0 ? Math.min(1, done / total) : 0;
      const width = 28;
      const filled = Math.round(frac * width);
      const elapsed = (now - start) / 1000;
      const eta = frac > 0 ? (elapsed / frac) * (1 - frac) : NaN;
      const line = `${title} [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${done}/${total} ${(frac * 100).toFixed(0)}% ${formatSeconds(elapsed)} elapsed, ETA ${Number.isFinite(eta) ? formatSeconds(eta) : '?'}${label ? ` ${label}` : ''}`;
      stream.write(`\r${line.slice(0, (stream.columns ?? 120) - 1)}\x1b[K`);
      drawn = true;
    },
    done(message) {
      if (!enabled) return;
      if (drawn) stream.write('\r\x1b[K');
      if (message) stream.write(`${message}\n`);
    },
  };
}

export function formatSeconds(s: number): string {
  if (s < 60) return `${s.toFixed(1)}s`;
  const m = Math.floor(s / 60);
  return `${m}m${Math.round(s - m * 60).toString().padStart(2, '0')}s`;
}
