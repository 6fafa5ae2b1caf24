/**
 * vCPU exit latency on this host's KVM (`deno bench -A bench/hypercall_bench.ts`): a Hyper-V
 * hypercall round trip (fast HvSignalEvent from a 32-bit guest) through the production
 * hypercall path, and a plain port-I/O exit through the run loop, each beside a C floor VMM
 * running the same guest bytes. See `lib/vcpu_figures.ts`. Skipped without a usable /dev/kvm.
 * @module
 */
import { CcError } from "./lib/cc.ts";
import { kvmSkipReason } from "./lib/kvm_vm.ts";
import { type Figure, printFiguresOnUnload, registerBenches, skipBenches } from "./lib/measure.ts";
import { vcpuFigures } from "./lib/vcpu_figures.ts";

let figures: Figure[] = [];
const noKvm = kvmSkipReason();
if (noKvm) {
  skipBenches("hypercall and port I/O latency", noKvm);
} else {
  try {
    figures = await vcpuFigures();
  } catch (e) {
    if (!(e instanceof CcError)) throw e;
    skipBenches("hypercall and port I/O latency", e.message);
  }
}
registerBenches(figures);
printFiguresOnUnload("vCPU exits", () => figures);
