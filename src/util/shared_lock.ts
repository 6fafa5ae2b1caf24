/**
 * The one lock for state that several threads share in a SharedArrayBuffer (device registers,
 * SynIC slots, timers): an Int32 word, 0 free, 1 held, 2 held with sleepers. Holders keep it for
 * a few stores only and never call back into code that could take the same lock. A short spin
 * covers the common case; then the waiter sleeps in `Atomics.wait` (allowed on Deno's main thread
 * too), so a preempted holder is not starved by its waiters. A holder that died with the lock
 * (a Worker terminated mid-access) loses it after `LOCK_STEAL_MS`, so no thread hangs forever.
 * @module
 */

const SPINS_BEFORE_SLEEP = 100;

/** How long a waiter sleeps before it takes a lock over from a holder that must have died. */
export const LOCK_STEAL_MS = 50;

/** Takes the lock in `words[index]`. */
export function lockAcquire(words: Int32Array, index: number): void {
  let c = Atomics.compareExchange(words, index, 0, 1);
  for (let i = 0; c !== 0 && i < SPINS_BEFORE_SLEEP; i++) {
    c = Atomics.compareExchange(words, index, 0, 1);
  }
  if (c === 0) return;
  if (c !== 2) c = Atomics.exchange(words, index, 2);
  let slept = 0;
  while (c !== 0) {
    Atomics.wait(words, index, 2, 1);
    if (++slept > LOCK_STEAL_MS) {
      Atomics.store(words, index, 2); // the holder is gone: the lock is ours
      return;
    }
    c = Atomics.exchange(words, index, 2);
  }
}

/** Releases a lock taken with `lockAcquire`, waking one sleeper if there is any. */
export function lockRelease(words: Int32Array, index: number): void {
  if (Atomics.exchange(words, index, 0) === 2) Atomics.notify(words, index, 1);
}

/** Runs `fn` holding the lock in `words[index]`. */
export function withLock<R>(words: Int32Array, index: number, fn: () => R): R {
  lockAcquire(words, index);
  try {
    return fn();
  } finally {
    lockRelease(words, index);
  }
}
