/**
 * Assertions for the VMBus unit tests, over `node:assert/strict` (built into Deno; no registry
 * access needed).
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

/** `fn` throws an instance of `errorClass` (any error when omitted). */
export function assertThrows(
  fn: () => unknown,
  // deno-lint-ignore no-explicit-any
  errorClass?: abstract new (...args: any[]) => Error,
): void {
  nodeAssert.throws(fn, (e: unknown) => errorClass === undefined || e instanceof errorClass);
}
