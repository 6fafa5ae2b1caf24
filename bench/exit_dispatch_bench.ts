/**
 * Exit dispatch cost (`deno bench -A bench/exit_dispatch_bench.ts`): the production vCPU loop's
 * decoding of PIO, MMIO, MSR and hypercall-port exits from a fake `kvm_run` page, alone and with
 * the production dispatch behind it, beside the same decoding in C. Needs no KVM. See
 * `lib/dispatch_figures.ts`.
 * @module
 */
import { CcError } from "./lib/cc.ts";
import { dispatchFigures } from "./lib/dispatch_figures.ts";
import { type Figure, printFiguresOnUnload, registerBenches, skipBenches } from "./lib/measure.ts";
import { openFloor } from "./lib/vcpu_figures.ts";

let figures: Figure[] = [];
try {
  figures = dispatchFigures(await openFloor());
} catch (e) {
  if (!(e instanceof CcError)) throw e;
  skipBenches("exit dispatch", e.message);
}
registerBenches(figures);
printFiguresOnUnload("Exit dispatch", () => figures);
