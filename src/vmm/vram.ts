/**
 * Synthetic video's VRAM: host memory mapped into the guest as a KVM memory slot wherever the
 * guest's driver places it inside the VMBus MMIO windows (VRAM_LOCATION), so the guest draws at
 * memory speed instead of one MMIO exit per store. Moving it deletes the slot and adds it again.
 * @module
 */
import { C, check, libc, mmap } from "../../ffi/libc.ts";
import { KVM_IOCTL, KVM_STRUCT } from "../../ffi/kvm_abi.ts";
import type { Vram } from "../devices/video/mod.ts";
import type { GpaRange } from "../machine/memory_map.ts";

/** KVM slot of the VRAM: above RAM regions and the slots other devices add. */
const VRAM_SLOT = 480;

/** Host memory of the VRAM: allocated once per run (front ends may hold views of it). */
export interface VramMemory {
  readonly host: bigint;
  readonly bytes: Uint8Array;
}

/** Allocates `size` bytes of VRAM. */
export function allocateVram(size: number): VramMemory {
  const ptr = mmap(size, C.PROT_READ | C.PROT_WRITE, C.MAP_PRIVATE | C.MAP_ANONYMOUS);
  return {
    host: BigInt(Deno.UnsafePointer.value(ptr)),
    bytes: new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(ptr, size)),
  };
}

/** The VRAM of one boot's VM `vmFd`, mappable only inside `windows`. */
export function vramForVm(vmFd: number, memory: VramMemory, windows: readonly GpaRange[]): Vram {
  const { host, bytes: view } = memory;
  const bytes = view.length;
  let mappedAt: number | undefined;
  const set = (gpa: number, size: number) => {
    const S = KVM_STRUCT.kvm_userspace_memory_region;
    const buf = new Uint8Array(S.size);
    const dv = new DataView(buf.buffer);
    dv.setUint32(S.slot, VRAM_SLOT, true);
    dv.setUint32(S.flags, 0, true);
    dv.setBigUint64(S.guest_phys_addr, BigInt(gpa), true);
    dv.setBigUint64(S.memory_size, BigInt(size), true);
    dv.setBigUint64(S.userspace_addr, host, true);
    check(
      "ioctl(KVM_SET_USER_MEMORY_REGION)",
      libc.ioctl_buf(vmFd, BigInt(KVM_IOCTL.KVM_SET_USER_MEMORY_REGION), buf),
    );
  };
  return {
    bytes: view,
    map(gpa: number): boolean {
      const inside = windows.some((w) => gpa >= w.gpa && gpa + bytes <= w.gpa + w.size);
      if (!inside) return false;
      if (mappedAt === gpa) return true;
      if (mappedAt !== undefined) set(0, 0);
      set(gpa, bytes);
      mappedAt = gpa;
      return true;
    },
  };
}
