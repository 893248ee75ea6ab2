/**
 * Durable MQTT outbox: every message is written to disk before it is published and removed
 * only once the broker acknowledged it (PUBACK), so nothing is lost across broker outages or
 * agent restarts (at-least-once, with a stable record id the subscriber can de-duplicate on).
 *
 * On disk: record files `<dir>/<seq, 16 digits>.rec`, written to `<name>.tmp`, fsynced, renamed
 * into place and the directory fsynced, so a crash leaves either the whole file or nothing
 * (leftover `.tmp` files are unfinished writes and are deleted on open). Records enqueued in the
 * same tick (an event's thumbnail, mask, event and state) share one file, named by its first
 * seq: one create, fsync, rename and unlink for the group instead of one each, which is most of
 * an event's cost on ext4. A file is deleted once none of its records needs it any more. Each
 * record carries a CRC-32; files that cannot be read or fail the check are moved to
 * `<dir>/corrupt/` and counted, never fatal. `seq` is monotonic, so replay after a restart keeps
 * the order.
 *
 * Policies (all counted):
 *  - bounds: when `maxRecords` or `maxBytes` would be exceeded, the OLDEST records are dropped
 *    first (`dropped`) — fresh shelf state is worth more than stale events;
 *  - supersede: a retained record replaces an older pending retained record for the same topic
 *    (a late subscriber only ever sees the newest retained value anyway) — but only when no
 *    non-retained record was enqueued after that older one, so nothing is reordered around an
 *    event: a thumbnail queued before its `new` event is delivered before it even when the next
 *    update's thumbnail arrives during an outage. A record whose id is already pending replaces
 *    that older one (`superseded`). The replaced record's file is deleted only once its
 *    replacement is on disk, so a crash or a failed write never leaves neither;
 *  - disk errors (ENOSPC, EIO, EROFS, …) never throw out of `enqueue`: the record is kept in
 *    memory (still publishable), the error is emitted as `diskError` and counted
 *    (`failedWrites`), and the write is retried on a timer. A directory that cannot be written
 *    at all at open (a card the kernel remounted read-only) opens `degraded`: what can be read
 *    is loaded and delivered, new records live in memory;
 *  - single writer: `outbox.lock` names the holder's pid, boot id and process start time, so a
 *    lock left by a crash is recognised as stale after a reboot even when its pid was reused
 *    (a lock file older than the boot is stale too, whatever it holds).
 */
import { EventEmitter } from 'node:events';
import { readFileSync } from 'node:fs';
import { mkdir, open, readFile, readdir, rename, stat, unlink, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { crc32 } from 'node:zlib';
import { fsyncDir } from '../fsync-dir.js';
import { validatePublishTopic } from './topics.js';

export type QoS = 0 | 1 | 2;

/** What a producer hands to the outbox. */
export interface OutboxMessage {
  /** Stable id of this message, e.g. `<event id>:thumbnail`. Unique among pending records. */
  id: string;
  topic: string;
  payload: Buffer | Uint8Array | string;
  /** Default 1. */
  qos?: QoS;
  /** Default false. */
  retain?: boolean;
}

/** A pending record, as handed to the publisher. */
export interface OutboxRecord {
  id: string;
  /** Monotonic sequence number: the delivery order. */
  seq: number;
  topic: string;
  payload: Buffer;
  qos: QoS;
  retain: boolean;
  /** When it was enqueued, ms since the epoch. */
  createdAt: number;
}

export interface OutboxLimits {
  /** Most records kept; beyond it the oldest are dropped. */
  maxRecords: number;
  /** Most bytes kept (record file sizes); beyond it the oldest are dropped. */
  maxBytes: number;
  /** fsync each record and the directory (default true). Off only for tests/benchmarks. */
  fsync?: boolean;
  /** How often failed writes are retried, ms (default 5000). */
  retryIntervalMs?: number;
  /**
   * Wall clock that stamps `createdAt` (default Date.now). Only a label: delivery order is the
   * sequence number, so a clock that steps back or forward reorders nothing.
   */
  clock?: () => number;
}

export interface OutboxDepth {
  records: number;
  bytes: number;
  /** createdAt of the oldest pending record, or null when empty. */
  oldestCreatedAt: number | null;
  /**
   * How long the oldest pending record has waited, in ms, on the monotonic clock (a wall clock
   * stepped back or forward does not change it); for records found on disk at open, their age
   * then by the wall clock. null when empty.
   */
  oldestAgeMs: number | null;
  /** Records that exist only in memory because their write failed (retried). */
  memoryOnly: number;
}

export interface OutboxCounters {
  enqueued: number;
  delivered: number;
  dropped: number;
  superseded: number;
  failedWrites: number;
  failedRemovals: number;
  /** Record files found unreadable on open and moved to `corrupt/`. */
  corrupt: number;
  /** Records the broker kept refusing (see deadLetter), moved to `dead/`. */
  deadLettered: number;
}

export interface EnqueueResult {
  id: string;
  seq: number;
  /** False when the write failed; the record is then kept in memory and the write retried. */
  persisted: boolean;
}

/** A file-system failure the outbox survived; emitted as `diskError`. */
export class OutboxDiskError extends Error {
  override name = 'OutboxDiskError';
  constructor(
    readonly operation: 'write' | 'remove' | 'quarantine' | 'dead-letter',
    readonly path: string,
    override readonly cause: unknown,
  ) {
    const code = (cause as NodeJS.ErrnoException | undefined)?.code;
    super(`outbox ${operation} failed for ${path}${code ? ` (${code})` : ''}: ${(cause as Error | undefined)?.message ?? String(cause)}`);
  }
}

export interface OutboxEvents {
  diskError: [OutboxDiskError];
  /** A record became publishable (persisted or kept in memory after a failed write). */
  ready: [];
  dropped: [OutboxRecord];
  superseded: [OutboxRecord];
}

interface Entry {
  record: OutboxRecord;
  size: number;
  /** First write attempt finished: the record may be published (keeps order for slow writes). */
  settled: boolean;
  /** Its file is on disk and synced. */
  durable: boolean;
  /** The file it is written (or being written) to; null while it exists only in memory. */
  file: RecordFile | null;
  removed: boolean;
  /** Records this one superseded whose files are released once this one is on disk. */
  superseded: Entry[];
  /** Removed, but its file is kept until the record that superseded it is on disk. */
  fileKept: boolean;
  /** performance.now() when it was enqueued (for a record loaded from disk: now minus its wall-clock age). */
  enqueuedAt: number;
}

/** One `.rec` file and the records in it that still need it. */
interface RecordFile {
  /** The seq of its first record: its name. */
  seq: number;
  /** Records written to it. */
  count: number;
  /** Records written to it whose copy is still needed (not yet released). */
  live: number;
  /** Its write is in progress: the write deletes it afterwards if nothing needs it by then. */
  writing: boolean;
}

/** Records enqueued in the current tick, written together as one file at its end. */
interface WriteGroup {
  entries: Entry[];
  encoded: Buffer[];
  done: Promise<boolean>;
  resolve: (ok: boolean) => void;
}

const MAGIC = Buffer.from('SWOB');
const FORMAT_VERSION = 1;
const RECORD_SUFFIX = '.rec';
const TEMP_SUFFIX = '.tmp';
const LOCK_FILE = 'outbox.lock';
const MAX_ID_LENGTH = 512;

/** Outbox directories open in this process (to tell a stale lock of ours from a live one). */
const openDirs = new Set<string>();

export class Outbox extends EventEmitter<OutboxEvents> {
  private readonly entries = new Map<number, Entry>();
  private readonly byId = new Map<string, Entry>();
  private readonly retainedByTopic = new Map<string, Entry>();
  private nextSeq = 1;
  /** seq of the newest non-retained record ever enqueued or loaded (see supersedeFor). */
  private lastNonRetainedSeq = 0;
  /** Why the directory could not be locked or written at open (null: healthy). */
  degradedReason: string | null = null;
  private bytes = 0;
  private closed = false;
  private retryTimer: NodeJS.Timeout | null = null;
  private readonly ioInFlight = new Set<Promise<unknown>>();
  private readonly fsync: boolean;
  private readonly retryIntervalMs: number;
  private readonly clock: () => number;
  private currentDirSync: Promise<void> | null = null;
  private nextDirSync: Promise<void> | null = null;
  private group: WriteGroup | null = null;
  private readonly count: OutboxCounters = {
    enqueued: 0,
    delivered: 0,
    dropped: 0,
    superseded: 0,
    failedWrites: 0,
    failedRemovals: 0,
    corrupt: 0,
    deadLettered: 0,
  };

  private constructor(
    readonly dir: string,
    readonly limits: Readonly<OutboxLimits>,
  ) {
    super();
    this.fsync = limits.fsync ?? true;
    this.retryIntervalMs = limits.retryIntervalMs ?? 5000;
    this.clock = limits.clock ?? Date.now;
  }

  /**
   * Opens (creating if needed) the outbox in `dir`, loading pending records in sequence order.
   * Corrupt record files are moved to `<dir>/corrupt/` and counted in `counters().corrupt`.
   * Throws when the limits are invalid or another live process holds the directory.
   */
  static async open(dir: string, limits: OutboxLimits): Promise<Outbox> {
    checkLimits(limits);
    dir = resolve(dir);
    const outbox = new Outbox(dir, limits);
    try {
      await mkdir(dir, { recursive: true, mode: 0o700 });
      await acquireLock(dir);
    } catch (err) {
      if (!isDiskFailure(err)) throw err;
      // Refusing to start would strand the records on disk and every new one: run in memory.
      outbox.degradedReason = `cannot write ${dir} (${(err as NodeJS.ErrnoException).code}): ${(err as Error).message}`;
      openDirs.add(dir);
    }
    try {
      await outbox.load();
    } catch (err) {
      if (!isDiskFailure(err) || !outbox.degradedReason) {
        await releaseLock(dir, outbox.degradedReason === null);
        throw err;
      }
    }
    return outbox;
  }

  /**
   * Persists a message and makes it publishable. Resolves after the write attempt: with
   * `persisted: false` when the disk failed (see class comment). Rejects only for invalid
   * messages, a record larger than `maxBytes`, or a closed outbox.
   */
  async enqueue(message: OutboxMessage): Promise<EnqueueResult> {
    if (this.closed) throw new Error(`outbox ${this.dir} is closed`);
    const record = this.toRecord(message);
    const encoded = encodeRecord(record);
    if (encoded.length > this.limits.maxBytes) {
      throw new RangeError(`outbox record ${JSON.stringify(record.id)} is ${encoded.length} bytes, larger than outbox.maxBytes ${this.limits.maxBytes}`);
    }
    const entry: Entry = { record, size: encoded.length, settled: false, durable: false, file: null, removed: false, superseded: [], fileKept: false, enqueuedAt: performance.now() };
    this.supersedeFor(entry);
    this.insert(entry);
    this.count.enqueued++;
    this.enforceBounds();
    const persisted = await this.joinGroup(entry, encoded);
    entry.settled = true;
    if (!entry.removed) this.emit('ready');
    return { id: record.id, seq: record.seq, persisted };
  }

  /** All publishable records, oldest first. */
  pending(): OutboxRecord[] {
    return this.pendingAfter(0, Number.POSITIVE_INFINITY);
  }

  /**
   * Up to `limit` publishable records with `seq > afterSeq`, oldest first. Stops at the first
   * record whose first write has not finished, so publishing never overtakes the disk order.
   */
  pendingAfter(afterSeq: number, limit: number): OutboxRecord[] {
    const out: OutboxRecord[] = [];
    for (const entry of this.entries.values()) {
      if (!entry.settled) break;
      if (entry.record.seq <= afterSeq) continue;
      out.push(entry.record);
      if (out.length >= limit) break;
    }
    return out;
  }

  /**
   * Marks a record delivered and deletes it. With `seq`, only that exact record is removed
   * (guards against a newer record that reused the id). Returns false when nothing matched
   * (already acked, dropped or superseded). Never throws for disk errors.
   */
  async ack(id: string, seq?: number): Promise<boolean> {
    const entry = this.closed ? undefined : this.byId.get(id);
    if (!entry || (seq !== undefined && entry.record.seq !== seq)) return false;
    await this.remove(entry, 'delivered');
    return true;
  }

  /**
   * Takes a record the broker will not accept (it drops the connection on it: too large for the
   * broker, a topic its ACL forbids) out of the queue, so it stops blocking every record behind
   * it. Its file is moved to `<dir>/dead/` for inspection (kept, never deleted) and counted.
   * Returns false when no pending record matches.
   */
  async deadLetter(id: string, seq: number): Promise<boolean> {
    const entry = this.closed ? undefined : this.byId.get(id);
    if (!entry || entry.record.seq !== seq) return false;
    // Kept files of records it superseded are pointless now; its own file moves to dead/.
    const kept = entry.superseded;
    entry.superseded = [];
    entry.fileKept = true;
    await this.remove(entry, 'deadLettered');
    await this.release(kept);
    // Its own file in dead/ (its group's file may hold records still to deliver); then its copy
    // in the group is released. If dead/ cannot be written, the copy stays: after a restart the
    // record is pending again and set aside again.
    const deadDir = join(this.dir, 'dead');
    let path = join(deadDir, `${String(seq).padStart(16, '0')}${RECORD_SUFFIX}`);
    try {
      await mkdir(deadDir, { recursive: true, mode: 0o700 });
      path = await freeName(deadDir, String(seq).padStart(16, '0'));
      await this.track(this.writeFileAt(path, encodeRecord(entry.record), deadDir));
      await this.release([entry]);
    } catch (err) {
      this.emitDiskError(new OutboxDiskError('dead-letter', path, err));
    }
    return true;
  }

  depth(): OutboxDepth {
    let oldest: Entry | null = null;
    let memoryOnly = 0;
    for (const entry of this.entries.values()) {
      oldest ??= entry;
      if (entry.settled && !entry.durable) memoryOnly++;
    }
    return {
      records: this.entries.size,
      bytes: this.bytes,
      oldestCreatedAt: oldest?.record.createdAt ?? null,
      oldestAgeMs: oldest ? Math.max(0, performance.now() - oldest.enqueuedAt) : null,
      memoryOnly,
    };
  }

  counters(): OutboxCounters {
    return { ...this.count };
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /**
   * Waits for writes and deletions in progress, tries once more to write the records that
   * exist only in memory (the disk may be back since the last retry: without this they would
   * be lost with the process), stops retrying and releases the directory. Records still only
   * in memory afterwards are lost: `depth().memoryOnly` says how many.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.retryTimer) clearInterval(this.retryTimer);
    this.retryTimer = null;
    while (this.ioInFlight.size > 0) await Promise.allSettled([...this.ioInFlight]);
    if (this.depth().memoryOnly > 0) await this.retryWrites();
    while (this.ioInFlight.size > 0) await Promise.allSettled([...this.ioInFlight]);
    await this.compact();
    await releaseLock(this.dir, this.degradedReason === null);
  }

  /**
   * Rewrites each file that still holds delivered records beside pending ones with only the
   * pending ones, so the next start does not deliver those again. (After a crash they are:
   * at-least-once, with the same ids.) A failure leaves the file as it was.
   */
  private async compact(): Promise<void> {
    const byFile = new Map<RecordFile, Entry[]>();
    for (const e of this.entries.values()) {
      if (!e.file || e.file.live === e.file.count) continue;
      const list = byFile.get(e.file);
      if (list) list.push(e);
      else byFile.set(e.file, [e]);
    }
    for (const [file, entries] of byFile) {
      // A file that also keeps a superseded record (its successor exists only in memory) stays whole.
      if (entries.length !== file.live) continue;
      const seq = entries[0]!.record.seq;
      try {
        // Same first record: the rename replaces the file in one step.
        await this.writeFile(seq, Buffer.concat(entries.map((e) => encodeRecord(e.record))));
        if (seq !== file.seq) await this.deleteFile(file.seq);
      } catch (err) {
        this.emitDiskError(new OutboxDiskError('write', this.recordPath(seq), err));
      }
    }
  }

  // ---- internals ----------------------------------------------------------------------

  private toRecord(message: OutboxMessage): OutboxRecord {
    const { id, topic } = message;
    if (typeof id !== 'string' || id.length === 0 || id.length > MAX_ID_LENGTH) {
      throw new TypeError(`outbox message id must be a string of 1..${MAX_ID_LENGTH} characters, got ${JSON.stringify(id)}`);
    }
    validatePublishTopic(topic);
    const qos = message.qos ?? 1;
    if (qos !== 0 && qos !== 1 && qos !== 2) throw new TypeError(`outbox message ${id}: qos must be 0, 1 or 2, got ${JSON.stringify(qos)}`);
    const payload = typeof message.payload === 'string'
      ? Buffer.from(message.payload, 'utf8')
      : Buffer.isBuffer(message.payload)
        ? message.payload
        : Buffer.from(message.payload.buffer, message.payload.byteOffset, message.payload.byteLength);
    return { id, seq: this.nextSeq++, topic, payload, qos, retain: message.retain ?? false, createdAt: this.clock() };
  }

  private insert(entry: Entry): void {
    this.entries.set(entry.record.seq, entry);
    this.byId.set(entry.record.id, entry);
    if (entry.record.retain) this.retainedByTopic.set(entry.record.topic, entry);
    else this.lastNonRetainedSeq = Math.max(this.lastNonRetainedSeq, entry.record.seq);
    this.bytes += entry.size;
  }

  /** Removes older pending records that `entry` makes pointless (same id, or same retained topic). */
  private supersedeFor(entry: Entry): void {
    const sameId = this.byId.get(entry.record.id);
    if (sameId) void this.remove(sameId, 'superseded', entry);
    if (entry.record.retain) {
      const sameTopic = this.retainedByTopic.get(entry.record.topic);
      // Not across an event: what was queued before it must still arrive before it.
      if (sameTopic && !sameTopic.removed && sameTopic.record.seq > this.lastNonRetainedSeq) void this.remove(sameTopic, 'superseded', entry);
    }
  }

  /** Drops the oldest records until both bounds hold. */
  private enforceBounds(): void {
    for (const entry of this.entries.values()) {
      if (this.entries.size <= this.limits.maxRecords && this.bytes <= this.limits.maxBytes) return;
      void this.remove(entry, 'dropped');
    }
  }

  private async remove(entry: Entry, reason: 'delivered' | 'dropped' | 'superseded' | 'deadLettered', successor?: Entry): Promise<void> {
    if (entry.removed) return;
    entry.removed = true;
    const { record } = entry;
    this.entries.delete(record.seq);
    if (this.byId.get(record.id) === entry) this.byId.delete(record.id);
    if (this.retainedByTopic.get(record.topic) === entry) this.retainedByTopic.delete(record.topic);
    this.bytes -= entry.size;
    this.count[reason]++;
    if (reason === 'dropped') this.emit('dropped', record);
    if (reason === 'superseded') this.emit('superseded', record);
    if (reason === 'deadLettered') return; // deadLetter() moves the file
    const files = [entry, ...entry.superseded];
    entry.superseded = [];
    if (successor && !successor.durable) {
      // Until the successor is on disk, this file (and those it kept) is the last copy.
      for (const f of files) f.fileKept = true;
      successor.superseded.push(...files);
      return;
    }
    await this.release(files);
  }

  /**
   * The records' copies on disk are no longer needed: each file that no record needs any more is
   * deleted, except one whose write is in progress (writeGroup deletes it afterwards).
   */
  private async release(entries: readonly Entry[]): Promise<void> {
    const deletions: Array<Promise<void>> = [];
    for (const e of entries) {
      e.fileKept = false;
      const file = e.file;
      if (!file) continue;
      e.file = null;
      if (--file.live === 0 && !file.writing) deletions.push(this.deleteFile(file.seq));
    }
    if (deletions.length > 0) await this.track(Promise.all(deletions).then(() => undefined));
  }

  /** Adds a record to this tick's write group; resolves with whether the group's file was written. */
  private joinGroup(entry: Entry, encoded: Buffer): Promise<boolean> {
    let group = this.group;
    if (!group) {
      let resolve!: (ok: boolean) => void;
      const done = this.track(new Promise<boolean>((r) => (resolve = r)));
      const created: WriteGroup = { entries: [], encoded: [], done, resolve };
      group = this.group = created;
      // Every enqueue of this tick has joined by the time microtasks run.
      queueMicrotask(() => {
        if (this.group === created) this.group = null;
        void this.writeGroup(created.entries, created.encoded).then(created.resolve);
      });
    }
    group.entries.push(entry);
    group.encoded.push(encoded);
    return group.done;
  }

  /** One write attempt of records as one file (temp + fsync + rename + dir fsync). Never throws. */
  private async writeGroup(group: readonly Entry[], groupEncoded: readonly Buffer[]): Promise<boolean> {
    // Records already removed in this tick (dropped, superseded by a record that is on disk) need no copy.
    const keep = group.map((e) => !e.removed || e.fileKept);
    const entries = group.filter((_, i) => keep[i]);
    const encoded = groupEncoded.filter((_, i) => keep[i]);
    if (entries.length === 0) return true;
    const file: RecordFile = { seq: entries[0]!.record.seq, count: entries.length, live: entries.length, writing: true };
    for (const e of entries) e.file = file;
    let ok = false;
    try {
      await this.track(this.writeFile(file.seq, encoded.length === 1 ? encoded[0]! : Buffer.concat(encoded)));
      ok = true;
    } catch (err) {
      this.count.failedWrites += entries.length;
      this.emitDiskError(new OutboxDiskError('write', this.recordPath(file.seq), err));
      this.scheduleRetry();
    } finally {
      file.writing = false;
    }
    if (!ok) {
      // The rename may have happened (the directory fsync failed after it): the records count as
      // memory-only now, so nothing would ever delete that file. (Before the entries let go of it,
      // so that no retry of the same name starts meanwhile.)
      await this.track(unlink(this.recordPath(file.seq)).catch(() => undefined));
      for (const e of entries) if (e.file === file) e.file = null; // only in memory: retried on its own
      return false;
    }
    for (const e of entries) {
      e.durable = true;
      const kept = e.superseded;
      e.superseded = [];
      if (kept.length > 0) void this.release(kept);
    }
    // Every record in it was removed (and let go of it) while it was being written.
    if (file.live === 0) await this.track(this.deleteFile(file.seq));
    return true;
  }

  private writeFile(seq: number, encoded: Buffer): Promise<void> {
    return this.writeFileAt(this.recordPath(seq), encoded, this.dir);
  }

  /** Writes `path` whole or not at all: temp file, fsync, rename, then `dir` fsynced. */
  private async writeFileAt(path: string, encoded: Buffer, dir: string): Promise<void> {
    const temp = path + TEMP_SUFFIX;
    try {
      const fh = await open(temp, 'w', 0o600);
      try {
        await fh.writeFile(encoded);
        if (this.fsync) await fh.sync();
      } finally {
        await fh.close();
      }
      await rename(temp, path);
    } catch (err) {
      await unlink(temp).catch(() => undefined);
      throw err;
    }
    if (dir === this.dir) await this.syncDir();
    else if (this.fsync) await fsyncDir(dir);
  }

  private async deleteFile(seq: number): Promise<void> {
    const path = this.recordPath(seq);
    try {
      await unlink(path);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      // The record may come back after a restart and be delivered twice: at-least-once holds.
      this.count.failedRemovals++;
      this.emitDiskError(new OutboxDiskError('remove', path, err));
    }
  }

  /**
   * fsyncs the directory so renames are durable. Group commit: callers that arrive while a
   * sync runs share the next one, so N concurrent enqueues cost ~2 directory syncs, not N.
   */
  private syncDir(): Promise<void> {
    if (!this.fsync) return Promise.resolve();
    if (this.nextDirSync) return this.nextDirSync;
    const previous = this.currentDirSync ?? Promise.resolve();
    const next: Promise<void> = previous
      .catch(() => undefined)
      .then(async () => {
        if (this.nextDirSync === next) this.nextDirSync = null;
        this.currentDirSync = next;
        await fsyncDir(this.dir);
      })
      .finally(() => {
        if (this.currentDirSync === next) this.currentDirSync = null;
      });
    this.nextDirSync = next;
    return next;
  }

  private scheduleRetry(): void {
    if (this.retryTimer || this.closed) return;
    this.retryTimer = setInterval(() => void this.retryWrites(), this.retryIntervalMs);
    this.retryTimer.unref();
  }

  /**
   * Re-writes records that exist only in memory, oldest first; stops the timer once all are on
   * disk. A round ends at the first write that fails: the disk is still failing, and trying
   * every other record too would cost one failed write and one diskError (a log line) per
   * record per round.
   */
  private async retryWrites(): Promise<void> {
    let remaining = 0;
    for (const entry of [...this.entries.values()]) {
      if (entry.durable || entry.file || !entry.settled || entry.removed) continue;
      const ok = await this.writeGroup([entry], [encodeRecord(entry.record)]);
      if (!ok) {
        remaining++;
        break;
      }
    }
    if (remaining === 0 && this.retryTimer) {
      clearInterval(this.retryTimer);
      this.retryTimer = null;
    }
  }

  private emitDiskError(error: OutboxDiskError): void {
    // Never use the 'error' event: without a listener it would crash the agent.
    this.emit('diskError', error);
  }

  private track<T>(promise: Promise<T>): Promise<T> {
    this.ioInFlight.add(promise);
    const forget = () => this.ioInFlight.delete(promise);
    promise.then(forget, forget);
    return promise;
  }

  private recordPath(seq: number): string {
    return join(this.dir, `${String(seq).padStart(16, '0')}${RECORD_SUFFIX}`);
  }

  private async load(): Promise<void> {
    const names = await readdir(this.dir);
    const loaded: Entry[] = [];
    for (const name of names) {
      const path = join(this.dir, name);
      if (name.endsWith(TEMP_SUFFIX)) {
        // An unfinished write: its enqueue never resolved, so nobody was promised delivery.
        await unlink(path).catch(() => undefined);
        continue;
      }
      if (!name.endsWith(RECORD_SUFFIX)) continue;
      const seqFromName = Number(name.slice(0, -RECORD_SUFFIX.length));
      let entries: Entry[];
      try {
        const records = decodeRecordFile(await readFile(path));
        if (records[0]!.record.seq !== seqFromName) throw new Error(`file name says seq ${seqFromName}, its first record says ${records[0]!.record.seq}`);
        const file: RecordFile = { seq: seqFromName, count: records.length, live: records.length, writing: false };
        entries = records.map(({ record, size }) => ({ record, size, settled: true, durable: true, file, removed: false, superseded: [], fileKept: false, enqueuedAt: performance.now() - Math.max(0, this.clock() - record.createdAt) }));
      } catch {
        await this.quarantine(name);
        continue;
      }
      loaded.push(...entries);
    }
    loaded.sort((a, b) => a.record.seq - b.record.seq);
    for (const entry of loaded) {
      // Normally a no-op; catches leftovers whose deletion failed before the restart.
      this.supersedeFor(entry);
      this.insert(entry);
      this.nextSeq = Math.max(this.nextSeq, entry.record.seq + 1);
    }
    this.enforceBounds();
    while (this.ioInFlight.size > 0) await Promise.allSettled([...this.ioInFlight]);
  }

  private async quarantine(name: string): Promise<void> {
    this.count.corrupt++;
    const corruptDir = join(this.dir, 'corrupt');
    try {
      await mkdir(corruptDir, { recursive: true, mode: 0o700 });
      await rename(join(this.dir, name), join(corruptDir, `${Date.now()}-${name}`));
    } catch (err) {
      this.emitDiskError(new OutboxDiskError('quarantine', join(this.dir, name), err));
    }
  }
}

/**
 * `<dir>/<base>.rec`, or `<base>-<n>.rec` when that is taken: sequence numbers start over when
 * an empty outbox is opened, and a record set aside must never replace an earlier one.
 */
async function freeName(dir: string, base: string): Promise<string> {
  for (let n = 0; ; n++) {
    const path = join(dir, `${base}${n === 0 ? '' : `-${n}`}${RECORD_SUFFIX}`);
    const taken = await stat(path).then(
      () => true,
      (err: NodeJS.ErrnoException) => {
        if (err.code === 'ENOENT') return false;
        throw err;
      },
    );
    if (!taken) return path;
  }
}

/** Opens an outbox; see {@link Outbox.open}. */
export function openOutbox(dir: string, limits: OutboxLimits): Promise<Outbox> {
  return Outbox.open(dir, limits);
}

function checkLimits(limits: OutboxLimits): void {
  for (const key of ['maxRecords', 'maxBytes'] as const) {
    const value = limits[key];
    if (!Number.isSafeInteger(value) || value < 1) {
      throw new RangeError(`outbox.${key} must be a positive integer, got ${JSON.stringify(value)}`);
    }
  }
  if (limits.retryIntervalMs !== undefined && !(limits.retryIntervalMs > 0)) {
    throw new RangeError(`outbox retryIntervalMs must be > 0, got ${JSON.stringify(limits.retryIntervalMs)}`);
  }
}

// ---- record file format -------------------------------------------------------------
//   'SWOB' | version u8 | header length u32BE | header JSON | payload | CRC-32 (u32BE) of all before

interface RecordHeader {
  seq: number;
  id: string;
  topic: string;
  qos: QoS;
  retain: boolean;
  createdAt: number;
  payloadBytes: number;
}

export function encodeRecord(record: OutboxRecord): Buffer {
  const header: RecordHeader = {
    seq: record.seq,
    id: record.id,
    topic: record.topic,
    qos: record.qos,
    retain: record.retain,
    createdAt: record.createdAt,
    payloadBytes: record.payload.length,
  };
  const headerBytes = Buffer.from(JSON.stringify(header), 'utf8');
  const out = Buffer.allocUnsafe(MAGIC.length + 1 + 4 + headerBytes.length + record.payload.length + 4);
  let at = MAGIC.copy(out, 0);
  out.writeUInt8(FORMAT_VERSION, at);
  at += 1;
  out.writeUInt32BE(headerBytes.length, at);
  at += 4;
  at += headerBytes.copy(out, at);
  at += record.payload.copy(out, at);
  out.writeUInt32BE(crc32(out.subarray(0, at)), at);
  return out;
}

/**
 * Parses a record file: one or more records back to back, seqs increasing. Throws an Error saying
 * what is wrong (the whole file is then set aside).
 */
export function decodeRecordFile(bytes: Buffer): Array<{ record: OutboxRecord; size: number }> {
  const out: Array<{ record: OutboxRecord; size: number }> = [];
  for (let at = 0; at < bytes.length; ) {
    let decoded: { record: OutboxRecord; size: number };
    try {
      decoded = decodeRecordAt(bytes, at);
    } catch (err) {
      throw new Error(`record ${out.length + 1} at byte ${at}: ${(err as Error).message}`);
    }
    const previous = out.at(-1)?.record.seq;
    if (previous !== undefined && decoded.record.seq <= previous) throw new Error(`record ${out.length + 1}: seq ${decoded.record.seq} after ${previous}`);
    out.push(decoded);
    at += decoded.size;
  }
  if (out.length === 0) throw new Error('empty record file');
  return out;
}

/** Parses one record (the whole of `bytes`); throws an Error saying what is wrong. */
export function decodeRecord(bytes: Buffer): OutboxRecord {
  const { record, size } = decodeRecordAt(bytes, 0);
  if (size !== bytes.length) throw new Error(`record is ${size} bytes, followed by ${bytes.length - size} more`);
  return record;
}

/** The record starting at byte `at` and its size in bytes (its header says how long it is). */
function decodeRecordAt(bytes: Buffer, at: number): { record: OutboxRecord; size: number } {
  const fixed = MAGIC.length + 1 + 4;
  const left = bytes.length - at;
  if (left < fixed + 4) throw new Error(`record is ${left} bytes, too short`);
  if (!bytes.subarray(at, at + MAGIC.length).equals(MAGIC)) throw new Error('bad magic');
  const version = bytes.readUInt8(at + MAGIC.length);
  if (version !== FORMAT_VERSION) throw new Error(`unsupported record version ${version}`);
  const headerLength = bytes.readUInt32BE(at + MAGIC.length + 1);
  if (fixed + headerLength > left - 4) throw new Error('header length past end of record');
  let header: Partial<RecordHeader>;
  try {
    header = JSON.parse(bytes.subarray(at + fixed, at + fixed + headerLength).toString('utf8')) as Partial<RecordHeader>;
  } catch {
    throw new Error('malformed record header');
  }
  const payloadBytes = header.payloadBytes;
  if (!Number.isSafeInteger(payloadBytes) || (payloadBytes as number) < 0) throw new Error('malformed record header');
  const size = fixed + headerLength + (payloadBytes as number) + 4;
  if (size > left) throw new Error(`record is ${size} bytes, past the end`);
  const end = at + size - 4;
  if (crc32(bytes.subarray(at, end)) !== bytes.readUInt32BE(end)) throw new Error('checksum mismatch');
  if (
    !Number.isSafeInteger(header.seq) ||
    typeof header.id !== 'string' ||
    typeof header.topic !== 'string' ||
    (header.qos !== 0 && header.qos !== 1 && header.qos !== 2) ||
    typeof header.retain !== 'boolean' ||
    typeof header.createdAt !== 'number'
  ) {
    throw new Error('malformed record header');
  }
  const record: OutboxRecord = {
    seq: header.seq as number,
    id: header.id,
    topic: header.topic,
    qos: header.qos,
    retain: header.retain,
    createdAt: header.createdAt,
    payload: Buffer.from(bytes.subarray(at + fixed + headerLength, end)),
  };
  return { record, size };
}

// ---- single-writer lock ------------------------------------------------------------------

/** What outbox.lock holds: enough to tell a live holder from a pid reused after a crash or reboot. */
interface LockHolder {
  pid: number;
  /** /proc/sys/kernel/random/boot_id (null off Linux). */
  bootId: string | null;
  /** Start time of the process in clock ticks since boot, /proc/<pid>/stat field 22 (null off Linux). */
  startTime: string | null;
}

async function acquireLock(dir: string): Promise<void> {
  const path = join(dir, LOCK_FILE);
  if (openDirs.has(dir)) throw new Error(`outbox ${dir} is already open in this process`);
  const me = JSON.stringify({ pid: process.pid, bootId: bootId(), startTime: processStartTime(process.pid) } satisfies LockHolder);
  try {
    await writeFile(path, me, { flag: 'wx', mode: 0o600 });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    const holder = parseLock(await readFile(path, 'utf8').catch(() => ''));
    const writtenBeforeBoot = await stat(path).then((st) => st.mtimeMs < (bootTimeMs() ?? 0), () => false);
    if (holder && holder.pid !== process.pid && !writtenBeforeBoot && holderAlive(holder)) {
      throw new Error(`outbox ${dir} is in use by process ${holder.pid} (lock file ${path})`);
    }
    // Stale lock: its process is gone, or the pid now belongs to another process (reboot, reuse).
    await writeFile(path, me, { mode: 0o600 });
  }
  openDirs.add(dir);
}

/** A lock file's holder; an older lock holds only the pid. Null when unreadable. */
function parseLock(text: string): LockHolder | null {
  const trimmed = text.trim();
  if (/^\d+$/.test(trimmed)) return { pid: Number(trimmed), bootId: null, startTime: null };
  try {
    const v = JSON.parse(trimmed) as Partial<LockHolder>;
    if (!Number.isSafeInteger(v.pid) || (v.pid as number) < 1) return null;
    return { pid: v.pid as number, bootId: typeof v.bootId === 'string' ? v.bootId : null, startTime: typeof v.startTime === 'string' ? v.startTime : null };
  } catch {
    return null;
  }
}

function holderAlive(holder: LockHolder): boolean {
  const boot = bootId();
  if (holder.bootId !== null && boot !== null && holder.bootId !== boot) return false; // written before a reboot
  if (!isAlive(holder.pid)) return false;
  const start = holder.startTime === null ? null : processStartTime(holder.pid);
  return start === null || start === holder.startTime;
}

/** When the system booted (ms since the epoch, from /proc/stat btime), null off Linux. */
function bootTimeMs(): number | null {
  try {
    const line = /^btime (\d+)$/m.exec(readFileSync('/proc/stat', 'utf8'));
    return line ? Number(line[1]) * 1000 : null;
  } catch {
    return null;
  }
}

function bootId(): string | null {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim() || null;
  } catch {
    return null;
  }
}

function processStartTime(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after "(comm)", which may itself hold spaces and parentheses; starttime is field 22.
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? null;
  } catch {
    return null;
  }
}

async function releaseLock(dir: string, ownsFile = true): Promise<void> {
  openDirs.delete(dir);
  if (ownsFile) await unlink(join(dir, LOCK_FILE)).catch(() => undefined);
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Errors of a disk that cannot be written (as opposed to a wrong path or a live lock holder). */
function isDiskFailure(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException | null)?.code;
  return code === 'EROFS' || code === 'EIO' || code === 'ENOSPC' || code === 'EDQUOT' || code === 'EACCES' || code === 'EPERM';
}
