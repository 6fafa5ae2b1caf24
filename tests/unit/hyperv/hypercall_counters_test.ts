import { assertEquals } from "./assert.ts";
import { encodeControl, HypercallCounters } from "../../../src/hyperv/mod.ts";
import * as T from "../../../src/hyperv/tlfs.ts";
import { enableHypercalls, FakeRegs, makeRig } from "./fakes.ts";

const IN = 0x8000;

Deno.test("hypercall counters: calls by name and status, flush and IPI targets per VP", () => {
  const r = makeRig({ vpCount: 4 });
  enableHypercalls(r);
  const counters = new HypercallCounters(r.hv.state.hypercallCounters, 4);
  const call = (vp: number, control: bigint, a: bigint, b: bigint) => {
    const regs = new FakeRegs().call64(control, a, b);
    assertEquals(r.hv.hypercall(vp, regs), "done");
    return regs.status();
  };
  // VP 1 flushes VPs 0 and 2 (slow, mask in the input page), twice.
  [0n, 0n, 0b101n].forEach((q, i) => r.memory.writeU64(IN + i * 8, q));
  const flush = encodeControl({ code: T.HVCALL_FLUSH_VIRTUAL_ADDRESS_SPACE });
  assertEquals(call(1, flush, BigInt(IN), 0n), T.HV_STATUS_SUCCESS);
  assertEquals(call(1, flush, BigInt(IN), 0n), T.HV_STATUS_SUCCESS);
  // VP 2 sends vector 0x31 to VPs 1 and 3, then a bad vector.
  const ipi = encodeControl({ code: T.HVCALL_SEND_IPI, fast: true });
  assertEquals(call(2, ipi, 0x31n, 0b1010n), T.HV_STATUS_SUCCESS);
  assertEquals(call(2, ipi, 0x01n, 0b1010n), T.HV_STATUS_INVALID_PARAMETER);
  // An unknown code, and a call from CPL 3 (#UD, not decoded).
  assertEquals(
    call(0, encodeControl({ code: 0x7777 }), 0n, 0n),
    T.HV_STATUS_INVALID_HYPERCALL_CODE,
  );
  const user = new FakeRegs().call64(ipi, 0x31n, 1n);
  user.privilege = 3;
  assertEquals(r.hv.hypercall(0, user), "ud");

  const s = counters.snapshot();
  assertEquals(s[1]!.calls, { HvFlushVirtualAddressSpace: { HV_STATUS_SUCCESS: 2 } });
  assertEquals(s[1]!.flushTargets, [2, 0, 2, 0]);
  assertEquals(s[2]!.calls, {
    HvSendSyntheticClusterIpi: { HV_STATUS_SUCCESS: 1, HV_STATUS_INVALID_PARAMETER: 1 },
  });
  assertEquals(s[2]!.ipiTargets, [0, 1, 0, 1]);
  assertEquals(s[0]!.calls, { other: { HV_STATUS_INVALID_HYPERCALL_CODE: 1, "#UD": 1 } });
  assertEquals(s[3]!.calls, {});
});

Deno.test("hypercall counters: out-of-range VPs and statuses are bounded", () => {
  const state = HypercallCounters.createState(2);
  const c = new HypercallCounters(state, 2);
  c.record(5, 2, 0);
  c.record(-1, 2, 0);
  c.flushTarget(0, 9);
  c.ipiTarget(9, 0);
  c.record(0, 0x2, 0xffff);
  assertEquals(c.snapshot()[0], {
    calls: { HvFlushVirtualAddressSpace: { other: 1 } },
    flushTargets: [0, 0],
    ipiTargets: [0, 0],
  });
});
