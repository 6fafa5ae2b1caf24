/**
 * Every fixed guest physical address and legacy I/O port of the hyperdeno machine, in one place.
 *
 * Low memory (all guest RAM, described to Linux by the e820 map in `memory_map.ts`):
 *
 * ```
 * 0x0000_0500  GDT (boot code/data/TSS descriptors)      BOOT_GDT_START
 * 0x0000_0540  IDT (empty; Linux loads its own)          BOOT_IDT_START
 * 0x0000_7000  boot_params, the "zero page"              ZERO_PAGE_START
 * 0x0000_8000  boot stack (grows down from 0x8ff0)       BOOT_STACK_POINTER
 * 0x0000_9000  PML4, PDPT, 4 x PD: identity map of 4 GiB PML4_START .. PAGE_TABLES_END
 * 0x0002_0000  kernel command line (64 KiB max)          CMDLINE_START
 * 0x0009_fc00  EBDA .. 1 MiB: reserved in the e820 map   EBDA_START .. HIMEM_START
 * 0x000e_0000  ACPI: RSDP, then the other tables         ACPI_START (RSDP_ADDR)
 * 0x0010_0000  kernel (when pref_address is unusable)    HIMEM_START
 * ```
 *
 * The 32-bit MMIO hole `[MMIO_HOLE_START, 4 GiB)` holds no RAM; RAM beyond it continues at
 * 4 GiB. Inside the hole: the VMBus low MMIO window, the IOAPIC, the local APIC and KVM's
 * private pages for Intel real-mode emulation (TSS, identity map).
 * @module
 */

/** 1 KiB. */
export const KIB = 0x400;
/** 1 MiB. */
export const MIB = 0x10_0000;
/** 1 GiB. */
export const GIB = 0x4000_0000;
/** 4 GiB: end of the 32-bit physical address space. */
export const FOUR_GIB = 0x1_0000_0000;

// --- Boot structures (x86-64 Linux 64-bit boot protocol) ---

/** GDT used at the 64-bit entry: null, null, __BOOT_CS (0x10), __BOOT_DS (0x18), TSS (0x20). */
export const BOOT_GDT_START = 0x500;
/** Room for 8 descriptors at `BOOT_GDT_START`. */
export const BOOT_GDT_MAX_SIZE = 0x40;
/** An empty IDT (Linux installs its own before enabling interrupts). */
export const BOOT_IDT_START = 0x540;
/** The zero page (`struct boot_params`) handed to the kernel in %rsi. */
export const ZERO_PAGE_START = 0x7000;
/** Initial %rsp: top of the boot stack page 0x8000..0x8fff (the kernel sets its own at once). */
export const BOOT_STACK_POINTER = 0x8ff0;
/** Level-4 page table of the boot identity map. */
export const PML4_START = 0x9000;
/** Page-directory-pointer table of the boot identity map. */
export const PDPT_START = 0xa000;
/** First of the page directories (2 MiB pages), one per GiB identity-mapped. */
export const PD_START = 0xb000;
/** GiB identity-mapped by the boot page tables (2 MiB pages). */
export const BOOT_IDENTITY_MAP_GIB = 4;
/** First byte after the boot page tables. */
export const PAGE_TABLES_END: number = PD_START + BOOT_IDENTITY_MAP_GIB * 0x1000;
/** Kernel command line, NUL-terminated. */
export const CMDLINE_START = 0x2_0000;
/** Bytes reserved for the command line, NUL included (the kernel's cmdline_size also caps it). */
export const CMDLINE_MAX_SIZE = 0x1_0000;
/** Start of the Extended BIOS Data Area: from here to 1 MiB is reserved in the e820 map. */
export const EBDA_START = 0x9_fc00;
/** 1 MiB: start of "high" memory, default kernel load address. */
export const HIMEM_START = 0x10_0000;
/**
 * Heap end for the real-mode setup code, relative to the setup segment (boot protocol
 * heap_end_ptr). The 64-bit entry does not run that code; the value is the customary one.
 */
export const BOOT_HEAP_END_PTR = 0xfe00;

// --- ACPI tables (inside the reserved BIOS area, where OSes also scan for the RSDP) ---

/** Start of the ACPI area; the RSDP is its first structure. */
export const ACPI_START = 0xe_0000;
/** Root System Description Pointer (16-byte aligned, inside the 0xE0000..0xFFFFF scan range). */
export const RSDP_ADDR: number = ACPI_START;
/** Bytes available for all ACPI tables (up to 1 MiB). */
export const ACPI_MAX_SIZE: number = HIMEM_START - ACPI_START;

// --- The 32-bit MMIO hole and the devices inside it ---

/** Start of the MMIO hole below 4 GiB: RAM beyond this address is moved above 4 GiB. */
export const MMIO_HOLE_START = 0xc000_0000;
/** Size of the MMIO hole (up to 4 GiB). */
export const MMIO_HOLE_SIZE: number = FOUR_GIB - MMIO_HOLE_START;
/** VMBus low MMIO window (declared in the DSDT for the guest's VMBus driver to allocate from). */
export const VMBUS_LOW_MMIO_START = 0xf000_0000;
/** Size of the VMBus low MMIO window. */
export const VMBUS_LOW_MMIO_SIZE = 0x0800_0000;
/** Size of the VMBus high MMIO window, placed above the end of RAM by `memory_map.ts`. */
export const VMBUS_HIGH_MMIO_SIZE: number = GIB;
/** Alignment of the VMBus high MMIO window. */
export const VMBUS_HIGH_MMIO_ALIGN: number = GIB;
/** IOAPIC registers (KVM's in-kernel IOAPIC). */
export const IOAPIC_START = 0xfec0_0000;
/** Size of the IOAPIC register window. */
export const IOAPIC_SIZE = 0x1000;
/** Local APIC registers (default xAPIC base). */
export const LAPIC_START = 0xfee0_0000;
/** Size of the local APIC register window. */
export const LAPIC_SIZE = 0x1000;
/**
 * KVM's identity-map page for real-mode emulation on Intel (KVM_SET_IDENTITY_MAP_ADDR). Where
 * QEMU puts it: below 0xFF000000, so the 16 MiB under 4 GiB stay free for firmware flash.
 */
export const KVM_IDENTITY_MAP_START = 0xfeff_c000;
/** KVM's 3-page TSS area for real-mode emulation on Intel (KVM_SET_TSS_ADDR), up to 0xFF000000. */
export const KVM_TSS_START = 0xfeff_d000;
/** Start of the firmware area under 4 GiB (flash/ROM); nothing else of ours sits above. */
export const FIRMWARE_AREA_START = 0xff00_0000;

// --- PCI windows (the PCI root's _CRS in the DSDT) ---

/** 32-bit PCI MMIO window: from the hole start up to the VMBus low window. */
export const PCI_LOW_MMIO_START: number = MMIO_HOLE_START;
/** Size of the 32-bit PCI MMIO window. */
export const PCI_LOW_MMIO_SIZE: number = VMBUS_LOW_MMIO_START - MMIO_HOLE_START;
/** Size of the 64-bit PCI MMIO window, placed after the VMBus high window by `memory_map.ts`. */
export const PCI_HIGH_MMIO_SIZE: number = 8 * GIB;
/**
 * PCI I/O windows: everything but the config ports 0xCF8-0xCFF and the Hyper-V doorbell ports
 * 0x2001-0x27FF (kept out so no BAR lands on a doorbell).
 */
export const PCI_IO_WINDOWS: readonly { start: number; end: number }[] = [
  { start: 0x0000, end: 0x0cf7 },
  { start: 0x0d00, end: 0x1fff },
  { start: 0x2800, end: 0xffff },
];
/** PIIX4 PM I/O block (PMBA): PM1a event/control at +0/+4, the PM timer at +8. */
export const PM_IO_BASE = 0x600;

// --- Legacy I/O ports and interrupts described by ACPI ---

/** ACPI PM1a event block (PM1_STS at +0, PM1_EN at +2). */
export const PM1A_EVT_PORT = 0x600;
/** Length of the PM1a event block. */
export const PM1A_EVT_LEN = 4;
/** ACPI PM1a control block (SCI_EN, SLP_TYP, SLP_EN). */
export const PM1A_CNT_PORT = 0x604;
/** Length of the PM1a control block. */
export const PM1A_CNT_LEN = 2;
/** ACPI PM timer (3.579545 MHz, 32-bit), declared only when the machine has one. */
export const PM_TMR_PORT = 0x608;
/** Length of the PM timer block. */
export const PM_TMR_LEN = 4;
/** SLP_TYP value (PM1_CNT bits 12:10) that the DSDT's `\_S5` tells the guest means soft-off. */
export const ACPI_S5_SLP_TYP = 5;
/** ACPI reset register: the PCI reset control port. */
export const RESET_PORT = 0xcf9;
/** Value the guest writes to `RESET_PORT` to reset (hard reset + reset CPU). */
export const RESET_VALUE = 0x06;
/** ISA IRQ (and GSI) of the ACPI System Control Interrupt: level, active high. */
export const SCI_IRQ = 9;
/** COM1 16550 UART ports. */
export const COM1_PORT = 0x3f8;
/** Ports of a 16550 UART. */
export const COM_PORT_LEN = 8;
/** COM1 ISA IRQ. */
export const COM1_IRQ = 4;
/** i8042 data port. */
export const I8042_DATA_PORT = 0x60;
/** i8042 command/status port. */
export const I8042_CMD_PORT = 0x64;
/** i8042 keyboard ISA IRQ. */
export const I8042_KBD_IRQ = 1;
/** i8042 AUX (PS/2 mouse) IRQ. */
export const I8042_AUX_IRQ = 12;
/** Number of IOAPIC pins (KVM's in-kernel IOAPIC). */
export const IOAPIC_PINS = 24;
