/**
 * Partition-wide synthetic MSRs: guest OS id, hypercall page, reference time (TIME_REF_COUNT
 * and the reference TSC page), frequencies, crash registers, reenlightenment / TSC emulation /
 * TSC invariant controls (the synthetic debugger's registers are in `syndbg.ts`). The values
 * live in a SharedArrayBuffer so every vCPU worker sees what another one wrote (TLFS: "If one
 * virtual processor successfully writes to the MSR, another virtual processor will read the
 * same value").
 *
 * Feature gating (an MSR whose feature is off raises #GP) is done by `msrs.ts`; this class only
 * implements the semantics. `readMsr`/`writeMsr` return `undefined`/`false` for #GP.
 * @module
 */
import type { GuestMemory } from "../kvm/guest_memory.ts";
import { PAGE_SIZE } from "../kvm/guest_memory.ts";
import { getLogger, rateLimited } from "../util/log.ts";
import { buildCrashReport, type CrashSink } from "./crash.ts";
import { pageGpa, withLock } from "./shared.ts";
import {
  type GuestClock,
  referenceTime,
  type ReferenceTscParams,
  referenceTscParams,
} from "./time.ts";
import * as T from "./tlfs.ts";

// u64 slots of the partition state.
const S_GUEST_OS_ID = 0;
const S_HYPERCALL = 1;
const S_REFERENCE_TSC = 2;
const S_CRASH_P0 = 3; // ..7
const S_CRASH_CTL = 8;
const S_REENLIGHTENMENT = 9;
const S_TSC_EMU_CONTROL = 10;
const S_TSC_EMU_STATUS = 11;
const S_TSC_INVARIANT = 12;
// 13..18: unused (the synthetic debugger registers moved to syndbg.ts).
const U64_SLOTS = 24;
/** HV_MSR_ENABLE within the low 32-bit half of the HYPERCALL slot. */
const HYPERCALL_ENABLE_LO = Number(T.HV_MSR_ENABLE);
// i32 slots, after the u64 ones.
const I_LOCK = U64_SLOTS * 2;
const I_TSC_SEQUENCE = I_LOCK + 1;
const STATE_BYTES = U64_SLOTS * 8 + 16;

/** APIC timer frequency of KVM's in-kernel LAPIC (1 ns bus cycle). */
export const KVM_APIC_BUS_HZ = 1_000_000_000;

/** What the partition MSRs need from the VMM. */
export interface HvPartitionDeps {
  /** Guest RAM (hypercall page, TSC page, crash message). */
  memory: GuestMemory;
  /** Guest TSC: reference time source. */
  clock: GuestClock;
  /** Number of VPs (reenlightenment target check). */
  vpCount: number;
  /** Receives guest crash reports. */
  crashSink?: CrashSink;
  /** LAPIC timer frequency reported by HV_X64_MSR_APIC_FREQUENCY; default 1 GHz (KVM). */
  apicHz?: number;
  /**
   * HvSignalEvent is offered: a hypercall page enabled from long mode gets the doorbell fast
   * path (`HYPERCALL_PAGE_CODE_LONG_MODE`).
   */
  doorbells?: boolean;
  /** Whether the vCPU writing an MSR runs in 64-bit mode; absent = never (plain page). */
  callerLongMode?: () => boolean;
}

const log = getLogger("hyperv", "partition");
const limit = rateLimited();

/** Partition-wide Hyper-V state shared by every thread. */
export class HvPartition {
  /** Allocates the shared state (all registers zero, as at partition creation). */
  static createState(): SharedArrayBuffer {
    return new SharedArrayBuffer(STATE_BYTES);
  }

  readonly #u64: BigUint64Array;
  readonly #i32: Int32Array;
  readonly #deps: HvPartitionDeps;
  /** Scale and offset shared by TIME_REF_COUNT and the TSC page. */
  readonly tscParams: ReferenceTscParams;

  constructor(state: SharedArrayBuffer, deps: HvPartitionDeps) {
    if (state.byteLength < STATE_BYTES) throw new RangeError("HvPartition: state too small");
    this.#u64 = new BigUint64Array(state, 0, U64_SLOTS);
    this.#i32 = new Int32Array(state);
    this.#deps = deps;
    this.tscParams = referenceTscParams(deps.clock.tscHz, deps.clock.vmStartTsc);
  }

  /**
   * Back to the state at partition creation (system reset): every register zero, so the guest
   * OS id and the hypercall page are gone. Call with every vCPU stopped.
   */
  reset(): void {
    for (let i = 0; i < U64_SLOTS; i++) Atomics.store(this.#u64, i, 0n);
  }

  #get(slot: number): bigint {
    return Atomics.load(this.#u64, slot);
  }

  #set(slot: number, value: bigint): void {
    Atomics.store(this.#u64, slot, BigInt.asUintN(64, value));
  }

  /** HV_X64_MSR_GUEST_OS_ID. */
  get guestOsId(): bigint {
    return this.#get(S_GUEST_OS_ID);
  }

  /** HV_X64_MSR_HYPERCALL. */
  get hypercallMsr(): bigint {
    return this.#get(S_HYPERCALL);
  }

  /** True when hypercalls may be made: guest OS id set and hypercall page enabled. */
  get hypercallsEnabled(): boolean {
    // Asked on every hypercall exit, so read as plain 32-bit halves: a BigInt load allocates
    // and an Atomics.load is a call. An aligned 32-bit read cannot tear, and no ordering is
    // needed: the guest orders its MSR writes before its hypercalls itself.
    const i32 = this.#i32;
    return (i32[S_GUEST_OS_ID * 2]! | i32[S_GUEST_OS_ID * 2 + 1]!) !== 0 &&
      (i32[S_HYPERCALL * 2]! & HYPERCALL_ENABLE_LO) !== 0;
  }

  /** Partition reference time now: 100 ns units since VM start (TIME_REF_COUNT). */
  referenceTime(): bigint {
    return referenceTime(this.#deps.clock.guestTsc(), this.tscParams);
  }

  /** Reads a partition-wide MSR; `undefined` means #GP. */
  readMsr(index: number): bigint | undefined {
    switch (index) {
      case T.HV_X64_MSR_GUEST_OS_ID:
        return this.#get(S_GUEST_OS_ID);
      case T.HV_X64_MSR_HYPERCALL:
        return this.#get(S_HYPERCALL);
      case T.HV_X64_MSR_TIME_REF_COUNT:
        return this.referenceTime();
      case T.HV_X64_MSR_REFERENCE_TSC:
        return this.#get(S_REFERENCE_TSC);
      case T.HV_X64_MSR_TSC_FREQUENCY:
        return BigInt(this.#deps.clock.tscHz);
      case T.HV_X64_MSR_APIC_FREQUENCY:
        return BigInt(this.#deps.apicHz ?? KVM_APIC_BUS_HZ);
      case T.HV_X64_MSR_CRASH_CTL:
        // Reads report the capabilities: notify, and notify with a message page.
        return T.HV_CRASH_CTL_CRASH_NOTIFY | T.HV_CRASH_CTL_CRASH_NOTIFY_MSG;
      case T.HV_X64_MSR_REENLIGHTENMENT_CONTROL:
        return this.#get(S_REENLIGHTENMENT);
      case T.HV_X64_MSR_TSC_EMULATION_CONTROL:
        return this.#get(S_TSC_EMU_CONTROL);
      case T.HV_X64_MSR_TSC_EMULATION_STATUS:
        return this.#get(S_TSC_EMU_STATUS);
      case T.HV_X64_MSR_TSC_INVARIANT_CONTROL:
        return this.#get(S_TSC_INVARIANT);
    }
    if (index >= T.HV_X64_MSR_CRASH_P0 && index <= T.HV_X64_MSR_CRASH_P4) {
      return this.#get(S_CRASH_P0 + index - T.HV_X64_MSR_CRASH_P0);
    }
    return undefined;
  }

  /** Writes a partition-wide MSR from VP `vp`; `false` means #GP. */
  writeMsr(vp: number, index: number, value: bigint): boolean {
    value = BigInt.asUintN(64, value);
    switch (index) {
      case T.HV_X64_MSR_GUEST_OS_ID:
        return this.#writeGuestOsId(value);
      case T.HV_X64_MSR_HYPERCALL:
        return this.#writeHypercall(value);
      case T.HV_X64_MSR_REFERENCE_TSC:
        return this.#writeReferenceTsc(value);
      case T.HV_X64_MSR_TIME_REF_COUNT:
      case T.HV_X64_MSR_TSC_FREQUENCY:
      case T.HV_X64_MSR_APIC_FREQUENCY:
        return false; // read-only
      case T.HV_X64_MSR_CRASH_CTL:
        return this.#writeCrashCtl(vp, value);
      case T.HV_X64_MSR_REENLIGHTENMENT_CONTROL: {
        if (value & T.HV_REENLIGHTENMENT_RSVDZ) return false;
        const target = Number(value >> 32n);
        if ((value & T.HV_REENLIGHTENMENT_ENABLED) && target >= this.#deps.vpCount) return false;
        this.#set(S_REENLIGHTENMENT, value);
        return true;
      }
      case T.HV_X64_MSR_TSC_EMULATION_CONTROL:
        if (value & ~1n) return false;
        this.#set(S_TSC_EMU_CONTROL, value);
        return true;
      case T.HV_X64_MSR_TSC_EMULATION_STATUS:
        // The TSC never changes frequency (no migration), so emulation is never in progress:
        // the guest may only acknowledge by writing 0.
        if (value !== 0n) return false;
        this.#set(S_TSC_EMU_STATUS, 0n);
        return true;
      case T.HV_X64_MSR_TSC_INVARIANT_CONTROL:
        // Bit 0 asks for CPUID 0x80000007 EDX[8]; the bit is already visible from the start
        // (CPUID cannot change after the first KVM_RUN), so the write is only recorded.
        if (value & ~1n) return false;
        this.#set(S_TSC_INVARIANT, value);
        return true;
    }
    if (index >= T.HV_X64_MSR_CRASH_P0 && index <= T.HV_X64_MSR_CRASH_P4) {
      this.#set(S_CRASH_P0 + index - T.HV_X64_MSR_CRASH_P0, value);
      return true;
    }
    return false;
  }

  #writeGuestOsId(value: bigint): boolean {
    withLock(this.#i32, I_LOCK, () => {
      this.#set(S_GUEST_OS_ID, value);
      if (value === 0n) {
        // Clearing the identity disables the hypercall page (TLFS 3.13).
        this.#set(S_HYPERCALL, this.#get(S_HYPERCALL) & ~T.HV_MSR_ENABLE);
      }
    });
    return true;
  }

  #writeHypercall(value: bigint): boolean {
    return withLock(this.#i32, I_LOCK, () => {
      const current = this.#get(S_HYPERCALL);
      if (current & T.HV_HYPERCALL_LOCKED) {
        // Locked until reset: the write is ignored.
        return true;
      }
      // Without a guest OS identity the enable bit stays clear (TLFS: "attempts to enable the
      // hypercall will fail. The enable bit will remain zero even if a one is written to it").
      if (this.#get(S_GUEST_OS_ID) === 0n) value &= ~T.HV_MSR_ENABLE;
      if (value & T.HV_MSR_ENABLE) {
        // The page is an overlay on guest RAM; outside RAM the write raises #GP. Its code
        // follows the mode of the vCPU that enables it: guests enable it from the mode their
        // kernel calls it in (64-bit Windows and Linux from long mode).
        const bytes = this.#deps.doorbells && this.#deps.callerLongMode?.()
          ? T.HYPERCALL_PAGE_CODE_LONG_MODE
          : T.HYPERCALL_PAGE_CODE;
        const code = this.#deps.memory.trySlice(pageGpa(value), bytes.length);
        if (!code) return false;
        code.set(bytes);
      }
      this.#set(S_HYPERCALL, value);
      return true;
    });
  }

  #writeReferenceTsc(value: bigint): boolean {
    withLock(this.#i32, I_LOCK, () => {
      this.#set(S_REFERENCE_TSC, value);
      if (value & T.HV_MSR_ENABLE) this.#fillTscPage(pageGpa(value));
    });
    return true;
  }

  /** Writes sequence 0, then scale and offset, then a new non-zero sequence. */
  #fillTscPage(gpa: number): void {
    const page = this.#deps.memory.trySlice(gpa, PAGE_SIZE);
    if (!page) {
      // TLFS: beyond guest RAM "the reference TSC page will not be accessible to the guest".
      limit((n) =>
        log.warn("reference TSC page at {gpa} is not guest RAM{dropped}", {
          gpa: `0x${gpa.toString(16)}`,
          dropped: n ? ` (${n} similar suppressed)` : "",
        })
      );
      return;
    }
    let seq = (Atomics.add(this.#i32, I_TSC_SEQUENCE, 1) + 1) >>> 0;
    if (seq === 0 || seq === 0xffffffff) {
      Atomics.store(this.#i32, I_TSC_SEQUENCE, 1);
      seq = 1;
    }
    const L = T.HV_REFERENCE_TSC_PAGE;
    L.set(page, 0, "tscSequence", 0);
    L.set(page, 0, "tscScale", this.tscParams.scale);
    L.set(page, 0, "tscOffset", this.tscParams.offset);
    L.set(page, 0, "tscSequence", seq);
  }

  #writeCrashCtl(vp: number, value: bigint): boolean {
    // Bits other than NOTIFY and NOTIFY_MSG are ignored rather than faulted: a #GP in the
    // middle of a bugcheck would only lose the report.
    this.#set(S_CRASH_CTL, value);
    if ((value & T.HV_CRASH_CTL_CRASH_NOTIFY) === 0n) return true;
    const params = [0, 1, 2, 3, 4].map((i) => this.#get(S_CRASH_P0 + i)) as [
      bigint,
      bigint,
      bigint,
      bigint,
      bigint,
    ];
    const report = buildCrashReport(
      { vp, guestOsId: this.guestOsId, params, control: value },
      this.#deps.memory,
    );
    log.error("{summary}", { summary: report.summary });
    this.#deps.crashSink?.(report);
    return true;
  }
}
