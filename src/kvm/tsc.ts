/**
 * Reading the host TSC from JavaScript. There is no `rdtsc` in JS and no compiled addon in this
 * project, so each thread maps an executable page holding the 11-byte function
 * `rdtsc; shl rdx, 32; or rax, rdx; ret` and calls it through FFI (~10 ns a call). The guest's
 * TSC is the host's plus KVM's per-VM offset (no TSC scaling is configured), which is what the
 * Hyper-V reference time and TSC page are functions of.
 * @module
 */
import { C, check, libc, mmap } from "../../ffi/libc.ts";

const RDTSC_CODE = new Uint8Array([
  0x0f,
  0x31, // rdtsc
  0x48,
  0xc1,
  0xe2,
  0x20, // shl rdx, 32
  0x48,
  0x09,
  0xd0, // or rax, rdx
  0xc3, // ret
]);

let rdtscFn: (() => bigint) | undefined;
let stubPage: Deno.PointerValue = null;

/** The host TSC (this thread's stub is built on first use). */
export function rdtsc(): bigint {
  if (!rdtscFn) {
    const page = mmap(4096, C.PROT_READ | C.PROT_WRITE, C.MAP_PRIVATE | C.MAP_ANONYMOUS);
    new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(page, RDTSC_CODE.length)).set(RDTSC_CODE);
    check("mprotect", libc.mprotect(page, 4096n, C.PROT_READ | C.PROT_EXEC));
    stubPage = page;
    const def = { parameters: [], result: "u64" } as const;
    const fn = new Deno.UnsafeFnPointer(page as Deno.PointerObject<typeof def>, def);
    rdtscFn = () => fn.call() as bigint;
  }
  return rdtscFn();
}

/**
 * Frees this thread's stub (a vCPU thread calls it before it ends: the page is process-wide and
 * would outlive the thread). A later `rdtsc` builds it again.
 */
export function releaseRdtsc(): void {
  if (stubPage === null) return;
  rdtscFn = undefined;
  libc.munmap(stubPage, 4096n);
  stubPage = null;
}

/** The guest's TSC as any thread can compute it: host TSC plus KVM's guest offset. */
export class GuestTsc {
  /** Guest TSC minus host TSC. */
  readonly offset: bigint;
  /** Guest TSC frequency, Hz. */
  readonly hz: number;
  /** Guest TSC when the VM started (reference time 0). */
  readonly vmStartTsc: bigint;

  constructor(offset: bigint, hz: number, vmStartTsc: bigint) {
    this.offset = offset;
    this.hz = hz;
    this.vmStartTsc = vmStartTsc;
  }

  /** The guest TSC now. */
  now(): bigint {
    return BigInt.asUintN(64, rdtsc() + this.offset);
  }
}
