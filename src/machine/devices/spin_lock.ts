/**
 * A tiny spin lock in one `Int32Array` slot of a device's SharedArrayBuffer, for devices whose
 * registers are touched by more than one thread (the main thread pushing serial input while a
 * vCPU worker does register I/O). Critical sections are a handful of register updates, so
 * spinning beats parking; the main thread may not `Atomics.wait` anyway.
 *
 * A holder can vanish (a worker terminated mid-access during reset or shutdown). Rather than
 * hang the main thread, a waiter that has spun for {@linkcode LOCK_STEAL_MS} takes the lock over;
 * device state then is at worst stale, never out of bounds, because every device masks its ring
 * indices and clamps its counts.
 * @module
 */

/** Spin time after which a waiter assumes the holder is gone and takes the lock. */
export const LOCK_STEAL_MS = 50;

const UNLOCKED = 0;
const LOCKED = 1;

/** Acquires the lock in `words[index]` (0 = free, 1 = held). */
export function lockAcquire(words: Int32Array, index: number): void {
  if (Atomics.compareExchange(words, index, UNLOCKED, LOCKED) === UNLOCKED) return;
  let spins = 0;
  let start = 0;
  while (Atomics.compareExchange(words, index, UNLOCKED, LOCKED) !== UNLOCKED) {
    if ((++spins & 0x3ff) !== 0) continue;
    const now = performance.now();
    if (start === 0) start = now;
    else if (now - start > LOCK_STEAL_MS) {
      Atomics.store(words, index, LOCKED);
      return;
    }
  }
}

/** Releases the lock in `words[index]`. */
export function lockRelease(words: Int32Array, index: number): void {
  Atomics.store(words, index, UNLOCKED);
}
