/**
 * One boot of the guest, built in the order a reader can follow (Firecracker's `builder.rs`):
 *
 * 1. `createVm`           memory and VM: RAM slots, in-kernel irqchip and PIT, KVM's pages
 * 2. `createBoard`        the i440FX/PIIX board and the devices the config asks for
 * 3. `createVcpus`        vCPU fds (their threads start in step 8)
 * 4. `setupHyperV`        the enlightenments: CPUID, MSR routing, shared partition state
 * 5. `attachVmbus`        the VMBus host and its devices (ICs, storage, ...)
 * 6. `loadPayload`        ACPI tables, then the kernel, initrd and boot tables (or the
 *                         firmware's flash and fw_cfg)
 * 7. `publishControl`     what the control socket can reach in this boot
 * 8. `startVcpus` + wait  one Worker per vCPU, then wait for power-off, reset or failure
 *
 * Each step registers how to undo itself on a {@linkcode Teardown}, which runs in reverse when
 * the boot ends. Signals and console input are wired in `session.ts`, Worker plumbing in
 * `vcpu_threads.ts`.
 * @module
 */
import { clockNs, close, eventfd, eventfdDrain, eventfdSignal } from "../../ffi/libc.ts";
import { KVM } from "../../ffi/kvm_abi.ts";
import { GuestMemory } from "../kvm/guest_memory.ts";
import type { Kvm } from "../kvm/kvm.ts";
import { Vcpu } from "../kvm/vcpu.ts";
import type { Vm } from "../kvm/vm.ts";
import { ExitCounters } from "../kvm/exit_counters.ts";
import { hasFeature, type HvFeatures, HypercallCounters } from "../hyperv/mod.ts";
import {
  type MainEnlightenments as Enlightenments,
  setupEnlightenments,
  type SyndbgLink,
} from "../hyperv/host/enlightenments.ts";
import { registerHyperVPorts } from "../hyperv/host/hyperv_host.ts";
import { VmbusServer } from "../vmbus/mod.ts";
import { bindDoorbells, type Doorbells } from "../vmbus/doorbells.ts";
import { type ScsiController, StorvspDevice } from "../devices/storage/mod.ts";
import type { VsockUnixBackend } from "../devices/hvsock/mod.ts";
import type { NetBackends, NetStatus } from "./net.ts";
import { DynamicMemoryDevice, madviseRelease } from "../devices/balloon/mod.ts";
import { createIntegrationComponents, type IntegrationComponents } from "../devices/ic/mod.ts";
import { InputRouter, SyntheticKeyboard, SyntheticMouse } from "../devices/input/mod.ts";
import { Synthvid } from "../devices/video/mod.ts";
import type { ConsoleFrontEnds } from "./console.ts";
import { BochsScreen, dumpFrame } from "./screen.ts";
import { vramForVm, type VramMemory } from "./vram.ts";
import { KVM_IDENTITY_MAP_START, KVM_TSS_START } from "../machine/layout.ts";
import { type LinuxBoot, loadLinux } from "../machine/linux_boot.ts";
import type { MemoryMap } from "../machine/memory_map.ts";
import { writeBootTables } from "../machine/page_tables.ts";
import { SharedPowerControl } from "../machine/power.ts";
import { getLogger } from "../util/log.ts";
import { EventLoop } from "../util/event_loop.ts";
import type { VmConfig } from "./config.ts";
import type { ControlTarget } from "./control.ts";
import {
  attachPcDevices,
  createPcDeviceState,
  framebufferMover,
  type PcDevices,
  type PcDeviceState,
  pciStatus,
} from "./pc_devices.ts";
import { createFramebuffer, type Framebuffer, screendumper } from "./display.ts";
import { installAcpi } from "./acpi.ts";
import {
  ahciBootOrder,
  type AhciHost,
  attachAhci,
  logAhciStats,
  registerAhci,
} from "./ahci_host.ts";
import { type FirmwareHost, type FirmwareThreadInit, installFirmware } from "./firmware_devices.ts";
import { type ConsoleInput, watchSignals } from "./session.ts";
import { startVcpuThreads, vcpuFailure, type VcpuThreads } from "./vcpu_threads.ts";
import { createRequestSlot, RequestSlotServer } from "../machine/main_thread_slot.ts";

const log = getLogger("machine");

/** How one boot of the guest ended. */
export type BootOutcome =
  | { kind: "poweroff" }
  | { kind: "reset" }
  | { kind: "crash" }
  | { kind: "signal"; signal: Deno.Signal }
  | { kind: "failed"; message: string };

/** What stays the same across guest resets. */
export interface BootInputs {
  /** Doorbell ids bound to eventfds (`doorbellEventfdsFromEnv`). */
  doorbellEventfds: number;
  map: MemoryMap;
  /** The bzImage for direct boot; undefined with firmware. */
  kernel: Uint8Array | undefined;
  /** `--firmware uefi`: flash images and vars file, kept across resets. */
  firmware: FirmwareHost | undefined;
  /** SATA disks and CD-ROMs for the AHCI controller, kept across resets. */
  ahci: AhciHost | undefined;
  initrd: Uint8Array | undefined;
  serialFd: number;
  /** Shared CMOS state, kept across resets. */
  cmos: SharedArrayBuffer;
  features: HvFeatures;
  scsi: { controller: ScsiController } | undefined;
  /** The synthetic debugger's socket (`--syndbg`), kept across resets. */
  syndbg: (SyndbgLink & { hypercalls: boolean }) | undefined;
  /** Host input for the guest console. */
  console: ConsoleInput;
  /** The `--net` taps, kept across resets. */
  nets?: NetBackends | undefined;
  /** The `--vsock` backend, kept across resets. */
  vsock: VsockUnixBackend | undefined;
  /** Screen front ends (--vnc, --web): shown the display the guest uses. */
  frontEnds: ConsoleFrontEnds;
  /** Synthetic video's VRAM (with VMBus), kept across resets. */
  vram: VramMemory | undefined;
  /** Makes the running VM reachable from the control socket (undefined: it stopped). */
  publish: (target: Omit<ControlTarget, "boots"> | undefined) => void;
}

/** Undo actions of a boot, run last-registered first (sync or async). */
export class Teardown {
  readonly #steps: (() => void | Promise<void>)[] = [];

  /** Registers `undo` to run when the boot ends. */
  add(undo: () => void | Promise<void>): void {
    this.#steps.push(undo);
  }

  /** Runs every undo action in reverse order; one that throws does not stop the others. */
  async run(): Promise<void> {
    for (const undo of this.#steps.reverse()) {
      try {
        await undo();
      } catch (e) {
        log.warning("teardown step failed: {error}", { error: String(e) });
      }
    }
    this.#steps.length = 0;
  }
}

/** Step 1: the VM, its RAM and the in-kernel irqchip/PIT; the power and event plumbing. */
function createVm(kvm: Kvm, map: MemoryMap, t: Teardown) {
  const vm = kvm.createVm();
  t.add(() => vm.close());
  const loop = new EventLoop();
  t.add(() => loop.close());
  const powerFd = eventfd();
  t.add(() => close(powerFd));
  vm.setTssAddress(KVM_TSS_START);
  vm.setIdentityMapAddress(KVM_IDENTITY_MAP_START);
  vm.createIrqchip();
  vm.createPit();
  for (const r of map.ram) vm.addRam(r.gpa, r.size);
  const memory = new GuestMemory(vm.regions.map((r) => ({
    gpa: r.gpa,
    bytes: new Uint8Array(
      Deno.UnsafePointerView.getArrayBuffer(Deno.UnsafePointer.create(r.hostAddress)!, r.size),
    ),
  })));
  log.info("memory: {mib} MiB in {n} region(s)", { mib: map.ramBytes >> 20, n: map.ram.length });
  const powerState = SharedPowerControl.createState();
  // Requests from this thread take the same path as the vCPUs' (the power eventfd).
  const power = new SharedPowerControl(powerState, () => eventfdSignal(powerFd));
  return { vm, memory, loop, powerFd, powerState, power };
}

/** Step 2: the board's shared state, the display from `--display`, and this thread's view. */
function createBoard(
  vm: Vm,
  config: VmConfig,
  inputs: BootInputs,
  power: SharedPowerControl,
  t: Teardown,
): { state: PcDeviceState; main: PcDevices; framebuffer: Framebuffer | undefined } {
  const wakeFd = eventfd();
  t.add(() => close(wakeFd));
  const { map } = inputs;
  let framebuffer: Framebuffer | undefined;
  let display;
  if (config.display.kind === "bochs") {
    const fb = createFramebuffer();
    framebuffer = fb;
    t.add(() => fb.close());
    display = {
      vramBytes: fb.bytes.length,
      vramAddress: fb.address,
      mode: { width: config.display.width, height: config.display.height },
    };
  }
  const state: PcDeviceState = {
    ...createPcDeviceState({
      ramBelow4G: map.lowRamEnd,
      ramAbove4G: map.ramBytes - map.lowRamEnd,
      ...(display ? { display } : {}),
    }),
    rtc: inputs.cmos,
    requests: {
      slots: Array.from({ length: config.cpus }, () => createRequestSlot()),
      wakeFd,
    },
  };
  if (inputs.ahci) registerAhci(state);
  const main = attachPcDevices(state, {
    irq: (gsi) => vm.interrupts.irqLine(gsi),
    power,
    serialOutput: () => {},
    nowNs: () => clockNs(),
    msi: vm.interrupts,
    ...(state.display ? { moveFramebuffer: framebufferMover(vm.fd, state.display) } : {}),
  });
  return { state, main, framebuffer };
}

/** Step 3: one vCPU fd per `--cpus`. */
function createVcpus(kvm: Kvm, vm: Vm, cpus: number, t: Teardown) {
  const runSize = kvm.vcpuMmapSize();
  const syncRegs = (kvm.checkExtension(KVM.KVM_CAP_SYNC_REGS) & KVM.KVM_SYNC_X86_REGS) !== 0;
  const fds = Array.from({ length: cpus }, (_, i) => vm.createVcpuFd(i));
  t.add(() => fds.forEach(close));
  return { fds, runSize, syncRegs };
}

/**
 * Step 4: the Hyper-V enlightenments (CPUID, MSR routing, shared state, timer and SynIC
 * drivers) and their ports in the device registry. vCPU 0 is borrowed (before its thread
 * exists) to read the guest TSC offset.
 */
function setupHyperV(
  kvm: Kvm,
  vm: Vm,
  memory: GuestMemory,
  vcpus: ReturnType<typeof createVcpus>,
  o: {
    config: VmConfig;
    inputs: BootInputs;
    board: PcDevices;
    power: SharedPowerControl;
    loop: EventLoop;
    vmbus: { server?: VmbusServer };
  },
  t: Teardown,
): Enlightenments {
  const vcpu0 = new Vcpu(vcpus.fds[0]!, 0, vcpus.runSize, false);
  let enlightenments: Enlightenments;
  try {
    enlightenments = setupEnlightenments({
      vm,
      memory,
      baseCpuid: kvm.supportedCpuid(),
      vcpu0,
      cpus: o.config.cpus,
      features: o.inputs.features,
      kvmLeaves: o.config.hvKvmLeaves,
      power: o.power,
      loop: o.loop,
      onGuestMessage: (id, type, payload) => o.vmbus.server?.onPostMessage(id, type, payload),
      onGuestSignal: (id) => o.vmbus.server?.onSignalEvent(id, 0),
      ...(o.inputs.syndbg ? { syndbg: o.inputs.syndbg } : {}),
    });
  } finally {
    vcpu0.close();
  }
  t.add(() => enlightenments.close());
  if (enlightenments.init) registerHyperVPorts(o.board.registry);
  return enlightenments;
}

/** What step 5 attached. */
interface VmbusParts {
  server: VmbusServer;
  ics: IntegrationComponents;
  doorbells: Doorbells;
  balloon: DynamicMemoryDevice;
  /** The synthetic NICs' status (absent without `--net`). */
  net: (() => NetStatus[]) | undefined;
  keyboard: SyntheticKeyboard;
  mouse: SyntheticMouse;
  video: Synthvid | undefined;
}

/**
 * Step 5: the VMBus host (needs the SynIC) and its devices. Branches that add a VMBus device
 * add it in the "devices" block below.
 */
function attachVmbus(
  vm: Vm,
  memory: GuestMemory,
  hv: NonNullable<Enlightenments["hv"]>,
  o: { config: VmConfig; inputs: BootInputs; loop: EventLoop; ref: { server?: VmbusServer } },
  t: Teardown,
): VmbusParts {
  const { config, inputs } = o;
  // hv_sock offers a channel per connection: the server takes its offer hooks for this boot.
  const vsock = inputs.vsock?.newBoot();
  const server = new VmbusServer(memory, hv.synic, {
    vpCount: config.cpus,
    ...vsock?.serverOptions,
  });
  o.ref.server = server;
  const doorbells = bindDoorbells(
    vm,
    o.loop,
    (id) => server.onSignalEvent(id, 0),
    inputs.doorbellEventfds,
  );
  t.add(() => doorbells.close());
  hv.synic.onSlotFree(() => server.pump());

  // --- VMBus devices (each registers its teardown with t.add) ---
  const ics = createIntegrationComponents({
    timesync: { referenceTime: () => hv.partition.referenceTime() },
    heartbeat: {
      onHealthChange: (h) => log.info("guest heartbeat: {status}", { status: h.status }),
    },
  });
  for (const d of ics.devices) server.addDevice(d);
  t.add(() => ics.dispose());
  if (inputs.scsi) {
    const storvsp = new StorvspDevice(inputs.scsi.controller, {
      maxSubChannels: config.cpus - 1,
    });
    server.addDevice(storvsp);
    t.add(() => storvsp.close());
  }
  let net: (() => NetStatus[]) | undefined;
  if (inputs.nets) {
    const nics = inputs.nets.attach(server, o.loop);
    net = nics.status;
    t.add(() => nics.close());
  }
  if (vsock) t.add(vsock.attach(server));
  // Dynamic memory (hv_balloon) on every VMBus guest, as Hyper-V offers it.
  const balloon = new DynamicMemoryDevice(memory, { release: madviseRelease(memory) });
  server.addDevice(balloon);
  // Synthetic keyboard and mouse: the input router prefers them once the guest's drivers connect.
  const keyboard = new SyntheticKeyboard();
  const mouse = new SyntheticMouse();
  server.addDevice(keyboard);
  server.addDevice(mouse);
  // Synthetic video: VRAM mapped where the guest's driver puts it in the VMBus MMIO windows.
  const video = inputs.vram
    ? new Synthvid({ vram: vramForVm(vm.fd, inputs.vram, inputs.map.vmbusMmio) })
    : undefined;
  if (video) server.addDevice(video);
  // --- end of VMBus devices ---
  // Runs before the devices close and guest memory goes: storage may still move data into it.
  t.add(() => quiesceVmbus(server));
  return { server, ics, doorbells, balloon, net, keyboard, mouse, video };
}

/**
 * Step 6: ACPI tables first (the kernel gets their address), then the Linux boot payload. With
 * firmware: the flash and fw_cfg instead (ACPI through its loader), vCPUs at the reset vector.
 */
function loadPayload(
  vm: Vm,
  memory: GuestMemory,
  board: PcDevices,
  config: VmConfig,
  inputs: BootInputs,
  withVmbus: boolean,
): { boot: LinuxBoot | undefined; firmware: FirmwareThreadInit | undefined } {
  if (inputs.firmware) {
    const firmware = installFirmware(vm, board.registry, inputs.firmware, {
      cpus: config.cpus,
      map: inputs.map,
      vmbus: withVmbus,
      ...(inputs.ahci ? { bootOrder: ahciBootOrder(inputs.ahci) } : {}),
    });
    return { boot: undefined, firmware };
  }
  const rsdp = installAcpi(memory, { cpus: config.cpus, map: inputs.map, vmbus: withVmbus });
  const boot = loadLinux(memory, {
    kernel: inputs.kernel!,
    kernelName: config.kernelPath,
    initrd: inputs.initrd,
    cmdline: config.cmdline,
    memoryMap: inputs.map,
    acpiRsdpAddress: rsdp,
  });
  writeBootTables(memory);
  log.info("kernel loaded at {load}, entry {entry}", {
    load: "0x" + boot.loadAddress.toString(16),
    entry: "0x" + boot.entry.toString(16),
  });
  return { boot, firmware: undefined };
}

/** Builds the VM for one boot, runs it until it ends, tears it down; returns how it ended. */
export async function bootOnce(
  kvm: Kvm,
  config: VmConfig,
  inputs: BootInputs,
): Promise<BootOutcome> {
  const t = new Teardown();
  try {
    // 1. Memory and VM.
    const { vm, memory, loop, powerFd, powerState, power } = createVm(kvm, inputs.map, t);
    // 2. Board and devices from the config.
    const board = createBoard(vm, config, inputs, power, t);
    if (inputs.ahci) {
      const ahci = attachAhci(board.main, memory, inputs.ahci);
      // Before guest memory goes: commands may still move data into it.
      t.add(async () => {
        await ahci.idle();
        logAhciStats(ahci, inputs.ahci!);
      });
    }
    // 3. vCPUs.
    const vcpus = createVcpus(kvm, vm, config.cpus, t);
    // 4. Hyper-V enlightenments.
    const vmbusRef: { server?: VmbusServer } = {};
    const enlightenments = setupHyperV(kvm, vm, memory, vcpus, {
      config,
      inputs,
      board: board.main,
      power,
      loop,
      vmbus: vmbusRef,
    }, t);
    // 5. VMBus and its devices.
    const hv = enlightenments.hv;
    const vmbus = hv && hasFeature(inputs.features, "synic")
      ? attachVmbus(vm, memory, hv, { config, inputs, loop, ref: vmbusRef }, t)
      : undefined;
    // 6. ACPI and the boot payload.
    const { boot, firmware } = loadPayload(
      vm,
      memory,
      board.main,
      config,
      inputs,
      vmbus !== undefined,
    );
    // Keyboard, pointer and screen for people: PS/2 and bochs until the guest's synthetic
    // drivers take over.
    const input = new InputRouter({
      ...(vmbus ? { keyboard: vmbus.keyboard, mouse: vmbus.mouse } : {}),
      ps2: board.main.i8042,
    });
    showScreens(inputs.frontEnds, input, board, vmbus?.video, t);
    // 7. The control socket's view (hypercall counters read the threads once they run).
    const running: { threads?: VcpuThreads } = {};
    const exitCounters = Array.from({ length: config.cpus }, () => ExitCounters.createState());
    inputs.publish({
      cpus: config.cpus,
      vmbus: vmbus?.server,
      ics: vmbus?.ics,
      scsi: inputs.scsi?.controller,
      balloon: vmbus?.balloon,
      memoryBytes: inputs.map.ramBytes,
      input,
      exits: () => exitCounters.map((sab) => new ExitCounters(sab).snapshot()),
      ...(vmbus ? { doorbells: () => vmbus.doorbells.count } : {}),
      ...(vmbus?.net ? { net: vmbus.net } : {}),
      ...(hv
        ? {
          hypercalls: () => {
            const served = running.threads?.flushesServed() ?? [];
            return new HypercallCounters(hv.state.hypercallCounters, config.cpus).snapshot()
              .map((s, i) => ({ ...s, flushesServed: served[i] ?? 0 }));
          },
        }
        : {}),
      pci: () => pciStatus(board.state, board.main.pci),
      ...screendump(board, vmbus?.video),
    });
    t.add(() => inputs.publish(undefined));
    // 8. Start the vCPUs and wait for the guest. Main-thread devices answer through the loop.
    const requests = serveMainThreadDevices(board, loop, t);
    const threads = startVcpuThreads({
      vm,
      vcpus,
      cpuid: enlightenments.cpuid,
      boot,
      firmware,
      hv: enlightenments.init,
      devices: board.state,
      power: powerState,
      powerFd,
      serialFd: inputs.serialFd,
      exitCounters,
      logLevel: config.logLevel,
    });
    running.threads = threads;
    t.add(() => threads.terminate());
    log.info("{n} vCPU(s) started", { n: config.cpus });

    let outcome: BootOutcome | undefined;
    loop.add(powerFd, () => {
      eventfdDrain(powerFd);
      const req = power.pending();
      if (req) {
        outcome ??= { kind: req };
        loop.stop();
      }
    });
    inputs.console.target = board.main.com1;
    t.add(() => inputs.console.target = undefined);
    const signals = watchSignals({
      shutdownTimeoutSeconds: config.shutdownTimeoutSeconds,
      shutdownIc: () => vmbus?.ics.shutdown,
      force: (signal) => {
        outcome ??= { kind: "signal", signal };
        loop.stop();
      },
    });
    t.add(() => signals.close());
    threads.firstStop.then((r) => {
      if (r.stop.kind !== "stopped") {
        outcome ??= vcpuFailure(r);
        loop.stop();
      }
    });
    await loop.run();
    outcome ??= { kind: "failed", message: "event loop ended without a cause" };
    // A vCPU waiting on a main-thread device cannot see a stop request: answer it (all-ones).
    requests.close();
    if (!await threads.stop(5000)) {
      log.warning("a vCPU thread did not stop within 5 s; terminating it");
    }
    return outcome;
  } finally {
    await t.run();
  }
}

/**
 * `screendump` of the display the guest uses: synthvid once its driver set a mode, else the
 * bochs display (none without either).
 */
function screendump(
  board: { main: PcDevices; framebuffer: Framebuffer | undefined },
  video: Synthvid | undefined,
): Pick<ControlTarget, "screendump"> {
  const bochs = board.framebuffer && board.main.display
    ? screendumper(board.main.display, board.framebuffer.bytes)
    : undefined;
  if (!video) return bochs ? { screendump: bochs } : {};
  return {
    screendump: (path) => {
      if (video.active) return dumpFrame(video, path);
      if (bochs) return bochs(path);
      return Promise.reject(new Error("screendump: the guest has set no display mode yet"));
    },
  };
}

/**
 * Shows viewers the display the guest uses: synthvid once its driver set a mode, else the
 * bochs display (with `--display bochs`), else a blank screen.
 */
function showScreens(
  frontEnds: ConsoleFrontEnds,
  input: InputRouter,
  board: { main: PcDevices; framebuffer: Framebuffer | undefined },
  video: Synthvid | undefined,
  t: Teardown,
): void {
  const bochs = board.framebuffer && board.main.display
    ? new BochsScreen(board.main.display, board.framebuffer.bytes)
    : undefined;
  const choose = () => {
    const source = video?.active ? video : bochs;
    frontEnds.setDisplay(source);
    if (source) input.screen = { width: source.frame().width, height: source.frame().height };
  };
  choose();
  const offVideo = video?.subscribe((c) => c.kind === "resize" && choose());
  const offBochs = bochs?.subscribe((c) => c.kind === "resize" && choose());
  t.add(() => {
    offVideo?.();
    offBochs?.();
    frontEnds.setDisplay(undefined);
  });
}

/**
 * The request slots of main-thread devices: one per vCPU, served on the event loop whenever a
 * vCPU thread posts an access (its eventfd). `close()` releases any vCPU still waiting.
 */
function serveMainThreadDevices(
  board: { state: PcDeviceState; main: PcDevices },
  loop: EventLoop,
  t: Teardown,
): { close(): void } {
  const slots = board.state.requests?.slots ?? [];
  const wakeFd = board.state.requests?.wakeFd;
  if (wakeFd === undefined) return { close() {} };
  const server = new RequestSlotServer(slots, board.main.mainThread);
  loop.add(wakeFd, () => {
    eventfdDrain(wakeFd);
    server.serve();
  });
  t.add(() => server.close());
  return server;
}

/**
 * Closes every VMBus channel and waits until the devices finished the I/O they still had in
 * flight into guest memory (disk reads straight into guest pages); warns while it takes long.
 */
async function quiesceVmbus(server: VmbusServer): Promise<void> {
  server.reset();
  let waited = 0;
  const timer = setInterval(() => {
    waited += 5;
    log.warning("still waiting for device I/O into guest memory after {s} s", { s: waited });
  }, 5000);
  try {
    await server.settled();
  } finally {
    clearInterval(timer);
  }
}
