/**
 * A small helper for appending nodes and constants to an ONNX graph. Names are prefixed
 * so that nodes added by shelfwatch never collide with the backbone's own tensor names.
 */
import { AttrType, DataType, type AttributeProto, type GraphProto, type NodeProto, type TensorProto, type ValueInfoProto } from './proto.js';

export type AttrValue = number | number[] | string | { ints: number[] } | { floats: number[] } | { float: number };

function attribute(name: string, value: AttrValue): AttributeProto {
  if (typeof value === 'string') return { name, type: AttrType.STRING, s: new TextEncoder().encode(value) };
  if (typeof value === 'number') return { name, type: AttrType.INT, i: value };
  if (Array.isArray(value)) return { name, type: AttrType.INTS, ints: value };
  if ('ints' in value) return { name, type: AttrType.INTS, ints: value.ints };
  if ('floats' in value) return { name, type: AttrType.FLOATS, floats: value.floats };
  return { name, type: AttrType.FLOAT, f: value.float };
}

function bytesOf(array: Float32Array | BigInt64Array | Int32Array | Uint8Array): Uint8Array {
  // ONNX raw_data is little-endian; every platform Node runs on here is little-endian.
  return new Uint8Array(array.buffer, array.byteOffset, array.byteLength);
}

export class GraphBuilder {
  private counter = 0;

  constructor(readonly graph: GraphProto, readonly prefix = 'sw/') {
    graph.node ??= [];
    graph.initializer ??= [];
    graph.output ??= [];
    graph.input ??= [];
  }

  /** A fresh tensor name. */
  name(hint: string): string {
    this.counter += 1;
    return `${this.prefix}${hint}_${this.counter}`;
  }

  /** Append a node; returns its output names (one unless `outputs` > 1). */
  op(opType: string, inputs: string[], attrs: Record<string, AttrValue> = {}, outputs = 1, domain = ''): string[] {
    const out = Array.from({ length: outputs }, () => this.name(opType.toLowerCase()));
    const node: NodeProto = {
      opType,
      domain,
      name: this.name(`${opType}_node`),
      input: inputs,
      output: out,
      attribute: Object.entries(attrs).map(([k, v]) => attribute(k, v)),
    };
    this.graph.node!.push(node);
    return out;
  }

  /** Append a node with a single output. */
  op1(opType: string, inputs: string[], attrs: Record<string, AttrValue> = {}): string {
    return this.op(opType, inputs, attrs, 1)[0]!;
  }

  private initializer(hint: string, dims: number[], dataType: number, data: Uint8Array): string {
    const name = this.name(hint);
    const tensor: TensorProto = { name, dims, dataType, rawData: data };
    this.graph.initializer!.push(tensor);
    return name;
  }

  float(hint: string, dims: number[], data: Float32Array | number[]): string {
    const arr = data instanceof Float32Array ? data : Float32Array.from(data);
    checkSize(hint, dims, arr.length);
    return this.initializer(hint, dims, DataType.FLOAT, bytesOf(arr));
  }

  int64(hint: string, dims: number[], data: number[]): string {
    checkSize(hint, dims, data.length);
    return this.initializer(hint, dims, DataType.INT64, bytesOf(BigInt64Array.from(data.map((v) => BigInt(v)))));
  }

  scalarFloat(hint: string, value: number): string {
    return this.float(hint, [], [value]);
  }

  /** Declare a graph output of the given element type and shape (strings are symbolic dims). */
  output(name: string, elemType: number, shape: Array<number | string>): void {
    this.graph.output!.push(valueInfo(name, elemType, shape));
  }
}

function checkSize(hint: string, dims: number[], length: number): void {
  const expected = dims.reduce((a, b) => a * b, 1);
  if (expected !== length) throw new Error(`initializer ${hint}: ${length} values for dims [${dims.join(',')}]`);
}

export function valueInfo(name: string, elemType: number, shape: Array<number | string>): ValueInfoProto {
  return {
    name,
    type: {
      tensorType: {
        elemType,
        shape: { dim: shape.map((d) => (typeof d === 'number' ? { dimValue: d } : { dimParam: d })) },
      },
    },
  };
}

export { DataType };
