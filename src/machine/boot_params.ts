/**
 * `struct boot_params` (the x86 "zero page", Documentation/x86/zero-page.rst) and the setup
 * header it embeds at 0x1F1 (Documentation/x86/boot.rst). The same offsets index a bzImage
 * file, whose first sector carries the setup header at the same place, so one layout reads the
 * image and writes the zero page.
 * @module
 */
import { defineLayout } from "../util/layout.ts";
import type { E820Entry, GpaRange } from "./memory_map.ts";
import { BOOT_HEAP_END_PTR } from "./layout.ts";

/** Size of `struct boot_params`. */
export const BOOT_PARAMS_SIZE = 0x1000;
/** Offset of the setup header in boot_params and in a bzImage. */
export const SETUP_HEADER_OFFSET = 0x1f1;
/** The setup header may extend at most to here (`_pad7` ends at 0x290). */
export const SETUP_HEADER_LIMIT = 0x290;
/** Entries of `e820_table` in the zero page. */
export const E820_MAX_ENTRIES_ZEROPAGE = 128;
/** "HdrS": setup header magic at 0x202. */
export const HDRS_MAGIC = 0x5372_6448;
/** 0xAA55 at 0x1FE. */
export const BOOT_FLAG_MAGIC = 0xaa55;

/** loadflags: protected-mode code is loaded at 0x100000 (bzImage). */
export const LOADED_HIGH = 1 << 0;
/** loadflags: heap_end_ptr is valid. */
export const CAN_USE_HEAP = 1 << 7;
/** xloadflags: the kernel has the 64-bit entry point at +0x200. */
export const XLF_KERNEL_64 = 1 << 0;
/** xloadflags: kernel/boot_params/cmdline/ramdisk may live above 4 GiB. */
export const XLF_CAN_BE_LOADED_ABOVE_4G = 1 << 1;
/** type_of_loader: "undefined" boot loader (no assigned ID). */
export const LOADER_TYPE_UNDEFINED = 0xff;

/** `struct boot_e820_entry`. */
export const E820_ENTRY = defineLayout("boot_e820_entry", 20, {
  addr: { offset: 0, type: "u64" },
  size: { offset: 8, type: "u64" },
  type: { offset: 16, type: "u32" },
});

/** `struct boot_params`, with the embedded `struct setup_header` fields at absolute offsets. */
export const BOOT_PARAMS = defineLayout("boot_params", BOOT_PARAMS_SIZE, {
  acpi_rsdp_addr: { offset: 0x070, type: "u64" },
  ext_ramdisk_image: { offset: 0x0c0, type: "u32" },
  ext_ramdisk_size: { offset: 0x0c4, type: "u32" },
  ext_cmd_line_ptr: { offset: 0x0c8, type: "u32" },
  alt_mem_k: { offset: 0x1e0, type: "u32" },
  e820_entries: { offset: 0x1e8, type: "u8" },
  sentinel: { offset: 0x1ef, type: "u8" },
  // struct setup_header hdr (0x1f1)
  setup_sects: { offset: 0x1f1, type: "u8" },
  root_flags: { offset: 0x1f2, type: "u16" },
  syssize: { offset: 0x1f4, type: "u32" },
  ram_size: { offset: 0x1f8, type: "u16" },
  vid_mode: { offset: 0x1fa, type: "u16" },
  root_dev: { offset: 0x1fc, type: "u16" },
  boot_flag: { offset: 0x1fe, type: "u16" },
  jump: { offset: 0x200, type: "u16" },
  header: { offset: 0x202, type: "u32" },
  version: { offset: 0x206, type: "u16" },
  realmode_swtch: { offset: 0x208, type: "u32" },
  start_sys_seg: { offset: 0x20c, type: "u16" },
  kernel_version: { offset: 0x20e, type: "u16" },
  type_of_loader: { offset: 0x210, type: "u8" },
  loadflags: { offset: 0x211, type: "u8" },
  setup_move_size: { offset: 0x212, type: "u16" },
  code32_start: { offset: 0x214, type: "u32" },
  ramdisk_image: { offset: 0x218, type: "u32" },
  ramdisk_size: { offset: 0x21c, type: "u32" },
  bootsect_kludge: { offset: 0x220, type: "u32" },
  heap_end_ptr: { offset: 0x224, type: "u16" },
  ext_loader_ver: { offset: 0x226, type: "u8" },
  ext_loader_type: { offset: 0x227, type: "u8" },
  cmd_line_ptr: { offset: 0x228, type: "u32" },
  initrd_addr_max: { offset: 0x22c, type: "u32" },
  kernel_alignment: { offset: 0x230, type: "u32" },
  relocatable_kernel: { offset: 0x234, type: "u8" },
  min_alignment: { offset: 0x235, type: "u8" },
  xloadflags: { offset: 0x236, type: "u16" },
  cmdline_size: { offset: 0x238, type: "u32" },
  hardware_subarch: { offset: 0x23c, type: "u32" },
  hardware_subarch_data: { offset: 0x240, type: "u64" },
  payload_offset: { offset: 0x248, type: "u32" },
  payload_length: { offset: 0x24c, type: "u32" },
  setup_data: { offset: 0x250, type: "u64" },
  pref_address: { offset: 0x258, type: "u64" },
  init_size: { offset: 0x260, type: "u32" },
  handover_offset: { offset: 0x264, type: "u32" },
  kernel_info_offset: { offset: 0x268, type: "u32" },
  // end of setup header
  e820_table: { offset: 0x2d0, type: { bytes: E820_MAX_ENTRIES_ZEROPAGE * 20 } },
});

/** What the boot loader fills into the zero page besides the copied setup header. */
export interface BootParamsOptions {
  /** Where the protected-mode kernel was loaded (code32_start). */
  readonly loadAddress: number;
  /** Guest address of the NUL-terminated command line. */
  readonly cmdlineAddress: number;
  /** Where the initrd was placed, if there is one. */
  readonly initrd?: GpaRange | undefined;
  /** The e820 memory map (at most 128 entries). */
  readonly e820: readonly E820Entry[];
  /** Guest address of the ACPI RSDP; 0 or absent lets the kernel scan for it. */
  readonly acpiRsdpAddress?: number | undefined;
}

function lo32(v: number): number {
  return v % 0x1_0000_0000;
}

function hi32(v: number): number {
  return Math.floor(v / 0x1_0000_0000);
}

/**
 * Builds the 4 KiB zero page for `kernel`, a bzImage already checked by `parseBzImage`: a clean
 * buffer, the image's setup header copied in (0x1F1 up to 0x202 + byte at 0x201), then the
 * loader's fields. Throws `RangeError` for more than 128 e820 entries.
 */
export function buildBootParams(kernel: Uint8Array, options: BootParamsOptions): Uint8Array {
  const zp = new Uint8Array(BOOT_PARAMS_SIZE);
  const jumpOffset = kernel[0x201] ?? 0;
  const headerEnd = Math.min(0x202 + jumpOffset, SETUP_HEADER_LIMIT, kernel.length);
  zp.set(kernel.subarray(SETUP_HEADER_OFFSET, headerEnd), SETUP_HEADER_OFFSET);

  const P = BOOT_PARAMS;
  P.set(zp, 0, "type_of_loader", LOADER_TYPE_UNDEFINED);
  P.set(zp, 0, "loadflags", P.get(zp, 0, "loadflags") | LOADED_HIGH | CAN_USE_HEAP);
  P.set(zp, 0, "heap_end_ptr", BOOT_HEAP_END_PTR);
  P.set(zp, 0, "code32_start", lo32(options.loadAddress));
  P.set(zp, 0, "cmd_line_ptr", lo32(options.cmdlineAddress));
  P.set(zp, 0, "ext_cmd_line_ptr", hi32(options.cmdlineAddress));
  if (options.initrd && options.initrd.size > 0) {
    P.set(zp, 0, "ramdisk_image", lo32(options.initrd.gpa));
    P.set(zp, 0, "ext_ramdisk_image", hi32(options.initrd.gpa));
    P.set(zp, 0, "ramdisk_size", lo32(options.initrd.size));
    P.set(zp, 0, "ext_ramdisk_size", hi32(options.initrd.size));
  }
  P.set(zp, 0, "acpi_rsdp_addr", BigInt(options.acpiRsdpAddress ?? 0));

  if (options.e820.length > E820_MAX_ENTRIES_ZEROPAGE) {
    throw new RangeError(
      `e820 map has ${options.e820.length} entries; the zero page holds ${E820_MAX_ENTRIES_ZEROPAGE}`,
    );
  }
  const table = P.fields.e820_table.offset;
  options.e820.forEach((e, i) => {
    E820_ENTRY.encode(
      { addr: BigInt(e.addr), size: BigInt(e.size), type: e.type },
      zp,
      table + i * E820_ENTRY.size,
    );
  });
  P.set(zp, 0, "e820_entries", options.e820.length);
  return zp;
}

/** Decodes the e820 table of a zero page (for tests and diagnostics). */
export function readE820(zeroPage: Uint8Array): E820Entry[] {
  const n = BOOT_PARAMS.get(zeroPage, 0, "e820_entries");
  const table = BOOT_PARAMS.fields.e820_table.offset;
  const out: E820Entry[] = [];
  for (let i = 0; i < Math.min(n, E820_MAX_ENTRIES_ZEROPAGE); i++) {
    const e = E820_ENTRY.decode(zeroPage, table + i * E820_ENTRY.size)!;
    out.push({ addr: Number(e.addr), size: Number(e.size), type: e.type });
  }
  return out;
}
