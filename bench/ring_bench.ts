/**
 * VMBus ring throughput (`deno bench -A bench/ring_bench.ts`): a device's channel on the
 * production VMBus server writing and reading 64 B, 256 B, 1500 B and 64 KiB packets through
 * rings laid out as in guest memory, beside memcpy of the same bytes at the same ring offsets
 * and a C ring with the same layout and work (built with cc).
 * See `lib/ring_figures.ts` for what each figure includes.
 * @module
 */
import { CcError } from "./lib/cc.ts";
import { type Figure, printFiguresOnUnload, registerBenches, skipBenches } from "./lib/measure.ts";
import { ringFigures } from "./lib/ring_figures.ts";

let figures: Figure[] = [];
try {
  figures = await ringFigures();
} catch (e) {
  if (!(e instanceof CcError)) throw e;
  skipBenches("ring throughput", e.message);
}
registerBenches(figures);
printFiguresOnUnload("VMBus ring throughput", () => figures);
