/**
 * A one-camera shelf pipeline around a stand-in model, and a quick `until`, for the pipeline
 * tests that drive frames by hand (shelf-pipeline, pipeline-arena).
 */
import type { BatchModel, PipelineCamera, ShelfPipelineOptions } from '../../pipelines/shelf-pipeline.js';
import type { Box } from '../../pipelines/types.js';

/** Camera `c` with a slot `s<i>` per box, all on model `m`; batches of 8, a 5 ms wait, raise and clear on one scan. */
export function pipelineOptions(
  frames$: PipelineCamera['frames$'],
  m: BatchModel,
  over: Partial<ShelfPipelineOptions> = {},
  boxes: Box[] = [{ x: 0, y: 0, width: 200, height: 200 }],
): ShelfPipelineOptions {
  return {
    cameras: [{ id: 'c', slots: boxes.map((box, i) => ({ id: `s${i}`, box, model: 'm' })), frames$ }],
    models: new Map([['m', { model: m }]]),
    batchSize: 8,
    batchWaitMs: 5,
    maxPendingFrames: 16,
    debounce: { raiseAfter: 1, window: 1, clearAfter: 1 },
    ...over,
  };
}

/**
 * Polls `cond` every 5 ms (helpers/agent-scene's until polls every 25): these tests aim at short
 * windows, a teardown while a frame is in flight. Throws naming `what` after `ms`.
 */
export async function until(what: string, cond: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}
