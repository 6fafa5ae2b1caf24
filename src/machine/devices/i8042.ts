/**
 * i8042 PS/2 controller (ports 0x60/0x64): offset 0 is data, offset 4 is status (read) and
 * command (write), with the PS/2 keyboard and mouse of `ps2.ts` behind it (IRQ 1 and 12).
 *
 * What it is for: the reset line (command 0xFE, or an output-port write clearing bit 0), which
 * Linux's `reboot=k` path and many other guests use, and answering Linux's i8042 probe quickly
 * instead of letting it spin on timeouts. The controller itself is complete enough for that
 * probe: self-test (0xAA → 0x55), interface tests, command byte read/write (0x20/0x60), port
 * enable/disable, and the AUX loopback (0xD3) Linux uses to test AUX interrupt delivery.
 *
 * Keyboard and mouse: bytes written to the data port go to the keyboard, or to the mouse after
 * 0xD4; their answers and the host's keys and motion (`ps2Key`, `ps2Mouse`, called on the main
 * thread) wait in per-device queues, and whenever the output buffer is empty the next byte moves
 * in (keyboard first), unless the command byte disables that port.
 *
 * State is in a SharedArrayBuffer behind one lock: vCPU threads run the guest's accesses, the
 * main thread injects host input.
 * @module
 */
import type { BusDevice } from "../bus.ts";
import type { IrqLine } from "../irq.ts";
import type { PowerControl } from "../power.ts";
import { getLogger, rateLimited } from "../../util/log.ts";
import { lockAcquire, lockRelease } from "./spin_lock.ts";
import {
  PS2_KEYBOARD_SLOTS,
  PS2_MOUSE_SLOTS,
  PS2_QUEUE_BYTES,
  Ps2Keyboard,
  Ps2Mouse,
} from "./ps2.ts";

/** Data port offset. */
export const I8042_DATA = 0;
/** Status (read) / command (write) port offset. */
export const I8042_COMMAND = 4;
/** Length of the decoded range (0x60..0x64 on a PC). */
export const I8042_PORT_COUNT = 5;

/** Status bit: output buffer full. */
export const STATUS_OBF = 0x01;
/** Status bit: output buffer holds AUX (mouse) data. */
export const STATUS_AUXDATA = 0x20;
/** Command byte bit: keyboard interrupt enable. */
export const CTR_KBDINT = 0x01;
/** Command byte bit: AUX interrupt enable. */
export const CTR_AUXINT = 0x02;
/** Command byte bit: AUX interface disabled. */
export const CTR_AUXDIS = 0x20;

const STATUS_SYS = 0x04; // mirrors CTR_SYS
const STATUS_CMD = 0x08; // last write went to the command port
const STATUS_UNLOCKED = 0x10; // keylock off (Linux warns otherwise)
// STATUS_IBF (0x02) is never set: every command completes during the write.

const CTR_SYS = 0x04;
const CTR_KBDDIS = 0x10;
const CTR_XLATE = 0x40;

const CMD_READ_CTR = 0x20; // 0x20-0x3F read controller RAM; byte 0 is the command byte
const CMD_WRITE_CTR = 0x60; // 0x60-0x7F write controller RAM (next data byte)
const CMD_AUX_DISABLE = 0xa7;
const CMD_AUX_ENABLE = 0xa8;
const CMD_AUX_TEST = 0xa9; // answers 0: lines OK
const CMD_SELF_TEST = 0xaa; // answers 0x55
const CMD_KBD_TEST = 0xab; // answers 0: lines OK
const CMD_KBD_DISABLE = 0xad;
const CMD_KBD_ENABLE = 0xae;
const CMD_READ_OUTPORT = 0xd0;
const CMD_WRITE_OUTPORT = 0xd1; // next data byte; bit 0 low resets the CPU
const CMD_KBD_LOOP = 0xd2; // next data byte comes back as keyboard data
const CMD_AUX_LOOP = 0xd3; // next data byte comes back as AUX data
const CMD_AUX_SEND = 0xd4; // next data byte goes to the mouse
// 0xF0-0xFF pulse output port bits 3:0 low; 0xFE pulses the reset line.

const SELF_TEST_OK = 0x55;

const CTR_INIT = CTR_XLATE | CTR_SYS | CTR_AUXINT | CTR_KBDINT;
const OUTPORT_INIT = 0x03; // reset line high (running), A20 enabled
const OUTPORT_RESET_LINE = 0x01;

const S_CTR = 0;
const S_OBF = 1;
const S_OUT = 2;
const S_OUT_AUX = 3;
const S_PENDING = 4; // command waiting for its data byte, 0 = none
const S_OUTPORT = 5;
const S_LAST_CMD = 6;
const S_KBD_LEVEL = 7;
const S_AUX_LEVEL = 8;
const S_LOCK = 9;
const S_KBD = 10; // keyboard state slots, then the mouse's, then both queues' bytes
const S_MOUSE = S_KBD + PS2_KEYBOARD_SLOTS;
const SLOTS = S_MOUSE + PS2_MOUSE_SLOTS;
const QUEUES_OFFSET = SLOTS * 4;
const STATE_BYTES = QUEUES_OFFSET + 2 * PS2_QUEUE_BYTES;

const log = getLogger("machine", "i8042");

/** Per-thread wiring of an {@linkcode I8042}. */
export interface I8042Options {
  /** Receives the reset request. */
  power: PowerControl;
  /** Keyboard interrupt (GSI 1 on a PC); without it keyboard-port data raises nothing. */
  kbdIrq?: IrqLine;
  /**
   * AUX interrupt (GSI 12). Pass it: Linux tests AUX interrupt delivery and waits 250 ms for it
   * before giving up on the AUX port.
   */
  auxIrq?: IrqLine;
}

/** The i8042 controller over shared state; implements {@linkcode BusDevice} for offsets 0-4. */
export class I8042 implements BusDevice {
  readonly #s: Int32Array;
  readonly #power: PowerControl;
  readonly #kbdIrq: IrqLine | undefined;
  readonly #auxIrq: IrqLine | undefined;
  readonly #limit = rateLimited();
  /** The PS/2 keyboard behind the first port. */
  readonly keyboard: Ps2Keyboard;
  /** The PS/2 mouse behind the AUX port. */
  readonly mouse: Ps2Mouse;

  /** Creates the shared state in the post-firmware configuration. */
  static createState(): SharedArrayBuffer {
    const sab = new SharedArrayBuffer(STATE_BYTES);
    const s = new Int32Array(sab, 0, SLOTS);
    s[S_CTR] = CTR_INIT;
    s[S_OUTPORT] = OUTPORT_INIT;
    Ps2Keyboard.init(s, S_KBD);
    Ps2Mouse.init(s, S_MOUSE);
    return sab;
  }

  /** Builds this thread's view of the controller in `state`. */
  constructor(state: SharedArrayBuffer, options: I8042Options) {
    this.#s = new Int32Array(state, 0, SLOTS);
    this.#power = options.power;
    this.#kbdIrq = options.kbdIrq;
    this.#auxIrq = options.auxIrq;
    this.keyboard = new Ps2Keyboard(
      this.#s,
      S_KBD,
      new Uint8Array(state, QUEUES_OFFSET, PS2_QUEUE_BYTES),
    );
    this.mouse = new Ps2Mouse(
      this.#s,
      S_MOUSE,
      new Uint8Array(state, QUEUES_OFFSET + PS2_QUEUE_BYTES, PS2_QUEUE_BYTES),
    );
  }

  /** Guest read: data (offset 0) or status (offset 4); other offsets float to 0xFF. */
  read(offset: number, data: Uint8Array): void {
    data.fill(0xff);
    this.#locked(() => {
      if (offset === I8042_DATA) data[0] = this.#readData();
      else if (offset === I8042_COMMAND) data[0] = this.#status();
    });
  }

  /** Guest write: data (offset 0) or command (offset 4); the first byte is used. */
  write(offset: number, data: Uint8Array): void {
    const value = data[0];
    if (value === undefined) return;
    this.#locked(() => {
      if (offset === I8042_DATA) this.#writeData(value);
      else if (offset === I8042_COMMAND) this.#writeCommand(value);
    });
  }

  /**
   * Host input: one key on the PS/2 keyboard (`set1`/`set2` codes, 0xE0xx for extended keys),
   * sent as set 1 while the controller translates. False when the guest disabled the keyboard
   * or its queue is full.
   */
  ps2Key(set1: number, set2: number, down: boolean): boolean {
    return this.#locked(() => {
      const ok = this.keyboard.key(set1, set2, down, (this.#s[S_CTR]! & CTR_XLATE) !== 0);
      this.#refill();
      return ok;
    });
  }

  /** Host input: mouse motion (pixels, y down), wheel steps (positive: up) and buttons. */
  ps2Mouse(dx: number, dy: number, wheel: number, buttons: number): boolean {
    return this.#locked(() => {
      const ok = this.mouse.motion(dx, dy, wheel, buttons);
      this.#refill();
      return ok;
    });
  }

  #locked<T>(fn: () => T): T {
    lockAcquire(this.#s, S_LOCK);
    try {
      return fn();
    } finally {
      lockRelease(this.#s, S_LOCK);
    }
  }

  /** Moves the next queued device byte into an empty output buffer. */
  #refill(): void {
    const s = this.#s;
    if (s[S_OBF]) return;
    const ctr = s[S_CTR]!;
    if (!(ctr & CTR_KBDDIS) && this.keyboard.queue.length > 0) {
      this.#respond(this.keyboard.queue.pop()!, false);
    } else if (!(ctr & CTR_AUXDIS) && this.mouse.queue.length > 0) {
      this.#respond(this.mouse.queue.pop()!, true);
    }
  }

  #status(): number {
    const s = this.#s;
    let st = STATUS_UNLOCKED | (s[S_CTR]! & CTR_SYS ? STATUS_SYS : 0);
    if (s[S_LAST_CMD]) st |= STATUS_CMD;
    if (s[S_OBF]) st |= STATUS_OBF | (s[S_OUT_AUX] ? STATUS_AUXDATA : 0);
    return st;
  }

  #readData(): number {
    const s = this.#s;
    s[S_OBF] = 0; // reading empties the buffer; an empty read returns the stale byte
    const value = s[S_OUT]!;
    this.#updateIrqs();
    this.#refill();
    return value;
  }

  #writeCommand(cmd: number): void {
    const s = this.#s;
    s[S_LAST_CMD] = 1;
    s[S_PENDING] = 0;
    if (cmd >= 0x20 && cmd < 0x40) {
      // Controller RAM read: byte 0 is the command byte, the rest reads as 0.
      this.#respond(cmd === CMD_READ_CTR ? s[S_CTR]! : 0, false);
      return;
    }
    if (cmd >= 0x60 && cmd < 0x80) {
      s[S_PENDING] = cmd;
      return;
    }
    if (cmd >= 0xf0) {
      // Pulse output port bits 3:0 low for each 0 bit; bit 0 is the CPU reset line.
      if (!(cmd & OUTPORT_RESET_LINE)) this.#power.reset();
      return;
    }
    switch (cmd) {
      case CMD_AUX_DISABLE:
        this.#setCtr(s[S_CTR]! | CTR_AUXDIS);
        break;
      case CMD_AUX_ENABLE:
        this.#setCtr(s[S_CTR]! & ~CTR_AUXDIS);
        break;
      case CMD_AUX_TEST:
      case CMD_KBD_TEST:
        this.#respond(0x00, false); // no clock/data line stuck
        break;
      case CMD_SELF_TEST:
        this.#setCtr(s[S_CTR]! | CTR_SYS);
        this.#respond(SELF_TEST_OK, false);
        break;
      case CMD_KBD_DISABLE:
        this.#setCtr(s[S_CTR]! | CTR_KBDDIS);
        break;
      case CMD_KBD_ENABLE:
        this.#setCtr(s[S_CTR]! & ~CTR_KBDDIS);
        break;
      case CMD_READ_OUTPORT:
        this.#respond(s[S_OUTPORT]!, false);
        break;
      case CMD_WRITE_OUTPORT:
      case CMD_KBD_LOOP:
      case CMD_AUX_LOOP:
      case CMD_AUX_SEND:
        s[S_PENDING] = cmd;
        break;
      default:
        this.#limit((dropped) =>
          log.debug("Ignoring unsupported i8042 command {cmd} ({dropped} similar dropped)", {
            cmd: `0x${cmd.toString(16)}`,
            dropped,
          })
        );
    }
  }

  #writeData(value: number): void {
    const s = this.#s;
    s[S_LAST_CMD] = 0;
    const pending = s[S_PENDING]!;
    s[S_PENDING] = 0;
    switch (pending) {
      case 0:
        this.keyboard.write(value, (s[S_CTR]! & CTR_XLATE) !== 0);
        this.#refill();
        break;
      case CMD_WRITE_CTR:
        this.#setCtr(value);
        break;
      case CMD_WRITE_OUTPORT:
        s[S_OUTPORT] = value;
        if (!(value & OUTPORT_RESET_LINE)) this.#power.reset();
        break;
      case CMD_KBD_LOOP:
        this.#respond(value, false);
        break;
      case CMD_AUX_LOOP:
        this.#respond(value, true);
        break;
      case CMD_AUX_SEND:
        this.mouse.write(value);
        this.#refill();
        break;
      default:
        break; // controller RAM bytes 1-31: not kept
    }
  }

  #setCtr(value: number): void {
    this.#s[S_CTR] = value & 0xff;
    this.#updateIrqs();
    this.#refill(); // a port enabled again may have bytes waiting
  }

  #respond(value: number, aux: boolean): void {
    const s = this.#s;
    s[S_OUT] = value;
    s[S_OUT_AUX] = aux ? 1 : 0;
    s[S_OBF] = 1;
    this.#updateIrqs();
  }

  /** IRQ 1 / IRQ 12 are high while their port's byte waits in the buffer and is enabled. */
  #updateIrqs(): void {
    const s = this.#s;
    const full = s[S_OBF] !== 0;
    const aux = s[S_OUT_AUX] !== 0;
    const ctr = s[S_CTR]!;
    const kbd = full && !aux && (ctr & CTR_KBDINT) !== 0 ? 1 : 0;
    const mouse = full && aux && (ctr & CTR_AUXINT) !== 0 ? 1 : 0;
    if (s[S_KBD_LEVEL] !== kbd) {
      s[S_KBD_LEVEL] = kbd;
      this.#kbdIrq?.set(kbd === 1);
    }
    if (s[S_AUX_LEVEL] !== mouse) {
      s[S_AUX_LEVEL] = mouse;
      this.#auxIrq?.set(mouse === 1);
    }
  }
}
