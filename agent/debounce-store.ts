/**
 * The per-slot debounce states on disk, so that an agent restart (clean stop or crash) continues
 * each slot where it was: an anomaly open when the agent stopped keeps its event id, the next
 * scans update it or end it, and the same anomaly is not raised a second time under another id
 * (pipelines/events.ts derives the event id from the debounce state alone — camera, slot, start,
 * the run that raised it and its raise ordinal — so a restored state names the same period).
 *
 * Two files written in turn, `<stateDir>/debounce-state.a` and `debounce-state.b`, each a header
 * line and the JSON of the states:
 *
 *   shelfwatch-debounce-state seq=<n> bytes=<length of the JSON> crc32=<8 hex digits>
 *   { "version": 2, "savedAt": <ms since the epoch, a label only>,
 *     "slots": { "<camera>/<slot>": DebounceState, … },
 *     "pending": [ { "id": <outbox record id>, "payload": <the event JSON> }, … ] }
 *
 * Version 1 (earlier agents) has no `pending` and is read as having none.
 *
 * The CRC-32 is that of the header line up to ` crc32=` followed by the JSON (the seq is covered).
 *
 * Writing (`save`): the map is serialised when the write starts and written over the OLDER of the
 * two files, from its first byte, then fdatasynced; `seq` counts up. A crash mid-write leaves that
 * file failing its length or checksum, and the other one — the previous save — is loaded instead,
 * never half of one. Bytes after `bytes` are the tail of an earlier, longer save: ignored. No
 * temp file, rename or directory sync per save (the directory is synced when a file is created):
 * a third of the CPU of the rename scheme, which the agent pays once per event. At most one write
 * is in flight; saves asked for meanwhile share ONE more write of the then-current map (a burst
 * of N events costs at most two writes, not N). A save never throws: a failed write is logged as
 * a warning and the next save (the next event, or the stop) tries again, over the same file. The
 * agent saves for every event (new/update/end), before the event goes to the outbox, with the
 * event's record in `pending` (agent/event-journal.ts: the write-ahead that keeps a crash from
 * losing an event or raising it twice), and once more on stop; a scan without a transition costs
 * nothing. What a crash can lose is the history of scans since the last save (a partly filled
 * raise window, a normal streak), which the next scans rebuild.
 *
 * Loading (`load`): the valid file with the higher `seq`; none is an empty map. A file whose
 * header, length or checksum fails is a write cut short: skipped (with a warning when no valid
 * file is left, and moved aside). A file that passes its checksum but is not JSON, has another
 * shape or another format version is logged as a warning naming the file and the problem, moved
 * aside to `<file>.corrupt-<ms>` (kept for a post-mortem) and the agent starts with an empty map;
 * it never keeps the agent from starting. Entries of camera/slot pairs no longer in the config
 * are dropped (logged at info). The single `debounce-state.json` of earlier versions is read when
 * neither file exists, and deleted after the first save.
 */
import { constants } from 'node:fs';
import { mkdir, open, readFile, rename, unlink } from 'node:fs/promises';
import { crc32 } from 'node:zlib';
import { join } from 'node:path';
import { fsyncDir } from './fsync-dir.js';
import { z } from 'zod';
import { issueLines } from '../models/zod-issues.js';
import { slotKey, type DebounceState } from '../pipelines/debounce.js';
import type { Logger } from './logger.js';

/** The two files inside the state dir, written in turn. */
export const DEBOUNCE_STATE_FILES = ['debounce-state.a', 'debounce-state.b'] as const;
/** The single file of earlier versions (read when neither of the two exists). */
export const LEGACY_DEBOUNCE_STATE_FILE = 'debounce-state.json';
const HEADER = /^shelfwatch-debounce-state seq=(\d{1,15}) bytes=(\d{1,10}) crc32=([0-9a-f]{8})\n/;
/** The format version this agent writes. It reads this one and 1 (no `pending`). */
export const DEBOUNCE_STATE_VERSION = 2;
const READABLE_VERSIONS: readonly unknown[] = [1, DEBOUNCE_STATE_VERSION];

/**
 * An event's outbox record written ahead of the outbox (agent/event-journal.ts): the state that
 * raised it and the event are on disk together, so a restart can enqueue what a crash cut off.
 */
export interface PendingEvent {
  /** The outbox record id (stable: a re-delivery has the same one). */
  id: string;
  /** The event JSON, exactly as published. */
  payload: string;
}


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

const pendingSchema = z.strictObject({ id: z.string().min(1), payload: z.string() });

const fileSchema = z
  .strictObject({
    version: z.union([z.literal(1), z.literal(DEBOUNCE_STATE_VERSION)]),
    savedAt: finite,
    slots: z.record(z.string(), stateSchema),
    pending: z.array(pendingSchema).optional(),
  })
  .superRefine((file, ctx) => {
    for (const [i, p] of (file.pending ?? []).entries()) {
      if (!isJsonObject(p.payload)) ctx.addIssue({ code: 'custom', path: ['pending', i, 'payload'], message: 'expected the JSON of an event' });
    }
    for (const [key, s] of Object.entries(file.slots)) {
      if (key !== slotKey(s.camera, s.slot)) {
        ctx.addIssue({ code: 'custom', path: ['slots', key], message: `key does not match camera '${s.camera}' and slot '${s.slot}' (expected '${slotKey(s.camera, s.slot)}')` });
      }
      if (s.state === 'anomalous' && s.reported === null) {
        ctx.addIssue({ code: 'custom', path: ['slots', key, 'reported'], message: 'an anomalous slot must have what was reported' });
      }
    }
  });

const isObject = (value: unknown): value is Record<string, unknown> => typeof value === 'object' && value !== null && !Array.isArray(value);

function isJsonObject(text: string): boolean {
  try {
    return isObject(JSON.parse(text));
  } catch {
    return false;
  }
}

/** What the file holds (DEBOUNCE_STATE_VERSION, or 1 without `pending`). */
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

/** What one of the two files holds, read and checked. */
type FileRead =
  | { kind: 'absent' }
  | { kind: 'unreadable'; error: Error }
  | { kind: 'cut'; problem: string }
  | { kind: 'valid'; seq: number; text: string };

/** The header line up to ` crc32=`. */
const headStart = (seq: number | string, bytes: number | string): string => `shelfwatch-debounce-state seq=${seq} bytes=${bytes}`;

/**
 * The CRC-32 of the header up to ` crc32=` and the JSON: it covers `seq` too, so that a write cut
 * inside the header (the new seq over the old length, checksum and JSON) fails it.
 */
function checksum(head: string, body: Buffer): string {
  return crc32(body, crc32(Buffer.from(head, 'latin1'))).toString(16).padStart(8, '0');
}

/** The header line and JSON of save number `seq`. */
export function encodeDebounceStateFile(json: string, seq: number): Buffer {
  const body = Buffer.from(json, 'utf8');
  const head = headStart(seq, body.length);
  return Buffer.concat([Buffer.from(`${head} crc32=${checksum(head, body)}\n`, 'latin1'), body]);
}

/** The JSON text and seq of a file's bytes, or what is wrong with them (a write cut short). */
export function decodeDebounceStateFile(bytes: Buffer): { seq: number; text: string } | { problem: string } {
  const firstLine = bytes.subarray(0, Math.min(bytes.length, 120)).toString('latin1');
  const m = HEADER.exec(firstLine);
  if (!m) return { problem: bytes.length === 0 ? 'empty file' : 'no valid header line' };
  const start = m[0].length;
  const length = Number(m[2]);
  if (start + length > bytes.length) return { problem: `header says ${length} bytes of JSON, the file holds ${bytes.length - start}` };
  const body = bytes.subarray(start, start + length);
  if (checksum(headStart(m[1]!, m[2]!), body) !== m[3]) return { problem: 'checksum mismatch' };
  return { seq: Number(m[1]), text: body.toString('utf8') };
}

export class DebounceStore {
  /** The two files, written in turn. */
  readonly paths: readonly [string, string];
  /** The file of earlier versions. */
  readonly legacyPath: string;
  private readonly logger: Logger;
  private readonly slots: Set<string> | null;
  private readonly fsync: boolean;
  private readonly clock: () => number;
  private readonly counts: DebounceStoreStats = { writes: 0, failedWrites: 0 };
  /** The maps the next write serialises. */
  private latest: ReadonlyMap<string, DebounceState> | null = null;
  private latestPending: ReadonlyMap<string, PendingEvent> | null = null;
  /** The pending events of the save load() read. */
  private loadedPending: PendingEvent[] = [];
  /** The write running now. */
  private inFlight: Promise<void> | null = null;
  /** The one write queued behind it, shared by every save asked for meanwhile. */
  private queued: Promise<void> | null = null;
  /** seq of the newest save on disk, and which file the next save overwrites. */
  private seq = 0;
  private next: 0 | 1 = 0;
  /** The files known to exist (a new one needs its directory synced). */
  private readonly exists: [boolean, boolean] = [false, false];
  /** A file of an earlier version may be there: deleted after the first save. */
  private legacyMayExist = true;
  /** load() has run: seq and the file to write next reflect what is on disk. */
  private loaded = false;

  constructor(private readonly options: DebounceStoreOptions) {
    this.paths = [join(options.dir, DEBOUNCE_STATE_FILES[0]), join(options.dir, DEBOUNCE_STATE_FILES[1])];
    this.legacyPath = join(options.dir, LEGACY_DEBOUNCE_STATE_FILE);
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
    this.loaded = true;
    await unlink(this.legacyPath + '.tmp').catch(() => undefined); // an earlier version's cut write
    const reads = await Promise.all(this.paths.map((path) => readStateFile(path)));
    reads.forEach((r, i) => (this.exists[i] = r.kind !== 'absent'));
    for (const [i, r] of reads.entries()) {
      if (r.kind === 'unreadable') this.logger.warn('debounce state file cannot be read', { file: this.paths[i], error: r.error });
    }
    const newest = newestSave(reads);
    if (newest) {
      this.seq = newest.seq;
      this.next = newest.i === 0 ? 1 : 0;
      return this.parse(newest.text, this.paths[newest.i]);
    }
    const cut = reads.flatMap((r, i) => (r.kind === 'cut' ? [{ problem: r.problem, i }] : []));
    for (const { problem, i } of cut) await this.moveAside(this.paths[i]!, [`a write cut short: ${problem}`]);
    // Cut files moved aside, neither is left: an earlier version's file is still the newest save
    // (it is deleted only after the first write that succeeded).
    if (reads.some((r) => r.kind === 'unreadable')) return new Map();
    let text: string;
    try {
      text = await readFile(this.legacyPath, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
        this.legacyMayExist = false;
        return new Map();
      }
      this.logger.warn('debounce state file cannot be read; slots start fresh', { file: this.legacyPath, error: err as Error });
      return new Map();
    }
    return this.parse(text, this.legacyPath);
  }

  /** The states of a file's JSON text; problems move the file aside and give an empty map. */
  private async parse(text: string, path: string): Promise<Map<string, DebounceState>> {
    let parsed: DebounceStateFile;
    try {
      const json: unknown = JSON.parse(text);
      const version = isObject(json) ? json['version'] : undefined;
      if (version !== undefined && !READABLE_VERSIONS.includes(version)) {
        // Another format (a newer agent wrote it): its shape is not this one's business.
        await this.moveAside(path, [`version: unsupported format version ${JSON.stringify(version)} (this agent reads ${READABLE_VERSIONS.join(' and ')})`]);
        return new Map();
      }
      const result = fileSchema.safeParse(json);
      if (!result.success) {
        await this.moveAside(path, issueLines(result.error.issues, '(file)'));
        return new Map();
      }
      parsed = result.data;
    } catch (err) {
      await this.moveAside(path, [`not valid JSON: ${(err as Error).message}`]);
      return new Map();
    }
    const states = new Map<string, DebounceState>();
    const dropped: string[] = [];
    for (const [key, state] of Object.entries(parsed.slots)) {
      if (this.slots && !this.slots.has(key)) dropped.push(key);
      else states.set(key, state);
    }
    if (dropped.length) this.logger.info('debounce states of slots no longer configured dropped', { file: path, slots: dropped });
    // Pending events are kept whatever their slot: they were raised, and are owed to subscribers.
    this.loadedPending = parsed.pending ?? [];
    return states;
  }

  /** The events the save that load() read still had pending (re-enqueued by the agent). */
  pendingEvents(): PendingEvent[] {
    return [...this.loadedPending];
  }

  /**
   * Writes `states` and `pending` (serialised when the write starts, so the newest maps go out).
   * Resolves once a write that started after this call has finished, successfully or not; never
   * rejects.
   */
  save(states: ReadonlyMap<string, DebounceState>, pending?: ReadonlyMap<string, PendingEvent>): Promise<void> {
    this.latest = states;
    this.latestPending = pending ?? null;
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
    // A store that saves without having loaded must still count on from the files on disk, or
    // its first saves (low seqs) would lose to an older file at the next load.
    if (!this.loaded) await this.load();
    const i = this.next;
    const path = this.paths[i];
    let bytes: Buffer;
    try {
      const file: DebounceStateFile = {
        version: DEBOUNCE_STATE_VERSION,
        savedAt: this.clock(),
        slots: Object.fromEntries(this.latest ?? []),
        pending: [...(this.latestPending?.values() ?? [])],
      };
      bytes = encodeDebounceStateFile(`${JSON.stringify(file)}\n`, this.seq + 1);
    } catch (err) {
      this.counts.failedWrites++;
      this.logger.warn('debounce states could not be serialised; not saved', { file: path, error: err as Error });
      return;
    }
    try {
      const created = !this.exists[i];
      if (created) await mkdir(this.options.dir, { recursive: true });
      // Over the older file from its first byte, no truncation: the header says where the JSON ends.
      const fh = await open(path, constants.O_RDWR | constants.O_CREAT, 0o600);
      try {
        // write() may write less than asked (a full disk, a file size limit): go on from there.
        for (let done = 0; done < bytes.length; ) {
          const { bytesWritten } = await fh.write(bytes, done, bytes.length - done, done);
          if (bytesWritten <= 0) throw new Error(`wrote ${done} of ${bytes.length} bytes, then nothing`);
          done += bytesWritten;
        }
        if (this.fsync) await fh.datasync();
      } finally {
        await fh.close();
      }
      if (created && this.fsync) await fsyncDir(this.options.dir);
      this.exists[i] = true;
      this.seq++;
      this.next = i === 0 ? 1 : 0;
      this.counts.writes++;
      if (this.legacyMayExist) {
        this.legacyMayExist = false;
        await unlink(this.legacyPath).catch((err: NodeJS.ErrnoException) => {
          // Harmless (it is read only while neither new file exists), but the operator may want it gone.
          if (err.code !== 'ENOENT') this.logger.warn('the earlier debounce state file could not be deleted; it is no longer used', { file: this.legacyPath, error: err });
        });
      }
    } catch (err) {
      // The next attempts recreate the folder if that was what failed; gone with it, both files
      // are created anew then, each needing the directory synced.
      this.exists.fill(false);
      this.counts.failedWrites++;
      this.logger.warn('debounce states could not be saved; a restart now would lose open anomalies', { file: path, error: err as Error });
    }
  }

  /** Logs why the file is unusable and renames it out of the way (kept for a post-mortem). */
  private async moveAside(path: string, problems: string[]): Promise<void> {
    const aside = `${path}.corrupt-${this.clock()}`;
    try {
      await rename(path, aside);
      this.logger.warn('debounce state file is invalid; moved aside, slots start fresh', { file: path, movedTo: aside, problems });
    } catch (err) {
      this.logger.warn('debounce state file is invalid and could not be moved aside; slots start fresh', { file: path, problems, error: err as Error });
    }
    const i = this.paths.indexOf(path);
    if (i >= 0) this.exists[i] = false;
  }
}

async function readStateFile(path: string): Promise<FileRead> {
  let bytes: Buffer;
  try {
    bytes = await readFile(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { kind: 'absent' };
    return { kind: 'unreadable', error: err as Error };
  }
  const decoded = decodeDebounceStateFile(bytes);
  return 'problem' in decoded ? { kind: 'cut', problem: decoded.problem } : { kind: 'valid', ...decoded };
}

/** The valid read of the two files with the higher seq, and which file it is; undefined when neither is valid. */
function newestSave(reads: readonly FileRead[]): { seq: number; text: string; i: 0 | 1 } | undefined {
  return reads.flatMap((r, i) => (r.kind === 'valid' ? [{ seq: r.seq, text: r.text, i: i as 0 | 1 }] : [])).sort((a, b) => b.seq - a.seq)[0];
}

/** The newest valid save in `dir` (for tools and tests), or null. */
export async function readDebounceStateFile(dir: string): Promise<DebounceStateFile | null> {
  const newest = newestSave(await Promise.all(DEBOUNCE_STATE_FILES.map((name) => readStateFile(join(dir, name)))));
  return newest ? (JSON.parse(newest.text) as DebounceStateFile) : null;
}
