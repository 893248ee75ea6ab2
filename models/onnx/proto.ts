/**
 * The ONNX protobuf schema (the subset of onnx.proto that models use; IR version ≤ 10),
 * loaded with protobufjs at runtime so that no generated code or .proto file has to ship.
 * Field numbers follow onnx/onnx.proto exactly.
 */
import protobuf from 'protobufjs';

const SCHEMA = `
syntax = "proto3";
package onnx;

message AttributeProto {
  string name = 1;
  string ref_attr_name = 21;
  string doc_string = 13;
  int32 type = 20;
  float f = 2;
  int64 i = 3;
  bytes s = 4;
  TensorProto t = 5;
  GraphProto g = 6;
  SparseTensorProto sparse_tensor = 22;
  TypeProto tp = 14;
  repeated float floats = 7;
  repeated int64 ints = 8;
  repeated bytes strings = 9;
  repeated TensorProto tensors = 10;
  repeated GraphProto graphs = 11;
  repeated SparseTensorProto sparse_tensors = 23;
  repeated TypeProto type_protos = 15;
}

message ValueInfoProto {
  string name = 1;
  TypeProto type = 2;
  string doc_string = 3;
  repeated StringStringEntryProto metadata_props = 4;
}

message NodeProto {
  repeated string input = 1;
  repeated string output = 2;
  string name = 3;
  string op_type = 4;
  string domain = 7;
  string overload = 8;
  repeated AttributeProto attribute = 5;
  string doc_string = 6;
  repeated StringStringEntryProto metadata_props = 9;
}

message ModelProto {
  int64 ir_version = 1;
  repeated OperatorSetIdProto opset_import = 8;
  string producer_name = 2;
  string producer_version = 3;
  string domain = 4;
  int64 model_version = 5;
  string doc_string = 6;
  GraphProto graph = 7;
  repeated StringStringEntryProto metadata_props = 14;
  repeated FunctionProto functions = 25;
}

message FunctionProto {
  string name = 1;
  repeated string input = 4;
  repeated string output = 5;
  repeated string attribute = 6;
  repeated AttributeProto attribute_proto = 11;
  repeated NodeProto node = 7;
  string doc_string = 8;
  repeated OperatorSetIdProto opset_import = 9;
  string domain = 10;
  string overload = 13;
  repeated ValueInfoProto value_info = 12;
  repeated StringStringEntryProto metadata_props = 14;
}

message StringStringEntryProto {
  string key = 1;
  string value = 2;
}

message TensorAnnotation {
  string tensor_name = 1;
  repeated StringStringEntryProto quant_parameter_tensor_names = 2;
}

message GraphProto {
  repeated NodeProto node = 1;
  string name = 2;
  repeated TensorProto initializer = 5;
  repeated SparseTensorProto sparse_initializer = 15;
  string doc_string = 10;
  repeated ValueInfoProto input = 11;
  repeated ValueInfoProto output = 12;
  repeated ValueInfoProto value_info = 13;
  repeated TensorAnnotation quantization_annotation = 14;
  repeated StringStringEntryProto metadata_props = 16;
}

message TensorProto {
  message Segment {
    int64 begin = 1;
    int64 end = 2;
  }
  repeated int64 dims = 1;
  int32 data_type = 2;
  Segment segment = 3;
  repeated float float_data = 4 [packed = true];
  repeated int32 int32_data = 5 [packed = true];
  repeated bytes string_data = 6;
  repeated int64 int64_data = 7 [packed = true];
  string name = 8;
  string doc_string = 12;
  bytes raw_data = 9;
  repeated StringStringEntryProto external_data = 13;
  int32 data_location = 14;
  repeated double double_data = 10 [packed = true];
  repeated uint64 uint64_data = 11 [packed = true];
  repeated StringStringEntryProto metadata_props = 16;
}

message SparseTensorProto {
  TensorProto values = 1;
  TensorProto indices = 2;
  repeated int64 dims = 3;
}

message TensorShapeProto {
  message Dimension {
    oneof value {
      int64 dim_value = 1;
      string dim_param = 2;
    };
    string denotation = 3;
  };
  repeated Dimension dim = 1;
}

message TypeProto {
  message Tensor {
    int32 elem_type = 1;
    TensorShapeProto shape = 2;
  }
  message Sequence {
    TypeProto elem_type = 1;
  };
  message Map {
    int32 key_type = 1;
    TypeProto value_type = 2;
  };
  message Optional {
    TypeProto elem_type = 1;
  };
  message SparseTensor {
    int32 elem_type = 1;
    TensorShapeProto shape = 2;
  }
  oneof value {
    Tensor tensor_type = 1;
    Sequence sequence_type = 4;
    Map map_type = 5;
    Optional optional_type = 9;
    SparseTensor sparse_tensor_type = 8;
  }
  string denotation = 6;
}

message OperatorSetIdProto {
  string domain = 1;
  int64 version = 2;
}
`;

/** ONNX TensorProto.DataType values used here. */
export const DataType = {
  FLOAT: 1,
  UINT8: 2,
  INT8: 3,
  INT32: 6,
  INT64: 7,
} as const;

/** AttributeProto.AttributeType values used here. */
export const AttrType = {
  FLOAT: 1,
  INT: 2,
  STRING: 3,
  TENSOR: 4,
  FLOATS: 6,
  INTS: 7,
} as const;

export interface StringEntry { key: string; value: string }
export interface Dimension { dimValue?: number | Long; dimParam?: string }
export interface TensorProto {
  dims?: Array<number | Long>;
  dataType?: number;
  name?: string;
  rawData?: Uint8Array;
  floatData?: number[];
  int32Data?: number[];
  int64Data?: Array<number | Long>;
  doubleData?: number[];
  dataLocation?: number;
}
export interface AttributeProto {
  name: string;
  type?: number;
  f?: number;
  i?: number | Long;
  s?: Uint8Array;
  t?: TensorProto;
  floats?: number[];
  ints?: Array<number | Long>;
  strings?: Uint8Array[];
  [k: string]: unknown;
}
export interface NodeProto {
  input?: string[];
  output?: string[];
  name?: string;
  opType?: string;
  domain?: string;
  attribute?: AttributeProto[];
  docString?: string;
}
export interface ValueInfoProto {
  name?: string;
  type?: { tensorType?: { elemType?: number; shape?: { dim?: Dimension[] } }; [k: string]: unknown };
  docString?: string;
}
export interface GraphProto {
  node?: NodeProto[];
  name?: string;
  initializer?: TensorProto[];
  input?: ValueInfoProto[];
  output?: ValueInfoProto[];
  valueInfo?: ValueInfoProto[];
  quantizationAnnotation?: unknown[];
  docString?: string;
  [k: string]: unknown;
}
export interface ModelProto {
  irVersion?: number | Long;
  opsetImport?: Array<{ domain?: string; version?: number | Long }>;
  producerName?: string;
  producerVersion?: string;
  domain?: string;
  modelVersion?: number | Long;
  docString?: string;
  graph?: GraphProto;
  metadataProps?: StringEntry[];
  /** Model-local functions (torch's exporter can emit them): nodes of the graph may call them. */
  functions?: unknown[];
}
/** protobufjs represents int64 as a Long object when the value is large. */
export interface Long { low: number; high: number; unsigned: boolean; toNumber(): number }

let modelType: protobuf.Type | undefined;
function type(): protobuf.Type {
  if (!modelType) modelType = protobuf.parse(SCHEMA, { keepCase: false }).root.lookupType('onnx.ModelProto');
  return modelType;
}

/** Thrown when bytes are not a readable ONNX model. */
export class OnnxFormatError extends Error {
  constructor(readonly origin: string, reason: string) {
    super(`${origin}: not a valid ONNX model (${reason})`);
    this.name = 'OnnxFormatError';
  }
}

export function decodeModel(bytes: Uint8Array, origin = 'model'): ModelProto {
  if (bytes.length === 0) throw new OnnxFormatError(origin, 'the file is empty');
  let msg: protobuf.Message;
  try {
    msg = type().decode(bytes);
  } catch (e) {
    throw new OnnxFormatError(origin, `protobuf decoding failed: ${(e as Error).message}`);
  }
  const model = type().toObject(msg, { defaults: false, arrays: true, bytes: Uint8Array as unknown as StringConstructor }) as ModelProto;
  if (!model.graph || !model.graph.node || model.graph.node.length === 0) {
    throw new OnnxFormatError(origin, 'it has no graph nodes');
  }
  return model;
}

export function encodeModel(model: ModelProto): Uint8Array {
  const t = type();
  return t.encode(t.fromObject(model as Record<string, unknown>)).finish();
}

/** A declared tensor shape: numbers for fixed dimensions, null for symbolic or unknown ones; null when undeclared. */
export function declaredShape(v: ValueInfoProto): Array<number | null> | null {
  const dims = v.type?.tensorType?.shape?.dim;
  if (!dims) return null;
  return dims.map((d) => (d.dimValue !== undefined ? toNumber(d.dimValue) : null));
}

/** `[N,3,224,?]`: a declared shape as error messages show it. */
export const showShape = (shape: Array<number | null>): string => `[${shape.map((d) => d ?? '?').join(',')}]`;

export function toNumber(v: number | Long | undefined): number {
  if (v === undefined) return 0;
  return typeof v === 'number' ? v : v.toNumber();
}
