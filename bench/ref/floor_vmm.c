/*
 * The floor of a vCPU exit, in C, for bench/hypercall_bench.ts: the least a VMM can do for the
 * benchmark guests (bench/lib/guest32.ts). It opens /dev/kvm, builds the same VM (1 MiB of RAM
 * at GPA 0, the same Hyper-V MSR range sent to user space with the same filter, one vCPU in flat
 * 32-bit protected mode at the same entry point), loads the same guest bytes, and answers every
 * exit with nothing: an OUT is counted and the guest resumed, a WRMSR succeeds, an RDMSR reads 0.
 * It implements no Hyper-V: the hypercall page (the production page bytes, passed in by the
 * bench) is copied into guest RAM at open, where the production code would write it when the
 * guest enables it.
 *
 * floor_decode() measures the exit decoding alone: the same switch over a kvm_run page that is
 * not mapped from KVM, as bench/exit_dispatch_bench.ts does with the TypeScript loop.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

struct floor_vm {
  int kvm, vm, vcpu;
  struct kvm_run *run;
  size_t run_size;
  uint8_t *mem;
  size_t mem_size;
  uint8_t bitmap[0x200 / 8];
};

/* ioctl, retried when a signal (a profiler's SIGPROF, say) interrupts it. */
static int xioctl(int fd, unsigned long req, void *arg) {
  int r;
  do r = ioctl(fd, req, arg);
  while (r < 0 && errno == EINTR);
  return r;
}

static void floor_free(struct floor_vm *f) {
  if (f->run && f->run != MAP_FAILED) munmap(f->run, f->run_size);
  if (f->mem && f->mem != MAP_FAILED) munmap(f->mem, f->mem_size);
  if (f->vcpu >= 0) close(f->vcpu);
  if (f->vm >= 0) close(f->vm);
  if (f->kvm >= 0) close(f->kvm);
  free(f);
}

static void flat(struct kvm_segment *s, uint8_t type, uint16_t selector) {
  memset(s, 0, sizeof(*s));
  s->base = 0;
  s->limit = 0xffffffff;
  s->selector = selector;
  s->type = type;
  s->present = 1;
  s->db = 1;
  s->s = 1;
  s->g = 1;
}

/*
 * Builds the VM. `msr_count` MSRs from `msr_base` exit to user space (0: none). Returns NULL
 * and sets errno on failure.
 */
void *floor_open(const uint8_t *code, uint32_t code_len, uint32_t code_gpa, uint32_t stack_top,
                 uint32_t mem_size, uint32_t msr_base, uint32_t msr_count, const uint8_t *page,
                 uint32_t page_len, uint32_t page_gpa, uint32_t tss_addr) {
  struct floor_vm *f = calloc(1, sizeof(*f));
  if (!f) return NULL;
  f->kvm = f->vm = f->vcpu = -1;
  int err = 0;
  if ((f->kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC)) < 0) goto fail;
  if ((f->vm = xioctl(f->kvm, KVM_CREATE_VM, NULL)) < 0) goto fail;
  if (xioctl(f->vm, KVM_SET_TSS_ADDR, (void *)(uintptr_t)tss_addr) < 0) goto fail;
  if (msr_count) {
    if (msr_count > sizeof(f->bitmap) * 8) {
      errno = EINVAL;
      goto fail;
    }
    struct kvm_enable_cap cap = {.cap = KVM_CAP_X86_USER_SPACE_MSR};
    cap.args[0] = KVM_MSR_EXIT_REASON_FILTER;
    if (xioctl(f->vm, KVM_ENABLE_CAP, &cap) < 0) goto fail;
    struct kvm_msr_filter filter = {.flags = KVM_MSR_FILTER_DEFAULT_ALLOW};
    memset(f->bitmap, 0, sizeof(f->bitmap)); /* 0 = deny to KVM = exit */
    filter.ranges[0].flags = KVM_MSR_FILTER_READ | KVM_MSR_FILTER_WRITE;
    filter.ranges[0].nmsrs = msr_count;
    filter.ranges[0].base = msr_base;
    filter.ranges[0].bitmap = f->bitmap;
    if (xioctl(f->vm, KVM_X86_SET_MSR_FILTER, &filter) < 0) goto fail;
  }
  f->mem_size = mem_size;
  f->mem = mmap(NULL, mem_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                -1, 0);
  if (f->mem == MAP_FAILED) goto fail;
  memcpy(f->mem + code_gpa, code, code_len);
  if (page_len) memcpy(f->mem + page_gpa, page, page_len);
  struct kvm_userspace_memory_region region = {
      .slot = 0, .guest_phys_addr = 0, .memory_size = mem_size,
      .userspace_addr = (uint64_t)(uintptr_t)f->mem};
  if (xioctl(f->vm, KVM_SET_USER_MEMORY_REGION, &region) < 0) goto fail;
  if ((f->vcpu = xioctl(f->vm, KVM_CREATE_VCPU, NULL)) < 0) goto fail;
  int run_size = xioctl(f->kvm, KVM_GET_VCPU_MMAP_SIZE, NULL);
  if (run_size < 0) goto fail;
  f->run_size = (size_t)run_size;
  f->run = mmap(NULL, f->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, f->vcpu, 0);
  if (f->run == MAP_FAILED) goto fail;
  struct kvm_sregs sregs;
  if (xioctl(f->vcpu, KVM_GET_SREGS, &sregs) < 0) goto fail;
  flat(&sregs.cs, 0xb, 0x8);
  flat(&sregs.ds, 0x3, 0x10);
  sregs.es = sregs.fs = sregs.gs = sregs.ss = sregs.ds;
  sregs.cr0 = (sregs.cr0 | 1) & ~(1ull << 31);
  if (xioctl(f->vcpu, KVM_SET_SREGS, &sregs) < 0) goto fail;
  struct kvm_regs regs;
  memset(&regs, 0, sizeof(regs));
  regs.rip = code_gpa;
  regs.rsp = stack_top;
  regs.rflags = 2;
  if (xioctl(f->vcpu, KVM_SET_REGS, &regs) < 0) goto fail;
  return f;
fail:
  err = errno;
  floor_free(f);
  errno = err;
  return NULL;
}

/*
 * Runs the guest until it writes `done_port`. Returns the number of other exits handled, or
 * -errno when KVM_RUN fails, or -1000 - exit_reason on an exit the floor does not handle.
 */
int64_t floor_run(void *handle, uint32_t done_port) {
  struct floor_vm *f = handle;
  struct kvm_run *run = f->run;
  int64_t exits = 0;
  for (;;) {
    if (ioctl(f->vcpu, KVM_RUN, 0) < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return -errno;
    }
    switch (run->exit_reason) {
    case KVM_EXIT_IO:
      if (run->io.port == done_port) return exits;
      exits++;
      break;
    case KVM_EXIT_X86_WRMSR:
      run->msr.error = 0;
      exits++;
      break;
    case KVM_EXIT_X86_RDMSR:
      run->msr.error = 0;
      run->msr.data = 0;
      exits++;
      break;
    default:
      return -1000 - (int64_t)run->exit_reason;
    }
  }
}

void floor_close(void *handle) {
  if (handle) floor_free(handle);
}

/* The handlers floor_decode calls: out of line, like the TypeScript loop's handler calls. */
__attribute__((noinline)) static void on_pio(uint16_t port, int write, uint8_t *data, uint8_t size) {
  __asm__ volatile("" ::"r"(port), "r"(write), "r"(data), "r"(size) : "memory");
}
__attribute__((noinline)) static void on_mmio(uint64_t addr, int write, uint8_t *data, uint32_t len) {
  __asm__ volatile("" ::"r"(addr), "r"(write), "r"(data), "r"(len) : "memory");
}
__attribute__((noinline)) static uint64_t on_rdmsr(uint32_t index) {
  __asm__ volatile("" ::"r"(index) : "memory");
  return index;
}
__attribute__((noinline)) static int on_wrmsr(uint32_t index, uint64_t value) {
  __asm__ volatile("" ::"r"(index), "r"(value) : "memory");
  return 1;
}

/*
 * Decodes the exit in `page` (a kvm_run page filled by the caller) `count` times, calling the
 * no-op handlers, as the vCPU loop would after each KVM_RUN. Returns `count`.
 */
int32_t floor_decode(uint8_t *page, uint32_t count) {
  struct kvm_run *run = (struct kvm_run *)page;
  for (uint32_t n = 0; n < count; n++) {
    __asm__ volatile("" ::: "memory"); /* reload the page as after a real KVM_RUN */
    switch (run->exit_reason) {
    case KVM_EXIT_IO: {
      uint8_t *data = page + run->io.data_offset;
      for (uint32_t i = 0; i < run->io.count; i++)
        on_pio(run->io.port, run->io.direction == KVM_EXIT_IO_OUT, data + i * run->io.size,
               run->io.size);
      break;
    }
    case KVM_EXIT_MMIO:
      on_mmio(run->mmio.phys_addr, run->mmio.is_write, run->mmio.data, run->mmio.len);
      break;
    case KVM_EXIT_X86_RDMSR:
      run->msr.data = on_rdmsr(run->msr.index);
      run->msr.error = 0;
      break;
    case KVM_EXIT_X86_WRMSR:
      run->msr.error = on_wrmsr(run->msr.index, run->msr.data) ? 0 : 1;
      break;
    default:
      return -1;
    }
  }
  return (int32_t)count;
}
