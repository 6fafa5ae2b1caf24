/**
 * The VM's GSI routing table (KVM_SET_GSI_ROUTING) and a GSI allocator for MSI routes.
 *
 * KVM_SET_GSI_ROUTING replaces the whole table, so this keeps all of it: KVM's default irqchip
 * routes (GSI 0-15 to both PICs and the IOAPIC pin of the same number, 16-23 to IOAPIC pins
 * 16-23, as `kvm_setup_default_irq_routing`) plus one MSI route per allocated GSI from
 * `FIRST_MSI_GSI` on. An irqfd bound to an MSI GSI (`Vm.irqfd`) then delivers that message
 * with no exit to user space. A device without a route (or a KVM that refused one) signals its
 * MSI with KVM_SIGNAL_MSI instead.
 *
 * Main thread only: routes change when a device's MSI/MSI-X vectors are programmed, which the
 * main thread learns through its devices.
 * @module
 */
import { check, libc } from "../../ffi/libc.ts";
import { KVM, KVM_IOCTL, KVM_STRUCT } from "../../ffi/kvm_abi.ts";

/** IOAPIC pins of KVM's in-kernel IOAPIC. */
export const IOAPIC_PINS = 24;
/** First GSI handed out for MSI routes (after the IOAPIC's). */
export const FIRST_MSI_GSI = 24;
/** GSIs this table manages (KVM's KVM_MAX_IRQ_ROUTES is 4096). */
export const MAX_GSI = 1024;

/** An MSI route's message. */
export interface MsiMessage {
  readonly address: number;
  readonly addressHigh?: number;
  readonly data: number;
}

/** Thrown when no GSI is left to allocate. */
export class GsiExhaustedError extends Error {
  override name = "GsiExhaustedError";
}

/** The routing table of one VM. */
export class GsiRouting {
  readonly #vmFd: number;
  readonly #msi = new Map<number, MsiMessage>();
  #next = FIRST_MSI_GSI;
  readonly #free: number[] = [];

  constructor(vmFd: number) {
    this.#vmFd = vmFd;
  }

  /** A free GSI for an MSI route (no route until {@linkcode setMsi}). */
  allocate(): number {
    const gsi = this.#free.pop() ?? this.#next++;
    if (gsi >= MAX_GSI) {
      this.#next = MAX_GSI;
      throw new GsiExhaustedError(
        `No GSI left for an MSI route (${MAX_GSI - FIRST_MSI_GSI} in use).`,
      );
    }
    return gsi;
  }

  /** Routes `gsi` (from {@linkcode allocate}) to `message` and commits the table. */
  setMsi(gsi: number, message: MsiMessage): void {
    if (gsi < FIRST_MSI_GSI || gsi >= this.#next) {
      throw new RangeError(`GSI ${gsi} was not allocated for MSI.`);
    }
    this.#msi.set(gsi, message);
    this.commit();
  }

  /** Drops `gsi`'s route (commits) and returns the GSI to the pool. */
  release(gsi: number): void {
    if (this.#msi.delete(gsi)) this.commit();
    if (gsi >= FIRST_MSI_GSI && gsi < this.#next && !this.#free.includes(gsi)) {
      this.#free.push(gsi);
    }
  }

  /** The routes as KVM gets them: [gsi, kind, a, b, c] rows (for tests and diagnostics). */
  entries(): [number, "irqchip" | "msi", number, number, number][] {
    const rows: [number, "irqchip" | "msi", number, number, number][] = [];
    for (let gsi = 0; gsi < IOAPIC_PINS; gsi++) {
      // PIC master (chip 0) / slave (chip 1) for the ISA IRQs, as KVM's default table.
      if (gsi < 16) rows.push([gsi, "irqchip", gsi < 8 ? 0 : 1, gsi & 7, 0]);
      rows.push([gsi, "irqchip", 2, gsi, 0]);
    }
    for (const [gsi, m] of [...this.#msi].sort((a, b) => a[0] - b[0])) {
      rows.push([gsi, "msi", m.address >>> 0, (m.addressHigh ?? 0) >>> 0, m.data >>> 0]);
    }
    return rows;
  }

  /** KVM_SET_GSI_ROUTING with the whole table. */
  commit(): void {
    const rows = this.entries();
    const H = KVM_STRUCT.kvm_irq_routing;
    const E = KVM_STRUCT.kvm_irq_routing_entry;
    const buf = new Uint8Array(H.size + rows.length * E.size);
    const dv = new DataView(buf.buffer);
    dv.setUint32(H.nr, rows.length, true);
    rows.forEach(([gsi, kind, a, b, c], i) => {
      const at = H.entries + i * E.size;
      dv.setUint32(at + E.gsi, gsi, true);
      if (kind === "irqchip") {
        dv.setUint32(at + E.type, KVM.KVM_IRQ_ROUTING_IRQCHIP, true);
        dv.setUint32(at + E.irqchip_irqchip, a, true);
        dv.setUint32(at + E.irqchip_pin, b, true);
      } else {
        dv.setUint32(at + E.type, KVM.KVM_IRQ_ROUTING_MSI, true);
        dv.setUint32(at + E.msi_address_lo, a, true);
        dv.setUint32(at + E.msi_address_hi, b, true);
        dv.setUint32(at + E.msi_data, c, true);
      }
    });
    check(
      "ioctl(KVM_SET_GSI_ROUTING)",
      libc.ioctl_buf(this.#vmFd, BigInt(KVM_IOCTL.KVM_SET_GSI_ROUTING), buf),
    );
  }
}
