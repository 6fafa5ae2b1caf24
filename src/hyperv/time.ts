/**
 * Partition reference time: 100 ns units since VM start, one function of the guest TSC used by
 * both the TIME_REF_COUNT MSR and the reference TSC page, so a guest that mixes them (Linux
 * reads the page, falls back to the MSR while the page sequence is 0) never sees time go back.
 *
 *   reference(tsc) = ((tsc * scale) >> 64) + offset          (mod 2^64, offset signed)
 *   scale  = floor(10^7 * 2^64 / tscHz)
 *   offset = -((vmStartTsc * scale) >> 64)
 *
 * which is exactly what the guest computes from the page (TLFS "Partition Reference TSC
 * Mechanism"; Linux `hv_read_tsc_page_tsc`), and is 0 at `vmStartTsc`.
 * @module
 */

/** The guest's TSC as the VMM sees it; implemented by the caller (src/kvm). */
export interface GuestClock {
  /** Current guest TSC (what RDTSC returns in the guest now). */
  guestTsc(): bigint;
  /** Guest TSC frequency in Hz (KVM_GET_TSC_KHZ * 1000). */
  readonly tscHz: number;
  /** Guest TSC at VM start: reference time 0. */
  readonly vmStartTsc: bigint;
}

/** 100 ns ticks per second. */
export const HV_CLOCK_HZ = 10_000_000n;

const U64 = (1n << 64n) - 1n;

/** Scale and offset of the reference TSC page. */
export interface ReferenceTscParams {
  /** 64.64 fixed-point multiplier: 100 ns ticks per TSC tick. */
  readonly scale: bigint;
  /** Signed offset in 100 ns units. */
  readonly offset: bigint;
}

/**
 * Page parameters for a TSC of `tscHz` started at `vmStartTsc`. Throws `RangeError` for a TSC
 * slower than 10 MHz (the scale would not fit in 64 bits) or a non-integer frequency.
 */
export function referenceTscParams(tscHz: number, vmStartTsc: bigint): ReferenceTscParams {
  if (!Number.isSafeInteger(tscHz) || BigInt(tscHz) <= HV_CLOCK_HZ) {
    throw new RangeError(`reference TSC: TSC frequency ${tscHz} Hz must be above 10 MHz`);
  }
  const scale = (HV_CLOCK_HZ << 64n) / BigInt(tscHz);
  const offset = BigInt.asIntN(64, -((BigInt.asUintN(64, vmStartTsc) * scale) >> 64n));
  return { scale, offset };
}

/** Reference time (100 ns units, unsigned 64-bit) at guest TSC `tsc`. */
export function referenceTime(tsc: bigint, params: ReferenceTscParams): bigint {
  return (((BigInt.asUintN(64, tsc) * params.scale) >> 64n) + params.offset) & U64;
}
