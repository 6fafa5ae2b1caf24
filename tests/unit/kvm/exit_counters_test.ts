import assert from "node:assert/strict";
import { EXIT, ExitCounters } from "../../../src/kvm/exit_counters.ts";
import { type ControlTarget, handleControlRequest } from "../../../src/vmm/control.ts";

Deno.test("exit counters: kinds and Hyper-V MSR writes, seen from another view", () => {
  const state = ExitCounters.createState();
  const vcpu = new ExitCounters(state);
  vcpu.counts[EXIT.wrmsr]! += 3;
  vcpu.counts[EXIT.intr]!++;
  vcpu.counts[EXIT.stimer]! += 2;
  vcpu.msrWrite(0x40000095);
  vcpu.msrWrite(0x40000095);
  vcpu.msrWrite(0x400000b1);
  vcpu.msrWrite(0x6e0); // outside the Hyper-V window: not counted by index
  const s = new ExitCounters(state).snapshot();
  assert.equal(s.wrmsr, 3);
  assert.equal(s.intr, 1);
  assert.equal(s.stimer, 2);
  assert.equal(s.io, 0);
  assert.deepEqual(s.msrWrites, { "0x40000095": 2, "0x400000b1": 1 });
});

Deno.test("control status reports the exit counters of every vCPU", async () => {
  const counters = [new ExitCounters(ExitCounters.createState())];
  counters[0]!.counts[EXIT.io]! += 7;
  const target: ControlTarget = {
    boots: 1,
    cpus: 1,
    vmbus: undefined,
    ics: undefined,
    scsi: undefined,
    exits: () => counters.map((c) => c.snapshot()),
  };
  const r = await handleControlRequest('{"cmd":"status"}', target);
  assert.equal(r.ok, true);
  const exits = r.exits as { io: number }[];
  assert.equal(exits.length, 1);
  assert.equal(exits[0]!.io, 7);
});
