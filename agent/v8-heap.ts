/**
 * The one V8 setting the agent's node process is started with, and the check that it was.
 *
 * Why: V8 sizes a heap's old-generation limit from what is live after a full collection. The
 * agent's heaps are small (about 30 MB on the main thread, 12 MB in each model worker) while they
 * churn through large off-heap buffers (a decoded 1-megapixel frame is 3 MB; each batch's
 * anomaly maps from onnxruntime 1.6 MB). With the default limits the headroom left above such a
 * small heap is used up by those buffers within a fraction of a second, so V8 keeps starting full
 * mark-compacts: measured on the 16-slot benchmark, every ~0.35 s on the main thread and every
 * ~0.6 s in each replica, whose concurrent marking kept four V8 platform threads at ~4 % of a core
 * each and cut the replicas' share of the CPU from ~89 % to ~81 % each. A floor under the limit
 * (`--initial-old-space-size`; V8 then skips full collections below it) leaves the buffers to the
 * cheap young-generation scavenges: no mark-compact for tens of seconds, heap 31–55 MB, RSS as
 * before. 64 MB was not enough for the main thread; 96 MB is.
 *
 * It is a process flag (it cannot be set once the main isolate exists), so every launcher passes
 * it: the systemd unit, the Dockerfiles, `npm start`, and the `shelfwatch` command's shebang
 * (test/v8-heap.test.ts keeps them in step). The model workers do not keep it: a floor let their
 * heaps, and the buffers promoted with them, grow toward it (RSS crept ~10 MB a minute), so
 * models/worker-model.ts resets the flag before it starts one. Their own churn is gone since scan
 * fetches patch distances instead of full maps. Measured together (bench:pipeline --soak 10,
 * 16 slots): at most 2 mark-compacts per isolate in a 50 s window instead of 106 on the main
 * thread, replicas at 86–88 % of a core instead of 79–80 %, RSS +14.6 MB over 10 minutes, flat
 * after the 7th.
 */

/** Old-generation floor in MB; see above for how it was chosen. */
export const HEAP_FLOOR_MB = 96;

/** The node command-line flag that sets it. */
export const HEAP_FLOOR_FLAG = `--initial-old-space-size=${HEAP_FLOOR_MB}`;

/** V8 accepts `-` or `_` between the words. */
const FLOOR_PATTERN = /^--initial[-_]old[-_]space[-_]size=(\d+)$/;

/** The old-generation floor (MB) these node flags set, or null when they set none. */
export function heapFloorMb(execArgv: readonly string[] = process.execArgv): number | null {
  let floor: number | null = null;
  for (const arg of execArgv) {
    const m = FLOOR_PATTERN.exec(arg);
    if (m) floor = Number(m[1]); // the last one wins, as in V8
  }
  return floor;
}

/** A warning for the log when the process was started without the floor (or with a lower one), else null. */
export function heapFloorWarning(execArgv: readonly string[] = process.execArgv): string | null {
  const floor = heapFloorMb(execArgv);
  if (floor !== null && floor >= HEAP_FLOOR_MB) return null;
  const got = floor === null ? 'without it' : `with ${floor} MB`;
  return `node was started ${got}: start it with ${HEAP_FLOOR_FLAG} (as the systemd unit, the Dockerfiles and the shelfwatch command do), or V8 spends CPU on back-to-back full garbage collections that the model replicas need`;
}
