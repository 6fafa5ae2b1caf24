/**
 * Measures every benchmark figure beside its floor in one run and prints a markdown table
 * (machine, date, figure, hyperdeno, floor, ratio, target) for the README:
 *
 * ```sh
 * deno run -A bench/report.ts [--only TEXT] [--ms 1500]
 * ```
 *
 * `--only` keeps the figures whose name contains TEXT; `--ms` is the measuring time per figure
 * (env BENCH_MS). Figure sets that cannot run here (no /dev/kvm, no C compiler) are skipped
 * with the reason. The end-to-end boot comparison is separate (`bench/e2e.ts`): it needs a
 * machine that runs 64-bit guests, or several minutes in the nested test machine.
 * @module
 */
import { parseArgs } from "node:util";
import { CcError } from "./lib/cc.ts";
import { dispatchFigures } from "./lib/dispatch_figures.ts";
import { kvmDescription, kvmSkipReason } from "./lib/kvm_vm.ts";
import {
  type Figure,
  formatTable,
  measureFigure,
  type Row,
  ROW_HEADERS,
  rowCells,
  rows,
} from "./lib/measure.ts";
import { ringFigures } from "./lib/ring_figures.ts";
import { openFloor, vcpuFigures } from "./lib/vcpu_figures.ts";

function cpuModel(): string {
  try {
    const m = Deno.readTextFileSync("/proc/cpuinfo").match(/^model name\s*:\s*(.*)$/m);
    return m?.[1]?.trim() ?? "unknown CPU";
  } catch {
    return "unknown CPU";
  }
}

/** The machine in a few words: CPU, CPU count, KVM kind. */
export function shortMachine(): string {
  return `${cpuModel()} ×${navigator.hardwareConcurrency}, ${kvmDescription()}`;
}

/** The machine in full, for headers. */
export function machineDescription(): string {
  return `${shortMachine()}, Linux ${Deno.osRelease()}, Deno ${Deno.version.deno}`;
}

/** Today, YYYY-MM-DD. */
export function today(): string {
  return new Date().toISOString().slice(0, 10);
}

/** The README table: machine and date, then the figure columns. */
export function markdownRows(list: readonly Row[]): string {
  const machine = shortMachine();
  const date = today();
  return formatTable(
    ["machine", "date", ...Object.values(ROW_HEADERS)],
    list.map((r) => [machine, date, ...rowCells(r)]),
  );
}

/** Every figure set this machine can run, and why the others are skipped. */
async function allFigures(): Promise<{ figures: Figure[]; skipped: string[] }> {
  const figures: Figure[] = [];
  const skipped: string[] = [];
  const attempt = async (name: string, make: () => Promise<Figure[]>) => {
    try {
      figures.push(...await make());
    } catch (e) {
      if (!(e instanceof CcError)) throw e;
      skipped.push(`${name}: ${e.message}`);
    }
  };
  await attempt("ring throughput", ringFigures);
  await attempt("exit dispatch", async () => dispatchFigures(await openFloor()));
  const noKvm = kvmSkipReason();
  if (noKvm) skipped.push(`hypercall and port I/O latency: ${noKvm}`);
  else await attempt("hypercall and port I/O latency", vcpuFigures);
  return { figures, skipped };
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    args: Deno.args,
    options: { only: { type: "string" }, ms: { type: "string" } },
  });
  const figureMs = values.ms !== undefined ? Number(values.ms) : undefined;
  const { figures, skipped } = await allFigures();
  const chosen = figures.filter((f) => values.only === undefined || f.name.includes(values.only));
  console.error(`measuring ${chosen.length} figures on ${machineDescription()}`);
  const results = chosen.map((f) => {
    const r = measureFigure(f, figureMs !== undefined ? { figureMs } : {});
    console.error(`  ${f.name}: ${r.rounds} rounds`);
    return r;
  });
  console.log(`Measured on ${machineDescription()}, ${today()}.`);
  console.log("Each ratio is the median of per-round ratios, hyperdeno and its floor measured");
  console.log("interleaved in the same process.\n");
  console.log(markdownRows(rows(results)));
  for (const s of skipped) console.log(`\nskipped: ${s}`);
  return 0;
}

if (import.meta.main) Deno.exit(await main());
