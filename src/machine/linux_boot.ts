/**
 * Loading a 64-bit Linux bzImage with the x86 64-bit boot protocol (Documentation/x86/boot.rst):
 * validate the setup header, place the protected-mode kernel, the command line and the initrd
 * in guest RAM, build the zero page, and return the 64-bit entry point (load address + 0x200).
 *
 * The CPU state for that entry (long mode, identity map, GDT) comes from `page_tables.ts`.
 * @module
 */
import type { GuestMemory } from "../kvm/guest_memory.ts";
import { UsageError } from "../util/errors.ts";
import {
  BOOT_FLAG_MAGIC,
  BOOT_PARAMS,
  buildBootParams,
  HDRS_MAGIC,
  LOADED_HIGH,
  SETUP_HEADER_LIMIT,
  XLF_KERNEL_64,
} from "./boot_params.ts";
import { CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START, MIB, ZERO_PAGE_START } from "./layout.ts";
import type { GpaRange, MemoryMap } from "./memory_map.ts";

/** Oldest boot protocol accepted: 2.12 introduced xloadflags (and with it XLF_KERNEL_64). */
export const MIN_BOOT_PROTOCOL = 0x020c;
/** Offset of the 64-bit entry point from the load address. */
export const ENTRY_64_OFFSET = 0x200;
/** Bytes of the image that must be present to read every header field used (through init_size). */
const MIN_HEADER_BYTES = 0x264;
const PAGE = 0x1000;

/** The facts of a bzImage that the loader uses, read from its setup header. */
export interface BzImage {
  /** Boot protocol version, e.g. 0x020f for 2.15. */
  readonly protocol: number;
  /** Sectors of real-mode setup code after the boot sector (0 in the header means 4). */
  readonly setupSects: number;
  /** File offset of the protected-mode kernel: (setupSects + 1) * 512. */
  readonly kernelOffset: number;
  /** Bytes of protected-mode kernel, from `kernelOffset` to the end of the file. */
  readonly kernelSize: number;
  /** Header loadflags. */
  readonly loadflags: number;
  /** Header xloadflags. */
  readonly xloadflags: number;
  /** The kernel can run at any `kernelAlignment`-aligned address. */
  readonly relocatable: boolean;
  /** Alignment the kernel wants for its runtime address. */
  readonly kernelAlignment: number;
  /** Preferred load address (the kernel's LOAD_PHYSICAL_ADDR). */
  readonly prefAddress: number;
  /** Contiguous bytes the kernel needs from its runtime address while it unpacks itself. */
  readonly initSize: number;
  /** Highest address the initrd may occupy (inclusive). */
  readonly initrdAddrMax: number;
  /** Longest command line the kernel accepts, NUL excluded. */
  readonly cmdlineSize: number;
  /** The kernel's version string, when the header points at one. */
  readonly version: string | undefined;
}

function hex(n: number): string {
  return `0x${n.toString(16)}`;
}

function readCString(bytes: Uint8Array, at: number, limit: number): string | undefined {
  if (at <= 0 || at >= limit) return undefined;
  let end = at;
  while (end < limit && end - at < 256 && bytes[end] !== 0) end++;
  const s = new TextDecoder("latin1").decode(bytes.subarray(at, end));
  return /^[\x20-\x7e]+$/.test(s) ? s : undefined;
}

/**
 * Reads and checks the setup header of a bzImage. Throws `UsageError` naming `name` when the
 * bytes are not a bzImage (an ELF vmlinux, a zImage, anything else), are truncated, use a boot
 * protocol older than 2.12, or are not a 64-bit kernel.
 */
export function parseBzImage(image: Uint8Array, name = "kernel image"): BzImage {
  if (image.length >= 4 && image[0] === 0x7f && image[1] === 0x45 && image[2] === 0x4c) {
    throw new UsageError(
      `${name} is an ELF file (an uncompressed vmlinux?); pass a bzImage such as ` +
        `/boot/vmlinuz-* or arch/x86/boot/bzImage`,
    );
  }
  const P = BOOT_PARAMS;
  if (
    image.length < 0x206 || P.get(image, 0, "header") !== HDRS_MAGIC ||
    P.get(image, 0, "boot_flag") !== BOOT_FLAG_MAGIC
  ) {
    throw new UsageError(
      `${name} is not a Linux bzImage (no "HdrS" setup header at 0x202); pass an x86-64 ` +
        `kernel such as /boot/vmlinuz-*`,
    );
  }
  if (image.length < MIN_HEADER_BYTES) {
    throw new UsageError(`${name} is truncated: ${image.length} bytes end inside the setup header`);
  }
  const protocol = P.get(image, 0, "version");
  if (protocol < MIN_BOOT_PROTOCOL) {
    throw new UsageError(
      `${name} uses boot protocol ${protocol >> 8}.${
        (protocol & 0xff).toString().padStart(2, "0")
      }` +
        `; hyperdeno needs 2.12 or later (Linux 3.8+) for the 64-bit entry point`,
    );
  }
  const loadflags = P.get(image, 0, "loadflags");
  if ((loadflags & LOADED_HIGH) === 0) {
    throw new UsageError(`${name} is a zImage (loaded low); hyperdeno boots bzImage kernels only`);
  }
  const xloadflags = P.get(image, 0, "xloadflags");
  if ((xloadflags & XLF_KERNEL_64) === 0) {
    throw new UsageError(
      `${name} is not a 64-bit kernel (XLF_KERNEL_64 is not set); build it for x86_64`,
    );
  }
  const rawSects = P.get(image, 0, "setup_sects");
  const setupSects = rawSects === 0 ? 4 : rawSects;
  const kernelOffset = (setupSects + 1) * 512;
  const headerEnd = Math.min(0x202 + (image[0x201] ?? 0), SETUP_HEADER_LIMIT);
  if (kernelOffset >= image.length || headerEnd > image.length) {
    throw new UsageError(
      `${name} is truncated: its ${setupSects} setup sectors end at ${hex(kernelOffset)} but the ` +
        `file has ${image.length} bytes`,
    );
  }
  const kernelSize = image.length - kernelOffset;
  const syssizeBytes = P.get(image, 0, "syssize") * 16;
  if (syssizeBytes > kernelSize) {
    throw new UsageError(
      `${name} is truncated: the header announces ${syssizeBytes} bytes of kernel after the ` +
        `setup code, the file has ${kernelSize}`,
    );
  }
  const relocatable = P.get(image, 0, "relocatable_kernel") !== 0;
  const kernelAlignment = P.get(image, 0, "kernel_alignment");
  if (relocatable && (kernelAlignment === 0 || (kernelAlignment & (kernelAlignment - 1)) !== 0)) {
    throw new UsageError(
      `${name} has an invalid kernel_alignment ${hex(kernelAlignment)} (not a power of two)`,
    );
  }
  const prefAddress = Number(P.get(image, 0, "pref_address"));
  return {
    protocol,
    setupSects,
    kernelOffset,
    kernelSize,
    loadflags,
    xloadflags,
    relocatable,
    kernelAlignment,
    prefAddress,
    initSize: Math.max(P.get(image, 0, "init_size"), kernelSize),
    initrdAddrMax: P.get(image, 0, "initrd_addr_max"),
    cmdlineSize: P.get(image, 0, "cmdline_size"),
    version: readCString(image, 0x200 + P.get(image, 0, "kernel_version"), kernelOffset),
  };
}

/** Where the protected-mode kernel goes and how much RAM it claims while unpacking. */
export interface KernelPlacement {
  /** Guest address the protected-mode kernel is copied to. */
  readonly loadAddress: number;
  /** 64-bit entry point: `loadAddress + 0x200`. */
  readonly entry: number;
  /** End (exclusive) of everything the kernel may touch before it reads the memory map. */
  readonly end: number;
}

/**
 * Chooses the load address: `pref_address` when it is a page-aligned address at or above 1 MiB,
 * else 1 MiB. The kernel's runtime start is then `max(alignUp(load, kernel_alignment),
 * pref_address)` for a relocatable kernel (what its 64-bit entry computes), `pref_address`
 * otherwise; it needs `init_size` bytes from there. Throws `UsageError` when that does not fit
 * below `lowRamEnd`.
 */
export function placeKernel(image: BzImage, lowRamEnd: number): KernelPlacement {
  const pref = image.prefAddress;
  const loadAddress = pref >= HIMEM_START && pref % PAGE === 0 ? pref : HIMEM_START;
  let runtimeStart: number;
  if (image.relocatable) {
    const a = image.kernelAlignment;
    runtimeStart = Math.max(Math.ceil(loadAddress / a) * a, pref);
  } else {
    runtimeStart = pref >= HIMEM_START ? pref : loadAddress;
  }
  const end = Math.max(loadAddress + image.kernelSize, runtimeStart + image.initSize);
  if (end > lowRamEnd) {
    throw new UsageError(
      `the kernel needs guest RAM up to ${hex(end)} to unpack itself but RAM below the MMIO ` +
        `hole ends at ${hex(lowRamEnd)}; give the VM more than ${Math.ceil(end / MIB)} MiB`,
    );
  }
  return { loadAddress, entry: loadAddress + ENTRY_64_OFFSET, end };
}

/** Limits for `placeInitrd`. */
export interface InitrdLimits {
  /** Highest address the initrd may occupy, inclusive (setup header initrd_addr_max). */
  readonly initrdAddrMax: number;
  /** End (exclusive) of the RAM range the initrd must lie in. */
  readonly ramEnd: number;
  /** Lowest address the initrd may start at (end of the kernel's footprint). */
  readonly floor: number;
}

/**
 * Places an initrd of `size` bytes at the highest page-aligned address that keeps it at or below
 * `initrdAddrMax`, below `ramEnd`, and at or above `floor`. Throws `UsageError` when it does not
 * fit.
 */
export function placeInitrd(size: number, limits: InitrdLimits): number {
  const top = Math.min(limits.initrdAddrMax + 1, limits.ramEnd);
  const addr = Math.floor((top - size) / PAGE) * PAGE;
  if (!Number.isSafeInteger(size) || size <= 0) {
    throw new RangeError(`initrd size ${size} is not a positive byte count`);
  }
  if (addr < limits.floor) {
    const floor = Math.ceil(limits.floor / PAGE) * PAGE;
    const what = `the initrd (${(size / MIB).toFixed(1)} MiB) does not fit between the end of ` +
      `the kernel (${hex(floor)}) and ${hex(top)}`;
    if (top < limits.ramEnd) {
      throw new UsageError(`${what}, the highest address the kernel accepts for an initrd`);
    }
    throw new UsageError(
      `${what}, the end of RAM below the MMIO hole; give the VM ` +
        `${Math.ceil((floor + size - top) / MIB)} MiB more memory or use a smaller initrd`,
    );
  }
  return addr;
}

/** What `loadLinux` loads. */
export interface LinuxBootConfig {
  /** The bzImage file contents. */
  readonly kernel: Uint8Array;
  /** Name of the kernel for error messages (e.g. its path). */
  readonly kernelName?: string;
  /** The initrd/initramfs file contents; absent or empty for none. */
  readonly initrd?: Uint8Array | undefined;
  /** Kernel command line. */
  readonly cmdline?: string;
  /** The machine's memory map (from `buildMemoryMap`); guest RAM must match it. */
  readonly memoryMap: MemoryMap;
  /** Guest address of the ACPI RSDP, stored in boot_params.acpi_rsdp_addr. */
  readonly acpiRsdpAddress?: number | undefined;
}

/** Where `loadLinux` put everything; `entry` and `zeroPage` feed `bootCpuState`. */
export interface LinuxBoot {
  /** The parsed setup header. */
  readonly image: BzImage;
  /** 64-bit entry point (load address + 0x200). */
  readonly entry: number;
  /** Guest address of boot_params (for %rsi). */
  readonly zeroPage: number;
  /** Where the protected-mode kernel was loaded. */
  readonly loadAddress: number;
  /** End of the kernel's unpacking footprint. */
  readonly kernelEnd: number;
  /** The command line, NUL included. */
  readonly cmdline: GpaRange;
  /** The initrd, when there is one. */
  readonly initrd: GpaRange | undefined;
}

/**
 * Loads a bzImage, its command line and initrd into guest RAM and writes the zero page at
 * `ZERO_PAGE_START`. Throws `UsageError` for a bad image, an over-long command line, or RAM too
 * small for the kernel or the initrd.
 */
export function loadLinux(memory: GuestMemory, config: LinuxBootConfig): LinuxBoot {
  const name = config.kernelName ?? "kernel image";
  const image = parseBzImage(config.kernel, name);
  const lowRamEnd = config.memoryMap.lowRamEnd;
  const placement = placeKernel(image, lowRamEnd);

  const cmdline = new TextEncoder().encode(config.cmdline ?? "");
  if (cmdline.includes(0)) throw new UsageError("kernel command line contains a NUL character");
  const maxCmdline = Math.min(image.cmdlineSize, CMDLINE_MAX_SIZE - 1);
  if (cmdline.length > maxCmdline) {
    throw new UsageError(
      `kernel command line is ${cmdline.length} bytes; ${name} accepts at most ${maxCmdline}`,
    );
  }

  let initrd: GpaRange | undefined;
  if (config.initrd && config.initrd.length > 0) {
    const gpa = placeInitrd(config.initrd.length, {
      initrdAddrMax: image.initrdAddrMax,
      ramEnd: lowRamEnd,
      floor: placement.end,
    });
    initrd = { gpa, size: config.initrd.length };
  }

  memory.write(placement.loadAddress, config.kernel.subarray(image.kernelOffset));
  const cmdlineBytes = new Uint8Array(cmdline.length + 1);
  cmdlineBytes.set(cmdline);
  memory.write(CMDLINE_START, cmdlineBytes);
  if (initrd && config.initrd) memory.write(initrd.gpa, config.initrd);
  const zeroPage = buildBootParams(config.kernel, {
    loadAddress: placement.loadAddress,
    cmdlineAddress: CMDLINE_START,
    initrd,
    e820: config.memoryMap.e820,
    acpiRsdpAddress: config.acpiRsdpAddress,
  });
  memory.write(ZERO_PAGE_START, zeroPage);

  return {
    image,
    entry: placement.entry,
    zeroPage: ZERO_PAGE_START,
    loadAddress: placement.loadAddress,
    kernelEnd: placement.end,
    cmdline: { gpa: CMDLINE_START, size: cmdlineBytes.length },
    initrd,
  };
}
