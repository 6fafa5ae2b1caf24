/**
 * What the machine tells its firmware through fw_cfg: CPU count, RAM map, sleep states, boot
 * order and wait, SMBIOS and ACPI (through the linker/loader). One function from the machine's
 * description to the sealed item set; the device that serves it is `fw_cfg.ts`.
 * @module
 */
import { type AcpiOptions, buildAcpiImage } from "../acpi/mod.ts";
import { E820_RAM, type MemoryMap } from "../memory_map.ts";
import { FwCfgBuilder, type FwCfgState } from "./fw_cfg.ts";
import {
  FILE_BOOT_FAIL_WAIT,
  FILE_BOOTORDER,
  FILE_E820,
  FILE_SYSTEM_STATES,
  FW_CFG_BOOT_MENU,
  FW_CFG_E820_ENTRY,
  FW_CFG_MAX_CPUS,
  FW_CFG_NB_CPUS,
  FW_CFG_RAM_SIZE,
  FW_CFG_UUID,
} from "./fw_cfg_protocol.ts";
import { smbiosFirmwareFiles, type SmbiosSystem } from "./smbios.ts";
import { acpiFirmwareFiles, type FwCfgFile } from "./table_loader.ts";

/** The machine as the firmware sees it. */
export interface FirmwareConfigOptions {
  /** Boot vCPUs. */
  readonly cpus: number;
  /** Guest RAM layout: every RAM range becomes an `etc/e820` RAM entry. */
  readonly map: MemoryMap;
  /** The ACPI tables (the same options as direct boot). */
  readonly acpi: AcpiOptions;
  /** OpenFirmware device paths in boot order (empty: the firmware's own order). */
  readonly bootOrder?: readonly string[];
  /** Milliseconds before a reboot when nothing boots; -1 (default) never reboots. */
  readonly bootFailWaitMs?: number;
  /** Machine UUID, 16 bytes in SMBIOS order: key 0x02 and SMBIOS type 1 (no SMBIOS without). */
  readonly uuid?: Uint8Array;
  /** SMBIOS system identity (default `DEFAULT_SYSTEM`). */
  readonly system?: SmbiosSystem;
  /** CPUID leaf 1 EAX | EDX << 32, for SMBIOS type 4. */
  readonly processorId?: bigint;
  /** More named files, added as they are. */
  readonly files?: readonly FwCfgFile[];
}

/**
 * `etc/system-states`: one byte per S-state, bit 7 = "advertise it", low bits = the SLP_TYP
 * value. S3 and S4 are off (the machine cannot suspend); S5 is soft-off.
 */
export const SYSTEM_STATES: Uint8Array = Uint8Array.of(0x80, 0, 0, 0x01, 0x02, 0x80);

function u16(v: number): Uint8Array {
  return Uint8Array.of(v & 0xff, (v >> 8) & 0xff);
}

/** The `etc/e820` bytes for the RAM of `map`. */
export function firmwareE820(map: MemoryMap): Uint8Array {
  const out = new Uint8Array(map.ram.length * FW_CFG_E820_ENTRY.size);
  map.ram.forEach((r, i) =>
    FW_CFG_E820_ENTRY.encode(
      { address: BigInt(r.gpa), length: BigInt(r.size), type: E820_RAM },
      out,
      i * FW_CFG_E820_ENTRY.size,
    )
  );
  return out;
}

/** The `bootorder` bytes: one path per line, NUL-terminated. */
export function bootOrderFile(paths: readonly string[]): Uint8Array {
  return new TextEncoder().encode(paths.join("\n") + "\0");
}

/** Builds every fw_cfg item for the machine. */
export function buildFirmwareConfig(o: FirmwareConfigOptions): FwCfgState {
  const b = new FwCfgBuilder();
  b.addItem(FW_CFG_NB_CPUS, u16(o.cpus));
  b.addItem(FW_CFG_MAX_CPUS, u16(o.cpus));
  b.addItem(FW_CFG_BOOT_MENU, u16(0));
  const ram = new Uint8Array(8);
  new DataView(ram.buffer).setBigUint64(0, BigInt(o.map.ramBytes), true);
  b.addItem(FW_CFG_RAM_SIZE, ram);
  if (o.uuid) {
    b.addItem(FW_CFG_UUID, o.uuid.slice());
    const smbios = smbiosFirmwareFiles({
      cpus: o.cpus,
      ram: o.map.ram,
      uuid: o.uuid,
      ...(o.system ? { system: o.system } : {}),
      ...(o.processorId !== undefined ? { processorId: o.processorId } : {}),
    });
    for (const f of smbios) b.addFile(f.name, f.data);
  }
  b.addFile(FILE_E820, firmwareE820(o.map));
  b.addFile(FILE_SYSTEM_STATES, SYSTEM_STATES.slice());
  const wait = new Uint8Array(4);
  new DataView(wait.buffer).setInt32(0, o.bootFailWaitMs ?? -1, true);
  b.addFile(FILE_BOOT_FAIL_WAIT, wait);
  if (o.bootOrder && o.bootOrder.length > 0) b.addFile(FILE_BOOTORDER, bootOrderFile(o.bootOrder));
  for (const f of acpiFirmwareFiles(buildAcpiImage(o.acpi))) b.addFile(f.name, f.data);
  for (const f of o.files ?? []) b.addFile(f.name, f.data);
  return b.build();
}
