/**
 * Processor sets of the TLB-flush and IPI hypercalls: the 64-bit processor mask of the classic
 * calls and the HV_VP_SET (format + valid bank mask + sparse banks) of the Ex calls. Indices of
 * VPs that do not exist are ignored, as KVM does; the result is sorted and duplicate-free.
 * @module
 */
import * as T from "./tlfs.ts";

/** All VP indices of a partition with `vpCount` VPs. */
export function allVps(vpCount: number): number[] {
  return Array.from({ length: vpCount }, (_, i) => i);
}

function bitsOf(mask: bigint, base: number, vpCount: number, out: number[]): void {
  for (let bit = 0; bit < 64 && mask !== 0n; bit++, mask >>= 1n) {
    if (mask & 1n) {
      const vp = base + bit;
      if (vp < vpCount) out.push(vp);
    }
  }
}

/** VPs named by a 64-bit processor mask (bank 0 only). */
export function vpsFromMask(mask: bigint, vpCount: number): number[] {
  const out: number[] = [];
  bitsOf(BigInt.asUintN(64, mask), 0, vpCount, out);
  return out;
}

/** Number of set bits of a 64-bit mask. */
export function popcount64(mask: bigint): number {
  let n = 0;
  for (let m = BigInt.asUintN(64, mask); m !== 0n; m &= m - 1n) n++;
  return n;
}

/** An HV_VP_SET decoded into VP indices, or the reason it is invalid. */
export type VpSetResult =
  | { ok: true; vps: number[] }
  | { ok: false; status: number };

/**
 * Decodes an HV_VP_SET whose banks (one u64 per set bit of `validBankMask`, in bank order) are
 * read with `bank(i)`, `bankCount` of them supplied (the hypercall's variable header size).
 * `bankCount` must equal the number of valid banks (HV_STATUS_INVALID_HYPERCALL_INPUT, as KVM
 * checks), and the format must be SPARSE_4K or ALL (HV_STATUS_INVALID_PARAMETER).
 */
export function decodeVpSet(
  format: bigint,
  validBankMask: bigint,
  bankCount: number,
  bank: (i: number) => bigint,
  vpCount: number,
): VpSetResult {
  if (popcount64(validBankMask) !== bankCount) {
    return { ok: false, status: T.HV_STATUS_INVALID_HYPERCALL_INPUT };
  }
  if (format === T.HV_GENERIC_SET_ALL) return { ok: true, vps: allVps(vpCount) };
  if (format !== T.HV_GENERIC_SET_SPARSE_4K) {
    return { ok: false, status: T.HV_STATUS_INVALID_PARAMETER };
  }
  const out: number[] = [];
  let i = 0;
  let mask = BigInt.asUintN(64, validBankMask);
  for (let b = 0; b < 64 && mask !== 0n; b++, mask >>= 1n) {
    if (mask & 1n) bitsOf(BigInt.asUintN(64, bank(i++)), b * 64, vpCount, out);
  }
  return { ok: true, vps: out };
}
