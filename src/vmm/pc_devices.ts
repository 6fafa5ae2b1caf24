/**
 * The PC board (i440FX/PIIX) and where everything sits: the one place that knows ports, MMIO
 * ranges, PCI slots and GSIs. `createPcDeviceState` runs once on the main thread: it creates
 * every device's shared state and registers devices and ranges in the {@linkcode DeviceRegistry};
 * every thread that handles exits then builds its own device objects over that state
 * (`attachPcDevices`) and dispatches through its own {@linkcode IoDispatch}.
 *
 * Ranges the in-kernel irqchip and PIT answer are registered as `"kernel"` devices, so nothing
 * else can claim them.
 * @module
 */
import { AcpiPm } from "../machine/devices/acpi_pm.ts";
import { DebugPort } from "../machine/devices/debug_port.ts";
import { I8042 } from "../machine/devices/i8042.ts";
import { PCI_HOST_PORT_COUNT, PciHost } from "../machine/devices/pci_host.ts";
import { ResetPort } from "../machine/devices/reset_port.ts";
import { Rtc } from "../machine/devices/rtc.ts";
import { Serial, UART_PORT_COUNT } from "../machine/devices/serial.ts";
import type { IrqLine, MsiSink } from "../machine/irq.ts";
import {
  COM1_IRQ,
  COM1_PORT,
  I8042_AUX_IRQ,
  I8042_CMD_PORT,
  I8042_DATA_PORT,
  I8042_KBD_IRQ,
  IOAPIC_SIZE,
  IOAPIC_START,
  LAPIC_SIZE,
  LAPIC_START,
  PM_IO_BASE,
  SCI_IRQ,
} from "../machine/layout.ts";
import type { PowerControl } from "../machine/power.ts";
import type { BusDevice } from "../machine/bus.ts";
import { DeviceRegistry, IoDispatch, type RegistryState } from "../machine/registry.ts";
import { PciFunction, type PciFunctionSpec } from "../machine/pci/function.ts";
import { BochsDisplay } from "../devices/display/bochs.ts";
import { setUserMemoryRegion } from "../kvm/vm.ts";
import type { PciDeviceStatus } from "./control.ts";
import { getLogger, rateLimited } from "../util/log.ts";
import { eventfdSignal } from "../../ffi/libc.ts";
import { type MainThreadDevice, RequestSlotClient } from "../machine/main_thread_slot.ts";
import { BOCHS_PCI, MMIO } from "../devices/display/protocol.ts";
import {
  I440FX_DEVFN,
  I440FX_SPEC,
  PIIX3_DEVFN,
  PIIX3_SPEC,
  PIIX4_PM_DEVFN,
  piix4PmSpec,
  PIRQ_GSI_BASE,
  PirqLines,
  pirqOf,
  PM_IO_SIZE,
  pmBlockBase,
  PmIoBlock,
  PmTimer,
} from "../machine/pci/piix.ts";

const log = getLogger("machine", "display");

/** PCI configuration mechanism #1 (0xCF8..0xCFF; 0xCF9 is the reset control inside it). */
const PCI_CONFIG_PORT = 0xcf8;
/** CMOS index/data ports. */
const RTC_PORT = 0x70;
/** POST code port; Linux's io_delay writes it constantly. */
const POST_PORT = 0x80;

/** Ranges KVM's in-kernel PIC, PIT (and its speaker port), ELCR, IOAPIC and LAPIC answer. */
const KERNEL_RANGES: readonly [string, "pio" | "mmio", number, number][] = [
  ["pic-master", "pio", 0x20, 2],
  ["pit", "pio", 0x40, 4],
  ["pit-speaker", "pio", 0x61, 1],
  ["pic-slave", "pio", 0xa0, 2],
  ["elcr", "pio", 0x4d0, 2],
  ["ioapic", "mmio", IOAPIC_START, IOAPIC_SIZE],
  ["lapic", "mmio", LAPIC_START, LAPIC_SIZE],
];

/** A PCI function of the board: where it sits and what it is. */
export interface PciSlot {
  readonly devfn: number;
  readonly name: string;
  readonly spec: PciFunctionSpec;
  readonly state: SharedArrayBuffer;
}

/** Shared state of every board device (structured-cloneable: SharedArrayBuffers and data). */
export interface PcDeviceState {
  registry: RegistryState;
  com1: SharedArrayBuffer;
  rtc: SharedArrayBuffer;
  i8042: SharedArrayBuffer;
  acpiPm: SharedArrayBuffer;
  reset: SharedArrayBuffer;
  pci: SharedArrayBuffer;
  pirq: SharedArrayBuffer;
  pciSlots: PciSlot[];
  /** Registry range of the PIIX4 PM block (moved when the guest reprograms PMBA). */
  pmRange: number;
  /** The bochs-display at 00:02.0, with `--display bochs`. */
  display?: DisplayState;
  /**
   * Request slots for main-thread devices, one per vCPU, and the eventfd that wakes the main
   * thread (set by the builder once the vCPU count and the event loop exist).
   */
  requests?: { slots: SharedArrayBuffer[]; wakeFd: number };
}

/** The display's shared state and its framebuffer (host memory the VMM owns). */
export interface DisplayState {
  state: SharedArrayBuffer;
  vramBytes: number;
  /** Host address of the framebuffer mapping (every thread of the process can view it). */
  vramAddress: bigint;
}

/** PCI slot of the display (00:02.0, where QEMU's i440FX puts VGA). */
export const DISPLAY_DEVFN = 0x10;
/** KVM memory slot of the display's framebuffer (RAM takes the first slots). */
export const FRAMEBUFFER_SLOT = 16;

/**
 * Moves the framebuffer's memory slot in VM `vmFd` (any thread): mapped at `gpa`, or deleted
 * for undefined. KVM moves an existing slot in place when only its address changes.
 */
export function framebufferMover(
  vmFd: number,
  display: DisplayState,
): (gpa: number | undefined) => void {
  const limit = rateLimited();
  return (gpa) => {
    try {
      setUserMemoryRegion(vmFd, {
        slot: FRAMEBUFFER_SLOT,
        size: gpa === undefined ? 0 : display.vramBytes,
        hostAddress: display.vramAddress,
        readOnly: false,
      }, gpa ?? 0);
    } catch (e) {
      // The guest then draws into nothing (writes to an unbacked BAR are dropped).
      limit((n) =>
        log.error("framebuffer slot not moved to {gpa}: {error} ({n} suppressed)", {
          gpa: gpa === undefined ? "none" : "0x" + gpa.toString(16),
          error: String(e),
          n,
        })
      );
    }
  };
}

/** The `pci` control reply: every function with its BARs where the guest put them. */
export function pciStatus(
  state: PcDeviceState,
  pci: ReadonlyMap<number, PciFunction>,
): PciDeviceStatus[] {
  const hex = (n: number, w: number) => "0x" + n.toString(16).padStart(w, "0");
  return state.pciSlots.map((s) => {
    const fn = pci.get(s.devfn)!;
    const bars: PciDeviceStatus["bars"] = [];
    (s.spec.bars ?? []).forEach((b, index) => {
      if (!b) return;
      const base = fn.barBase(index);
      bars.push({
        index,
        kind: b.kind + (b.prefetchable ? ",prefetchable" : ""),
        size: fn.barSize(index),
        base: base === undefined ? null : "0x" + base.toString(16),
      });
    });
    const pin = s.spec.interruptPin ?? 0;
    const pirq = pirqOf(s.devfn, pin);
    return {
      bdf: `00:${(s.devfn >> 3).toString(16).padStart(2, "0")}.${s.devfn & 7}`,
      name: s.name,
      vendor: hex(s.spec.vendor, 4),
      device: hex(s.spec.device, 4),
      class: hex(s.spec.classCode, 6),
      bars,
      interrupt: pirq >= 0 ? { pin: "ABCD"[pin - 1]!, gsi: PIRQ_GSI_BASE + pirq } : null,
      msi: fn.msiEnabled,
      msix: fn.msix?.enabled ?? false,
    };
  });
}

/** Options fixed at VM creation. */
export interface PcDeviceOptions {
  /** RAM below 4 GiB and above, for the CMOS memory-size bytes. */
  ramBelow4G: number;
  ramAbove4G: number;
  /** Offset of the guest's RTC from host time, in ms (tests start the clock wrong on purpose). */
  rtcOffsetMs?: number;
  /** A bochs-display over `vramBytes` of host memory at `vramAddress`, offering `mode`. */
  display?: { vramBytes: number; vramAddress: bigint; mode: { width: number; height: number } };
}

/** Creates the shared state of all board devices and registers their ranges. */
export function createPcDeviceState(options: PcDeviceOptions): PcDeviceState {
  const registry = DeviceRegistry.create();
  for (const [name, space, base, length] of KERNEL_RANGES) {
    registry.add(space, base, length, registry.addDevice(name, "kernel"));
  }
  const pio = (name: string, base: number, length: number) =>
    registry.add("pio", base, length, registry.addDevice(name));
  pio("com1", COM1_PORT, UART_PORT_COUNT);
  pio("rtc", RTC_PORT, 2);
  // The i8042 decodes 0x60 and 0x64 only; 0x61 between them is the PIT's (in KVM).
  pio("i8042-data", I8042_DATA_PORT, 1);
  pio("i8042-cmd", I8042_CMD_PORT, 1);
  pio("post", POST_PORT, 1);
  pio("pci-config", PCI_CONFIG_PORT, PCI_HOST_PORT_COUNT);
  const pmSpec = piix4PmSpec(PM_IO_BASE, true);
  const pmRange = registry.add("pio", PM_IO_BASE, PM_IO_SIZE, registry.addDevice("piix4-pm-io"));
  const slot = (devfn: number, name: string, spec: PciFunctionSpec): PciSlot => ({
    devfn,
    name,
    spec,
    state: PciFunction.createState(spec),
  });
  const pciSlots = [
    slot(I440FX_DEVFN, "i440fx", I440FX_SPEC),
    slot(PIIX3_DEVFN, "piix3", PIIX3_SPEC),
    slot(PIIX4_PM_DEVFN, "piix4-pm", pmSpec),
  ];
  let display: DisplayState | undefined;
  if (options.display) {
    const d = options.display;
    // BAR0 is a memory slot: the registry only records where it is ("kernel" answers it).
    const fb = registry.add(
      "mmio",
      undefined,
      d.vramBytes,
      registry.addDevice("bochs-fb", "kernel"),
    );
    const regs = registry.add("mmio", undefined, MMIO.SIZE, registry.addDevice("bochs-mmio"));
    pciSlots.push(slot(DISPLAY_DEVFN, "bochs-display", {
      ...BOCHS_PCI,
      bars: [
        { kind: "mem32", size: d.vramBytes, prefetchable: true, handle: fb },
        undefined,
        { kind: "mem32", size: MMIO.SIZE, handle: regs },
      ],
    }));
    display = {
      state: BochsDisplay.createState({ vramBytes: d.vramBytes, mode: d.mode }),
      vramBytes: d.vramBytes,
      vramAddress: d.vramAddress,
    };
  }
  return {
    registry: registry.state,
    com1: Serial.createState(),
    rtc: Rtc.createState({
      ramBelow4G: options.ramBelow4G,
      ramAbove4G: options.ramAbove4G,
      timeOffsetMs: options.rtcOffsetMs ?? 0,
    }),
    i8042: I8042.createState(),
    acpiPm: AcpiPm.createState(),
    reset: ResetPort.createState(),
    pci: PciHost.createState(),
    pirq: PirqLines.createState(),
    pciSlots,
    pmRange,
    ...(display ? { display } : {}),
  };
}

/** What a thread needs to build its device objects. */
export interface PcDeviceDeps {
  irq(gsi: number): IrqLine;
  power: PowerControl;
  /** COM1 output sink (this thread's). */
  serialOutput: (bytes: Uint8Array) => void;
  /** A monotonic clock in ns, the same on every thread (the PM timer counts from it). */
  nowNs: () => bigint;
  /** Where PCI functions' MSI writes go. */
  msi?: MsiSink;
  /** Maps the display's framebuffer (its memory slot) at `gpa`, or unmaps it. */
  moveFramebuffer?: (gpa: number | undefined) => void;
  /**
   * The vCPU this thread runs (absent on the main thread): its accesses to main-thread devices
   * go through its request slot.
   */
  vcpu?: number;
}

/** This thread's devices and the dispatcher that routes exits to them. */
export interface PcDevices {
  registry: DeviceRegistry;
  dispatch: IoDispatch;
  /** Handlers by device id; a thread may add its own (Hyper-V ports) before the first exit. */
  handlers: (BusDevice | undefined)[];
  com1: Serial;
  acpiPm: AcpiPm;
  pmTimer: PmTimer;
  /** This thread's PCI functions by devfn. */
  pci: Map<number, PciFunction>;
  /** The display's registers (with `--display bochs`). */
  display: BochsDisplay | undefined;
  /** Main thread: the handlers of main-thread devices by id (answering request slots). */
  mainThread: (MainThreadDevice | undefined)[];
  /** The i8042 with its PS/2 keyboard and mouse (host input goes in through it). */
  i8042: I8042;
}

/** Builds this thread's device objects over `state` and a dispatcher over its registry. */
export function attachPcDevices(state: PcDeviceState, deps: PcDeviceDeps): PcDevices {
  const registry = new DeviceRegistry(state.registry);
  const handlers: (BusDevice | undefined)[] = [];
  const set = (name: string, device: BusDevice) => {
    const id = registry.deviceId(name);
    if (id < 0) throw new Error(`Device '${name}' is not registered on this board.`);
    handlers[id] = device;
  };
  const com1 = new Serial(state.com1, { irq: deps.irq(COM1_IRQ), output: deps.serialOutput });
  set("com1", com1);
  set("rtc", new Rtc(state.rtc));
  const i8042 = new I8042(state.i8042, {
    power: deps.power,
    kbdIrq: deps.irq(I8042_KBD_IRQ),
    auxIrq: deps.irq(I8042_AUX_IRQ),
  });
  set("i8042-data", i8042);
  const cmdOffset = I8042_CMD_PORT - I8042_DATA_PORT;
  set("i8042-cmd", {
    read: (offset, data) => i8042.read(cmdOffset + offset, data),
    write: (offset, data) => i8042.write(cmdOffset + offset, data),
  });
  set("post", new DebugPort());
  const acpiPm = new AcpiPm(state.acpiPm, { power: deps.power, sci: deps.irq(SCI_IRQ) });
  const pmTimer = new PmTimer(deps.nowNs);
  set("piix4-pm-io", new PmIoBlock(acpiPm, pmTimer));

  let display: BochsDisplay | undefined;
  if (state.display) {
    const d = state.display;
    display = new BochsDisplay(d.state, { vramBytes: d.vramBytes });
    set("bochs-mmio", display.mmio);
  }
  const pirq = new PirqLines(state.pirq, [0, 1, 2, 3].map((n) => deps.irq(PIRQ_GSI_BASE + n)));
  const pci = new Map<number, PciFunction>();
  state.pciSlots.forEach((s, source) => {
    const p = pirqOf(s.devfn, s.spec.interruptPin ?? 0);
    const fn = new PciFunction(s.state, s.spec, {
      registry,
      intx: p >= 0 ? pirq.line(p, source) : undefined,
      msi: deps.msi,
      onBarMove: s.devfn === DISPLAY_DEVFN
        ? (bar, base) => {
          if (bar === 0) deps.moveFramebuffer?.(base);
        }
        : undefined,
      onConfigWrite: s.devfn === PIIX4_PM_DEVFN
        ? (f) => {
          try {
            registry.move(state.pmRange, pmBlockBase(f));
          } catch {
            registry.move(state.pmRange, undefined); // PMBA on top of another device: off
          }
        }
        : undefined,
    });
    pci.set(s.devfn, fn);
  });
  // Main-thread devices: a vCPU thread forwards to them through its request slot.
  const mainThread: (MainThreadDevice | undefined)[] = [];
  if (deps.vcpu !== undefined && state.requests) {
    const { slots, wakeFd } = state.requests;
    const client = new RequestSlotClient(slots[deps.vcpu]!, () => eventfdSignal(wakeFd));
    registry.devices.forEach((d, id) => {
      if (d.thread === "main") handlers[id] = client.proxy(id);
    });
  }
  const reset = new ResetPort(state.reset, { power: deps.power });
  set("pci-config", new PciHost(state.pci, { resetControl: reset, functions: pci }));
  return {
    registry,
    dispatch: new IoDispatch(registry, handlers),
    handlers,
    com1,
    acpiPm,
    i8042,
    pmTimer,
    pci,
    display,
    mainThread,
  };
}
