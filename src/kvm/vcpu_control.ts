/**
 * Cross-thread control of one vCPU: a SharedArrayBuffer with request bits and the vCPU thread's
 * pthread id, and `kick()`, which any thread may call to get the vCPU out of KVM_RUN promptly.
 * @module
 */
import { C, libc, mmap } from "../../ffi/libc.ts";
import { KVM_STRUCT } from "../../ffi/kvm_abi.ts";
import { KICK_SIGNAL } from "./vcpu_loop.ts";

/** Request bits a vCPU thread acts on when kicked. */
export const VCPU_REQUEST = {
  /** Leave the run loop (power off, reset, pause for teardown). */
  STOP: 1,
  /** Flush this vCPU's TLB before re-entering the guest (remote TLB flush hypercalls). */
  FLUSH_TLB: 2,
} as const;

// Int32 slots: 0 requests, 1 state, 2 TLB flushes completed; bytes 16..23: pthread id.
const REQUESTS = 0;
const STATE = 1;
const FLUSHES = 2;
const STATE_STARTED = 1;
const STATE_EXITED = 2;

/** Shared control block of one vCPU. */
export class VcpuControl {
  readonly sab: SharedArrayBuffer;
  readonly #i32: Int32Array;
  readonly #i64: BigInt64Array;
  #run: Uint8Array | undefined;
  #runMap: { ptr: Deno.PointerValue; size: number } | undefined;

  /** A fresh control block. */
  static createState(): SharedArrayBuffer {
    return new SharedArrayBuffer(24);
  }

  constructor(sab: SharedArrayBuffer) {
    this.sab = sab;
    this.#i32 = new Int32Array(sab, 0, 4);
    this.#i64 = new BigInt64Array(sab, 16, 1);
  }

  /** vCPU thread: records its pthread id and marks the vCPU started. */
  publishThread(tid: bigint): void {
    Atomics.store(this.#i64, 0, tid);
    Atomics.store(this.#i32, STATE, STATE_STARTED);
    Atomics.notify(this.#i32, STATE);
  }

  /** vCPU thread: marks the vCPU as gone (its thread no longer runs KVM_RUN). */
  markExited(): void {
    Atomics.store(this.#i32, STATE, STATE_EXITED);
    Atomics.notify(this.#i32, STATE);
  }

  /** True once the vCPU thread left its loop. */
  get exited(): boolean {
    return Atomics.load(this.#i32, STATE) === STATE_EXITED;
  }

  /** Number of TLB flushes this vCPU has completed (compare before and after a request). */
  get flushes(): number {
    return Atomics.load(this.#i32, FLUSHES);
  }

  /** vCPU thread: records a completed TLB flush and wakes whoever waits for it. */
  ackFlush(): void {
    Atomics.add(this.#i32, FLUSHES, 1);
    Atomics.notify(this.#i32, FLUSHES);
  }

  /** Waits up to `ms` for the flush count to move past `seen` (false on timeout). */
  waitFlush(seen: number, ms: number): boolean {
    if (Atomics.load(this.#i32, FLUSHES) !== seen) return true;
    Atomics.wait(this.#i32, FLUSHES, seen, ms);
    return Atomics.load(this.#i32, FLUSHES) !== seen;
  }

  /** vCPU thread: takes and clears pending requests. */
  takeRequests(): number {
    return Atomics.exchange(this.#i32, REQUESTS, 0);
  }

  /**
   * Any thread: maps the vCPU's `kvm_run` so kicks can set `immediate_exit`. Needs the vCPU fd
   * (valid process-wide) and the mapping size.
   */
  attachRun(vcpuFd: number, runSize: number): void {
    this.detachRun();
    const ptr = mmap(runSize, C.PROT_READ | C.PROT_WRITE, C.MAP_SHARED, vcpuFd, 0);
    this.#runMap = { ptr, size: runSize };
    this.#run = new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(ptr, runSize));
  }

  /** Unmaps what `attachRun` mapped; later kicks still signal the thread, without `immediate_exit`. */
  detachRun(): void {
    if (!this.#runMap) return;
    this.#run = undefined;
    libc.munmap(this.#runMap.ptr, BigInt(this.#runMap.size));
    this.#runMap = undefined;
  }

  /** Any thread: posts `bits` and gets the vCPU out of KVM_RUN to act on them. */
  request(bits: number): void {
    Atomics.or(this.#i32, REQUESTS, bits);
    if (this.#run) this.#run[KVM_STRUCT.kvm_run.immediate_exit] = 1;
    const tid = Atomics.load(this.#i64, 0);
    if (tid !== 0n && !this.exited) libc.pthread_kill(BigInt.asUintN(64, tid), KICK_SIGNAL);
  }

  /** Waits (blocking; not for the main thread) until the vCPU has exited or `ms` passed. */
  waitExited(ms: number): boolean {
    const end = performance.now() + ms;
    for (;;) {
      const s = Atomics.load(this.#i32, STATE);
      if (s === STATE_EXITED) return true;
      const left = end - performance.now();
      if (left <= 0) return false;
      Atomics.wait(this.#i32, STATE, s, left);
    }
  }
}
