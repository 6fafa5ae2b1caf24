/**
 * Hyper-V enlightenments (TLFS) implemented in user space on plain KVM: CPUID leaves, synthetic
 * MSRs, the hypercall page and hypercalls, the SynIC (messages and event flags), synthetic
 * timers, the reference TSC page, crash reporting. Pure logic over `GuestMemory`, shared state
 * in SharedArrayBuffers and small interfaces the VMM implements (`GuestClock`,
 * `HypercallRegs`, `HvHostBridge`, `TlbFlusher`, `TimerScheduler`, `Notifier`, `CrashSink`,
 * `MsiSink`), so every piece is unit-tested without KVM.
 *
 * Files: `tlfs.ts` numbers and wire layouts; `features.ts` the `--hv` switch; `cpuid.ts` leaves
 * and CPUID patching; `partition.ts`, `vp.ts`, `synic.ts`, `stimer.ts` register state;
 * `msrs.ts` MSR dispatch and filter ranges; `hypercall.ts` hypercalls (`hypercall_counters.ts`
 * counts them for `status`); `syndbg.ts` the
 * synthetic debugger (MSR and hypercall interfaces over a `DebugTransport`); `crash.ts` crash
 * reports; `time.ts` reference time; `hyperv.ts` the assembled partition.
 * @module
 */
export * from "./cpuid.ts";
export * from "./crash.ts";
export * from "./features.ts";
export * from "./hypercall.ts";
export * from "./hypercall_counters.ts";
export * from "./hyperv.ts";
export * from "./msrs.ts";
export * from "./partition.ts";
export * from "./stimer.ts";
export * from "./synic.ts";
export * from "./syndbg.ts";
export * from "./time.ts";
export * from "./vp.ts";
export { msiAddress } from "./shared.ts";
export {
  DOORBELL_OUT_OFFSET,
  HV_DOORBELL_FIRST,
  HV_DOORBELL_LAST,
  HV_HYPERCALL_PORT,
  HYPERCALL_OUT_OFFSET,
  HYPERCALL_OUT_OFFSET_LONG_MODE,
  HYPERCALL_PAGE_CODE,
  HYPERCALL_PAGE_CODE_LONG_MODE,
} from "./tlfs.ts";
export * as tlfs from "./tlfs.ts";
