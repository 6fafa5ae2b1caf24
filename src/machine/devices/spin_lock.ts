/**
 * The device layer's name for the shared-state lock (`src/util/shared_lock.ts`).
 * @module
 */
export { LOCK_STEAL_MS, lockAcquire, lockRelease } from "../../util/shared_lock.ts";
