/**
 * Hyper-V Dynamic Memory (DM) wire format, as Linux `drivers/hv/hv_balloon.c` speaks it:
 * in-band packets whose payload is one DM message, `{u16 type, u16 size, u32 trans_id}` then the
 * body (all packed, little-endian). Layouts, constants and pure codecs only, no I/O.
 *
 * Linux reads host messages into a 4096-byte buffer and loops forever on a larger one, so every
 * host message stays within `DM_MAX_MESSAGE` (unballoon requests: ≤ 510 ranges each). Sizes are
 * pinned by `tests/unit/devices/balloon/balloon_test.ts`.
 * @module
 */
import { defineLayout } from "../../util/layout.ts";

/** Dynamic memory class GUID (`HV_DM_GUID`). */
export const DM_CLASS_ID = "525074dc-8985-46e2-8057-a307dc18a502";
/** The instance GUID Hyper-V uses. */
export const DM_INSTANCE_ID = "1eccfd72-4b41-45ef-b73a-4a6e44c12924";

/** Largest host message (Linux's receive buffer). */
export const DM_MAX_MESSAGE = 4096;

/** Protocol versions (major << 16 | minor): 0.3 Win7, 1.0 Win8, 2.0 Win10. */
export const DmVersion = {
  WIN7: 0x0000_0003,
  WIN8: 0x0001_0000,
  WIN10: 0x0002_0000,
} as const;

/** `enum dm_message_type`. */
export const DmMessageType = {
  VERSION_REQUEST: 1,
  VERSION_RESPONSE: 2,
  CAPABILITIES_REPORT: 3,
  CAPABILITIES_RESPONSE: 4,
  STATUS_REPORT: 5,
  BALLOON_REQUEST: 6,
  BALLOON_RESPONSE: 7,
  UNBALLOON_REQUEST: 8,
  UNBALLOON_RESPONSE: 9,
  MEM_HOT_ADD_REQUEST: 10,
  MEM_HOT_ADD_RESPONSE: 11,
  INFO_MESSAGE: 12,
} as const;

/** `struct dm_header`. */
export const DmHeader = defineLayout("dm_header", 8, {
  type: { offset: 0, type: "u16" },
  size: { offset: 2, type: "u16" },
  transId: { offset: 4, type: "u32" },
});

/** `struct dm_version_request` (guest → host). */
export const DmVersionRequest = defineLayout("dm_version_request", 16, {
  version: { offset: 8, type: "u32" },
  /** Bit 0: is_last_attempt. */
  flags: { offset: 12, type: "u32" },
});

/** `struct dm_version_response` (host → guest): bit 0 is_accepted. */
export const DmVersionResponse = defineLayout("dm_version_response", 16, {
  type: { offset: 0, type: "u16" },
  size: { offset: 2, type: "u16" },
  transId: { offset: 4, type: "u32" },
  isAccepted: { offset: 8, type: "u64" },
});

/** `struct dm_capabilities` (guest → host). */
export const DmCapabilities = defineLayout("dm_capabilities", 32, {
  /** Bit 0 balloon, bit 1 hot_add, bits 2..5 hot_add_alignment (2^n MiB). */
  caps: { offset: 8, type: "u64" },
  minPageCount: { offset: 16, type: "u64" },
  maxPageNumber: { offset: 24, type: "u64" },
});

/** `struct dm_capabilities_resp_msg` (host → guest): bit 0 is_accepted. */
export const DmCapabilitiesResponse = defineLayout("dm_capabilities_resp_msg", 16, {
  type: { offset: 0, type: "u16" },
  size: { offset: 2, type: "u16" },
  transId: { offset: 4, type: "u32" },
  isAccepted: { offset: 8, type: "u64" },
});

/** `struct dm_status` (guest → host, about once a second). Counts are 4 KiB pages. */
export const DmStatus = defineLayout("dm_status", 48, {
  numAvail: { offset: 8, type: "u64" },
  numCommitted: { offset: 16, type: "u64" },
  pageFileSize: { offset: 24, type: "u64" },
  zeroFree: { offset: 32, type: "u64" },
  pageFileWrites: { offset: 40, type: "u32" },
  ioDiff: { offset: 44, type: "u32" },
});

/** `struct dm_balloon` (host → guest): take `numPages` 4 KiB pages from the guest. */
export const DmBalloon = defineLayout("dm_balloon", 16, {
  type: { offset: 0, type: "u16" },
  size: { offset: 2, type: "u16" },
  transId: { offset: 4, type: "u32" },
  numPages: { offset: 8, type: "u32" },
  reserved: { offset: 12, type: "u32" },
});

/** `struct dm_balloon_response` head (guest → host); `rangeCount` u64 ranges follow. */
export const DmBalloonResponse = defineLayout("dm_balloon_response", 16, {
  reserved: { offset: 8, type: "u32" },
  /** Bit 0: more_pages; bits 1..31: range_count. */
  moreAndCount: { offset: 12, type: "u32" },
});

/** `struct dm_unballoon_request` head (host → guest); `rangeCount` u64 ranges follow. */
export const DmUnballoonRequest = defineLayout("dm_unballoon_request", 16, {
  type: { offset: 0, type: "u16" },
  size: { offset: 2, type: "u16" },
  transId: { offset: 4, type: "u32" },
  /** Bit 0: more_pages. */
  moreFlags: { offset: 8, type: "u32" },
  rangeCount: { offset: 12, type: "u32" },
});

/** Bytes of one `union dm_mem_page_range`: start_page in bits 0..39, page_cnt in 40..63. */
export const DM_RANGE_SIZE = 8;
/** Ranges one unballoon request may carry within `DM_MAX_MESSAGE`. */
export const DM_MAX_UNBALLOON_RANGES = (DM_MAX_MESSAGE - DmUnballoonRequest.size) / DM_RANGE_SIZE;
/** Largest page count of one range (24 bits). */
export const DM_MAX_RANGE_PAGES = 0xff_ffff;

/** A run of 4 KiB guest pages. */
export interface PageRange {
  readonly startPfn: number;
  readonly pages: number;
}

/** Decodes the page range at `offset` of `bytes`. */
export function decodePageRange(bytes: Uint8Array, offset: number): PageRange {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const lo = dv.getUint32(offset, true);
  const hi = dv.getUint32(offset + 4, true);
  // start_page: 40 bits (lo + low byte of hi); page_cnt: the top 24 bits of hi.
  return { startPfn: (hi & 0xff) * 2 ** 32 + lo, pages: hi >>> 8 };
}

/** Encodes `range` at `offset` of `bytes`. */
export function encodePageRange(bytes: Uint8Array, offset: number, range: PageRange): void {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  dv.setUint32(offset, range.startPfn % 2 ** 32, true);
  dv.setUint32(offset + 4, ((range.pages << 8) | Math.floor(range.startPfn / 2 ** 32)) >>> 0, true);
}

/** A message with just a header of `type` and the given size. */
export function dmHeader(type: number, size: number, transId: number): Uint8Array {
  const out = new Uint8Array(size);
  DmHeader.encode({ type, size, transId }, out);
  return out;
}
