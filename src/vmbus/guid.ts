/**
 * GUIDs in the mixed-endian Windows wire layout used by VMBus offers and hv_sock requests:
 * `Data1` (u32), `Data2` (u16) and `Data3` (u16) little-endian, then `Data4` (8 bytes) in text
 * order. `ba6163d9-04a1-4d29-b605-72e2ffb1dc7f` is on the wire as
 * `d9 63 61 ba a1 04 29 4d b6 05 72 e2 ff b1 dc 7f`.
 * @module
 */

/** Size of a GUID on the wire, in bytes. */
export const GUID_SIZE = 16;

const GUID_RE =
  /^\{?([0-9a-fA-F]{8})-([0-9a-fA-F]{4})-([0-9a-fA-F]{4})-([0-9a-fA-F]{4})-([0-9a-fA-F]{12})\}?$/;

/**
 * Parses canonical GUID text (`xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, optionally in braces, any
 * case) into its 16 wire bytes. Throws `TypeError` for anything else.
 */
export function parseGuid(text: string): Uint8Array {
  const m = GUID_RE.exec(text);
  if (!m) {
    throw new TypeError(`"${text}" is not a GUID; expected xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`);
  }
  const out = new Uint8Array(GUID_SIZE);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, parseInt(m[1]!, 16), true);
  dv.setUint16(4, parseInt(m[2]!, 16), true);
  dv.setUint16(6, parseInt(m[3]!, 16), true);
  const tail = m[4]! + m[5]!;
  for (let i = 0; i < 8; i++) out[8 + i] = parseInt(tail.slice(i * 2, i * 2 + 2), 16);
  return out;
}

function hex(n: number, width: number): string {
  return n.toString(16).padStart(width, "0");
}

/**
 * Formats 16 wire bytes (starting at `offset`) as lower-case canonical GUID text. Throws
 * `RangeError` when fewer than 16 bytes are there.
 */
export function formatGuid(bytes: Uint8Array, offset = 0): string {
  if (offset < 0 || offset + GUID_SIZE > bytes.length) {
    throw new RangeError("a GUID needs 16 bytes");
  }
  const dv = new DataView(bytes.buffer, bytes.byteOffset + offset, GUID_SIZE);
  let tail = "";
  for (let i = 8; i < 16; i++) {
    tail += hex(dv.getUint8(i), 2);
    if (i === 9) tail += "-";
  }
  return `${hex(dv.getUint32(0, true), 8)}-${hex(dv.getUint16(4, true), 4)}-${
    hex(dv.getUint16(6, true), 4)
  }-${tail}`;
}

/** True when two 16-byte GUIDs are equal. */
export function guidEquals(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== GUID_SIZE || b.length !== GUID_SIZE) return false;
  for (let i = 0; i < GUID_SIZE; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** The all-zero GUID. */
export const NIL_GUID: Readonly<Uint8Array> = new Uint8Array(GUID_SIZE);
