/**
 * Mappings a VMM makes per boot must go away with the boot: a guest that reboots a thousand
 * times would otherwise leave a thousand `kvm_run` mappings per vCPU behind.
 */
import assert from "node:assert/strict";
import { close } from "../../../ffi/libc.ts";
import { Kvm } from "../../../src/kvm/kvm.ts";
import { rdtsc, releaseRdtsc } from "../../../src/kvm/tsc.ts";
import { Vcpu } from "../../../src/kvm/vcpu.ts";
import { VcpuControl } from "../../../src/kvm/vcpu_control.ts";
import { kvmUsable } from "./kvm_usable.ts";

const usable = kvmUsable("kvm_run mapping tests");

/** Mappings of vCPU files (`anon_inode:kvm-vcpu:N`) in this process. */
function vcpuMappings(): number {
  return Deno.readTextFileSync("/proc/self/maps").split("\n").filter((l) => l.includes("kvm-vcpu"))
    .length;
}

Deno.test({
  name: "Vcpu.close and VcpuControl.detachRun unmap kvm_run; both are idempotent",
  ignore: !usable,
  fn() {
    const kvm = Kvm.open();
    const vm = kvm.createVm();
    const fd = vm.createVcpuFd(0);
    const size = kvm.vcpuMmapSize();
    const before = vcpuMappings();
    const vcpu = new Vcpu(fd, 0, size, false);
    const control = new VcpuControl(VcpuControl.createState());
    control.attachRun(fd, size);
    control.attachRun(fd, size); // re-attaching replaces the mapping, it does not add one
    assert.equal(vcpuMappings(), before + 2);
    vcpu.close();
    control.detachRun();
    assert.equal(vcpuMappings(), before);
    vcpu.close();
    control.detachRun();
    control.request(0); // a kick after detach must not touch the unmapped page
    assert.equal(vcpuMappings(), before);
    close(fd);
    vm.close();
    kvm.close();
  },
});

Deno.test("releaseRdtsc frees the stub and a later rdtsc builds it again", () => {
  const a = rdtsc();
  releaseRdtsc();
  releaseRdtsc();
  const b = rdtsc();
  assert.ok(b > a, "the TSC moves forward");
});
