/**
 * The agent's loaded models: each model file is loaded ONCE (one ONNX session) and shared by
 * every slot of every camera that names it — also when two config names point at the same
 * file. Only models some slot uses are loaded; a model that fails to load stops the start with
 * an error naming the config key and the file. A file can be replaced while the agent runs
 * (`replaceFile`, used by the model rollout): every name sharing it gets the new model.
 */
import { resolve } from 'node:path';
import type { ProviderChoice } from '../models/execution-provider.js';
import { loadInferenceModel, type InferenceModel } from '../models/load-model.js';
import type { AgentConfig } from './config.js';
import { resolveParallelism, type InferenceParallelism } from './inference-parallelism.js';
import type { Logger } from './logger.js';

export interface RegisteredModel {
  /** Config name (`models.<name>`). */
  name: string;
  /** Absolute path of the model file. */
  path: string;
  model: InferenceModel;
  /** `models.<name>.threshold`, when set. */
  threshold?: number;
}

/** What the status message says about a model. */
export interface ModelStatus {
  name: string;
  path: string;
  digest: string;
  provider: string;
  fallbacks: Array<{ provider: string; reason: string }>;
  inputSize: number;
  backbone: string;
  threshold: number;
  thresholdSource: 'config' | 'manifest';
  /** Slots using it, as `camera/slot`. */
  slots: string[];
  /** Where its session runs, and how often that worker died and was started again. */
  thread: 'worker' | 'main';
  workerRestarts: number;
}

export class ModelRegistry {
  private constructor(
    private readonly entries: Map<string, RegisteredModel>,
    private readonly usage: Map<string, string[]>,
    /** Sessions per model and threads per session the models were loaded with (replacements load the same way). */
    readonly parallelism: InferenceParallelism,
    private readonly logger?: Logger,
  ) {}

  /** Loads every model a slot uses (each file once). */
  static async load(config: Pick<AgentConfig, 'models' | 'cameras' | 'inference'>, logger?: Logger): Promise<ModelRegistry> {
    const usage = new Map<string, string[]>();
    for (const cam of config.cameras) {
      for (const slot of cam.slots) {
        if (!(slot.model in config.models)) {
          throw new Error(`cameras ${cam.id} slot ${slot.id}: model '${slot.model}' is not defined under models (defined: ${Object.keys(config.models).join(', ') || 'none'})`);
        }
        usage.set(slot.model, [...(usage.get(slot.model) ?? []), `${cam.id}/${slot.id}`]);
      }
    }
    const parallelism = resolveParallelism(config.inference);
    const byFile = new Map<string, Promise<InferenceModel>>();
    const entries = new Map<string, RegisteredModel>();
    const loaded: InferenceModel[] = [];
    try {
      for (const name of usage.keys()) {
        const cfg = config.models[name]!;
        const file = resolve(cfg.path);
        let pending = byFile.get(file);
        if (!pending) {
          pending = loadInferenceModel(file, {
            provider: config.inference.provider as ProviderChoice,
            workerThread: config.inference.workerThread,
            intraOpThreads: parallelism.intraOpThreads || undefined,
            allowSpinning: config.inference.spinWait,
            replicas: parallelism.replicas,
          }).catch((err: Error) => {
            throw new Error(`models.${name}.path: ${err.message}`, { cause: err });
          });
          byFile.set(file, pending);
          const model = await pending;
          loaded.push(model);
          logger?.info('model loaded', {
            model: name,
            path: file,
            digest: model.digest,
            provider: model.provider,
            fallbacks: model.fallbacks,
            threshold: cfg.threshold ?? model.manifest.thresholds.image,
          });
        } else {
          logger?.info('model shared', { model: name, path: file });
        }
        entries.set(name, { name, path: file, model: await pending, ...(cfg.threshold !== undefined ? { threshold: cfg.threshold } : {}) });
      }
    } catch (err) {
      await Promise.all(loaded.map((m) => m.release().catch(() => undefined)));
      throw err;
    }
    for (const name of Object.keys(config.models)) {
      if (!usage.has(name)) logger?.warn('model not used by any slot; not loaded', { model: name });
    }
    return new ModelRegistry(entries, usage, parallelism, logger);
  }

  get(name: string): RegisteredModel | undefined {
    return this.entries.get(name);
  }

  names(): string[] {
    return [...this.entries.keys()];
  }

  /** Every loaded model file once, with the config names that use it. */
  files(): Array<{ path: string; model: InferenceModel; names: string[] }> {
    const byPath = new Map<string, { path: string; model: InferenceModel; names: string[] }>();
    for (const e of this.entries.values()) {
      const file = byPath.get(e.path) ?? { path: e.path, model: e.model, names: [] };
      file.names.push(e.name);
      byPath.set(e.path, file);
    }
    return [...byPath.values()];
  }

  /**
   * Points every name that uses the file `path` at `model`; returns the model it replaced
   * (the caller releases it once nothing runs on it). Throws when no loaded model uses `path`.
   */
  replaceFile(path: string, model: InferenceModel): InferenceModel {
    const file = resolve(path);
    const users = [...this.entries.values()].filter((e) => e.path === file);
    if (users.length === 0) throw new Error(`no loaded model uses the file ${file}`);
    const old = users[0]!.model;
    for (const e of users) e.model = model;
    return old;
  }

  /** Distinct loaded sessions (≤ names when files are shared). */
  get sessionCount(): number {
    return new Set([...this.entries.values()].map((e) => e.model)).size;
  }

  /** name → { model, threshold } for the shelf pipeline. */
  pipelineModels(): Map<string, { model: InferenceModel; threshold?: number }> {
    return new Map([...this.entries].map(([name, e]) => [name, { model: e.model, ...(e.threshold !== undefined ? { threshold: e.threshold } : {}) }]));
  }

  status(): ModelStatus[] {
    return [...this.entries.values()].map((e) => ({
      name: e.name,
      path: e.path,
      digest: e.model.digest,
      provider: e.model.provider,
      fallbacks: e.model.fallbacks.map((f) => ({ provider: f.provider, reason: f.reason })),
      inputSize: e.model.manifest.inputSize,
      backbone: e.model.manifest.backbone.id,
      threshold: e.threshold ?? e.model.manifest.thresholds.image,
      thresholdSource: e.threshold !== undefined ? 'config' : 'manifest',
      slots: this.usage.get(e.name) ?? [],
      thread: 'restarts' in e.model ? 'worker' : 'main',
      workerRestarts: 'restarts' in e.model ? e.model.restarts : 0,
    }));
  }

  async release(): Promise<void> {
    const sessions = new Set([...this.entries.values()].map((e) => e.model));
    this.entries.clear();
    await Promise.all([...sessions].map((m) => m.release().catch((err: Error) => this.logger?.error('model session did not release', { model: m.origin, error: err }))));
  }
}
