/*
 * kvm_pin_apic_keys: keeps the test machine's KVM from live-patching its LAPIC fast paths.
 *
 * KVM guards its LAPIC fast paths with two static keys, apic_sw_disabled and apic_hw_disabled
 * (arch/x86/kvm/lapic.c). They flip whenever the count of vCPUs with a disabled LAPIC moves
 * between 0 and 1: a vCPU is created (SVR disabled at reset), a guest enables its APIC, a
 * guest reboots and disables it. Every flip rewrites kernel text with int3-based patching
 * (text_poke_bp) while the other CPU runs KVM code.
 *
 * Under QEMU's multi-threaded TCG (the test machine) that patching can leave a stale
 * translation with the int3 in it: the CPU takes #BP, kprobes sees the byte is no longer an
 * int3 and rewinds RIP to run "the original instruction", which is the same stale int3 again.
 * The CPU loops in __apic_accept_irq forever ("soft lockup ... [worker-1]" with RIP at
 * __apic_accept_irq+0x72 and an NMI backtrace in asm_exc_int3). Real hardware does not
 * do this; QEMU's own L2 guests hit it too.
 *
 * This program holds one VM whose only vCPU never runs, with its LAPIC disabled in software
 * (its reset state) and in hardware (APIC base MSR without the enable bit). Both keys then
 * stay enabled for as long as it lives, so later VMs only move a reference count and never
 * patch text. Once set up it prints "pinned", and a child that holds the VM sleeps until
 * it is killed while the parent exits 0, so a script can run it in the foreground.
 */
#include <errno.h>
#include <sys/types.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#define MSR_IA32_APICBASE 0x1b
#define APIC_DEFAULT_BASE 0xfee00000ull
#define APICBASE_BSP (1ull << 8)

static int fail(const char *what) {
  fprintf(stderr, "kvm_pin_apic_keys: %s: %s\n", what, strerror(errno));
  return 1;
}

int main(void) {
  int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (kvm < 0) return fail("open /dev/kvm");
  int vm = ioctl(kvm, KVM_CREATE_VM, 0);
  if (vm < 0) return fail("KVM_CREATE_VM");
  if (ioctl(vm, KVM_CREATE_IRQCHIP, 0) < 0) return fail("KVM_CREATE_IRQCHIP");
  /* Creating the vCPU takes apic_sw_disabled (its SVR is disabled at reset). */
  int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
  if (vcpu < 0) return fail("KVM_CREATE_VCPU");
  /* Clearing the enable bit of the APIC base takes apic_hw_disabled. */
  struct {
    struct kvm_msrs hdr;
    struct kvm_msr_entry entry;
  } msrs;
  memset(&msrs, 0, sizeof msrs);
  msrs.hdr.nmsrs = 1;
  msrs.entry.index = MSR_IA32_APICBASE;
  msrs.entry.data = APIC_DEFAULT_BASE | APICBASE_BSP;
  if (ioctl(vcpu, KVM_SET_MSRS, &msrs) != 1) return fail("KVM_SET_MSRS(APIC base)");
  pid_t child = fork();
  if (child < 0) return fail("fork");
  if (child > 0) {
    puts("pinned");
    return 0;
  }
  /* The child's copies of the fds keep the VM alive after the parent exits. It lets go of
   * stdio so that a shell reading the parent's output sees EOF when the parent is done. */
  int null = open("/dev/null", O_RDWR);
  if (null >= 0) {
    dup2(null, 0);
    dup2(null, 1);
    dup2(null, 2);
    if (null > 2) close(null);
  }
  setsid();
  for (;;) pause();
}
