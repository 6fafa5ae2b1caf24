/**
 * What a fuzz target is: one guest-facing parser (or a family of them) driven by seeded random
 * inputs against the real code, with its invariants checked as it goes. The unit tests run each
 * target once at a fixed seed (`unitInputs`); `deno task fuzz` runs batches with random seeds
 * for as long as it is given.
 * @module
 */

/** One fuzz target. */
export interface FuzzTarget {
  /** Short name, as `deno task fuzz --target NAME` takes it. */
  readonly name: string;
  /** What is fuzzed, one line. */
  readonly what: string;
  /** Inputs of the unit test's fixed-seed run. */
  readonly unitInputs: number;
  /** Inputs per batch of `deno task fuzz` (each batch has its own seed and fresh state). */
  readonly batch: number;
  /**
   * Runs about `inputs` inputs from `seed` against fresh state; throws when an invariant breaks
   * (the message says which, the caller adds the seed). Resolves to the inputs actually run.
   */
  run(seed: number, inputs: number): number | Promise<number>;
}
