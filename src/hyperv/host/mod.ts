/**
 * The Hyper-V enlightenments' host side over KVM and threads (what `src/hyperv` leaves to the
 * VMM through its contracts): VM-wide setup (`setupEnlightenments`: CPUID, MSR routing, the
 * shared partition state, the host bridge's eventfd, the synthetic debugger socket), each vCPU
 * thread's attachment (`attachEnlightenments`, `attachVcpuTimers`), hypercall registers over a
 * vCPU's sync regs, #UD injection, TLB flushes by kick, the guest clock, the Hyper-V ports in
 * the device registry, and the UDP transport of the synthetic debugger.
 * @module
 */
export * from "./enlightenments.ts";
export * from "./hyperv_host.ts";
export * from "./host_bridge.ts";
export * from "./vcpu_timers.ts";
export * from "./syndbg_udp.ts";
