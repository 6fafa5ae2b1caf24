/*
 * tlbstress: makes a 2-CPU guest flush remote TLBs and send IPIs, and checks it never sees a
 * stale mapping. Built statically by tests/guest/kit/tools.ts for the PV TLB flush guest test.
 *
 *   tlbstress ROUNDS PINGS
 *
 * Two threads of one process, pinned to CPU 0 (the mapper) and CPU 1 (the reader). The reader
 * spins in user mode the whole time, so CPU 1 always has the process's address space live and
 * every change the mapper makes must be flushed from CPU 1's TLB. Each round:
 *   1. the mapper maps a fresh page at a fixed address and writes the round number into it;
 *   2. the reader reads it (must be the round number: a stale entry would show an old page),
 *      writes it (caching a writable translation) and acknowledges;
 *   3. the mapper makes the page read-only (mprotect: a remote flush) and asks the reader to
 *      write again: the write must fault (SIGSEGV); a stale writable entry would let it through;
 *   4. the mapper checks the page still holds the reader's first write and unmaps it (munmap: a
 *      remote flush).
 * Then PINGS futex ping-pongs between the two threads, each waiting in the kernel, so every
 * wake-up of the other CPU is an IPI.
 * Prints "tlbstress ok rounds=N pings=N faults=N" and exits 0, or "tlbstress FAIL: ..." and
 * exits 1.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#define PAGE_ADDR ((void *)0x70000000000UL)

/* Phases the mapper publishes; the reader answers each with `ack = round`. */
enum { IDLE, READ, WRITE_RO, DONE };

static _Atomic int phase = IDLE;
static _Atomic long round_no = -1;
static _Atomic long ack = -1;
static _Atomic long ack_ro = -1;
static _Atomic int ping = 0;
static long stale_reads = 0, stale_writes = 0, faults = 0, first_stale = -1;
static sigjmp_buf fault_jmp;
static volatile sig_atomic_t expecting_fault = 0;

static void on_segv(int sig) {
  (void)sig;
  if (expecting_fault) siglongjmp(fault_jmp, 1);
  _exit(3);
}

static int pin(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  return sched_setaffinity(0, sizeof set, &set);
}

static long futex(_Atomic int *addr, int op, int val) {
  return syscall(SYS_futex, (int *)addr, op, val, NULL, NULL, 0);
}

/* Waits (in the kernel) until *addr != old. */
static void futex_wait_change(_Atomic int *addr, int old) {
  while (atomic_load(addr) == old) futex(addr, FUTEX_WAIT_PRIVATE, old);
}

static long pings_total;

static void *reader(void *arg) {
  (void)arg;
  if (pin(1) != 0) {
    perror("tlbstress: pin reader to CPU 1");
    exit(1);
  }
  long seen = -1, seen_ro = -1;
  for (;;) {
    int p = atomic_load(&phase);
    long r = atomic_load(&round_no);
    if (p == DONE) break;
    if (p == READ && r != seen) {
      volatile long *page = PAGE_ADDR;
      if (page[0] != r) {
        stale_reads++;
        if (first_stale < 0) first_stale = r;
      }
      page[1] = r;
      seen = r;
      atomic_store(&ack, r);
    } else if (p == WRITE_RO && r != seen_ro) {
      volatile long *page = PAGE_ADDR;
      expecting_fault = 1;
      if (sigsetjmp(fault_jmp, 1) == 0) {
        page[1] = -1; /* must fault: the page is read-only now */
        stale_writes++;
        if (first_stale < 0) first_stale = r;
      } else {
        faults++;
      }
      expecting_fault = 0;
      seen_ro = r;
      atomic_store(&ack_ro, r);
    }
  }
  /* Ping-pong: odd values are the reader's turn. */
  for (long i = 0; i < pings_total; i++) {
    futex_wait_change(&ping, (int)(2 * i));
    atomic_store(&ping, (int)(2 * i + 2));
    futex(&ping, FUTEX_WAKE_PRIVATE, 1);
  }
  return NULL;
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: tlbstress ROUNDS PINGS\n");
    return 2;
  }
  long rounds = atol(argv[1]);
  pings_total = atol(argv[2]);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_segv;
  sigaction(SIGSEGV, &sa, NULL);
  if (pin(0) != 0) {
    perror("tlbstress: pin mapper to CPU 0");
    return 1;
  }
  pthread_t t;
  if (pthread_create(&t, NULL, reader, NULL) != 0) {
    printf("tlbstress FAIL: pthread_create\n");
    return 1;
  }
  for (long r = 0; r < rounds; r++) {
    long *page = mmap(PAGE_ADDR, 4096, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    if (page == MAP_FAILED) {
      printf("tlbstress FAIL: mmap: %s\n", strerror(errno));
      return 1;
    }
    page[0] = r;
    atomic_store(&round_no, r);
    atomic_store(&phase, READ);
    while (atomic_load(&ack) != r) {
    }
    if (page[1] != r) {
      printf("tlbstress FAIL: round %ld: the reader's write is not in the page\n", r);
      return 1;
    }
    if (mprotect(page, 4096, PROT_READ) != 0) {
      printf("tlbstress FAIL: mprotect: %s\n", strerror(errno));
      return 1;
    }
    atomic_store(&phase, WRITE_RO);
    while (atomic_load(&ack_ro) != r) {
    }
    if (page[1] != r) {
      printf("tlbstress FAIL: round %ld: a write reached a read-only page\n", r);
      return 1;
    }
    atomic_store(&phase, IDLE);
    if (munmap(page, 4096) != 0) {
      printf("tlbstress FAIL: munmap: %s\n", strerror(errno));
      return 1;
    }
  }
  atomic_store(&phase, DONE);
  /* Ping-pong: even values are the mapper's turn. */
  for (long i = 0; i < pings_total; i++) {
    atomic_store(&ping, (int)(2 * i + 1));
    futex(&ping, FUTEX_WAKE_PRIVATE, 1);
    futex_wait_change(&ping, (int)(2 * i + 1));
  }
  pthread_join(t, NULL);
  if (stale_reads || stale_writes || faults != rounds) {
    printf("tlbstress FAIL: stale reads %ld, stale writes %ld (first in round %ld), "
           "faults %ld of %ld\n",
           stale_reads, stale_writes, first_stale, faults, rounds);
    return 1;
  }
  printf("tlbstress ok rounds=%ld pings=%ld faults=%ld\n", rounds, pings_total, faults);
  return 0;
}
