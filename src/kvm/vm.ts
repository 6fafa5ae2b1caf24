/**
 * A KVM virtual machine: guest RAM slots (one anonymous mmap per region), the in-kernel irqchip
 * and PIT, interrupt injection (KVM_IRQ_LINE, KVM_SIGNAL_MSI), irqfd/ioeventfd, the MSR filter
 * that sends chosen MSRs to user space, and vCPU creation.
 * @module
 */
import { C, check, close, libc, mmap } from "../../ffi/libc.ts";
import { KVM, KVM_IOCTL, KVM_STRUCT } from "../../ffi/kvm_abi.ts";
import type { Kvm } from "./kvm.ts";
import { GsiRouting } from "./gsi_routing.ts";

/** One GSI as a level the caller drives (the machine layer's `IrqLine` has this shape). */
export interface GsiLine {
  set(level: boolean): void;
}

/** A RAM region mapped into the guest: its host address lets every thread build a view. */
export interface RamRegion {
  slot: number;
  gpa: number;
  size: number;
  /** Host virtual address of the mapping (as bigint, so it can cross to Workers). */
  hostAddress: bigint;
}

/** An MSR range for KVM_X86_SET_MSR_FILTER that is denied to KVM (it exits to user space). */
export interface MsrRange {
  base: number;
  count: number;
}

function req(n: number): bigint {
  return BigInt(n);
}

/** An open KVM VM. */
export class Vm {
  #fd: number;
  readonly kvm: Kvm;
  readonly #regions: RamRegion[] = [];
  /** Interrupt injection into this VM. */
  readonly interrupts: VmInterrupts;
  /** The GSI routing table (MSI routes for irqfds). */
  readonly routing: GsiRouting;
  readonly #slots: (MemorySlot | undefined)[] = [];
  // Bitmaps handed to the kernel by pointer must outlive the ioctl.
  #filterKeepAlive: Uint8Array[] = [];

  constructor(fd: number, kvm: Kvm) {
    this.#fd = fd;
    this.kvm = kvm;
    this.interrupts = new VmInterrupts(fd);
    this.routing = new GsiRouting(fd);
  }

  /** The VM file descriptor (valid in every thread of the process). */
  get fd(): number {
    return this.#fd;
  }

  /** RAM regions added so far. */
  get regions(): readonly RamRegion[] {
    return this.#regions;
  }

  /** Maps `size` bytes of anonymous memory at guest physical `gpa`. */
  addRam(gpa: number, size: number): RamRegion {
    const ptr = mmap(
      size,
      C.PROT_READ | C.PROT_WRITE,
      C.MAP_PRIVATE | C.MAP_ANONYMOUS | C.MAP_NORESERVE,
    );
    libc.madvise(ptr, BigInt(size), C.MADV_HUGEPAGE);
    const region: RamRegion = {
      slot: this.#regions.length,
      gpa,
      size,
      hostAddress: BigInt(Deno.UnsafePointer.value(ptr)),
    };
    const S = KVM_STRUCT.kvm_userspace_memory_region;
    const buf = new Uint8Array(S.size);
    const dv = new DataView(buf.buffer);
    dv.setUint32(S.slot, region.slot, true);
    dv.setUint32(S.flags, 0, true);
    dv.setBigUint64(S.guest_phys_addr, BigInt(gpa), true);
    dv.setBigUint64(S.memory_size, BigInt(size), true);
    dv.setBigUint64(S.userspace_addr, region.hostAddress, true);
    this.#ioctlBuf("KVM_SET_USER_MEMORY_REGION", KVM_IOCTL.KVM_SET_USER_MEMORY_REGION, buf);
    this.#regions.push(region);
    return region;
  }

  /**
   * Maps host memory at `hostAddress` (owned by the caller, e.g. a framebuffer) as a memory slot
   * at `gpa`, or read-only (KVM_MEM_READONLY: reads from memory, writes exit as MMIO, what a ROM
   * or flash needs). Returns the slot number for {@linkcode moveSlot}/{@linkcode removeSlot}.
   * Usable from any thread (the VM fd is process-wide).
   */
  addSlot(
    gpa: number,
    size: number,
    hostAddress: bigint,
    options: { readOnly?: boolean } = {},
  ): number {
    let slot = this.#slots.findIndex((s) => s === undefined);
    if (slot < 0) slot = this.#slots.length;
    const region = slot + MEMSLOT_BASE;
    const entry: MemorySlot = {
      slot: region,
      size,
      hostAddress,
      readOnly: options.readOnly ?? false,
    };
    setUserMemoryRegion(this.#fd, entry, gpa);
    this.#slots[slot] = entry;
    return region;
  }

  /** Moves slot `slot` to `gpa` (undefined: unmaps it, keeping the host memory). */
  moveSlot(slot: number, gpa: number | undefined): void {
    const entry = this.#slots[slot - MEMSLOT_BASE];
    if (!entry) throw new RangeError(`Memory slot ${slot} was not added with addSlot.`);
    // KVM cannot move a slot in place: delete it (size 0), then add it where it goes.
    setUserMemoryRegion(this.#fd, { ...entry, size: 0 }, 0);
    if (gpa !== undefined) setUserMemoryRegion(this.#fd, entry, gpa);
  }

  /** Deletes slot `slot` (the host memory stays the caller's). */
  removeSlot(slot: number): void {
    this.moveSlot(slot, undefined);
    this.#slots[slot - MEMSLOT_BASE] = undefined;
  }

  #ioctlBuf(name: string, request: number, buf: Uint8Array<ArrayBuffer>): number {
    return check(`ioctl(${name})`, libc.ioctl_buf(this.#fd, req(request), buf));
  }

  #ioctlInt(name: string, request: number, arg: number | bigint): number {
    return check(`ioctl(${name})`, libc.ioctl_int(this.#fd, req(request), BigInt(arg)));
  }

  /** KVM_SET_TSS_ADDR (3 pages below 4 GiB that the guest never uses, needed on Intel). */
  setTssAddress(gpa: number): void {
    this.#ioctlInt("KVM_SET_TSS_ADDR", KVM_IOCTL.KVM_SET_TSS_ADDR, gpa);
  }

  /** KVM_SET_IDENTITY_MAP_ADDR (one page, needed on Intel without unrestricted guest). */
  setIdentityMapAddress(gpa: number): void {
    const buf = new Uint8Array(8);
    new DataView(buf.buffer).setBigUint64(0, BigInt(gpa), true);
    this.#ioctlBuf("KVM_SET_IDENTITY_MAP_ADDR", KVM_IOCTL.KVM_SET_IDENTITY_MAP_ADDR, buf);
  }

  /** In-kernel PIC + IOAPIC + per-vCPU LAPIC. */
  createIrqchip(): void {
    this.#ioctlInt("KVM_CREATE_IRQCHIP", KVM_IOCTL.KVM_CREATE_IRQCHIP, 0);
  }

  /** In-kernel PIT (i8254) with the dummy speaker port. */
  createPit(): void {
    const buf = new Uint8Array(KVM_STRUCT.kvm_pit_config.size);
    new DataView(buf.buffer).setUint32(
      KVM_STRUCT.kvm_pit_config.flags,
      KVM.KVM_PIT_SPEAKER_DUMMY,
      true,
    );
    this.#ioctlBuf("KVM_CREATE_PIT2", KVM_IOCTL.KVM_CREATE_PIT2, buf);
  }

  /** KVM_ENABLE_CAP on the VM. */
  enableCap(cap: number, ...args: bigint[]): void {
    const S = KVM_STRUCT.kvm_enable_cap;
    const buf = new Uint8Array(S.size);
    const dv = new DataView(buf.buffer);
    dv.setUint32(S.cap, cap, true);
    args.forEach((a, i) => dv.setBigUint64(S.args + i * 8, a, true));
    this.#ioctlBuf(`KVM_ENABLE_CAP(${cap})`, KVM_IOCTL.KVM_ENABLE_CAP, buf);
  }

  /**
   * Sends the given MSR ranges to user space on every read and write: enables
   * KVM_CAP_X86_USER_SPACE_MSR for filtered (and unknown) MSRs and installs a filter that denies
   * exactly these ranges to KVM, allowing everything else.
   */
  routeMsrsToUserSpace(ranges: readonly MsrRange[]): void {
    this.enableCap(
      KVM.KVM_CAP_X86_USER_SPACE_MSR,
      BigInt(KVM.KVM_MSR_EXIT_REASON_FILTER),
    );
    const F = KVM_STRUCT.kvm_msr_filter;
    const R = KVM_STRUCT.kvm_msr_filter_range;
    if (ranges.length > KVM.KVM_MSR_FILTER_MAX_RANGES) {
      throw new Error("too many MSR filter ranges");
    }
    const buf = new Uint8Array(F.size);
    const dv = new DataView(buf.buffer);
    dv.setUint32(F.flags, KVM.KVM_MSR_FILTER_DEFAULT_ALLOW, true);
    this.#filterKeepAlive = [];
    ranges.forEach((r, i) => {
      const bitmap = new Uint8Array(Math.ceil(r.count / 8)); // all zero: deny → exit
      this.#filterKeepAlive.push(bitmap);
      const b = F.ranges + i * R.size;
      dv.setUint32(b + R.flags, KVM.KVM_MSR_FILTER_READ | KVM.KVM_MSR_FILTER_WRITE, true);
      dv.setUint32(b + R.nmsrs, r.count, true);
      dv.setUint32(b + R.base, r.base, true);
      dv.setBigUint64(
        b + R.bitmap,
        BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(bitmap))),
        true,
      );
    });
    this.#ioctlBuf("KVM_X86_SET_MSR_FILTER", KVM_IOCTL.KVM_X86_SET_MSR_FILTER, buf);
  }

  /** KVM_IRQFD: writes to `eventfd` raise GSI `gsi` in the kernel, no exit to user space. */
  irqfd(eventfd: number, gsi: number): void {
    const S = KVM_STRUCT.kvm_irqfd;
    const buf = new Uint8Array(S.size);
    const dv = new DataView(buf.buffer);
    dv.setUint32(S.fd, eventfd, true);
    dv.setUint32(S.gsi, gsi, true);
    this.#ioctlBuf("KVM_IRQFD", KVM_IOCTL.KVM_IRQFD, buf);
  }

  /**
   * KVM_IOEVENTFD: a guest write of `length` bytes to `addr` (PIO when `pio`) signals `eventfd`
   * without an exit; with `datamatch`, only a write of exactly that value does (others exit as
   * usual). `deassign` removes a binding made with the same arguments.
   */
  ioeventfd(
    eventfd: number,
    addr: number,
    length: number,
    pio: boolean,
    options: { datamatch?: bigint; deassign?: boolean } = {},
  ): void {
    const S = KVM_STRUCT.kvm_ioeventfd;
    const buf = new Uint8Array(S.size);
    const dv = new DataView(buf.buffer);
    dv.setBigUint64(S.addr, BigInt(addr), true);
    dv.setUint32(S.len, length, true);
    dv.setInt32(S.fd, eventfd, true);
    let flags = pio ? KVM.KVM_IOEVENTFD_FLAG_PIO : 0;
    if (options.datamatch !== undefined) {
      flags |= KVM.KVM_IOEVENTFD_FLAG_DATAMATCH;
      dv.setBigUint64(S.datamatch, options.datamatch, true);
    }
    if (options.deassign) flags |= KVM.KVM_IOEVENTFD_FLAG_DEASSIGN;
    dv.setUint32(S.flags, flags, true);
    this.#ioctlBuf("KVM_IOEVENTFD", KVM_IOCTL.KVM_IOEVENTFD, buf);
  }

  /** KVM_CREATE_VCPU; returns the vCPU fd. */
  createVcpuFd(id: number): number {
    return this.#ioctlInt(`KVM_CREATE_VCPU(${id})`, KVM_IOCTL.KVM_CREATE_VCPU, id);
  }

  /** Closes the VM fd and unmaps guest RAM; safe to call twice. Call after all vCPUs stopped. */
  close(): void {
    if (this.#fd < 0) return;
    close(this.#fd);
    this.#fd = -1;
    for (const r of this.#regions) {
      libc.munmap(Deno.UnsafePointer.create(r.hostAddress), BigInt(r.size));
    }
    this.#regions.length = 0;
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/** KVM_CAP_READONLY_MEM (linux/kvm.h): KVM_MEM_READONLY slots are supported. */
export const KVM_CAP_READONLY_MEM = 81;

/** Slots from `addSlot` start here (RAM regions take the first ones). */
const MEMSLOT_BASE = 32;

/** A memory slot over caller memory, as KVM_SET_USER_MEMORY_REGION takes it. */
export interface MemorySlot {
  slot: number;
  size: number;
  hostAddress: bigint;
  readOnly: boolean;
}

/** KVM_SET_USER_MEMORY_REGION for `entry` at `gpa` (size 0 deletes the slot). */
export function setUserMemoryRegion(vmFd: number, entry: MemorySlot, gpa: number): void {
  const S = KVM_STRUCT.kvm_userspace_memory_region;
  const buf = new Uint8Array(S.size);
  const dv = new DataView(buf.buffer);
  dv.setUint32(S.slot, entry.slot, true);
  dv.setUint32(S.flags, entry.readOnly ? KVM.KVM_MEM_READONLY : 0, true);
  dv.setBigUint64(S.guest_phys_addr, BigInt(gpa), true);
  dv.setBigUint64(S.memory_size, BigInt(entry.size), true);
  dv.setBigUint64(S.userspace_addr, entry.hostAddress, true);
  check(
    "ioctl(KVM_SET_USER_MEMORY_REGION)",
    libc.ioctl_buf(vmFd, BigInt(KVM_IOCTL.KVM_SET_USER_MEMORY_REGION), buf),
  );
}

/**
 * Interrupt injection by VM fd: usable from any thread of the process (each thread builds its
 * own, so the ioctl argument buffers are never shared).
 */
export class VmInterrupts {
  readonly #fd: number;
  readonly #irqBuf = new Uint8Array(KVM_STRUCT.kvm_irq_level.size);
  readonly #irqView = new DataView(this.#irqBuf.buffer);
  readonly #msiBuf = new Uint8Array(KVM_STRUCT.kvm_msi.size);
  readonly #msiView = new DataView(this.#msiBuf.buffer);

  constructor(vmFd: number) {
    this.#fd = vmFd;
  }

  /** Sets GSI `gsi` to `level` on the in-kernel irqchip. */
  setIrqLine(gsi: number, level: boolean): void {
    this.#irqView.setUint32(KVM_STRUCT.kvm_irq_level.irq, gsi, true);
    this.#irqView.setUint32(KVM_STRUCT.kvm_irq_level.level, level ? 1 : 0, true);
    libc.ioctl_buf(this.#fd, req(KVM_IOCTL.KVM_IRQ_LINE), this.#irqBuf);
  }

  /** A line for one GSI. */
  irqLine(gsi: number): GsiLine {
    return { set: (level) => this.setIrqLine(gsi, level) };
  }

  /** KVM_SIGNAL_MSI: an x86 MSI (address 0xFEE00000 | dest << 12, data = vector | mode). */
  signalMsi(address: number, data: number): void {
    this.signalMsiChecked(address, data);
  }

  /** KVM_SIGNAL_MSI; returns the ioctl's result (1 delivered, 0 blocked, -1 error). */
  signalMsiChecked(address: number, data: number): number {
    const S = KVM_STRUCT.kvm_msi;
    this.#msiView.setUint32(S.address_lo, address >>> 0, true);
    this.#msiView.setUint32(S.address_hi, 0, true);
    this.#msiView.setUint32(S.data, data >>> 0, true);
    return libc.ioctl_buf(this.#fd, req(KVM_IOCTL.KVM_SIGNAL_MSI), this.#msiBuf);
  }
}
