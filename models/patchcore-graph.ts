/**
 * Compiles PatchCore into ONNX graphs on top of a backbone:
 *
 *   image → backbone taps → (dequantize) → 3×3 average pool → stride-16 map upsampled to the
 *   stride-8 grid → concatenated patch embeddings            [feature graph, used by `fit`]
 *   → nearest memory entry per patch in matmul form (‖x‖² − 2x·m + ‖m‖²) → re-weighted image
 *   score and the blurred anomaly map                         [model graph, used everywhere else]
 *
 * Constant matrices (upsampling, blur) come from patchcore-math.ts, so the graph and the plain
 * TypeScript implementation cannot drift apart.
 */
import { GraphBuilder, valueInfo } from './onnx/builder.js';
import { DataType, toNumber, type GraphProto, type ModelProto, type NodeProto } from './onnx/proto.js';
import { bilinearMatrix, mapAxisMatrix, REWEIGHT_K } from './patchcore-math.js';
import type { BackboneDescriptor } from './types.js';

export const OUTPUT_EMBEDDING = 'embedding';
export const OUTPUT_SCORE = 'score';
export const OUTPUT_MAX = 'max_distance';
export const OUTPUT_MAP = 'anomaly_map';
/** [N, grid, grid]: each patch's distance to its nearest memory entry (what the map is built from). */
export const OUTPUT_PATCH_DISTANCES = 'patch_distances';
/** Symbolic batch dimension of every graph input and output. */
export const BATCH = 'batch';
/** Prefix of every tensor and node name the compiler adds (GraphBuilder's). */
const BUILDER_PREFIX = 'sw/';
/** Memory entries searched per MatMul: bounds the [N, patches, entries] distance block. */
export const DEFAULT_SEARCH_CHUNK = 8192;

export interface GraphGeometry {
  inputSize: number;
  /** Side of the stride-8 patch grid. */
  grid: number;
  /** Side of the stride-16 grid. */
  coarseGrid: number;
  /** Channels of the concatenated patch embedding (after the optional projection). */
  dim: number;
}

export function geometry(d: BackboneDescriptor, inputSize = d.inputSize): GraphGeometry {
  return {
    inputSize,
    grid: Math.ceil(inputSize / d.taps[0].stride),
    coarseGrid: Math.ceil(inputSize / d.taps[1].stride),
    dim: d.embedDim ?? d.taps[0].channels + d.taps[1].channels,
  };
}

/** Opset version of the default ONNX domain in a model. */
export function defaultOpset(model: ModelProto): number {
  const entry = (model.opsetImport ?? []).find((o) => !o.domain || o.domain === 'ai.onnx');
  return toNumber(entry?.version);
}

/** Emits ops whose signature changed between opsets (axes as attribute or input). */
class Ops {
  constructor(readonly b: GraphBuilder, readonly opset: number) {}

  reduce(op: 'ReduceSumSquare' | 'ReduceMin', x: string, axes: number[], keepdims: 0 | 1): string {
    if (this.opset >= 18) return this.b.op1(op, [x, this.b.int64('axes', [axes.length], axes)], { keepdims });
    return this.b.op1(op, [x], { axes, keepdims });
  }

  reshape(x: string, shape: number[]): string {
    return this.b.op1('Reshape', [x, this.b.int64('shape', [shape.length], shape)]);
  }

  matrix(hint: string, m: Float64Array, rows: number, cols: number): string {
    return this.b.float(hint, [rows, cols], Float32Array.from(m));
  }
}

/** The taps as named in the compiled graph (a backbone tensor whose name clashes is renamed). */
type Taps = BackboneDescriptor['taps'];

/** Probe outputs of buildTapProbeGraph: `tap0`, `tap1` (runtime.ts reads them by these names). */
const PROBE_OUTPUTS = ['tap0', 'tap1'];
/** Names the compiler gives tensors of its own: a backbone tensor with one of them is renamed. */
function reservedName(name: string): boolean {
  return name.startsWith(BUILDER_PREFIX) || PROBE_OUTPUTS.includes(name) || (TAP_INPUTS as readonly string[]).includes(name) ||
    [OUTPUT_EMBEDDING, OUTPUT_SCORE, OUTPUT_MAX, OUTPUT_MAP, OUTPUT_PATCH_DISTANCES].includes(name);
}

/**
 * Copies the backbone graph keeping only what computes the taps; input set to [batch,3,S,S].
 * Backbone tensors named like the compiler's own (a tap exported as `tap0`, an inner tensor called
 * `score`, anything under `sw/`) are renamed in the copy, so the two never collide.
 */
function tapGraph(backbone: ModelProto, d: BackboneDescriptor, inputSize: number, fromTaps = false): { model: ModelProto; graph: GraphProto; taps: Taps } {
  if (fromTaps) return { ...tapInputGraph(backbone, d, inputSize), taps: d.taps };
  const src = backbone.graph!;
  const needed = new Set<string>(d.taps.map((t) => t.tensor));
  const nodes: NodeProto[] = [];
  for (let i = (src.node ?? []).length - 1; i >= 0; i--) {
    const n = src.node![i]!;
    if ((n.output ?? []).some((o) => needed.has(o))) {
      nodes.push(n);
      for (const inp of n.input ?? []) if (inp) needed.add(inp);
    }
  }
  nodes.reverse();
  for (const t of d.taps) if (t.dequantize) { needed.add(t.dequantize.scale); needed.add(t.dequantize.zeroPoint); }
  const initializers = (src.initializer ?? []).filter((i) => needed.has(i.name ?? ''));
  // Everything the kept nodes read must come from the image, an initializer or a kept node: the
  // compiled graph has no other input.
  const available = new Set<string>([d.input, ...initializers.map((i) => i.name ?? '')]);
  for (const n of nodes) for (const o of n.output ?? []) available.add(o);
  for (const n of nodes) {
    for (const inp of n.input ?? []) {
      if (inp && !available.has(inp)) {
        throw new Error(`backbone ${d.id}: the taps need '${inp}' (read by node '${n.name ?? n.opType}'), which is neither the image input '${d.input}', an initializer nor made by a node; shelfwatch feeds the image only`);
      }
    }
  }
  if (reservedName(d.input)) throw new Error(`backbone ${d.id}: its input name '${d.input}' is one shelfwatch uses for a tensor of its own; rename the input`);
  const renamed = new Map<string, string>();
  const rename = (name: string): string => {
    if (!name || !reservedName(name)) return name;
    let to = renamed.get(name);
    if (!to) {
      to = `backbone/${name}`;
      while (available.has(to) || reservedName(to)) to = `backbone/${to}`;
      renamed.set(name, to);
    }
    return to;
  };
  const graph: GraphProto = {
    name: 'shelfwatch-patchcore',
    node: nodes.map((n) => {
      const input = (n.input ?? []).map(rename);
      const output = (n.output ?? []).map(rename);
      const name = n.name && n.name.startsWith(BUILDER_PREFIX) ? `backbone/${n.name}` : n.name;
      return input.some((x, i) => x !== n.input![i]) || output.some((x, i) => x !== n.output![i]) || name !== n.name ? { ...n, input, output, name } : n;
    }),
    initializer: initializers.map((i) => (rename(i.name ?? '') === i.name ? i : { ...i, name: rename(i.name!) })),
    input: [valueInfo(d.input, DataType.FLOAT, [BATCH, 3, inputSize, inputSize])],
    output: [],
  };
  const taps = d.taps.map((t) => ({
    ...t,
    tensor: rename(t.tensor),
    ...(t.dequantize ? { dequantize: { scale: rename(t.dequantize.scale), zeroPoint: rename(t.dequantize.zeroPoint) } } : {}),
  })) as Taps;
  const model: ModelProto = {
    irVersion: backbone.irVersion,
    opsetImport: backbone.opsetImport,
    producerName: 'shelfwatch',
    graph,
    // Nodes kept for the taps may call the backbone's model-local functions.
    ...(backbone.functions?.length ? { functions: backbone.functions } : {}),
  };
  const opset = defaultOpset(model);
  if (opset < 11) throw new Error(`backbone ${d.id}: ONNX opset ${opset} is too old (need 11 or newer)`);
  return { model, graph, taps };
}

/** Names of the float tap inputs of a graph compiled with `fromTaps` (tests, feature caches). */
export const TAP_INPUTS = ['tap_fine', 'tap_coarse'] as const;

/** A graph whose inputs are the two float taps instead of an image (everything after the backbone). */
function tapInputGraph(backbone: ModelProto, d: BackboneDescriptor, inputSize: number): { model: ModelProto; graph: GraphProto } {
  const g = geometry(d, inputSize);
  const graph: GraphProto = {
    name: 'shelfwatch-patchcore-head',
    node: [],
    initializer: [],
    input: [
      valueInfo(TAP_INPUTS[0], DataType.FLOAT, [BATCH, d.taps[0].channels, g.grid, g.grid]),
      valueInfo(TAP_INPUTS[1], DataType.FLOAT, [BATCH, d.taps[1].channels, g.coarseGrid, g.coarseGrid]),
    ],
    output: [],
  };
  return { model: { irVersion: backbone.irVersion, opsetImport: backbone.opsetImport, producerName: 'shelfwatch', graph }, graph };
}

/** Float taps: dequantized with the graph's own initializers where the tap is quantized. */
function floatTaps(b: GraphBuilder, taps: Taps): [string, string] {
  if (b.graph.input?.[0]?.name === TAP_INPUTS[0]) return [TAP_INPUTS[0], TAP_INPUTS[1]];
  return taps.map((t) =>
    t.dequantize ? b.op1('DequantizeLinear', [t.tensor, t.dequantize.scale, t.dequantize.zeroPoint]) : t.tensor,
  ) as [string, string];
}

/** Adaptive 1-D average pooling from `from` to `to` channels as a [from, to] matrix. */
export function adaptivePoolMatrix(from: number, to: number): Float64Array {
  const m = new Float64Array(from * to);
  for (let j = 0; j < to; j++) {
    const start = Math.floor((j * from) / to);
    const end = Math.ceil(((j + 1) * from) / to);
    for (let i = start; i < end; i++) m[i * to + j] = 1 / (end - start);
  }
  return m;
}

/**
 * The linear map [c8 + c16, embedDim] of patchcore-inspection's preprocessing + aggregation:
 * each tap pooled to pretrainEmbedDim (when given), concatenated, pooled to embedDim.
 */
export function embeddingProjection(d: BackboneDescriptor): Float64Array {
  const [c0, c1] = [d.taps[0].channels, d.taps[1].channels];
  const target = d.embedDim!;
  if (!d.pretrainEmbedDim) return adaptivePoolMatrix(c0 + c1, target);
  const pre = d.pretrainEmbedDim;
  const p0 = adaptivePoolMatrix(c0, pre);
  const p1 = adaptivePoolMatrix(c1, pre);
  const a = adaptivePoolMatrix(2 * pre, target);
  const out = new Float64Array((c0 + c1) * target);
  // blockdiag(p0, p1) · a
  for (let i = 0; i < c0 + c1; i++) {
    const [p, row, offset] = i < c0 ? [p0, i, 0] : [p1, i - c0, pre];
    for (let k = 0; k < pre; k++) {
      const v = p[row * pre + k]!;
      if (v === 0) continue;
      for (let j = 0; j < target; j++) out[i * target + j] += v * a[(offset + k) * target + j]!;
    }
  }
  return out;
}

/** Appends the aggregation; returns the embedding tensor [batch, grid², dim]. */
function appendEmbedding(ops: Ops, d: BackboneDescriptor, taps: Taps, g: GraphGeometry): string {
  const b = ops.b;
  const [t8, t16] = floatTaps(b, taps);
  const pool = { kernel_shape: [3, 3], strides: [1, 1], pads: [1, 1, 1, 1], count_include_pad: 1 };
  const p8 = b.op1('AveragePool', [t8], pool);
  const p16 = b.op1('AveragePool', [t16], pool);
  // Bilinear upsampling of the coarse map as two matrix products: U · X · Uᵀ.
  const u = bilinearMatrix(g.coarseGrid, g.grid); // [grid, coarse]
  const ut = new Float64Array(g.coarseGrid * g.grid);
  for (let i = 0; i < g.grid; i++) for (let j = 0; j < g.coarseGrid; j++) ut[j * g.grid + i] = u[i * g.coarseGrid + j]!;
  const rows = b.op1('MatMul', [ops.matrix('upsample_rows', u, g.grid, g.coarseGrid), p16]);
  const up16 = b.op1('MatMul', [rows, ops.matrix('upsample_cols', ut, g.coarseGrid, g.grid)]);
  const cat = b.op1('Concat', [p8, up16], { axis: 1 });
  const concatDim = d.taps[0].channels + d.taps[1].channels;
  const flat = ops.reshape(cat, [0, concatDim, -1]);
  let emb = b.op1('Transpose', [flat], { perm: [0, 2, 1] });
  if (d.embedDim) {
    const w = embeddingProjection(d);
    emb = b.op1('MatMul', [emb, ops.matrix('embed_pool', w, concatDim, d.embedDim)]);
  }
  return emb;
}

/** The graph used for fitting: image → patch embeddings [batch, grid², dim]. */
export function buildFeatureGraph(backbone: ModelProto, d: BackboneDescriptor, inputSize = d.inputSize): ModelProto {
  const { model, graph, taps } = tapGraph(backbone, d, inputSize);
  const g = geometry(d, inputSize);
  const ops = new Ops(new GraphBuilder(graph, BUILDER_PREFIX), defaultOpset(model));
  const emb = appendEmbedding(ops, d, taps, g);
  graph.node!.push({ opType: 'Identity', name: 'sw/embedding_out', input: [emb], output: [OUTPUT_EMBEDDING], attribute: [] });
  ops.b.output(OUTPUT_EMBEDDING, DataType.FLOAT, [BATCH, g.grid * g.grid, g.dim]);
  return model;
}

/** The graph used for fitting checks: image → both float taps (to verify strides). */
export function buildTapProbeGraph(backbone: ModelProto, d: BackboneDescriptor, inputSize = d.inputSize): ModelProto {
  const { model, graph, taps } = tapGraph(backbone, d, inputSize);
  const b = new GraphBuilder(graph, BUILDER_PREFIX);
  floatTaps(b, taps).forEach((t, i) => {
    const name = PROBE_OUTPUTS[i]!;
    graph.node!.push({ opType: 'Identity', name: `sw/${name}_out`, input: [t], output: [name], attribute: [] });
    graph.output!.push({ name });
  });
  return model;
}

export interface CompileOptions {
  /** Memory bank [entries × dim], row-major. */
  bank: Float32Array;
  entries: number;
  inputSize?: number;
  searchChunk?: number;
  metadata?: Record<string, string>;
  /** Take the two float taps as inputs instead of an image (for tests and cached features). */
  fromTaps?: boolean;
}

/**
 * The full model: image [batch,3,S,S] → score [batch], max_distance [batch],
 * anomaly_map [batch,1,S,S], patch_distances [batch,grid,grid].
 */
export function buildModelGraph(backbone: ModelProto, d: BackboneDescriptor, opts: CompileOptions): ModelProto {
  const inputSize = opts.inputSize ?? d.inputSize;
  const { model, graph, taps } = tapGraph(backbone, d, inputSize, opts.fromTaps);
  const g = geometry(d, inputSize);
  const { bank, entries } = opts;
  if (entries < 1 || bank.length !== entries * g.dim) {
    throw new Error(`memory bank has ${bank.length} values, expected ${entries} × ${g.dim}`);
  }
  const ops = new Ops(new GraphBuilder(graph, BUILDER_PREFIX), defaultOpset(model));
  const b = ops.b;
  const x = appendEmbedding(ops, d, taps, g); // [N, P, D]
  const bankName = b.float('memory_bank', [entries, g.dim], bank);

  // Nearest memory entry per patch, a chunk of the bank at a time. ‖x‖² is the same for every
  // entry, so the minimum is taken over ‖m‖² − 2x·m and ‖x‖² added once afterwards.
  const chunk = Math.max(1, opts.searchChunk ?? DEFAULT_SEARCH_CHUNK);
  // [x, 1] · [−2Mᵀ; ‖m‖²] = ‖m‖² − 2x·m in one MatMul, saving a pass over the [N, P, M] block.
  const xx = ops.reduce('ReduceSumSquare', x, [2], 1); // [N, P, 1]
  const ones = b.op1('Add', [b.op1('Mul', [xx, b.scalarFloat('zero', 0)]), b.scalarFloat('one', 1)]);
  const xAug = b.op1('Concat', [x, ones], { axis: 2 }); // [N, P, D + 1]
  const mins: string[] = [];
  const chunkConsts: Array<{ wt: string; mm: string; wAug: string; start: number; size: number }> = [];
  for (let start = 0; start < entries; start += chunk) {
    const size = Math.min(chunk, entries - start);
    const part = entries <= chunk
      ? bankName
      : b.op1('Slice', [bankName, b.int64('starts', [1], [start]), b.int64('ends', [1], [start + size]), b.int64('axes', [1], [0])]);
    // Constant subgraphs: onnxruntime folds them once at session creation.
    const wt = b.op1('Mul', [b.op1('Transpose', [part], { perm: [1, 0] }), b.scalarFloat('minus_two', -2)]);
    const mm = ops.reduce('ReduceSumSquare', part, [1], 0);
    const wAug = b.op1('Concat', [wt, ops.reshape(mm, [1, -1])], { axis: 0 }); // [D + 1, size]
    chunkConsts.push({ wt, mm, wAug, start, size });
    // Only the distances are needed for every patch (a parallel ReduceMin); the index of the
    // nearest entry is needed for one patch per image only, and is found below.
    mins.push(ops.reduce('ReduceMin', b.op1('MatMul', [xAug, wAug]), [2], 1)); // [N, P, 1]
  }
  const minPart = mins.length === 1 ? mins[0]! : ops.reduce('ReduceMin', b.op1('Concat', mins, { axis: 2 }), [2], 1);
  const dist = ops.reshape(b.op1('Sqrt', [b.op1('Relu', [b.op1('Add', [minPart, xx])])]), [0, -1]); // [N, P]

  // Re-weighted score (anomalib, k = 9).
  const k = Math.min(REWEIGHT_K, entries);
  const pStar = b.op1('ArgMax', [dist], { axis: 1, keepdims: 1 }); // [N, 1]
  const sStar = ops.reshape(b.op1('GatherElements', [dist, pStar], { axis: 1 }), [-1]); // [N]
  const pStar3 = ops.reshape(pStar, [-1, 1, 1]);
  const xStarAug = b.op1('GatherElements', [xAug, b.op1('Expand', [pStar3, b.int64('expand_shape', [3], [1, 1, g.dim + 1])])], { axis: 1 }); // [N, 1, D + 1]
  const mStar = nearestOfOne(ops, xStarAug, chunkConsts); // [N, 1]
  const mRow = b.op1('Gather', [bankName, mStar], { axis: 0 }); // [N, 1, D]
  const support = supportSet(ops, mRow, chunkConsts, k); // [N, k]
  const supportRows = b.op1('Gather', [bankName, support], { axis: 0 }); // [N, k, D]
  const pIndex = b.op1('Expand', [pStar3, b.int64('expand_shape', [3], [1, 1, g.dim])]);
  const xStar = b.op1('GatherElements', [x, pIndex], { axis: 1 }); // [N, 1, D]
  const dSupport = b.op1('Sqrt', [ops.reduce('ReduceSumSquare', b.op1('Sub', [supportRows, xStar]), [2], 0)]); // [N, k]
  const soft = b.op1('Softmax', [dSupport], { axis: 1 });
  const first = b.op1('Gather', [soft, b.int64('first', [], [0])], { axis: 1 }); // [N]
  const weight = b.op1('Sub', [b.scalarFloat('one', 1), first]);
  const score = b.op1('Mul', [weight, sStar]);

  // Anomaly map: A · D · Aᵀ with A = blur ∘ nearest upsampling.
  const a = mapAxisMatrix(g.grid, inputSize);
  const at = new Float64Array(g.grid * inputSize);
  for (let i = 0; i < inputSize; i++) for (let j = 0; j < g.grid; j++) at[j * inputSize + i] = a[i * g.grid + j]!;
  const grid = ops.reshape(dist, [-1, 1, g.grid, g.grid]);
  const rows = b.op1('MatMul', [ops.matrix('map_rows', a, inputSize, g.grid), grid]);
  const map = b.op1('MatMul', [rows, ops.matrix('map_cols', at, g.grid, inputSize)]);

  const named: Array<[string, string, Array<number | string>]> = [
    [score, OUTPUT_SCORE, [BATCH]],
    [sStar, OUTPUT_MAX, [BATCH]],
    [map, OUTPUT_MAP, [BATCH, 1, inputSize, inputSize]],
    [ops.reshape(dist, [-1, g.grid, g.grid]), OUTPUT_PATCH_DISTANCES, [BATCH, g.grid, g.grid]],
  ];
  for (const [from, to, shape] of named) {
    graph.node!.push({ opType: 'Identity', name: `sw/${to}_out`, input: [from], output: [to], attribute: [] });
    b.output(to, DataType.FLOAT, shape);
  }
  if (opts.metadata) model.metadataProps = Object.entries(opts.metadata).map(([key, value]) => ({ key, value }));
  return model;
}

/** Index [N, 1] of the memory entry nearest to one (augmented) patch per image, lowest on ties. */
function nearestOfOne(ops: Ops, xAug: string, chunks: Array<{ wAug: string; start: number }>): string {
  const b = ops.b;
  const vals: string[] = [];
  const idx: string[] = [];
  for (const c of chunks) {
    const q = b.op1('MatMul', [xAug, c.wAug]); // [N, 1, size]
    const a = b.op1('ArgMin', [q], { axis: 2, keepdims: 1 });
    vals.push(b.op1('GatherElements', [q, a], { axis: 2 }));
    idx.push(c.start === 0 ? a : b.op1('Add', [a, b.int64('offset', [], [c.start])]));
  }
  if (vals.length === 1) return ops.reshape(idx[0]!, [-1, 1]);
  const best = b.op1('ArgMin', [b.op1('Concat', vals, { axis: 2 })], { axis: 2, keepdims: 1 });
  return ops.reshape(b.op1('GatherElements', [b.op1('Concat', idx, { axis: 2 }), best], { axis: 2 }), [-1, 1]);
}

/** Indices [N, k] of the k memory entries nearest to m* (m* first), lower index first on ties. */
function supportSet(ops: Ops, mRow: string, chunks: Array<{ wt: string; mm: string; start: number; size: number }>, k: number): string {
  const b = ops.b;
  const vals: string[] = [];
  const idx: string[] = [];
  for (const c of chunks) {
    const kc = Math.min(k, c.size);
    const q = b.op1('Add', [b.op1('MatMul', [mRow, c.wt]), c.mm]); // [N, 1, size]
    const [v, i] = b.op('TopK', [q, b.int64('k', [1], [kc])], { axis: 2, largest: 0, sorted: 1 }, 2);
    vals.push(v!);
    idx.push(c.start === 0 ? i! : b.op1('Add', [i!, b.int64('offset', [], [c.start])]));
  }
  if (vals.length === 1) return ops.reshape(idx[0]!, [-1, k]);
  const allV = b.op1('Concat', vals, { axis: 2 });
  const allI = b.op1('Concat', idx, { axis: 2 });
  const [, pick] = b.op('TopK', [allV, b.int64('k', [1], [k])], { axis: 2, largest: 0, sorted: 1 }, 2);
  return ops.reshape(b.op1('GatherElements', [allI, pick!], { axis: 2 }), [-1, k]);
}
