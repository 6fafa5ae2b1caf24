/**
 * Runs a VM for the whole life of the process: reads and checks the inputs, opens what outlives
 * a guest reset (KVM, disks, the control socket, the debugger link, the console), then boots the
 * guest again and again (`builder.ts`, one boot each) until it powers off, fails or is stopped.
 * @module
 */
import { C, close, libc } from "../../ffi/libc.ts";
import { KVM } from "../../ffi/kvm_abi.ts";
import { Kvm } from "../kvm/kvm.ts";
import { judgeKvmHost, kvmRefusal, readKvmHostFacts } from "../kvm/host_support.ts";
import { hasFeature } from "../hyperv/mod.ts";
import type { SyndbgLink } from "../hyperv/host/enlightenments.ts";
import { openDebugSocket } from "../hyperv/host/syndbg_udp.ts";
import { doorbellEventfdsFromEnv } from "../vmbus/doorbells.ts";
import { openDisk, ScsiController, ScsiDisk } from "../devices/storage/mod.ts";
import { VsockUnixBackend } from "../devices/hvsock/mod.ts";
import { openNetBackends } from "./net.ts";
import { parseBzImage } from "../machine/linux_boot.ts";
import { buildMemoryMap } from "../machine/memory_map.ts";
import { UsageError } from "../util/errors.ts";
import { getLogger } from "../util/log.ts";
import { checkPathFlags, hvFeaturesOf, type SyndbgSpec, type VmConfig } from "./config.ts";
import { startSummary } from "./start_summary.ts";
import { type ControlTarget, serveControl } from "./control.ts";
import { Rtc } from "../machine/devices/rtc.ts";
import { bootOnce } from "./builder.ts";
import { prepareFirmware } from "./firmware_devices.ts";
import { openAhciDrives } from "./ahci_host.ts";
import { type ConsoleTargets, startConsole } from "./console.ts";
import { allocateVram } from "./vram.ts";
import {
  type ConsoleInput,
  enterRawMode,
  forwardStdin,
  openSerial,
  waitForSignal,
} from "./session.ts";

export { type BootOutcome } from "./builder.ts";
export { vcpuCpuid } from "./vcpu_threads.ts";

const log = getLogger("machine");

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

/** Runs the VM described by `config` until it ends; returns the process exit status. */
export async function runVm(config: VmConfig): Promise<number> {
  // Bad kernel or firmware files are the user's to fix on any host: say so before looking for
  // KVM. The firmware's flash memory and vars file outlive guest resets, like its NVRAM would.
  const firmware = config.firmware ? prepareFirmware(config.firmware) : undefined;
  using _firmwareClose = { [Symbol.dispose]: () => firmware?.close() };
  let kernel: Uint8Array | undefined;
  if (!firmware) {
    kernel = readInput(config.kernelPath, "kernel");
    parseBzImage(kernel, config.kernelPath);
  }
  const doorbellEventfds = doorbellEventfdsFromEnv(Deno.env.get("HYPERDENO_DOORBELL_EVENTFDS"));
  // A path flag that names someone's file is the user's to fix, on any host.
  await checkPathFlags(config);
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
  // Every input is checked: now the host. A /dev/kvm that cannot run the guest (PVM hangs it
  // silently) is refused before anything is built, with what to do instead (doctor's verdict).
  const verdict = judgeKvmHost(readKvmHostFacts());
  if (!verdict.ok) throw new UsageError(kvmRefusal(verdict));
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
  // Taps too (a bad --net fails here, before the guest starts).
  if (config.nets?.length && !hasFeature(features, "synic")) {
    throw new UsageError("--net needs VMBus, which needs the synic enlightenment (--hv all)");
  }
  const nets = config.nets?.length ? openNetBackends(config.nets) : undefined;
  const ahci = await openAhciDrives(config.disks, config.cdroms, config.sataOrder);
  let controlTarget: ControlTarget | undefined;
  // Screen, keyboard and mouse for people (--vnc, --web); they follow the current boot.
  const consoleTargets: ConsoleTargets = { input: undefined };
  const frontEnds = await startConsole({
    ...(config.vnc ? { vnc: config.vnc } : {}),
    ...(config.vncPassword !== undefined ? { password: config.vncPassword } : {}),
    ...(config.web ? { web: config.web } : {}),
  }, consoleTargets);
  // Synthetic video's VRAM, kept across reboots (front ends may hold views of it).
  const vram = hasFeature(features, "synic") ? allocateVram(8 << 20) : undefined;
  const control = config.controlPath
    ? await serveControl(config.controlPath, () => controlTarget)
    : undefined;
  // hv_sock's listener outlives guest resets; each boot serves its own connections.
  const vsock = config.vsockPath ? await VsockUnixBackend.listen(config.vsockPath) : undefined;
  // The debugger link outlives guest resets too, like the debug session it carries.
  const syndbg = config.syndbg ? openSyndbg(config.syndbg) : undefined;
  const serialFd = openSerial(config);
  // Everything the user gave is open and checked: say what runs before the guest says anything
  // (and before a terminal goes raw, where a newline would not return the carriage).
  if (config.logLevel !== "error") console.error(startSummary(config, features));
  const raw = enterRawMode(config);
  const consoleInput: ConsoleInput = { target: undefined };
  const stdin = config.serial.kind === "stdio" ? forwardStdin(consoleInput) : undefined;
  // The CMOS (clock offset and NVRAM) is battery-backed: it survives guest resets.
  const cmos = Rtc.createState({
    ramBelow4G: map.lowRamEnd,
    ramAbove4G: map.ramBytes - map.lowRamEnd,
    timeOffsetMs: config.rtcOffsetSeconds * 1000,
  });
  try {
    for (let boots = 1;; boots++) {
      const outcome = await bootOnce(kvm, config, {
        map,
        kernel,
        firmware,
        ahci,
        initrd,
        serialFd,
        cmos,
        features,
        scsi,
        nets,
        syndbg,
        vsock,
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
    vsock?.close();
    frontEnds.close();
    if (serialFd > 2) close(serialFd);
    if (syndbg) close(syndbg.fd);
    await scsi?.close();
    nets?.close();
    ahci?.close();
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
  const specs = config.disks.filter((d) => d.bus === "scsi");
  if (specs.length === 0) return undefined;
  if (!hasFeature(hvFeaturesOf(config), "synic")) {
    throw new UsageError(
      "--disk needs VMBus, which needs the synic enlightenment (--hv all); or use bus=sata",
    );
  }
  const controller = new ScsiController();
  const disks: ScsiDisk[] = [];
  try {
    for (const [i, spec] of specs.entries()) {
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
