/**
 * The 512-byte IDENTIFY DEVICE (ATA disk) and IDENTIFY PACKET DEVICE (ATAPI CD) answers: 256
 * little-endian words, strings byte-swapped per word as ATA wants, the integrity word last.
 * @module
 */

/** What an IDENTIFY answer describes. */
export interface IdentifyInfo {
  /** Serial number (20 characters at most). */
  readonly serial: string;
  /** Model (40 characters at most). */
  readonly model: string;
  /** Firmware revision (8 characters at most). */
  readonly firmware: string;
}

const SIZE = 512;

function words(): { bytes: Uint8Array; set(word: number, value: number): void } {
  const bytes = new Uint8Array(SIZE);
  const dv = new DataView(bytes.buffer);
  return { bytes, set: (w, v) => dv.setUint16(w * 2, v & 0xffff, true) };
}

/** ATA strings: space-padded, the two bytes of each word swapped. */
function putString(bytes: Uint8Array, word: number, chars: number, text: string): void {
  const s = text.replace(/[^\x20-\x7e]/g, "?").slice(0, chars).padEnd(chars, " ");
  for (let i = 0; i < chars; i += 2) {
    bytes[word * 2 + i] = s.charCodeAt(i + 1);
    bytes[word * 2 + i + 1] = s.charCodeAt(i);
  }
}

function seal(bytes: Uint8Array, info: IdentifyInfo): Uint8Array {
  putString(bytes, 10, 20, info.serial);
  putString(bytes, 23, 8, info.firmware);
  putString(bytes, 27, 40, info.model);
  bytes[510] = 0xa5; // integrity word: signature, then the checksum byte
  let sum = 0;
  for (let i = 0; i < 511; i++) sum = (sum + bytes[i]!) & 0xff;
  bytes[511] = (0x100 - sum) & 0xff;
  return bytes;
}

/** IDENTIFY DEVICE for a disk of `sectors` logical sectors of `sectorSize` bytes. */
export function identifyDisk(
  info: IdentifyInfo,
  sectors: number,
  sectorSize: number,
  queueDepth: number,
): Uint8Array {
  const w = words();
  w.set(0, 0x0040); // ATA device, fixed
  w.set(1, 16383); // obsolete CHS geometry, as large disks report it
  w.set(3, 16);
  w.set(6, 63);
  w.set(47, 0x8010); // READ/WRITE MULTIPLE: up to 16 sectors per block
  w.set(49, 0x0300); // LBA and DMA supported
  w.set(53, 0x0006); // words 64-70 and 88 valid
  const lba28 = Math.min(sectors, 0x0fff_ffff);
  w.set(60, lba28 & 0xffff);
  w.set(61, lba28 >>> 16);
  w.set(63, 0x0007); // multiword DMA 0-2 supported
  w.set(64, 0x0003); // PIO 3-4
  w.set(75, queueDepth - 1);
  w.set(76, 0x010e); // SATA Gen1-3, NCQ
  w.set(80, 0x01f0); // ATA/ATAPI-4 .. ATA8-ACS
  w.set(82, 0x4020); // NOP, write cache supported
  w.set(83, 0x7400); // 48-bit addressing, FLUSH CACHE, FLUSH CACHE EXT
  w.set(84, 0x4000);
  w.set(85, 0x4020); // write cache enabled
  w.set(86, 0x3400); // 48-bit, FLUSH CACHE (EXT) enabled
  w.set(87, 0x4000);
  w.set(88, 0x203f); // UDMA 0-5 supported, mode 5 selected
  for (let i = 0; i < 4; i++) w.set(100 + i, Math.floor(sectors / 2 ** (16 * i)) & 0xffff);
  if (sectorSize !== 512) {
    w.set(106, 0x4000 | 0x1000); // logical sector longer than 256 words (words 117-118)
    w.set(117, (sectorSize / 2) & 0xffff);
    w.set(118, (sectorSize / 2) >>> 16);
  } else {
    w.set(106, 0x4000);
  }
  w.set(217, 0x0001); // non-rotating medium
  return seal(w.bytes, info);
}

/** IDENTIFY PACKET DEVICE for a CD/DVD drive. */
export function identifyCdrom(info: IdentifyInfo): Uint8Array {
  const w = words();
  w.set(0, 0x85c0); // ATAPI, CD-ROM, removable, 12-byte packets
  w.set(49, 0x0300); // LBA and DMA
  w.set(53, 0x0006);
  w.set(63, 0x0007);
  w.set(64, 0x0003);
  w.set(71, 30);
  w.set(72, 30);
  w.set(80, 0x01f0);
  w.set(88, 0x203f);
  return seal(w.bytes, info);
}
