import { assert, assertEquals, assertFalse } from "./assert.ts";
import { HyperV } from "../../../src/hyperv/hyperv.ts";
import { HV_FEATURES_ALL } from "../../../src/hyperv/features.ts";
import * as T from "../../../src/hyperv/tlfs.ts";
import { enableHypercalls, enableSynic, makeRig } from "./fakes.ts";

Deno.test("createState is structured-clonable (it goes to every worker)", () => {
  const state = HyperV.createState({ vpCount: 2, features: HV_FEATURES_ALL, invariantTsc: true });
  const copy = structuredClone(state);
  assertEquals(copy.vpCount, 2);
  assertEquals(copy.features, HV_FEATURES_ALL);
  assert(copy.synic instanceof SharedArrayBuffer);
});

Deno.test("two HyperV objects over one state share every register", () => {
  const a = makeRig({ vpCount: 2 });
  const b = new HyperV(a.hv.state, {
    memory: a.memory,
    clock: a.clock,
    msi: a.msi,
    scheduler: a.scheduler,
    flusher: a.flusher,
    power: a.power,
    vpRuntime100ns: () => 0n,
  });
  enableHypercalls(a);
  assert(b.partition.hypercallsEnabled);
  assert(b.wrmsr(1, T.HV_X64_MSR_SINT0 + 3, 0x55n));
  assertEquals(a.hv.rdmsr(1, T.HV_X64_MSR_SINT0 + 3), 0x55n);
  assert(a.hv.wrmsr(1, T.HV_X64_MSR_STIMER0_CONFIG, 0x20008n));
  assertEquals(b.rdmsr(1, T.HV_X64_MSR_STIMER0_CONFIG), 0x20008n);
});

Deno.test("reset returns every register to its power-on value and cancels timers", () => {
  const r = makeRig();
  enableHypercalls(r);
  enableSynic(r, 0);
  r.clock.set100ns(10n);
  assert(r.hv.wrmsr(0, T.HV_X64_MSR_STIMER0_CONFIG + 1, 1000n));
  assert(r.hv.wrmsr(0, T.HV_X64_MSR_STIMER0_CONFIG, T.HV_STIMER_ENABLE | (2n << 16n)));
  assert(r.hv.wrmsr(0, T.HV_X64_MSR_VP_ASSIST_PAGE, 0x7001n));
  assertEquals(r.scheduler.deadline(0, 0), 1000n);
  r.hv.reset();
  assertFalse(r.hv.partition.hypercallsEnabled);
  assertEquals(r.hv.rdmsr(0, T.HV_X64_MSR_GUEST_OS_ID), 0n);
  assertEquals(r.hv.rdmsr(0, T.HV_X64_MSR_SCONTROL), 0n);
  assertEquals(r.hv.rdmsr(0, T.HV_X64_MSR_SIMP), 0n);
  assertEquals(r.hv.rdmsr(0, T.HV_X64_MSR_SINT0 + 2), T.HV_SYNIC_SINT_DEFAULT);
  assertEquals(r.hv.rdmsr(0, T.HV_X64_MSR_STIMER0_CONFIG), 0n);
  assertEquals(r.hv.rdmsr(0, T.HV_X64_MSR_VP_ASSIST_PAGE), 0n);
  assertEquals(r.scheduler.deadline(0, 0), undefined);
  assertFalse(r.hv.synic.postMessage(0, 2, 1, new Uint8Array(1)));
});
