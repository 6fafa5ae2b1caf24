/**
 * The guest physical memory map for a given RAM size: the RAM ranges to register as KVM memory
 * slots, the e820 table handed to the kernel, and the MMIO windows left free for VMBus.
 *
 * RAM up to `MMIO_HOLE_START` (3 GiB) is one range from 0; the rest continues at 4 GiB. The
 * e820 table reserves the EBDA/VGA/BIOS area `[EBDA_START, 1 MiB)` (it holds the ACPI tables),
 * and leaves the MMIO hole out entirely, so the guest may claim MMIO windows inside it.
 * @module
 */
import { UsageError } from "../util/errors.ts";
import {
  EBDA_START,
  FOUR_GIB,
  HIMEM_START,
  MIB,
  MMIO_HOLE_START,
  PCI_HIGH_MMIO_SIZE,
  PCI_LOW_MMIO_SIZE,
  PCI_LOW_MMIO_START,
  VMBUS_HIGH_MMIO_ALIGN,
  VMBUS_HIGH_MMIO_SIZE,
  VMBUS_LOW_MMIO_SIZE,
  VMBUS_LOW_MMIO_START,
} from "./layout.ts";

/** e820 type: usable RAM. */
export const E820_RAM = 1;
/** e820 type: reserved, not to be used by the OS. */
export const E820_RESERVED = 2;
/** e820 type: ACPI tables, reclaimable after they are read. */
export const E820_ACPI = 3;
/** e820 type: ACPI non-volatile storage. */
export const E820_NVS = 4;

/** Smallest RAM size the machine accepts (a stock kernel needs far more; the loader says so). */
export const MIN_RAM_BYTES = 16 * MIB;
/** Largest RAM size the machine accepts (1 TiB keeps every address well inside 40 bits). */
export const MAX_RAM_BYTES = 1024 * 1024 * MIB;

/** A contiguous range of guest physical addresses. */
export interface GpaRange {
  /** First guest physical address. */
  readonly gpa: number;
  /** Length in bytes. */
  readonly size: number;
}

/** One entry of the BIOS e820 memory map (`struct boot_e820_entry`). */
export interface E820Entry {
  /** First guest physical address. */
  readonly addr: number;
  /** Length in bytes. */
  readonly size: number;
  /** `E820_RAM`, `E820_RESERVED`, `E820_ACPI` or `E820_NVS`. */
  readonly type: number;
}

/** The machine's physical memory map. */
export interface MemoryMap {
  /** Total guest RAM in bytes. */
  readonly ramBytes: number;
  /** RAM ranges, in address order: one KVM memory slot each. */
  readonly ram: readonly GpaRange[];
  /** End (exclusive) of the RAM range starting at 0; never above `MMIO_HOLE_START`. */
  readonly lowRamEnd: number;
  /** End (exclusive) of the highest RAM range. */
  readonly ramEnd: number;
  /** e820 table for the kernel, in address order. */
  readonly e820: readonly E820Entry[];
  /** MMIO windows for the VMBus driver (`_CRS` of the DSDT's VMBus module): low, then high. */
  readonly vmbusMmio: readonly GpaRange[];
  /** PCI MMIO windows (`_CRS` of the PCI root): below 4 GiB, then above the VMBus window. */
  readonly pciMmio: { readonly low: GpaRange; readonly high: GpaRange };
}

function alignUp(value: number, align: number): number {
  return Math.ceil(value / align) * align;
}

/**
 * Lays out `ramBytes` of guest RAM. Throws `UsageError` when the size is not a multiple of
 * 4 KiB or lies outside `[MIN_RAM_BYTES, MAX_RAM_BYTES]`.
 */
export function buildMemoryMap(ramBytes: number): MemoryMap {
  if (!Number.isSafeInteger(ramBytes) || ramBytes % 0x1000 !== 0) {
    throw new UsageError(
      `guest memory size ${ramBytes} is not a whole number of 4 KiB pages; give it in MiB`,
    );
  }
  if (ramBytes < MIN_RAM_BYTES || ramBytes > MAX_RAM_BYTES) {
    throw new UsageError(
      `guest memory size ${ramBytes / MIB} MiB is out of range; use ${MIN_RAM_BYTES / MIB} MiB ` +
        `to ${MAX_RAM_BYTES / MIB} MiB`,
    );
  }
  const lowRamEnd = Math.min(ramBytes, MMIO_HOLE_START);
  const highRam = ramBytes - lowRamEnd;
  const ram: GpaRange[] = [{ gpa: 0, size: lowRamEnd }];
  if (highRam > 0) ram.push({ gpa: FOUR_GIB, size: highRam });
  const ramEnd = highRam > 0 ? FOUR_GIB + highRam : lowRamEnd;

  const e820: E820Entry[] = [
    { addr: 0, size: EBDA_START, type: E820_RAM },
    { addr: EBDA_START, size: HIMEM_START - EBDA_START, type: E820_RESERVED },
    { addr: HIMEM_START, size: lowRamEnd - HIMEM_START, type: E820_RAM },
  ];
  if (highRam > 0) e820.push({ addr: FOUR_GIB, size: highRam, type: E820_RAM });

  const highMmio = alignUp(Math.max(ramEnd, FOUR_GIB), VMBUS_HIGH_MMIO_ALIGN);
  const vmbusMmio: GpaRange[] = [
    { gpa: VMBUS_LOW_MMIO_START, size: VMBUS_LOW_MMIO_SIZE },
    { gpa: highMmio, size: VMBUS_HIGH_MMIO_SIZE },
  ];
  const pciMmio = {
    low: { gpa: PCI_LOW_MMIO_START, size: PCI_LOW_MMIO_SIZE },
    high: {
      gpa: alignUp(highMmio + VMBUS_HIGH_MMIO_SIZE, VMBUS_HIGH_MMIO_ALIGN),
      size: PCI_HIGH_MMIO_SIZE,
    },
  };
  return { ramBytes, ram, lowRamEnd, ramEnd, e820, vmbusMmio, pciMmio };
}
