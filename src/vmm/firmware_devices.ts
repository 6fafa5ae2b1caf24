/**
 * Firmware boot wiring: the flash (OVMF's code as a read-only memslot ending at 4 GiB, the
 * variable store as a read-only memslot behind the CFI flash device, which unmaps it while the
 * flash is in command mode) and fw_cfg at 0x510, registered in the device registry, and the
 * same devices built on each vCPU thread.
 *
 * The flash's host memory and the vars file outlive guest resets (`prepareFirmware`, once per
 * VMM run); each boot maps them into the new VM (`installFirmware`) and each vCPU thread
 * attaches its device objects (`attachFirmwareDevices`).
 * @module
 */
import { createHash } from "node:crypto";
import { C, mmap } from "../../ffi/libc.ts";
import type { GuestMemory } from "../kvm/guest_memory.ts";
import { setUserMemoryRegion, type Vm } from "../kvm/vm.ts";
import type { BusDevice } from "../machine/bus.ts";
import { buildFirmwareConfig } from "../machine/firmware/config.ts";
import { FwCfgDevice, type FwCfgState } from "../machine/firmware/fw_cfg.ts";
import { FW_CFG_PORT_COUNT, FW_CFG_PORT_SELECTOR } from "../machine/firmware/fw_cfg_protocol.ts";
import {
  createPflashState,
  type FlashMapping,
  type FlashStore,
  PflashDevice,
} from "../machine/firmware/pflash.ts";
import { type VarsFileHandle, VarsFileWriter } from "../machine/firmware/vars_file.ts";
import type { MemoryMap } from "../machine/memory_map.ts";
import type { DeviceRegistry } from "../machine/registry.ts";
import { getLogger, rateLimited } from "../util/log.ts";
import { machineAcpiOptions } from "./acpi.ts";
import { type FirmwareSpec, type LoadedFirmware, loadFirmware } from "./firmware.ts";

const log = getLogger("machine", "firmware");
const traced = rateLimited(20000, 1000);

/** Registry names of the firmware devices. */
export const FW_CFG_DEVICE = "fw-cfg";
/** The CFI flash over the variable store. */
export const PFLASH_DEVICE = "pflash-vars";
/** The code image (writes land here and are dropped). */
export const FLASH_CODE_DEVICE = "flash-code";

/** The firmware of one VMM run: host memory for both flash regions and the vars file. */
export interface FirmwareHost {
  readonly loaded: LoadedFirmware;
  readonly codeHost: bigint;
  readonly varsHost: bigint;
  /** The flash contents (what the vars memslot maps). */
  readonly vars: Uint8Array;
  /** The machine UUID (SMBIOS type 1): from the vars file's path, random for a volatile store. */
  readonly uuid: Uint8Array;
  /** Writes the store to its file and syncs it (once, at VMM exit). */
  close(): void;
}

function hostBytes(size: number): { host: bigint; bytes: Uint8Array } {
  const p = mmap(size, C.PROT_READ | C.PROT_WRITE, C.MAP_PRIVATE | C.MAP_ANONYMOUS);
  const host = BigInt(Deno.UnsafePointer.value(p));
  return { host, bytes: new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(p, size)) };
}

/** A version-4-shaped UUID from 16 bytes of hash or randomness, in SMBIOS byte order. */
function uuidFrom(bytes: Uint8Array): Uint8Array {
  const u = bytes.slice(0, 16);
  u[7] = (u[7]! & 0x0f) | 0x40; // version nibble (byte 7: field 3 is little-endian in SMBIOS)
  u[8] = (u[8]! & 0x3f) | 0x80; // variant
  return u;
}

/** Loads the firmware files and puts both flash images in host memory. */
export function prepareFirmware(spec: FirmwareSpec): FirmwareHost {
  const loaded = loadFirmware(spec);
  const code = hostBytes(loaded.code.length);
  code.bytes.set(loaded.code);
  const vars = hostBytes(loaded.vars.length);
  vars.bytes.set(loaded.vars);
  const uuid = uuidFrom(
    spec.varsPath !== undefined
      ? createHash("sha256").update(`hyperdeno-vm:${Deno.realPathSync(spec.varsPath)}`).digest()
      : crypto.getRandomValues(new Uint8Array(16)),
  );
  log.info("firmware: {code} at {at}, variable store {vars}", {
    code: spec.codePath,
    at: "0x" + loaded.layout.codeGpa.toString(16),
    vars: spec.varsPath ?? "(volatile)",
  });
  let closed = false;
  return {
    loaded,
    codeHost: code.host,
    varsHost: vars.host,
    vars: vars.bytes,
    uuid,
    close() {
      if (closed) return;
      closed = true;
      loaded.varsFile?.close(vars.bytes);
    },
  };
}

/** What a vCPU thread needs to build the firmware devices (structured-cloneable). */
export interface FirmwareThreadInit {
  fwCfg: FwCfgState;
  flash: {
    state: SharedArrayBuffer;
    gpa: number;
    size: number;
    hostAddress: bigint;
    /** KVM slot of the vars memslot, flipped by the device. */
    slot: number;
    file: VarsFileHandle | undefined;
  };
}

/**
 * Maps both flash regions into `vm`, registers fw_cfg, the flash device and the code range,
 * and builds the fw_cfg items (ACPI, SMBIOS, e820) for this boot.
 */
export function installFirmware(
  vm: Vm,
  registry: DeviceRegistry,
  fw: FirmwareHost,
  machine: { cpus: number; map: MemoryMap; vmbus: boolean; bootOrder?: readonly string[] },
): FirmwareThreadInit {
  const { layout } = fw.loaded;
  vm.addSlot(layout.codeGpa, layout.codeSize, fw.codeHost, { readOnly: true });
  const slot = vm.addSlot(layout.varsGpa, layout.varsSize, fw.varsHost, { readOnly: true });
  registry.add("mmio", layout.codeGpa, layout.codeSize, registry.addDevice(FLASH_CODE_DEVICE));
  registry.add("mmio", layout.varsGpa, layout.varsSize, registry.addDevice(PFLASH_DEVICE));
  registry.add(
    "pio",
    FW_CFG_PORT_SELECTOR,
    FW_CFG_PORT_COUNT,
    registry.addDevice(FW_CFG_DEVICE),
  );
  const fwCfg = buildFirmwareConfig({
    cpus: machine.cpus,
    map: machine.map,
    acpi: machineAcpiOptions(machine),
    uuid: fw.uuid,
    ...(machine.bootOrder ? { bootOrder: machine.bootOrder } : {}),
  });
  return {
    fwCfg,
    flash: {
      state: createPflashState(),
      gpa: layout.varsGpa,
      size: layout.varsSize,
      hostAddress: fw.varsHost,
      slot,
      file: fw.loaded.varsFile?.handle,
    },
  };
}

/** The store of a volatile variable store: the bytes only. */
class MemoryStore implements FlashStore {
  constructor(readonly bytes: Uint8Array) {}
  changed(): void {}
  flush(): void {}
}

/** Builds this thread's firmware devices and puts them in `handlers`. */
export function attachFirmwareDevices(
  init: FirmwareThreadInit,
  deps: {
    registry: DeviceRegistry;
    handlers: (BusDevice | undefined)[];
    memory: GuestMemory;
    vmFd: number;
  },
): { flash: PflashDevice; fwCfg: FwCfgDevice } {
  const f = init.flash;
  const bytes = new Uint8Array(
    Deno.UnsafePointerView.getArrayBuffer(Deno.UnsafePointer.create(f.hostAddress)!, f.size),
  );
  const store: FlashStore = f.file ? new VarsFileWriter(f.file, bytes) : new MemoryStore(bytes);
  const entry = { slot: f.slot, size: f.size, hostAddress: f.hostAddress, readOnly: true };
  const mapping: FlashMapping = {
    // Command mode: reads must reach the device, so the memslot goes away until read-array.
    setArrayMode: (array) =>
      setUserMemoryRegion(deps.vmFd, array ? entry : { ...entry, size: 0 }, array ? f.gpa : 0),
  };
  const flash = new PflashDevice(f.state, store, { mapping });
  const fwCfg = new FwCfgDevice(
    init.fwCfg,
    deps.memory,
    (what) => traced(() => log.debug("fw_cfg: {what}", { what })),
  );
  const set = (name: string, device: BusDevice) => {
    const id = deps.registry.deviceId(name);
    if (id < 0) throw new Error(`Device '${name}' is not registered.`);
    deps.handlers[id] = device;
  };
  set(PFLASH_DEVICE, flash);
  set(FW_CFG_DEVICE, fwCfg);
  set(FLASH_CODE_DEVICE, {
    read: (_o, data) => void data.fill(0xff), // only while nothing maps it; never in practice
    write: () => {}, // the code image is ROM
  });
  return { flash, fwCfg };
}
