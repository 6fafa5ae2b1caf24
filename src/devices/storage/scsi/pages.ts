/**
 * Data-in payloads of the SCSI target that do not touch the medium: standard INQUIRY, the VPD
 * pages (00h, 80h, 83h, B0h, B1h, B2h), mode pages (caching 08h, control 0Ah, all 3Fh) and
 * READ CAPACITY. Pure functions of a `LunInfo`.
 * @module
 */
import { ModePage, PERIPHERAL_DISK, VpdPage } from "./constants.ts";

/** What the pages describe about one logical unit. */
export interface LunInfo {
  /** Vendor (8 ASCII bytes used). */
  readonly vendor: string;
  /** Product (16 ASCII bytes used). */
  readonly product: string;
  /** Revision (4 ASCII bytes used). */
  readonly revision: string;
  /** Unit serial number (VPD 80h). */
  readonly serial: string;
  /** Capacity in logical blocks. */
  readonly blocks: number;
  /** Logical block size in bytes. */
  readonly blockSize: number;
  /** Write protected. */
  readonly readOnly: boolean;
  /** Thin provisioned: UNMAP and WRITE SAME with UNMAP work, unmapped blocks read zero. */
  readonly thin: boolean;
  /** Unmap granularity in blocks. */
  readonly unmapGranularity: number;
  /** Largest READ/WRITE transfer in blocks. */
  readonly maxTransferBlocks: number;
  /** Largest UNMAP descriptor / WRITE SAME length in blocks. */
  readonly maxUnmapBlocks: number;
  /** Largest number of UNMAP block descriptors. */
  readonly maxUnmapDescriptors: number;
}

function ascii(dst: Uint8Array, at: number, len: number, text: string): void {
  for (let i = 0; i < len; i++) {
    const c = i < text.length ? text.charCodeAt(i) : 0x20;
    dst[at + i] = c >= 0x20 && c < 0x7f ? c : 0x20;
  }
}

/** Standard INQUIRY data (36 bytes): SPC-4, HiSup, CmdQue. */
export function standardInquiry(info: LunInfo): Uint8Array {
  const d = new Uint8Array(36);
  d[0] = PERIPHERAL_DISK;
  d[2] = 0x06; // SPC-4
  d[3] = 0x12; // HiSup, response data format 2
  d[4] = d.length - 5;
  d[7] = 0x02; // CmdQue
  ascii(d, 8, 8, info.vendor);
  ascii(d, 16, 16, info.product);
  ascii(d, 32, 4, info.revision);
  return d;
}

/** INQUIRY data of a LUN that does not exist (peripheral qualifier 3, type 1Fh). */
export function missingLunInquiry(): Uint8Array {
  const d = new Uint8Array(36);
  d[0] = 0x7f;
  d[2] = 0x06;
  d[3] = 0x12;
  d[4] = d.length - 5;
  return d;
}

/** VPD pages this LUN answers. */
export function supportedVpdPages(info: LunInfo): number[] {
  const pages: number[] = [
    VpdPage.SUPPORTED,
    VpdPage.SERIAL,
    VpdPage.DEVICE_ID,
    VpdPage.BLOCK_LIMITS,
    VpdPage.BLOCK_CHARACTERISTICS,
  ];
  if (info.thin) pages.push(VpdPage.LOGICAL_BLOCK_PROVISIONING);
  return pages;
}

function page(code: number, body: Uint8Array): Uint8Array {
  const d = new Uint8Array(4 + body.length);
  d[0] = PERIPHERAL_DISK;
  d[1] = code;
  d[2] = (body.length >> 8) & 0xff;
  d[3] = body.length & 0xff;
  d.set(body, 4);
  return d;
}

/** FNV-1a 64-bit over `text`, as 8 bytes. */
function fnv64(text: string): Uint8Array {
  let h = 0xcbf29ce484222325n;
  for (let i = 0; i < text.length; i++) {
    h ^= BigInt(text.charCodeAt(i) & 0xff);
    h = (h * 0x100000001b3n) & 0xffff_ffff_ffff_ffffn;
  }
  const out = new Uint8Array(8);
  new DataView(out.buffer).setBigUint64(0, h, false);
  return out;
}

/** A VPD page, or `undefined` when the page is not supported. */
export function vpdPage(info: LunInfo, code: number): Uint8Array | undefined {
  switch (code) {
    case VpdPage.SUPPORTED:
      return page(code, new Uint8Array(supportedVpdPages(info)));
    case VpdPage.SERIAL: {
      const b = new Uint8Array(info.serial.length);
      ascii(b, 0, b.length, info.serial);
      return page(code, b);
    }
    case VpdPage.DEVICE_ID: {
      // T10 vendor id designator (ASCII) and an NAA 6 designator derived from the serial.
      const t10 = new Uint8Array(8 + info.serial.length);
      ascii(t10, 0, 8, info.vendor);
      ascii(t10, 8, info.serial.length, info.serial);
      const naa = new Uint8Array(16);
      naa.set(fnv64(`${info.vendor}/${info.serial}`), 0);
      naa.set(fnv64(`${info.serial}/${info.product}`), 8);
      naa[0] = 0x60 | (naa[0]! & 0x0f); // NAA 6: IEEE registered extended
      const body = new Uint8Array(4 + t10.length + 4 + naa.length);
      body.set([0x02, 0x01, 0x00, t10.length], 0);
      body.set(t10, 4);
      const at = 4 + t10.length;
      body.set([0x01, 0x03, 0x00, naa.length], at);
      body.set(naa, at + 4);
      return page(code, body);
    }
    case VpdPage.BLOCK_LIMITS: {
      const b = new Uint8Array(0x3c);
      const dv = new DataView(b.buffer);
      b[0] = 0x01; // WSNZ: WRITE SAME with zero blocks is refused
      dv.setUint16(2, 1, false); // optimal transfer length granularity
      dv.setUint32(4, info.maxTransferBlocks, false);
      dv.setUint32(8, info.maxTransferBlocks, false); // optimal transfer length
      if (info.thin) {
        dv.setUint32(16, info.maxUnmapBlocks, false);
        dv.setUint32(20, info.maxUnmapDescriptors, false);
        dv.setUint32(24, info.unmapGranularity, false);
        dv.setUint32(28, 0x8000_0000, false); // UGAVALID, alignment 0
      }
      dv.setUint32(32, 0, false);
      dv.setUint32(36, info.readOnly ? 0 : info.maxUnmapBlocks, false); // max WRITE SAME
      return page(code, b);
    }
    case VpdPage.BLOCK_CHARACTERISTICS: {
      const b = new Uint8Array(0x3c);
      b[1] = 0x01; // medium rotation rate 1: non-rotating
      return page(code, b);
    }
    case VpdPage.LOGICAL_BLOCK_PROVISIONING: {
      if (!info.thin) return undefined;
      // LBPU, LBPWS, LBPWS10, LBPRZ (unmapped blocks read zero); thin provisioned.
      return page(code, new Uint8Array([0, 0x80 | 0x40 | 0x20 | 0x04, 0x02, 0]));
    }
  }
  return undefined;
}

/** READ CAPACITY(10) data (8 bytes). */
export function readCapacity10(info: LunInfo): Uint8Array {
  const d = new Uint8Array(8);
  const dv = new DataView(d.buffer);
  const last = info.blocks - 1;
  dv.setUint32(0, last > 0xffff_ffff ? 0xffff_ffff : last, false);
  dv.setUint32(4, info.blockSize, false);
  return d;
}

/** READ CAPACITY(16) data (32 bytes), with LBPME/LBPRZ when thin. */
export function readCapacity16(info: LunInfo): Uint8Array {
  const d = new Uint8Array(32);
  const dv = new DataView(d.buffer);
  dv.setBigUint64(0, BigInt(info.blocks - 1), false);
  dv.setUint32(8, info.blockSize, false);
  if (info.thin) d[14] = 0x80 | 0x40; // LBPME, LBPRZ
  return d;
}

/** Mode page control: current, changeable, default, saved. */
export type PageControl = 0 | 1 | 2 | 3;

/** One mode page for page control `pc` (saved is refused earlier). */
function modePage(code: number, pc: PageControl): Uint8Array {
  if (code === ModePage.CACHING) {
    const p = new Uint8Array(20);
    p[0] = ModePage.CACHING;
    p[1] = 18;
    if (pc !== 1) p[2] = 0x04; // WCE: writes are cached until SYNCHRONIZE CACHE
    return p;
  }
  const p = new Uint8Array(12);
  p[0] = ModePage.CONTROL;
  p[1] = 10;
  if (pc !== 1) {
    p[3] = 0x10; // queue algorithm modifier 1: unrestricted reordering
    p[8] = 0xff; // busy timeout: unlimited
    p[9] = 0xff;
  }
  return p;
}

/** Mode pages for a page code, or `undefined` when unsupported. */
export function modePages(code: number, pc: PageControl): Uint8Array | undefined {
  if (code === ModePage.CACHING || code === ModePage.CONTROL) return modePage(code, pc);
  if (code !== ModePage.ALL) return undefined;
  const a = modePage(ModePage.CACHING, pc);
  const b = modePage(ModePage.CONTROL, pc);
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

/**
 * A MODE SENSE(6) or (10) reply: header, optional block descriptor (short, or long when
 * `longLba`), pages.
 */
export function modeSenseData(
  info: LunInfo,
  pages: Uint8Array,
  options: { ten: boolean; dbd: boolean; longLba: boolean },
): Uint8Array {
  const deviceSpecific = (info.readOnly ? 0x80 : 0) | 0x10; // WP, DPOFUA
  const bdLen = options.dbd ? 0 : options.ten && options.longLba ? 16 : 8;
  const hdr = options.ten ? 8 : 4;
  const d = new Uint8Array(hdr + bdLen + pages.length);
  const dv = new DataView(d.buffer);
  if (options.ten) {
    dv.setUint16(0, d.length - 2, false);
    d[3] = deviceSpecific;
    if (bdLen === 16) d[4] = 0x01; // LONGLBA
    dv.setUint16(6, bdLen, false);
  } else {
    d[0] = Math.min(d.length - 1, 0xff);
    d[2] = deviceSpecific;
    d[3] = bdLen;
  }
  if (bdLen === 8) {
    const n = Math.min(info.blocks, 0xff_ffff);
    d[hdr + 1] = (n >> 16) & 0xff;
    d[hdr + 2] = (n >> 8) & 0xff;
    d[hdr + 3] = n & 0xff;
    d[hdr + 5] = (info.blockSize >> 16) & 0xff;
    d[hdr + 6] = (info.blockSize >> 8) & 0xff;
    d[hdr + 7] = info.blockSize & 0xff;
  } else if (bdLen === 16) {
    dv.setBigUint64(hdr, BigInt(info.blocks), false);
    dv.setUint32(hdr + 12, info.blockSize, false);
  }
  d.set(pages, hdr + bdLen);
  return d;
}
