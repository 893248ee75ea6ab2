/**
 * Values that cross module boundaries in the model layer. Kept free of I/O so that
 * pipelines/ and agent/ can import them without pulling in onnxruntime or sharp.
 */

/** Per-channel normalisation applied after scaling pixels to [0,1]. */
export interface Normalization {
  mean: [number, number, number];
  std: [number, number, number];
}

/** One feature tap inside a backbone graph. */
export interface FeatureTap {
  /** Tensor name inside the backbone graph. */
  tensor: string;
  /** Spatial stride relative to the input (8 or 16). */
  stride: number;
  /** Number of channels of the tap. */
  channels: number;
  /** When the tap is quantized (uint8/int8), the initializers that dequantize it. */
  dequantize?: { scale: string; zeroPoint: string };
}

/** Describes a backbone ONNX file: everything needed to tap it for PatchCore. */
export interface BackboneDescriptor {
  id: string;
  /** Hex sha256 of the ONNX file. */
  sha256: string;
  /** Name of the image input of the graph. */
  input: string;
  /** Default square input size in pixels (H = W). */
  inputSize: number;
  normalization: Normalization;
  /** Exactly two taps: stride 8 first, stride 16 second. */
  taps: [FeatureTap, FeatureTap];
  /**
   * Optional, for wide backbones (as patchcore-inspection does): adaptive-average-pool each tap's
   * patch vector to `pretrainEmbedDim`, concatenate, then pool to `embedDim`. With only
   * `embedDim`, the concatenation is pooled directly.
   */
  embedDim?: number;
  pretrainEmbedDim?: number;
  /** Official download locations (tried in order). */
  urls?: string[];
  /** File name used in the cache. */
  fileName?: string;
  license?: string;
  description?: string;
}

/** A decoded image ready for the backbone: float32 NCHW for one image. */
export interface PreprocessedImage {
  /** [3, size, size] float32, normalised. */
  data: Float32Array;
  size: number;
  /** Size of the source image after EXIF orientation (pixels). */
  sourceWidth: number;
  sourceHeight: number;
}

/** Per-image thresholds of a predict call; each falls back to the model manifest's. */
export interface ImageThresholds {
  image?: number;
  pixel?: number;
}

/** The result of scoring one image with a compiled model. */
export interface Prediction {
  /** Re-weighted PatchCore image score (raw). */
  score: number;
  /** Score mapped to [0,1] with the model's normalisation statistics (0.5 = threshold). */
  normalizedScore: number;
  /** Anomaly map at the model input size, row-major [size*size]. */
  anomalyMap: Float32Array;
  mapSize: number;
  /** Binary mask (0/1) at the model's pixel threshold, same layout as anomalyMap. */
  mask: Uint8Array;
  /** Image threshold the decision used. */
  threshold: number;
  isAnomalous: boolean;
  /** sha256 of the model file that produced this prediction. */
  modelDigest: string;
}

/**
 * A Prediction as a scanning agent keeps it: the anomaly map and mask only for anomalous images,
 * null for normal ones. Regions and thumbnails need them only when an image is over its threshold,
 * and not moving ~250 kB of map and mask per normal crop between threads spares the garbage
 * collector most of its work (V8 starts a full collection per ~64 MB of buffers allocated).
 */
export type ScanPrediction = Omit<Prediction, 'anomalyMap' | 'mask'> & { anomalyMap: Float32Array | null; mask: Uint8Array | null };

/** True when the prediction carries its map and mask (every Prediction; an anomalous ScanPrediction). */
export function hasMaps<P extends ScanPrediction>(p: P): p is P & Pick<Prediction, 'anomalyMap' | 'mask'> {
  return p.anomalyMap !== null && p.mask !== null;
}
