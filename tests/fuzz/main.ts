/**
 * `deno task fuzz [--seconds N] [--seed S] [--target NAME]`: runs every fuzz target
 * (`tests/fuzz/mod.ts`) with random seeds for N seconds in all (default 60), split evenly. Each
 * target runs in batches, each batch from its own seed drawn from the run's seed S (random unless
 * given, always printed). A broken invariant stops the run with the target, the batch seed and
 * the command that reproduces it; exit 1. Prints the inputs run per target and per second.
 * @module
 */
import { parseArgs } from "node:util";
import { prng } from "../unit/prng.ts";
import { FUZZ_TARGETS, type FuzzTarget } from "./mod.ts";

/** Result of one target's share of the run. */
export interface TargetResult {
  name: string;
  inputs: number;
  batches: number;
  seconds: number;
}

function usage(message: string): never {
  console.error(`fuzz: ${message}`);
  console.error("usage: deno task fuzz [--seconds N] [--seed S] [--target NAME]");
  Deno.exit(2);
}

function parseNumber(text: string | undefined, what: string, fallback: number): number {
  if (text === undefined) return fallback;
  const n = Number(text);
  if (!Number.isSafeInteger(n) || n < 0) usage(`${what} must be a non-negative integer: ${text}`);
  return n;
}

/** Runs `target` in batches for `seconds`; throws with the batch seed on a broken invariant. */
export async function fuzzFor(
  target: FuzzTarget,
  seed: number,
  seconds: number,
): Promise<TargetResult> {
  const seeds = prng(seed);
  const start = performance.now();
  let inputs = 0;
  let batches = 0;
  do {
    const batchSeed = Math.floor(seeds.next() * 0x1_0000_0000);
    try {
      inputs += await target.run(batchSeed, target.batch);
    } catch (e) {
      const err = new Error(
        `fuzz target ${target.name} broke an invariant with batch seed 0x${
          batchSeed.toString(16)
        }: ${(e as Error).stack ?? e}\nreproduce: deno task fuzz --target ${target.name} ` +
          `--batch-seed 0x${batchSeed.toString(16)}`,
      );
      throw err;
    }
    batches++;
  } while (performance.now() - start < seconds * 1000);
  return { name: target.name, inputs, batches, seconds: (performance.now() - start) / 1000 };
}

async function main(): Promise<number> {
  let values;
  try {
    values = parseArgs({
      args: Deno.args,
      options: {
        seconds: { type: "string" },
        seed: { type: "string" },
        target: { type: "string" },
        "batch-seed": { type: "string" },
      },
      strict: true,
    }).values;
  } catch (e) {
    usage((e as Error).message);
  }
  const seconds = parseNumber(values.seconds, "--seconds", 60);
  const seed = parseNumber(
    values.seed,
    "--seed",
    crypto.getRandomValues(new Uint32Array(1))[0]!,
  );
  const targets = values.target === undefined
    ? FUZZ_TARGETS
    : FUZZ_TARGETS.filter((t) => t.name === values.target);
  if (targets.length === 0) {
    usage(`no target ${values.target}; targets: ${FUZZ_TARGETS.map((t) => t.name).join(", ")}`);
  }
  if (values["batch-seed"] !== undefined) {
    // One batch, exactly as a failing run had it.
    const batchSeed = parseNumber(values["batch-seed"], "--batch-seed", 0);
    for (const t of targets) {
      const n = await t.run(batchSeed, t.batch);
      console.log(`${t.name}: ${n} inputs from batch seed 0x${batchSeed.toString(16)}: ok`);
    }
    return 0;
  }
  const share = seconds / targets.length;
  console.log(
    `fuzz: seed 0x${seed.toString(16)} (--seed ${seed}), ${targets.length} targets, ` +
      `${share.toFixed(1)} s each`,
  );
  const results: TargetResult[] = [];
  for (const [i, t] of targets.entries()) {
    let r: TargetResult;
    try {
      r = await fuzzFor(t, (seed + i * 0x9e3779b9) >>> 0, share);
    } catch (e) {
      console.log((e as Error).message);
      console.log(`FAILED: ${t.name} (run seed 0x${seed.toString(16)})`);
      return 1;
    }
    results.push(r);
    console.log(
      `${t.name.padEnd(16)} ${String(r.inputs).padStart(10)} inputs ${
        String(Math.round(r.inputs / r.seconds)).padStart(8)
      }/s  ${r.batches} batches  ${t.what}`,
    );
  }
  const total = results.reduce((n, r) => n + r.inputs, 0);
  console.log(`fuzz: ${total} inputs, no invariant broken (seed 0x${seed.toString(16)})`);
  return 0;
}

if (import.meta.main) Deno.exit(await main());
