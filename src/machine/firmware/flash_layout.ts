/**
 * Where firmware flash sits: the code image ends at 4 GiB (so its reset vector is at
 * 0xFFFFFFF0) and the variable store sits right below it, as on QEMU's PC with two pflash units.
 * With Debian's 4 MiB OVMF: vars 0xFFC00000-0xFFC83FFF, code 0xFFC84000-0xFFFFFFFF.
 * @module
 */
import { FOUR_GIB, MIB } from "../layout.ts";
import { FLASH_SECTOR_SIZE } from "./pflash_protocol.ts";

/** Most flash the machine maps below 4 GiB (QEMU's x86 limit is 8 MiB; 16 leaves room). */
export const FLASH_MAX_BYTES: number = 16 * MIB;
/** The x86 reset vector: real mode CS base 0xFFFF0000, IP 0xFFF0. */
export const RESET_VECTOR = 0xffff_fff0;

/** Guest addresses of the two flash regions. */
export interface FlashLayout {
  /** Base of the variable store (the CFI flash device). */
  readonly varsGpa: number;
  readonly varsSize: number;
  /** Base of the code image (a read-only memslot; writes are dropped). */
  readonly codeGpa: number;
  readonly codeSize: number;
}

/**
 * Places a code image and a variable store of the given sizes below 4 GiB. Returns a message
 * instead when the sizes cannot be mapped (not whole 4 KiB sectors, or more than
 * `FLASH_MAX_BYTES` together).
 */
export function flashLayout(codeSize: number, varsSize: number): FlashLayout | string {
  for (const [what, n] of [["code", codeSize], ["variable store", varsSize]] as const) {
    if (!Number.isSafeInteger(n) || n <= 0 || n % FLASH_SECTOR_SIZE !== 0) {
      return `the firmware ${what} is ${n} bytes, not a whole number of 4 KiB sectors`;
    }
  }
  if (codeSize + varsSize > FLASH_MAX_BYTES) {
    return `firmware code and variable store are ${codeSize + varsSize} bytes together; the ` +
      `machine maps at most ${FLASH_MAX_BYTES} below 4 GiB`;
  }
  const codeGpa = FOUR_GIB - codeSize;
  return { codeGpa, codeSize, varsGpa: codeGpa - varsSize, varsSize };
}
