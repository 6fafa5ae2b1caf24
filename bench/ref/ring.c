/*
 * Reference VMBus ring in C, for bench/ring_bench.ts: the same layout and the same work per
 * packet as the host side in src/vmbus (Channel.send -> OutgoingRing.writePacket; a signal's
 * read loop in Channel: interrupt mask, IncomingRing.readPacket, the device copying the payload
 * out, IncomingRing.endRead, re-check), written the way a C VMM would (memcpy, one sequentially
 * consistent store to publish an index), so the ratio measures what TypeScript costs.
 *
 * Layout (hv_ring_buffer): a 4 KiB control page (u32 write index at 0, read index at 4,
 * interrupt mask at 8, pending send size at 12, feature bits at 64) and a data area of `size`
 * bytes. A packet is a 16-byte descriptor (type, offset8, len8, flags, transaction id), the
 * payload padded to 8 bytes, and an 8-byte trailer holding the packet's start offset.
 *
 * Each entry point runs `count` packets in one call (no FFI per packet) and includes the
 * guest's half of the exchange, done the same way as the TypeScript bench does it: after a
 * host write the guest releases the space (read index = write index); before a host read the
 * guest publishes a packet whose descriptor and trailer it writes (its payload bytes are
 * whatever the ring holds).
 */
#include <stdint.h>
#include <string.h>

enum { WRITE_INDEX = 0, READ_INDEX = 1, INTERRUPT_MASK = 2, PENDING_SEND_SIZE = 3 };
enum { DESC = 16, TRAILER = 8, TYPE_INBAND = 6, TYPE_COMP = 11, FLAG_COMPLETION = 1 };

static inline uint32_t load(volatile uint32_t *ctrl, int word) { return ctrl[word]; }

static inline void publish(volatile uint32_t *ctrl, int word, uint32_t v) {
  __atomic_store_n(&ctrl[word], v, __ATOMIC_SEQ_CST);
}

/* Copies into the ring at `off`, wrapping at `size`. */
static void copy_in(uint8_t *data, uint32_t size, uint32_t off, const uint8_t *src, uint32_t len) {
  uint32_t first = size - off;
  if (len <= first) {
    memcpy(data + off, src, len);
  } else {
    memcpy(data + off, src, first);
    memcpy(data, src + first, len - first);
  }
}

/* Copies out of the ring at `off`, wrapping at `size`. */
static void copy_out(const uint8_t *data, uint32_t size, uint32_t off, uint8_t *dst, uint32_t len) {
  uint32_t first = size - off;
  if (len <= first) {
    memcpy(dst, data + off, len);
  } else {
    memcpy(dst, data + off, first);
    memcpy(dst + first, data, len - first);
  }
}

static inline uint32_t wrap(uint32_t off, uint32_t size) { return off >= size ? off - size : off; }

/*
 * Host writes `count` in-band packets of `len` payload bytes; the guest frees each one.
 * Returns the number of packets written (less than `count` only when the ring is corrupt or
 * full), so the caller can check the work was done.
 */
int32_t ref_ring_write(uint8_t *ctrl_page, uint8_t *data, uint32_t size, const uint8_t *payload,
                       uint32_t len, uint32_t count) {
  volatile uint32_t *ctrl = (volatile uint32_t *)ctrl_page;
  uint32_t hdr = DESC;
  uint32_t total = (hdr + len + 7) & ~7u;
  uint32_t need = total + TRAILER;
  if (total > 0xffff * 8 || need >= size) return -1;
  uint32_t w = load(ctrl, WRITE_INDEX);
  if (w >= size || (w & 7)) return -1;
  int32_t done = 0;
  for (uint32_t i = 0; i < count; i++) {
    uint32_t r = load(ctrl, READ_INDEX);
    if (r >= size || (r & 7)) return done;
    uint32_t used = w >= r ? w - r : size - r + w;
    if (size - used <= need) {
      publish(ctrl, PENDING_SEND_SIZE, need);
      return done;
    }
    uint8_t desc[DESC];
    uint16_t d16[4] = {TYPE_INBAND, (uint16_t)(hdr >> 3), (uint16_t)(total >> 3), 0};
    uint32_t tid[2] = {i, 0};
    memcpy(desc, d16, 8);
    memcpy(desc + 8, tid, 8);
    copy_in(data, size, w, desc, DESC);
    uint32_t off = wrap(w + DESC, size);
    copy_in(data, size, off, payload, len);
    off = wrap(off + len, size);
    uint32_t pad = total - hdr - len;
    if (pad) {
      static const uint8_t zeros[8];
      copy_in(data, size, off, zeros, pad);
      off = wrap(off + pad, size);
    }
    uint32_t trailer[2] = {0, w};
    copy_in(data, size, off, (const uint8_t *)trailer, TRAILER);
    off = wrap(off + TRAILER, size);
    uint32_t old = w;
    w = off;
    publish(ctrl, WRITE_INDEX, w);
    /* Signalling decision, as the host makes it (the result is not used here). */
    volatile int signal = load(ctrl, INTERRUPT_MASK) == 0 && load(ctrl, READ_INDEX) == old;
    (void)signal;
    done++;
    /* Guest: consumes the packet in place and releases the space. */
    ctrl[READ_INDEX] = ctrl[WRITE_INDEX];
  }
  return done;
}

/*
 * The guest publishes `count` in-band packets of `len` payload bytes one at a time; for each,
 * the host runs the read loop of one signal: masks interrupts, reads the packet (validating the
 * descriptor as the TypeScript host does), copies the payload into `dst`, finds the ring empty,
 * publishes its read index, unmasks and re-checks. Returns the packets read, or -1 on a
 * corrupt ring.
 */
int32_t ref_ring_read(uint8_t *ctrl_page, uint8_t *data, uint32_t size, uint8_t *dst, uint32_t len,
                      uint32_t count) {
  volatile uint32_t *ctrl = (volatile uint32_t *)ctrl_page;
  uint32_t total = (DESC + len + 7) & ~7u;
  uint32_t next = load(ctrl, READ_INDEX);
  if (next >= size || (next & 7)) return -1;
  int32_t done = 0;
  for (uint32_t i = 0; i < count; i++) {
    /* Guest: descriptor and trailer at its write index, then the new write index. */
    uint32_t gw = ctrl[WRITE_INDEX];
    uint16_t d16[4] = {TYPE_INBAND, DESC >> 3, (uint16_t)(total >> 3), 0};
    uint32_t tid[2] = {i, 0};
    uint8_t desc[DESC];
    memcpy(desc, d16, 8);
    memcpy(desc + 8, tid, 8);
    copy_in(data, size, gw, desc, DESC);
    uint32_t trailer[2] = {0, gw};
    copy_in(data, size, wrap(gw + total, size), (const uint8_t *)trailer, TRAILER);
    ctrl[WRITE_INDEX] = wrap(gw + total + TRAILER, size);

    /* Host: the read loop of one signal (masking needs no fence, as in IncomingRing). */
    ctrl[INTERRUPT_MASK] = 1;
    uint32_t w = load(ctrl, WRITE_INDEX);
    if (w >= size || (w & 7)) return -1;
    uint32_t r = next;
    if (w == r) return done;
    uint32_t avail = w > r ? w - r : size - r + w;
    if (avail < DESC + TRAILER) return -1;
    uint8_t hd[DESC];
    copy_out(data, size, r, hd, DESC);
    uint16_t type, offset8, len8, flags;
    memcpy(&type, hd, 2);
    memcpy(&offset8, hd + 2, 2);
    memcpy(&len8, hd + 4, 2);
    memcpy(&flags, hd + 6, 2);
    uint32_t plen = (uint32_t)len8 * 8;
    if (offset8 < 2 || len8 < offset8 || plen + TRAILER > avail) return -1;
    if (flags & ~FLAG_COMPLETION) return -1;
    if (type != TYPE_INBAND && type != TYPE_COMP) return -1;
    uint32_t hdr = (uint32_t)offset8 * 8;
    copy_out(data, size, wrap(r + hdr, size), dst, plen - hdr);
    next = wrap(r + plen + TRAILER, size);
    /* IncomingRing.commitIfGuestWaits: publish at once when the guest waits for space. */
    if (load(ctrl, PENDING_SEND_SIZE) != 0) publish(ctrl, READ_INDEX, next);
    if (load(ctrl, WRITE_INDEX) != next) return -1; /* the next read finds the ring empty */
    /* End of the pass: read index, then the unmask as the one fence (IncomingRing.endRead). */
    __atomic_store_n(&ctrl[READ_INDEX], next, __ATOMIC_RELEASE); /* a plain mov on x86 */
    publish(ctrl, INTERRUPT_MASK, 0);
    /* pending_send_sz check, as endRead makes it (the result is not used here). */
    volatile uint32_t pending = load(ctrl, PENDING_SEND_SIZE) & ~7u;
    (void)pending;
    /* Re-check after unmasking: the guest may have written without signalling. */
    if (load(ctrl, WRITE_INDEX) != next) return -1;
    done++;
  }
  return done;
}

/* Plain memcpy of `len` bytes `count` times at rolling offsets in `dst` (a `dst_size` buffer). */
int32_t ref_memcpy(uint8_t *dst, uint32_t dst_size, const uint8_t *src, uint32_t len,
                   uint32_t count) {
  uint32_t pos = 0;
  for (uint32_t i = 0; i < count; i++) {
    if (pos + len > dst_size) pos = 0;
    memcpy(dst + pos, src, len);
    __asm__ volatile("" ::"r"(dst) : "memory");
    pos += (len + 7 + DESC + TRAILER) & ~7u;
  }
  return (int32_t)count;
}
