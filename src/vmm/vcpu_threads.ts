/**
 * The vCPU Workers of one boot: per-vCPU CPUID, the control blocks that kick and stop them, one
 * Worker per vCPU running `vcpu_thread.ts`, and how a thread's stop reads as a boot outcome.
 * @module
 */
import type { CpuidEntry } from "../kvm/kvm.ts";
import { VCPU_REQUEST, VcpuControl } from "../kvm/vcpu_control.ts";
import type { Vm } from "../kvm/vm.ts";
import type { LinuxBoot } from "../machine/linux_boot.ts";
import { bootCpuState } from "../machine/page_tables.ts";
import type { HvThreadInit } from "../hyperv/host/enlightenments.ts";
import type { PcDeviceState } from "./pc_devices.ts";
import type { VcpuThreadInit, VcpuThreadResult } from "./vcpu_thread.ts";

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

/** The running vCPU threads of one boot. */
export interface VcpuThreads {
  /** The first thread that ends, whatever the reason. */
  readonly firstStop: Promise<VcpuThreadResult>;
  /** Asks every vCPU to stop; true when all threads ended within `timeoutMs`. */
  stop(timeoutMs: number): Promise<boolean>;
  /** Terminates the Workers and releases the kvm_run mappings (teardown). */
  terminate(): void;
}

/** Starts one Worker per vCPU fd. */
export function startVcpuThreads(o: {
  vm: Vm;
  vcpus: { fds: number[]; runSize: number; syncRegs: boolean };
  cpuid: readonly CpuidEntry[];
  boot: LinuxBoot;
  hv: HvThreadInit | undefined;
  devices: PcDeviceState;
  power: SharedArrayBuffer;
  powerFd: number;
  serialFd: number;
  exitCounters: SharedArrayBuffer[];
  logLevel: string;
}): VcpuThreads {
  const { fds, runSize, syncRegs } = o.vcpus;
  const controls = fds.map((fd) => {
    const c = new VcpuControl(VcpuControl.createState());
    c.attachRun(fd, runSize);
    return c;
  });
  const workers: Worker[] = [];
  const results: Promise<VcpuThreadResult>[] = [];
  fds.forEach((fd, i) => {
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
      vcpuFd: fd,
      vmFd: o.vm.fd,
      runSize,
      syncRegs,
      ram: o.vm.regions.map((r) => ({ gpa: r.gpa, size: r.size, hostAddress: r.hostAddress })),
      cpuid: vcpuCpuid(o.cpuid, i, fds.length),
      boot: i === 0 ? bootCpuState(o.boot) : undefined,
      controls: controls.map((c) => c.sab),
      vcpuFds: fds,
      hv: o.hv,
      devices: o.devices,
      power: o.power,
      powerEventfd: o.powerFd,
      serialFd: o.serialFd,
      exitCounters: o.exitCounters[i]!,
      logLevel: o.logLevel,
    };
    worker.postMessage(init);
  });
  let terminated = false;
  return {
    firstStop: Promise.race(results),
    async stop(timeoutMs) {
      for (const c of controls) c.request(VCPU_REQUEST.STOP);
      let timer: ReturnType<typeof setTimeout> | undefined;
      const settled = await Promise.race([
        Promise.all(results).then(() => true),
        new Promise<boolean>((r) => timer = setTimeout(() => r(false), timeoutMs)),
      ]);
      clearTimeout(timer);
      return settled;
    },
    terminate() {
      if (terminated) return;
      terminated = true;
      for (const w of workers) w.terminate();
      for (const c of controls) c.detachRun();
    },
  };
}

/** A vCPU thread that stopped on its own, as a boot outcome with the reason and registers. */
export function vcpuFailure(
  r: VcpuThreadResult,
): { kind: "failed"; message: string } {
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
