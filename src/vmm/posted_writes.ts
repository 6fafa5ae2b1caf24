/**
 * Posted writes: guest writes to a main-thread device that need no answer (a doorbell, a
 * notify register), completed inside KVM through an ioeventfd (with an optional datamatch) and
 * handed to the main thread's event loop; the vCPU goes straight back to the guest. A write
 * that does not match still exits and reaches the device through the registry as usual.
 *
 * The binding follows the device's range: `place(addr)` moves it (for a BAR the guest moved),
 * `place(undefined)` removes it.
 * @module
 */
import { close, eventfd, eventfdDrain } from "../../ffi/libc.ts";
import type { Vm } from "../kvm/vm.ts";
import type { EventLoop } from "../util/event_loop.ts";

/** One posted write: where, how wide, which value, and what the main thread does with it. */
export interface PostedWriteSpec {
  readonly space: "pio" | "mmio";
  /** Access size the guest uses (1, 2, 4 or 8). */
  readonly length: number;
  /** Only writes of this value are posted (others exit). */
  readonly datamatch?: bigint;
  /** Runs on the main thread once per wake-up (several writes may have been merged). */
  readonly onWrite: (count: bigint) => void;
}

/** An ioeventfd bound to one address at a time. */
export class PostedWrite {
  readonly #vm: Vm;
  readonly #loop: EventLoop;
  readonly #spec: PostedWriteSpec;
  readonly #fd: number;
  #addr: number | undefined;
  #closed = false;

  constructor(vm: Vm, loop: EventLoop, spec: PostedWriteSpec) {
    this.#vm = vm;
    this.#loop = loop;
    this.#spec = spec;
    this.#fd = eventfd();
    loop.add(this.#fd, () => {
      const n = eventfdDrain(this.#fd);
      if (n > 0n) spec.onWrite(n);
    });
  }

  /** Where the binding is now (undefined: none). */
  get address(): number | undefined {
    return this.#addr;
  }

  /** Binds the ioeventfd at `addr` (removing the old binding), or only removes it. */
  place(addr: number | undefined): void {
    if (addr === this.#addr) return;
    const s = this.#spec;
    const options = s.datamatch !== undefined ? { datamatch: s.datamatch } : {};
    if (this.#addr !== undefined) {
      this.#vm.ioeventfd(this.#fd, this.#addr, s.length, s.space === "pio", {
        ...options,
        deassign: true,
      });
      this.#addr = undefined;
    }
    if (addr !== undefined) {
      this.#vm.ioeventfd(this.#fd, addr, s.length, s.space === "pio", options);
      this.#addr = addr;
    }
  }

  /** Unbinds and closes the eventfd; safe twice. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.place(undefined);
    } catch { /* the VM is gone */ }
    this.#loop.remove(this.#fd);
    close(this.#fd);
  }
}
