/**
 * Test helper: what an agent integration test runs the whole agent on — a temp work dir, the
 * small fitted PatchCore model (test/helpers/fitted-model.ts), a shelf frame of two unseen
 * magnetic_tile images and the same frame with a dark blotch in slot S1
 * (test/helpers/shelf-frames.ts), replay folders of those frames, the camera slots over them —
 * plus a logger that keeps the agent's lines and `until`, which waits for a condition and shows
 * the end of that log when it times out.
 */
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestFn } from 'ava';
import { Logger } from '../../agent/logger.js';
import { fittedModel, magneticTileTrain, sharedAvailable } from './fitted-model.js';
import { tileFrame, unseenTiles, type TileFrame } from './shelf-frames.js';

export interface AgentScene {
  /** A fresh temp dir. */
  work: string;
  modelPath: string;
  /** sha256 (hex) of the model file, as events and the status report it. */
  modelDigest: string;
  /** Two unseen tiles side by side; `boxes` are the slots S0 and S1. */
  normal: TileFrame;
  /** The same frame with a dark blotch in slot S1. */
  anomalous: TileFrame;
  /** Replay folder of the sequence (see writeFrameSequence). */
  framesDir: string;
  /** Replay folder of one normal frame. */
  normalDir: string;
}

/**
 * Makes the work dir (named `<prefix>XXXXXX` in the temp dir), the model, the two frames and
 * the replay folders `frames` (of `sequence`) and `frames-normal` in the work dir.
 */
export async function agentScene(prefix: string, sequence: readonly boolean[] = []): Promise<AgentScene> {
  const work = await mkdtemp(join(tmpdir(), prefix));
  const modelPath = await fittedModel(await magneticTileTrain(40), { name: 'pipeline-test' });
  const modelDigest = createHash('sha256').update(await readFile(modelPath)).digest('hex');
  const tiles = await unseenTiles(2);
  const normal = await tileFrame(tiles);
  const anomalous = await tileFrame(tiles, { blotch: [1] });
  const framesDir = await writeFrameSequence(join(work, 'frames'), sequence, { normal, anomalous });
  const normalDir = await writeFrameSequence(join(work, 'frames-normal'), [false], { normal, anomalous });
  return { work, modelPath, modelDigest, normal, anomalous, framesDir, normalDir };
}

/**
 * The scene of a test file: registers a `before` hook that makes it (when the shared test data is
 * there; see fitted-model.ts) and an `after.always` hook that removes its work dir. The returned
 * object is filled in by the hook, so read its fields inside tests, not at module level.
 */
export function registerAgentScene(test: TestFn, prefix: string, sequence?: readonly boolean[]): AgentScene {
  const scene = {} as AgentScene;
  test.before(async () => {
    if (sharedAvailable()) Object.assign(scene, await agentScene(prefix, sequence));
  });
  test.after.always(async () => {
    if (scene.work) await rm(scene.work, { recursive: true, force: true });
  });
  return scene;
}

/**
 * Writes a replay folder: frame000.jpg, frame001.jpg, … — the anomalous frame where `sequence`
 * is true, the normal one elsewhere. Returns the folder.
 */
async function writeFrameSequence(dir: string, sequence: readonly boolean[], frames: { normal: TileFrame; anomalous: TileFrame }): Promise<string> {
  await mkdir(dir, { recursive: true });
  await Promise.all(sequence.map((bad, i) => writeFile(join(dir, `frame${String(i).padStart(3, '0')}.jpg`), bad ? frames.anomalous.jpeg : frames.normal.jpeg)));
  return dir;
}

/** The config's slots over a frame's boxes: S<i>, model 'tile', product SKU-<i>, category 'tile'. */
export function tileSlots(frame: TileFrame): Array<Record<string, unknown>> {
  return frame.boxes.map((b, i) => ({ id: `S${i}`, box: [b.x, b.y, b.width, b.height], model: 'tile', product: `SKU-${i}`, category: 'tile' }));
}

/** A logger whose JSON lines are kept in `lines` (for assertions and timeout messages). */
export function captureLogger(level: 'debug' | 'info' = 'info'): { logger: Logger; lines: string[] } {
  const lines: string[] = [];
  return { logger: new Logger({ level, sink: { write: (l: string) => lines.push(l) } }), lines };
}

/**
 * Polls `check` every 25 ms until it holds; after `timeoutMs` throws an error naming `what`,
 * with the last 20 lines of `logs` when given.
 */
export async function until(what: string, check: () => boolean | Promise<boolean>, timeoutMs = 20_000, logs?: string[]): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${logs?.length ? `\nagent log:\n${logs.slice(-20).join('')}` : ''}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}
