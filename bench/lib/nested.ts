/**
 * Where a guest benchmark runs: here when this host's KVM runs stock guests, otherwise inside
 * the nested test machine (QEMU TCG with nested SVM), where the same script is started again
 * with `--inner` and hands its samples back over the console as one JSON line.
 * @module
 */
import { machineDescription } from "../report.ts";
import { decideMachineMode, gatherMachineFacts } from "../../tests/guest/machine/detect.ts";
import { runInTestMachine } from "../../tests/guest/machine/test_machine.ts";

const REPO = new URL("../../", import.meta.url).pathname.replace(/\/$/, "");

/** One guest benchmark script, as `runGuestBench` drives it. */
export interface GuestBench<T> {
  /** What it measures, for the skip and failure lines ("end-to-end boot benchmark"). */
  title: string;
  /** The script, relative to the repository ("bench/e2e.ts"). */
  script: string;
  /** Its options as `--name=value` flags, handed on to the inner run. */
  args: string[];
  /** This process is the inner run (`--inner`): measure and print the result line. */
  inner: boolean;
  /** Unique per script: the prefix of the console line carrying the samples. */
  resultPrefix: string;
  /** Measures on this machine's KVM. */
  measure(): Promise<T>;
  /** Builds what the inner run needs (images, tools) so the machine finds it in the cache. */
  prepare(): Promise<unknown>;
  /** The results table; `where` says which machine measured. */
  render(samples: T, where: string): string;
}

/** Runs `bench` where guests can run; returns the process exit status. */
export async function runGuestBench<T>(bench: GuestBench<T>): Promise<number> {
  if (bench.inner) {
    console.log(bench.resultPrefix + JSON.stringify(await bench.measure()));
    return 0;
  }
  const mode = decideMachineMode(gatherMachineFacts());
  if (mode.kind === "skip") {
    console.log(`skipped: ${bench.title}: ${mode.why}`);
    return 0;
  }
  if (mode.kind === "direct") {
    console.log(bench.render(await bench.measure(), `on ${machineDescription()}`));
    return 0;
  }
  if (mode.install.length > 0) {
    console.log(`skipped: ${bench.title}: install ${mode.install.join(" ")} first`);
    return 0;
  }
  console.error(`${mode.why}: measuring inside the nested test machine (QEMU TCG, nested SVM)`);
  await bench.prepare();
  let samples: T | undefined;
  const result = await runInTestMachine(
    [Deno.execPath(), "run", "-A", bench.script, "--inner", ...bench.args],
    {
      cwd: REPO,
      env: { NO_COLOR: "1" },
      onLine(line) {
        if (line.startsWith(bench.resultPrefix)) {
          samples = JSON.parse(line.slice(bench.resultPrefix.length));
        } else console.error(line);
      },
    },
  );
  if (result.problem !== undefined || result.status !== 0 || samples === undefined) {
    console.error(
      `${bench.title} failed in the test machine: ${result.problem ?? `exit ${result.status}`}`,
    );
    console.error(result.report.lines.slice(-40).join("\n"));
    return 1;
  }
  console.log(bench.render(samples, `both nested in the test machine on ${machineDescription()}`));
  return 0;
}
