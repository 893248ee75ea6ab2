/**
 * Model rollout without downtime: the agent watches the directory of every loaded model file;
 * when a file is replaced (an atomic rename of a new file onto the configured path is the way
 * to do it; a plain overwrite also works, it is checked once the writes settle), the new file is
 * verified and, when good, swapped into the running pipeline between two batches.
 *
 * Verification of a candidate, in order (the first failure rejects it):
 *   1. read + sha256 (the same digest as the serving model: nothing to do);
 *   2. the input size its manifest declares, before anything is loaded (a model for another
 *      input size cannot serve these crops: no worker or session is started for it);
 *   3. manifest (also checked against the graph) and ONNX session (the model loader), built on
 *      the SAME backbone sha256;
 *   4. same input size and normalization as the serving model (crops already preprocessed for
 *      the next batch must stay valid);
 *   5. a smoke inference on the last crop the serving model scored normal (kept in memory by the
 *      batcher), or — before any crop was scored — on a synthetic input of all zeros (the mean
 *      image after normalization), through BOTH paths: predict (the graph's anomaly map) and
 *      scan (the path the agent's pipeline runs; forced anomalous so that its CPU-built map is
 *      made too); every score and anomaly-map value must be finite.
 * A rejected candidate is logged, counted and released; the old model keeps serving (the bad
 * file stays on disk; `shelfwatch model rollback` or a good file fixes it).
 *
 * Swap: the registry points every config name of the file at the new model, the pipeline's
 * batchers run every later batch on it, the batch running now finishes on the old one, then the
 * old session is released. The bytes of the model being replaced become `<path>.previous`
 * (for rollback), so the agent keeps a copy of the serving file under
 * `<stateDir>/models/serving/<digest>.onnx` — the configured path may already hold other bytes
 * by the time a swap happens. Two configured files with identical bytes share one copy: a copy
 * is removed only when no loaded model (nor a swap in progress) still has its digest. When no
 * copy of the replaced bytes can be found or written, the older `<path>.previous` is removed
 * rather than left behind: a rollback must never restore a model the path did not serve last.
 *
 * MQTT (`<root>/command/model`): `{ model, url, sha256 }` downloads the file with
 * downloadVerified into `<stateDir>/models/`, verifies it as above, installs it atomically on
 * the configured path and swaps it in. A download that fails (HTTP error, too large, wrong hash)
 * is a rejection like a bad file: logged with the (password-less) URL and the reason, counted.
 * A payload that is not JSON or not `{ model, url, sha256 }` is refused with the problem named.
 * One command per model file at a time: a repeat joins the one in progress, a different one
 * abandons it (its download is aborted, its part file removed), and stop() abandons it too.
 * `<root>/command/rollback`: `{ model }` restores
 * `<path>.previous` (see commands/model-rollback.ts); the watcher then picks it up.
 */
import { createHash } from 'node:crypto';
import { watch, type FSWatcher } from 'node:fs';
import { copyFile, mkdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { z } from 'zod';
import type { ProviderChoice } from '../models/execution-provider.js';
import { loadInferenceModel, type InferenceModel } from '../models/load-model.js';
import { peekManifestText } from '../models/manifest.js';
import { issueLines } from '../models/zod-issues.js';
import type { BatchModel } from '../pipelines/inference-batcher.js';
import { restorePreviousModel, previousModelPath } from './commands/model-rollback.js';
import { redactText, redactUrl } from './redact.js';
import { DownloadError, downloadVerified, sha256File } from './download.js';
import type { Logger } from './logger.js';
import type { ModelRegistry } from './model-registry.js';
import type { CommandMessage } from './mqtt/client.js';

/** What the rollout needs of the running pipeline (ShelfPipeline has it). */
export interface ModelSwapTarget {
  swapModel(name: string, model: BatchModel): Promise<void>;
  lastNormalInput(name: string): Float32Array | null;
}

export interface ModelRolloutOptions {
  registry: ModelRegistry;
  pipeline: ModelSwapTarget;
  /** Serving copies and downloads go under `<stateDir>/models/`. */
  stateDir: string;
  provider: ProviderChoice;
  /** Load candidates in a worker thread, as the serving models are (default true). */
  workerThread?: boolean;
  /** onnxruntime CPU threads per model (0 or undefined = one per core). */
  intraOpThreads?: number;
  /** Let idle onnxruntime threads spin (default true, onnxruntime's). */
  allowSpinning?: boolean;
  /** Sessions per model, each in its own worker thread (default 1). */
  replicas?: number;
  logger: Logger;
  /** Quiet time after the last change of a file before it is checked (default 300 ms). */
  debounceMs?: number;
  /** After every swap (e.g. re-publish the status, count it). */
  onSwap?: (swap: ModelSwap) => void;
  /** After every refused candidate, with the config names of the file (e.g. count it). */
  onReject?: (rejection: ModelRejection, names: string[]) => void;
  /** Wall clock for the `at` of swaps and rejections (default Date.now). */
  clock?: () => number;
  /** Largest download accepted by the `model` command (default 512 MiB). */
  maxDownloadBytes?: number;
}

export interface ModelSwap {
  path: string;
  /** Config names using the file. */
  names: string[];
  from: string;
  to: string;
}

export interface ModelRejection {
  path: string;
  /** Of the refused bytes; for a failed download, the sha256 the command asked for. */
  digest: string | null;
  reason: string;
  at: number;
}

export interface ModelRolloutStats {
  swaps: number;
  rejections: number;
  lastSwap: (ModelSwap & { at: number }) | null;
  lastRejection: ModelRejection | null;
}

export type RolloutResult = { outcome: 'swapped'; swap: ModelSwap } | { outcome: 'unchanged'; digest: string } | { outcome: 'rejected'; rejection: ModelRejection };

/** A `model` command was dropped before it swapped anything: a newer one came, or the agent stopped. */
export class ModelCommandAbandonedError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ModelCommandAbandonedError';
  }
}

/** A candidate failed verification; the message says why. */
export class ModelRejectedError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ModelRejectedError';
  }
}

const HEX64 = /^[0-9a-fA-F]{64}$/;
const ID = /^[A-Za-z0-9_-]+$/;

/** Payload of `<root>/command/model`. */
export const modelCommandSchema = z.strictObject({
  model: z.string().regex(ID, 'expected a model name of letters, digits, _ and -'),
  url: z.url({ protocol: /^https?$/, error: 'expected an http(s) URL' }),
  sha256: z.string().regex(HEX64, 'expected 64 hex digits'),
});
export type ModelCommand = z.output<typeof modelCommandSchema>;

/** Payload of `<root>/command/rollback`. */
export const rollbackCommandSchema = z.strictObject({ model: z.string().regex(ID, 'expected a model name of letters, digits, _ and -') });

const sha256 = (bytes: Uint8Array): string => createHash('sha256').update(bytes).digest('hex');

/**
 * The inputSize a model file's manifest declares, read without validating or loading anything;
 * undefined when the bytes or the manifest cannot be read (the model loader then says why).
 */
function declaredInputSize(bytes: Uint8Array): unknown {
  const text = peekManifestText(bytes);
  if (text === null) return undefined;
  try {
    return (JSON.parse(text) as { inputSize?: unknown } | null)?.inputSize;
  } catch {
    return undefined;
  }
}

function allFinite(values: Float32Array): boolean {
  for (let i = 0; i < values.length; i++) if (!Number.isFinite(values[i]!)) return false;
  return true;
}

export class ModelRollout {
  private readonly watchers: FSWatcher[] = [];
  private readonly timers = new Map<string, NodeJS.Timeout>();
  /** One check at a time per file. */
  private readonly chains = new Map<string, Promise<unknown>>();
  /** Digest last rejected per file: the same bytes are not re-verified on every fs event. */
  private readonly rejectedDigest = new Map<string, string>();
  private readonly counters: ModelRolloutStats = { swaps: 0, rejections: 0, lastSwap: null, lastRejection: null };
  /** The `model` command in progress per file: a repeat joins it, a newer one aborts it. */
  private readonly installs = new Map<string, { sha256: string; abort: AbortController; done: Promise<RolloutResult> }>();
  private stopped = false;
  private readonly servingDir: string;
  /** Digests being swapped in (serving copy written, registry not yet pointing at them), with a count. */
  private readonly incoming = new Map<string, number>();
  /** Writes, copies and removals of serving copies, one at a time (checks run per file, in parallel). */
  private servingOps: Promise<unknown> = Promise.resolve();

  constructor(private readonly options: ModelRolloutOptions) {
    this.servingDir = join(options.stateDir, 'models', 'serving');
  }

  stats(): ModelRolloutStats {
    return { ...this.counters };
  }

  /** Keeps a copy of every serving file and starts watching their directories. */
  async start(): Promise<void> {
    await mkdir(this.servingDir, { recursive: true });
    const changedSinceLoad: string[] = [];
    for (const file of this.options.registry.files()) {
      const bytes = await readFile(file.path).catch(() => null);
      if (bytes && sha256(bytes) === file.model.digest) await this.keepServingCopy(file.model.digest, bytes);
      else changedSinceLoad.push(file.path);
    }
    const byDir = new Map<string, Set<string>>();
    for (const { path } of this.options.registry.files()) {
      const names = byDir.get(dirname(path)) ?? new Set<string>();
      names.add(basename(path));
      byDir.set(dirname(path), names);
    }
    for (const [dir, files] of byDir) {
      const watcher = watch(dir, { persistent: false }, (_event, filename) => {
        if (filename && files.has(filename.toString())) this.schedule(join(dir, filename.toString()));
      });
      watcher.on('error', (err) => this.options.logger.warn('model directory watch failed; hot swap off for it', { dir, error: err }));
      this.watchers.push(watcher);
    }
    this.options.logger.info('watching model files for replacement', { dirs: [...byDir.keys()] });
    // Replaced between load and now (no serving copy of those bytes): check them now.
    for (const path of changedSinceLoad) this.schedule(path);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    for (const w of this.watchers.splice(0)) w.close();
    for (const t of this.timers.values()) clearTimeout(t);
    this.timers.clear();
    // A download still running would otherwise outlive the agent, then swap into a stopped pipeline.
    const installs = [...this.installs.values()];
    for (const i of installs) i.abort.abort(new ModelCommandAbandonedError('the agent is stopping'));
    await Promise.allSettled([...installs.map((i) => i.done), ...this.chains.values()]);
  }

  /** Verifies the file now at `path` (a loaded model file) and swaps it in when good. */
  checkFile(path: string): Promise<RolloutResult> {
    const file = resolve(path);
    return this.serialized(file, async () => {
      let bytes: Buffer;
      try {
        bytes = await readFile(file);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code === 'ENOENT') return this.reject(file, null, `${file} no longer exists (deleted or moved away before it could be checked)`);
        return this.reject(file, null, `cannot read ${file}: ${code ?? (err as Error).message}`);
      }
      return this.verifyAndSwap(file, bytes, { remember: true });
    });
  }

  /**
   * `<root>/command/model`: downloads the model, verifies it, installs it on the configured
   * path (the file it replaces becomes `<path>.previous`) and swaps it in. A failed download is
   * a rejection (logged, counted). One command per file at a time: a repeat of the command in
   * progress joins it; a different one aborts it (it rejects with ModelCommandAbandonedError),
   * so the newest command wins even when an older download finishes later.
   */
  async install(command: ModelCommand): Promise<RolloutResult> {
    if (this.stopped) throw new ModelCommandAbandonedError('the agent is stopping');
    const file = this.fileOf(command.model);
    const wanted = command.sha256.toLowerCase();
    const running = this.installs.get(file);
    if (running?.sha256 === wanted) {
      this.options.logger.info('model command: that model is already being installed', { model: command.model, digest: wanted });
      return running.done;
    }
    running?.abort.abort(new ModelCommandAbandonedError(`superseded by a newer model command (sha256 ${wanted.slice(0, 12)}…, ${redactUrl(command.url)})`));
    const abort = new AbortController();
    const done = this.downloadAndSwap(file, command, abort.signal).finally(() => {
      if (this.installs.get(file)?.abort === abort) this.installs.delete(file);
    });
    this.installs.set(file, { sha256: wanted, abort, done });
    return done;
  }

  private async downloadAndSwap(file: string, command: ModelCommand, signal: AbortSignal): Promise<RolloutResult> {
    const dest = join(this.options.stateDir, 'models', `${command.model}-${command.sha256.toLowerCase().slice(0, 12)}.onnx`);
    let downloaded;
    try {
      downloaded = await downloadVerified({ urls: [command.url], sha256: command.sha256, dest, maxBytes: this.options.maxDownloadBytes ?? 512 * 1024 * 1024, signal });
    } catch (err) {
      if (signal.aborted) throw signal.reason;
      if (!(err instanceof DownloadError)) throw err;
      // Reasons reach the log and the retained status: no password of the URL in them.
      // A reason may name another URL (where a redirect led): redact every URL in it too.
      const reasons = err.attempts.map((a) => `${redactUrl(a.url)}: ${redactText(a.reason)}`).join('; ');
      return this.reject(file, command.sha256.toLowerCase(), `model command: download failed from ${reasons}`, false);
    }
    const bytes = await readFile(downloaded.path);
    return this.serialized(file, async () => {
      // Queued behind another check while a newer command came, or the agent stopped meanwhile.
      if (signal.aborted) throw signal.reason;
      // Verify BEFORE touching the configured path: a bad download never replaces the file there.
      const result = await this.verifyAndSwap(file, bytes, { remember: false, origin: redactUrl(command.url), beforeSwap: () => this.installBytes(file, bytes) });
      if (result.outcome === 'rejected') await rm(downloaded.path, { force: true });
      return result;
    });
  }

  /** Handler for `<root>/command/model`. */
  readonly onModelCommand = async (command: CommandMessage): Promise<void> => {
    const payload = this.payloadOf(command, 'model command refused');
    if (payload === undefined) return;
    const parsed = modelCommandSchema.safeParse(payload);
    if (!parsed.success) {
      this.options.logger.warn('model command refused', { topic: command.topic, problems: issueLines(parsed.error.issues, '(payload)') });
      return;
    }
    try {
      const result = await this.install(parsed.data);
      if (result.outcome === 'unchanged') this.options.logger.info('model command: that model is already serving', { model: parsed.data.model, digest: result.digest });
    } catch (err) {
      if (err instanceof ModelCommandAbandonedError) {
        this.options.logger.warn('model command abandoned', { model: parsed.data.model, url: parsed.data.url, sha256: parsed.data.sha256, reason: err.message });
        return;
      }
      this.options.logger.warn('model command failed', { model: parsed.data.model, url: parsed.data.url, error: err as Error });
    }
  };

  /** Handler for `<root>/command/rollback`: restores `<path>.previous`; the watcher swaps it in. */
  readonly onRollbackCommand = async (command: CommandMessage): Promise<void> => {
    const payload = this.payloadOf(command, 'rollback command refused');
    if (payload === undefined) return;
    const parsed = rollbackCommandSchema.safeParse(payload);
    if (!parsed.success) {
      this.options.logger.warn('rollback command refused', { topic: command.topic, problems: issueLines(parsed.error.issues, '(payload)') });
      return;
    }
    try {
      const file = this.fileOf(parsed.data.model);
      const restored = await restorePreviousModel(file);
      this.options.logger.info('rollback: previous model file restored', { model: parsed.data.model, path: file, digest: restored.digest });
    } catch (err) {
      this.options.logger.warn('rollback command failed', { model: parsed.data.model, error: err as Error });
    }
  };

  /** The parsed JSON payload, or undefined (logged as `refused`) when it is not JSON. */
  private payloadOf(command: CommandMessage, refused: string): unknown {
    try {
      return command.json();
    } catch (err) {
      this.options.logger.warn(refused, { topic: command.topic, problems: [`(payload): ${(err as Error).message}`] });
      return undefined;
    }
  }

  private fileOf(name: string): string {
    const entry = this.options.registry.get(name);
    if (!entry) throw new Error(`no loaded model called '${name}' (loaded: ${this.options.registry.names().join(', ') || 'none'})`);
    return entry.path;
  }

  private schedule(path: string): void {
    if (this.stopped) return;
    clearTimeout(this.timers.get(path));
    this.timers.set(
      path,
      setTimeout(() => {
        this.timers.delete(path);
        if (!this.stopped) void this.checkFile(path).catch((err: Error) => this.options.logger.error('model check failed unexpectedly', { path, error: err }));
      }, this.options.debounceMs ?? 300),
    );
  }

  private serialized<T>(file: string, task: () => Promise<T>): Promise<T> {
    const next = (this.chains.get(file) ?? Promise.resolve()).catch(() => undefined).then(task);
    this.chains.set(file, next);
    return next;
  }

  /** `opts.origin` names the bytes in a rejection (default `file`; the URL of a downloaded model). */
  private async verifyAndSwap(file: string, bytes: Uint8Array, opts: { remember: boolean; origin?: string; beforeSwap?: () => Promise<void> }): Promise<RolloutResult> {
    const serving = this.options.registry.files().find((f) => f.path === file);
    if (!serving) throw new Error(`no loaded model uses the file ${file}`);
    const digest = sha256(bytes);
    if (digest === serving.model.digest) {
      this.rejectedDigest.delete(file);
      return { outcome: 'unchanged', digest };
    }
    if (opts.remember && this.rejectedDigest.get(file) === digest) return { outcome: 'unchanged', digest: serving.model.digest };

    let candidate: InferenceModel;
    try {
      candidate = await this.verify(opts.origin ?? file, bytes, serving.model, serving.names[0]!);
    } catch (err) {
      if (!(err instanceof ModelRejectedError)) throw err;
      return this.reject(file, digest, err.message, opts.remember);
    }
    // Until the registry points at it, no other swap may remove a serving copy of these bytes.
    this.incoming.set(candidate.digest, (this.incoming.get(candidate.digest) ?? 0) + 1);
    try {
      await opts.beforeSwap?.();
      // The bytes being replaced become <path>.previous, from the serving copy.
      const old = serving.model;
      await this.writePrevious(file, old.digest);
      await this.keepServingCopy(candidate.digest, bytes);
      this.options.registry.replaceFile(file, candidate);
      await Promise.all(serving.names.map((name) => this.options.pipeline.swapModel(name, candidate)));
      // Every batch on the old session has finished: release it, and its serving copy unless
      // another loaded file holds the same bytes.
      await old.release().catch((err: Error) => this.options.logger.warn('old model session did not release cleanly', { path: file, error: err }));
      await this.dropServingCopy(old.digest);
    } catch (err) {
      await candidate.release().catch(() => undefined);
      throw err;
    } finally {
      const n = (this.incoming.get(candidate.digest) ?? 1) - 1;
      if (n > 0) this.incoming.set(candidate.digest, n);
      else this.incoming.delete(candidate.digest);
    }
    this.rejectedDigest.delete(file);
    const swap: ModelSwap = { path: file, names: serving.names, from: serving.model.digest, to: candidate.digest };
    this.counters.swaps++;
    this.counters.lastSwap = { ...swap, at: (this.options.clock ?? Date.now)() };
    this.options.logger.info('model swapped in', { path: file, models: swap.names, from: swap.from.slice(0, 12), to: swap.to.slice(0, 12), digest: swap.to });
    try {
      this.options.onSwap?.(swap);
    } catch (err) {
      this.options.logger.warn('onSwap hook failed', { error: err as Error });
    }
    return { outcome: 'swapped', swap };
  }

  /** Steps 2–5 of the header; resolves with the loaded candidate or throws ModelRejectedError. */
  private async verify(origin: string, bytes: Uint8Array, serving: InferenceModel, name: string): Promise<InferenceModel> {
    const declared = declaredInputSize(bytes);
    if (declared !== undefined && declared !== serving.manifest.inputSize) {
      throw new ModelRejectedError(`${origin}: input size ${String(declared)} px, the serving model takes ${serving.manifest.inputSize} px`);
    }
    let candidate: InferenceModel;
    try {
      candidate = await loadInferenceModel(
        bytes,
        {
          provider: this.options.provider,
          workerThread: this.options.workerThread,
          intraOpThreads: this.options.intraOpThreads || undefined,
          allowSpinning: this.options.allowSpinning,
          replicas: this.options.replicas,
          expectBackboneSha256: serving.manifest.backbone.sha256,
        },
        origin,
      );
    } catch (err) {
      throw new ModelRejectedError((err as Error).message);
    }
    try {
      const a = serving.manifest;
      const b = candidate.manifest;
      if (b.inputSize !== a.inputSize) throw new ModelRejectedError(`${origin}: input size ${b.inputSize} px, the serving model takes ${a.inputSize} px`);
      if (JSON.stringify(b.normalization) !== JSON.stringify(a.normalization)) {
        throw new ModelRejectedError(`${origin}: normalization ${JSON.stringify(b.normalization)} differs from the serving model's ${JSON.stringify(a.normalization)}`);
      }
      const stored = this.options.pipeline.lastNormalInput(name);
      const what = stored ? 'the last normal crop' : 'a synthetic (all-zero) input';
      const input = stored ?? new Float32Array(3 * b.inputSize * b.inputSize);
      // predict: the graph's own anomaly map (what the evaluator and `infer` use).
      let out;
      try {
        [out] = await candidate.predict(input, 1, []);
      } catch (err) {
        throw new ModelRejectedError(`${origin}: smoke inference (predict) failed: ${(err as Error).message}`);
      }
      if (!out || !Number.isFinite(out.score)) throw new ModelRejectedError(`${origin}: smoke inference (predict) on ${what} gave a non-finite score (${out?.score})`);
      if (!allFinite(out.anomalyMap)) throw new ModelRejectedError(`${origin}: smoke inference (predict) on ${what} gave non-finite anomaly-map values`);
      // scan: the path the running pipeline takes. The image threshold -Infinity makes the crop
      // anomalous, so the map scan builds from the patch distances is made and checked as well.
      let scanned;
      try {
        [scanned] = await candidate.scan(input, 1, [{ image: Number.NEGATIVE_INFINITY }]);
      } catch (err) {
        throw new ModelRejectedError(`${origin}: smoke inference (scan, the agent's path) failed: ${(err as Error).message}`);
      }
      if (!scanned || !Number.isFinite(scanned.score)) throw new ModelRejectedError(`${origin}: smoke inference (scan) on ${what} gave a non-finite score (${scanned?.score})`);
      if (!scanned.anomalyMap || !allFinite(scanned.anomalyMap)) throw new ModelRejectedError(`${origin}: smoke inference (scan) on ${what} gave ${scanned.anomalyMap ? 'non-finite anomaly-map values' : 'no anomaly map'}`);
      return candidate;
    } catch (err) {
      await candidate.release().catch(() => undefined);
      throw err;
    }
  }

  private reject(file: string, digest: string | null, reason: string, remember = true): RolloutResult {
    const rejection: ModelRejection = { path: file, digest, reason, at: (this.options.clock ?? Date.now)() };
    if (remember && digest) this.rejectedDigest.set(file, digest);
    this.counters.rejections++;
    this.counters.lastRejection = rejection;
    this.options.logger.warn('model file rejected; the serving model stays', { path: file, digest, reason, rejections: this.counters.rejections });
    const names = this.options.registry.files().find((f) => f.path === file)?.names ?? [];
    try {
      this.options.onReject?.(rejection, names);
    } catch (err) {
      this.options.logger.warn('onReject hook failed', { error: err as Error });
    }
    return { outcome: 'rejected', rejection };
  }

  /** Runs `task` after every serving-copy operation asked for before it. */
  private servingOp<T>(task: () => Promise<T>): Promise<T> {
    const next = this.servingOps.catch(() => undefined).then(task);
    this.servingOps = next;
    return next;
  }

  private servingCopyPath(digest: string): string {
    return join(this.servingDir, `${digest}.onnx`);
  }

  private keepServingCopy(digest: string, bytes: Uint8Array): Promise<void> {
    return this.servingOp(async () => {
      const dest = this.servingCopyPath(digest);
      if (await stat(dest).then((s) => s.size === bytes.length, () => false)) return;
      const tmp = `${dest}.${process.pid}.tmp`;
      await writeFile(tmp, bytes);
      await rename(tmp, dest);
    });
  }

  /** Removes the serving copy of `digest` unless a loaded file (or a swap in progress) still has those bytes. */
  private dropServingCopy(digest: string): Promise<void> {
    return this.servingOp(async () => {
      const users = this.options.registry.files().filter((f) => f.model.digest === digest);
      if (users.length > 0 || this.incoming.has(digest)) return;
      await rm(this.servingCopyPath(digest), { force: true });
    });
  }

  /**
   * `<path>.previous` := the bytes of `digest` (tmp + rename: never half-written), from the serving
   * copy, else from another configured file that still holds them. When neither works, the older
   * `<path>.previous` is removed: it holds a model this path did not serve last, and a rollback
   * to it would restore the wrong model.
   */
  private writePrevious(file: string, digest: string): Promise<void> {
    return this.servingOp(async () => {
      const dest = previousModelPath(file);
      const tmp = `${dest}.${process.pid}.tmp`;
      const sources = [this.servingCopyPath(digest), ...this.options.registry.files().filter((f) => f.path !== file && f.model.digest === digest).map((f) => f.path)];
      const failures: string[] = [];
      for (const source of sources) {
        try {
          // Copied, then the copy hashed: a configured file may change at any moment.
          await copyFile(source, tmp);
          if ((await sha256File(tmp)) !== digest) {
            await rm(tmp, { force: true });
            continue;
          }
          await rename(tmp, dest);
          return;
        } catch (err) {
          await rm(tmp, { force: true }).catch(() => undefined);
          failures.push(`${source}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
        }
      }
      const removed = await rm(dest).then(
        () => true,
        () => false,
      );
      this.options.logger.warn('could not keep the replaced model for rollback', {
        path: file,
        previous: dest,
        digest,
        reason: failures.length > 0 ? failures.join('; ') : 'no copy of those bytes is left',
        ...(removed ? { removed: `the older ${dest} (a rollback would have restored a model this path did not serve last)` } : {}),
      });
    });
  }

  /** Writes `bytes` onto the configured path atomically (the watcher then sees an unchanged digest). */
  private async installBytes(file: string, bytes: Uint8Array): Promise<void> {
    const tmp = join(dirname(file), `.${basename(file)}.${process.pid}.tmp`);
    try {
      await writeFile(tmp, bytes);
      await rename(tmp, file);
    } catch (err) {
      // A full disk must not leave a half-written file beside the model.
      await rm(tmp, { force: true }).catch(() => undefined);
      throw err;
    }
  }
}
