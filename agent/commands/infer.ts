/** `shelfwatch infer <model> <images…>`: score images with a compiled model. */
import { describeSkipped, listImages, preprocessedBatches, type SkippedFile } from '../../pipelines/image-files.js';
import { PatchcoreModel } from '../../models/runtime.js';
import type { ProviderChoice } from '../../models/execution-provider.js';

export interface InferResult {
  file: string;
  score: number;
  normalizedScore: number;
  anomalous: boolean;
  anomalousPixels: number;
}

export interface InferSummary {
  model: string;
  modelDigest: string;
  provider: string;
  fallbacks: Array<{ provider: string; reason: string }>;
  threshold: number;
  results: InferResult[];
  skipped: SkippedFile[];
}

export async function runInfer(o: { model: string; images: string[]; batch: number; provider: ProviderChoice; threshold?: number }): Promise<InferSummary> {
  const model = await PatchcoreModel.load(o.model, { provider: o.provider });
  try {
    const skipped: SkippedFile[] = [];
    const files = await listImages(o.images, (s) => skipped.push(s));
    if (files.length === 0) throw new Error(`no image files in ${o.images.join(', ')}${skipped.length ? ` (${describeSkipped(skipped)})` : ''}`);
    const results: InferResult[] = [];
    const m = model.manifest;
    for await (const batch of preprocessedBatches(files, { size: m.inputSize, normalization: m.normalization, batchSize: o.batch, onSkip: (s) => skipped.push(s) })) {
      const preds = await model.predict(batch.data, batch.count, batch.files.map(() => ({ image: o.threshold })));
      preds.forEach((p, i) => {
        let px = 0;
        for (let j = 0; j < p.mask.length; j++) px += p.mask[j]!;
        results.push({ file: batch.files[i]!, score: p.score, normalizedScore: p.normalizedScore, anomalous: p.isAnomalous, anomalousPixels: px });
      });
    }
    return { model: o.model, modelDigest: model.digest, provider: model.provider, fallbacks: model.fallbacks, threshold: o.threshold ?? m.thresholds.image, results, skipped };
  } finally {
    await model.release();
  }
}
