/**
 * The optional folder of event thumbnails (`thumbnails.dir`): every new/update event's JPEG as
 * `<event id>-new.jpg` or `<event id>-update-<frame ms>.jpg`, of which the newest `keep` stay.
 *
 * An agent runs for months, and a folder that only grows fills the disk (a busy camera makes
 * thousands of thumbnails a day): past `keep` files the oldest are deleted. "Oldest" is the order
 * of writing; files left by an earlier run count too, ordered by modification time, before any of
 * this run's. Only names of the agent's own pattern are counted or deleted, so the folder can
 * hold other files. Writes and deletions run one at a time, in order; nothing here throws: a
 * failure goes to `onError` and the next write is tried anyway.
 */
import { mkdir, readdir, stat, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

/** `<camera>-<slot>-<start ms>-<8 hex>-new.jpg` or `…-update-<frame ms>.jpg` (pipelines/events.ts eventId). */
export const THUMBNAIL_FILE_RE = /^[A-Za-z0-9_-]+-\d+-[0-9a-f]{8}-(?:new|update-\d+)\.jpg$/;

export type ThumbnailFolderError = (message: string, fields: { file: string; error: Error }) => void;

export class ThumbnailFolder {
  /** The folder's thumbnails, oldest first; null until the folder has been read. */
  private files: string[] | null = null;
  private names = new Set<string>();
  private chain: Promise<void> = Promise.resolve();
  private deletedCount = 0;

  constructor(
    readonly dir: string,
    /** How many thumbnail files to keep (≥ 1). */
    readonly keep: number,
    private readonly onError: ThumbnailFolderError,
  ) {
    if (!Number.isInteger(keep) || keep < 1) throw new RangeError(`thumbnail folder ${dir}: keep must be an integer ≥ 1, got ${String(keep)}`);
  }

  /** The file name for an event's thumbnail. */
  static fileName(eventId: string, type: 'new' | 'update', frameTime: number): string {
    return `${eventId}-${type === 'new' ? 'new' : `update-${frameTime}`}.jpg`;
  }

  /** Queues a write of `jpeg` as `name` (then deletes the oldest beyond `keep`); resolves when done. */
  write(name: string, jpeg: Buffer): Promise<void> {
    const next = this.chain.then(() => this.writeAndPrune(name, jpeg));
    this.chain = next;
    return next;
  }

  /** Resolves when every queued write has finished. */
  idle(): Promise<void> {
    return this.chain;
  }

  /** Files deleted to stay within `keep`, since this object was made. */
  get deleted(): number {
    return this.deletedCount;
  }

  private async writeAndPrune(name: string, jpeg: Buffer): Promise<void> {
    const file = join(this.dir, name);
    try {
      if (this.files === null) {
        this.files = await this.existing();
        this.names = new Set(this.files);
      }
      await writeFile(file, jpeg);
    } catch (err) {
      this.onError('could not write thumbnail file', { file, error: err as Error });
      return;
    }
    const files = this.files;
    if (this.names.has(name)) files.splice(files.indexOf(name), 1); // an event re-delivered after a restart rewrites its file
    files.push(name);
    this.names.add(name);
    while (files.length > this.keep) {
      const oldest = files.shift()!;
      this.names.delete(oldest);
      try {
        await unlink(join(this.dir, oldest));
        this.deletedCount++;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') this.onError('could not delete old thumbnail file', { file: join(this.dir, oldest), error: err as Error });
      }
    }
  }

  /** The folder's thumbnails from earlier runs, oldest first (creates the folder if missing). */
  private async existing(): Promise<string[]> {
    await mkdir(this.dir, { recursive: true });
    const names = (await readdir(this.dir)).filter((n) => THUMBNAIL_FILE_RE.test(n));
    const dated = await Promise.all(
      names.map(async (n) => {
        try {
          return { n, t: (await stat(join(this.dir, n))).mtimeMs };
        } catch {
          return null; // deleted meanwhile
        }
      }),
    );
    return dated
      .filter((d): d is { n: string; t: number } => d !== null)
      .sort((a, b) => a.t - b.t || (a.n < b.n ? -1 : a.n > b.n ? 1 : 0))
      .map((d) => d.n);
  }
}
