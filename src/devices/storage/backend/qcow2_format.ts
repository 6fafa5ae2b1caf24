/**
 * qcow2 on-disk format (QEMU `docs/interop/qcow2.txt`): header fields, header extensions, the
 * bit layout of L1/L2/refcount-table entries, header validation, and the bytes of a new empty
 * image. Everything in qcow2 is big-endian. No I/O here besides `createQcow2File`.
 *
 * Every header value is checked before use: a bad image is refused with a `Qcow2FormatError`
 * that says which field is wrong, never with an exception from deeper code.
 * @module
 */

/** `QFI\xfb`. */
export const QCOW2_MAGIC = 0x514649fb;
/** Smallest and largest cluster_bits accepted (QEMU's limits: 512 B to 2 MiB). */
export const MIN_CLUSTER_BITS = 9;
/** See `MIN_CLUSTER_BITS`. */
export const MAX_CLUSTER_BITS = 21;
/** Largest L1 table accepted, in bytes (QEMU: 32 MiB). */
export const MAX_L1_BYTES = 32 << 20;
/** Largest refcount table accepted, in bytes (QEMU: 8 MiB). */
export const MAX_REFTABLE_BYTES = 8 << 20;
/** Largest virtual size accepted: offsets stay exact JS integers. */
export const MAX_VIRTUAL_SIZE = 2 ** 52;
/** Offsets in tables are below 2^56. */
const MAX_OFFSET = 2 ** 56;

/** Header extension types. */
export const Qcow2Extension = {
  END: 0,
  BACKING_FORMAT: 0xe2792aca,
  FEATURE_NAME_TABLE: 0x6803f857,
  BITMAPS: 0x23852875,
  FULL_DISK_ENCRYPTION: 0x0537be77,
  EXTERNAL_DATA_FILE: 0x44415441,
} as const;

/** Incompatible feature bits. */
export const Incompatible = {
  DIRTY: 1n,
  CORRUPT: 2n,
  EXTERNAL_DATA_FILE: 4n,
  COMPRESSION_TYPE: 8n,
  EXTENDED_L2: 16n,
} as const;

/** A bad qcow2 image (header or metadata). */
export class Qcow2FormatError extends Error {
  /** Error class name. */
  override name = "Qcow2FormatError";
}

/** A decoded and validated qcow2 header. */
export interface Qcow2Header {
  readonly version: 2 | 3;
  readonly backingFileOffset: number;
  readonly backingFileSize: number;
  readonly clusterBits: number;
  readonly size: number;
  readonly cryptMethod: number;
  readonly l1Size: number;
  readonly l1TableOffset: number;
  readonly refcountTableOffset: number;
  readonly refcountTableClusters: number;
  readonly nbSnapshots: number;
  readonly snapshotsOffset: number;
  readonly incompatibleFeatures: bigint;
  readonly compatibleFeatures: bigint;
  readonly autoclearFeatures: bigint;
  readonly refcountOrder: number;
  readonly headerLength: number;
  /** Backing file name, when there is one. */
  readonly backingFile: string | undefined;
  /** Backing format from the header extension (`raw`, `qcow2`), when present. */
  readonly backingFormat: string | undefined;
}

/** Header field offsets (all big-endian). */
export const HeaderField = {
  MAGIC: 0,
  VERSION: 4,
  BACKING_FILE_OFFSET: 8,
  BACKING_FILE_SIZE: 16,
  CLUSTER_BITS: 20,
  SIZE: 24,
  CRYPT_METHOD: 32,
  L1_SIZE: 36,
  L1_TABLE_OFFSET: 40,
  REFCOUNT_TABLE_OFFSET: 48,
  REFCOUNT_TABLE_CLUSTERS: 56,
  NB_SNAPSHOTS: 60,
  SNAPSHOTS_OFFSET: 64,
  INCOMPATIBLE_FEATURES: 72,
  COMPATIBLE_FEATURES: 80,
  AUTOCLEAR_FEATURES: 88,
  REFCOUNT_ORDER: 96,
  HEADER_LENGTH: 100,
} as const;

/** Size of a version 2 header. */
export const V2_HEADER_SIZE = 72;
/** Size of a version 3 header without optional fields. */
export const V3_HEADER_SIZE = 104;

function u64(dv: DataView, at: number, what: string, limit = MAX_OFFSET): number {
  const hi = dv.getUint32(at, false);
  const lo = dv.getUint32(at + 4, false);
  const v = hi * 0x1_0000_0000 + lo;
  if (v >= limit) throw new Qcow2FormatError(`${what} 0x${v.toString(16)} is out of range`);
  return v;
}

function aligned(v: number, clusterSize: number, what: string): void {
  if (v % clusterSize !== 0) {
    throw new Qcow2FormatError(`${what} 0x${v.toString(16)} is not cluster aligned`);
  }
}

/**
 * Reads the fixed header fields from the first bytes of an image; only the magic, version and
 * cluster size are checked here (enough to know how much more to read).
 */
export function peekHeader(bytes: Uint8Array): { version: number; clusterBits: number } {
  if (bytes.length < V2_HEADER_SIZE) {
    throw new Qcow2FormatError(`the header is truncated (${bytes.length} bytes)`);
  }
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (dv.getUint32(HeaderField.MAGIC, false) !== QCOW2_MAGIC) {
    throw new Qcow2FormatError("bad magic: this is not a qcow2 image");
  }
  const version = dv.getUint32(HeaderField.VERSION, false);
  if (version !== 2 && version !== 3) {
    throw new Qcow2FormatError(`version ${version} is not supported (only 2 and 3)`);
  }
  const clusterBits = dv.getUint32(HeaderField.CLUSTER_BITS, false);
  if (clusterBits < MIN_CLUSTER_BITS || clusterBits > MAX_CLUSTER_BITS) {
    throw new Qcow2FormatError(
      `cluster_bits ${clusterBits} is outside ${MIN_CLUSTER_BITS}..${MAX_CLUSTER_BITS}`,
    );
  }
  return { version, clusterBits };
}

/**
 * Decodes and validates the header in `cluster0` (the image's first cluster, or all of a
 * shorter file). Throws `Qcow2FormatError` naming the bad field.
 */
export function parseHeader(cluster0: Uint8Array): Qcow2Header {
  const { version, clusterBits } = peekHeader(cluster0);
  const cs = 2 ** clusterBits;
  const dv = new DataView(cluster0.buffer, cluster0.byteOffset, cluster0.byteLength);
  let headerLength = V2_HEADER_SIZE;
  let incompatibleFeatures = 0n;
  let compatibleFeatures = 0n;
  let autoclearFeatures = 0n;
  let refcountOrder = 4;
  if (version === 3) {
    if (cluster0.length < V3_HEADER_SIZE) {
      throw new Qcow2FormatError(`the version 3 header is truncated (${cluster0.length} bytes)`);
    }
    incompatibleFeatures = dv.getBigUint64(HeaderField.INCOMPATIBLE_FEATURES, false);
    compatibleFeatures = dv.getBigUint64(HeaderField.COMPATIBLE_FEATURES, false);
    autoclearFeatures = dv.getBigUint64(HeaderField.AUTOCLEAR_FEATURES, false);
    refcountOrder = dv.getUint32(HeaderField.REFCOUNT_ORDER, false);
    headerLength = dv.getUint32(HeaderField.HEADER_LENGTH, false);
    if (refcountOrder > 6) {
      throw new Qcow2FormatError(`refcount_order ${refcountOrder} is above 6`);
    }
    if (headerLength < V3_HEADER_SIZE || headerLength % 8 !== 0 || headerLength > cs) {
      throw new Qcow2FormatError(`header_length ${headerLength} is invalid`);
    }
    if (headerLength > cluster0.length) {
      throw new Qcow2FormatError(`the header is truncated (${cluster0.length} bytes)`);
    }
  }
  const known = Incompatible.DIRTY | Incompatible.CORRUPT | Incompatible.EXTERNAL_DATA_FILE |
    Incompatible.COMPRESSION_TYPE | Incompatible.EXTENDED_L2;
  if (incompatibleFeatures & ~known) {
    throw new Qcow2FormatError(
      `unknown incompatible feature bits 0x${(incompatibleFeatures & ~known).toString(16)}`,
    );
  }
  if (incompatibleFeatures & Incompatible.CORRUPT) {
    throw new Qcow2FormatError("the image is marked corrupt; repair it with qemu-img check -r");
  }
  if (incompatibleFeatures & Incompatible.EXTERNAL_DATA_FILE) {
    throw new Qcow2FormatError("images with an external data file are not supported");
  }
  if (incompatibleFeatures & Incompatible.EXTENDED_L2) {
    throw new Qcow2FormatError("images with extended L2 entries (subclusters) are not supported");
  }
  const size = u64(dv, HeaderField.SIZE, "virtual size", MAX_VIRTUAL_SIZE + 1);
  const cryptMethod = dv.getUint32(HeaderField.CRYPT_METHOD, false);
  if (cryptMethod !== 0) {
    throw new Qcow2FormatError(`encrypted images (crypt_method ${cryptMethod}) are not supported`);
  }
  const l2Entries = cs / 8;
  const needL1 = Math.ceil(size / (cs * l2Entries));
  const l1Size = dv.getUint32(HeaderField.L1_SIZE, false);
  if (l1Size < needL1) {
    throw new Qcow2FormatError(`l1_size ${l1Size} is too small for a ${size}-byte disk`);
  }
  if (l1Size * 8 > MAX_L1_BYTES) throw new Qcow2FormatError(`l1_size ${l1Size} is too large`);
  const l1TableOffset = u64(dv, HeaderField.L1_TABLE_OFFSET, "l1_table_offset");
  if (l1Size > 0) {
    aligned(l1TableOffset, cs, "l1_table_offset");
    if (l1TableOffset === 0) throw new Qcow2FormatError("l1_table_offset points at the header");
  }
  const refcountTableOffset = u64(dv, HeaderField.REFCOUNT_TABLE_OFFSET, "refcount_table_offset");
  aligned(refcountTableOffset, cs, "refcount_table_offset");
  if (refcountTableOffset === 0) {
    throw new Qcow2FormatError("refcount_table_offset points at the header");
  }
  const refcountTableClusters = dv.getUint32(HeaderField.REFCOUNT_TABLE_CLUSTERS, false);
  if (refcountTableClusters === 0 || refcountTableClusters * cs > MAX_REFTABLE_BYTES) {
    throw new Qcow2FormatError(`refcount_table_clusters ${refcountTableClusters} is invalid`);
  }
  const nbSnapshots = dv.getUint32(HeaderField.NB_SNAPSHOTS, false);
  const snapshotsOffset = u64(dv, HeaderField.SNAPSHOTS_OFFSET, "snapshots_offset");
  if (nbSnapshots > 65536) throw new Qcow2FormatError(`nb_snapshots ${nbSnapshots} is too large`);
  if (nbSnapshots > 0) aligned(snapshotsOffset, cs, "snapshots_offset");

  const backingFileOffset = u64(dv, HeaderField.BACKING_FILE_OFFSET, "backing_file_offset");
  const backingFileSize = dv.getUint32(HeaderField.BACKING_FILE_SIZE, false);
  let backingFile: string | undefined;
  if (backingFileOffset !== 0) {
    if (backingFileSize === 0 || backingFileSize > 1023) {
      throw new Qcow2FormatError(`backing_file_size ${backingFileSize} is invalid`);
    }
    if (
      backingFileOffset < headerLength || backingFileOffset + backingFileSize > cs ||
      backingFileOffset + backingFileSize > cluster0.length
    ) {
      throw new Qcow2FormatError(
        `the backing file name at ${backingFileOffset} is outside the header cluster`,
      );
    }
    backingFile = decodeName(
      cluster0.subarray(backingFileOffset, backingFileOffset + backingFileSize),
      "backing file name",
    );
  }

  // Header extensions: after the header, before the backing file name, within cluster 0.
  let backingFormat: string | undefined;
  const extEnd = Math.min(
    cluster0.length,
    backingFileOffset !== 0 ? backingFileOffset : cs,
  );
  let at = headerLength;
  for (let n = 0;; n++) {
    if (n > 1024) throw new Qcow2FormatError("too many header extensions");
    if (at + 8 > extEnd) {
      if (at >= extEnd && version === 2) break; // v2 images may have no terminator
      throw new Qcow2FormatError("the header extension list is not terminated");
    }
    const type = dv.getUint32(at, false);
    const len = dv.getUint32(at + 4, false);
    if (type === Qcow2Extension.END) break;
    const dataEnd = at + 8 + len;
    if (dataEnd > extEnd) {
      throw new Qcow2FormatError(
        `header extension 0x${type.toString(16)} (${len} bytes) runs past the header`,
      );
    }
    const data = cluster0.subarray(at + 8, dataEnd);
    if (type === Qcow2Extension.BACKING_FORMAT) {
      backingFormat = decodeName(data, "backing format");
    } else if (type === Qcow2Extension.FULL_DISK_ENCRYPTION) {
      throw new Qcow2FormatError("encrypted images are not supported");
    } else if (type === Qcow2Extension.EXTERNAL_DATA_FILE) {
      throw new Qcow2FormatError("images with an external data file are not supported");
    }
    at = at + 8 + Math.ceil(len / 8) * 8;
  }
  return {
    version: version as 2 | 3,
    backingFileOffset,
    backingFileSize,
    clusterBits,
    size,
    cryptMethod,
    l1Size,
    l1TableOffset,
    refcountTableOffset,
    refcountTableClusters,
    nbSnapshots,
    snapshotsOffset,
    incompatibleFeatures,
    compatibleFeatures,
    autoclearFeatures,
    refcountOrder,
    headerLength,
    backingFile,
    backingFormat,
  };
}

function decodeName(bytes: Uint8Array, what: string): string {
  let end = bytes.indexOf(0);
  if (end < 0) end = bytes.length;
  let s: string;
  try {
    s = new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(0, end));
  } catch {
    throw new Qcow2FormatError(`the ${what} is not valid UTF-8`);
  }
  if (s.length === 0) throw new Qcow2FormatError(`the ${what} is empty`);
  return s;
}

// ---- table entries ------------------------------------------------------------------------

/** A decoded L2 entry. */
export type L2Entry =
  | { readonly kind: "unallocated" }
  | { readonly kind: "zero"; readonly host: number }
  | { readonly kind: "data"; readonly host: number; readonly copied: boolean }
  | { readonly kind: "compressed" }
  | { readonly kind: "corrupt"; readonly why: string };

const UNALLOCATED: L2Entry = { kind: "unallocated" };
const ZERO_PLAIN: L2Entry = { kind: "zero", host: 0 };
const COMPRESSED: L2Entry = { kind: "compressed" };

/** Decodes the L2 entry at `at` in `dv` for an image of `version` and `clusterSize`. */
export function decodeL2(dv: DataView, at: number, version: number, clusterSize: number): L2Entry {
  const hi = dv.getUint32(at, false);
  const lo = dv.getUint32(at + 4, false);
  if (hi & 0x4000_0000) return COMPRESSED;
  if ((hi & 0x3f00_0000) !== 0 || (lo & 0x1fe) !== 0) {
    return { kind: "corrupt", why: `L2 entry 0x${hex64(hi, lo)} has reserved bits set` };
  }
  const hostOff = (hi & 0x00ff_ffff) * 0x1_0000_0000 + ((lo & 0xffff_fe00) >>> 0);
  if (lo & 1) {
    if (version < 3) {
      return { kind: "corrupt", why: "a version 2 image has a zero-flagged L2 entry" };
    }
    if (hostOff === 0) return ZERO_PLAIN;
    if (hostOff % clusterSize !== 0) {
      return { kind: "corrupt", why: `cluster offset 0x${hostOff.toString(16)} is misaligned` };
    }
    return { kind: "zero", host: hostOff };
  }
  if (hostOff === 0) return UNALLOCATED;
  if (hostOff % clusterSize !== 0) {
    return { kind: "corrupt", why: `cluster offset 0x${hostOff.toString(16)} is misaligned` };
  }
  return { kind: "data", host: hostOff, copied: (hi & 0x8000_0000) !== 0 };
}

/** Decodes an L1 entry: the L2 table offset (0 when none), or a reason it is corrupt. */
export function decodeL1(dv: DataView, at: number, clusterSize: number): number | string {
  const hi = dv.getUint32(at, false);
  const lo = dv.getUint32(at + 4, false);
  if ((hi & 0x7f00_0000) !== 0 || (lo & 0x1ff) !== 0) {
    return `L1 entry 0x${hex64(hi, lo)} has reserved bits set`;
  }
  const off = (hi & 0x00ff_ffff) * 0x1_0000_0000 + ((lo & 0xffff_fe00) >>> 0);
  if (off !== 0 && (off % clusterSize !== 0 || off < clusterSize)) {
    return `L2 table offset 0x${off.toString(16)} is invalid`;
  }
  return off;
}

/** Decodes a refcount table entry: the block offset (0 when none) or why it is corrupt. */
export function decodeRefTable(dv: DataView, at: number, clusterSize: number): number | string {
  const hi = dv.getUint32(at, false);
  const lo = dv.getUint32(at + 4, false);
  if ((lo & 0x1ff) !== 0 || hi >= 0x0100_0000) {
    return `refcount table entry 0x${hex64(hi, lo)} is invalid`;
  }
  const off = hi * 0x1_0000_0000 + lo;
  if (off !== 0 && (off % clusterSize !== 0 || off < clusterSize)) {
    return `refcount block offset 0x${off.toString(16)} is invalid`;
  }
  return off;
}

/** Encodes a table entry: `offset` (< 2^56) plus flag bits in the high word and bit 0. */
export function encodeEntry(
  dv: DataView,
  at: number,
  offset: number,
  flags: { copied?: boolean; zero?: boolean } = {},
): void {
  const hi = Math.floor(offset / 0x1_0000_0000);
  const lo = offset - hi * 0x1_0000_0000;
  dv.setUint32(at, (hi | (flags.copied ? 0x8000_0000 : 0)) >>> 0, false);
  dv.setUint32(at + 4, (lo | (flags.zero ? 1 : 0)) >>> 0, false);
}

function hex64(hi: number, lo: number): string {
  return hi.toString(16) + lo.toString(16).padStart(8, "0");
}

/** Reads refcount entry `index` of a block with `bits`-bit entries. */
export function getRefcount(block: DataView, index: number, bits: number): number {
  switch (bits) {
    case 64:
      return block.getUint32(index * 8, false) * 0x1_0000_0000 +
        block.getUint32(index * 8 + 4, false);
    case 32:
      return block.getUint32(index * 4, false);
    case 16:
      return block.getUint16(index * 2, false);
    case 8:
      return block.getUint8(index);
    default: {
      const perByte = 8 / bits;
      const byte = block.getUint8(Math.floor(index / perByte));
      return (byte >> ((index % perByte) * bits)) & ((1 << bits) - 1);
    }
  }
}

/** Writes refcount entry `index`; returns the byte range `[start, end)` that changed. */
export function setRefcount(
  block: DataView,
  index: number,
  bits: number,
  value: number,
): [number, number] {
  switch (bits) {
    case 64:
      block.setUint32(index * 8, Math.floor(value / 0x1_0000_0000), false);
      block.setUint32(index * 8 + 4, value >>> 0, false);
      return [index * 8, index * 8 + 8];
    case 32:
      block.setUint32(index * 4, value, false);
      return [index * 4, index * 4 + 4];
    case 16:
      block.setUint16(index * 2, value, false);
      return [index * 2, index * 2 + 2];
    case 8:
      block.setUint8(index, value);
      return [index, index + 1];
    default: {
      const perByte = 8 / bits;
      const at = Math.floor(index / perByte);
      const shift = (index % perByte) * bits;
      const mask = ((1 << bits) - 1) << shift;
      block.setUint8(at, (block.getUint8(at) & ~mask) | ((value << shift) & mask));
      return [at, at + 1];
    }
  }
}

/** Largest refcount a `bits`-bit entry holds. */
export function maxRefcount(bits: number): number {
  return bits >= 53 ? Number.MAX_SAFE_INTEGER : 2 ** bits - 1;
}

// ---- new images -----------------------------------------------------------------------------

/** Options of `newQcow2Image`. */
export interface NewQcow2Options {
  /** log2 of the cluster size (default 16: 64 KiB). */
  readonly clusterBits?: number;
}

/**
 * The bytes of a new, empty version 3 image of `size` bytes: header (cluster 0), refcount table
 * (cluster 1), one refcount block (cluster 2), the L1 table (clusters 3..). 16-bit refcounts.
 */
export function newQcow2Image(size: number, options: NewQcow2Options = {}): Uint8Array {
  const clusterBits = options.clusterBits ?? 16;
  if (clusterBits < MIN_CLUSTER_BITS || clusterBits > MAX_CLUSTER_BITS) {
    throw new RangeError(`cluster_bits ${clusterBits} is outside 9..21`);
  }
  if (!Number.isSafeInteger(size) || size <= 0 || size > MAX_VIRTUAL_SIZE) {
    throw new RangeError(`size ${size} is not a valid qcow2 disk size`);
  }
  const cs = 2 ** clusterBits;
  const l1Size = Math.ceil(size / (cs * (cs / 8)));
  if (l1Size * 8 > MAX_L1_BYTES) throw new RangeError(`size ${size} needs too large an L1 table`);
  const l1Clusters = Math.max(1, Math.ceil((l1Size * 8) / cs));
  const clusters = 3 + l1Clusters;
  const refBlockEntries = cs / 2;
  if (clusters > refBlockEntries) {
    throw new RangeError(`size ${size} is too large for cluster size ${cs}`);
  }
  const out = new Uint8Array(clusters * cs);
  const dv = new DataView(out.buffer);
  dv.setUint32(HeaderField.MAGIC, QCOW2_MAGIC, false);
  dv.setUint32(HeaderField.VERSION, 3, false);
  dv.setUint32(HeaderField.CLUSTER_BITS, clusterBits, false);
  encodeEntry(dv, HeaderField.SIZE, size);
  dv.setUint32(HeaderField.L1_SIZE, l1Size, false);
  encodeEntry(dv, HeaderField.L1_TABLE_OFFSET, 3 * cs);
  encodeEntry(dv, HeaderField.REFCOUNT_TABLE_OFFSET, cs);
  dv.setUint32(HeaderField.REFCOUNT_TABLE_CLUSTERS, 1, false);
  dv.setUint32(HeaderField.REFCOUNT_ORDER, 4, false);
  dv.setUint32(HeaderField.HEADER_LENGTH, V3_HEADER_SIZE, false);
  // Bytes 104..112 stay zero: the end-of-extensions marker.
  encodeEntry(dv, cs, 2 * cs); // refcount table entry 0 -> block at cluster 2
  for (let c = 0; c < clusters; c++) dv.setUint16(2 * cs + c * 2, 1, false);
  return out;
}
