/**
 * 16550A UART (the PC's COM ports). Transmit is instant: every THR write goes straight to the
 * `output` callback, so THR/TSR are always empty. Receive is a ring in shared memory that the
 * main thread fills with {@linkcode Serial.pushInput} and the guest drains through RBR from any
 * vCPU thread. All registers live in the SharedArrayBuffer behind a spin lock, so every thread
 * builds its own `Serial` over the same state.
 *
 * Behaviour Linux's 8250 driver depends on: IER keeps only its low 4 bits (existence probe),
 * MCR loopback reflects MCR outputs in MSR (the 0x90 loop test) and routes THR to RBR, FCR bit 0
 * sets IIR bits 7:6 (16550A detection), and the THRE interrupt is re-armed by every IER write
 * with ETBEI set and by every THR write, and cleared by an IIR read that reports it (startup's
 * THRE test and the TX path).
 * @module
 */
import type { BusDevice } from "../bus.ts";
import type { IrqLine } from "../irq.ts";
import { lockAcquire, lockRelease } from "./spin_lock.ts";

/** Register offsets (DLAB = LCR bit 7 turns 0/1 into the divisor latch). */
export const UART_RBR_THR = 0;
/** Interrupt enable (DLAB=0) / divisor latch high (DLAB=1). */
export const UART_IER = 1;
/** Interrupt identification (read) / FIFO control (write). */
export const UART_IIR_FCR = 2;
/** Line control. */
export const UART_LCR = 3;
/** Modem control. */
export const UART_MCR = 4;
/** Line status. */
export const UART_LSR = 5;
/** Modem status. */
export const UART_MSR = 6;
/** Scratch. */
export const UART_SCR = 7;
/** Number of ports the UART decodes. */
export const UART_PORT_COUNT = 8;
/** Bytes the receive ring holds (power of two). */
export const SERIAL_RX_CAPACITY = 1024;

const IER_ERBFI = 0x01; // received data available
const IER_ETBEI = 0x02; // THR empty
const IER_ELSI = 0x04; // receiver line status
const IER_EDSSI = 0x08; // modem status
const IER_MASK = 0x0f; // bits 7:4 read 0 on a 16550A (Linux's IER probe checks this)

const IIR_NO_INT = 0x01;
const IIR_MSI = 0x00;
const IIR_THRI = 0x02;
const IIR_RDI = 0x04;
const IIR_RLSI = 0x06;
const IIR_FIFO_ENABLED = 0xc0;

const FCR_ENABLE = 0x01;
const FCR_CLEAR_RX = 0x02;
const FCR_KEEP = 0xc9; // enable, DMA mode, RX trigger level; bit 5 (64-byte) stays 0: a 16550A

const LCR_DLAB = 0x80;

const MCR_DTR = 0x01;
const MCR_RTS = 0x02;
const MCR_OUT1 = 0x04;
const MCR_OUT2 = 0x08;
const MCR_LOOP = 0x10;
const MCR_MASK = 0x1f;

const LSR_DR = 0x01;
const LSR_OE = 0x02;
const LSR_THRE = 0x20;
const LSR_TEMT = 0x40;

const MSR_CTS = 0x10;
const MSR_DSR = 0x20;
const MSR_RI = 0x40;
const MSR_DCD = 0x80;
/** Outside loopback a terminal is attached and ready: carrier, DSR and CTS asserted. */
const MSR_IDLE = MSR_DCD | MSR_DSR | MSR_CTS;

// Int32 slots of the shared state; the RX ring bytes follow the slots.
const S_LOCK = 0;
const S_IER = 1;
const S_LCR = 2;
const S_MCR = 3;
const S_FCR = 4;
const S_SCR = 5;
const S_DLL = 6;
const S_DLM = 7;
const S_LSR_ERR = 8; // sticky LSR error bits (OE), cleared by an LSR read
const S_MSR_DELTA = 9; // MSR bits 3:0, cleared by an MSR read
const S_THRE_PENDING = 10; // THR-empty interrupt armed
const S_IRQ_LEVEL = 11; // last level driven on the IRQ line
const S_RX_HEAD = 12; // ring index of the next byte RBR returns
const S_RX_COUNT = 13;
const S_RX_LAST = 14; // RBR value when the ring is empty (the last byte read)
const S_RX_WANT_SPACE = 15; // pushInput refused bytes: report space once the ring drains
const SLOTS = 16;
const RX_OFFSET = SLOTS * 4;
const RX_MASK = SERIAL_RX_CAPACITY - 1;

/** Per-thread wiring of a {@linkcode Serial}. */
export interface SerialOptions {
  /**
   * The UART's interrupt line, high while an enabled interrupt is pending. Driven with the
   * state lock held (so level changes from different threads stay ordered): it must not call
   * back into the UART.
   */
  irq: IrqLine;
  /**
   * Receives each transmitted byte, on the thread of the vCPU that wrote THR. The view is
   * reused: copy it to keep it.
   */
  output: (bytes: Uint8Array) => void;
  /**
   * Called once after {@linkcode Serial.pushInput} refused bytes, when the guest has drained the
   * ring to half: the producer may push again. Runs on the consuming vCPU's thread.
   */
  onRxSpace?: () => void;
}

/** A 16550A UART over shared state; implements {@linkcode BusDevice} for its 8 ports. */
export class Serial implements BusDevice {
  readonly #s: Int32Array;
  readonly #rx: Uint8Array;
  readonly #irq: IrqLine;
  readonly #output: (bytes: Uint8Array) => void;
  readonly #onRxSpace: (() => void) | undefined;
  readonly #tx = new Uint8Array(1);

  /** Creates the shared state of one UART, in its power-on register state. */
  static createState(): SharedArrayBuffer {
    const sab = new SharedArrayBuffer(RX_OFFSET + SERIAL_RX_CAPACITY);
    const s = new Int32Array(sab, 0, SLOTS);
    s[S_LCR] = 0x03; // 8N1
    s[S_MCR] = MCR_OUT2; // OUT2 gates the IRQ on PCs; firmware leaves it set
    s[S_DLL] = 0x0c; // 9600 baud from 1.8432 MHz
    return sab;
  }

  /** Builds this thread's view of the UART in `state` (from {@linkcode Serial.createState}). */
  constructor(state: SharedArrayBuffer, options: SerialOptions) {
    this.#s = new Int32Array(state, 0, SLOTS);
    this.#rx = new Uint8Array(state, RX_OFFSET, SERIAL_RX_CAPACITY);
    this.#irq = options.irq;
    this.#output = options.output;
    this.#onRxSpace = options.onRxSpace;
  }

  /**
   * Main thread: queues host input for the guest. Returns how many bytes fit (the rest is the
   * caller's to retry after `onRxSpace`).
   */
  pushInput(bytes: Uint8Array): number {
    const s = this.#s;
    lockAcquire(s, S_LOCK);
    let n = 0;
    try {
      const count = s[S_RX_COUNT]!;
      n = Math.max(0, Math.min(bytes.length, SERIAL_RX_CAPACITY - count));
      const tail = s[S_RX_HEAD]! + count;
      for (let i = 0; i < n; i++) this.#rx[(tail + i) & RX_MASK] = bytes[i]!;
      s[S_RX_COUNT] = count + n;
      if (n < bytes.length) s[S_RX_WANT_SPACE] = 1;
      this.#updateIrq();
    } finally {
      lockRelease(s, S_LOCK);
    }
    return n;
  }

  /** Free bytes in the receive ring. */
  rxSpace(): number {
    return SERIAL_RX_CAPACITY - Atomics.load(this.#s, S_RX_COUNT);
  }

  /** Guest register read; accesses wider than a byte read consecutive registers. */
  read(offset: number, data: Uint8Array): void {
    for (let i = 0; i < data.length; i++) data[i] = this.#readReg(offset + i);
  }

  /** Guest register write; accesses wider than a byte write consecutive registers. */
  write(offset: number, data: Uint8Array): void {
    for (let i = 0; i < data.length; i++) this.#writeReg(offset + i, data[i]!);
  }

  #readReg(reg: number): number {
    const s = this.#s;
    let value = 0xff;
    let notifySpace = false;
    lockAcquire(s, S_LOCK);
    try {
      const dlab = (s[S_LCR]! & LCR_DLAB) !== 0;
      switch (reg) {
        case UART_RBR_THR:
          if (dlab) value = s[S_DLL]!;
          else {
            value = this.#popRx();
            if (s[S_RX_WANT_SPACE] && s[S_RX_COUNT]! <= SERIAL_RX_CAPACITY / 2) {
              s[S_RX_WANT_SPACE] = 0;
              notifySpace = true;
            }
          }
          break;
        case UART_IER:
          value = dlab ? s[S_DLM]! : s[S_IER]!;
          break;
        case UART_IIR_FCR:
          value = this.#iir();
          // Reading the IIR acknowledges a THRE interrupt, but only when it is the one reported.
          if ((value & 0x0f) === IIR_THRI) s[S_THRE_PENDING] = 0;
          break;
        case UART_LCR:
          value = s[S_LCR]!;
          break;
        case UART_MCR:
          value = s[S_MCR]!;
          break;
        case UART_LSR:
          value = LSR_THRE | LSR_TEMT | s[S_LSR_ERR]! | (s[S_RX_COUNT]! > 0 ? LSR_DR : 0);
          s[S_LSR_ERR] = 0;
          break;
        case UART_MSR:
          value = this.#msrLines(s[S_MCR]!) | s[S_MSR_DELTA]!;
          s[S_MSR_DELTA] = 0;
          break;
        case UART_SCR:
          value = s[S_SCR]!;
          break;
      }
      this.#updateIrq();
    } finally {
      lockRelease(s, S_LOCK);
    }
    if (notifySpace) this.#onRxSpace?.();
    return value;
  }

  #writeReg(reg: number, value: number): void {
    const s = this.#s;
    let transmit = false;
    let notifySpace = false;
    lockAcquire(s, S_LOCK);
    try {
      const dlab = (s[S_LCR]! & LCR_DLAB) !== 0;
      switch (reg) {
        case UART_RBR_THR:
          if (dlab) s[S_DLL] = value;
          else {
            if (s[S_MCR]! & MCR_LOOP) this.#loopback(value);
            else transmit = true;
            // The byte leaves the THR at once, so THR-empty is re-armed immediately.
            s[S_THRE_PENDING] = s[S_IER]! & IER_ETBEI ? 1 : 0;
          }
          break;
        case UART_IER:
          if (dlab) s[S_DLM] = value;
          else {
            s[S_IER] = value & IER_MASK;
            // Enabling ETBEI while THR is empty raises THRE at once (8250 startup relies on it).
            s[S_THRE_PENDING] = value & IER_ETBEI ? 1 : 0;
          }
          break;
        case UART_IIR_FCR:
          notifySpace = this.#writeFcr(value);
          break;
        case UART_LCR:
          s[S_LCR] = value;
          break;
        case UART_MCR: {
          const before = this.#msrLines(s[S_MCR]!);
          s[S_MCR] = value & MCR_MASK;
          const after = this.#msrLines(s[S_MCR]!);
          const changed = before ^ after;
          let delta = 0;
          if (changed & MSR_CTS) delta |= 0x01;
          if (changed & MSR_DSR) delta |= 0x02;
          if (before & ~after & MSR_RI) delta |= 0x04; // trailing edge of RI only
          if (changed & MSR_DCD) delta |= 0x08;
          s[S_MSR_DELTA] = s[S_MSR_DELTA]! | delta;
          break;
        }
        case UART_SCR:
          s[S_SCR] = value;
          break;
        default:
          // LSR and MSR writes are factory-test only on a 16550A: ignored.
          break;
      }
      this.#updateIrq();
    } finally {
      lockRelease(s, S_LOCK);
    }
    if (transmit) {
      this.#tx[0] = value;
      this.#output(this.#tx);
    }
    if (notifySpace) this.#onRxSpace?.();
  }

  /** FCR write; returns true when clearing the RX FIFO should wake a blocked producer. */
  #writeFcr(value: number): boolean {
    const s = this.#s;
    const old = s[S_FCR]!;
    // Bits 7:1 are only programmed with bit 0 set; toggling bit 0 resets both FIFOs.
    const next = value & FCR_ENABLE ? value & FCR_KEEP : 0;
    s[S_FCR] = next;
    if ((value & FCR_CLEAR_RX) || ((old ^ next) & FCR_ENABLE)) {
      s[S_RX_COUNT] = 0;
      s[S_RX_HEAD] = 0;
      if (s[S_RX_WANT_SPACE]) {
        s[S_RX_WANT_SPACE] = 0;
        return true;
      }
    }
    return false;
  }

  /** Loopback: THR feeds RBR, limited to the FIFO depth like the real part (overrun beyond). */
  #loopback(value: number): void {
    const s = this.#s;
    const depth = s[S_FCR]! & FCR_ENABLE ? 16 : 1;
    const count = s[S_RX_COUNT]!;
    if (count >= depth) {
      s[S_LSR_ERR] = s[S_LSR_ERR]! | LSR_OE;
      return;
    }
    this.#rx[(s[S_RX_HEAD]! + count) & RX_MASK] = value;
    s[S_RX_COUNT] = count + 1;
  }

  #popRx(): number {
    const s = this.#s;
    const count = s[S_RX_COUNT]!;
    if (count <= 0) return s[S_RX_LAST]!;
    const head = s[S_RX_HEAD]! & RX_MASK;
    const value = this.#rx[head]!;
    s[S_RX_HEAD] = (head + 1) & RX_MASK;
    s[S_RX_COUNT] = Math.min(count - 1, SERIAL_RX_CAPACITY);
    s[S_RX_LAST] = value;
    return value;
  }

  /** MSR status bits 7:4: loopback wires MCR outputs back (RTS→CTS, DTR→DSR, OUT1→RI, OUT2→DCD). */
  #msrLines(mcr: number): number {
    if (!(mcr & MCR_LOOP)) return MSR_IDLE;
    return (mcr & MCR_RTS ? MSR_CTS : 0) | (mcr & MCR_DTR ? MSR_DSR : 0) |
      (mcr & MCR_OUT1 ? MSR_RI : 0) | (mcr & MCR_OUT2 ? MSR_DCD : 0);
  }

  /** IIR: the highest-priority pending enabled interrupt (line status > RX > THRE > modem). */
  #iir(): number {
    const s = this.#s;
    const ier = s[S_IER]!;
    const fifo = s[S_FCR]! & FCR_ENABLE ? IIR_FIFO_ENABLED : 0;
    if (ier & IER_ELSI && s[S_LSR_ERR]) return fifo | IIR_RLSI;
    if (ier & IER_ERBFI && s[S_RX_COUNT]! > 0) return fifo | IIR_RDI;
    if (ier & IER_ETBEI && s[S_THRE_PENDING]) return fifo | IIR_THRI;
    if (ier & IER_EDSSI && s[S_MSR_DELTA]) return fifo | IIR_MSI;
    return fifo | IIR_NO_INT;
  }

  /**
   * Drives the IRQ line when the pending state changed. Runs with the lock held so that level
   * changes from different threads reach KVM in the order they happened.
   */
  #updateIrq(): void {
    const s = this.#s;
    const level = (this.#iir() & IIR_NO_INT) === 0 ? 1 : 0;
    if (s[S_IRQ_LEVEL] === level) return;
    s[S_IRQ_LEVEL] = level;
    this.#irq.set(level === 1);
  }
}
