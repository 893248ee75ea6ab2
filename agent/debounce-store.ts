/**
 * The per-slot debounce states on disk, so that an agent restart (clean stop or crash) continues
 * each slot where it was: an anomaly open when the agent stopped keeps its event id, the next
 * scans update it or end it, and the same anomaly is not raised a second time under another id
 * (pipelines/events.ts derives the event id from the debounce state alone — camera, slot, start,
 * the run that raised it and its raise ordinal — so a restored state names the same period).
 *
 * One file, `<stateDir>/debounce-state.json`:
 *
 *   { "version": 1, "savedAt": <ms since the epoch, a label only>,
 *     "slots": { "<camera>/<slot>": DebounceState, … } }
 *
 * Writing (`save`): the map is serialised when the write starts, written to
 * `debounce-state.json.tmp`, fsynced, renamed over the file and the directory fsynced, so a crash
 * leaves the old file or the new one, never half of one. At most one write is in flight; saves
 * asked for meanwhile share ONE more write of the then-current map (a burst of N events costs at
 * most two writes, not N). A save never throws: a failed write is logged as a warning and the
 * next save (the next event, or the stop) tries again. The agent saves after every event
 * (new/update/end) and once more on stop, so a scan without a transition costs nothing; what a
 * crash can lose is the history of scans since the last event (a partly filled raise window, a
 * normal streak), which the next scans rebuild. The write follows the event into the outbox, so
 * a crash in between (milliseconds) leaves the file one transition behind: after a `new` the
 * restart may raise that anomaly again under another id, after an `end` it may end it twice.
 *
 * Loading (`load`): a missing file is an empty map. A file that is not JSON, has another shape
 * or another format version is logged as a warning naming the file and the problem, moved aside
 * to `debounce-state.json.corrupt-<ms>` (kept for a post-mortem) and the agent starts with an
 * empty map; it never keeps the agent from starting. Entries of camera/slot pairs no longer in
 * the config are dropped (logged at info). A leftover temp file (a write cut short) is deleted.
 */
import { mkdir, open, readFile, rename, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { fsyncDir } from './fsync-dir.js';
import { z } from 'zod';
import { issueLines } from '../models/zod-issues.js';
import { slotKey, type DebounceState } from '../pipelines/debounce.js';
import type { Logger } from './logger.js';

/** The file name inside the state dir. */
export const DEBOUNCE_STATE_FILE = 'debounce-state.json';
/** The format version this agent writes and reads. */
export const DEBOUNCE_STATE_VERSION = 1;

const TEMP_SUFFIX = '.tmp';

const finite = z.number().refine(Number.isFinite, 'expected a finite number');
const count = z.number().int().min(0);
const boxSchema = z.strictObject({ x: finite, y: finite, width: finite, height: finite });

const stateSchema = z.strictObject({
  camera: z.string().min(1),
  slot: z.string().min(1),
  state: z.enum(['ok', 'anomalous']),
  since: finite,
  lastScore: finite,
  history: z.array(z.boolean()),
  normalStreak: count,
  reported: z.strictObject({ score: finite, regions: z.array(boxSchema) }).nullable(),
  raises: count,
  raisedIn: z.string(),
});

const fileSchema = z
  .strictObject({
    version: z.literal(DEBOUNCE_STATE_VERSION),
    savedAt: finite,
    slots: z.record(z.string(), stateSchema),
  })
  .superRefine((file, ctx) => {
    for (const [key, s] of Object.entries(file.slots)) {
      if (key !== slotKey(s.camera, s.slot)) {
        ctx.addIssue({ code: 'custom', path: ['slots', key], message: `key does not match camera '${s.camera}' and slot '${s.slot}' (expected '${slotKey(s.camera, s.slot)}')` });
      }
      if (s.state === 'anomalous' && s.reported === null) {
        ctx.addIssue({ code: 'custom', path: ['slots', key, 'reported'], message: 'an anomalous slot must have what was reported' });
      }
    }
  });

/** What the file holds (DEBOUNCE_STATE_VERSION). */
export type DebounceStateFile = z.infer<typeof fileSchema>;

export interface DebounceStoreOptions {
  /** The agent's state dir; the file is `<dir>/debounce-state.json`. */
  dir: string;
  logger: Logger;
  /**
   * The slot keys (slotKey(camera, slot)) of the config; entries of other slots are dropped on
   * load. Default: keep every entry.
   */
  slots?: Iterable<string>;
  /** fsync the file and the directory (default true). */
  fsync?: boolean;
  /** Wall clock for `savedAt` and the name of a corrupt file moved aside (default Date.now). */
  clock?: () => number;
}

export interface DebounceStoreStats {
  /** Writes completed. */
  writes: number;
  /** Writes that failed (each logged). */
  failedWrites: number;
}

export class DebounceStore {
  /** `<dir>/debounce-state.json`. */
  readonly path: string;
  private readonly logger: Logger;
  private readonly slots: Set<string> | null;
  private readonly fsync: boolean;
  private readonly clock: () => number;
  private readonly counts: DebounceStoreStats = { writes: 0, failedWrites: 0 };
  /** The map the next write serialises. */
  private latest: ReadonlyMap<string, DebounceState> | null = null;
  /** The write running now. */
  private inFlight: Promise<void> | null = null;
  /** The one write queued behind it, shared by every save asked for meanwhile. */
  private queued: Promise<void> | null = null;

  constructor(private readonly options: DebounceStoreOptions) {
    this.path = join(options.dir, DEBOUNCE_STATE_FILE);
    this.logger = options.logger;
    this.slots = options.slots ? new Set(options.slots) : null;
    this.fsync = options.fsync ?? true;
    this.clock = options.clock ?? Date.now;
  }

  stats(): DebounceStoreStats {
    return { ...this.counts };
  }

  /** The saved states (an empty map when there are none or they cannot be used). Never throws. */
  async load(): Promise<Map<string, DebounceState>> {
    await unlink(this.path + TEMP_SUFFIX).catch(() => undefined);
    let text: string;
    try {
      text = await readFile(this.path, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return new Map();
      this.logger.warn('debounce state file cannot be read; slots start fresh', { file: this.path, error: err as Error });
      return new Map();
    }
    let parsed: DebounceStateFile;
    try {
      const json: unknown = JSON.parse(text);
      const version = typeof json === 'object' && json !== null && !Array.isArray(json) ? (json as { version?: unknown }).version : undefined;
      if (version !== undefined && version !== DEBOUNCE_STATE_VERSION) {
        // Another format (a newer agent wrote it): its shape is not this one's business.
        await this.moveAside([`version: unsupported format version ${JSON.stringify(version)} (this agent reads ${DEBOUNCE_STATE_VERSION})`]);
        return new Map();
      }
      const result = fileSchema.safeParse(json);
      if (!result.success) {
        await this.moveAside(issueLines(result.error.issues, '(file)'));
        return new Map();
      }
      parsed = result.data;
    } catch (err) {
      await this.moveAside([`not valid JSON: ${(err as Error).message}`]);
      return new Map();
    }
    const states = new Map<string, DebounceState>();
    const dropped: string[] = [];
    for (const [key, state] of Object.entries(parsed.slots)) {
      if (this.slots && !this.slots.has(key)) dropped.push(key);
      else states.set(key, state);
    }
    if (dropped.length) this.logger.info('debounce states of slots no longer configured dropped', { file: this.path, slots: dropped });
    return states;
  }

  /**
   * Writes `states` (serialised when the write starts, so the newest map goes out). Resolves once
   * a write that started after this call has finished, successfully or not; never rejects.
   */
  save(states: ReadonlyMap<string, DebounceState>): Promise<void> {
    this.latest = states;
    if (this.queued) return this.queued;
    if (!this.inFlight) return this.startWrite();
    const queued = this.inFlight.then(() => {
      this.queued = null;
      return this.startWrite();
    });
    this.queued = queued;
    return queued;
  }

  /** Resolves when no write is running or queued. */
  async idle(): Promise<void> {
    while (this.queued ?? this.inFlight) await (this.queued ?? this.inFlight);
  }

  private startWrite(): Promise<void> {
    const running = this.write().finally(() => {
      if (this.inFlight === running) this.inFlight = null;
    });
    this.inFlight = running;
    return running;
  }

  private async write(): Promise<void> {
    let text: string;
    try {
      const file: DebounceStateFile = { version: DEBOUNCE_STATE_VERSION, savedAt: this.clock(), slots: Object.fromEntries(this.latest ?? []) };
      text = `${JSON.stringify(file)}\n`;
    } catch (err) {
      this.counts.failedWrites++;
      this.logger.warn('debounce states could not be serialised; not saved', { file: this.path, error: err as Error });
      return;
    }
    const temp = this.path + TEMP_SUFFIX;
    try {
      await mkdir(this.options.dir, { recursive: true });
      const fh = await open(temp, 'w', 0o600);
      try {
        await fh.writeFile(text);
        if (this.fsync) await fh.sync();
      } finally {
        await fh.close();
      }
      await rename(temp, this.path);
      if (this.fsync) await fsyncDir(this.options.dir);
      this.counts.writes++;
    } catch (err) {
      await unlink(temp).catch(() => undefined);
      this.counts.failedWrites++;
      this.logger.warn('debounce states could not be saved; a restart now would lose open anomalies', { file: this.path, error: err as Error });
    }
  }

  /** Logs why the file is unusable and renames it out of the way (kept for a post-mortem). */
  private async moveAside(problems: string[]): Promise<void> {
    const aside = `${this.path}.corrupt-${this.clock()}`;
    try {
      await rename(this.path, aside);
      this.logger.warn('debounce state file is invalid; moved aside, slots start fresh', { file: this.path, movedTo: aside, problems });
    } catch (err) {
      this.logger.warn('debounce state file is invalid and could not be moved aside; slots start fresh', { file: this.path, problems, error: err as Error });
    }
  }
}
