import assert from "node:assert/strict";
import { eventfdSignal } from "../../../ffi/libc.ts";
import { HV_DOORBELL_FIRST } from "../../../src/hyperv/mod.ts";
import type { Vm } from "../../../src/kvm/vm.ts";
import {
  bindDoorbells,
  DOORBELL_EVENTFDS,
  doorbellEventfdsFromEnv,
} from "../../../src/vmbus/doorbells.ts";
import { UsageError } from "../../../src/util/errors.ts";
import { EventLoop } from "../../../src/util/event_loop.ts";

/** A VM whose KVM_IOEVENTFD records its bindings and refuses after `accept` of them. */
function fakeVm(accept: number) {
  const bound: { fd: number; addr: number; length: number; pio: boolean }[] = [];
  const vm = {
    ioeventfd(fd: number, addr: number, length: number, pio: boolean) {
      if (bound.length >= accept) throw new Error("ioctl(KVM_IOEVENTFD): ENOSPC");
      bound.push({ fd, addr, length, pio });
    },
  };
  return { vm: vm as unknown as Vm, bound };
}

Deno.test("doorbells: each bound port's eventfd reaches onSignal with its connection id", async () => {
  const { vm, bound } = fakeVm(100);
  const loop = new EventLoop();
  const seen: number[] = [];
  const bells = bindDoorbells(vm, loop, (id) => {
    seen.push(id);
    if (seen.length === 2) loop.stop();
  }, 4);
  try {
    assert.equal(bells.bound, 4);
    assert.deepEqual(bound.map((b) => [b.addr, b.length, b.pio]), [
      [HV_DOORBELL_FIRST, 4, true],
      [HV_DOORBELL_FIRST + 1, 4, true],
      [HV_DOORBELL_FIRST + 2, 4, true],
      [HV_DOORBELL_FIRST + 3, 4, true],
    ]);
    // KVM signals the eventfd once per OUT; several before the loop runs are one doorbell.
    eventfdSignal(bound[2]!.fd);
    eventfdSignal(bound[2]!.fd);
    eventfdSignal(bound[0]!.fd);
    await loop.run();
    assert.deepEqual(seen.sort(), [HV_DOORBELL_FIRST, HV_DOORBELL_FIRST + 2]);
    assert.equal(bells.count, 2);
  } finally {
    bells.close();
    loop.close();
  }
});

Deno.test("doorbells: a KVM that refuses an ioeventfd leaves the rest to the vCPU path", () => {
  const { vm, bound } = fakeVm(3);
  const loop = new EventLoop();
  const bells = bindDoorbells(vm, loop, () => {}, 10);
  try {
    assert.equal(bells.bound, 3);
    assert.equal(bound.length, 3);
  } finally {
    bells.close();
    loop.close();
  }
  const loop2 = new EventLoop();
  const none = bindDoorbells(fakeVm(0).vm, loop2, () => {}, 10);
  assert.equal(none.bound, 0);
  none.close();
  loop2.close();
});

Deno.test("doorbells: HYPERDENO_DOORBELL_EVENTFDS takes 0-2047, anything else is refused", () => {
  assert.equal(doorbellEventfdsFromEnv(undefined), DOORBELL_EVENTFDS);
  assert.equal(doorbellEventfdsFromEnv("0"), 0);
  assert.equal(doorbellEventfdsFromEnv("2047"), 2047);
  for (const bad of ["", "-1", "2048", "1e3", "0x10", " 4", "many"]) {
    assert.throws(() => doorbellEventfdsFromEnv(bad), UsageError, `'${bad}'`);
  }
});
