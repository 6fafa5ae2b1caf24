/**
 * Fuzz targets (`tests/fuzz/mod.ts`) for the Hyper-V enlightenments, over the real `HyperV`
 * with fakes for the VMM side (`tests/unit/hyperv/fakes.ts`):
 *
 * - `hypercall`: control words (codes, fast/slow, rep counts and starts, variable header sizes,
 *   reserved bits), input and output GPAs (aligned, not, page-crossing, outside RAM), input
 *   blocks full of VP sets, flags and vectors, XMM input, 32- and 64-bit conventions, CPL and
 *   real mode.
 * - `hv-msrs`: writes and reads of every Hyper-V MSR (and neighbours) with page GPAs, enable
 *   bits and random values, interleaved with what the host does to the SynIC (messages, event
 *   flags, timer expiries, slot-free dispatch) and with the guest scribbling on its SynIC message
 *   and event pages.
 * - `doorbells`: the long-mode page's doorbell port exits (connection ids in and out of the
 *   window, with the page and SynIC on or off).
 *
 * Invariants: nothing throws out of `hypercall`, `wrmsr`, `rdmsr`, `doorbell` or the host-side
 * SynIC calls; every result is a 16-bit status; TLB flush and IPI targets are VPs that exist;
 * the bridge only sees connection ids in range; and guest RAM outside the pages the guest named
 * (input/output pages, and any page it wrote into an MSR) is untouched (canary).
 * @module
 */
import { GuestMemory } from "../../../src/kvm/guest_memory.ts";
import { encodeControl, type HypercallExit } from "../../../src/hyperv/hypercall.ts";
import * as T from "../../../src/hyperv/tlfs.ts";
import { enableHypercalls, FakeRegs, makeRig, type Rig } from "../../unit/hyperv/fakes.ts";
import { prng, type Rng } from "../../unit/prng.ts";
import type { FuzzTarget } from "../target.ts";

const RAM = 2 << 20;
const PAGE = 4096;
const CANARY = 0xa5;
const IN = 0x8000;
const OUT = 0x9000;
const VPS = 4;

const CODES = [
  T.HVCALL_FLUSH_VIRTUAL_ADDRESS_SPACE,
  T.HVCALL_FLUSH_VIRTUAL_ADDRESS_LIST,
  T.HVCALL_FLUSH_VIRTUAL_ADDRESS_SPACE_EX,
  T.HVCALL_FLUSH_VIRTUAL_ADDRESS_LIST_EX,
  T.HVCALL_NOTIFY_LONG_SPIN_WAIT,
  T.HVCALL_SEND_IPI,
  T.HVCALL_SEND_IPI_EX,
  T.HVCALL_POST_MESSAGE,
  T.HVCALL_SIGNAL_EVENT,
  T.HVCALL_POST_DEBUG_DATA,
  T.HVCALL_RETRIEVE_DEBUG_DATA,
  T.HVCALL_RESET_DEBUG_SESSION,
];

const QWORDS = [
  0n,
  1n,
  2n,
  3n,
  0xfn,
  0x10n,
  0x31n,
  0xffn,
  0x100n,
  0xffff_ffffn,
  1n << 32n,
  1n << 63n,
  (1n << 64n) - 1n,
  0b1011n,
  T.HV_FLUSH_ALL_PROCESSORS,
  T.HV_FLUSH_ALL_VIRTUAL_ADDRESS_SPACES | T.HV_FLUSH_NON_GLOBAL_MAPPINGS_ONLY,
  T.HV_FLUSH_USE_EXTENDED_RANGE_FORMAT,
  T.HV_GENERIC_SET_SPARSE_4K,
  T.HV_GENERIC_SET_ALL,
];

function qword(rng: Rng): bigint {
  const r = rng.int(4);
  if (r < 2) return rng.pick(QWORDS);
  if (r === 2) return BigInt(rng.int(1 << 16));
  return (BigInt(rng.int(0x1_0000_0000)) << 32n) | BigInt(rng.int(0x1_0000_0000));
}

/** A guest GPA a call or MSR might name: mostly sane pages, sometimes hostile. */
function gpa(rng: Rng, usual: number): bigint {
  switch (rng.int(10)) {
    case 0:
      return BigInt(usual + rng.int(PAGE)); // unaligned, maybe page-crossing
    case 1:
      return BigInt(RAM - 8 + rng.int(16)); // the end of RAM
    case 2:
      return rng.pick([0n, 1n << 40n, 1n << 52n, (1n << 64n) - 8n, BigInt(RAM)]);
    default:
      return BigInt(usual);
  }
}

/** RAM filled with the canary and a rig over it, hypercalls enabled at 0x1000. */
function canaryRig(seed: number): { rig: Rig; ram: Uint8Array; named: Set<number> } {
  const ram = new Uint8Array(RAM);
  const rig = makeRig({ vpCount: VPS, memory: new GuestMemory([{ gpa: 0, bytes: ram }]) });
  enableHypercalls(rig);
  // Everything but the hypercall page is canary from here on.
  const hypercallPage = ram.slice(0x1000, 0x2000);
  ram.fill(CANARY);
  ram.set(hypercallPage, 0x1000);
  void seed;
  return { rig, ram, named: new Set([0x1000, IN, OUT]) };
}

/** Throws unless every page of `ram` not in `named` still holds only the canary. */
function checkCanary(ram: Uint8Array, named: ReadonlySet<number>, at: number): void {
  const words = new Uint32Array(ram.buffer, ram.byteOffset, ram.byteLength >> 2);
  const want = CANARY * 0x01010101;
  for (let p = 0; p < RAM; p += PAGE) {
    if (named.has(p)) continue;
    for (let w = p >> 2, end = (p + PAGE) >> 2; w < end; w++) {
      if (words[w] !== want) {
        throw new Error(
          `guest RAM written outside the named pages at 0x${(w * 4).toString(16)}` +
            ` (found by input ${at})`,
        );
      }
    }
  }
}

function checkExit(r: HypercallExit, regs: FakeRegs, i: number): void {
  if (r !== "done" && r !== "ud" && r !== "ignored") throw new Error(`input ${i}: exit ${r}`);
  if (r === "done") {
    const status = regs.status();
    if (!(status >= 0 && status <= 0xffff)) throw new Error(`input ${i}: status ${status}`);
  }
}

function checkTargets(rig: Rig, i: number): void {
  for (const f of rig.flusher.flushes) {
    if (f.some((vp) => !(vp >= 0 && vp < VPS))) {
      throw new Error(`input ${i}: flush of VPs ${f} (there are ${VPS})`);
    }
  }
  rig.flusher.flushes.length = 0;
  for (const [apic] of rig.msi.targets()) {
    if (!(apic >= 0 && apic < VPS)) throw new Error(`input ${i}: IPI to APIC ${apic}`);
  }
  rig.msi.clear();
  for (const e of rig.bridge.events) {
    if ((e.connectionId & ~T.HV_CONNECTION_ID_MASK) !== 0) {
      throw new Error(`input ${i}: event to connection 0x${e.connectionId.toString(16)}`);
    }
  }
  rig.bridge.events.length = 0;
  rig.bridge.messages.length = 0;
}

function fuzzHypercalls(seed: number, inputs: number): number {
  const rng = prng(seed);
  const { rig, ram, named } = canaryRig(seed);
  const dv = new DataView(ram.buffer);
  for (let i = 0; i < inputs; i++) {
    // The guest's input page: a few qwords of its choosing.
    for (let k = rng.int(8); k > 0; k--) {
      dv.setBigUint64(IN + rng.int(PAGE / 8) * 8, qword(rng), true);
    }
    if (rng.chance(0.5)) {
      dv.setUint32(IN, rng.chance(0.8) ? 0x10 + rng.int(0xf0) : rng.int(0x200), true);
    }
    const code = rng.chance(0.9) ? rng.pick(CODES) : rng.int(0x10000);
    let control = encodeControl({
      code,
      fast: rng.chance(0.4),
      varHead: rng.chance(0.8) ? rng.int(3) : rng.int(0x400),
      repCount: rng.chance(0.7) ? rng.int(4) : rng.int(0x1000),
      repStart: rng.chance(0.9) ? 0 : rng.int(0x1000),
    });
    if (rng.chance(0.05)) control |= 1n << BigInt(rng.pick([27, 31, 44, 47, 60, 63]));
    const regs = new FakeRegs();
    const inGpa = rng.chance(0.5) ? qword(rng) : gpa(rng, IN);
    const outGpa = rng.chance(0.3) ? qword(rng) : gpa(rng, OUT);
    if (rng.chance(0.9)) regs.call64(control, inGpa, outGpa);
    else regs.call32(control, inGpa & 0xffff_ffffn, outGpa & 0xffff_ffffn);
    for (let x = 0; x < 6; x++) regs.setXmm(x, qword(rng), qword(rng));
    if (rng.chance(0.02)) regs.privilege = 3;
    if (rng.chance(0.02)) regs.prot = false;
    const vp = rng.chance(0.95) ? rng.int(VPS) : rng.int(64);
    checkExit(rig.hv.hypercall(vp, regs), regs, i);
    checkTargets(rig, i);
    if ((i & 2047) === 2047) checkCanary(ram, named, i);
  }
  checkCanary(ram, named, inputs);
  return inputs;
}

/** Hyper-V MSRs worth hitting, plus neighbours no one implements. */
const MSRS = [
  T.HV_X64_MSR_GUEST_OS_ID,
  T.HV_X64_MSR_HYPERCALL,
  T.HV_X64_MSR_VP_INDEX,
  T.HV_X64_MSR_RESET,
  T.HV_X64_MSR_VP_RUNTIME,
  T.HV_X64_MSR_TIME_REF_COUNT,
  T.HV_X64_MSR_REFERENCE_TSC,
  T.HV_X64_MSR_TSC_FREQUENCY,
  T.HV_X64_MSR_APIC_FREQUENCY,
  T.HV_X64_MSR_EOI,
  T.HV_X64_MSR_ICR,
  T.HV_X64_MSR_TPR,
  T.HV_X64_MSR_VP_ASSIST_PAGE,
  T.HV_X64_MSR_SCONTROL,
  T.HV_X64_MSR_SVERSION,
  T.HV_X64_MSR_SIEFP,
  T.HV_X64_MSR_SIMP,
  T.HV_X64_MSR_EOM,
  ...Array.from({ length: 16 }, (_, i) => T.HV_X64_MSR_SINT0 + i),
  ...Array.from({ length: 8 }, (_, i) => T.HV_X64_MSR_STIMER0_CONFIG + i),
  T.HV_X64_MSR_SYNDBG_CONTROL,
  T.HV_X64_MSR_SYNDBG_STATUS,
  T.HV_X64_MSR_SYNDBG_SEND_BUFFER,
  T.HV_X64_MSR_SYNDBG_RECV_BUFFER,
  T.HV_X64_MSR_SYNDBG_PENDING_BUFFER,
  T.HV_X64_MSR_SYNDBG_OPTIONS,
  ...Array.from({ length: 6 }, (_, i) => T.HV_X64_MSR_CRASH_P0 + i),
  T.HV_X64_MSR_REENLIGHTENMENT_CONTROL,
  T.HV_X64_MSR_TSC_EMULATION_CONTROL,
  T.HV_X64_MSR_TSC_EMULATION_STATUS,
  T.HV_X64_MSR_TSC_INVARIANT_CONTROL,
];

/** Pages the MSR fuzz names as overlay pages (the rest of RAM is canary). */
const OVERLAY_PAGES = [0x10000, 0x11000, 0x12000, 0x13000, 0x14000, 0x15000];

function fuzzMsrs(seed: number, inputs: number): number {
  const rng = prng(seed);
  const { rig, ram, named } = canaryRig(seed);
  for (const p of OVERLAY_PAGES) named.add(p);
  const hv = rig.hv;
  for (let i = 0; i < inputs; i++) {
    const vp = rng.chance(0.97) ? rng.int(VPS) : rng.int(256);
    const action = rng.int(100);
    if (action < 55) {
      const index = rng.chance(0.9) ? rng.pick(MSRS) : 0x40000000 + rng.int(0x200);
      let value: bigint;
      const r = rng.int(10);
      if (r < 5) {
        // A page with enable bits (SIMP/SIEFP/hypercall/TSC page/VP assist/syndbg buffers).
        value = BigInt(rng.pick(OVERLAY_PAGES)) | BigInt(rng.int(4));
      } else if (r < 8) value = qword(rng);
      else value = BigInt(rng.pick([0x10, 0x31, 0xff, 0x1_0010, 0x3_0031])); // SINT/stimer
      if (index !== T.HV_X64_MSR_GUEST_OS_ID) {
        // An MSR holding a page may name any page it likes: keep the pages it can name to the
        // overlay pages and pages outside RAM, so the canary means something.
        const page = Number((value >> 12n) & 0xf_ffffn) * PAGE;
        if ((value >> 32n) === 0n && page < RAM && !named.has(page)) {
          value = (value & 0xfffn) | BigInt(rng.pick(OVERLAY_PAGES));
        }
      }
      if (typeof hv.wrmsr(vp, index, value) !== "boolean") throw new Error("wrmsr result");
    } else if (action < 70) {
      const index = rng.chance(0.9) ? rng.pick(MSRS) : 0x40000000 + rng.int(0x200);
      const v = hv.rdmsr(vp, index);
      if (v !== undefined && (v < 0n || v >= 1n << 64n)) throw new Error(`rdmsr ${index}: ${v}`);
    } else if (action < 80) {
      // The host posts a message to a SINT (VMBus does this on the main thread).
      const payload = new Uint8Array(rng.int(241)); // the host never posts more than 240
      // (The host only posts to VPs and SINTs that exist: VMBus checks the guest's choice.)
      hv.synic.postMessage(
        vp % VPS,
        rng.int(16),
        rng.chance(0.9) ? 1 + rng.int(8) : 1 + rng.int(0x7fff_fffe),
        payload,
      );
    } else if (action < 86) {
      hv.synic.signalEvent(vp % VPS, rng.int(16), rng.int(2048));
    } else if (action < 92) {
      // The guest scribbles on an overlay page (its message slots, event flags).
      const page = rng.pick(OVERLAY_PAGES);
      for (let k = 1 + rng.int(8); k > 0; k--) ram[page + rng.int(PAGE)] = rng.int(256);
      if (rng.chance(0.5)) ram[page + rng.int(16) * 256] = rng.int(4); // a slot's message type
    } else if (action < 96) {
      hv.stimers.expire(vp, rng.int(5), BigInt(rng.int(1 << 30)));
    } else if (action < 99) {
      hv.synic.dispatchSlotFree();
    } else {
      hv.reset();
    }
    if ((i & 2047) === 2047) checkCanary(ram, named, i);
  }
  checkCanary(ram, named, inputs);
  return inputs;
}

function fuzzDoorbells(seed: number, inputs: number): number {
  const rng = prng(seed);
  const { rig } = canaryRig(seed);
  for (let i = 0; i < inputs; i++) {
    if (rng.chance(0.01)) {
      // The page and the SynIC come and go.
      rig.hv.wrmsr(0, T.HV_X64_MSR_HYPERCALL, rng.chance(0.5) ? 0x1001n : 0n);
      rig.hv.wrmsr(rng.int(VPS), T.HV_X64_MSR_SCONTROL, BigInt(rng.int(2)));
    }
    const port = rng.chance(0.8)
      ? T.HV_DOORBELL_FIRST + rng.int(T.HV_DOORBELL_LAST - T.HV_DOORBELL_FIRST + 1)
      : rng.int(0x10000) - (rng.chance(0.1) ? 0x8000 : 0);
    rig.bridge.status = rng.chance(0.9) ? T.HV_STATUS_SUCCESS : rng.int(0x20000) - 1;
    const status = rig.hv.doorbell(port);
    if (!(Number.isInteger(status) && status >= 0 && status <= 0xffff)) {
      throw new Error(`input ${i}: doorbell ${port} answered ${status}`);
    }
    for (const e of rig.bridge.events) {
      if (e.connectionId < T.HV_DOORBELL_FIRST || e.connectionId > T.HV_DOORBELL_LAST) {
        throw new Error(`input ${i}: doorbell signalled connection ${e.connectionId}`);
      }
    }
    rig.bridge.events.length = 0;
  }
  return inputs;
}

/** Hypercall inputs against the real handler. */
export const HYPERCALL_INPUTS: FuzzTarget = {
  name: "hypercall",
  what: "hypercalls: control words, rep counts, VP sets, XMM input, GPAs, both conventions",
  unitInputs: 50_000,
  batch: 50_000,
  run: fuzzHypercalls,
};

/** Hyper-V MSR writes and reads, with the SynIC's pages and host side in between. */
export const HV_MSRS: FuzzTarget = {
  name: "hv-msrs",
  what: "Hyper-V MSR writes/reads, SynIC message and event pages, host posts and timers",
  unitInputs: 50_000,
  batch: 50_000,
  run: fuzzMsrs,
};

/** The doorbell port exits. */
export const DOORBELLS: FuzzTarget = {
  name: "doorbells",
  what: "doorbell port exits (connection ids in and out of the window, page/SynIC on and off)",
  unitInputs: 50_000,
  batch: 100_000,
  run: fuzzDoorbells,
};
