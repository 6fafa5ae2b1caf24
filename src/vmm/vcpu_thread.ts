/**
 * Entry point of a vCPU Worker: sets the vCPU up, builds this thread's view of guest RAM and of
 * the devices over their shared state, then runs KVM_RUN synchronously until told to stop or the
 * guest dies. Nothing on the exit path crosses threads: PIO goes to this thread's device objects,
 * whose state is shared through SharedArrayBuffers.
 * @module
 */
import { clockNs, eventfdSignal, libc } from "../../ffi/libc.ts";
import type { CpuidEntry } from "../kvm/kvm.ts";
import { EXIT, ExitCounters } from "../kvm/exit_counters.ts";
import { GuestMemory } from "../kvm/guest_memory.ts";
import { REG, Vcpu } from "../kvm/vcpu.ts";
import { VCPU_REQUEST, VcpuControl } from "../kvm/vcpu_control.ts";
import { armKicks, EXIT_NAMES, KICK_SIGNAL, runVcpu, type VcpuStop } from "../kvm/vcpu_loop.ts";
import { releaseRdtsc } from "../kvm/tsc.ts";
import { VmInterrupts } from "../kvm/vm.ts";
import type { BootCpuState } from "../machine/page_tables.ts";
import { SharedPowerControl } from "../machine/power.ts";
import { getLogger, rateLimited } from "../util/log.ts";
import { configureLogging } from "./logging.ts";
import { vmbusOwnsConnection } from "../vmbus/mod.ts";
import { attachPcDevices, framebufferMover, type PcDeviceState } from "./pc_devices.ts";
import { HV_DOORBELL_FIRST, type HyperV } from "../hyperv/mod.ts";
import {
  attachEnlightenments,
  attachVcpuTimers,
  type HvThreadInit,
  type VcpuTimers,
} from "../hyperv/host/enlightenments.ts";
import {
  exitIn64BitMode,
  HV_DOORBELL_DEVICE,
  HV_HYPERCALL_DEVICE,
  isHypercallPageExit,
  raiseHypercallUd,
  VcpuHypercallRegs,
  VcpuTlbFlusher,
} from "../hyperv/host/hyperv_host.ts";

/** Everything a vCPU thread gets at start (structured-cloneable). */
export interface VcpuThreadInit {
  index: number;
  vcpuFd: number;
  vmFd: number;
  runSize: number;
  syncRegs: boolean;
  ram: { gpa: number; size: number; hostAddress: bigint }[];
  cpuid: CpuidEntry[];
  /** Register state for the boot vCPU; APs wait for INIT/SIPI from the in-kernel LAPIC. */
  boot: BootCpuState | undefined;
  /** Control blocks of every vCPU (this one is `controls[index]`), for kicks and TLB flushes. */
  controls: SharedArrayBuffer[];
  vcpuFds: number[];
  /** Hyper-V enlightenments; undefined with `--hv none`. */
  hv: HvThreadInit | undefined;
  devices: PcDeviceState;
  power: SharedArrayBuffer;
  powerEventfd: number;
  /** Where COM1 output goes (-1: nowhere). */
  serialFd: number;
  /** This vCPU's `ExitCounters` state (the control socket reads it). */
  exitCounters: SharedArrayBuffer;
  logLevel: string;
}

/** What a vCPU thread reports when it ends. */
export interface VcpuThreadResult {
  index: number;
  stop: VcpuStop;
  /** Register dump for abnormal stops. */
  dump?: string;
}

const log = getLogger("vcpu");

/** Builds this thread's GuestMemory over the RAM mappings created by the main thread. */
export function guestMemoryFrom(ram: VcpuThreadInit["ram"]): GuestMemory {
  return new GuestMemory(ram.map((r) => ({
    gpa: r.gpa,
    bytes: new Uint8Array(
      Deno.UnsafePointerView.getArrayBuffer(Deno.UnsafePointer.create(r.hostAddress)!, r.size),
    ),
  })));
}

function hex(v: bigint | number): string {
  return "0x" + v.toString(16).padStart(16, "0");
}

/** A register dump for the user: RIP, RSP, control registers, EFER, CS. */
export function dumpState(vcpu: Vcpu): string {
  try {
    vcpu.loadRegs();
    const s = vcpu.getSregs();
    const r = vcpu.regs;
    return [
      `RIP=${hex(r[REG.rip]!)} RSP=${hex(r[REG.rsp]!)} RFLAGS=${hex(r[REG.rflags]!)}`,
      `RAX=${hex(r[REG.rax]!)} RBX=${hex(r[REG.rbx]!)} RCX=${hex(r[REG.rcx]!)} RDX=${
        hex(r[REG.rdx]!)
      }`,
      `CR0=${hex(s.cr0)} CR2=${hex(s.cr2)} CR3=${hex(s.cr3)} CR4=${hex(s.cr4)}`,
      `EFER=${hex(s.efer)} CS=${s.cs.selector.toString(16)} (base ${
        hex(s.cs.base)
      } l=${s.cs.l} db=${s.cs.db})`,
    ].join("\n");
  } catch (e) {
    return `(registers unavailable: ${(e as Error).message})`;
  }
}

function writeAll(fd: number, bytes: Uint8Array): void {
  // COM1 output is one byte per THR write; a short write to a pipe is retried, EAGAIN dropped.
  let off = 0;
  while (off < bytes.length) {
    const n = Number(
      libc.write(fd, bytes.subarray(off) as Uint8Array<ArrayBuffer>, BigInt(bytes.length - off)),
    );
    if (n <= 0) return;
    off += n;
  }
}

/** Sets the vCPU up and runs it; returns why it stopped. */
export function runVcpuThread(init: VcpuThreadInit): VcpuThreadResult {
  const control = new VcpuControl(init.controls[init.index]!);
  const vcpu = new Vcpu(init.vcpuFd, init.index, init.runSize, init.syncRegs);
  const exits = new ExitCounters(init.exitCounters);
  const counts = exits.counts;
  let timers: VcpuTimers | undefined;
  let peers: VcpuControl[] = [];
  try {
    vcpu.setCpuid(init.cpuid);
    vcpu.initFpu();
    vcpu.setupLint();
    if (init.boot) {
      const b = init.boot;
      const s = vcpu.getSregs();
      vcpu.setSregs({ ...s, ...b.sregs });
      vcpu.setAllRegs({ ...b.regs });
    }
    control.publishThread(armKicks(vcpu));

    const interrupts = new VmInterrupts(init.vmFd);
    const power = new SharedPowerControl(init.power, () => eventfdSignal(init.powerEventfd));
    const serialFd = init.serialFd;
    const devices = attachPcDevices(init.devices, {
      irq: (gsi) => interrupts.irqLine(gsi),
      power,
      serialOutput: serialFd >= 0 ? (bytes) => writeAll(serialFd, bytes) : () => {},
      nowNs: () => clockNs(),
      msi: interrupts,
      vcpu: init.index,
      ...(init.devices.display
        ? { moveFramebuffer: framebufferMover(init.vmFd, init.devices.display) }
        : {}),
    });
    const unhandled = rateLimited();
    const flushSelf = () => vcpu.flushTlb();
    let hv: HyperV | undefined;
    const regs = new VcpuHypercallRegs(vcpu);
    if (init.hv) {
      const controls = init.controls.map((sab, i) => {
        const c = new VcpuControl(sab);
        if (i !== init.index) c.attachRun(init.vcpuFds[i]!, init.runSize);
        return c;
      });
      peers = controls;
      hv = attachEnlightenments(init.hv, {
        memory: guestMemoryFrom(init.ram),
        interrupts,
        power,
        flusher: new VcpuTlbFlusher(init.index, controls, flushSelf),
        vp: init.index,
        callerLongMode: () => exitIn64BitMode(vcpu),
        ownsConnection: vmbusOwnsConnection,
        onCrash: (report) => {
          Deno.stderr.writeSync(
            new TextEncoder().encode(`hyperdeno: guest crash: ${report.summary}\n`),
          );
          if (report.message) {
            Deno.stderr.writeSync(new TextEncoder().encode(report.message.trimEnd() + "\n"));
          }
          power.crash();
        },
      });
      // Synthetic timers fire as kicks of this thread (after armKicks blocked the signal).
      timers = attachVcpuTimers(init.hv, hv, { vp: init.index, signal: KICK_SIGNAL });
    }
    const index = init.index;
    const badHypercall = rateLimited();
    // A hypercall from CPL > 0 or real mode, or with XMM input not offered: #UD, as Hyper-V.
    const refuseHypercall = (hv: HyperV) => {
      try {
        const at = raiseHypercallUd(vcpu, hv.partition.hypercallMsr);
        badHypercall(() =>
          log.info("hypercall refused: #UD injected ({at}), mode {mode}", {
            at,
            mode: JSON.stringify(
              vcpu.modeRegs(),
              (_k, v) => typeof v === "bigint" ? v.toString(16) : v,
            ),
          })
        );
      } catch (e) {
        badHypercall(() =>
          log.error("hypercall refused, but #UD could not be injected: {error}", {
            error: String(e),
          })
        );
      }
    };

    if (hv) {
      const hvNow = hv;
      const handlers = devices.handlers;
      // The hypercall page's OUT: registers carry the call, not the data byte.
      handlers[devices.registry.deviceId(HV_HYPERCALL_DEVICE)] = {
        read: (_o, data) => void data.fill(0xff),
        write() {
          counts[EXIT.hypercall]!++;
          regs.begin();
          const r = hvNow.hypercall(index, regs);
          if (r === "done") vcpu.storeRegs();
          else if (r === "ud") refuseHypercall(hvNow);
        },
      };
      // A channel doorbell whose port has no eventfd: the fast HvSignalEvent it stands for.
      handlers[devices.registry.deviceId(HV_DOORBELL_DEVICE)] = {
        read: (_o, data) => void data.fill(0xff),
        write(offset, data) {
          if (data.length !== 4 || !isHypercallPageExit(vcpu, hvNow.partition.hypercallMsr)) return;
          counts[EXIT.doorbell]!++;
          vcpu.regWords[REG.rax * 2] = hvNow.doorbell(HV_DOORBELL_FIRST + offset);
          vcpu.regWords[REG.rax * 2 + 1] = 0;
          vcpu.storeRegs();
        },
      };
    }
    const dispatch = devices.dispatch;
    const access = (space: "pio" | "mmio", addr: number, write: boolean, data: Uint8Array) => {
      try {
        if (!dispatch.access(space, addr, write, data)) {
          unhandled((n) =>
            log.debug("unhandled {space} {dir} {addr} ({suppressed} suppressed)", {
              space,
              dir: write ? "write" : "read",
              addr: "0x" + addr.toString(16),
              suppressed: n,
            })
          );
        }
      } catch (e) {
        unhandled(() =>
          log.error("device error at {space} {addr}: {error}", {
            space,
            addr: "0x" + addr.toString(16),
            error: String(e),
          })
        );
        if (!write) data.fill(0xff);
      }
    };

    const stop = runVcpu(vcpu, {
      pio: (port, write, data) => access("pio", port, write, data),
      mmio: (address, write, data) => access("mmio", address, write, data),
      rdmsr: (msr) => hv?.rdmsr(index, msr),
      wrmsr: (msr, value) => {
        exits.msrWrite(msr);
        return hv?.wrmsr(index, msr, value) ?? false;
      },
      onKick() {
        if (timers) counts[EXIT.stimer]! += timers.runDue();
        const req = control.takeRequests();
        if (req & VCPU_REQUEST.FLUSH_TLB) {
          flushSelf();
          control.ackFlush();
        }
        return (req & VCPU_REQUEST.STOP) === 0;
      },
    }, counts);
    const result: VcpuThreadResult = { index: init.index, stop };
    if (stop.kind !== "stopped") {
      result.dump = dumpState(vcpu);
      log.info("vCPU {index} stopped: {kind} {detail}", {
        index: init.index,
        kind: stop.kind,
        detail: stop.kind === "unexpected-exit" ? EXIT_NAMES[stop.reason] ?? stop.reason : "",
      });
    }
    return result;
  } catch (e) {
    return {
      index: init.index,
      stop: { kind: "error", message: (e as Error).message },
      dump: dumpState(vcpu),
    };
  } finally {
    timers?.close();
    // Mappings are process-wide and outlive this thread: drop them, or every reboot adds more.
    for (const p of peers) p.detachRun();
    vcpu.close();
    releaseRdtsc();
    control.markExited();
  }
}

// Worker entry: one init message, then the thread belongs to KVM_RUN until the vCPU stops.
if (typeof (globalThis as { WorkerGlobalScope?: unknown }).WorkerGlobalScope !== "undefined") {
  const scope = globalThis as unknown as {
    onmessage: ((e: MessageEvent<VcpuThreadInit>) => void) | null;
    postMessage(m: unknown): void;
    close(): void;
  };
  scope.onmessage = async (e) => {
    scope.onmessage = null;
    await configureLogging(e.data.logLevel);
    scope.postMessage(runVcpuThread(e.data));
    scope.close();
  };
}
