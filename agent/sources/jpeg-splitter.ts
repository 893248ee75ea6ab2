/**
 * Split a byte stream of concatenated JPEGs (ffmpeg `image2pipe`, MJPEG) into whole images.
 *
 * A naive scan for FF D9 breaks on an end marker inside a segment (an EXIF thumbnail in APP1,
 * say), so this is a marker-aware parser: from SOI it walks the segments by their lengths; after
 * SOS it scans the entropy-coded data, where FF 00 is byte stuffing and FF D0–D7 are restart
 * markers, until a real marker: EOI ends the image, anything else (progressive JPEGs) goes back
 * to segment walking. Garbage between images is skipped; a corrupt image is dropped and the parser
 * resynchronises on the next SOI. Memory is bounded: an image over `maxFrameBytes` is dropped.
 */
type Mode = 'seek-soi' | 'marker' | 'skip' | 'entropy';

export interface JpegSplitterStats {
  frames: number;
  /** Images dropped for exceeding maxFrameBytes. */
  oversized: number;
  /** Images dropped because the marker structure was broken. */
  corrupt: number;
  /** Bytes skipped outside any image. */
  skippedBytes: number;
}

export class JpegSplitter {
  private buf: Buffer;
  private len = 0;
  /** Start of the image being parsed (valid unless mode is seek-soi). */
  private frameStart = 0;
  private pos = 0;
  private mode: Mode = 'seek-soi';
  private skipUntil = 0;
  private afterSkip: Mode = 'marker';
  readonly stats: JpegSplitterStats = { frames: 0, oversized: 0, corrupt: 0, skippedBytes: 0 };

  constructor(readonly maxFrameBytes = 32 * 1024 * 1024) {
    if (!(maxFrameBytes > 0)) throw new RangeError(`maxFrameBytes must be > 0, got ${maxFrameBytes}`);
    this.buf = Buffer.allocUnsafe(Math.max(4096, Math.min(maxFrameBytes, 256 * 1024)));
  }

  /** Bytes held for an incomplete image. */
  get buffered(): number {
    return this.len;
  }

  /** Feed a chunk; returns the images it completed (each a fresh Buffer). */
  push(chunk: Uint8Array): Buffer[] {
    this.append(chunk);
    const out: Buffer[] = [];
    this.parse(out);
    this.enforceLimit();
    this.compact();
    return out;
  }

  /** Forget any partial image (e.g. the producer restarted). */
  reset(): void {
    this.len = this.pos = this.frameStart = 0;
    this.mode = 'seek-soi';
  }

  private append(chunk: Uint8Array): void {
    if (this.len + chunk.length > this.buf.length) {
      let cap = this.buf.length * 2;
      while (cap < this.len + chunk.length) cap *= 2;
      const grown = Buffer.allocUnsafe(cap);
      this.buf.copy(grown, 0, 0, this.len);
      this.buf = grown;
    }
    this.buf.set(chunk, this.len);
    this.len += chunk.length;
  }

  private parse(out: Buffer[]): void {
    const b = this.buf;
    for (;;) {
      switch (this.mode) {
        case 'seek-soi': {
          let i = this.pos;
          while (i + 1 < this.len && !(b[i] === 0xff && b[i + 1] === 0xd8)) i++;
          if (i + 1 >= this.len) {
            // Keep a trailing 0xFF: it may be the first half of an SOI.
            const keep = this.len > 0 && b[this.len - 1] === 0xff ? this.len - 1 : this.len;
            this.stats.skippedBytes += keep - this.frameStart;
            this.pos = this.frameStart = keep;
            return;
          }
          this.stats.skippedBytes += i - this.frameStart;
          this.frameStart = i;
          this.pos = i + 2;
          this.mode = 'marker';
          break;
        }
        case 'marker': {
          if (this.pos + 1 >= this.len) return;
          if (b[this.pos] !== 0xff) {
            this.corrupt();
            break;
          }
          const m = b[this.pos + 1];
          if (m === 0xff) {
            this.pos++; // fill byte before a marker
          } else if (m === 0xd9) {
            const end = this.pos + 2;
            // An image that arrived whole in one chunk never met enforceLimit: check it here too.
            if (end - this.frameStart > this.maxFrameBytes) this.stats.oversized++;
            else {
              out.push(Buffer.from(b.subarray(this.frameStart, end)));
              this.stats.frames++;
            }
            this.frameStart = this.pos = end;
            this.mode = 'seek-soi';
          } else if (m === 0xd8) {
            this.stats.corrupt++; // a new image began before this one ended
            this.frameStart = this.pos;
            this.pos += 2;
          } else if ((m >= 0xd0 && m <= 0xd7) || m === 0x01) {
            this.pos += 2; // markers without a length
          } else if (m === 0x00) {
            this.corrupt();
          } else {
            if (this.pos + 3 >= this.len) return;
            const length = b.readUInt16BE(this.pos + 2);
            if (length < 2) {
              this.corrupt();
              break;
            }
            this.skipUntil = this.pos + 2 + length;
            this.afterSkip = m === 0xda ? 'entropy' : 'marker';
            this.mode = 'skip';
          }
          break;
        }
        case 'skip': {
          if (this.len < this.skipUntil) return;
          this.pos = this.skipUntil;
          this.mode = this.afterSkip;
          break;
        }
        case 'entropy': {
          let i = this.pos;
          for (;;) {
            while (i < this.len && b[i] !== 0xff) i++;
            if (i + 1 >= this.len) {
              this.pos = i; // resume at the 0xFF (or the end)
              return;
            }
            const next = b[i + 1];
            if (next === 0x00 || (next >= 0xd0 && next <= 0xd7)) i += 2; // stuffing / restart
            else if (next === 0xff) i += 1; // fill byte
            else break;
          }
          this.pos = i;
          this.mode = 'marker';
          break;
        }
      }
    }
  }

  private corrupt(): void {
    this.stats.corrupt++;
    this.mode = 'seek-soi';
    // Resume the search just after the broken image's SOI; everything before counts as skipped.
    this.pos = this.frameStart + 2;
  }

  private enforceLimit(): void {
    if (this.mode !== 'seek-soi' && this.len - this.frameStart > this.maxFrameBytes) {
      this.stats.oversized++;
      this.frameStart = this.pos = this.len;
      this.mode = 'seek-soi';
    }
  }

  /** Drop consumed bytes so the buffer only holds the image in progress. */
  private compact(): void {
    const drop = this.frameStart;
    if (drop === 0) return;
    this.buf.copyWithin(0, drop, this.len);
    this.len -= drop;
    this.pos -= drop;
    this.skipUntil -= drop;
    this.frameStart = 0;
  }
}
