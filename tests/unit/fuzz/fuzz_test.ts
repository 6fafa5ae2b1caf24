/**
 * Every fuzz target of `tests/fuzz/mod.ts` at a fixed seed (its `unitInputs` inputs), so CI runs
 * the same subset every time; `deno task fuzz` runs them with random seeds for longer.
 * `HYPERDENO_FUZZ_SEED` overrides the seed.
 */
import { FUZZ_TARGETS } from "../../fuzz/mod.ts";

const SEED = Number(Deno.env.get("HYPERDENO_FUZZ_SEED") ?? 0x5eed1234);

for (const [i, target] of FUZZ_TARGETS.entries()) {
  const seed = (SEED + i * 0x9e3779b9) >>> 0;
  Deno.test(`fuzz ${target.name}: ${target.unitInputs} inputs (seed 0x${seed.toString(16)})`, async () => {
    const n = await target.run(seed, target.unitInputs);
    if (n < target.unitInputs * 0.8) {
      throw new Error(`${target.name}: only ${n} of ${target.unitInputs} inputs ran`);
    }
  });
}
