/*
 * vsock: AF_VSOCK streams for the hv_sock guest test, built statically by
 * tests/guest/kit/tools.ts and put in the test initramfs.
 *
 *   vsock client PORT BYTES SEED   connect to CID 2 (the host) port PORT, send BYTES of the
 *                                  pattern of SEED, shut down the write side, read to the end
 *   vsock server PORT COUNT BYTES  listen on PORT, accept COUNT connections at once (one child
 *                                  each); each sends BYTES of the pattern of its peer's port
 *
 * Each connection sends and receives at the same time (poll), then prints one line:
 *   "conn peer=P sent=N sentcrc=X recv=N recvcrc=X ms=T" and exits 0, or "FAIL: ..." (exit 1).
 * The pattern is the top byte of an LCG (x = x * 1664525 + 1013904223, from x = SEED), one byte
 * per step; the CRC is CRC-32 (IEEE, as zlib). The host test computes the same.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/vm_sockets.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static uint32_t crc_table[256];

static void crc_init(void) {
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++) c = c & 1 ? 0xedb88320u ^ (c >> 1) : c >> 1;
    crc_table[i] = c;
  }
}

static uint32_t crc_update(uint32_t crc, const uint8_t *p, size_t n) {
  crc = ~crc;
  while (n--) crc = crc_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
  return ~crc;
}

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* Sends `bytes` of the pattern of `seed` and reads until end of stream, both at once. */
static int transfer(int fd, unsigned peer, uint64_t bytes, uint32_t seed) {
  static uint8_t out[16384], in[65536];
  uint32_t x = seed, sentcrc = 0, recvcrc = 0;
  uint64_t sent = 0, got = 0;
  size_t have = 0, off = 0;
  int reading = 1, writing = bytes > 0;
  double t0 = now_ms();
  if (!writing) shutdown(fd, SHUT_WR);
  while (reading || writing) {
    struct pollfd p = {fd, (short)((reading ? POLLIN : 0) | (writing ? POLLOUT : 0)), 0};
    if (poll(&p, 1, 120000) <= 0) {
      printf("FAIL: peer=%u poll timed out (sent=%llu recv=%llu)\n", peer,
             (unsigned long long)sent, (unsigned long long)got);
      return 1;
    }
    if (writing && (p.revents & (POLLOUT | POLLERR | POLLHUP))) {
      if (off == have) {
        uint64_t left = bytes - sent;
        have = left < sizeof(out) ? (size_t)left : sizeof(out);
        for (size_t i = 0; i < have; i++) {
          x = x * 1664525u + 1013904223u;
          out[i] = (uint8_t)(x >> 24);
        }
        off = 0;
      }
      ssize_t n = send(fd, out + off, have - off, MSG_DONTWAIT | MSG_NOSIGNAL);
      if (n < 0 && errno != EAGAIN) {
        printf("FAIL: peer=%u send: %s\n", peer, strerror(errno));
        return 1;
      }
      if (n > 0) {
        sentcrc = crc_update(sentcrc, out + off, (size_t)n);
        off += (size_t)n;
        sent += (uint64_t)n;
        if (sent == bytes) {
          writing = 0;
          shutdown(fd, SHUT_WR);
        }
      }
    }
    if (reading && (p.revents & (POLLIN | POLLERR | POLLHUP))) {
      ssize_t n = recv(fd, in, sizeof(in), MSG_DONTWAIT);
      if (n < 0 && errno != EAGAIN) {
        printf("FAIL: peer=%u recv: %s\n", peer, strerror(errno));
        return 1;
      }
      if (n == 0) reading = 0;
      if (n > 0) {
        recvcrc = crc_update(recvcrc, in, (size_t)n);
        got += (uint64_t)n;
      }
    }
  }
  double ms = now_ms() - t0;
  close(fd);
  printf("conn peer=%u sent=%llu sentcrc=%08x recv=%llu recvcrc=%08x ms=%.0f\n", peer,
         (unsigned long long)sent, sentcrc, (unsigned long long)got, recvcrc, ms);
  return 0;
}

int main(int argc, char **argv) {
  crc_init();
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (argc == 5 && strcmp(argv[1], "client") == 0) {
    unsigned port = (unsigned)strtoul(argv[2], NULL, 0);
    int fd = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (fd < 0) return printf("FAIL: socket: %s\n", strerror(errno)), 1;
    struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_HOST, .svm_port = port};
    /* The default connect timeout is 2 s; a nested, loaded test machine can take longer. */
    struct timeval tv = {.tv_sec = 30};
    setsockopt(fd, AF_VSOCK, SO_VM_SOCKETS_CONNECT_TIMEOUT, &tv, sizeof(tv));
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
      return printf("FAIL: connect to port %u: %s\n", port, strerror(errno)), 1;
    }
    return transfer(fd, port, strtoull(argv[3], NULL, 0), (uint32_t)strtoul(argv[4], NULL, 0));
  }
  if (argc == 5 && strcmp(argv[1], "server") == 0) {
    unsigned port = (unsigned)strtoul(argv[2], NULL, 0);
    int count = atoi(argv[3]);
    uint64_t bytes = strtoull(argv[4], NULL, 0);
    int ls = socket(AF_VSOCK, SOCK_STREAM, 0);
    struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = port};
    if (ls < 0 || bind(ls, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(ls, count) < 0) {
      return printf("FAIL: listen on port %u: %s\n", port, strerror(errno)), 1;
    }
    printf("listening port=%u\n", port);
    for (int i = 0; i < count; i++) {
      struct sockaddr_vm peer;
      socklen_t len = sizeof(peer);
      int fd = accept(ls, (struct sockaddr *)&peer, &len);
      if (fd < 0) return printf("FAIL: accept: %s\n", strerror(errno)), 1;
      if (fork() == 0) {
        close(ls);
        _exit(transfer(fd, peer.svm_port, bytes, peer.svm_port));
      }
      close(fd);
    }
    int status, failed = 0;
    while (wait(&status) > 0) failed |= !WIFEXITED(status) || WEXITSTATUS(status) != 0;
    return failed;
  }
  fprintf(stderr, "usage: vsock client PORT BYTES SEED | vsock server PORT COUNT BYTES\n");
  return 2;
}
