/**
 * Runs one command inside the nested test machine, for developers:
 *
 * ```sh
 * deno run -A tests/guest/machine/run_in_machine.ts [--verbose] [--results DIR] -- CMD ARGS...
 * ```
 *
 * The command runs as root with cwd = the current directory, host `/` read-only under a tmpfs
 * overlay, and a real `/dev/kvm`. `--results DIR` shares DIR writable at the same path. Exits
 * with the command's status (or 125 when the machine itself failed).
 * @module
 */
import { parseArgs } from "node:util";
import { runInTestMachine } from "./test_machine.ts";

if (import.meta.main) {
  const { values, positionals } = parseArgs({
    args: Deno.args,
    options: {
      verbose: { type: "boolean", short: "v", default: false },
      results: { type: "string" },
    },
    allowPositionals: true,
  });
  if (positionals.length === 0) {
    console.error("usage: run_in_machine.ts [--verbose] [--results DIR] -- CMD ARGS...");
    Deno.exit(2);
  }
  const shares = [];
  if (values.results !== undefined) {
    const dir = await Deno.realPath(values.results).catch(async () => {
      await Deno.mkdir(values.results!, { recursive: true });
      return await Deno.realPath(values.results!);
    });
    shares.push({ hostPath: dir, writable: true });
  }
  const result = await runInTestMachine(positionals, {
    shares,
    verbose: values.verbose,
    onLine: (l) => console.log(l),
  });
  const t = result.timings;
  console.error(
    `test machine: boot ${t.bootSeconds?.toFixed(1) ?? "?"} s, command start ` +
      `${t.commandStartSeconds?.toFixed(1) ?? "?"} s, total ${t.totalSeconds.toFixed(1)} s`,
  );
  if (result.problem !== undefined) {
    console.error(`test machine: ${result.problem}`);
    if (!values.verbose) console.error(result.report.lines.slice(-40).join("\n"));
    Deno.exit(125);
  }
  Deno.exit(result.status ?? 125);
}
