/**
 * Backbones: an ONNX file plus a descriptor that says how to feed it and where to tap it.
 * The built-in one is the ONNX Model Zoo MobileNetV2-1.0 int8; any other network works with a
 * descriptor JSON (see models/backbones/).
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { z } from 'zod';
import { declaredShape, decodeModel, showShape, type ModelProto } from './onnx/proto.js';
import type { BackboneDescriptor } from './types.js';
import { IMAGENET_NORMALIZATION } from './preprocess.js';
import { issueLines } from './zod-issues.js';


/** ONNX Model Zoo MobileNet v2-1.0 int8 (Apache-2.0). Taps documented in the README. */
export const MOBILENETV2_INT8: BackboneDescriptor = {
  id: 'mobilenetv2-12-int8',
  sha256: 'cc028fe6cae7bc11a4ff53cfc9b79c920e8be65ce33a904ec3e2a8f66d77f95f',
  input: 'input',
  inputSize: 224,
  normalization: IMAGENET_NORMALIZATION,
  taps: [
    { tensor: '365_quantized', stride: 8, channels: 32, dequantize: { scale: '365_scale', zeroPoint: '365_zero_point' } },
    { tensor: '426_quantized', stride: 16, channels: 96, dequantize: { scale: '426_scale', zeroPoint: '426_zero_point' } },
  ],
  fileName: 'mobilenetv2-12-int8.onnx',
  urls: [
    'https://github.com/onnx/models/raw/main/validated/vision/classification/mobilenet/model/mobilenetv2-12-int8.onnx',
    'https://huggingface.co/onnxmodelzoo/mobilenetv2-12-int8/resolve/main/mobilenetv2-12-int8.onnx',
  ],
  license: 'Apache-2.0',
  description: 'ONNX Model Zoo MobileNetV2-1.0 int8, taps at the 32-channel (stride 8) and 96-channel (stride 16) stages',
};

export const BUILTIN_BACKBONES: Record<string, BackboneDescriptor> = {
  [MOBILENETV2_INT8.id]: MOBILENETV2_INT8,
};

const tapSchema = z.strictObject({
  tensor: z.string().min(1),
  stride: z.number().int().positive(),
  channels: z.number().int().positive(),
  dequantize: z.strictObject({ scale: z.string().min(1), zeroPoint: z.string().min(1) }).optional(),
});

const descriptorSchema = z.strictObject({
  id: z.string().regex(/^[A-Za-z0-9._-]{1,100}$/, 'letters, digits, . _ - only'),
  sha256: z.string().regex(/^[0-9a-f]{64}$/, '64 lowercase hex digits'),
  input: z.string().min(1),
  inputSize: z.number().int().min(32).max(2048),
  normalization: z.strictObject({
    mean: z.tuple([z.number(), z.number(), z.number()]),
    std: z.tuple([z.number().positive(), z.number().positive(), z.number().positive()]),
  }),
  taps: z.tuple([tapSchema, tapSchema]),
  embedDim: z.number().int().positive().optional(),
  pretrainEmbedDim: z.number().int().positive().optional(),
  // The download code fetches http(s) only: refuse other schemes here, where the field is named.
  urls: z.array(z.url({ protocol: /^https?$/, error: 'expected an http(s) URL' })).optional(),
  // Joined to the cache directory, and the download replaces a file there whose hash differs:
  // a plain file name only, never a path ('../../.bashrc' would be overwritten).
  fileName: z
    .string()
    .min(1)
    .max(200)
    .refine((n) => !/[/\\\0]/.test(n) && n !== '.' && n !== '..', 'a plain file name, without a directory (no /, \\, . or ..)')
    .optional(),
  license: z.string().optional(),
  description: z.string().optional(),
});

export class BackboneError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'BackboneError';
  }
}

/** Parse and check a backbone descriptor (JSON text or object). */
export function parseDescriptor(value: unknown, origin: string): BackboneDescriptor {
  const r = descriptorSchema.safeParse(value);
  if (!r.success) {
    throw new BackboneError(`${origin}: invalid backbone descriptor\n${issueLines(r.error.issues, '(root)').map((l) => `  ${l}`).join('\n')}`);
  }
  const d = r.data as BackboneDescriptor;
  if (d.taps[0].stride >= d.taps[1].stride) {
    throw new BackboneError(`${origin}: taps must be ordered fine to coarse (stride ${d.taps[0].stride} then ${d.taps[1].stride})`);
  }
  if (d.pretrainEmbedDim && !d.embedDim) {
    throw new BackboneError(`${origin}: pretrainEmbedDim needs embedDim (the final dimension)`);
  }
  if (d.inputSize % d.taps[1].stride !== 0) {
    throw new BackboneError(`${origin}: inputSize ${d.inputSize} is not a multiple of the coarse tap's stride ${d.taps[1].stride}`);
  }
  return d;
}

export async function readDescriptor(path: string): Promise<BackboneDescriptor> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    throw new BackboneError(`backbone descriptor ${path}: cannot read (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new BackboneError(`backbone descriptor ${path}: not JSON (${(e as Error).message})`);
  }
  return parseDescriptor(json, path);
}

export function sha256(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

/** A backbone whose file matched its descriptor. */
export interface LoadedBackbone {
  descriptor: BackboneDescriptor;
  bytes: Uint8Array;
  model: ModelProto;
  path: string;
}

/**
 * Read a backbone file, check its digest against the descriptor and that the input and taps
 * it names exist in the graph. (Tap strides are checked by running the graph: see runtime.ts.)
 */
export async function loadBackbone(path: string, descriptor: BackboneDescriptor): Promise<LoadedBackbone> {
  let bytes: Uint8Array;
  try {
    bytes = await readFile(path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new BackboneError(
      code === 'ENOENT'
        ? `backbone file ${path} does not exist (run \`shelfwatch backbone fetch\` or pass --backbone <file>)`
        : `backbone file ${path}: cannot read (${code ?? (e as Error).message})`,
    );
  }
  const digest = sha256(bytes);
  if (digest !== descriptor.sha256) {
    throw new BackboneError(`backbone file ${path}: sha256 ${digest} does not match ${descriptor.id}'s ${descriptor.sha256} (wrong or corrupted file)`);
  }
  const model = decodeModel(bytes, path);
  checkSelfContained(model, path);
  checkGraphNames(model, descriptor, path);
  return { descriptor, bytes, model, path };
}

/**
 * Weights kept in a separate file (torch.onnx.export's default since PyTorch 2.9, onnx's
 * save_as_external_data) are outside the sha256 and cannot be found once the graph is loaded from
 * bytes: onnxruntime would look for them in the working directory.
 */
function checkSelfContained(model: ModelProto, path: string): void {
  const EXTERNAL = 1; // TensorProto.DataLocation.EXTERNAL
  const external = (model.graph!.initializer ?? []).find((t) => t.dataLocation === EXTERNAL);
  if (!external) return;
  const location = (external as { externalData?: Array<{ key: string; value: string }> }).externalData?.find((e) => e.key === 'location')?.value;
  throw new BackboneError(
    `backbone ${path}: initializer '${external.name}' keeps its data in a separate file${location ? ` (${location})` : ''}; ` +
      'a backbone must be one self-contained ONNX file (its sha256 covers that file only): export it with the weights inside ' +
      '(torch.onnx.export(..., external_data=False), or onnx.save_model(model, path, save_as_external_data=False))',
  );
}

const ELEM_TYPES: Record<number, string> = { 1: 'float32', 2: 'uint8', 3: 'int8', 6: 'int32', 7: 'int64', 10: 'float16', 11: 'float64', 16: 'bfloat16' };

/** Ops whose (first) output is a quantized tensor: a tap made by one needs `dequantize`. */
const QUANTIZED_OUTPUT = /^(QLinear[A-Za-z]+|QuantizeLinear|DynamicQuantizeLinear)$/;

function checkGraphNames(model: ModelProto, d: BackboneDescriptor, path: string): void {
  const graph = model.graph!;
  const inputs = new Set((graph.input ?? []).map((i) => i.name));
  if (!inputs.has(d.input)) {
    throw new BackboneError(`backbone ${path}: input '${d.input}' is not a graph input (inputs: ${[...inputs].join(', ')})`);
  }
  // shelfwatch feeds float32 [N,3,S,S] (NCHW); a declared type or layout that differs cannot work.
  const input = (graph.input ?? []).find((i) => i.name === d.input)!;
  const tensor = input.type?.tensorType;
  if (tensor?.elemType !== undefined && tensor.elemType !== 1) {
    throw new BackboneError(
      `backbone ${path}: input '${d.input}' is ${ELEM_TYPES[tensor.elemType] ?? `element type ${tensor.elemType}`}; shelfwatch feeds float32 images [N,3,S,S]`,
    );
  }
  const dims = declaredShape(input);
  if (dims && (dims.length !== 4 || (dims[1] !== null && dims[1] !== 3))) {
    const shape = showShape(dims);
    const hint = dims.length === 4 && dims[3] === 3 ? ' (channels last, NHWC)' : '';
    throw new BackboneError(`backbone ${path}: input '${d.input}' is ${shape}${hint}; shelfwatch feeds images as [N,3,S,S] (NCHW)`);
  }
  const producer = new Map<string, string>();
  for (const n of graph.node ?? []) for (const o of n.output ?? []) producer.set(o, n.opType ?? '');
  const inits = new Set((graph.initializer ?? []).map((i) => i.name));
  for (const tap of d.taps) {
    if (!producer.has(tap.tensor)) {
      throw new BackboneError(`backbone ${path}: tap '${tap.tensor}' (stride ${tap.stride}) is not produced by any node of the graph`);
    }
    const op = producer.get(tap.tensor)!;
    if (!tap.dequantize && QUANTIZED_OUTPUT.test(op)) {
      throw new BackboneError(
        `backbone ${path}: tap '${tap.tensor}' is quantized (made by ${op}) and the descriptor gives no dequantize: ` +
          'name its scale and zero-point initializers in the tap\'s "dequantize" ({ "scale": …, "zeroPoint": … })',
      );
    }
    if (tap.dequantize) {
      for (const name of [tap.dequantize.scale, tap.dequantize.zeroPoint]) {
        if (!inits.has(name)) throw new BackboneError(`backbone ${path}: tap '${tap.tensor}' dequantization initializer '${name}' is missing`);
      }
    }
  }
}
