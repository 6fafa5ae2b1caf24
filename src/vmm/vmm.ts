/**
 * Builds and runs a VM, in the order a reader can follow (Firecracker's builder): memory → VM →
 * vCPUs → devices → kernel → ACPI → start vCPUs; then waits for the guest to power off, reset
 * (rebuild and boot again) or die.
 * @module
 */
import { C, close, eventfd, eventfdDrain, eventfdSignal, libc, open } from "../../ffi/libc.ts";
import { KVM } from "../../ffi/kvm_abi.ts";
import { GuestMemory } from "../kvm/guest_memory.ts";
import { type CpuidEntry, Kvm } from "../kvm/kvm.ts";
import { Vcpu } from "../kvm/vcpu.ts";
import { VCPU_REQUEST, VcpuControl } from "../kvm/vcpu_control.ts";
import { ExitCounters } from "../kvm/exit_counters.ts";
import { hasFeature, type HvFeatures } from "../hyperv/mod.ts";
import { setupEnlightenments, type SyndbgLink } from "./enlightenments.ts";
import { type ControlTarget, serveControl } from "./control.ts";
import { VmbusServer } from "../vmbus/mod.ts";
import { bindDoorbells, doorbellEventfdsFromEnv, type Doorbells } from "./doorbells.ts";
import { openDisk, ScsiController, ScsiDisk, StorvspDevice } from "../devices/storage/mod.ts";
import { createIntegrationComponents, type IntegrationComponents } from "../devices/ic/mod.ts";
import { InputRouter, SyntheticKeyboard, SyntheticMouse } from "../devices/input/mod.ts";
import { KVM_IDENTITY_MAP_START, KVM_TSS_START } from "../machine/layout.ts";
import { loadLinux, parseBzImage } from "../machine/linux_boot.ts";
import { buildMemoryMap, type MemoryMap } from "../machine/memory_map.ts";
import { bootCpuState, writeBootTables } from "../machine/page_tables.ts";
import { SharedPowerControl } from "../machine/power.ts";
import { UsageError } from "../util/errors.ts";
import { getLogger } from "../util/log.ts";
import { hvFeaturesOf, type SyndbgSpec, type VmConfig } from "./config.ts";
import { EventLoop } from "./event_loop.ts";
import { attachPcDevices, createPcDeviceState } from "./pc_devices.ts";
import type { VcpuThreadInit, VcpuThreadResult } from "./vcpu_thread.ts";
import { installAcpi } from "./acpi.ts";
import { openDebugSocket } from "./syndbg_udp.ts";
import { type ConsoleFrontEnds, type ConsoleTargets, startConsole } from "./console.ts";
import { Synthvid } from "../devices/video/mod.ts";
import { allocateVram, vramForVm, type VramMemory } from "./vram.ts";

const log = getLogger("machine");

/** How one boot of the guest ended. */
export type BootOutcome =
  | { kind: "poweroff" }
  | { kind: "reset" }
  | { kind: "crash" }
  | { kind: "signal"; signal: Deno.Signal }
  | { kind: "failed"; message: string };

function readInput(path: string, what: string): Uint8Array {
  try {
    return Deno.readFileSync(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new UsageError(`${what} '${path}' does not exist`);
    if (e instanceof Deno.errors.PermissionDenied) {
      throw new UsageError(`${what} '${path}' is not readable (permission denied)`);
    }
    if (e instanceof Deno.errors.IsADirectory) {
      throw new UsageError(`${what} '${path}' is a directory`);
    }
    throw new UsageError(`${what} '${path}' cannot be read: ${(e as Error).message}`);
  }
}

function hostRamBytes(): number {
  return Number(libc.sysconf(C._SC_PHYS_PAGES)) * Number(libc.sysconf(C._SC_PAGESIZE));
}

/** Per-vCPU CPUID: the supported set with this vCPU's APIC id and the package's CPU count. */
export function vcpuCpuid(base: readonly CpuidEntry[], index: number, cpus: number): CpuidEntry[] {
  return base.map((e) => {
    const c = { ...e };
    if (c.function === 1) {
      c.ebx = (c.ebx & 0x0000ffff) | ((cpus & 0xff) << 16) | ((index & 0xff) << 24);
      c.edx |= 1 << 28; // HTT: the logical count in EBX is valid
      c.ecx |= 1 << 31; // hypervisor present: guests look for the hypervisor CPUID leaves
    } else if (c.function === 0xb || c.function === 0x1f) {
      c.edx = index;
    }
    return c;
  });
}

/** Runs the VM described by `config` until it ends; returns the process exit status. */
export async function runVm(config: VmConfig): Promise<number> {
  const kernel = readInput(config.kernelPath, "kernel");
  // A bad kernel file is the user's to fix on any host: say so before looking for KVM.
  parseBzImage(kernel, config.kernelPath);
  const doorbellEventfds = doorbellEventfdsFromEnv(Deno.env.get("HYPERDENO_DOORBELL_EVENTFDS"));
  const initrd = config.initrdPath !== undefined
    ? readInput(config.initrdPath, "initrd")
    : undefined;
  const map = buildMemoryMap(config.memoryBytes);
  const features = hvFeaturesOf(config);
  const hostRam = hostRamBytes();
  if (config.memoryBytes > hostRam) {
    throw new UsageError(
      `--memory ${Math.floor(config.memoryBytes / 2 ** 20)}M is more than this host's RAM (${
        Math.floor(hostRam / 2 ** 20)
      }M)`,
    );
  }
  using kvm = Kvm.open();
  for (
    const [cap, name] of [[KVM.KVM_CAP_IRQCHIP, "in-kernel irqchip"], [
      KVM.KVM_CAP_PIT2,
      "in-kernel PIT",
    ]] as const
  ) {
    if (!kvm.checkExtension(cap)) throw new UsageError(`this host's KVM lacks the ${name}`);
  }
  // Disks outlive guest resets, like the controller they hang off.
  const scsi = await openScsiController(config);
  let controlTarget: ControlTarget | undefined;
  // Screen, keyboard and mouse for people (--vnc); they follow the current boot.
  const consoleTargets: ConsoleTargets = { input: undefined };
  const frontEnds = await startConsole({
    ...(config.vnc ? { vnc: config.vnc } : {}),
    ...(config.vncPassword !== undefined ? { password: config.vncPassword } : {}),
    ...(config.web ? { web: config.web } : {}),
  }, consoleTargets);
  // Synthetic video's VRAM, kept across reboots (front ends may hold views of it).
  const vram = hasFeature(features, "synic") ? allocateVram(8 << 20) : undefined;
  const control = config.controlPath
    ? serveControl(config.controlPath, () => controlTarget)
    : undefined;
  // The debugger link outlives guest resets too, like the debug session it carries.
  const syndbg = config.syndbg ? openSyndbg(config.syndbg) : undefined;
  const serialFd = openSerial(config);
  const raw = enterRawMode(config);
  const consoleInput: ConsoleInput = { target: undefined };
  const stdin = config.serial.kind === "stdio" ? forwardStdin(consoleInput) : undefined;
  // The CMOS (clock offset and NVRAM) is battery-backed: it survives guest resets.
  const cmos = createPcDeviceState({
    ramBelow4G: map.lowRamEnd,
    ramAbove4G: map.ramBytes - map.lowRamEnd,
    rtcOffsetMs: config.rtcOffsetSeconds * 1000,
  }).rtc;
  try {
    for (let boots = 1;; boots++) {
      const outcome = await bootOnce(kvm, config, {
        map,
        kernel,
        initrd,
        serialFd,
        cmos,
        features,
        scsi,
        syndbg,
        doorbellEventfds,
        console: consoleInput,
        frontEnds,
        vram,
        publish: (t) => {
          controlTarget = t ? { ...t, boots } : undefined;
          consoleTargets.input = t?.input;
        },
      });
      switch (outcome.kind) {
        case "poweroff":
          log.info("guest powered off");
          return 0;
        case "reset":
          if (config.noReboot) {
            log.info("guest reset; exiting (--no-reboot)");
            return 0;
          }
          log.info("guest reset; booting again (boot {n})", { n: boots + 1 });
          continue;
        case "signal":
          console.error(`hyperdeno: stopped by ${outcome.signal}`);
          return outcome.signal === "SIGINT" ? 130 : 143;
        case "failed":
          console.error(`hyperdeno: the VM failed: ${outcome.message}`);
          return 1;
        case "crash":
          // The report itself was printed by the vCPU that received it.
          if (config.onCrash === "reset") {
            log.info("guest crashed; resetting (--on-crash reset)");
            continue;
          }
          if (config.onCrash === "pause") {
            console.error(
              "hyperdeno: guest crashed; VM paused (--on-crash pause). Stop with Ctrl-C.",
            );
            await waitForSignal();
          }
          return 1;
      }
    }
  } finally {
    raw?.restore();
    stdin?.stop();
    control?.close();
    frontEnds.close();
    if (serialFd > 2) close(serialFd);
    if (syndbg) close(syndbg.fd);
    await scsi?.close();
  }
}

/** Opens the synthetic debugger's UDP socket for `--syndbg`. */
function openSyndbg(spec: SyndbgSpec): SyndbgLink & { hypercalls: boolean } {
  const peer = { address: spec.address, port: spec.port };
  try {
    const fd = openDebugSocket(peer);
    const ip = [24, 16, 8, 0].map((s) => (spec.address >>> s) & 0xff).join(".");
    log.info("synthetic debugger: UDP to {ip}:{port} ({via})", {
      ip,
      port: spec.port,
      via: spec.hypercalls ? "hypercalls" : "MSRs",
    });
    return { fd, peer, hypercalls: spec.hypercalls };
  } catch (e) {
    throw new UsageError(`--syndbg: cannot open the UDP socket: ${(e as Error).message}`);
  }
}

/** Opens every `--disk` and attaches it to one SCSI controller (undefined when none). */
async function openScsiController(
  config: VmConfig,
): Promise<{ controller: ScsiController; close(): Promise<void> } | undefined> {
  if (config.disks.length === 0) return undefined;
  if (!hasFeature(hvFeaturesOf(config), "synic")) {
    throw new UsageError("--disk needs VMBus, which needs the synic enlightenment (--hv all)");
  }
  const controller = new ScsiController();
  const disks: ScsiDisk[] = [];
  try {
    for (const [i, spec] of config.disks.entries()) {
      const disk = new ScsiDisk(await openDisk(spec), {
        serial: spec.serial ?? `hyperdeno${i}`,
        readOnly: spec.readOnly,
      });
      disks.push(disk);
      controller.attach(spec.lun ?? controller.freeLun(), disk);
    }
  } catch (e) {
    for (const d of disks) await d.backend.close();
    throw e;
  }
  return {
    controller,
    async close() {
      for (const d of disks) {
        await d.drain();
        await d.backend.close();
      }
    },
  };
}

function openSerial(config: VmConfig): number {
  switch (config.serial.kind) {
    case "stdio":
      return 1;
    case "none":
      return -1;
    case "file":
      try {
        return open(config.serial.path, C.O_WRONLY | C.O_CREAT | 0o1000, /* O_TRUNC */ 0o644);
      } catch (e) {
        throw new UsageError(`--serial file=${config.serial.path}: ${(e as Error).message}`);
      }
  }
}

/** Puts the terminal in raw mode when COM1 is on a TTY; `restore` undoes it (idempotent). */
function enterRawMode(config: VmConfig): { restore(): void } | undefined {
  if (config.serial.kind !== "stdio" || !Deno.stdin.isTerminal()) return undefined;
  Deno.stdin.setRaw(true);
  let restored = false;
  const restore = () => {
    if (restored) return;
    restored = true;
    try {
      Deno.stdin.setRaw(false);
    } catch { /* terminal gone */ }
  };
  globalThis.addEventListener("unload", restore);
  return { restore };
}

/** What stays the same across guest resets. */
interface BootInputs {
  /** Doorbell ids bound to eventfds (`doorbellEventfdsFromEnv`). */
  doorbellEventfds: number;
  map: MemoryMap;
  kernel: Uint8Array;
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
  /** Screen front ends (--vnc): shown the display the guest uses. */
  frontEnds: ConsoleFrontEnds;
  /** Synthetic video's VRAM (with VMBus). */
  vram: VramMemory | undefined;
  /** Makes the running VM reachable from the control socket (undefined: it stopped). */
  publish: (target: Omit<ControlTarget, "boots"> | undefined) => void;
}

async function bootOnce(kvm: Kvm, config: VmConfig, inputs: BootInputs): Promise<BootOutcome> {
  const { map, kernel, initrd, serialFd } = inputs;
  // 1. Memory and VM.
  const vm = kvm.createVm();
  const loop = new EventLoop();
  const powerFd = eventfd();
  const workers: Worker[] = [];
  const controls: VcpuControl[] = [];
  const cleanups: (() => void)[] = [];
  let vmbus: VmbusServer | undefined;
  try {
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

    // 2. vCPUs (created here, run by their Workers).
    const runSize = kvm.vcpuMmapSize();
    const syncRegs = (kvm.checkExtension(KVM.KVM_CAP_SYNC_REGS) & KVM.KVM_SYNC_X86_REGS) !== 0;
    const vcpuFds = Array.from({ length: config.cpus }, (_, i) => vm.createVcpuFd(i));
    cleanups.push(() => vcpuFds.forEach(close));

    // 3. Devices.
    const deviceState = {
      ...createPcDeviceState({
        ramBelow4G: map.lowRamEnd,
        ramAbove4G: map.ramBytes - map.lowRamEnd,
      }),
      rtc: inputs.cmos,
    };
    const powerState = SharedPowerControl.createState();
    // Requests from this thread take the same path as the vCPUs' (the power eventfd).
    const power = new SharedPowerControl(powerState, () => eventfdSignal(powerFd));
    const mainDevices = attachPcDevices(deviceState, {
      irq: (gsi) => vm.interrupts.irqLine(gsi),
      power,
      serialOutput: () => {},
    });

    // 4. Kernel, boot tables, ACPI.
    const withVmbus = hasFeature(inputs.features, "synic");
    const rsdp = installAcpi(memory, { cpus: config.cpus, map, vmbus: withVmbus });
    const boot = loadLinux(memory, {
      kernel,
      kernelName: config.kernelPath,
      initrd,
      cmdline: config.cmdline,
      memoryMap: map,
      acpiRsdpAddress: rsdp,
    });
    writeBootTables(memory);
    log.info("kernel loaded at {load}, entry {entry}", {
      load: "0x" + boot.loadAddress.toString(16),
      entry: "0x" + boot.entry.toString(16),
    });

    // 5. Hyper-V enlightenments (CPUID, MSR routing, shared state, timer and SynIC drivers).
    // vCPU 0 is borrowed here (before its thread exists) to read the guest TSC offset.
    const vcpu0 = new Vcpu(vcpuFds[0]!, 0, runSize, false);
    cleanups.push(() => vcpu0.close()); // if setup throws; closed right after it otherwise
    const enlightenments = setupEnlightenments({
      vm,
      memory,
      baseCpuid: kvm.supportedCpuid(),
      vcpu0,
      cpus: config.cpus,
      features: inputs.features,
      kvmLeaves: config.hvKvmLeaves,
      power,
      loop,
      onGuestMessage: (id, type, payload) => vmbus?.onPostMessage(id, type, payload),
      onGuestSignal: (id) => vmbus?.onSignalEvent(id, 0),
      ...(inputs.syndbg ? { syndbg: inputs.syndbg } : {}),
    });
    vcpu0.close();
    cleanups.push(() => enlightenments.close());

    // 6. VMBus host and its devices (needs the SynIC).
    let ics: IntegrationComponents | undefined;
    let doorbells: Doorbells | undefined;
    let inputDevices: { keyboard: SyntheticKeyboard; mouse: SyntheticMouse } | undefined;
    const hv = enlightenments.hv;
    if (hv && withVmbus) {
      const server = new VmbusServer(memory, hv.synic, { vpCount: config.cpus });
      vmbus = server;
      const bells = bindDoorbells(
        vm,
        loop,
        (id) => server.onSignalEvent(id, 0),
        inputs.doorbellEventfds,
      );
      doorbells = bells;
      cleanups.push(() => bells.close());
      hv.synic.onSlotFree(() => server.pump());
      ics = createIntegrationComponents({
        timesync: { referenceTime: () => hv.partition.referenceTime() },
        heartbeat: {
          onHealthChange: (h) => log.info("guest heartbeat: {status}", { status: h.status }),
        },
      });
      for (const d of ics.devices) server.addDevice(d);
      cleanups.push(() => ics?.dispose());
      if (inputs.scsi) {
        const storvsp = new StorvspDevice(inputs.scsi.controller, {
          maxSubChannels: config.cpus - 1,
        });
        server.addDevice(storvsp);
        cleanups.push(() => storvsp.close());
      }
      // Synthetic keyboard and mouse: host input goes to them once the guest's drivers connect.
      inputDevices = { keyboard: new SyntheticKeyboard(), mouse: new SyntheticMouse() };
      server.addDevice(inputDevices.keyboard);
      server.addDevice(inputDevices.mouse);
      if (inputs.vram) {
        // Synthetic video: the screen front ends show it once the guest's driver set a mode.
        const video = new Synthvid({ vram: vramForVm(vm.fd, inputs.vram, map.vmbusMmio) });
        server.addDevice(video);
        video.subscribe((c) => {
          if (c.kind !== "resize") return;
          inputs.frontEnds.setDisplay(video.active ? video : undefined);
          input.screen = { width: video.frame().width, height: video.frame().height };
        });
        cleanups.push(() => inputs.frontEnds.setDisplay(undefined));
      }
    }
    const input = new InputRouter({ ...inputDevices, ps2: mainDevices.i8042 });

    const exitCounters = Array.from({ length: config.cpus }, () => ExitCounters.createState());
    inputs.publish({
      cpus: config.cpus,
      vmbus,
      ics,
      scsi: inputs.scsi?.controller,
      input,
      exits: () => exitCounters.map((sab) => new ExitCounters(sab).snapshot()),
      ...(doorbells ? { doorbells: () => doorbells?.count ?? 0 } : {}),
    });
    cleanups.push(() => inputs.publish(undefined));

    // 7. Start the vCPUs.
    for (let i = 0; i < config.cpus; i++) {
      const control = new VcpuControl(VcpuControl.createState());
      control.attachRun(vcpuFds[i]!, runSize);
      controls.push(control);
      cleanups.push(() => control.detachRun());
    }
    const results: Promise<VcpuThreadResult>[] = [];
    for (let i = 0; i < config.cpus; i++) {
      const worker = new Worker(new URL("./vcpu_thread.ts", import.meta.url).href, {
        type: "module",
      });
      workers.push(worker);
      results.push(
        new Promise((resolve) => {
          worker.onmessage = (e: MessageEvent<VcpuThreadResult>) => resolve(e.data);
          worker.onerror = (e) => {
            e.preventDefault();
            resolve({ index: i, stop: { kind: "error", message: e.message } });
          };
        }),
      );
      const init: VcpuThreadInit = {
        index: i,
        vcpuFd: vcpuFds[i]!,
        vmFd: vm.fd,
        runSize,
        syncRegs,
        ram: vm.regions.map((r) => ({ gpa: r.gpa, size: r.size, hostAddress: r.hostAddress })),
        cpuid: vcpuCpuid(enlightenments.cpuid, i, config.cpus),
        boot: i === 0 ? bootCpuState(boot) : undefined,
        controls: controls.map((c) => c.sab),
        vcpuFds,
        hv: enlightenments.init,
        devices: deviceState,
        power: powerState,
        powerEventfd: powerFd,
        serialFd,
        exitCounters: exitCounters[i]!,
        logLevel: config.logLevel,
      };
      worker.postMessage(init);
    }
    log.info("{n} vCPU(s) started", { n: config.cpus });

    // 8. Wait for the guest: a power request, a vCPU that stopped on its own, or a signal.
    let outcome: BootOutcome | undefined;
    loop.add(powerFd, () => {
      eventfdDrain(powerFd);
      const req = power.pending();
      if (req) {
        outcome ??= { kind: req };
        loop.stop();
      }
    });
    inputs.console.target = mainDevices.com1;
    cleanups.push(() => inputs.console.target = undefined);
    let shutdownAsked = false;
    const signals: [Deno.Signal, () => void][] = (["SIGINT", "SIGTERM"] as const).map((sig) => {
      const force = () => {
        outcome ??= { kind: "signal", signal: sig };
        loop.stop();
      };
      const h = () => {
        // First signal: ask the guest to shut down (shutdown IC), force it after the timeout.
        // A second signal, or a guest without the IC, stops the VM at once.
        if (shutdownAsked || !ics?.shutdown.isReady) return force();
        shutdownAsked = true;
        console.error(
          `hyperdeno: ${sig}: asking the guest to shut down (again to force; forced in ${config.shutdownTimeoutSeconds} s)`,
        );
        const timer = setTimeout(force, config.shutdownTimeoutSeconds * 1000);
        cleanups.push(() => clearTimeout(timer));
        ics.shutdown.request("poweroff").then(
          (r) => log.info("guest answered the shutdown request: {status}", { status: r.status }),
          (e) => {
            log.warning("shutdown request failed: {error}", { error: String(e) });
            force();
          },
        );
      };
      Deno.addSignalListener(sig, h);
      return [sig, h];
    });
    cleanups.push(() => signals.forEach(([s, h]) => Deno.removeSignalListener(s, h)));
    const firstStop = Promise.race(results).then((r) => {
      if (r.stop.kind !== "stopped") {
        outcome ??= vcpuFailure(r);
        loop.stop();
      }
    });
    await loop.run();
    void firstStop;
    outcome ??= { kind: "failed", message: "event loop ended without a cause" };

    // 9. Stop every vCPU and wait for its thread.
    for (const c of controls) c.request(VCPU_REQUEST.STOP);
    const settled = await Promise.race([
      Promise.all(results),
      new Promise<undefined>((r) => setTimeout(() => r(undefined), 5000)),
    ]);
    if (!settled) log.warning("a vCPU thread did not stop within 5 s; terminating it");
    return outcome;
  } finally {
    for (const w of workers) w.terminate();
    // Guest memory is unmapped below; storage reads may still be moving data into it.
    if (vmbus) await quiesceVmbus(vmbus);
    for (const c of cleanups.reverse()) c();
    loop.close();
    close(powerFd);
    vm.close();
  }
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

function vcpuFailure(r: VcpuThreadResult): BootOutcome {
  const s = r.stop;
  let what: string;
  switch (s.kind) {
    case "shutdown":
      what = "triple fault (KVM_EXIT_SHUTDOWN)";
      break;
    case "internal-error":
      what = `KVM internal error, suberror ${s.suberror}`;
      break;
    case "fail-entry":
      what = `VM entry failed, hardware reason 0x${s.reason.toString(16)}`;
      break;
    case "system-event":
      what = `system event ${s.type}`;
      break;
    case "unexpected-exit":
      what = `unexpected exit reason ${s.reason}`;
      break;
    case "error":
      what = s.message;
      break;
    default:
      what = s.kind;
  }
  return { kind: "failed", message: `vCPU ${r.index}: ${what}${r.dump ? "\n" + r.dump : ""}` };
}

/** Resolves on the first SIGINT or SIGTERM. */
function waitForSignal(): Promise<void> {
  return new Promise((resolve) => {
    const h = () => {
      Deno.removeSignalListener("SIGINT", h);
      Deno.removeSignalListener("SIGTERM", h);
      resolve();
    };
    Deno.addSignalListener("SIGINT", h);
    Deno.addSignalListener("SIGTERM", h);
  });
}

/** Where host input goes: the current boot's COM1 (none between boots). */
interface ConsoleInput {
  target: { pushInput(b: Uint8Array): number } | undefined;
}

/**
 * Forwards stdin to the console's COM1 for the whole run (stdin can be read by one reader only),
 * holding back what the UART's receive ring cannot take yet.
 */
function forwardStdin(input: ConsoleInput): { stop(): void } {
  let stopped = false;
  const reader = Deno.stdin.readable.getReader();
  (async () => {
    try {
      while (!stopped) {
        const { value, done } = await reader.read();
        if (done || !value) return;
        let rest = value;
        while (!stopped && rest.length > 0) {
          const com1 = input.target;
          if (com1) rest = rest.subarray(com1.pushInput(rest));
          if (rest.length > 0) await new Promise((r) => setTimeout(r, 5)); // guest is draining
        }
      }
    } catch { /* stdin closed */ }
  })();
  return {
    stop() {
      stopped = true;
      reader.cancel().catch(() => {});
    },
  };
}
