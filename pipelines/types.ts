/**
 * The values that flow through the shelf pipeline (see DESIGN.md, "The data that flows").
 * Sources make Frames, the planogram cropper makes Crops, the runtime makes Predictions,
 * the debouncer keeps SlotStates and the event builder makes AnomalyEvents.
 */
import type { ScanPrediction } from '../models/types.js';

/** Axis-aligned box in pixel coordinates of the full-resolution frame. */
export interface Box {
  x: number;
  y: number;
  width: number;
  height: number;
}

/** One captured image from a camera. `data` is an encoded image (JPEG/PNG/...). */
export interface Frame {
  /** Unique, stable id: `<camera>-<capture ms>-<sequence>`. */
  id: string;
  camera: string;
  /** Capture time, ms since the epoch. */
  capturedAt: number;
  /** Monotonic per-source sequence number, starting at 0. */
  sequence: number;
  /** Encoded image bytes as produced by the source. */
  data: Buffer;
  /** Where it came from (URL, file path, 'ffmpeg:<input>'), for logs and errors. */
  origin: string;
}

/** One product slot cut out of a frame. */
export interface Crop {
  frame: Pick<Frame, 'id' | 'camera' | 'capturedAt'>;
  slot: string;
  /** Box of the crop in frame coordinates (after optional refinement). */
  box: Box;
  model: string;
  product?: string;
  category?: string;
}

/** A connected anomalous region of one prediction, mapped to frame coordinates. */
export interface Region {
  box: Box;
  /** Area in frame pixels. */
  area: number;
  /** Largest anomaly-map value inside the region. */
  peak: number;
}

export interface SlotPrediction {
  crop: Crop;
  /** Map and mask may be absent for a normal crop (the agent's scans keep them only when anomalous). */
  prediction: ScanPrediction;
  regions: Region[];
}

export type SlotCondition = 'ok' | 'anomalous';

export interface SlotState {
  camera: string;
  slot: string;
  state: SlotCondition;
  /** When the current state began, ms since the epoch. */
  since: number;
  lastScore: number;
  /** The last N decisions, newest last (true = over threshold). */
  history: boolean[];
}
