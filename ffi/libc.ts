/**
 * The one libc binding of the VMM: a symbols table, one `Deno.dlopen`, typed errors that name
 * the call and the errno. Every thread (main and each vCPU Worker) loads this module itself, so
 * each gets its own handle and its own thread-local errno.
 *
 * errno is read right after the failing synchronous call on the same thread; `nonblocking`
 * symbols (suffix `_async`) run on a helper thread and must not be used where errno matters.
 * @module
 */

const SYMBOLS = {
  open: { parameters: ["buffer", "i32", "u32"], result: "i32" }, // int open(const char*, int, mode_t)
  close: { parameters: ["i32"], result: "i32" }, // int close(int)
  // int ioctl(int fd, unsigned long req, ...): one symbol per argument kind.
  ioctl: { parameters: ["i32", "u64", "pointer"], result: "i32" },
  ioctl_buf: { name: "ioctl", parameters: ["i32", "u64", "buffer"], result: "i32" },
  ioctl_int: { name: "ioctl", parameters: ["i32", "u64", "u64"], result: "i32" },
  // void *mmap(void*, size_t, int prot, int flags, int fd, off_t)
  mmap: { parameters: ["pointer", "usize", "i32", "i32", "i32", "i64"], result: "pointer" },
  munmap: { parameters: ["pointer", "usize"], result: "i32" },
  madvise: { parameters: ["pointer", "usize", "i32"], result: "i32" },
  mprotect: { parameters: ["pointer", "usize", "i32"], result: "i32" },
  eventfd: { parameters: ["u32", "i32"], result: "i32" }, // int eventfd(unsigned, int)
  read: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  // The same calls on host addresses (numbers): the network device reads and writes frames
  // straight between a tap and guest memory or its scratch without a view per call.
  read_at: { name: "read", parameters: ["i32", "usize", "usize"], result: "isize" },
  write_at: { name: "write", parameters: ["i32", "usize", "usize"], result: "isize" },
  // ssize_t readv/writev(int fd, const struct iovec *iov, int iovcnt): a tap frame with its
  // virtio-net header in a separate buffer.
  readv: { parameters: ["i32", "buffer", "i32"], result: "isize" },
  writev: { parameters: ["i32", "buffer", "i32"], result: "isize" },
  // void *memcpy(void*, const void*, size_t) on host addresses (guest memory <-> scratch).
  memcpy_at: { name: "memcpy", parameters: ["usize", "usize", "usize"], result: "void" },
  write: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  pread: { name: "pread64", parameters: ["i32", "buffer", "usize", "i64"], result: "isize" },
  pwrite: { name: "pwrite64", parameters: ["i32", "buffer", "usize", "i64"], result: "isize" },
  fdatasync: { parameters: ["i32"], result: "i32" },
  flock: { parameters: ["i32", "i32"], result: "i32" }, // int flock(int fd, int operation)
  // Disk I/O off the event loop (storage backends): Promise-returning, errno not available.
  pread_async: {
    name: "pread64",
    parameters: ["i32", "buffer", "usize", "i64"],
    result: "isize",
    nonblocking: true,
  },
  pwrite_async: {
    name: "pwrite64",
    parameters: ["i32", "buffer", "usize", "i64"],
    result: "isize",
    nonblocking: true,
  },
  // ssize_t preadv(int fd, const struct iovec *iov, int iovcnt, off_t offset), and pwritev:
  // scatter/gather straight between a file and several buffers (guest pages).
  preadv: { name: "preadv64", parameters: ["i32", "buffer", "i32", "i64"], result: "isize" },
  pwritev: { name: "pwritev64", parameters: ["i32", "buffer", "i32", "i64"], result: "isize" },
  preadv_async: {
    name: "preadv64",
    parameters: ["i32", "buffer", "i32", "i64"],
    result: "isize",
    nonblocking: true,
  },
  pwritev_async: {
    name: "pwritev64",
    parameters: ["i32", "buffer", "i32", "i64"],
    result: "isize",
    nonblocking: true,
  },
  fdatasync_async: { name: "fdatasync", parameters: ["i32"], result: "i32", nonblocking: true },
  fallocate_async: {
    name: "fallocate64",
    parameters: ["i32", "i32", "i64", "i64"],
    result: "i32",
    nonblocking: true,
  },
  fallocate: { name: "fallocate64", parameters: ["i32", "i32", "i64", "i64"], result: "i32" },
  epoll_create1: { parameters: ["i32"], result: "i32" },
  epoll_ctl: { parameters: ["i32", "i32", "i32", "buffer"], result: "i32" },
  epoll_wait: { parameters: ["i32", "buffer", "i32", "i32"], result: "i32" },
  // The event loop's wait: runs on a helper thread so the main JS thread stays free.
  epoll_wait_async: {
    name: "epoll_wait",
    parameters: ["i32", "buffer", "i32", "i32"],
    result: "i32",
    nonblocking: true,
  },
  timerfd_create: { parameters: ["i32", "i32"], result: "i32" },
  timerfd_settime: { parameters: ["i32", "i32", "buffer", "pointer"], result: "i32" },
  clock_gettime: { parameters: ["i32", "buffer"], result: "i32" },
  pthread_sigmask: { parameters: ["i32", "buffer", "pointer"], result: "i32" },
  sigtimedwait: { parameters: ["buffer", "pointer", "buffer"], result: "i32" },
  pthread_self: { parameters: [], result: "u64" },
  pthread_kill: { parameters: ["u64", "i32"], result: "i32" },
  gettid: { parameters: [], result: "i32" }, // pid_t gettid(void)
  // POSIX timers aimed at one thread (SIGEV_THREAD_ID); timer_t is an opaque pointer-sized id.
  // int timer_create(clockid_t, struct sigevent*, timer_t*)
  timer_create: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  timer_settime: { parameters: ["usize", "i32", "buffer", "pointer"], result: "i32" },
  timer_delete: { parameters: ["usize"], result: "i32" },
  sched_yield: { parameters: [], result: "i32" },
  sysconf: { parameters: ["i32"], result: "i64" },
  // Sockets (the synthetic debugger's UDP bridge). Always called with MSG_DONTWAIT on a
  // non-blocking socket, synchronously, so errno is valid right after a failure.
  socket: { parameters: ["i32", "i32", "i32"], result: "i32" }, // int socket(int, int, int)
  bind: { parameters: ["i32", "buffer", "u32"], result: "i32" }, // (fd, sockaddr*, socklen_t)
  connect: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  getsockname: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  // ssize_t sendto(fd, buf, len, flags, const sockaddr*, socklen_t)
  sendto: { parameters: ["i32", "buffer", "usize", "i32", "buffer", "u32"], result: "isize" },
  // ssize_t recvfrom(fd, buf, len, flags, sockaddr*, socklen_t*)
  recvfrom: {
    parameters: ["i32", "buffer", "usize", "i32", "buffer", "buffer"],
    result: "isize",
  },
  __errno_location: { parameters: [], result: "pointer" },
  strerror: { parameters: ["i32"], result: "pointer" },
} as const satisfies Deno.ForeignLibraryInterface;

const lib = Deno.dlopen("libc.so.6", SYMBOLS);

/** The raw symbols. Prefer the checked wrappers below unless on a measured hot path. */
export const libc = lib.symbols;

/**
 * The host-address calls with plain numbers. Deno's FFI takes a number for a `usize` argument
 * at run time (its typings say bigint); a number avoids making a BigInt per call on the network
 * data path. Addresses are below 2^53.
 */
export const hostCalls = {
  /** `memcpy(dst, src, n)` on host addresses. */
  memcpy: libc.memcpy_at as unknown as (dst: number, src: number, n: number) => void,
  /** `read(fd, addr, n)` into a host address; returns bytes or -1 (errno via `errno()`). */
  read: libc.read_at as unknown as (fd: number, addr: number, n: number) => number | bigint,
  /** `write(fd, addr, n)` from a host address; returns bytes or -1. */
  write: libc.write_at as unknown as (fd: number, addr: number, n: number) => number | bigint,
};

/** Constants from the C headers this binding uses (x86-64 Linux values). */
export const C = {
  O_RDONLY: 0,
  O_WRONLY: 1,
  O_RDWR: 2,
  O_CREAT: 0o100,
  O_APPEND: 0o2000,
  O_CLOEXEC: 0o2000000,
  O_DIRECT: 0o40000,
  O_NONBLOCK: 0o4000,
  LOCK_EX: 2,
  LOCK_NB: 4,
  LOCK_UN: 8,
  PROT_NONE: 0,
  PROT_READ: 1,
  PROT_WRITE: 2,
  PROT_EXEC: 4,
  MAP_SHARED: 1,
  MAP_PRIVATE: 2,
  MAP_ANONYMOUS: 0x20,
  MAP_NORESERVE: 0x4000,
  MADV_DONTNEED: 4,
  MADV_MERGEABLE: 12,
  MADV_HUGEPAGE: 14,
  EFD_CLOEXEC: 0o2000000,
  EFD_NONBLOCK: 0o4000,
  EFD_SEMAPHORE: 1,
  EPOLL_CLOEXEC: 0o2000000,
  /** <linux/if_tun.h>: `_IOW('T', 202, int)`, attach to (or create) a tun/tap device. */
  TUNSETIFF: 0x400454ca,
  IFF_TAP: 0x0002,
  IFF_NO_PI: 0x1000,
  IFF_VNET_HDR: 0x4000,
  IFF_MULTI_QUEUE: 0x0100,
  EPOLL_CTL_ADD: 1,
  EPOLL_CTL_DEL: 2,
  EPOLL_CTL_MOD: 3,
  EPOLLIN: 1,
  EPOLLOUT: 4,
  EPOLLERR: 8,
  EPOLLHUP: 0x10,
  EPOLLET: 0x80000000,
  CLOCK_REALTIME: 0,
  CLOCK_MONOTONIC: 1,
  CLOCK_THREAD_CPUTIME_ID: 3,
  TFD_CLOEXEC: 0o2000000,
  TFD_NONBLOCK: 0o4000,
  TFD_TIMER_ABSTIME: 1,
  SIGEV_THREAD_ID: 4,
  SIG_BLOCK: 0,
  SIG_UNBLOCK: 1,
  SIG_SETMASK: 2,
  FALLOC_FL_KEEP_SIZE: 1,
  FALLOC_FL_PUNCH_HOLE: 2,
  _SC_NPROCESSORS_ONLN: 84,
  _SC_PHYS_PAGES: 85,
  _SC_PAGESIZE: 30,
  AF_INET: 2,
  SOCK_DGRAM: 2,
  SOCK_NONBLOCK: 0o4000,
  SOCK_CLOEXEC: 0o2000000,
  MSG_PEEK: 0x2,
  MSG_TRUNC: 0x20,
  MSG_DONTWAIT: 0x40,
  MSG_NOSIGNAL: 0x4000,
  INADDR_ANY: 0,
  INADDR_LOOPBACK: 0x7f000001,
  /** Most iovecs one preadv/pwritev takes (<limits.h> IOV_MAX). */
  IOV_MAX: 1024,
} as const;

/** glibc's sigset_t is 1024 bits. */
export const SIGSET_BYTES = 128;

/** errno names for the values a VMM meets; others print as their number. */
const ERRNO_NAMES: Record<number, string> = {
  1: "EPERM",
  2: "ENOENT",
  4: "EINTR",
  5: "EIO",
  9: "EBADF",
  11: "EAGAIN",
  12: "ENOMEM",
  13: "EACCES",
  14: "EFAULT",
  16: "EBUSY",
  17: "EEXIST",
  19: "ENODEV",
  22: "EINVAL",
  24: "EMFILE",
  25: "ENOTTY",
  28: "ENOSPC",
  38: "ENOSYS",
  90: "EMSGSIZE",
  95: "EOPNOTSUPP",
  98: "EADDRINUSE",
  99: "EADDRNOTAVAIL",
  101: "ENETUNREACH",
  105: "ENOBUFS",
  110: "ETIMEDOUT",
  111: "ECONNREFUSED",
};

/** A failed libc call: which call, errno and its name. */
export class SysError extends Error {
  override name = "SysError";
  /** The libc call (and ioctl name) that failed. */
  readonly call: string;
  /** errno after the call. */
  readonly errno: number;
  constructor(call: string, errno: number) {
    super(`${call} failed: ${errnoName(errno)} (${strerror(errno)})`);
    this.call = call;
    this.errno = errno;
  }
  /** errno's symbolic name (EINTR, …). */
  get code(): string {
    return errnoName(this.errno);
  }
}

/** Symbolic name of an errno value. */
export function errnoName(errno: number): string {
  return ERRNO_NAMES[errno] ?? `errno ${errno}`;
}

function strerror(errno: number): string {
  const p = libc.strerror(errno);
  return p ? Deno.UnsafePointerView.getCString(p) : "unknown error";
}

let errnoView: Deno.UnsafePointerView | undefined;

/** Reads this thread's errno. Call right after the failing call, before any other FFI call. */
export function errno(): number {
  // __errno_location is per thread but constant within a thread: cache the view.
  errnoView ??= new Deno.UnsafePointerView(libc.__errno_location()!);
  return errnoView.getInt32();
}

/** Throws `SysError(call)` when `ret` is negative; returns `ret` otherwise. */
export function check(call: string, ret: number): number {
  if (ret < 0) throw new SysError(call, errno());
  return ret;
}

/** Like `check` for `isize`/`i64` results. */
export function checkBig(call: string, ret: number | bigint): number {
  const n = Number(ret);
  if (n < 0) throw new SysError(call, errno());
  return n;
}

const encoder = new TextEncoder();

/** NUL-terminated C string. */
export function cstring(s: string): Uint8Array<ArrayBuffer> {
  const b = new Uint8Array(encoder.encode(s).length + 1);
  encoder.encodeInto(s, b);
  return b;
}

/** open(2), checked. */
export function open(path: string, flags: number, mode = 0): number {
  return check(`open(${path})`, libc.open(cstring(path), flags | C.O_CLOEXEC, mode));
}

/** close(2); ignores errors (close is called on exit paths). */
export function close(fd: number): void {
  if (fd >= 0) libc.close(fd);
}

/** mmap(2), checked; returns the mapping's pointer. */
export function mmap(
  length: number,
  prot: number,
  flags: number,
  fd = -1,
  offset = 0,
): Deno.PointerObject {
  const p = libc.mmap(null, BigInt(length), prot, flags, fd, BigInt(offset));
  const addr = Deno.UnsafePointer.value(p);
  if (p === null || addr === 0xffffffffffffffffn) throw new SysError("mmap", errno());
  return p as Deno.PointerObject;
}

/** An eventfd (non-blocking, close-on-exec). */
export function eventfd(flags = C.EFD_NONBLOCK): number {
  return check("eventfd", libc.eventfd(0, flags | C.EFD_CLOEXEC));
}

const one = new BigUint64Array([1n]);
const oneBytes = new Uint8Array(one.buffer);

/** Adds 1 to an eventfd counter (wakes whoever waits on it). */
export function eventfdSignal(fd: number): void {
  libc.write(fd, oneBytes, 8n);
}

/** Reads and resets an eventfd counter; 0 when it was not signalled. */
export function eventfdDrain(fd: number): bigint {
  const buf = new BigUint64Array(1);
  const n = Number(libc.read(fd, new Uint8Array(buf.buffer), 8n));
  return n === 8 ? buf[0]! : 0n;
}

const ts = new BigInt64Array(2);
const tsBytes = new Uint8Array(ts.buffer);

/** clock_gettime in nanoseconds as a bigint. */
export function clockNs(clock: number = C.CLOCK_MONOTONIC): bigint {
  libc.clock_gettime(clock, tsBytes);
  return ts[0]! * 1_000_000_000n + ts[1]!;
}

/** A sigset_t with the given signals set. */
export function sigset(...signals: number[]): Uint8Array<ArrayBuffer> {
  const set = new Uint8Array(SIGSET_BYTES);
  for (const s of signals) set[(s - 1) >> 3]! |= 1 << ((s - 1) & 7);
  return set;
}

/** errno values the socket wrappers branch on. */
export const ERRNO = {
  EINTR: 4,
  EAGAIN: 11,
  ENOBUFS: 105,
  ECONNREFUSED: 111,
} as const;

/** Size of `struct sockaddr_in`. */
export const SOCKADDR_IN_BYTES = 16;

/** A `struct sockaddr_in` for IPv4 `address` (host-order integer) and `port`. */
export function sockaddrIn(address: number, port: number): Uint8Array<ArrayBuffer> {
  const b = new Uint8Array(SOCKADDR_IN_BYTES);
  const dv = new DataView(b.buffer);
  dv.setUint16(0, C.AF_INET, true); // sin_family: host order
  dv.setUint16(2, port, false); // sin_port: network order
  dv.setUint32(4, address >>> 0, false); // sin_addr: network order
  return b;
}

/** Decodes a `struct sockaddr_in` into a host-order address and port. */
export function parseSockaddrIn(b: Uint8Array): { address: number; port: number } {
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  return { address: dv.getUint32(4, false), port: dv.getUint16(2, false) };
}

/**
 * A non-blocking, close-on-exec UDP socket bound to `local` (port 0: any free port) and, when
 * `peer` is given, connected to it, so that plain sends go there and only its datagrams are
 * received. Throws `SysError` naming the call that failed.
 */
export function udpSocket(
  local: { address: number; port: number },
  peer?: { address: number; port: number },
): number {
  const fd = check(
    "socket(AF_INET, SOCK_DGRAM)",
    libc.socket(C.AF_INET, C.SOCK_DGRAM | C.SOCK_NONBLOCK | C.SOCK_CLOEXEC, 0),
  );
  try {
    check("bind", libc.bind(fd, sockaddrIn(local.address, local.port), SOCKADDR_IN_BYTES));
    if (peer) {
      check("connect", libc.connect(fd, sockaddrIn(peer.address, peer.port), SOCKADDR_IN_BYTES));
    }
  } catch (e) {
    close(fd);
    throw e;
  }
  return fd;
}

/** The local address and port a socket is bound to (getsockname), checked. */
export function socketName(fd: number): { address: number; port: number } {
  const addr = new Uint8Array(SOCKADDR_IN_BYTES);
  const len = new Uint32Array([SOCKADDR_IN_BYTES]);
  check("getsockname", libc.getsockname(fd, addr, new Uint8Array(len.buffer)));
  return parseSockaddrIn(addr);
}
