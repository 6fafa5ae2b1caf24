/*
 * cr8_vintr_check: the test machine's self-check that its outer QEMU survives a nested guest
 * writing CR8 while an interrupt is pending and masked.
 *
 * Debian's QEMU 7.2 (and 10.0) aborts there ("tcg_handle_interrupt: assertion failed"): KVM in
 * the test machine runs this guest with V_INTR_MASKING, and because the guest has IF=0 it asks
 * for an interrupt window by setting V_IRQ; every CR8 write then makes the outer QEMU's
 * helper_write_crN call cpu_interrupt() without the iothread lock. That is what kills any OVMF
 * guest (and would kill Windows, whose IRQL is CR8). The fixed build
 * (tests/guest/machine/qemu/cr8-write-iothread-lock.patch) takes the lock.
 *
 * The guest: 64-bit long mode, IF=0, in-kernel irqchip with the LAPIC software-enabled (else KVM
 * keeps intercepting CR8 writes), PIC IRQ 4 raised before it runs. It writes CR8 LOOPS times,
 * reports through port 0x501, then executes STI: the interrupt that was pending all along is
 * delivered and its handler reports through port 0x502. Prints "ok ..." and exits 0 when both
 * happened in that order; anything else prints "failed: ..." and exits 1. Against the broken
 * QEMU it never returns: the whole test machine dies on the first CR8 write.
 */
#include <errno.h>
#include <signal.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define MEM_SIZE 0x200000ul
#define PML4 0x1000
#define PDPT 0x2000
#define PD 0x3000
#define IDT 0x4000
#define GDT 0x5000
#define CODE 0x6000
#define HANDLER 0x6100
#define STACK_TOP 0x8000
#define PORT_LOOP_DONE 0x501
#define PORT_INTERRUPT 0x502
#define PIC_IRQ 4
#define LOOPS 100000u
#define APIC_SPIV 0xf0
#define APIC_SPIV_ENABLE 0x100u

static int fail(const char *what) {
  printf("failed: %s: %s\n", what, strerror(errno));
  return 1;
}

static void on_alarm(int sig) {
  (void)sig;
  static const char msg[] = "failed: timed out waiting for the guest\n";
  if (write(1, msg, sizeof msg - 1) < 0) _exit(1);
  _exit(1);
}

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void put64(uint8_t *mem, uint64_t at, uint64_t v) { memcpy(mem + at, &v, sizeof v); }

static void guest_image(uint8_t *mem) {
  put64(mem, PML4, PDPT | 3);
  put64(mem, PDPT, PD | 3);
  put64(mem, PD, 0x83); /* one 2 MiB page at 0, present + writable + large */
  put64(mem, GDT + 8, 0x00209a0000000000ull);  /* 0x08: 64-bit code */
  put64(mem, GDT + 16, 0x00cf92000000ffffull); /* 0x10: data */
  for (int v = 0; v < 256; v++) { /* every vector: interrupt gate to HANDLER */
    uint8_t *g = mem + IDT + 16 * v;
    memset(g, 0, 16);
    g[0] = HANDLER & 0xff;
    g[1] = (HANDLER >> 8) & 0xff;
    g[2] = 0x08;
    g[5] = 0x8e;
  }
  static const uint8_t code[] = {
      0xb9, LOOPS & 0xff, (LOOPS >> 8) & 0xff, (LOOPS >> 16) & 0xff, LOOPS >> 24, /* mov ecx, LOOPS */
      0x31, 0xc0,                   /* xor eax, eax */
      0x44, 0x0f, 0x22, 0xc0,       /* 1: mov cr8, rax */
      0xff, 0xc9,                   /* dec ecx */
      0x75, 0xf8,                   /* jnz 1b */
      0x66, 0xba, PORT_LOOP_DONE & 0xff, PORT_LOOP_DONE >> 8, /* mov dx, PORT_LOOP_DONE */
      0xee,                         /* out dx, al */
      0xfb,                         /* sti: the pending interrupt is taken after the next insn */
      0x90,                         /* nop */
      0xf4,                         /* 2: hlt */
      0xeb, 0xfd,                   /* jmp 2b */
  };
  static const uint8_t handler[] = {
      0x66, 0xba, PORT_INTERRUPT & 0xff, PORT_INTERRUPT >> 8, /* mov dx, PORT_INTERRUPT */
      0xee,                         /* out dx, al */
      0xf4,                         /* 3: hlt */
      0xeb, 0xfd,                   /* jmp 3b */
  };
  memcpy(mem + CODE, code, sizeof code);
  memcpy(mem + HANDLER, handler, sizeof handler);
}

static void long_mode(struct kvm_sregs *s) {
  struct kvm_segment cs = {.base = 0, .limit = 0xffffffff, .selector = 0x08, .type = 11,
                           .present = 1, .dpl = 0, .db = 0, .s = 1, .l = 1, .g = 1};
  struct kvm_segment ds = {.base = 0, .limit = 0xffffffff, .selector = 0x10, .type = 3,
                           .present = 1, .dpl = 0, .db = 1, .s = 1, .l = 0, .g = 1};
  struct kvm_segment tr = {.base = 0, .limit = 0x67, .selector = 0, .type = 11, .present = 1};
  s->cs = cs;
  s->ds = s->es = s->fs = s->gs = s->ss = ds;
  s->tr = tr;
  s->gdt.base = GDT;
  s->gdt.limit = 23;
  s->idt.base = IDT;
  s->idt.limit = 256 * 16 - 1;
  s->cr3 = PML4;
  s->cr4 = 0x20;              /* PAE */
  s->cr0 = 0x80000011;        /* PG | ET | PE */
  s->efer = 0x500;            /* LMA | LME */
}

int main(void) {
  int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (kvm < 0) return fail("open /dev/kvm");
  int vm = ioctl(kvm, KVM_CREATE_VM, 0);
  if (vm < 0) return fail("KVM_CREATE_VM");
  if (ioctl(vm, KVM_CREATE_IRQCHIP, 0) < 0) return fail("KVM_CREATE_IRQCHIP");
  uint8_t *mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) return fail("mmap guest memory");
  struct kvm_userspace_memory_region region = {
      .slot = 0, .guest_phys_addr = 0, .memory_size = MEM_SIZE, .userspace_addr = (uintptr_t)mem};
  if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0) return fail("KVM_SET_USER_MEMORY_REGION");
  guest_image(mem);
  int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
  if (vcpu < 0) return fail("KVM_CREATE_VCPU");
  int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
  if (run_size < 0) return fail("KVM_GET_VCPU_MMAP_SIZE");
  struct kvm_run *run = mmap(NULL, (size_t)run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
  if (run == MAP_FAILED) return fail("mmap kvm_run");

  struct kvm_sregs sregs;
  if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0) return fail("KVM_GET_SREGS");
  long_mode(&sregs);
  if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0) return fail("KVM_SET_SREGS");
  struct kvm_regs regs;
  memset(&regs, 0, sizeof regs);
  regs.rip = CODE;
  regs.rsp = STACK_TOP;
  regs.rflags = 0x2; /* IF=0: the interrupt stays pending and masked */
  if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0) return fail("KVM_SET_REGS");
  /* A software-enabled LAPIC makes KVM stop intercepting CR8 writes (update_cr8_intercept);
   * LINT0 stays ExtINT, so the PIC's interrupt reaches the vCPU. */
  struct kvm_lapic_state lapic;
  if (ioctl(vcpu, KVM_GET_LAPIC, &lapic) < 0) return fail("KVM_GET_LAPIC");
  uint32_t spiv;
  memcpy(&spiv, lapic.regs + APIC_SPIV, sizeof spiv);
  spiv |= APIC_SPIV_ENABLE;
  memcpy(lapic.regs + APIC_SPIV, &spiv, sizeof spiv);
  if (ioctl(vcpu, KVM_SET_LAPIC, &lapic) < 0) return fail("KVM_SET_LAPIC");
  struct kvm_irq_level line = {.irq = PIC_IRQ, .level = 1};
  if (ioctl(vm, KVM_IRQ_LINE, &line) < 0) return fail("KVM_IRQ_LINE");

  signal(SIGALRM, on_alarm);
  alarm(120); /* a lost interrupt must not hang the test machine's start */
  double start = now(), loop_done = 0;
  for (;;) {
    if (ioctl(vcpu, KVM_RUN, 0) < 0) {
      if (errno == EINTR) continue;
      return fail("KVM_RUN");
    }
    if (run->exit_reason != KVM_EXIT_IO) {
      printf("failed: unexpected exit %u at CR8 loop %s\n", run->exit_reason,
             loop_done > 0 ? "done" : "running");
      return 1;
    }
    if (run->io.port == PORT_LOOP_DONE && loop_done == 0) {
      loop_done = now();
    } else if (run->io.port == PORT_INTERRUPT && loop_done > 0) {
      printf("ok: %u CR8 writes with an interrupt pending and masked in %.2f s, then delivered\n",
             LOOPS, loop_done - start);
      return 0;
    } else {
      printf("failed: I/O to port 0x%x out of order\n", run->io.port);
      return 1;
    }
  }
}
