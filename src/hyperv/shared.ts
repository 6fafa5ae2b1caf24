/**
 * Small helpers for state that lives in a SharedArrayBuffer and is touched by several threads
 * (the vCPU workers and the main thread): a spin lock for short critical sections, per-thread
 * views of guest pages, and the x86 MSI address of a VP.
 * @module
 */
import type { GuestMemory } from "../kvm/guest_memory.ts";
import { PAGE_SIZE } from "../kvm/guest_memory.ts";

/** The shared-state lock (see `src/util/shared_lock.ts`), under the names this layer uses. */
export {
  lockAcquire as spinLock,
  lockRelease as spinUnlock,
  withLock,
} from "../util/shared_lock.ts";

/** Guest page address (bits 63:12) of a page MSR value, as a number. */
export function pageGpa(msr: bigint): number {
  return Number((msr >> 12n) << 12n);
}

/**
 * A 4 KiB guest page viewed as bytes and as 32-bit words, or `undefined` when the page is not
 * guest RAM (or not 4-byte aligned on the host, which a page-aligned mapping always is).
 */
export interface PageView {
  readonly gpa: number;
  readonly bytes: Uint8Array;
  readonly words: Int32Array;
}

/** Views the page at `gpa` (page-aligned). */
export function viewPage(memory: GuestMemory, gpa: number): PageView | undefined {
  const bytes = memory.trySlice(gpa, PAGE_SIZE);
  if (!bytes || bytes.byteOffset % 4 !== 0) return undefined;
  return { gpa, bytes, words: new Int32Array(bytes.buffer, bytes.byteOffset, PAGE_SIZE / 4) };
}

/** Base of the x86 MSI address window. */
export const MSI_ADDRESS_BASE = 0xfee00000;

/**
 * x86 MSI address targeting `apicId` in physical destination mode. IDs above 255 use the
 * extended destination ID bits 11:5 (virt_destid_8_14), which KVM honours once the VMM enables
 * the x2APIC API; hyperdeno's VP index equals the APIC ID.
 */
export function msiAddress(apicId: number): number {
  return (MSI_ADDRESS_BASE | ((apicId & 0xff) << 12) | (((apicId >> 8) & 0x7f) << 5)) >>> 0;
}
