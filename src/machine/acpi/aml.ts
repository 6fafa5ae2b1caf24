/**
 * A small AML (ACPI Machine Language) encoder, enough for a virtual machine's DSDT: names, scopes,
 * devices, methods, integers, strings, EISA IDs, buffers, packages and resource templates
 * (ACPI 6.5 chapters 19 and 20, 6.4 for resource descriptors).
 *
 * Every builder returns the encoded bytes (`Uint8Array`); containers take their children as
 * already-encoded terms, so a DSDT reads like the ASL it stands for:
 *
 * ```ts
 * scope("\\_SB_", device("COM1", name("_HID", eisaId("PNP0501")), name("_UID", integer(1))));
 * ```
 * @module
 */

/** Concatenates encoded terms. */
export function concat(...parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

// --- PkgLength (ACPI 20.2.4) ---

/** Largest value a PkgLength can encode (4 bytes: 4 + 8 + 8 + 8 bits). */
export const PKG_LENGTH_MAX = 0x0fff_ffff;

/**
 * Encodes a PkgLength whose value (`total`, which counts the PkgLength bytes themselves) is
 * known: 1 byte up to 63, 2 bytes up to 0xFFF, 3 up to 0xFFFFF, 4 up to 0xFFFFFFF.
 */
export function encodePkgLength(total: number): Uint8Array {
  if (!Number.isSafeInteger(total) || total < 0 || total > PKG_LENGTH_MAX) {
    throw new RangeError(`AML PkgLength ${total} is out of range`);
  }
  if (total <= 0x3f) return Uint8Array.of(total);
  const follow = total <= 0xfff ? 1 : total <= 0xf_ffff ? 2 : 3;
  const out = new Uint8Array(1 + follow);
  out[0] = (follow << 6) | (total & 0xf);
  for (let i = 0; i < follow; i++) out[1 + i] = (total >>> (4 + 8 * i)) & 0xff;
  return out;
}

/** The PkgLength for `bodyLength` bytes that follow it (the encoding counts its own bytes). */
export function pkgLength(bodyLength: number): Uint8Array {
  for (let n = 1; n <= 4; n++) {
    const total = bodyLength + n;
    const enc = encodePkgLength(total);
    if (enc.length === n) return enc;
  }
  throw new RangeError(`AML package body of ${bodyLength} bytes is too long`);
}

function withPkgLength(opcode: readonly number[], ...body: Uint8Array[]): Uint8Array {
  const b = concat(...body);
  return concat(Uint8Array.from(opcode), pkgLength(b.length), b);
}

// --- Names (ACPI 20.2.2) ---

const ROOT_CHAR = 0x5c;
const PARENT_PREFIX = 0x5e;
const DUAL_NAME_PREFIX = 0x2e;
const MULTI_NAME_PREFIX = 0x2f;
const NULL_NAME = 0x00;

function nameSeg(seg: string): Uint8Array {
  if (!/^[A-Z_][A-Z0-9_]{0,3}$/.test(seg)) {
    throw new RangeError(`AML name segment "${seg}" is not 1-4 of [A-Z0-9_] starting non-digit`);
  }
  const padded = seg.padEnd(4, "_");
  return Uint8Array.from(padded, (c) => c.charCodeAt(0));
}

/**
 * Encodes a NameString: an optional root (`\`) or parent (`^`) prefix, then dot-separated
 * segments of up to 4 characters (short ones are padded with `_`), e.g. `"\\_SB.COM1"`.
 */
export function nameString(path: string): Uint8Array {
  const prefix: number[] = [];
  let rest = path;
  if (rest.startsWith("\\")) {
    prefix.push(ROOT_CHAR);
    rest = rest.slice(1);
  } else {
    while (rest.startsWith("^")) {
      prefix.push(PARENT_PREFIX);
      rest = rest.slice(1);
    }
  }
  const segs = rest === "" ? [] : rest.split(".").map(nameSeg);
  let names: Uint8Array;
  if (segs.length === 0) names = Uint8Array.of(NULL_NAME);
  else if (segs.length === 1) names = segs[0]!;
  else if (segs.length === 2) names = concat(Uint8Array.of(DUAL_NAME_PREFIX), ...segs);
  else if (segs.length <= 255) {
    names = concat(Uint8Array.of(MULTI_NAME_PREFIX, segs.length), ...segs);
  } else throw new RangeError(`AML name "${path}" has too many segments`);
  return concat(Uint8Array.from(prefix), names);
}

// --- Data objects (ACPI 20.2.3) ---

const ZERO_OP = 0x00;
const ONE_OP = 0x01;
const BYTE_PREFIX = 0x0a;
const WORD_PREFIX = 0x0b;
const DWORD_PREFIX = 0x0c;
const STRING_PREFIX = 0x0d;
const QWORD_PREFIX = 0x0e;

/**
 * Encodes an integer with the shortest form: ZeroOp, OneOp, or Byte/Word/DWord/QWord prefix.
 * Accepts 0 ..= 2^64-1.
 */
export function integer(value: number | bigint): Uint8Array {
  if (typeof value === "number" && !Number.isSafeInteger(value)) {
    throw new RangeError(`AML integer ${value} is not a safe integer; pass a bigint`);
  }
  const v = BigInt(value);
  if (v < 0n || v > 0xffff_ffff_ffff_ffffn) {
    throw new RangeError(`AML integer ${value} is outside 0 ..= 2^64-1`);
  }
  if (v === 0n) return Uint8Array.of(ZERO_OP);
  if (v === 1n) return Uint8Array.of(ONE_OP);
  if (v <= 0xffn) return Uint8Array.of(BYTE_PREFIX, Number(v));
  if (v <= 0xffffn) return leBytes(WORD_PREFIX, v, 2);
  if (v <= 0xffff_ffffn) return leBytes(DWORD_PREFIX, v, 4);
  return leBytes(QWORD_PREFIX, v, 8);
}

function leBytes(prefix: number, v: bigint, width: number): Uint8Array {
  const out = new Uint8Array(1 + width);
  out[0] = prefix;
  for (let i = 0; i < width; i++) out[1 + i] = Number((v >> BigInt(8 * i)) & 0xffn);
  return out;
}

/** Encodes an ASCII string (String prefix, characters, NUL). */
export function string(s: string): Uint8Array {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c === 0 || c > 0x7f) throw new RangeError(`AML string "${s}" is not 7-bit ASCII`);
  }
  return concat(
    Uint8Array.of(STRING_PREFIX),
    Uint8Array.from(s, (c) => c.charCodeAt(0)),
    Uint8Array.of(0),
  );
}

/**
 * The 32-bit compressed EISA ID of a PNP ID like "PNP0501" (three letters, four hex digits):
 * `EISAID("PNP0501")` is 0x0105D041.
 */
export function eisaIdValue(id: string): number {
  if (!/^[A-Z]{3}[0-9A-F]{4}$/.test(id)) {
    throw new RangeError(`EISA ID "${id}" is not three capitals and four hex digits`);
  }
  const c = (i: number) => id.charCodeAt(i) - 0x40;
  const vendor = (c(0) << 10) | (c(1) << 5) | c(2);
  const product = parseInt(id.slice(3), 16);
  return ((vendor >> 8) | ((vendor & 0xff) << 8) | ((product >> 8) << 16) |
    ((product & 0xff) << 24)) >>> 0;
}

/** Encodes `EISAID(id)` as ASL compilers do: always a DWord constant. */
export function eisaId(id: string): Uint8Array {
  return leBytes(DWORD_PREFIX, BigInt(eisaIdValue(id)), 4);
}

/** Encodes `Buffer() { bytes }` with its size as an integer. */
export function buffer(bytes: Uint8Array): Uint8Array {
  return withPkgLength([0x11], integer(bytes.length), bytes);
}

/** Encodes `Package() { elements }` (at most 255 elements). */
export function pkg(...elements: Uint8Array[]): Uint8Array {
  if (elements.length > 255) throw new RangeError("AML Package has more than 255 elements");
  return withPkgLength([0x12], Uint8Array.of(elements.length), ...elements);
}

// --- Named objects and statements (ACPI 20.2.5) ---

/** Encodes `Name(path, value)`. */
export function name(path: string, value: Uint8Array): Uint8Array {
  return concat(Uint8Array.of(0x08), nameString(path), value);
}

/** Encodes `Scope(path) { terms }`. */
export function scope(path: string, ...terms: Uint8Array[]): Uint8Array {
  return withPkgLength([0x10], nameString(path), ...terms);
}

/** Encodes `Device(path) { terms }`. */
export function device(path: string, ...terms: Uint8Array[]): Uint8Array {
  return withPkgLength([0x5b, 0x82], nameString(path), ...terms);
}

/** Options of `method`. */
export interface MethodOptions {
  /** Number of arguments, 0-7. */
  readonly args?: number;
  /** Serialized (one invocation at a time). */
  readonly serialized?: boolean;
}

/** Encodes `Method(path, args, NotSerialized|Serialized) { terms }`. */
export function method(path: string, options: MethodOptions, ...terms: Uint8Array[]): Uint8Array {
  const args = options.args ?? 0;
  if (!Number.isInteger(args) || args < 0 || args > 7) {
    throw new RangeError(`AML method ${path} cannot take ${args} arguments (0-7)`);
  }
  const flags = args | (options.serialized ? 0x08 : 0);
  return withPkgLength([0x14], nameString(path), Uint8Array.of(flags), ...terms);
}

/** Encodes `Return(value)`. */
export function ret(value: Uint8Array): Uint8Array {
  return concat(Uint8Array.of(0xa4), value);
}

// --- Resource descriptors (ACPI 6.4) ---

/** Encodes `ResourceTemplate() { descriptors }`: a Buffer ending with an End Tag. */
export function resourceTemplate(...descriptors: Uint8Array[]): Uint8Array {
  return buffer(concat(...descriptors, endTag()));
}

/**
 * The End Tag small descriptor. Its checksum byte is 0, which the specification defines as
 * "the resource data is treated as if the checksum operation succeeded" (ASL compilers emit 0).
 */
export function endTag(): Uint8Array {
  return Uint8Array.of(0x79, 0x00);
}

function u16(v: number): number[] {
  return [v & 0xff, (v >>> 8) & 0xff];
}

function u32(v: number): number[] {
  return [v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, (v >>> 24) & 0xff];
}

function u64(v: number | bigint): number[] {
  const b = BigInt(v);
  return [...u32(Number(b & 0xffff_ffffn)), ...u32(Number(b >> 32n))];
}

/** `IO(Decode16, min, max, align, length)`: a fixed or relocatable range of I/O ports. */
export function io(min: number, max: number, align: number, length: number): Uint8Array {
  return Uint8Array.of(0x47, 0x01, ...u16(min), ...u16(max), align & 0xff, length & 0xff);
}

function irqMask(irqs: readonly number[]): number {
  let mask = 0;
  for (const irq of irqs) {
    if (!Number.isInteger(irq) || irq < 0 || irq > 15) {
      throw new RangeError(`ISA IRQ ${irq} is outside 0-15`);
    }
    mask |= 1 << irq;
  }
  return mask;
}

/** `IRQNoFlags() { irqs }`: ISA IRQs, edge-triggered, active high. */
export function irqNoFlags(...irqs: number[]): Uint8Array {
  return Uint8Array.of(0x22, ...u16(irqMask(irqs)));
}

/** Trigger and polarity of an interrupt descriptor. */
export interface InterruptFlags {
  /** Edge-triggered (default) rather than level-triggered. */
  readonly edge?: boolean;
  /** Active low rather than active high (default). */
  readonly activeLow?: boolean;
  /** Shared rather than exclusive (default). */
  readonly shared?: boolean;
}

/** `IRQ(Edge|Level, ActiveHigh|ActiveLow, Exclusive|Shared) { irqs }`. */
export function irq(flags: InterruptFlags, ...irqs: number[]): Uint8Array {
  const info = ((flags.edge ?? true) ? 0x01 : 0) | (flags.activeLow ? 0x08 : 0) |
    (flags.shared ? 0x10 : 0);
  return Uint8Array.of(0x23, ...u16(irqMask(irqs)), info);
}

/** `Interrupt(ResourceConsumer, ...) { gsis }`: the extended interrupt descriptor. */
export function extendedInterrupt(flags: InterruptFlags, ...gsis: number[]): Uint8Array {
  if (gsis.length === 0 || gsis.length > 255) {
    throw new RangeError("an Interrupt descriptor lists 1-255 interrupts");
  }
  const info = 0x01 | ((flags.edge ?? true) ? 0x02 : 0) | (flags.activeLow ? 0x04 : 0) |
    (flags.shared ? 0x08 : 0);
  const body = [info, gsis.length, ...gsis.flatMap((g) => u32(g))];
  return Uint8Array.of(0x89, ...u16(body.length), ...body);
}

/** Common options of the address space descriptors. */
export interface AddressSpaceOptions {
  /** ResourceProducer (a bridge window, default) or ResourceConsumer. */
  readonly consumer?: boolean;
  /** Memory: Cacheable (default), NonCacheable, WriteCombining or Prefetchable. */
  readonly cacheable?: "cacheable" | "noncacheable" | "writecombining" | "prefetchable";
  /** Memory: ReadWrite (default) or ReadOnly. */
  readonly readOnly?: boolean;
}

const CACHE_BITS = { noncacheable: 0, cacheable: 1, writecombining: 2, prefetchable: 3 } as const;

function generalFlags(o: AddressSpaceOptions): number {
  // _MAF and _MIF set (fixed window), positive decode, producer unless asked.
  return 0x0c | (o.consumer ? 0x01 : 0);
}

function memoryFlags(o: AddressSpaceOptions): number {
  return (o.readOnly ? 0 : 0x01) | (CACHE_BITS[o.cacheable ?? "cacheable"] << 1);
}

function checkRange(base: number | bigint, length: number | bigint, max: bigint): [bigint, bigint] {
  const b = BigInt(base);
  const l = BigInt(length);
  if (b < 0n || l <= 0n || b + l - 1n > max) {
    throw new RangeError(`address range ${base}+${length} does not fit the descriptor`);
  }
  return [b, l];
}

/** `DWordMemory(...)`: a fixed 32-bit memory range `[base, base+length)`. */
export function dwordMemory(
  base: number,
  length: number,
  options: AddressSpaceOptions = {},
): Uint8Array {
  const [b, l] = checkRange(base, length, 0xffff_ffffn);
  const body = [
    0x00,
    generalFlags(options),
    memoryFlags(options),
    ...u32(0),
    ...u32(Number(b)),
    ...u32(Number(b + l - 1n)),
    ...u32(0),
    ...u32(Number(l)),
  ];
  return Uint8Array.of(0x87, ...u16(body.length), ...body);
}

/** `QWordMemory(...)`: a fixed 64-bit memory range `[base, base+length)`. */
export function qwordMemory(
  base: number | bigint,
  length: number | bigint,
  options: AddressSpaceOptions = {},
): Uint8Array {
  const [b, l] = checkRange(base, length, 0xffff_ffff_ffff_ffffn);
  const body = [
    0x00,
    generalFlags(options),
    memoryFlags(options),
    ...u64(0),
    ...u64(b),
    ...u64(b + l - 1n),
    ...u64(0),
    ...u64(l),
  ];
  return Uint8Array.of(0x8a, ...u16(body.length), ...body);
}

/** A Word Address Space descriptor (0x88) of `resourceType` for `[base, base+length)`. */
function wordAddressSpace(
  resourceType: number,
  typeFlags: number,
  base: number,
  length: number,
  options: AddressSpaceOptions,
): Uint8Array {
  const [b, l] = checkRange(base, length, 0xffffn);
  const body = [
    resourceType,
    generalFlags(options),
    typeFlags,
    ...u16(0),
    ...u16(Number(b)),
    ...u16(Number(b + l - 1n)),
    ...u16(0),
    ...u16(Number(l)),
  ];
  return Uint8Array.of(0x88, ...u16(body.length), ...body);
}

/** `WordBusNumber(...)`: a fixed range of PCI bus numbers `[base, base+length)`. */
export function wordBusNumber(
  base: number,
  length: number,
  options: AddressSpaceOptions = {},
): Uint8Array {
  return wordAddressSpace(0x02, 0x00, base, length, options);
}

/** `WordIO(...)`: a fixed range of I/O ports `[base, base+length)` (entire ISA/non-ISA). */
export function wordIo(
  base: number,
  length: number,
  options: AddressSpaceOptions = {},
): Uint8Array {
  return wordAddressSpace(0x01, 0x03, base, length, options);
}

/** `Memory32Fixed(ReadWrite|ReadOnly, base, length)`. */
export function memory32Fixed(base: number, length: number, readOnly = false): Uint8Array {
  checkRange(base, length, 0xffff_ffffn);
  return Uint8Array.of(0x86, ...u16(9), readOnly ? 0 : 1, ...u32(base), ...u32(length));
}
