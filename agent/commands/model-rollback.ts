/**
 * `shelfwatch model rollback --config <file> --model <name>`: puts the model file the running
 * agent served before its last swap (`<path>.previous`, kept by the model rollout) back on the
 * configured path, atomically (copy to a temp file in the same directory, then rename). A running
 * agent's watcher picks it up, verifies it and swaps it in like any other replacement; the file
 * it replaces becomes the new `<path>.previous`, so a second rollback undoes the first.
 * `.previous` is only read here, never moved: the agent alone decides what it holds.
 */
import { createHash } from 'node:crypto';
import { copyFile, readFile, rename, rm } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { readManifest } from '../../models/manifest.js';
import { decodeModel } from '../../models/onnx/proto.js';
import { loadConfig } from '../config.js';

export interface RollbackResult {
  model: string;
  /** The configured model path, now holding the restored bytes. */
  path: string;
  /** sha256 of the restored file. */
  digest: string;
  /** sha256 of the file it replaced, or null when the path held none. */
  replaced: string | null;
}

/** Where the model rollout keeps the file a swap replaced. */
export function previousModelPath(modelPath: string): string {
  return `${modelPath}.previous`;
}

const sha256 = (bytes: Uint8Array): string => createHash('sha256').update(bytes).digest('hex');

/**
 * Restores `<modelPath>.previous` onto `modelPath` atomically. Throws naming the file when there
 * is nothing to roll back to or when the kept file is not a valid model (manifest unreadable).
 */
export async function restorePreviousModel(modelPath: string): Promise<{ digest: string; replaced: string | null }> {
  const previous = previousModelPath(modelPath);
  let bytes: Buffer;
  try {
    bytes = await readFile(previous);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new Error(`nothing to roll back to: ${previous} does not exist (the agent keeps it after it swaps in a new model)`);
    throw new Error(`cannot read ${previous}: ${code ?? (err as Error).message}`);
  }
  try {
    readManifest(decodeModel(bytes, previous), previous);
  } catch (err) {
    throw new Error(`${previous} is not a valid model, not restored: ${(err as Error).message}`);
  }
  const replaced = await readFile(modelPath).then(sha256, () => null);
  const tmp = join(dirname(modelPath), `.${basename(modelPath)}.rollback-${process.pid}.tmp`);
  try {
    await copyFile(previous, tmp);
    await rename(tmp, modelPath);
  } catch (err) {
    await rm(tmp, { force: true });
    throw new Error(`cannot restore ${previous} onto ${modelPath}: ${(err as Error).message}`);
  }
  return { digest: sha256(bytes), replaced };
}

/** The CLI entry: `model` is a name under `models` in the config at `configPath`. */
export async function runModelRollback(configPath: string, options: { model: string; env?: NodeJS.ProcessEnv }): Promise<RollbackResult> {
  const config = await loadConfig(configPath, { env: options.env });
  const entry = config.models[options.model];
  if (!entry) {
    const known = Object.keys(config.models);
    throw new Error(`${configPath}: models.${options.model} is not defined (defined: ${known.join(', ') || 'none'})`);
  }
  const { digest, replaced } = await restorePreviousModel(entry.path);
  return { model: options.model, path: entry.path, digest, replaced };
}
