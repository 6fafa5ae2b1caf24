/**
 * Hypercalls. The guest calls the hypercall page, whose `out HV_HYPERCALL_PORT, al` exits to
 * the VP's worker; the worker hands the exit to `HypercallHandler.handle` with access to the
 * registers, and resumes the guest at the page's `ret`.
 *
 * Calling conventions (TLFS "Hypercall Inputs"/"Outputs"): 64-bit callers (EFER.LMA && CS.L)
 * pass the control value in RCX, the input GPA (fast: first input qword) in RDX, the output GPA
 * (fast: second input qword) in R8, and get the result in RAX. 32-bit callers use EDX:EAX,
 * EBX:ECX, EDI:ESI and get EDX:EAX. XMM fast calls continue the input block in XMM0-XMM5 (112
 * bytes in all). Slow calls read their input from one guest page and write their output, if
 * they have one, to one guest page.
 *
 * A page enabled from long mode answers most VMBus doorbells (fast HvSignalEvent to a channel)
 * without this handler: they become an `out dx, eax` that KVM completes through an eventfd
 * (`HYPERCALL_PAGE_CODE_LONG_MODE`, `signalDoorbell` for the ones that still exit). For 32-bit
 * callers the exit path remains the hot path of every doorbell, so it handles
 * registers as 32-bit halves (plain numbers, no BigInt), decodes the control value from those
 * halves, and allocates nothing: one reused `CallInput` per handler, the fast input block in a
 * preallocated buffer, slow input read in place through the RAM region's own DataView.
 *
 * Every guest value is checked before use and answered with the TLFS status; an unexpected
 * exception becomes HV_STATUS_INVALID_HYPERCALL_INPUT plus a rate-limited log, never a throw.
 *
 * A call whose enlightenment is off returns HV_STATUS_ACCESS_DENIED, the status the TLFS gives
 * for a missing partition privilege (HvCallPostMessage / HvCallSignalEvent) and the one KVM's
 * `hv-enforce-cpuid` returns for TLB flush, IPI and spin-wait; guests only make these calls when
 * CPUID offers them and fall back on any failure. Unknown codes, and the synthetic-debugger
 * calls when `syndbg` is off, return HV_STATUS_INVALID_HYPERCALL_CODE.
 *
 * XMM fast output (TLFS "XMM Fast Hypercalls": output returned in the XMM registers the input
 * did not use, offered by HV_X64_HYPERCALL_XMM_OUTPUT_AVAILABLE, CPUID 0x40000003 EDX bit 15) is
 * not offered and the bit is never set. Of the calls implemented here only the
 * synthetic-debugger ones (HvPostDebugData, HvRetrieveDebugData, HvResetDebugSession) have
 * output, and those are slow-only, as in KVM; the calls that guests make fast with output
 * (HvGetVpRegisters and friends) are not implemented. Any call with output made with the fast
 * bit gets HV_STATUS_INVALID_PARAMETER. Honouring the bit would take a KVM_SET_FPU per call for
 * output no guest would ask for.
 * @module
 */
import type { GuestMemory } from "../kvm/guest_memory.ts";
import { PAGE_SIZE } from "../kvm/guest_memory.ts";
import type { MsiSink } from "../machine/irq.ts";
import { getLogger, rateLimited } from "../util/log.ts";
import { hasFeature, type HvFeatureName, type HvFeatures } from "./features.ts";
import { HYPERCALL_UD, HYPERCALL_UNDECODED, type HypercallCounters } from "./hypercall_counters.ts";
import type { HvPartition } from "./partition.ts";
import { msiAddress } from "./shared.ts";
import * as T from "./tlfs.ts";
import type { SyntheticDebugger } from "./syndbg.ts";
import { allVps, decodeVpSet, vpsFromMask } from "./vpset.ts";

/** General-purpose registers a hypercall reads or writes. */
export type HypercallGpr = "rax" | "rbx" | "rcx" | "rdx" | "rsi" | "rdi" | "r8";

/**
 * The calling VP's registers during a hypercall exit; implemented by the caller over KVM.
 * Registers are read and written as 32-bit halves (unsigned numbers), so the exit path needs no
 * BigInt.
 */
export interface HypercallRegs {
  /** EFER.LMA and CS.L both set: the x64 calling convention applies. */
  is64Bit(): boolean;
  /** CR0.PE set and not virtual-8086 mode (hypercalls from real mode raise #UD). */
  protectedMode(): boolean;
  /** Current privilege level (hypercalls from CPL > 0 raise #UD). */
  cpl(): number;
  /** Bits 31:0 of a GPR, as an unsigned 32-bit number. */
  lo(reg: HypercallGpr): number;
  /** Bits 63:32 of a GPR, as an unsigned 32-bit number. */
  hi(reg: HypercallGpr): number;
  /**
   * Sets a GPR to `hi`:`lo` (two unsigned 32-bit numbers). The handler writes RAX, and RDX in
   * 32-bit mode.
   */
  set(reg: HypercallGpr, lo: number, hi: number): void;
  /** Copies XMM`index` (0-5), 16 bytes little-endian, into `into`. Only XMM fast calls read XMM. */
  readXmm(index: number, into: Uint8Array): void;
}

/**
 * Guest-to-host messages and events (HvPostMessage, HvSignalEvent), consumed by the VMBus host.
 * Called on the VP's worker thread: an implementation hands the request to the main thread.
 * Each returns an HV_STATUS (HV_STATUS_SUCCESS, HV_STATUS_INVALID_CONNECTION_ID,
 * HV_STATUS_INSUFFICIENT_BUFFERS, ...).
 */
export interface HvHostBridge {
  /** `payload` views guest memory and is only valid during the call: copy it to keep it. */
  postMessage(connectionId: number, messageType: number, payload: Uint8Array): number;
  signalEvent(connectionId: number, flagNumber: number): number;
}

/** Flushes guest TLBs; implemented by the caller. */
export interface TlbFlusher {
  /**
   * Flushes the whole guest TLB of every VP in `vps` (sorted, may include the caller); the VPs
   * are stopped and flushed before this returns.
   */
  flush(vps: number[]): void;
}

/** What the worker must do after `handle`. */
export type HypercallExit =
  /** Result written to the registers; resume the guest. */
  | "done"
  /** Not a hypercall (hypercall page not enabled): treat as a write to an unused port. */
  | "ignored"
  /** Inject #UD (CPL > 0, real mode, XMM input not offered); registers untouched. */
  | "ud";

/** Decoded hypercall input value. */
export interface HypercallControl {
  readonly code: number;
  readonly fast: boolean;
  /** Variable header size in qwords. */
  readonly varHead: number;
  readonly repCount: number;
  readonly repStart: number;
  /** Some RsvdZ bit is set. */
  readonly reservedSet: boolean;
}

type Mutable<T> = { -readonly [K in keyof T]: T[K] };

// The control value's fields within its two 32-bit halves (TLFS "Hypercall Inputs").
const FAST_BIT_LO = Number(T.HV_HYPERCALL_FAST_BIT);
const VARHEAD_SHIFT_LO = Number(T.HV_HYPERCALL_VARHEAD_SHIFT);
const VARHEAD_MASK = Number(T.HV_HYPERCALL_VARHEAD_MASK);
const REP_COUNT_SHIFT_HI = Number(T.HV_HYPERCALL_REP_COUNT_SHIFT) - 32;
const REP_START_SHIFT_HI = Number(T.HV_HYPERCALL_REP_START_SHIFT) - 32;
const REP_MASK = Number(T.HV_HYPERCALL_REP_MASK);
const RSVD_LO = Number(T.HV_HYPERCALL_RSVD_MASK & 0xffff_ffffn) | 0;
const RSVD_HI = Number(T.HV_HYPERCALL_RSVD_MASK >> 32n) | 0;
const REP_COMP_SHIFT_HI = Number(T.HV_HYPERCALL_REP_COMP_SHIFT) - 32;

/** Decodes the control value from its halves into `c` (the exit path's allocation-free form). */
function decodeControlInto(c: Mutable<HypercallControl>, lo: number, hi: number): void {
  c.code = lo & 0xffff;
  c.fast = (lo & FAST_BIT_LO) !== 0;
  c.varHead = (lo >>> VARHEAD_SHIFT_LO) & VARHEAD_MASK;
  c.repCount = (hi >>> REP_COUNT_SHIFT_HI) & REP_MASK;
  c.repStart = (hi >>> REP_START_SHIFT_HI) & REP_MASK;
  c.reservedSet = (lo & RSVD_LO) !== 0 || (hi & RSVD_HI) !== 0;
}

/** A control value of all zeros, to decode into. */
function zeroControl(): Mutable<HypercallControl> {
  return { code: 0, fast: false, varHead: 0, repCount: 0, repStart: 0, reservedSet: false };
}

/** Decodes the 64-bit hypercall input value (TLFS "Hypercall Inputs"). */
export function decodeControl(value: bigint): HypercallControl {
  const v = BigInt.asUintN(64, value);
  const c = zeroControl();
  decodeControlInto(c, Number(v & 0xffff_ffffn), Number(v >> 32n));
  return c;
}

/** Builds a hypercall input value (the guest side; used by tests and tools). */
export function encodeControl(c: {
  code: number;
  fast?: boolean;
  varHead?: number;
  repCount?: number;
  repStart?: number;
}): bigint {
  return BigInt(c.code & 0xffff) |
    (c.fast ? T.HV_HYPERCALL_FAST_BIT : 0n) |
    (BigInt((c.varHead ?? 0) & 0x3ff) << T.HV_HYPERCALL_VARHEAD_SHIFT) |
    (BigInt((c.repCount ?? 0) & 0xfff) << T.HV_HYPERCALL_REP_COUNT_SHIFT) |
    (BigInt((c.repStart ?? 0) & 0xfff) << T.HV_HYPERCALL_REP_START_SHIFT);
}

/** A hypercall result value: status in bits 15:0, reps completed in bits 43:32. */
export function hypercallResult(status: number, repsCompleted = 0): bigint {
  return BigInt(status & 0xffff) | (BigInt(repsCompleted & 0xfff) << T.HV_HYPERCALL_REP_COMP_SHIFT);
}

/** What the hypercall handler needs. */
export interface HypercallDeps {
  features: HvFeatures;
  partition: HvPartition;
  memory: GuestMemory;
  /** IPIs: fixed-mode MSIs to the target VPs' APICs. */
  msi: MsiSink;
  flusher: TlbFlusher;
  /** HvPostMessage / HvSignalEvent target; absent means no connection exists. */
  bridge?: HvHostBridge;
  vpCount: number;
  /** HvNotifyLongSpinWait: give the CPU away (e.g. sched_yield); optional. */
  yieldCpu?: (vp: number) => void;
  /** The call table; default `HYPERCALLS` (tests pass their own to exercise the mechanism). */
  calls?: ReadonlyMap<number, CallSpec>;
  /** The synthetic debugger's hypercall side (`syndbg`); absent: the calls are refused. */
  syndbg?: DebugHypercalls;
  /** Counts calls by code and status, and flush/IPI targets (`status` of the control socket). */
  counters?: HypercallCounters;
}

/** What the synthetic-debugger hypercalls are handed to (`SyntheticDebugger` implements it). */
export type DebugHypercalls = Pick<
  SyntheticDebugger,
  "postDebugData" | "retrieveDebugData" | "resetDebugSession"
>;

const EMPTY: Uint8Array = new Uint8Array(0);
const EMPTY_VIEW = new DataView(EMPTY.buffer);

/**
 * The input block of the call being handled, validated and bounded: `size` bytes at `base` in
 * `bytes` (and `view`, over the same memory). For a fast call that is the handler's register
 * block; for a slow call the guest RAM region itself, read in place. One object per handler,
 * reused by every call: a call reads it during `run` and keeps nothing.
 *
 * The accessors refuse offsets past `size` (RangeError, which the handler turns into
 * HV_STATUS_INVALID_HYPERCALL_INPUT). A `Layout.get(input.bytes, input.base, field)` is bounded
 * by the backing bytes only: use it for fields inside the call's fixed header, which `size`
 * always covers.
 */
export class CallInput {
  /** Calling VP. */
  vp = 0;
  /** The decoded control value. */
  readonly control: HypercallControl = zeroControl();
  /** Backing bytes; the input is `bytes[base, base + size)`. */
  bytes: Uint8Array = EMPTY;
  /** DataView over the same backing memory as `bytes`. */
  view: DataView = EMPTY_VIEW;
  /** Offset of the input block in `bytes`/`view`. */
  base = 0;
  /** Input size in bytes: fixed header, variable header, then rep elements. */
  size = 0;
  /** Guest physical address of a slow call's input block (-1 for a fast call). */
  gpa = -1;

  #at(offset: number, width: number): number {
    if (!(offset >= 0 && offset + width <= this.size)) {
      throw new RangeError(`hypercall input read of ${width} bytes at ${offset} past ${this.size}`);
    }
    return this.base + offset;
  }

  /** Unsigned byte at `offset`. */
  u8(offset: number): number {
    return this.view.getUint8(this.#at(offset, 1));
  }
  /** Little-endian u16 at `offset`. */
  u16(offset: number): number {
    return this.view.getUint16(this.#at(offset, 2), true);
  }
  /** Little-endian u32 at `offset`. */
  u32(offset: number): number {
    return this.view.getUint32(this.#at(offset, 4), true);
  }
  /** Little-endian u64 at `offset`. */
  u64(offset: number): bigint {
    return this.view.getBigUint64(this.#at(offset, 8), true);
  }
  /** A view of `length` input bytes at `offset` (allocates: for payloads handed on). */
  subarray(offset: number, length: number): Uint8Array {
    const at = this.#at(offset, length);
    return this.bytes.subarray(at, at + length);
  }
}

/**
 * One hypercall: what it needs enabled, the shape of its input and output, and the code that
 * runs it. `run` returns the HV_STATUS; a rep call that succeeds completed every rep. To add a
 * call with output, give `output` (its size, or a function of the validated input when it
 * depends on it, e.g. a header plus a byte count the input names) and write the result into
 * the `output` view `run` receives. Built by `defineCall`, so every spec has the same shape
 * (one hidden class: the exit path's property loads stay monomorphic).
 */
export interface CallSpec {
  readonly name: string;
  /** Feature that must be on (else HV_STATUS_ACCESS_DENIED); or a predicate. */
  readonly feature: HvFeatureName | ((f: HvFeatures) => boolean);
  readonly rep: boolean;
  readonly varHead: boolean;
  /** Bytes of fixed input header. */
  readonly fixed: number;
  /** Bytes per rep element. */
  readonly repElem: number;
  /** May use the XMM fast convention (input over 16 bytes in registers). */
  readonly xmmFast: boolean;
  /** The fast convention is refused (HV_STATUS_INVALID_PARAMETER). */
  readonly slowOnly: boolean;
  /**
   * Bytes of output the call writes at the output GPA (0: none). The block is validated like
   * an input block: 8-byte aligned, inside one page, RAM (else HV_STATUS_INVALID_ALIGNMENT). A
   * call with output is slow-only: XMM fast output is not offered (see the module doc).
   */
  readonly output: number | ((input: CallInput) => number);
  /**
   * Runs the call; `output` views exactly the validated output block in guest memory (empty for
   * calls without output) and is valid only during the call.
   */
  readonly run: (h: HypercallHandler, input: CallInput, output: Uint8Array) => number;
}

/** A `CallSpec` with defaults: simple call, no header, no output, slow and fast forms. */
export function defineCall(
  s: Pick<CallSpec, "name" | "feature" | "run"> & Partial<CallSpec>,
): CallSpec {
  return {
    name: s.name,
    feature: s.feature,
    rep: s.rep ?? false,
    varHead: s.varHead ?? false,
    fixed: s.fixed ?? 0,
    repElem: s.repElem ?? 0,
    xmmFast: s.xmmFast ?? false,
    slowOnly: s.slowOnly ?? false,
    output: s.output ?? 0,
    run: s.run,
  };
}

const log = getLogger("hyperv", "hypercall");
const limit = rateLimited();

function flushSpec(name: string, ex: boolean, list: boolean): CallSpec {
  return defineCall({
    name,
    feature: "tlbflush",
    rep: list,
    varHead: ex,
    fixed: ex ? T.HV_TLB_FLUSH_EX.size : T.HV_TLB_FLUSH.size,
    repElem: list ? 8 : 0,
    xmmFast: true,
    run: (h, input) => h.flushVirtualAddress(input, ex, list),
  });
}

/** The synthetic-debugger calls: slow-only, as in KVM. */
function debugSpec(
  name: string,
  fixed: number,
  output: CallSpec["output"],
  run: CallSpec["run"],
): CallSpec {
  return defineCall({ name, feature: "syndbg", slowOnly: true, fixed, output, run });
}

/** Every hypercall implemented here, by call code. */
export const HYPERCALLS: ReadonlyMap<number, CallSpec> = new Map<number, CallSpec>([
  [T.HVCALL_FLUSH_VIRTUAL_ADDRESS_SPACE, flushSpec("HvFlushVirtualAddressSpace", false, false)],
  [T.HVCALL_FLUSH_VIRTUAL_ADDRESS_LIST, flushSpec("HvFlushVirtualAddressList", false, true)],
  [T.HVCALL_FLUSH_VIRTUAL_ADDRESS_SPACE_EX, flushSpec("HvFlushVirtualAddressSpaceEx", true, false)],
  [T.HVCALL_FLUSH_VIRTUAL_ADDRESS_LIST_EX, flushSpec("HvFlushVirtualAddressListEx", true, true)],
  [
    T.HVCALL_NOTIFY_LONG_SPIN_WAIT,
    defineCall({
      name: "HvNotifyLongSpinWait",
      feature: (f) => f.spinlocks !== T.HV_SPINLOCK_NEVER_NOTIFY,
      fixed: 8,
      run: (h, input) => h.notifyLongSpinWait(input),
    }),
  ],
  [
    T.HVCALL_SEND_IPI,
    defineCall({
      name: "HvSendSyntheticClusterIpi",
      feature: "ipi",
      fixed: T.HV_SEND_IPI.size,
      run: (h, input) => h.sendIpi(input, false),
    }),
  ],
  [
    T.HVCALL_SEND_IPI_EX,
    defineCall({
      name: "HvSendSyntheticClusterIpiEx",
      feature: "ipi",
      varHead: true,
      fixed: T.HV_SEND_IPI_EX.size,
      xmmFast: true,
      run: (h, input) => h.sendIpi(input, true),
    }),
  ],
  [
    T.HVCALL_POST_MESSAGE,
    defineCall({
      name: "HvPostMessage",
      feature: "synic",
      fixed: T.HV_INPUT_POST_MESSAGE.size,
      run: (h, input) => h.postMessage(input),
    }),
  ],
  [
    T.HVCALL_SIGNAL_EVENT,
    defineCall({
      name: "HvSignalEvent",
      feature: "synic",
      fixed: T.HV_INPUT_SIGNAL_EVENT.size,
      run: (h, input) => h.signalEvent(input),
    }),
  ],
  [
    T.HVCALL_POST_DEBUG_DATA,
    debugSpec(
      "HvPostDebugData",
      T.HV_INPUT_POST_DEBUG_DATA.size,
      T.HV_OUTPUT_POST_DEBUG_DATA.size,
      (h, input, output) => h.postDebugData(input, output),
    ),
  ],
  [
    T.HVCALL_RETRIEVE_DEBUG_DATA,
    debugSpec(
      "HvRetrieveDebugData",
      T.HV_INPUT_RETRIEVE_DEBUG_DATA.size,
      // The header, then room for the frame: `count` bytes (capped; the debugger refuses more).
      (input) =>
        T.HV_OUTPUT_RETRIEVE_DEBUG_DATA.size +
        Math.min(input.u32(0), T.HV_DEBUG_MAXIMUM_DATA_SIZE),
      (h, input, output) =>
        h.syndbgCall("retrieveDebugData", input.subarray(0, input.size), output),
    ),
  ],
  [
    T.HVCALL_RESET_DEBUG_SESSION,
    debugSpec(
      "HvResetDebugSession",
      T.HV_INPUT_RESET_DEBUG_SESSION.size,
      T.HV_OUTPUT_RESET_DEBUG_SESSION.size,
      (h, input, output) =>
        h.syndbgCall("resetDebugSession", input.subarray(0, input.size), output),
    ),
  ],
]);

const SYNDBG_CALLS = new Set([
  T.HVCALL_POST_DEBUG_DATA,
  T.HVCALL_RETRIEVE_DEBUG_DATA,
  T.HVCALL_RESET_DEBUG_SESSION,
]);

/** `#dispatch` result asking for #UD instead of a status. */
const UD = -1;
/** GPA bits 63:32 at or above this are beyond any guest RAM (52-bit physical addresses). */
const GPA_HI_LIMIT = 1 << 20;

/** Handles the hypercalls of every VP; one instance per thread that takes hypercall exits. */
export class HypercallHandler {
  readonly #d: HypercallDeps;
  readonly #calls: ReadonlyMap<number, CallSpec>;
  readonly #input = new CallInput();
  /** The fast input block: RDX, R8, XMM0-XMM5. */
  readonly #fast = new Uint8Array(T.HV_XMM_FAST_INPUT_MAX);
  readonly #fastView = new DataView(this.#fast.buffer);
  readonly #fastWords = new Uint32Array(this.#fast.buffer, 0, 4);
  /** Where each XMM register lands in `#fast` (views built once). */
  readonly #xmmSlots = Array.from(
    { length: T.HV_HYPERCALL_XMM_REGISTERS },
    (_, i) => this.#fast.subarray(T.HV_FAST_INPUT_MAX + i * 16, T.HV_FAST_INPUT_MAX + i * 16 + 16),
  );
  /** Reps completed by the last `#dispatch`. */
  #reps = 0;

  constructor(deps: HypercallDeps) {
    this.#d = deps;
    this.#calls = deps.calls ?? HYPERCALLS;
  }

  /**
   * Handles the hypercall exit of VP `vp`. Writes the result value into RAX (x64) or EDX:EAX
   * (x86) and returns "done"; or returns "ud" / "ignored" without touching the registers.
   * Never throws.
   */
  handle(vp: number, regs: HypercallRegs): HypercallExit {
    let x64 = true;
    let status: number;
    let reps = 0;
    try {
      if (!this.#d.partition.hypercallsEnabled) return "ignored";
      if (!regs.protectedMode() || regs.cpl() !== 0) {
        this.#d.counters?.record(vp, HYPERCALL_UNDECODED, HYPERCALL_UD);
        return "ud";
      }
      x64 = regs.is64Bit();
      // x64: RCX control, RDX input, R8 output. x86: EDX:EAX, EBX:ECX, EDI:ESI (upper halves
      // of the 64-bit registers are ignored).
      const r = x64
        ? this.#dispatch(
          vp,
          regs.lo("rcx"),
          regs.hi("rcx"),
          regs.lo("rdx"),
          regs.hi("rdx"),
          regs.lo("r8"),
          regs.hi("r8"),
          regs,
        )
        : this.#dispatch(
          vp,
          regs.lo("rax"),
          regs.lo("rdx"),
          regs.lo("rcx"),
          regs.lo("rbx"),
          regs.lo("rsi"),
          regs.lo("rdi"),
          regs,
        );
      this.#d.counters?.record(vp, this.#input.control.code, r === UD ? HYPERCALL_UD : r);
      if (r === UD) return "ud";
      status = r;
      reps = this.#reps;
    } catch (e) {
      logFailure(vp, e);
      status = T.HV_STATUS_INVALID_HYPERCALL_INPUT;
      reps = 0;
      this.#d.counters?.record(vp, this.#input.control.code, status);
    }
    try {
      // Result: status in bits 15:0, reps completed in bits 43:32 (bits 11:0 of the high half).
      const hi = (reps & REP_MASK) << REP_COMP_SHIFT_HI;
      if (x64) {
        regs.set("rax", status & 0xffff, hi);
      } else {
        regs.set("rdx", hi, 0);
        regs.set("rax", status & 0xffff, 0);
      }
    } catch (e) {
      logResultFailure(vp, e);
    }
    return "done";
  }

  /**
   * Validates and runs one call: the control value, then the two parameter registers (GPAs, or
   * the first two fast input qwords), each as (low, high) 32-bit halves. `regs` is read only
   * for XMM fast input. Returns the status (reps completed in `#reps`) or `UD`.
   */
  #dispatch(
    vp: number,
    controlLo: number,
    controlHi: number,
    inLo: number,
    inHi: number,
    outLo: number,
    outHi: number,
    regs: Pick<HypercallRegs, "readXmm">,
  ): number {
    this.#reps = 0;
    const input = this.#input;
    const c = input.control as Mutable<HypercallControl>;
    decodeControlInto(c, controlLo, controlHi);
    const spec = this.#calls.get(c.code);
    if (spec === undefined) return T.HV_STATUS_INVALID_HYPERCALL_CODE;
    const f = this.#d.features;
    const allowed = typeof spec.feature === "function"
      ? spec.feature(f)
      : hasFeature(f, spec.feature);
    if (!allowed) {
      return SYNDBG_CALLS.has(c.code)
        ? T.HV_STATUS_INVALID_HYPERCALL_CODE
        : T.HV_STATUS_ACCESS_DENIED;
    }
    if (c.reservedSet) return T.HV_STATUS_INVALID_HYPERCALL_INPUT;
    if (
      spec.rep ? c.repCount === 0 || c.repStart >= c.repCount : c.repCount !== 0 || c.repStart !== 0
    ) {
      return T.HV_STATUS_INVALID_HYPERCALL_INPUT;
    }
    if (!spec.varHead && c.varHead !== 0) return T.HV_STATUS_INVALID_HYPERCALL_INPUT;
    const size = spec.fixed + c.varHead * 8 + (spec.rep ? c.repCount * spec.repElem : 0);

    input.vp = vp;
    if (c.fast) {
      if (spec.slowOnly || spec.output !== 0) return T.HV_STATUS_INVALID_PARAMETER;
      if (size > T.HV_FAST_INPUT_MAX) {
        if (!spec.xmmFast || size > T.HV_XMM_FAST_INPUT_MAX) {
          return T.HV_STATUS_INVALID_HYPERCALL_INPUT;
        }
        // TLFS: using XMM input when it is not offered raises #UD.
        if (!hasFeature(f, "xmm-input")) return UD;
      }
      this.#fastInput(inLo, inHi, outLo, outHi, size, regs);
    } else {
      const bad = this.#slowInput(inLo, inHi, size);
      if (bad !== T.HV_STATUS_SUCCESS) return bad;
    }
    let output: Uint8Array = EMPTY;
    if (spec.output !== 0) {
      const outSize = typeof spec.output === "function" ? spec.output(input) : spec.output;
      const out = this.#slowOutput(outLo, outHi, outSize);
      if (typeof out === "number") return out;
      output = out;
    }
    const status = spec.run(this, input, output);
    if (status === T.HV_STATUS_SUCCESS && spec.rep) this.#reps = c.repCount;
    return status;
  }

  /** The fast input block: RDX, R8, then as many XMM registers as `size` needs. */
  #fastInput(
    inLo: number,
    inHi: number,
    outLo: number,
    outHi: number,
    size: number,
    regs: Pick<HypercallRegs, "readXmm">,
  ): void {
    const w = this.#fastWords;
    w[0] = inLo;
    w[1] = inHi;
    w[2] = outLo;
    w[3] = outHi;
    for (let i = 0; T.HV_FAST_INPUT_MAX + i * 16 < size; i++) regs.readXmm(i, this.#xmmSlots[i]!);
    const input = this.#input;
    input.bytes = this.#fast;
    input.view = this.#fastView;
    input.base = 0;
    input.size = size;
    input.gpa = -1;
  }

  /** Points the input at the block in guest memory; or returns the TLFS status refusing it. */
  #slowInput(lo: number, hi: number, size: number): number {
    const input = this.#input;
    if (size === 0) {
      input.bytes = EMPTY;
      input.view = EMPTY_VIEW;
      input.base = 0;
      input.size = 0;
      input.gpa = -1;
      return T.HV_STATUS_SUCCESS;
    }
    const gpa = this.#blockGpa(lo, hi, size);
    if (gpa < 0) return T.HV_STATUS_INVALID_ALIGNMENT;
    const region = this.#d.memory.regionOf(gpa, size);
    if (region === undefined) return T.HV_STATUS_INVALID_ALIGNMENT; // not RAM
    input.bytes = region.bytes;
    input.view = region.view;
    input.base = gpa - region.gpa;
    input.size = size;
    input.gpa = gpa;
    return T.HV_STATUS_SUCCESS;
  }

  /** The output block in guest memory, or the TLFS status refusing it. */
  #slowOutput(lo: number, hi: number, size: number): Uint8Array | number {
    if (size === 0) return EMPTY;
    const gpa = this.#blockGpa(lo, hi, size);
    if (gpa < 0) return T.HV_STATUS_INVALID_ALIGNMENT;
    return this.#d.memory.trySlice(gpa, size) ?? T.HV_STATUS_INVALID_ALIGNMENT; // not RAM
  }

  /**
   * The GPA of a parameter block of `size` bytes, or -1 when the TLFS refuses it with
   * HV_STATUS_INVALID_ALIGNMENT: not 8-byte aligned, or spanning pages.
   */
  #blockGpa(lo: number, hi: number, size: number): number {
    if ((lo & 7) !== 0 || hi >= GPA_HI_LIMIT) return -1;
    if ((lo & (PAGE_SIZE - 1)) + size > PAGE_SIZE) return -1;
    return hi * 0x1_0000_0000 + lo;
  }

  // --- Calls --------------------------------------------------------------------------------

  /** HvFlushVirtualAddressSpace/List and their Ex forms: always a full flush of the targets. */
  flushVirtualAddress(input: CallInput, ex: boolean, list: boolean): number {
    const flags = input.u64(8);
    if (flags & ~T.HV_FLUSH_FLAGS_VALID) return T.HV_STATUS_INVALID_PARAMETER;
    if (
      (flags & T.HV_FLUSH_USE_EXTENDED_RANGE_FORMAT) &&
      (!list || !hasFeature(this.#d.features, "tlbflush-ext"))
    ) {
      return T.HV_STATUS_INVALID_PARAMETER;
    }
    let vps: number[];
    if (!ex) {
      const mask = input.u64(16);
      // Like KVM: an empty mask without HV_FLUSH_ALL_PROCESSORS means all processors (Windows
      // Server 2012 sends it and expects a flush).
      vps = (flags & T.HV_FLUSH_ALL_PROCESSORS) || mask === 0n
        ? allVps(this.#d.vpCount)
        : vpsFromMask(mask, this.#d.vpCount);
    } else {
      const set = decodeVpSet(
        input.u64(16),
        input.u64(24),
        input.control.varHead,
        (i) => input.u64(T.HV_TLB_FLUSH_EX.size + i * 8),
        this.#d.vpCount,
      );
      if (!set.ok) return set.status;
      vps = (flags & T.HV_FLUSH_ALL_PROCESSORS) ? allVps(this.#d.vpCount) : set.vps;
    }
    // The GVA list (rep elements) is not interpreted: the guest CR3 of a running VP is unknown
    // here, so every target's whole TLB is flushed, which covers any range.
    if (vps.length > 0) this.#d.flusher.flush(vps);
    const counters = this.#d.counters;
    if (counters) { for (const vp of vps) counters.flushTarget(input.vp, vp); }
    return T.HV_STATUS_SUCCESS;
  }

  /** HvSendSyntheticClusterIpi / Ex: a fixed interrupt to each target VP. */
  sendIpi(input: CallInput, ex: boolean): number {
    const vector = input.u32(0);
    const vtl = input.u8(4);
    if (vector < T.HV_IPI_LOW_VECTOR || vector > T.HV_IPI_HIGH_VECTOR || vtl !== 0) {
      return T.HV_STATUS_INVALID_PARAMETER;
    }
    let vps: number[];
    if (!ex) {
      vps = vpsFromMask(input.u64(8), this.#d.vpCount);
    } else {
      const set = decodeVpSet(
        input.u64(8),
        input.u64(16),
        input.control.varHead,
        (i) => input.u64(T.HV_SEND_IPI_EX.size + i * 8),
        this.#d.vpCount,
      );
      if (!set.ok) return set.status;
      vps = set.vps;
    }
    const counters = this.#d.counters;
    for (const vp of vps) {
      this.#d.msi.signalMsi(msiAddress(vp), vector);
      counters?.ipiTarget(input.vp, vp);
    }
    return T.HV_STATUS_SUCCESS;
  }

  /** HvNotifyLongSpinWait: the guest spun too long on a lock; let another thread run. */
  notifyLongSpinWait(input: CallInput): number {
    this.#d.yieldCpu?.(input.vp);
    return T.HV_STATUS_SUCCESS;
  }

  /** HvPostMessage: a message from the guest to a host connection (VMBus). */
  postMessage(input: CallInput): number {
    const L = T.HV_INPUT_POST_MESSAGE;
    const connectionId = L.get(input.bytes, input.base, "connectionId");
    const messageType = L.get(input.bytes, input.base, "messageType");
    const payloadSize = L.get(input.bytes, input.base, "payloadSize");
    if (
      messageType === 0 || (messageType & T.HV_MESSAGE_TYPE_HYPERVISOR_BIT) !== 0 ||
      payloadSize > T.HV_MESSAGE_PAYLOAD_MAX
    ) {
      return T.HV_STATUS_INVALID_PARAMETER;
    }
    const bridge = this.#d.bridge;
    if (!bridge || (connectionId & ~T.HV_CONNECTION_ID_MASK) !== 0) {
      return T.HV_STATUS_INVALID_CONNECTION_ID;
    }
    const payload = input.subarray(L.fields.payload.offset, payloadSize);
    return bridgeStatus(bridge.postMessage(connectionId, messageType, payload));
  }

  /** HvSignalEvent: an event from the guest to a host connection (VMBus channel doorbell). */
  signalEvent(input: CallInput): number {
    // The VMBus doorbell: fields read at the layout's offsets, without Layout.get's lookup.
    const F = T.HV_INPUT_SIGNAL_EVENT.fields;
    const connectionId = input.u32(F.connectionId.offset);
    if (input.u16(F.reserved.offset) !== 0) return T.HV_STATUS_INVALID_HYPERCALL_INPUT;
    const bridge = this.#d.bridge;
    if (!bridge || (connectionId & ~T.HV_CONNECTION_ID_MASK) !== 0) {
      return T.HV_STATUS_INVALID_CONNECTION_ID;
    }
    return bridgeStatus(bridge.signalEvent(connectionId, input.u16(F.flagNumber.offset)));
  }

  /**
   * HvSignalEvent as the long-mode hypercall page's doorbell (`out dx, eax` to the port named
   * by the connection id, flag number 0), when no eventfd completed it in the kernel.
   */
  signalDoorbell(connectionId: number): number {
    if (!hasFeature(this.#d.features, "synic")) return T.HV_STATUS_ACCESS_DENIED;
    const bridge = this.#d.bridge;
    if (!bridge || connectionId < T.HV_DOORBELL_FIRST || connectionId > T.HV_DOORBELL_LAST) {
      return T.HV_STATUS_INVALID_CONNECTION_ID;
    }
    return bridgeStatus(bridge.signalEvent(connectionId, 0));
  }

  /**
   * HvPostDebugData: the fixed header names `count` data bytes that follow it in the same input
   * block; the block, data included, must not cross a page (TLFS: parameter blocks never do).
   */
  postDebugData(input: CallInput, output: Uint8Array): number {
    const count = input.u32(0);
    if (count > T.HV_DEBUG_MAXIMUM_DATA_SIZE) return T.HV_STATUS_INVALID_PARAMETER;
    const size = T.HV_INPUT_POST_DEBUG_DATA.size + count;
    if (input.gpa < 0 || (input.gpa % PAGE_SIZE) + size > PAGE_SIZE) {
      return T.HV_STATUS_INVALID_ALIGNMENT;
    }
    const block = this.#d.memory.trySlice(input.gpa, size);
    if (block === undefined) return T.HV_STATUS_INVALID_ALIGNMENT;
    return this.syndbgCall("postDebugData", block, output);
  }

  /** Hands a debugger call to the synthetic debugger (which validates the rest). */
  syndbgCall(
    call: keyof DebugHypercalls,
    input: Uint8Array,
    output: Uint8Array,
  ): number {
    const d = this.#d.syndbg;
    // Without a debugger the call does not exist (as with `syndbg` off).
    return d ? d[call](input, output) : T.HV_STATUS_INVALID_HYPERCALL_CODE;
  }
}

// The logging lives outside `handle`: a closure there capturing `vp` would make V8 allocate a
// context for it on every call, failed or not.
function logFailure(vp: number, e: unknown): void {
  limit((n) =>
    log.error("hypercall on VP {vp} failed: {error}{dropped}", {
      vp,
      error: e instanceof Error ? e.stack ?? e.message : String(e),
      dropped: n ? ` (${n} similar suppressed)` : "",
    })
  );
}

function logResultFailure(vp: number, e: unknown): void {
  limit(() =>
    log.error("hypercall on VP {vp}: cannot set result: {error}", { vp, error: String(e) })
  );
}

function bridgeStatus(s: number): number {
  return Number.isInteger(s) && s >= 0 && s <= 0xffff ? s : T.HV_STATUS_INVALID_PARAMETER;
}
