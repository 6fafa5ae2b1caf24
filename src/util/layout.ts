/**
 * Wire structs declared once: a name, a size, and typed fields at fixed offsets. Codecs decode
 * from and encode to little-endian bytes with bounds checks, so protocol code never sprinkles
 * raw offsets through its logic. Each layout's size is pinned by a unit test of its layer.
 * @module
 */

/**
 * Field kinds: little-endian integers (u64/i64 as bigint), big-endian integers (`…be`, for the
 * few wire formats that are big-endian, such as QEMU's fw_cfg) or a fixed run of bytes.
 */
export type FieldType =
  | "u8"
  | "u16"
  | "u32"
  | "i32"
  | "u64"
  | "i64"
  | "u16be"
  | "u32be"
  | "u64be"
  | { bytes: number };

/** A field: byte offset within the struct and its kind. */
export interface FieldSpec {
  readonly offset: number;
  readonly type: FieldType;
}

type FieldValue<T extends FieldType> = T extends "u64" | "i64" | "u64be" ? bigint
  : T extends { bytes: number } ? Uint8Array
  : number;

/** Decoded value of a layout: one property per field. */
export type Decoded<F extends Record<string, FieldSpec>> = {
  -readonly [K in keyof F]: FieldValue<F[K]["type"]>;
};

function widthOf(t: FieldType): number {
  switch (t) {
    case "u8":
      return 1;
    case "u16":
    case "u16be":
      return 2;
    case "u32":
    case "i32":
    case "u32be":
      return 4;
    case "u64":
    case "i64":
    case "u64be":
      return 8;
    default:
      return t.bytes;
  }
}

/** A fixed-size little-endian struct. */
export class Layout<F extends Record<string, FieldSpec>> {
  /** C name of the struct, for messages. */
  readonly name: string;
  /** Size in bytes. */
  readonly size: number;
  /** Field table. */
  readonly fields: F;

  constructor(name: string, size: number, fields: F) {
    this.name = name;
    this.size = size;
    this.fields = fields;
    for (const [k, f] of Object.entries(fields)) {
      if (f.offset < 0 || f.offset + widthOf(f.type) > size) {
        throw new Error(`layout ${name}: field ${k} lies outside the struct`);
      }
    }
  }

  /** Reads one field of the struct starting at `base` in `bytes`. Throws RangeError if short. */
  get<K extends keyof F>(bytes: Uint8Array, base: number, key: K): FieldValue<F[K]["type"]> {
    const f = this.fields[key]!;
    const at = base + f.offset;
    const t = f.type;
    // Small integers straight from the bytes: no DataView allocated per access.
    if (t === "u8" || t === "u16" || t === "u32" || t === "i32") {
      const w = t === "u8" ? 1 : t === "u16" ? 2 : 4;
      if (at < 0 || at + w > bytes.length) throw new RangeError("field past end of buffer");
      if (t === "u8") return bytes[at]! as FieldValue<F[K]["type"]>;
      if (t === "u16") return (bytes[at]! | (bytes[at + 1]! << 8)) as FieldValue<F[K]["type"]>;
      const v = bytes[at]! | (bytes[at + 1]! << 8) | (bytes[at + 2]! << 16) |
        (bytes[at + 3]! << 24);
      return (t === "u32" ? v >>> 0 : v) as FieldValue<F[K]["type"]>;
    }
    const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    return readField(dv, at, t) as FieldValue<F[K]["type"]>;
  }

  /** Writes one field of the struct starting at `base` in `bytes`. */
  set<K extends keyof F>(
    bytes: Uint8Array,
    base: number,
    key: K,
    value: FieldValue<F[K]["type"]>,
  ): void {
    const f = this.fields[key]!;
    const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    writeField(dv, base + f.offset, f.type, value);
  }

  /** Decodes the struct at `base`, or `undefined` when fewer than `size` bytes are there. */
  decode(bytes: Uint8Array, base = 0): Decoded<F> | undefined {
    if (base < 0 || base + this.size > bytes.length) return undefined;
    const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const out: Record<string, unknown> = {};
    for (const [k, f] of Object.entries(this.fields)) {
      out[k] = readField(dv, base + f.offset, f.type);
    }
    return out as Decoded<F>;
  }

  /** Encodes `value` (missing fields are zero) into `into` at `base`, or into a new buffer. */
  encode(value: Partial<Decoded<F>>, into?: Uint8Array, base = 0): Uint8Array {
    const out = into ?? new Uint8Array(this.size);
    if (base < 0 || base + this.size > out.length) {
      throw new RangeError(`layout ${this.name}: ${out.length - base} bytes is too short`);
    }
    out.fill(0, base, base + this.size);
    const dv = new DataView(out.buffer, out.byteOffset, out.byteLength);
    for (const [k, f] of Object.entries(this.fields)) {
      const v = (value as Record<string, unknown>)[k];
      if (v !== undefined) writeField(dv, base + f.offset, f.type, v);
    }
    return out;
  }
}

function readField(dv: DataView, at: number, t: FieldType): number | bigint | Uint8Array {
  switch (t) {
    case "u8":
      return dv.getUint8(at);
    case "u16":
      return dv.getUint16(at, true);
    case "u32":
      return dv.getUint32(at, true);
    case "i32":
      return dv.getInt32(at, true);
    case "u64":
      return dv.getBigUint64(at, true);
    case "i64":
      return dv.getBigInt64(at, true);
    case "u16be":
      return dv.getUint16(at, false);
    case "u32be":
      return dv.getUint32(at, false);
    case "u64be":
      return dv.getBigUint64(at, false);
    default:
      if (at + t.bytes > dv.byteLength) throw new RangeError("field past end of buffer");
      return new Uint8Array(dv.buffer, dv.byteOffset + at, t.bytes).slice();
  }
}

function writeField(dv: DataView, at: number, t: FieldType, v: unknown): void {
  switch (t) {
    case "u8":
      dv.setUint8(at, v as number);
      return;
    case "u16":
      dv.setUint16(at, v as number, true);
      return;
    case "u32":
      dv.setUint32(at, (v as number) >>> 0, true);
      return;
    case "i32":
      dv.setInt32(at, v as number, true);
      return;
    case "u64":
      dv.setBigUint64(at, BigInt.asUintN(64, v as bigint), true);
      return;
    case "i64":
      dv.setBigInt64(at, BigInt.asIntN(64, v as bigint), true);
      return;
    case "u16be":
      dv.setUint16(at, v as number, false);
      return;
    case "u32be":
      dv.setUint32(at, (v as number) >>> 0, false);
      return;
    case "u64be":
      dv.setBigUint64(at, BigInt.asUintN(64, v as bigint), false);
      return;
    default: {
      const src = v as Uint8Array;
      const dst = new Uint8Array(dv.buffer, dv.byteOffset + at, t.bytes);
      dst.fill(0);
      dst.set(src.subarray(0, t.bytes));
    }
  }
}

/** Declares a wire struct. */
export function defineLayout<const F extends Record<string, FieldSpec>>(
  name: string,
  size: number,
  fields: F,
): Layout<F> {
  return new Layout(name, size, fields);
}
