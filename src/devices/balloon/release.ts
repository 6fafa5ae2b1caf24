/**
 * The host side of ballooning: dropping the backing of guest pages the guest gave up, with
 * `madvise(MADV_DONTNEED)` on the RAM mapping (anonymous memory: the pages return to the host
 * and read as zero if the guest ever touches them again).
 * @module
 */
import { C, libc } from "../../../ffi/libc.ts";
import type { GuestMemory } from "../../kvm/guest_memory.ts";

/** A `release` for `DynamicMemoryDevice` over `memory`'s host mappings. */
export function madviseRelease(memory: GuestMemory): (gpa: number, bytes: number) => void {
  return (gpa, bytes) => {
    const view = memory.trySlice(gpa, bytes);
    if (!view) return; // the device only releases guest RAM; never act on anything else
    const ptr = Deno.UnsafePointer.of(view);
    libc.madvise(ptr, BigInt(bytes), C.MADV_DONTNEED);
  };
}

/** This process's resident set size in bytes (`VmRSS`), or undefined when unknown. */
export function hostRssBytes(): number | undefined {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(Deno.readTextFileSync("/proc/self/status"));
    return m ? Number(m[1]) * 1024 : undefined;
  } catch {
    return undefined;
  }
}
