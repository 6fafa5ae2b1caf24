/**
 * Assertions for the Hyper-V unit tests, over `node:assert/strict` (built into Deno; no registry
 * access needed). Same names and shapes as `@std/assert`.
 * @module
 */
import nodeAssert from "node:assert/strict";

/** Deep strict equality (typed arrays compare by content). */
export function assertEquals(actual: unknown, expected: unknown, message?: string): void {
  nodeAssert.deepEqual(actual, expected, message);
}

/** Truthiness. */
export function assert(condition: unknown, message?: string): asserts condition {
  nodeAssert.ok(condition, message);
}

/** Falsiness. */
export function assertFalse(condition: unknown, message?: string): void {
  nodeAssert.ok(!condition, message);
}

/**
 * `fn` throws an instance of `errorClass` (any error when omitted) whose message contains
 * `includes`; returns the error.
 */
export function assertThrows<E extends Error = Error>(
  fn: () => unknown,
  // deno-lint-ignore no-explicit-any
  errorClass?: abstract new (...args: any[]) => E,
  includes?: string,
): E {
  try {
    fn();
  } catch (e) {
    if (errorClass && !(e instanceof errorClass)) {
      throw new nodeAssert.AssertionError({ message: `expected ${errorClass.name}, got ${e}` });
    }
    if (includes !== undefined && !(e instanceof Error && e.message.includes(includes))) {
      throw new nodeAssert.AssertionError({
        message: `expected message containing "${includes}", got "${(e as Error).message}"`,
      });
    }
    return e as E;
  }
  throw new nodeAssert.AssertionError({ message: "expected the function to throw" });
}
