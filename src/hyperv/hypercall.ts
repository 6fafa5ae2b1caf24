/**
 * Hypercalls. The guest calls the hypercall page, whose `out HV_HYPERCALL_PORT, al` exits to
 * the VP's worker; the worker hands the exit to `HypercallHandler.handle` with access to the
 * registers, and resumes the guest at the page's `ret`.
 *
 * Calling conventions (TLFS "Hypercall Inputs"/"Outputs"): 64-bit callers (EFER.LMA && CS.L)
 * pass the control value in RCX, the input GPA (fast: first input qword) in RDX, the output GPA
 * (fast: second input qword) in R8, and get the result in RAX. 32-bit callers use EDX:EAX,
 * EBX:ECX, EDI:ESI and get EDX:EAX. XMM fast calls continue the input block in XMM0-XMM5 (112
 * bytes in all). Slow calls read their input from one guest page.
 *
 * Every guest value is checked before use and answered with the TLFS status; an unexpected
 * exception becomes HV_STATUS_INVALID_HYPERCALL_INPUT plus a rate-limited log, never a throw.
 *
 * A call whose enlightenment is off returns HV_STATUS_ACCESS_DENIED, the status the TLFS gives
 * for a missing partition privilege (HvCallPostMessage / HvCallSignalEvent) and the one KVM's
 * `hv-enforce-cpuid` returns for TLB flush, IPI and spin-wait; guests only make these calls when
 * CPUID offers them and fall back on any failure. Unknown codes, and the synthetic-debugger
 * calls when `syndbg` is off, return HV_STATUS_INVALID_HYPERCALL_CODE.
 * @module
 */
import type { GuestMemory } from "../kvm/guest_memory.ts";
import { PAGE_SIZE } from "../kvm/guest_memory.ts";
import type { MsiSink } from "../machine/irq.ts";
import { getLogger, rateLimited } from "../util/log.ts";
import { hasFeature, type HvFeatureName, type HvFeatures } from "./features.ts";
import type { HvPartition } from "./partition.ts";
import { msiAddress } from "./shared.ts";
import * as T from "./tlfs.ts";
import { allVps, decodeVpSet, vpsFromMask } from "./vpset.ts";

/** General-purpose registers a hypercall reads or writes. */
export type HypercallGpr = "rax" | "rbx" | "rcx" | "rdx" | "rsi" | "rdi" | "r8";

/** The calling VP's registers during a hypercall exit; implemented by the caller over KVM. */
export interface HypercallRegs {
  /** EFER.LMA and CS.L both set: the x64 calling convention applies. */
  is64Bit(): boolean;
  /** CR0.PE set and not virtual-8086 mode (hypercalls from real mode raise #UD). */
  protectedMode(): boolean;
  /** Current privilege level (hypercalls from CPL > 0 raise #UD). */
  cpl(): number;
  /** Full 64-bit value of a GPR. */
  getGpr(reg: HypercallGpr): bigint;
  /** Sets a GPR (the handler writes RAX, and RDX in 32-bit mode). */
  setGpr(reg: HypercallGpr, value: bigint): void;
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

/** Decodes the 64-bit hypercall input value (TLFS "Hypercall Inputs"). */
export function decodeControl(value: bigint): HypercallControl {
  const v = BigInt.asUintN(64, value);
  return {
    code: Number(v & 0xffffn),
    fast: (v & T.HV_HYPERCALL_FAST_BIT) !== 0n,
    varHead: Number((v >> T.HV_HYPERCALL_VARHEAD_SHIFT) & T.HV_HYPERCALL_VARHEAD_MASK),
    repCount: Number((v >> T.HV_HYPERCALL_REP_COUNT_SHIFT) & T.HV_HYPERCALL_REP_MASK),
    repStart: Number((v >> T.HV_HYPERCALL_REP_START_SHIFT) & T.HV_HYPERCALL_REP_MASK),
    reservedSet: (v & T.HV_HYPERCALL_RSVD_MASK) !== 0n,
  };
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
}

/** Input of one call, already validated and bounded. */
interface CallInput {
  readonly vp: number;
  readonly control: HypercallControl;
  /** Fixed header, variable header, then rep elements (exactly `inputSize` bytes). */
  readonly bytes: Uint8Array;
  readonly view: DataView;
}

interface CallResult {
  status: number;
  reps?: number;
}

interface CallSpec {
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
  /** The fast convention is refused (HV_STATUS_INVALID_HYPERCALL_INPUT). */
  readonly slowOnly?: boolean;
  readonly run: (h: HypercallHandler, input: CallInput) => CallResult;
}

const log = getLogger("hyperv", "hypercall");
const limit = rateLimited();

function flushSpec(name: string, ex: boolean, list: boolean): CallSpec {
  return {
    name,
    feature: "tlbflush",
    rep: list,
    varHead: ex,
    fixed: ex ? T.HV_TLB_FLUSH_EX.size : T.HV_TLB_FLUSH.size,
    repElem: list ? 8 : 0,
    xmmFast: true,
    run: (h, input) => h.flushVirtualAddress(input, ex, list),
  };
}

const DEBUG_CALL: Omit<CallSpec, "name"> = {
  feature: "syndbg",
  rep: false,
  varHead: false,
  fixed: 0,
  repElem: 0,
  xmmFast: false,
  slowOnly: true,
  run: (h) => h.debugData(),
};

const CALLS: ReadonlyMap<number, CallSpec> = new Map<number, CallSpec>([
  [T.HVCALL_FLUSH_VIRTUAL_ADDRESS_SPACE, flushSpec("HvFlushVirtualAddressSpace", false, false)],
  [T.HVCALL_FLUSH_VIRTUAL_ADDRESS_LIST, flushSpec("HvFlushVirtualAddressList", false, true)],
  [T.HVCALL_FLUSH_VIRTUAL_ADDRESS_SPACE_EX, flushSpec("HvFlushVirtualAddressSpaceEx", true, false)],
  [T.HVCALL_FLUSH_VIRTUAL_ADDRESS_LIST_EX, flushSpec("HvFlushVirtualAddressListEx", true, true)],
  [T.HVCALL_NOTIFY_LONG_SPIN_WAIT, {
    name: "HvNotifyLongSpinWait",
    feature: (f) => f.spinlocks !== T.HV_SPINLOCK_NEVER_NOTIFY,
    rep: false,
    varHead: false,
    fixed: 8,
    repElem: 0,
    xmmFast: false,
    run: (h, input) => h.notifyLongSpinWait(input),
  }],
  [T.HVCALL_SEND_IPI, {
    name: "HvSendSyntheticClusterIpi",
    feature: "ipi",
    rep: false,
    varHead: false,
    fixed: T.HV_SEND_IPI.size,
    repElem: 0,
    xmmFast: false,
    run: (h, input) => h.sendIpi(input, false),
  }],
  [T.HVCALL_SEND_IPI_EX, {
    name: "HvSendSyntheticClusterIpiEx",
    feature: "ipi",
    rep: false,
    varHead: true,
    fixed: T.HV_SEND_IPI_EX.size,
    repElem: 0,
    xmmFast: true,
    run: (h, input) => h.sendIpi(input, true),
  }],
  [T.HVCALL_POST_MESSAGE, {
    name: "HvPostMessage",
    feature: "synic",
    rep: false,
    varHead: false,
    fixed: T.HV_INPUT_POST_MESSAGE.size,
    repElem: 0,
    xmmFast: false,
    run: (h, input) => h.postMessage(input),
  }],
  [T.HVCALL_SIGNAL_EVENT, {
    name: "HvSignalEvent",
    feature: "synic",
    rep: false,
    varHead: false,
    fixed: T.HV_INPUT_SIGNAL_EVENT.size,
    repElem: 0,
    xmmFast: false,
    run: (h, input) => h.signalEvent(input),
  }],
  [T.HVCALL_POST_DEBUG_DATA, { name: "HvPostDebugData", ...DEBUG_CALL }],
  [T.HVCALL_RETRIEVE_DEBUG_DATA, { name: "HvRetrieveDebugData", ...DEBUG_CALL }],
  [T.HVCALL_RESET_DEBUG_SESSION, { name: "HvResetDebugSession", ...DEBUG_CALL }],
]);

const SYNDBG_CALLS = new Set([
  T.HVCALL_POST_DEBUG_DATA,
  T.HVCALL_RETRIEVE_DEBUG_DATA,
  T.HVCALL_RESET_DEBUG_SESSION,
]);

/** Handles the hypercalls of every VP; one instance per thread that takes hypercall exits. */
export class HypercallHandler {
  readonly #d: HypercallDeps;
  readonly #fast = new Uint8Array(T.HV_XMM_FAST_INPUT_MAX);
  readonly #fastView = new DataView(this.#fast.buffer);
  readonly #xmm = new Uint8Array(16);

  constructor(deps: HypercallDeps) {
    this.#d = deps;
  }

  /**
   * Handles the hypercall exit of VP `vp`. Writes the result value into RAX (x64) or EDX:EAX
   * (x86) and returns "done"; or returns "ud" / "ignored" without touching the registers.
   * Never throws.
   */
  handle(vp: number, regs: HypercallRegs): HypercallExit {
    let x64 = true;
    let result: bigint;
    try {
      if (!this.#d.partition.hypercallsEnabled) return "ignored";
      if (!regs.protectedMode() || regs.cpl() !== 0) return "ud";
      x64 = regs.is64Bit();
      const lo = (r: HypercallGpr) => regs.getGpr(r) & 0xffff_ffffn;
      const control = x64 ? regs.getGpr("rcx") : (lo("rdx") << 32n) | lo("rax");
      const input = x64 ? regs.getGpr("rdx") : (lo("rbx") << 32n) | lo("rcx");
      const output = x64 ? regs.getGpr("r8") : (lo("rdi") << 32n) | lo("rsi");
      const r = this.dispatch(vp, control, input, output, regs);
      if (r === "ud") return "ud";
      result = hypercallResult(r.status, r.reps ?? 0);
    } catch (e) {
      limit((n) =>
        log.error("hypercall on VP {vp} failed: {error}{dropped}", {
          vp,
          error: e instanceof Error ? e.stack ?? e.message : String(e),
          dropped: n ? ` (${n} similar suppressed)` : "",
        })
      );
      result = hypercallResult(T.HV_STATUS_INVALID_HYPERCALL_INPUT);
    }
    try {
      if (x64) {
        regs.setGpr("rax", result);
      } else {
        regs.setGpr("rdx", result >> 32n);
        regs.setGpr("rax", result & 0xffff_ffffn);
      }
    } catch (e) {
      limit(() =>
        log.error("hypercall on VP {vp}: cannot set result: {error}", { vp, error: String(e) })
      );
    }
    return "done";
  }

  /**
   * Validates and runs one call: `control` is the input value, `input`/`output` the two
   * parameter registers (GPAs, or fast input qwords). `regs` is read only for XMM fast input.
   */
  dispatch(
    vp: number,
    control: bigint,
    input: bigint,
    output: bigint,
    regs?: Pick<HypercallRegs, "readXmm">,
  ): CallResult | "ud" {
    const c = decodeControl(control);
    const spec = CALLS.get(c.code);
    if (!spec) return { status: T.HV_STATUS_INVALID_HYPERCALL_CODE };
    const f = this.#d.features;
    const allowed = typeof spec.feature === "function"
      ? spec.feature(f)
      : hasFeature(f, spec.feature);
    if (!allowed) {
      return {
        status: SYNDBG_CALLS.has(c.code)
          ? T.HV_STATUS_INVALID_HYPERCALL_CODE
          : T.HV_STATUS_ACCESS_DENIED,
      };
    }
    if (c.reservedSet) return { status: T.HV_STATUS_INVALID_HYPERCALL_INPUT };
    if (
      spec.rep ? c.repCount === 0 || c.repStart >= c.repCount : c.repCount !== 0 || c.repStart !== 0
    ) {
      return { status: T.HV_STATUS_INVALID_HYPERCALL_INPUT };
    }
    if (!spec.varHead && c.varHead !== 0) return { status: T.HV_STATUS_INVALID_HYPERCALL_INPUT };
    const size = spec.fixed + c.varHead * 8 + (spec.rep ? c.repCount * spec.repElem : 0);

    let bytes: Uint8Array;
    if (c.fast) {
      if (spec.slowOnly) return { status: T.HV_STATUS_INVALID_PARAMETER };
      if (size > T.HV_FAST_INPUT_MAX) {
        if (!spec.xmmFast || size > T.HV_XMM_FAST_INPUT_MAX) {
          return { status: T.HV_STATUS_INVALID_HYPERCALL_INPUT };
        }
        // TLFS: using XMM input when it is not offered raises #UD.
        if (!hasFeature(f, "xmm-input") || !regs) return "ud";
      }
      bytes = this.#fastInput(input, output, size, regs);
    } else {
      const slow = this.#slowInput(input, size);
      if (typeof slow === "number") return { status: slow };
      bytes = slow;
    }
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const r = spec.run(this, { vp, control: c, bytes, view });
    if (r.status === T.HV_STATUS_SUCCESS && spec.rep && r.reps === undefined) r.reps = c.repCount;
    return r;
  }

  /** The fast input block: RDX, R8, then as many XMM registers as `size` needs. */
  #fastInput(
    a: bigint,
    b: bigint,
    size: number,
    regs: Pick<HypercallRegs, "readXmm"> | undefined,
  ): Uint8Array {
    const buf = this.#fast;
    buf.fill(0);
    this.#fastView.setBigUint64(0, BigInt.asUintN(64, a), true);
    this.#fastView.setBigUint64(8, BigInt.asUintN(64, b), true);
    const xmms = Math.ceil(Math.max(0, size - T.HV_FAST_INPUT_MAX) / 16);
    for (let i = 0; i < xmms && regs; i++) {
      regs.readXmm(i, this.#xmm);
      buf.set(this.#xmm.subarray(0, 16), T.HV_FAST_INPUT_MAX + i * 16);
    }
    return buf.subarray(0, size);
  }

  /** The input block in guest memory, or the TLFS status refusing it. */
  #slowInput(gpa: bigint, size: number): Uint8Array | number {
    if (size === 0) return new Uint8Array(0);
    gpa = BigInt.asUintN(64, gpa);
    if ((gpa & 7n) !== 0n) return T.HV_STATUS_INVALID_ALIGNMENT;
    if (gpa > BigInt(Number.MAX_SAFE_INTEGER)) return T.HV_STATUS_INVALID_ALIGNMENT;
    const addr = Number(gpa);
    if ((addr % PAGE_SIZE) + size > PAGE_SIZE) return T.HV_STATUS_INVALID_ALIGNMENT; // spans pages
    return this.#d.memory.trySlice(addr, size) ?? T.HV_STATUS_INVALID_ALIGNMENT; // not RAM
  }

  // --- Calls --------------------------------------------------------------------------------

  /** HvFlushVirtualAddressSpace/List and their Ex forms: always a full flush of the targets. */
  flushVirtualAddress(input: CallInput, ex: boolean, list: boolean): CallResult {
    const flags = input.view.getBigUint64(8, true);
    if (flags & ~T.HV_FLUSH_FLAGS_VALID) return { status: T.HV_STATUS_INVALID_PARAMETER };
    if (
      (flags & T.HV_FLUSH_USE_EXTENDED_RANGE_FORMAT) &&
      (!list || !hasFeature(this.#d.features, "tlbflush-ext"))
    ) {
      return { status: T.HV_STATUS_INVALID_PARAMETER };
    }
    let vps: number[];
    if (!ex) {
      const mask = input.view.getBigUint64(16, true);
      // Like KVM: an empty mask without HV_FLUSH_ALL_PROCESSORS means all processors (Windows
      // Server 2012 sends it and expects a flush).
      vps = (flags & T.HV_FLUSH_ALL_PROCESSORS) || mask === 0n
        ? allVps(this.#d.vpCount)
        : vpsFromMask(mask, this.#d.vpCount);
    } else {
      const set = decodeVpSet(
        input.view.getBigUint64(16, true),
        input.view.getBigUint64(24, true),
        input.control.varHead,
        (i) => input.view.getBigUint64(T.HV_TLB_FLUSH_EX.size + i * 8, true),
        this.#d.vpCount,
      );
      if (!set.ok) return { status: set.status };
      vps = (flags & T.HV_FLUSH_ALL_PROCESSORS) ? allVps(this.#d.vpCount) : set.vps;
    }
    // The GVA list (rep elements) is not interpreted: the guest CR3 of a running VP is unknown
    // here, so every target's whole TLB is flushed, which covers any range.
    if (vps.length > 0) this.#d.flusher.flush(vps);
    return { status: T.HV_STATUS_SUCCESS };
  }

  /** HvSendSyntheticClusterIpi / Ex: a fixed interrupt to each target VP. */
  sendIpi(input: CallInput, ex: boolean): CallResult {
    const vector = input.view.getUint32(0, true);
    const vtl = input.view.getUint8(4);
    if (vector < T.HV_IPI_LOW_VECTOR || vector > T.HV_IPI_HIGH_VECTOR || vtl !== 0) {
      return { status: T.HV_STATUS_INVALID_PARAMETER };
    }
    let vps: number[];
    if (!ex) {
      vps = vpsFromMask(input.view.getBigUint64(8, true), this.#d.vpCount);
    } else {
      const set = decodeVpSet(
        input.view.getBigUint64(8, true),
        input.view.getBigUint64(16, true),
        input.control.varHead,
        (i) => input.view.getBigUint64(T.HV_SEND_IPI_EX.size + i * 8, true),
        this.#d.vpCount,
      );
      if (!set.ok) return { status: set.status };
      vps = set.vps;
    }
    for (const vp of vps) this.#d.msi.signalMsi(msiAddress(vp), vector);
    return { status: T.HV_STATUS_SUCCESS };
  }

  /** HvNotifyLongSpinWait: the guest spun too long on a lock; let another thread run. */
  notifyLongSpinWait(input: CallInput): CallResult {
    this.#d.yieldCpu?.(input.vp);
    return { status: T.HV_STATUS_SUCCESS };
  }

  /** HvPostMessage: a message from the guest to a host connection (VMBus). */
  postMessage(input: CallInput): CallResult {
    const L = T.HV_INPUT_POST_MESSAGE;
    const connectionId = L.get(input.bytes, 0, "connectionId");
    const messageType = L.get(input.bytes, 0, "messageType");
    const payloadSize = L.get(input.bytes, 0, "payloadSize");
    if (
      messageType === 0 || (messageType & T.HV_MESSAGE_TYPE_HYPERVISOR_BIT) !== 0 ||
      payloadSize > T.HV_MESSAGE_PAYLOAD_MAX
    ) {
      return { status: T.HV_STATUS_INVALID_PARAMETER };
    }
    const bridge = this.#d.bridge;
    if (!bridge || (connectionId & ~T.HV_CONNECTION_ID_MASK) !== 0) {
      return { status: T.HV_STATUS_INVALID_CONNECTION_ID };
    }
    const payload = input.bytes.subarray(16, 16 + payloadSize);
    return { status: bridgeStatus(bridge.postMessage(connectionId, messageType, payload)) };
  }

  /** HvSignalEvent: an event from the guest to a host connection (VMBus channel doorbell). */
  signalEvent(input: CallInput): CallResult {
    const L = T.HV_INPUT_SIGNAL_EVENT;
    const connectionId = L.get(input.bytes, 0, "connectionId");
    if (L.get(input.bytes, 0, "reserved") !== 0) {
      return { status: T.HV_STATUS_INVALID_HYPERCALL_INPUT };
    }
    const bridge = this.#d.bridge;
    if (!bridge || (connectionId & ~T.HV_CONNECTION_ID_MASK) !== 0) {
      return { status: T.HV_STATUS_INVALID_CONNECTION_ID };
    }
    const flag = L.get(input.bytes, 0, "flagNumber");
    return { status: bridgeStatus(bridge.signalEvent(connectionId, flag)) };
  }

  /**
   * HvPostDebugData / HvRetrieveDebugData / HvResetDebugSession: the synthetic debugger
   * transport is not implemented yet, so the session is refused (HV_STATUS_OPERATION_DENIED,
   * which KVM also returns when the guest did not opt into the hypercall transport).
   */
  debugData(): CallResult {
    return { status: T.HV_STATUS_OPERATION_DENIED };
  }
}

function bridgeStatus(s: number): number {
  return Number.isInteger(s) && s >= 0 && s <= 0xffff ? s : T.HV_STATUS_INVALID_PARAMETER;
}
