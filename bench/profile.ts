/**
 * Summarises a V8 `.cpuprofile` (from `deno run --cpu-prof`): self time per function, largest
 * first, so a bench's hot spots can be read without DevTools.
 *
 * ```sh
 * deno run -A --cpu-prof --cpu-prof-dir=.cache/prof bench/report.ts --only hypercall
 * deno run -A bench/profile.ts .cache/prof/*.cpuprofile
 * ```
 * @module
 */

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}

interface Profile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

/** Self time (µs) by "function (file:line)", and the total. */
export function selfTimes(profile: Profile): { total: number; byFunction: Map<string, number> } {
  const nodes = new Map(profile.nodes.map((n) => [n.id, n]));
  const byFunction = new Map<string, number>();
  let total = 0;
  profile.samples.forEach((id, i) => {
    const dt = profile.timeDeltas[i] ?? 0;
    const f = nodes.get(id)!.callFrame;
    const file = f.url.replace(/^.*\/(src|bench|ffi)\//, "$1/");
    const key = `${f.functionName || "(anonymous)"} ${file ? `(${file}:${f.lineNumber + 1})` : ""}`;
    byFunction.set(key, (byFunction.get(key) ?? 0) + dt);
    total += dt;
  });
  return { total, byFunction };
}

if (import.meta.main) {
  const top = Number(Deno.env.get("TOP") ?? 25);
  for (const path of Deno.args) {
    const { total, byFunction } = selfTimes(JSON.parse(await Deno.readTextFile(path)));
    console.log(`${path}: ${(total / 1e6).toFixed(2)} s sampled`);
    const sorted = [...byFunction].sort((a, b) => b[1] - a[1]).slice(0, top);
    for (const [name, us] of sorted) {
      console.log(`${(100 * us / total).toFixed(1).padStart(5)}%  ${name}`);
    }
  }
}
