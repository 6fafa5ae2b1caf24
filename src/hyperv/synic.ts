/**
 * The synthetic interrupt controller (SynIC) of every VP: SCONTROL, SVERSION, SIEFP, SIMP, EOM
 * and SINT0-15, plus host-side message and event delivery into the guest's SIM and SIEF pages.
 *
 * State is one SharedArrayBuffer for all VPs, so the VP's own worker (MSR writes) and the main
 * thread (VMBus host, timers) each build a `SynIC` over the same registers.
 *
 * Message delivery (`postMessage`) follows the TLFS slot protocol without a hypervisor queue:
 * the slot for a SINT is free when its message_type is HVMSG_NONE. When it is busy the sender
 * sets msg_pending in the slot and gets `false`; the guest, after clearing the slot, sees
 * msg_pending and writes EOM (Linux `vmbus_signal_eom`), which bumps the VP's slot-free
 * generation, wakes the main thread through `Notifier` and calls the `onSlotFree` listeners, and
 * the sender retries. Host writers of one slot are serialized by a per-slot spin lock; the guest
 * only ever moves message_type from non-zero to zero, so the body is written first and
 * message_type is published last with an atomic store.
 *
 * Interrupts are MSIs to the VP's APIC (APIC ID = VP index) with the SINT's vector, unless the
 * SINT is masked or in polling mode (the message or flag is still written).
 * @module
 */
import type { GuestMemory } from "../kvm/guest_memory.ts";
import type { MsiSink } from "../machine/irq.ts";
import { getLogger, rateLimited } from "../util/log.ts";
import { msiAddress, pageGpa, type PageView, spinLock, spinUnlock, viewPage } from "./shared.ts";
import * as T from "./tlfs.ts";

/** Wakes the main thread (an eventfd in the VMM) after a slot-free event on any VP. */
export interface Notifier {
  notify(): void;
}

/** What the SynIC needs from the VMM. */
export interface SynICDeps {
  memory: GuestMemory;
  msi: MsiSink;
  /** Optional: the main thread's wake-up when EOM is written from a worker. */
  notifier?: Notifier;
}

// Per-VP layout (bytes): u64 registers at 0, i32 locks and counters at 160.
const VP_STRIDE = 256;
const U64_PER_VP = VP_STRIDE / 8;
const I32_PER_VP = VP_STRIDE / 4;
const R_SCONTROL = 0;
const R_SIEFP = 1;
const R_SIMP = 2;
const R_SINT0 = 3; // ..18
const I_SLOT_LOCK0 = 40; // ..55, one per SINT
const I_GENERATION = 56;
const I_SIEF_LOCK = 57;

const OFF_SIZE = 4;
const OFF_FLAGS = 5;

const log = getLogger("hyperv", "synic");
const limit = rateLimited();

interface CachedPage {
  msr: bigint;
  view: PageView | undefined;
}

/** SynIC registers and delivery for all VPs. */
export class SynIC {
  /** Allocates the shared state for `vpCount` VPs, at reset values (SINTs masked). */
  static createState(vpCount: number): SharedArrayBuffer {
    if (!Number.isSafeInteger(vpCount) || vpCount < 1) {
      throw new RangeError(`SynIC: bad VP count ${vpCount}`);
    }
    const sab = new SharedArrayBuffer(vpCount * VP_STRIDE);
    resetRegisters(new BigUint64Array(sab), vpCount);
    return sab;
  }

  readonly #u64: BigUint64Array;
  readonly #i32: Int32Array;
  readonly #deps: SynICDeps;
  readonly #simp: CachedPage[];
  readonly #sief: CachedPage[];
  readonly #seen: Int32Array;
  readonly #listeners = new Set<(vp: number) => void>();
  /** Number of VPs. */
  readonly vpCount: number;

  constructor(state: SharedArrayBuffer, deps: SynICDeps) {
    this.#u64 = new BigUint64Array(state);
    this.#i32 = new Int32Array(state);
    this.#deps = deps;
    this.vpCount = state.byteLength / VP_STRIDE;
    this.#simp = Array.from({ length: this.vpCount }, () => ({ msr: -1n, view: undefined }));
    this.#sief = Array.from({ length: this.vpCount }, () => ({ msr: -1n, view: undefined }));
    this.#seen = new Int32Array(this.vpCount);
    for (let vp = 0; vp < this.vpCount; vp++) this.#seen[vp] = this.slotFreeGeneration(vp);
  }

  /**
   * Back to the reset state of every VP (SynIC and pages disabled, SINTs masked). Call with
   * every vCPU stopped. Waiting senders are woken so they notice the SynIC is gone.
   */
  reset(): void {
    resetRegisters(this.#u64, this.vpCount);
    for (let vp = 0; vp < this.vpCount; vp++) this.#slotFree(vp);
  }

  #reg(vp: number, r: number): bigint {
    return Atomics.load(this.#u64, vp * U64_PER_VP + r);
  }

  #setReg(vp: number, r: number, value: bigint): void {
    Atomics.store(this.#u64, vp * U64_PER_VP + r, value);
  }

  #lockIndex(vp: number, i: number): number {
    return vp * I32_PER_VP + i;
  }

  /** SINTx register of `vp`. */
  sint(vp: number, sint: number): bigint {
    return this.#reg(vp, R_SINT0 + sint);
  }

  /** True when SCONTROL.enable is set on `vp`. */
  enabled(vp: number): boolean {
    return (this.#reg(vp, R_SCONTROL) & T.HV_SYNIC_CONTROL_ENABLE) !== 0n;
  }

  // --- MSRs -------------------------------------------------------------------------------

  /** Reads a SynIC MSR of `vp`; `undefined` means #GP. */
  readMsr(vp: number, index: number): bigint | undefined {
    switch (index) {
      case T.HV_X64_MSR_SCONTROL:
        return this.#reg(vp, R_SCONTROL);
      case T.HV_X64_MSR_SVERSION:
        return T.HV_SYNIC_VERSION;
      case T.HV_X64_MSR_SIEFP:
        return this.#reg(vp, R_SIEFP);
      case T.HV_X64_MSR_SIMP:
        return this.#reg(vp, R_SIMP);
      case T.HV_X64_MSR_EOM:
        return 0n;
    }
    if (index >= T.HV_X64_MSR_SINT0 && index <= T.HV_X64_MSR_SINT15) {
      return this.sint(vp, index - T.HV_X64_MSR_SINT0);
    }
    return undefined;
  }

  /** Writes a SynIC MSR of `vp`; `false` means #GP. */
  writeMsr(vp: number, index: number, value: bigint): boolean {
    value = BigInt.asUintN(64, value);
    switch (index) {
      case T.HV_X64_MSR_SCONTROL: {
        // Bits 63:1 are RsvdP: stored as written.
        const was = this.enabled(vp);
        this.#setReg(vp, R_SCONTROL, value);
        if (!was && (value & T.HV_SYNIC_CONTROL_ENABLE)) this.#slotFree(vp);
        return true;
      }
      case T.HV_X64_MSR_SVERSION:
        return false; // read-only
      case T.HV_X64_MSR_SIEFP:
        this.#writeSiefp(vp, value);
        return true;
      case T.HV_X64_MSR_SIMP:
        this.#writeSimp(vp, value);
        return true;
      case T.HV_X64_MSR_EOM:
        if (value !== 0n) return false; // RsvdZ write-only trigger
        this.#slotFree(vp);
        return true;
    }
    if (index >= T.HV_X64_MSR_SINT0 && index <= T.HV_X64_MSR_SINT15) {
      return this.#writeSint(vp, index - T.HV_X64_MSR_SINT0, value);
    }
    return false;
  }

  #writeSint(vp: number, sint: number, value: bigint): boolean {
    const vector = Number(value & T.HV_SYNIC_SINT_VECTOR_MASK);
    // Vectors 0-15 are invalid (#GP); a masked SINT may carry one, as the reset value does.
    if (vector < T.HV_SYNIC_FIRST_VALID_VECTOR && !(value & T.HV_SYNIC_SINT_MASKED)) return false;
    if (value & T.HV_SYNIC_SINT_AUTO_EOI) {
      limit((n) =>
        log.warn(
          "VP {vp} SINT{sint} asks for AutoEOI, which hyperdeno cannot honour with KVM's " +
            "in-kernel LAPIC (CPUID recommends against it); the guest must EOI itself{dropped}",
          { vp, sint, dropped: n ? ` (${n} similar suppressed)` : "" },
        )
      );
    }
    this.#setReg(vp, R_SINT0 + sint, value);
    return true;
  }

  #writeSimp(vp: number, value: bigint): void {
    // Hold every slot lock of the VP so no host sender writes into a page being replaced.
    for (let s = 0; s < T.HV_SYNIC_SINT_COUNT; s++) {
      spinLock(this.#i32, this.#lockIndex(vp, I_SLOT_LOCK0 + s));
    }
    try {
      const old = this.#reg(vp, R_SIMP);
      this.#setReg(vp, R_SIMP, value);
      if (isNewEnabledPage(old, value)) this.#zeroPage(pageGpa(value), "SIM");
    } finally {
      for (let s = T.HV_SYNIC_SINT_COUNT - 1; s >= 0; s--) {
        spinUnlock(this.#i32, this.#lockIndex(vp, I_SLOT_LOCK0 + s));
      }
    }
    if (value & T.HV_MSR_ENABLE) this.#slotFree(vp);
  }

  #writeSiefp(vp: number, value: bigint): void {
    const lock = this.#lockIndex(vp, I_SIEF_LOCK);
    spinLock(this.#i32, lock);
    try {
      const old = this.#reg(vp, R_SIEFP);
      this.#setReg(vp, R_SIEFP, value);
      if (isNewEnabledPage(old, value)) this.#zeroPage(pageGpa(value), "SIEF");
    } finally {
      spinUnlock(this.#i32, lock);
    }
  }

  /** TLFS: the SIM and SIEF pages read as zero when enabled; outside RAM they are inaccessible. */
  #zeroPage(gpa: number, what: string): void {
    const view = viewPage(this.#deps.memory, gpa);
    if (view) {
      view.bytes.fill(0);
    } else {
      limit((n) =>
        log.warn("{what} page at {gpa} is not guest RAM; delivery to it is dropped{dropped}", {
          what,
          gpa: `0x${gpa.toString(16)}`,
          dropped: n ? ` (${n} similar suppressed)` : "",
        })
      );
    }
  }

  // --- Slot-free notifications -------------------------------------------------------------

  /** Generation counter of `vp`, bumped on every EOM (and SIMP/SCONTROL enable). */
  slotFreeGeneration(vp: number): number {
    return Atomics.load(this.#i32, this.#lockIndex(vp, I_GENERATION));
  }

  /**
   * Registers a listener for "a message slot of VP `vp` may be free": called synchronously in
   * the thread where the guest wrote EOM, and on other threads from `dispatchSlotFree`.
   * Returns the function that unregisters it.
   */
  onSlotFree(listener: (vp: number) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /**
   * Calls this thread's `onSlotFree` listeners for every VP whose generation changed since the
   * last dispatch here. The main thread calls it when the `Notifier` wakes it.
   */
  dispatchSlotFree(): void {
    for (let vp = 0; vp < this.vpCount; vp++) {
      const g = this.slotFreeGeneration(vp);
      if (g !== this.#seen[vp]) {
        this.#seen[vp] = g;
        this.#callListeners(vp);
      }
    }
  }

  #slotFree(vp: number): void {
    const before = Atomics.add(this.#i32, this.#lockIndex(vp, I_GENERATION), 1);
    if (this.#seen[vp] === before) this.#seen[vp] = (before + 1) | 0;
    this.#deps.notifier?.notify();
    this.#callListeners(vp);
  }

  #callListeners(vp: number): void {
    for (const l of this.#listeners) {
      try {
        l(vp);
      } catch (e) {
        limit((n) =>
          log.error("slot-free listener failed for VP {vp}: {error}{dropped}", {
            vp,
            error: String(e),
            dropped: n ? ` (${n} similar suppressed)` : "",
          })
        );
      }
    }
  }

  // --- Delivery ----------------------------------------------------------------------------

  #cachedPage(cache: CachedPage[], vp: number, msr: bigint): PageView | undefined {
    const c = cache[vp]!;
    if (c.msr !== msr) {
      c.msr = msr;
      c.view = (msr & T.HV_MSR_ENABLE) ? viewPage(this.#deps.memory, pageGpa(msr)) : undefined;
    }
    return c.view;
  }

  #check(vp: number, sint: number): void {
    if (!Number.isInteger(vp) || vp < 0 || vp >= this.vpCount) {
      throw new RangeError(`SynIC: VP ${vp} out of range (0..${this.vpCount - 1})`);
    }
    if (!Number.isInteger(sint) || sint < 0 || sint >= T.HV_SYNIC_SINT_COUNT) {
      throw new RangeError(`SynIC: SINT ${sint} out of range (0..15)`);
    }
  }

  /**
   * Posts a message into VP `vp`'s SIM slot for `sint` and raises the SINT. Returns `false` when
   * it cannot be delivered now (SynIC or SIM page disabled or not RAM, or slot busy, in which
   * case msg_pending is set so the guest writes EOM once it frees the slot): retry from an
   * `onSlotFree` listener. Throws `RangeError` for a bad VP, SINT, message type (0 or
   * hypervisor-reserved types are allowed here, the host is trusted) or a payload over 240 bytes.
   */
  postMessage(vp: number, sint: number, messageType: number, payload: Uint8Array): boolean {
    this.#check(vp, sint);
    if (!Number.isInteger(messageType) || messageType <= 0 || messageType > 0xffffffff) {
      throw new RangeError(`SynIC: bad message type ${messageType}`);
    }
    if (payload.length > T.HV_MESSAGE_PAYLOAD_MAX) {
      throw new RangeError(`SynIC: payload of ${payload.length} bytes exceeds 240`);
    }
    if (!this.enabled(vp)) return false;
    const lock = this.#lockIndex(vp, I_SLOT_LOCK0 + sint);
    spinLock(this.#i32, lock);
    try {
      const page = this.#cachedPage(this.#simp, vp, this.#reg(vp, R_SIMP));
      if (!page) return false;
      const base = sint * T.HV_MESSAGE_SIZE;
      const typeWord = base / 4; // message_type, offset 0 of the slot
      if (Atomics.load(page.words, typeWord) !== T.HVMSG_NONE) {
        Atomics.or(page.bytes, base + OFF_FLAGS, T.HV_MESSAGE_FLAG_PENDING);
        // The guest may have freed the slot between the check and the flag: look again.
        if (Atomics.load(page.words, typeWord) !== T.HVMSG_NONE) return false;
      }
      const b = page.bytes;
      b.set(payload, base + 16);
      b[base + OFF_SIZE] = payload.length;
      b[base + OFF_FLAGS] = 0;
      b[base + 6] = 0;
      b[base + 7] = 0;
      b.fill(0, base + 8, base + 16); // sender / port id
      Atomics.store(page.words, typeWord, messageType | 0);
    } finally {
      spinUnlock(this.#i32, lock);
    }
    this.raiseSint(vp, sint);
    return true;
  }

  /**
   * Sets event flag `flag` (0-2047) of `sint` in VP `vp`'s SIEF page and, if it was clear,
   * raises the SINT. Dropped (with a rate-limited log) when the SynIC or SIEF page is disabled.
   * Throws `RangeError` for a bad VP, SINT or flag.
   */
  signalEvent(vp: number, sint: number, flag: number): void {
    this.#check(vp, sint);
    if (!Number.isInteger(flag) || flag < 0 || flag >= T.HV_EVENT_FLAGS_COUNT) {
      throw new RangeError(`SynIC: event flag ${flag} out of range (0..2047)`);
    }
    if (!this.enabled(vp)) return this.#dropEvent(vp, sint, "SynIC disabled");
    const lock = this.#lockIndex(vp, I_SIEF_LOCK);
    let wasClear: boolean;
    spinLock(this.#i32, lock);
    try {
      const page = this.#cachedPage(this.#sief, vp, this.#reg(vp, R_SIEFP));
      if (!page) return this.#dropEvent(vp, sint, "SIEF page disabled");
      const word = (sint * T.HV_EVENT_FLAGS_BYTES) / 4 + (flag >>> 5);
      const bit = 1 << (flag & 31);
      wasClear = (Atomics.or(page.words, word, bit) & bit) === 0;
    } finally {
      spinUnlock(this.#i32, lock);
    }
    if (wasClear) this.raiseSint(vp, sint);
  }

  #dropEvent(vp: number, sint: number, why: string): void {
    limit((n) =>
      log.debug("event for VP {vp} SINT{sint} dropped: {why}{dropped}", {
        vp,
        sint,
        why,
        dropped: n ? ` (${n} similar suppressed)` : "",
      })
    );
  }

  /** Sends the SINT's interrupt to VP `vp` unless the SINT is masked or polling. */
  raiseSint(vp: number, sint: number): void {
    const v = this.sint(vp, sint);
    if (v & (T.HV_SYNIC_SINT_MASKED | T.HV_SYNIC_SINT_POLLING)) return;
    const vector = Number(v & T.HV_SYNIC_SINT_VECTOR_MASK);
    if (vector < T.HV_SYNIC_FIRST_VALID_VECTOR) return;
    this.#deps.msi.signalMsi(msiAddress(vp), vector);
  }
}

function resetRegisters(u64: BigUint64Array, vpCount: number): void {
  for (let vp = 0; vp < vpCount; vp++) {
    for (let r = 0; r < R_SINT0; r++) Atomics.store(u64, vp * U64_PER_VP + r, 0n);
    for (let s = 0; s < T.HV_SYNIC_SINT_COUNT; s++) {
      Atomics.store(u64, vp * U64_PER_VP + R_SINT0 + s, T.HV_SYNIC_SINT_DEFAULT);
    }
  }
}

function isNewEnabledPage(old: bigint, value: bigint): boolean {
  if (!(value & T.HV_MSR_ENABLE)) return false;
  return !(old & T.HV_MSR_ENABLE) || pageGpa(old) !== pageGpa(value);
}
