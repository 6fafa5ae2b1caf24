/**
 * The machine's SMBIOS tables for the firmware (`etc/smbios/smbios-anchor` and
 * `etc/smbios/smbios-tables` in fw_cfg): BIOS (0), system with the VM's UUID (1), chassis (3),
 * one processor socket with every vCPU as a core (4), one memory array (16) of up to 16 GiB
 * devices (17), one mapped range per RAM range (19), boot status (32) and the end marker (127).
 * OVMF installs the structures as they are and builds its own entry point; the anchor tells it
 * the version. Layouts are in `smbios_protocol.ts`.
 * @module
 */
import type { GpaRange } from "../memory_map.ts";
import { checksum } from "../acpi/tables.ts";
import type { FwCfgFile } from "./table_loader.ts";
import { FILE_SMBIOS_ANCHOR, FILE_SMBIOS_TABLES } from "./fw_cfg_protocol.ts";
import {
  BIOS_CHARACTERISTICS_NOT_SUPPORTED,
  BIOS_EXT2_TCD,
  BIOS_EXT2_UEFI,
  BIOS_EXT2_VM,
  CAPACITY_EXTENDED,
  CHASSIS_OTHER,
  FORM_FACTOR_DIMM,
  MEMORY_ECC_NONE,
  MEMORY_LOCATION_OTHER,
  MEMORY_SIZE_EXTENDED,
  MEMORY_TYPE_RAM,
  MEMORY_USE_SYSTEM,
  NO_HANDLE,
  NOT_PROVIDED,
  PROCESSOR_64BIT,
  PROCESSOR_CENTRAL,
  PROCESSOR_ENABLED,
  PROCESSOR_FAMILY_OTHER,
  SECURITY_UNKNOWN,
  SMBIOS_ENTRY_POINT,
  SMBIOS_MAJOR,
  SMBIOS_MINOR,
  SMBIOS_TYPE0,
  SMBIOS_TYPE1,
  SMBIOS_TYPE127,
  SMBIOS_TYPE16,
  SMBIOS_TYPE17,
  SMBIOS_TYPE19,
  SMBIOS_TYPE3,
  SMBIOS_TYPE32,
  SMBIOS_TYPE4,
  STATE_SAFE,
  TYPE_DETAIL_OTHER,
  WAKEUP_POWER_SWITCH,
  WIDTH_UNKNOWN,
} from "./smbios_protocol.ts";

/** Identity strings of the system (type 1) and its maker. */
export interface SmbiosSystem {
  readonly manufacturer: string;
  readonly product: string;
  readonly version: string;
  readonly serial: string;
  readonly family: string;
}

/**
 * The default identity: hyperdeno's own, deliberately not Hyper-V's "Microsoft Corporation /
 * Virtual Machine", which makes Linux's ata_piix hand IDE disks to storvsc.
 */
export const DEFAULT_SYSTEM: SmbiosSystem = {
  manufacturer: "hyperdeno",
  product: "hyperdeno PC (i440FX + PIIX)",
  version: "1",
  serial: "",
  family: "hyperdeno",
};

/** What the tables describe. */
export interface SmbiosOptions {
  /** vCPUs (cores of one socket), 1-255. */
  readonly cpus: number;
  /** RAM ranges in guest physical space (type 19); their sum is the installed memory. */
  readonly ram: readonly GpaRange[];
  /** The VM's UUID, 16 bytes in SMBIOS byte order ({@linkcode smbiosUuid}). */
  readonly uuid: Uint8Array;
  /** CPUID leaf 1 EAX (low) and EDX (high), for the processor ID. */
  readonly processorId?: bigint;
  /** System identity (default {@linkcode DEFAULT_SYSTEM}). */
  readonly system?: SmbiosSystem;
}

const HANDLE_TYPE0 = 0x0000;
const HANDLE_TYPE1 = 0x0100;
const HANDLE_TYPE3 = 0x0300;
const HANDLE_TYPE4 = 0x0400;
const HANDLE_TYPE16 = 0x1000;
const HANDLE_TYPE17 = 0x1100;
const HANDLE_TYPE19 = 0x1300;
const HANDLE_TYPE32 = 0x2000;
const HANDLE_TYPE127 = 0x7f00;

/** Largest memory device described, as QEMU does. */
const DIMM_MAX_BYTES = 16 * 2 ** 30;
const MIB = 2 ** 20;
const KIB = 1024;

/**
 * Parses a UUID ("01234567-89ab-cdef-0123-456789abcdef") into SMBIOS byte order: the first three
 * fields little-endian, the rest as written (SMBIOS 2.6+). Returns undefined when malformed.
 */
export function smbiosUuid(text: string): Uint8Array | undefined {
  const m = /^([0-9a-f]{8})-([0-9a-f]{4})-([0-9a-f]{4})-([0-9a-f]{4})-([0-9a-f]{12})$/i.exec(text);
  if (!m) return undefined;
  const hex = (s: string) => Uint8Array.from(s.match(/../g)!, (b) => parseInt(b, 16));
  const out = new Uint8Array(16);
  out.set(hex(m[1]!).reverse(), 0);
  out.set(hex(m[2]!).reverse(), 4);
  out.set(hex(m[3]!).reverse(), 6);
  out.set(hex(m[4]!), 8);
  out.set(hex(m[5]!), 10);
  return out;
}

/** One structure: its formatted area with string references filled in, and its strings. */
class Structure {
  readonly strings: string[] = [];
  constructor(readonly formatted: Uint8Array) {}
  /** Index of `s` in the string set (1-based), 0 for an empty string. */
  str(s: string): number {
    if (s === "") return 0;
    const i = this.strings.indexOf(s);
    if (i >= 0) return i + 1;
    this.strings.push(s);
    return this.strings.length;
  }
  bytes(): Uint8Array {
    const text = this.strings.length === 0 ? new Uint8Array(2) : new TextEncoder().encode(
      this.strings.map((s) => s.replaceAll("\0", "") + "\0").join("") + "\0",
    );
    const out = new Uint8Array(this.formatted.length + text.length);
    out.set(this.formatted);
    out.set(text, this.formatted.length);
    return out;
  }
}

/** Release date in type 0 (MM/DD/YYYY). */
const BIOS_RELEASE_DATE = "01/01/2026";

/** Builds the anchor and the structure table. */
export function buildSmbios(o: SmbiosOptions): { anchor: Uint8Array; tables: Uint8Array } {
  if (!Number.isInteger(o.cpus) || o.cpus < 1 || o.cpus > 255) {
    throw new RangeError(`vCPU count ${o.cpus} is outside 1-255`);
  }
  if (o.uuid.length !== 16) throw new RangeError("the SMBIOS UUID is 16 bytes");
  const sys = o.system ?? DEFAULT_SYSTEM;
  const structures: Structure[] = [];

  const t0 = new Structure(new Uint8Array(SMBIOS_TYPE0.size));
  SMBIOS_TYPE0.encode({
    type: 0,
    length: SMBIOS_TYPE0.size,
    handle: HANDLE_TYPE0,
    vendor: t0.str("hyperdeno"),
    version: t0.str("hyperdeno"),
    start_segment: 0xe800,
    release_date: t0.str(BIOS_RELEASE_DATE),
    characteristics: BIOS_CHARACTERISTICS_NOT_SUPPORTED,
    characteristics_ext2: BIOS_EXT2_TCD | BIOS_EXT2_UEFI | BIOS_EXT2_VM,
    bios_major: 1,
    bios_minor: 0,
    ec_major: 0xff,
    ec_minor: 0xff,
  }, t0.formatted);
  structures.push(t0);

  const t1 = new Structure(new Uint8Array(SMBIOS_TYPE1.size));
  SMBIOS_TYPE1.encode({
    type: 1,
    length: SMBIOS_TYPE1.size,
    handle: HANDLE_TYPE1,
    manufacturer: t1.str(sys.manufacturer),
    product: t1.str(sys.product),
    version: t1.str(sys.version),
    serial: t1.str(sys.serial),
    uuid: o.uuid,
    wakeup_type: WAKEUP_POWER_SWITCH,
    family: t1.str(sys.family),
  }, t1.formatted);
  structures.push(t1);

  const t3 = new Structure(new Uint8Array(SMBIOS_TYPE3.size));
  SMBIOS_TYPE3.encode({
    type: 3,
    length: SMBIOS_TYPE3.size,
    handle: HANDLE_TYPE3,
    manufacturer: t3.str(sys.manufacturer),
    chassis_type: CHASSIS_OTHER,
    version: t3.str(sys.version),
    bootup_state: STATE_SAFE,
    power_supply_state: STATE_SAFE,
    thermal_state: STATE_SAFE,
    security_status: SECURITY_UNKNOWN,
  }, t3.formatted);
  structures.push(t3);

  const t4 = new Structure(new Uint8Array(SMBIOS_TYPE4.size));
  SMBIOS_TYPE4.encode({
    type: 4,
    length: SMBIOS_TYPE4.size,
    handle: HANDLE_TYPE4,
    socket: t4.str("CPU 0"),
    processor_type: PROCESSOR_CENTRAL,
    family: PROCESSOR_FAMILY_OTHER,
    manufacturer: t4.str(sys.manufacturer),
    processor_id: o.processorId ?? 0n,
    version: t4.str("hyperdeno vCPU"),
    max_speed: 2000,
    current_speed: 2000,
    status: PROCESSOR_ENABLED,
    upgrade: 0x01,
    l1_cache: NO_HANDLE,
    l2_cache: NO_HANDLE,
    l3_cache: NO_HANDLE,
    core_count: o.cpus,
    core_enabled: o.cpus,
    thread_count: o.cpus,
    characteristics: PROCESSOR_64BIT,
    family2: PROCESSOR_FAMILY_OTHER,
  }, t4.formatted);
  structures.push(t4);

  const ramBytes = o.ram.reduce((n, r) => n + r.size, 0);
  const dimms = Math.max(1, Math.ceil(ramBytes / DIMM_MAX_BYTES));
  const t16 = new Structure(new Uint8Array(SMBIOS_TYPE16.size));
  const capacityKib = ramBytes / KIB;
  SMBIOS_TYPE16.encode({
    type: 16,
    length: SMBIOS_TYPE16.size,
    handle: HANDLE_TYPE16,
    location: MEMORY_LOCATION_OTHER,
    use: MEMORY_USE_SYSTEM,
    error_correction: MEMORY_ECC_NONE,
    maximum_capacity: capacityKib < CAPACITY_EXTENDED ? capacityKib : CAPACITY_EXTENDED,
    error_info_handle: NOT_PROVIDED,
    device_count: dimms,
    extended_maximum_capacity: capacityKib < CAPACITY_EXTENDED ? 0n : BigInt(ramBytes),
  }, t16.formatted);
  structures.push(t16);

  for (let i = 0, left = ramBytes; i < dimms; i++) {
    const bytes = Math.min(left, DIMM_MAX_BYTES);
    left -= bytes;
    const mib = Math.ceil(bytes / MIB);
    const t17 = new Structure(new Uint8Array(SMBIOS_TYPE17.size));
    SMBIOS_TYPE17.encode({
      type: 17,
      length: SMBIOS_TYPE17.size,
      handle: HANDLE_TYPE17 + i,
      array_handle: HANDLE_TYPE16,
      error_info_handle: NOT_PROVIDED,
      total_width: WIDTH_UNKNOWN,
      data_width: WIDTH_UNKNOWN,
      size: mib < MEMORY_SIZE_EXTENDED ? mib : MEMORY_SIZE_EXTENDED,
      form_factor: FORM_FACTOR_DIMM,
      device_locator: t17.str(`DIMM ${i}`),
      memory_type: MEMORY_TYPE_RAM,
      type_detail: TYPE_DETAIL_OTHER,
      manufacturer: t17.str(sys.manufacturer),
      extended_size: mib < MEMORY_SIZE_EXTENDED ? 0 : mib,
    }, t17.formatted);
    structures.push(t17);
  }

  o.ram.forEach((r, i) => {
    const t19 = new Structure(new Uint8Array(SMBIOS_TYPE19.size));
    const startKib = Math.floor(r.gpa / KIB);
    const endKib = Math.floor((r.gpa + r.size) / KIB) - 1;
    const fits = endKib < 0xffff_ffff;
    SMBIOS_TYPE19.encode({
      type: 19,
      length: SMBIOS_TYPE19.size,
      handle: HANDLE_TYPE19 + i,
      starting_address: fits ? startKib : 0xffff_ffff,
      ending_address: fits ? endKib : 0xffff_ffff,
      array_handle: HANDLE_TYPE16,
      partition_width: 1,
      extended_starting_address: fits ? 0n : BigInt(r.gpa),
      extended_ending_address: fits ? 0n : BigInt(r.gpa + r.size - 1),
    }, t19.formatted);
    structures.push(t19);
  });

  const t32 = new Structure(new Uint8Array(SMBIOS_TYPE32.size));
  SMBIOS_TYPE32.encode(
    { type: 32, length: SMBIOS_TYPE32.size, handle: HANDLE_TYPE32 },
    t32.formatted,
  );
  structures.push(t32);
  const t127 = new Structure(new Uint8Array(SMBIOS_TYPE127.size));
  SMBIOS_TYPE127.encode(
    { type: 127, length: SMBIOS_TYPE127.size, handle: HANDLE_TYPE127 },
    t127.formatted,
  );
  structures.push(t127);

  const parts = structures.map((s) => s.bytes());
  const length = parts.reduce((n, p) => n + p.length, 0);
  if (length > 0xffff) throw new RangeError(`SMBIOS tables of ${length} bytes exceed 64 KiB`);
  const tables = new Uint8Array(length);
  let at = 0;
  for (const p of parts) {
    tables.set(p, at);
    at += p.length;
  }
  const anchor = SMBIOS_ENTRY_POINT.encode({
    anchor: new TextEncoder().encode("_SM_"),
    length: SMBIOS_ENTRY_POINT.size,
    major: SMBIOS_MAJOR,
    minor: SMBIOS_MINOR,
    max_structure_size: Math.max(...parts.map((p) => p.length)),
    intermediate_anchor: new TextEncoder().encode("_DMI_"),
    table_length: length,
    table_address: 0, // the firmware places the table
    structure_count: parts.length,
    bcd_revision: (SMBIOS_MAJOR << 4) | SMBIOS_MINOR,
  });
  SMBIOS_ENTRY_POINT.set(anchor, 0, "intermediate_checksum", checksum(anchor.subarray(16, 31)));
  SMBIOS_ENTRY_POINT.set(anchor, 0, "checksum", checksum(anchor));
  return { anchor, tables };
}

/** The two fw_cfg files for `o`. */
export function smbiosFirmwareFiles(o: SmbiosOptions): FwCfgFile[] {
  const { anchor, tables } = buildSmbios(o);
  return [
    { name: FILE_SMBIOS_ANCHOR, data: anchor },
    { name: FILE_SMBIOS_TABLES, data: tables },
  ];
}
