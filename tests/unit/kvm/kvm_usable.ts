/**
 * Whether this host's /dev/kvm can be opened, for the unit tests that run real-mode guests on any
 * KVM (PVM included); says which tests are skipped when it cannot.
 * @module
 */
import { Kvm, kvmFlavour } from "../../../src/kvm/kvm.ts";

/** True when /dev/kvm opens; otherwise warns that `what` is skipped and why. */
export function kvmUsable(what: string): boolean {
  try {
    Kvm.open().close();
    return true;
  } catch {
    console.warn(`skipped: ${what} (/dev/kvm ${kvmFlavour()} or not accessible)`);
    return false;
  }
}
