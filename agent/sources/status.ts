/**
 * The bookkeeping every source shares: state, counters, frame stamping and error logging.
 * One tracker per source instance, so sequence numbers stay monotonic across reconnects
 * and resubscriptions (frame ids stay unique).
 */
import { BehaviorSubject, type Observable } from 'rxjs';
import type { Frame } from '../../pipelines/types.js';
import type { Clock, LogLevel, SourceKind, SourceLogger, SourceState, SourceStatus } from './types.js';

export class SourceTracker {
  private readonly subject: BehaviorSubject<SourceStatus>;
  private sequence = 0;
  readonly status$: Observable<SourceStatus>;

  constructor(
    readonly camera: string,
    readonly kind: SourceKind,
    private readonly clock: Clock,
    private readonly logger: SourceLogger,
  ) {
    this.subject = new BehaviorSubject<SourceStatus>({
      state: 'stopped',
      lastFrameAt: null,
      frames: 0,
      errors: 0,
      lastError: null,
      reconnects: 0,
    });
    this.status$ = this.subject.asObservable();
  }

  status(): SourceStatus {
    return { ...this.subject.value };
  }

  get state(): SourceState {
    return this.subject.value.state;
  }

  setState(state: SourceState): void {
    if (this.subject.value.state === state) return;
    this.log('debug', `source ${state}`, { state });
    this.update({ state });
  }

  /** The consumer unsubscribed or the source ended; a failed source stays failed. */
  stop(): void {
    if (this.subject.value.state !== 'failed') this.setState('stopped');
  }

  /** Stamp encoded bytes as the next Frame of this source and count it; the source is running. */
  frame(data: Buffer, origin: string): Frame {
    const capturedAt = this.clock();
    const sequence = this.sequence++;
    const s = this.subject.value;
    this.update({ state: 'running', frames: s.frames + 1, lastFrameAt: capturedAt });
    return { id: `${this.camera}-${capturedAt}-${sequence}`, camera: this.camera, capturedAt, sequence, data, origin };
  }

  /** Count and log an error; the source keeps going. */
  error(err: unknown, fields: Record<string, unknown> = {}, level: LogLevel = 'warn'): string {
    const message = err instanceof Error ? err.message : String(err);
    const s = this.subject.value;
    this.update({ errors: s.errors + 1, lastError: message });
    this.log(level, message, fields);
    return message;
  }

  /** A retry/restart after a failure is scheduled in `delayMs`. */
  reconnecting(delayMs: number): void {
    const s = this.subject.value;
    this.update({ state: 'reconnecting', reconnects: s.reconnects + 1 });
    this.log('info', `source reconnecting in ${delayMs} ms`, { delayMs, reconnects: s.reconnects + 1 });
  }

  log(level: LogLevel, msg: string, fields: Record<string, unknown> = {}): void {
    this.logger(level, msg, { camera: this.camera, source: this.kind, ...fields });
  }

  private update(patch: Partial<SourceStatus>): void {
    this.subject.next({ ...this.subject.value, ...patch });
  }
}
