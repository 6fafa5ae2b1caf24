/**
 * The VMM's side of the Hyper-V contracts (`src/hyperv`): the guest clock, the synthetic-timer
 * scheduler (shared deadlines, one timerfd on the main thread), remote TLB flushes through vCPU
 * kicks, hypercall registers over the vCPU's sync regs, and the crash sink.
 * @module
 */
import { C, check, clockNs, eventfdSignal, libc } from "../../ffi/libc.ts";
import { GuestTsc } from "../kvm/tsc.ts";
import { REG, type Vcpu } from "../kvm/vcpu.ts";
import { VCPU_REQUEST, type VcpuControl } from "../kvm/vcpu_control.ts";
import type {
  GuestClock,
  HypercallGpr,
  HypercallRegs,
  TimerScheduler,
  TlbFlusher,
} from "../hyperv/mod.ts";
import { getLogger, rateLimited } from "../util/log.ts";

const log = getLogger("hyperv");

/** A `GuestClock` over the shared guest-TSC parameters; usable on every thread. */
export function guestClock(tsc: { offset: bigint; hz: number; vmStartTsc: bigint }): GuestClock {
  const g = new GuestTsc(tsc.offset, tsc.hz, tsc.vmStartTsc);
  return { guestTsc: () => g.now(), tscHz: g.hz, vmStartTsc: g.vmStartTsc };
}

const TIMERS_PER_VP = 4;
const DISARMED = -1n;

/**
 * Synthetic-timer deadlines shared by every thread: `arm`/`cancel` (any thread, under the
 * timer's lock) store the deadline and wake the main thread, which keeps one timerfd armed for
 * the earliest deadline and calls `expire` for the ones that passed.
 */
export class SharedTimerScheduler implements TimerScheduler {
  readonly #deadlines: BigInt64Array;
  readonly #wakeFd: number;

  /** Deadlines for `vpCount` VPs, all disarmed. */
  static createState(vpCount: number): SharedArrayBuffer {
    const sab = new SharedArrayBuffer(vpCount * TIMERS_PER_VP * 8);
    new BigInt64Array(sab).fill(DISARMED);
    return sab;
  }

  /** `wakeFd`: an eventfd the main thread's timer driver watches. */
  constructor(state: SharedArrayBuffer, wakeFd: number) {
    this.#deadlines = new BigInt64Array(state);
    this.#wakeFd = wakeFd;
  }

  arm(vp: number, timer: number, deadline100ns: bigint): void {
    Atomics.store(this.#deadlines, vp * TIMERS_PER_VP + timer, BigInt.asIntN(64, deadline100ns));
    eventfdSignal(this.#wakeFd);
  }

  cancel(vp: number, timer: number): void {
    Atomics.store(this.#deadlines, vp * TIMERS_PER_VP + timer, DISARMED);
  }

  /**
   * Main thread: disarms and returns every timer due at `now`, and the earliest deadline still
   * pending (undefined when none).
   */
  takeDue(now: bigint): { due: [number, number][]; next: bigint | undefined } {
    const due: [number, number][] = [];
    let next: bigint | undefined;
    for (let i = 0; i < this.#deadlines.length; i++) {
      const d = Atomics.load(this.#deadlines, i);
      if (d === DISARMED) continue;
      if (d <= now) {
        // Only take it if nobody re-armed it meanwhile.
        if (Atomics.compareExchange(this.#deadlines, i, d, DISARMED) === d) {
          due.push([Math.floor(i / TIMERS_PER_VP), i % TIMERS_PER_VP]);
        }
      } else if (next === undefined || d < next) {
        next = d;
      }
    }
    return { due, next };
  }
}

/** A CLOCK_MONOTONIC timerfd armed relative to now. */
export class RelativeTimerFd {
  readonly fd: number;
  readonly #spec = new BigInt64Array(4); // it_interval {s, ns}, it_value {s, ns}

  constructor() {
    this.fd = check(
      "timerfd_create",
      libc.timerfd_create(C.CLOCK_MONOTONIC, C.TFD_NONBLOCK | C.TFD_CLOEXEC),
    );
  }

  /** Fires once after `ns` nanoseconds (at least 1 µs); `undefined` disarms. */
  set(ns: bigint | undefined): void {
    this.#spec.fill(0n);
    if (ns !== undefined) {
      const v = ns < 1000n ? 1000n : ns;
      this.#spec[2] = v / 1_000_000_000n;
      this.#spec[3] = v % 1_000_000_000n;
    }
    libc.timerfd_settime(this.fd, 0, new Uint8Array(this.#spec.buffer), null);
  }

  /** Consumes an expiry. */
  drain(): void {
    libc.read(this.fd, new Uint8Array(8), 8n);
  }
}

/**
 * Remote TLB flushes from a vCPU thread: each target is kicked with FLUSH_TLB and flushes itself
 * (see `Vcpu.flushTlb`) before re-entering the guest; the caller returns only once every target
 * counted the flush. While waiting it serves flush requests aimed at itself, so two vCPUs
 * flushing each other cannot deadlock.
 */
export class VcpuTlbFlusher implements TlbFlusher {
  readonly #self: number;
  readonly #controls: readonly VcpuControl[];
  readonly #flushSelf: () => void;
  readonly #slow = rateLimited();

  constructor(self: number, controls: readonly VcpuControl[], flushSelf: () => void) {
    this.#self = self;
    this.#controls = controls;
    this.#flushSelf = flushSelf;
  }

  flush(vps: number[]): void {
    const waits: [VcpuControl, number][] = [];
    for (const vp of vps) {
      const c = this.#controls[vp];
      if (!c || vp === this.#self) continue;
      waits.push([c, c.flushes]);
      c.request(VCPU_REQUEST.FLUSH_TLB);
    }
    if (vps.includes(this.#self)) this.#flushSelf();
    const self = this.#controls[this.#self];
    const start = performance.now();
    for (const [c, seen] of waits) {
      while (!c.exited && !c.waitFlush(seen, 1)) {
        // A peer may be waiting for us: serve our own pending flush meanwhile.
        if (self && (self.takeRequests() & VCPU_REQUEST.FLUSH_TLB)) {
          this.#flushSelf();
          self.ackFlush();
        }
        if (performance.now() - start > 1000) {
          this.#slow(() => log.warning("remote TLB flush waited over 1 s for a vCPU"));
        }
      }
    }
  }
}

/** `HypercallRegs` over a vCPU's registers (sync regs when KVM offers them). */
export class VcpuHypercallRegs implements HypercallRegs {
  readonly #vcpu: Vcpu;
  #mode: { efer: bigint; cr0: bigint; csL: number; cpl: number } | undefined;

  constructor(vcpu: Vcpu) {
    this.#vcpu = vcpu;
  }

  /** Call at the start of each hypercall exit. */
  begin(): void {
    this.#mode = undefined;
    this.#vcpu.loadRegs();
  }

  #m() {
    return (this.#mode ??= this.#vcpu.modeRegs());
  }

  is64Bit(): boolean {
    const m = this.#m();
    return (m.efer & (1n << 10n)) !== 0n && m.csL === 1;
  }

  protectedMode(): boolean {
    return (this.#m().cr0 & 1n) !== 0n;
  }

  cpl(): number {
    return this.#m().cpl;
  }

  getGpr(reg: HypercallGpr): bigint {
    return this.#vcpu.regs[REG[reg]]!;
  }

  setGpr(reg: HypercallGpr, value: bigint): void {
    this.#vcpu.regs[REG[reg]] = BigInt.asUintN(64, value);
  }

  readXmm(index: number, into: Uint8Array): void {
    this.#vcpu.readXmm(index, into);
  }
}

/** VP_RUNTIME for the calling thread's vCPU: its thread CPU time, in 100 ns units. */
export function threadRuntime100ns(): bigint {
  return clockNs(C.CLOCK_THREAD_CPUTIME_ID) / 100n;
}

/** Measures the guest TSC offset from a vCPU that is not running yet. */
export function measureGuestTsc(vcpu: Vcpu, hostTsc: () => bigint): { offset: bigint; hz: number } {
  const IA32_TSC = 0x10;
  const before = hostTsc();
  const guest = vcpu.getMsr(IA32_TSC) ?? 0n;
  const after = hostTsc();
  return { offset: guest - (before + (after - before) / 2n), hz: vcpu.tscKhz() * 1000 };
}
