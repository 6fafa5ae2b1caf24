/**
 * The main thread's event loop over host file descriptors: eventfds that vCPU threads write to
 * wake the main thread, timerfds for synthetic timers, and anything else pollable. `epoll_wait`
 * runs as a nonblocking FFI call (on a helper thread), so the main JS thread stays free for
 * Deno's own async work (signals, sockets, stdin) while it waits; nothing polls or spins.
 * @module
 */
import { C, check, close, eventfd, eventfdDrain, eventfdSignal, libc } from "../../ffi/libc.ts";

/** Called with the epoll event bits when its fd is ready. Must not throw. */
export type FdCallback = (events: number) => void;

const EVENT_SIZE = 12; // struct epoll_event is packed on x86-64: u32 events + u64 data
const MAX_EVENTS = 64;

/** An epoll set with callbacks, driven from the main thread. */
export class EventLoop {
  #epfd: number;
  readonly #callbacks = new Map<number, FdCallback>();
  readonly #wake: number;
  readonly #events = new Uint8Array(EVENT_SIZE * MAX_EVENTS);
  readonly #eventsView = new DataView(this.#events.buffer);
  #running = false;
  #stopped = false;

  constructor() {
    this.#epfd = check("epoll_create1", libc.epoll_create1(C.EPOLL_CLOEXEC));
    this.#wake = eventfd();
    this.add(this.#wake, () => eventfdDrain(this.#wake));
  }

  /** Watches `fd` for `events` (default EPOLLIN). */
  add(fd: number, callback: FdCallback, events: number = C.EPOLLIN): void {
    const ev = new Uint8Array(EVENT_SIZE);
    const dv = new DataView(ev.buffer);
    dv.setUint32(0, events, true);
    dv.setBigUint64(4, BigInt(fd), true);
    check("epoll_ctl(ADD)", libc.epoll_ctl(this.#epfd, C.EPOLL_CTL_ADD, fd, ev));
    this.#callbacks.set(fd, callback);
  }

  /** Stops watching `fd`. */
  remove(fd: number): void {
    if (!this.#callbacks.delete(fd)) return;
    libc.epoll_ctl(this.#epfd, C.EPOLL_CTL_DEL, fd, new Uint8Array(EVENT_SIZE));
  }

  /** Runs until `stop()`. Callbacks run on the main thread, one at a time. */
  async run(): Promise<void> {
    if (this.#running) throw new Error("event loop already running");
    this.#running = true;
    this.#stopped = false;
    try {
      while (!this.#stopped) {
        const n = await libc.epoll_wait_async(this.#epfd, this.#events, MAX_EVENTS, -1);
        if (n < 0) continue; // EINTR
        for (let i = 0; i < n && !this.#stopped; i++) {
          const events = this.#eventsView.getUint32(i * EVENT_SIZE, true);
          const fd = Number(this.#eventsView.getBigUint64(i * EVENT_SIZE + 4, true));
          this.#callbacks.get(fd)?.(events);
        }
      }
    } finally {
      this.#running = false;
    }
  }

  /** Makes `run()` return after the current batch; callable from callbacks or elsewhere. */
  stop(): void {
    this.#stopped = true;
    eventfdSignal(this.#wake);
  }

  /** Closes the epoll set (after `run()` returned). Watched fds stay open: their owners close them. */
  close(): void {
    if (this.#epfd < 0) return;
    close(this.#epfd);
    close(this.#wake);
    this.#epfd = -1;
  }
}
