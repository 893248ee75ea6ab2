/**
 * CPU time per thread of this process, from /proc (Linux only), for benchmarks that need to say
 * where the CPU went: the model's threads, the main thread, or everything else (libvips,
 * libuv's pool, V8's helpers). Granularity is the kernel tick (usually 10 ms), so windows of a
 * few seconds are needed for a meaningful split.
 */
import { readdirSync, readFileSync } from 'node:fs';

/** Thread id → CPU ticks (user + system) so far. Null where /proc/self/task is not available. */
export type ThreadTicks = Map<number, number>;

const TICKS_PER_SECOND = 100; // USER_HZ: 100 on every Linux architecture Node supports

export function threadTicks(): ThreadTicks | null {
  let tids: string[];
  try {
    tids = readdirSync('/proc/self/task');
  } catch {
    return null;
  }
  const out: ThreadTicks = new Map();
  for (const tid of tids) {
    try {
      // Fields after "(comm) ": state is field 3, utime 14 and stime 15 (1-based), so 11 and 12 here.
      const stat = readFileSync(`/proc/self/task/${tid}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(') ') + 2).split(' ');
      out.set(Number(tid), Number(fields[11]) + Number(fields[12]));
    } catch {
      // The thread ended between the listing and the read.
    }
  }
  return out;
}

/** CPU seconds per thread over a window (threads that started inside it count from zero). */
export function threadSeconds(before: ThreadTicks, after: ThreadTicks): Map<number, number> {
  const out = new Map<number, number>();
  for (const [tid, ticks] of after) out.set(tid, (ticks - (before.get(tid) ?? 0)) / TICKS_PER_SECOND);
  return out;
}

export interface CpuSplit {
  /** The `modelThreads` busiest threads other than the main one (the model replicas when saturated). */
  model: number;
  main: number;
  other: number;
}

/**
 * Splits a window's CPU seconds: the main thread (tid = pid), the `modelThreads` busiest other
 * threads (in a saturated run with single-threaded replicas in workers: the replicas), the rest.
 */
export function splitCpu(seconds: Map<number, number>, modelThreads: number, mainTid = process.pid): CpuSplit {
  const main = seconds.get(mainTid) ?? 0;
  const others = [...seconds].filter(([tid]) => tid !== mainTid).map(([, s]) => s).sort((a, b) => b - a);
  const model = others.slice(0, modelThreads).reduce((a, s) => a + s, 0);
  const other = others.slice(modelThreads).reduce((a, s) => a + s, 0);
  return { model, main, other };
}
