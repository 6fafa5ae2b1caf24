import { assert, assertEquals } from "./assert.ts";
import { HV_FEATURES_ALL, type HvFeatures, parseHvFeatures } from "../../../src/hyperv/features.ts";
import {
  decodeControl,
  defineCall,
  encodeControl,
  HypercallHandler,
  hypercallResult,
  HYPERCALLS,
} from "../../../src/hyperv/hypercall.ts";
import * as T from "../../../src/hyperv/tlfs.ts";
import { enableHypercalls, FakeRegs, makeRig, type Rig } from "./fakes.ts";

const IN = 0x8000; // input page used by the tests

function rig(options: Parameters<typeof makeRig>[0] = {}): Rig {
  const r = makeRig(options);
  enableHypercalls(r);
  return r;
}

function without(...names: (keyof HvFeatures["enabled"])[]): HvFeatures {
  const enabled = { ...HV_FEATURES_ALL.enabled };
  for (const n of names) enabled[n] = false;
  return { enabled, spinlocks: HV_FEATURES_ALL.spinlocks };
}

/** Writes qwords into the input page at `IN + offset`. */
function input(r: Rig, qwords: bigint[], offset = 0): void {
  qwords.forEach((q, i) => r.memory.writeU64(IN + offset + i * 8, q));
}

function call(r: Rig, control: bigint, inp: bigint = BigInt(IN), out = 0n, vp = 0): FakeRegs {
  const regs = new FakeRegs().call64(control, inp, out);
  assertEquals(r.hv.hypercall(vp, regs), "done");
  return regs;
}

Deno.test("control value decode/encode and result encoding", () => {
  const v = encodeControl({ code: 0x14, fast: true, varHead: 3, repCount: 0xabc, repStart: 0x123 });
  assertEquals(v, 0x0123_0abc_0007_0014n);
  assertEquals(decodeControl(v), {
    code: 0x14,
    fast: true,
    varHead: 3,
    repCount: 0xabc,
    repStart: 0x123,
    reservedSet: false,
  });
  for (const bit of [27n, 31n, 44n, 47n, 60n, 63n]) {
    assert(decodeControl(1n << bit).reservedSet, `bit ${bit}`);
  }
  assertEquals(hypercallResult(T.HV_STATUS_SUCCESS, 5), 5n << 32n);
});

Deno.test("not a hypercall until enabled; #UD from CPL 3 or real mode", () => {
  const r = makeRig();
  const regs = new FakeRegs().call64(
    encodeControl({ code: T.HVCALL_SIGNAL_EVENT, fast: true }),
    1n,
  );
  assertEquals(r.hv.hypercall(0, regs), "ignored");
  assertEquals(regs.getGpr("rax"), 0n, "registers untouched");
  enableHypercalls(r);
  regs.privilege = 3;
  assertEquals(r.hv.hypercall(0, regs), "ud");
  regs.privilege = 0;
  regs.prot = false;
  assertEquals(r.hv.hypercall(0, regs), "ud");
  regs.prot = true;
  assertEquals(r.hv.hypercall(0, regs), "done");
  assertEquals(regs.status(), T.HV_STATUS_SUCCESS);
});

Deno.test("malformed control values get the TLFS statuses", () => {
  const r = rig();
  const flush = T.HVCALL_FLUSH_VIRTUAL_ADDRESS_SPACE;
  input(r, [0n, T.HV_FLUSH_ALL_PROCESSORS, 0n]);
  assertEquals(
    call(r, encodeControl({ code: 0x7777 })).status(),
    T.HV_STATUS_INVALID_HYPERCALL_CODE,
  );
  assertEquals(
    call(r, encodeControl({ code: 0x0001 })).status(),
    T.HV_STATUS_INVALID_HYPERCALL_CODE,
  );
  assertEquals(call(r, encodeControl({ code: flush }) | (1n << 30n)).status(), 3);
  assertEquals(call(r, encodeControl({ code: flush, repCount: 1 })).status(), 3, "rep on simple");
  assertEquals(call(r, encodeControl({ code: flush, varHead: 1 })).status(), 3, "varhead");
  const list = T.HVCALL_FLUSH_VIRTUAL_ADDRESS_LIST;
  assertEquals(call(r, encodeControl({ code: list })).status(), 3, "rep call with 0 reps");
  assertEquals(call(r, encodeControl({ code: list, repCount: 2, repStart: 2 })).status(), 3);
  assertEquals(call(r, encodeControl({ code: flush })).status(), T.HV_STATUS_SUCCESS);
});

Deno.test("slow input must be 8-aligned, inside one page, in RAM", () => {
  const r = rig();
  const c = encodeControl({ code: T.HVCALL_FLUSH_VIRTUAL_ADDRESS_SPACE });
  assertEquals(call(r, c, BigInt(IN + 4)).status(), T.HV_STATUS_INVALID_ALIGNMENT);
  assertEquals(call(r, c, BigInt(IN + 4096 - 16)).status(), T.HV_STATUS_INVALID_ALIGNMENT);
  assertEquals(call(r, c, 0x7fff_0000n).status(), T.HV_STATUS_INVALID_ALIGNMENT);
  assertEquals(call(r, c, 0xffff_ffff_ffff_f000n).status(), T.HV_STATUS_INVALID_ALIGNMENT);
  // 24-byte header + 509 GVAs fill the page exactly (Linux HV_MAX_FLUSH_REP_COUNT).
  const list = encodeControl({ code: T.HVCALL_FLUSH_VIRTUAL_ADDRESS_LIST, repCount: 510 });
  input(r, [0n, T.HV_FLUSH_ALL_PROCESSORS, 0n]);
  assertEquals(call(r, list).status(), T.HV_STATUS_INVALID_ALIGNMENT, "rep list spans pages");
  const ok = encodeControl({ code: T.HVCALL_FLUSH_VIRTUAL_ADDRESS_LIST, repCount: 509 });
  const regs = call(r, ok);
  assertEquals(regs.status(), T.HV_STATUS_SUCCESS);
  assertEquals(regs.repsCompleted(), 509);
  const max = encodeControl({ code: T.HVCALL_FLUSH_VIRTUAL_ADDRESS_LIST, repCount: 0xfff });
  assertEquals(call(r, max).status(), T.HV_STATUS_INVALID_ALIGNMENT, "4095 reps cannot fit");
});

Deno.test("calls whose enlightenment is off: ACCESS_DENIED; syndbg calls: INVALID_HYPERCALL_CODE", () => {
  const r = rig({ features: without("ipi", "tlbflush", "tlbflush-ext") });
  input(r, [0n, T.HV_FLUSH_ALL_PROCESSORS, 0n]);
  const flush = encodeControl({ code: T.HVCALL_FLUSH_VIRTUAL_ADDRESS_SPACE });
  assertEquals(call(r, flush).status(), T.HV_STATUS_ACCESS_DENIED);
  const ipi = encodeControl({ code: T.HVCALL_SEND_IPI, fast: true });
  assertEquals(call(r, ipi, 0x30n, 1n).status(), T.HV_STATUS_ACCESS_DENIED);
  assertEquals(r.msi.sent.length, 0);
  const dbg = encodeControl({ code: T.HVCALL_RETRIEVE_DEBUG_DATA });
  assertEquals(call(r, dbg).status(), T.HV_STATUS_INVALID_HYPERCALL_CODE);
  const spin = encodeControl({ code: T.HVCALL_NOTIFY_LONG_SPIN_WAIT, fast: true });
  const noSpin = rig({ features: { ...HV_FEATURES_ALL, spinlocks: 0xffffffff } });
  assertEquals(call(noSpin, spin, 1n).status(), T.HV_STATUS_ACCESS_DENIED);
  const synic = rig({ features: parseHvFeatures("relaxed,vpindex") });
  const sig = encodeControl({ code: T.HVCALL_SIGNAL_EVENT, fast: true });
  assertEquals(call(synic, sig, 1n).status(), T.HV_STATUS_ACCESS_DENIED);

  const withDbg = rig({ features: parseHvFeatures("all,syndbg") });
  assertEquals(call(withDbg, dbg).status(), T.HV_STATUS_OPERATION_DENIED);
});

Deno.test("HvSignalEvent: fast 64-bit and 32-bit, slow, reserved bits, connection ids", () => {
  const r = rig();
  const fast = encodeControl({ code: T.HVCALL_SIGNAL_EVENT, fast: true });
  assertEquals(call(r, fast, (7n << 32n) | 0x12n).status(), T.HV_STATUS_SUCCESS);
  const regs32 = new FakeRegs().call32(fast, (3n << 32n) | 0x13n);
  assertEquals(r.hv.hypercall(0, regs32), "done");
  assertEquals(regs32.status(), T.HV_STATUS_SUCCESS);
  assertEquals(regs32.getGpr("rdx"), 0n, "EDX:EAX result");
  input(r, [(1n << 32n) | 0x14n]);
  assertEquals(call(r, encodeControl({ code: T.HVCALL_SIGNAL_EVENT })).status(), 0);
  assertEquals(r.bridge.events, [
    { connectionId: 0x12, flag: 7 },
    { connectionId: 0x13, flag: 3 },
    { connectionId: 0x14, flag: 1 },
  ]);
  assertEquals(call(r, fast, (1n << 48n) | 0x12n).status(), T.HV_STATUS_INVALID_HYPERCALL_INPUT);
  assertEquals(call(r, fast, 0x0100_0012n).status(), T.HV_STATUS_INVALID_CONNECTION_ID);
  r.bridge.status = T.HV_STATUS_INVALID_CONNECTION_ID;
  assertEquals(call(r, fast, 0x99n).status(), T.HV_STATUS_INVALID_CONNECTION_ID);
  r.bridge.status = 0x12345; // a bridge bug must not leak a non-status
  assertEquals(call(r, fast, 0x99n).status(), T.HV_STATUS_INVALID_PARAMETER);
  const none = rig({ noBridge: true });
  assertEquals(call(none, fast, 0x12n).status(), T.HV_STATUS_INVALID_CONNECTION_ID);
});

Deno.test("HvPostMessage: payload to the bridge; bad type, size, fast form refused", () => {
  const r = rig();
  const c = encodeControl({ code: T.HVCALL_POST_MESSAGE });
  const L = T.HV_INPUT_POST_MESSAGE;
  const page = r.memory.slice(IN, 256);
  L.encode(
    { connectionId: 1, messageType: 1, payloadSize: 3, payload: new Uint8Array([9, 8, 7]) },
    page,
  );
  assertEquals(call(r, c).status(), T.HV_STATUS_SUCCESS);
  assertEquals(r.bridge.messages, [{
    connectionId: 1,
    messageType: 1,
    payload: new Uint8Array([9, 8, 7]),
  }]);
  r.bridge.status = T.HV_STATUS_INSUFFICIENT_BUFFERS;
  assertEquals(call(r, c).status(), T.HV_STATUS_INSUFFICIENT_BUFFERS);
  for (
    const bad of [
      { messageType: 0 },
      { messageType: 0x80000001 },
      { payloadSize: 241 },
      { payloadSize: 0xffffffff },
    ]
  ) {
    L.encode({ connectionId: 1, messageType: 1, payloadSize: 3, ...bad }, page);
    assertEquals(call(r, c).status(), T.HV_STATUS_INVALID_PARAMETER, JSON.stringify(bad));
  }
  L.encode({ connectionId: 0xff00_0001, messageType: 1, payloadSize: 3 }, page);
  assertEquals(call(r, c).status(), T.HV_STATUS_INVALID_CONNECTION_ID);
  const fast = encodeControl({ code: T.HVCALL_POST_MESSAGE, fast: true });
  assertEquals(call(r, fast, 1n, 1n).status(), T.HV_STATUS_INVALID_HYPERCALL_INPUT);
  assertEquals(call(r, c, BigInt(IN + 4096 - 128)).status(), T.HV_STATUS_INVALID_ALIGNMENT);
});

Deno.test("flush: processor mask, all processors, empty mask, VPs that do not exist", () => {
  const r = rig({ vpCount: 4 });
  const c = encodeControl({ code: T.HVCALL_FLUSH_VIRTUAL_ADDRESS_SPACE });
  input(r, [0x1234000n, 0n, 0b10101n]);
  assertEquals(call(r, c).status(), T.HV_STATUS_SUCCESS);
  input(r, [0n, T.HV_FLUSH_ALL_PROCESSORS | T.HV_FLUSH_ALL_VIRTUAL_ADDRESS_SPACES, 0n]);
  assertEquals(call(r, c).status(), T.HV_STATUS_SUCCESS);
  input(r, [0n, T.HV_FLUSH_NON_GLOBAL_MAPPINGS_ONLY, 0n]);
  assertEquals(call(r, c).status(), T.HV_STATUS_SUCCESS, "empty mask = all (WS2012)");
  input(r, [0n, 0n, 1n << 40n]);
  assertEquals(call(r, c).status(), T.HV_STATUS_SUCCESS, "no such VP: nothing to flush");
  assertEquals(r.flusher.flushes, [[0, 2], [0, 1, 2, 3], [0, 1, 2, 3]]);
  input(r, [0n, 1n << 4n, 1n]);
  assertEquals(call(r, c).status(), T.HV_STATUS_INVALID_PARAMETER, "unknown flag");
  input(r, [0n, T.HV_FLUSH_USE_EXTENDED_RANGE_FORMAT, 1n]);
  assertEquals(call(r, c).status(), T.HV_STATUS_INVALID_PARAMETER, "extended range on Space");
  const list = encodeControl({ code: T.HVCALL_FLUSH_VIRTUAL_ADDRESS_LIST, repCount: 2 });
  assertEquals(call(r, list).status(), T.HV_STATUS_SUCCESS, "extended range on List");
  const noExt = rig({ features: without("tlbflush-ext") });
  input(noExt, [0n, T.HV_FLUSH_USE_EXTENDED_RANGE_FORMAT, 1n]);
  assertEquals(call(noExt, list).status(), T.HV_STATUS_INVALID_PARAMETER);
});

Deno.test("flush Ex: sparse banks, ALL format, bank count mismatch, bad format", () => {
  const r = rig({ vpCount: 130 });
  const c = (varHead: number) =>
    encodeControl({ code: T.HVCALL_FLUSH_VIRTUAL_ADDRESS_SPACE_EX, varHead });
  input(r, [0n, 0n, T.HV_GENERIC_SET_SPARSE_4K, 0b101n, 0b11n, 0b110n]);
  assertEquals(call(r, c(2)).status(), T.HV_STATUS_SUCCESS);
  assertEquals(r.flusher.flushes.at(-1), [0, 1, 129], "bank 0 bits 0-1, bank 2 bit 1 (VP 129)");
  assertEquals(call(r, c(1)).status(), T.HV_STATUS_INVALID_HYPERCALL_INPUT, "varhead != banks");
  assertEquals(call(r, c(3)).status(), T.HV_STATUS_INVALID_HYPERCALL_INPUT);
  input(r, [0n, 0n, T.HV_GENERIC_SET_ALL, 0n]);
  assertEquals(call(r, c(0)).status(), T.HV_STATUS_SUCCESS);
  assertEquals(r.flusher.flushes.at(-1)!.length, 130);
  input(r, [0n, 0n, 2n, 0n]);
  assertEquals(call(r, c(0)).status(), T.HV_STATUS_INVALID_PARAMETER);
  const before = r.flusher.flushes.length;
  input(r, [0n, 0n, T.HV_GENERIC_SET_SPARSE_4K, 0n]);
  assertEquals(call(r, c(0)).status(), T.HV_STATUS_SUCCESS, "empty set");
  assertEquals(r.flusher.flushes.length, before, "nothing flushed");
  const listEx = encodeControl({
    code: T.HVCALL_FLUSH_VIRTUAL_ADDRESS_LIST_EX,
    varHead: 1,
    repCount: 3,
    repStart: 1,
  });
  input(r, [0n, 0n, T.HV_GENERIC_SET_SPARSE_4K, 0b10n, 1n, 0x1000n, 0x2000n, 0x3000n]);
  const regs = call(r, listEx);
  assertEquals(regs.status(), T.HV_STATUS_SUCCESS);
  assertEquals(regs.repsCompleted(), 3);
  assertEquals(r.flusher.flushes.at(-1), [64]);
});

Deno.test("XMM fast input: read only when needed, #UD when not offered, bounded to 112 bytes", () => {
  const r = rig({ vpCount: 130 });
  const c = encodeControl({
    code: T.HVCALL_FLUSH_VIRTUAL_ADDRESS_SPACE_EX,
    fast: true,
    varHead: 2,
  });
  const regs = new FakeRegs().call64(c, 0n, 0n); // RDX = address space, R8 = flags
  regs.setXmm(0, T.HV_GENERIC_SET_SPARSE_4K, 0b101n); // format, valid bank mask
  regs.setXmm(1, 0b1000n, 0b1n); // bank 0: VP 3; bank 2: VP 128
  assertEquals(r.hv.hypercall(0, regs), "done");
  assertEquals(regs.status(), T.HV_STATUS_SUCCESS);
  assertEquals(regs.xmmReads, 2);
  assertEquals(r.flusher.flushes.at(-1), [3, 128]);

  const ipiEx = encodeControl({ code: T.HVCALL_SEND_IPI_EX, fast: true, varHead: 1 });
  const ipiRegs = new FakeRegs().call64(ipiEx, 0x40n, T.HV_GENERIC_SET_SPARSE_4K);
  ipiRegs.setXmm(0, 0b1n, 0b110n); // valid bank mask, bank 0
  assertEquals(r.hv.hypercall(0, ipiRegs), "done");
  assertEquals(ipiRegs.status(), T.HV_STATUS_SUCCESS);
  assertEquals(r.msi.targets(), [[1, 0x40], [2, 0x40]]);

  const small = encodeControl({ code: T.HVCALL_FLUSH_VIRTUAL_ADDRESS_SPACE, fast: true });
  const sregs = new FakeRegs().call64(small, 0n, T.HV_FLUSH_ALL_PROCESSORS);
  assertEquals(r.hv.hypercall(0, sregs), "done");
  assertEquals(sregs.xmmReads, 1, "24-byte input needs XMM0");

  const tooBig = encodeControl({
    code: T.HVCALL_FLUSH_VIRTUAL_ADDRESS_SPACE_EX,
    fast: true,
    varHead: 11,
  });
  assertEquals(call(r, tooBig).status(), T.HV_STATUS_INVALID_HYPERCALL_INPUT);

  const noXmm = rig({ features: without("xmm-input") });
  const uregs = new FakeRegs().call64(c);
  assertEquals(noXmm.hv.hypercall(0, uregs), "ud");
  assertEquals(uregs.getGpr("rax"), 0n);
});

Deno.test("HvSendSyntheticClusterIpi: fast mask, vector and VTL checks; Ex slow with banks", () => {
  const r = rig({ vpCount: 4 });
  const c = encodeControl({ code: T.HVCALL_SEND_IPI, fast: true });
  assertEquals(call(r, c, 0x31n, 0b1010n).status(), T.HV_STATUS_SUCCESS);
  assertEquals(r.msi.targets(), [[1, 0x31], [3, 0x31]]);
  assertEquals(r.msi.sent[0]!.address, 0xfee01000);
  r.msi.clear();
  assertEquals(call(r, c, 0x0fn, 1n).status(), T.HV_STATUS_INVALID_PARAMETER);
  assertEquals(call(r, c, 0x100n, 1n).status(), T.HV_STATUS_INVALID_PARAMETER);
  assertEquals(
    call(r, c, 0x31n | (1n << 32n), 1n).status(),
    T.HV_STATUS_INVALID_PARAMETER,
    "VTL 1",
  );
  assertEquals(r.msi.sent.length, 0);
  input(r, [0xf0n, 0b1n]);
  assertEquals(call(r, encodeControl({ code: T.HVCALL_SEND_IPI })).status(), T.HV_STATUS_SUCCESS);
  assertEquals(r.msi.targets(), [[0, 0xf0]]);
  r.msi.clear();

  const ex = encodeControl({ code: T.HVCALL_SEND_IPI_EX, varHead: 0 });
  input(r, [0xf1n, T.HV_GENERIC_SET_ALL, 0n]);
  assertEquals(call(r, ex).status(), T.HV_STATUS_SUCCESS);
  assertEquals(r.msi.targets(), [[0, 0xf1], [1, 0xf1], [2, 0xf1], [3, 0xf1]]);
  input(r, [0xf1n, T.HV_GENERIC_SET_SPARSE_4K, 1n, 0b1000n]);
  r.msi.clear();
  const ex1 = encodeControl({ code: T.HVCALL_SEND_IPI_EX, varHead: 1 });
  assertEquals(call(r, ex1).status(), T.HV_STATUS_SUCCESS);
  assertEquals(r.msi.targets(), [[3, 0xf1]]);
  assertEquals(call(r, ex).status(), T.HV_STATUS_INVALID_HYPERCALL_INPUT, "1 bank, varhead 0");
});

Deno.test("HvNotifyLongSpinWait yields the CPU", () => {
  const r = rig();
  const c = encodeControl({ code: T.HVCALL_NOTIFY_LONG_SPIN_WAIT, fast: true });
  assertEquals(call(r, c, 0x1fffn, 0n, 2).status(), T.HV_STATUS_SUCCESS);
  assertEquals(r.yields, [2]);
});

Deno.test("32-bit callers: control in EDX:EAX, result in EDX:EAX with reps completed", () => {
  const r = rig();
  input(r, [0n, T.HV_FLUSH_ALL_PROCESSORS, 0n, 0x1000n, 0x2000n]);
  const regs = new FakeRegs().call32(
    encodeControl({ code: T.HVCALL_FLUSH_VIRTUAL_ADDRESS_LIST, repCount: 2 }),
    BigInt(IN),
  );
  regs.setGpr("rdx", regs.getGpr("rdx") | 0xdead_0000_0000_0000n); // upper halves are ignored
  assertEquals(r.hv.hypercall(0, regs), "done");
  assertEquals(regs.getGpr("rdx"), 2n, "reps completed in EDX");
  assertEquals(regs.getGpr("rax"), 0n, "status in EAX");
});

Deno.test("an exception inside a call becomes a status, never a throw", () => {
  const r = rig();
  r.flusher.flush = () => {
    throw new Error("flusher down");
  };
  input(r, [0n, T.HV_FLUSH_ALL_PROCESSORS, 0n]);
  const regs = call(r, encodeControl({ code: T.HVCALL_FLUSH_VIRTUAL_ADDRESS_SPACE }));
  assertEquals(regs.status(), T.HV_STATUS_INVALID_HYPERCALL_INPUT);
  const broken = new FakeRegs();
  broken.lo = () => {
    throw new Error("KVM_GET_REGS failed");
  };
  assertEquals(r.hv.hypercall(0, broken), "done");
});

Deno.test("slow calls with output: block validated (aligned, one page, RAM), written in place", () => {
  const base = rig();
  const OUT = 0x9000;
  const seen: number[] = [];
  const ECHO = 0x7f01; // test-only call codes
  const SIZED = 0x7f02;
  const calls = new Map([
    ...HYPERCALLS,
    [
      ECHO,
      defineCall({
        name: "Echo",
        feature: "synic",
        fixed: 8,
        output: 16,
        run: (_h, input, output) => {
          seen.push(output.length);
          output.set([1, 2, 3, 4]);
          output[15] = input.u8(0);
          return T.HV_STATUS_SUCCESS;
        },
      }),
    ],
    // Output size named by the input (a header plus a count, like HvRetrieveDebugData).
    [
      SIZED,
      defineCall({
        name: "Sized",
        feature: "synic",
        fixed: 8,
        output: (input) => 8 + input.u32(0),
        run: (_h, _input, output) => {
          seen.push(output.length);
          return T.HV_STATUS_SUCCESS;
        },
      }),
    ],
  ]);
  const handler = new HypercallHandler({
    features: HV_FEATURES_ALL,
    partition: base.hv.partition,
    memory: base.memory,
    msi: base.msi,
    flusher: base.flusher,
    vpCount: 4,
    calls,
  });
  const run = (control: bigint, out: bigint) => {
    const regs = new FakeRegs().call64(control, BigInt(IN), out);
    assertEquals(handler.handle(0, regs), "done");
    return regs.status();
  };
  input(base, [0x77n]);
  const echo = encodeControl({ code: ECHO });
  assertEquals(run(echo, BigInt(OUT)), T.HV_STATUS_SUCCESS);
  assertEquals([...base.memory.slice(OUT, 16)], [
    1,
    2,
    3,
    4,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0x77,
  ]);
  assertEquals(run(echo, BigInt(OUT + 4)), T.HV_STATUS_INVALID_ALIGNMENT, "not 8-aligned");
  assertEquals(run(echo, BigInt(OUT + 4096 - 8)), T.HV_STATUS_INVALID_ALIGNMENT, "spans pages");
  assertEquals(run(echo, 0x7fff_0000n), T.HV_STATUS_INVALID_ALIGNMENT, "not RAM");
  assertEquals(run(echo, 0xffff_ffff_ffff_f000n), T.HV_STATUS_INVALID_ALIGNMENT);
  assertEquals(run(echo, BigInt(OUT + 4096 - 16)), T.HV_STATUS_SUCCESS, "ends the page");
  // XMM fast output is not offered: the fast form of a call with output is refused.
  const fastEcho = encodeControl({ code: ECHO, fast: true });
  assertEquals(run(fastEcho, BigInt(OUT)), T.HV_STATUS_INVALID_PARAMETER);
  assertEquals(seen, [16, 16]);

  const sized = encodeControl({ code: SIZED });
  input(base, [100n]);
  assertEquals(run(sized, BigInt(OUT)), T.HV_STATUS_SUCCESS);
  input(base, [4089n]); // 4097 bytes cannot fit in a page
  assertEquals(run(sized, BigInt(OUT)), T.HV_STATUS_INVALID_ALIGNMENT);
  assertEquals(seen, [16, 16, 108]);
});

Deno.test("the handler writes results as 32-bit halves and ignores upper halves in x86 mode", () => {
  const r = rig();
  const regs = new FakeRegs().call32(
    encodeControl({ code: T.HVCALL_SIGNAL_EVENT, fast: true }),
    (5n << 32n) | 0x21n,
  );
  regs.setGpr("rax", regs.getGpr("rax") | 0xffff_ffff_0000_0000n);
  regs.setGpr("rcx", regs.getGpr("rcx") | 0xabcd_0000_0000_0000n);
  assertEquals(r.hv.hypercall(0, regs), "done");
  assertEquals(regs.getGpr("rax"), 0n, "upper half of RAX cleared");
  assertEquals(r.bridge.events.at(-1), { connectionId: 0x21, flag: 5 });
  // x64: a full 64-bit control value from RCX, reps completed in RAX bits 43:32.
  input(r, [0n, T.HV_FLUSH_ALL_PROCESSORS, 0n]);
  const big = encodeControl({
    code: T.HVCALL_FLUSH_VIRTUAL_ADDRESS_LIST,
    repCount: 0xfff,
    repStart: 0xffe,
  });
  const regsBig = new FakeRegs().call64(big, BigInt(IN));
  assertEquals(r.hv.hypercall(0, regsBig), "done");
  assertEquals(regsBig.status(), T.HV_STATUS_INVALID_ALIGNMENT, "4095 reps span the page");
  const ok = encodeControl({ code: T.HVCALL_FLUSH_VIRTUAL_ADDRESS_LIST, repCount: 3, repStart: 2 });
  const regsOk = new FakeRegs().call64(ok, BigInt(IN));
  assertEquals(r.hv.hypercall(0, regsOk), "done");
  assertEquals(regsOk.result(), 3n << 32n);
});
