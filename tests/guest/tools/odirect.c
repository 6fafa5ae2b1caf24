/*
 * odirect: O_DIRECT block I/O for guest tests and the storage benchmark, built statically by
 * tests/guest/kit/tools.ts and put in the test initramfs.
 *
 *   odirect write DEV OFFSET LENGTH SEED  write LENGTH bytes of the seeded pattern at OFFSET with
 *                                         O_DIRECT|O_SYNC, read them back with O_DIRECT, compare
 *   odirect read DEV OFFSET LENGTH SEED   read with O_DIRECT and compare with the seeded pattern
 *   odirect randread DEV COUNT            COUNT random 4 KiB O_DIRECT reads; prints the seconds
 *
 * The data buffers are 512-byte aligned but deliberately not page aligned, so a request's first
 * segment starts inside a page. The pattern is the top byte of an LCG (x = x * 1664525 +
 * 1013904223, from x = SEED), one byte per step; the host test computes the same bytes.
 * Prints "ok ..." and exits 0, or "FAIL: ..." and exits 1.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

static int fail(const char *what) {
  printf("FAIL: %s: %s\n", what, strerror(errno));
  return 1;
}

static void fill(unsigned char *p, size_t n, uint32_t seed) {
  uint32_t x = seed;
  for (size_t i = 0; i < n; i++) {
    x = x * 1664525u + 1013904223u;
    p[i] = (unsigned char)(x >> 24);
  }
}

/* A LENGTH-byte buffer at 512 bytes past a page boundary. */
static unsigned char *buffer(size_t n) {
  void *p;
  if (posix_memalign(&p, 4096, n + 4096) != 0) return NULL;
  return (unsigned char *)p + 512;
}

static int open_direct(const char *dev, int flags) {
  int fd = open(dev, flags | O_DIRECT);
  if (fd < 0) return -1;
  if (!(fcntl(fd, F_GETFL) & O_DIRECT)) {
    errno = EINVAL;
    close(fd);
    return -1;
  }
  return fd;
}

static int read_all(int fd, unsigned char *p, size_t n, off_t at) {
  size_t done = 0;
  while (done < n) {
    ssize_t r = pread(fd, p + done, n - done, at + (off_t)done);
    if (r <= 0) {
      if (r == 0) errno = EIO;
      return -1;
    }
    done += (size_t)r;
  }
  return 0;
}

static int compare(const unsigned char *got, const unsigned char *want, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (got[i] != want[i]) {
      printf("FAIL: byte %zu is 0x%02x, expected 0x%02x\n", i, got[i], want[i]);
      return 1;
    }
  }
  return 0;
}

static int verify(const char *mode, const char *dev, off_t at, size_t n, uint32_t seed) {
  unsigned char *want = malloc(n), *buf = buffer(n);
  if (want == NULL || buf == NULL) return fail("allocating buffers");
  fill(want, n, seed);
  if (strcmp(mode, "write") == 0) {
    int fd = open_direct(dev, O_WRONLY | O_SYNC);
    if (fd < 0) return fail("open O_DIRECT|O_SYNC for writing");
    memcpy(buf, want, n);
    size_t done = 0;
    while (done < n) {
      ssize_t w = pwrite(fd, buf + done, n - done, at + (off_t)done);
      if (w <= 0) return fail("pwrite");
      done += (size_t)w;
    }
    if (close(fd) != 0) return fail("close");
    memset(buf, 0, n);
  }
  int fd = open_direct(dev, O_RDONLY);
  if (fd < 0) return fail("open O_DIRECT for reading");
  if (read_all(fd, buf, n, at) != 0) return fail("pread");
  close(fd);
  if (compare(buf, want, n) != 0) return 1;
  printf("ok %s %zu bytes at %lld\n", mode, n, (long long)at);
  return 0;
}

static int randread(const char *dev, long count) {
  int fd = open_direct(dev, O_RDONLY);
  if (fd < 0) return fail("open O_DIRECT for reading");
  uint64_t size;
  if (ioctl(fd, BLKGETSIZE64, &size) != 0) return fail("BLKGETSIZE64");
  uint64_t blocks = size / 4096;
  unsigned char *buf = buffer(4096);
  if (buf == NULL || blocks == 0) return fail("allocating the buffer");
  uint32_t x = 12345;
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (long i = 0; i < count; i++) {
    x = x * 1664525u + 1013904223u;
    if (read_all(fd, buf, 4096, (off_t)((x % blocks) * 4096)) != 0) return fail("pread");
  }
  clock_gettime(CLOCK_MONOTONIC, &t1);
  close(fd);
  printf("ok %.6f\n", (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9);
  return 0;
}

int main(int argc, char **argv) {
  if (argc == 6 && (strcmp(argv[1], "write") == 0 || strcmp(argv[1], "read") == 0)) {
    return verify(argv[1], argv[2], (off_t)strtoll(argv[3], NULL, 0),
                  (size_t)strtoull(argv[4], NULL, 0), (uint32_t)strtoul(argv[5], NULL, 0));
  }
  if (argc == 4 && strcmp(argv[1], "randread") == 0) {
    return randread(argv[2], strtol(argv[3], NULL, 0));
  }
  fprintf(stderr, "usage: odirect write|read DEV OFFSET LENGTH SEED | randread DEV COUNT\n");
  return 2;
}
