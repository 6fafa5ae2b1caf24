/**
 * The PS/2 keyboard and mouse behind the i8042 (`i8042.ts` owns them, their shared state and
 * the lock). Each has a byte queue towards the controller, the command set firmware and Linux's
 * atkbd/psmouse use, and an entry point for host input:
 *
 * - Keyboard: scan code set 2, sent as set 1 when the controller translates (command byte bit 6,
 *   how every PC boots), LEDs (0xED), typematic rate (0xF3, stored: host clients repeat keys
 *   themselves), scan set select/query (0xF0), identify (0xF2 → AB 83, AB 41 translated), enable
 *   and disable scanning, reset (0xFF → FA AA), echo, resend.
 * - Mouse: standard PS/2 3-byte packets, or IntelliMouse 4-byte packets with a wheel once the
 *   guest knocks (sample rates 200, 100, 80 → id 3); reset, identify, status request, rates,
 *   resolution, scaling, stream/remote mode, read data, enable/disable reporting.
 *
 * Host input is dropped while the guest has the device disabled or its queue is full. Callers
 * hold the i8042's lock around every method.
 * @module
 */

/** Bytes each device queue holds. */
export const PS2_QUEUE_BYTES = 256;

/** Int32 slots of one byte queue (head, count), followed by its bytes. */
class ByteQueue {
  readonly #s: Int32Array;
  readonly #at: number;
  readonly #bytes: Uint8Array;
  constructor(s: Int32Array, at: number, bytes: Uint8Array) {
    this.#s = s;
    this.#at = at;
    this.#bytes = bytes;
  }
  get length(): number {
    return this.#s[this.#at + 1]!;
  }
  get free(): number {
    return PS2_QUEUE_BYTES - this.length;
  }
  push(b: number): void {
    const n = this.length;
    if (n >= PS2_QUEUE_BYTES) return;
    this.#bytes[(this.#s[this.#at]! + n) % PS2_QUEUE_BYTES] = b;
    this.#s[this.#at + 1] = n + 1;
  }
  pop(): number | undefined {
    const n = this.length;
    if (n === 0) return undefined;
    const head = this.#s[this.#at]!;
    this.#s[this.#at] = (head + 1) % PS2_QUEUE_BYTES;
    this.#s[this.#at + 1] = n - 1;
    return this.#bytes[head];
  }
  clear(): void {
    this.#s[this.#at + 1] = 0;
  }
}

const ACK = 0xfa;
const RESEND = 0xfe;
const SELF_TEST_PASSED = 0xaa;

// Keyboard slots (relative to its base).
const K_QHEAD = 0;
const K_PENDING = 2; // command waiting for its argument byte
const K_ENABLED = 3;
const K_SCANSET = 4;
const K_LEDS = 5;
const K_TYPEMATIC = 6;
const K_LAST = 7; // last byte sent, for 0xFE resend
/** Int32 slots of the keyboard's state. */
export const PS2_KEYBOARD_SLOTS = 8;

/** Set-1 → translated values of the scan set numbers the 0xF0 0x00 query answers. */
const TRANSLATED_SET = [0, 0x43, 0x41, 0x3f];

/** The PS/2 keyboard (state in the i8042's shared memory). */
export class Ps2Keyboard {
  readonly #s: Int32Array;
  readonly #b: number;
  readonly queue: ByteQueue;

  /** The keyboard over `s[base..base+PS2_KEYBOARD_SLOTS)` and its queue bytes. */
  constructor(s: Int32Array, base: number, bytes: Uint8Array) {
    this.#s = s;
    this.#b = base;
    this.queue = new ByteQueue(s, base + K_QHEAD, bytes);
  }

  /** Power-on state: scanning on, scan set 2, LEDs off, default typematic. */
  static init(s: Int32Array, base: number): void {
    s[base + K_ENABLED] = 1;
    s[base + K_SCANSET] = 2;
    s[base + K_TYPEMATIC] = 0x2b;
  }

  /** LED bits (0 scroll, 1 num, 2 caps) the guest set. */
  get leds(): number {
    return this.#s[this.#b + K_LEDS]!;
  }

  /** Typematic byte the guest set (rate and delay). */
  get typematic(): number {
    return this.#s[this.#b + K_TYPEMATIC]!;
  }

  /** True while scanning is enabled (0xF4; 0xF5 disables). */
  get enabled(): boolean {
    return this.#s[this.#b + K_ENABLED] !== 0;
  }

  /** Scan code set the guest selected (1, 2 or 3). */
  get scanSet(): number {
    return this.#s[this.#b + K_SCANSET]!;
  }

  #send(b: number): void {
    this.#s[this.#b + K_LAST] = b;
    this.queue.push(b);
  }

  /** A byte from the guest (through the controller's data port). */
  write(value: number, translated: boolean): void {
    const s = this.#s, b = this.#b;
    const pending = s[b + K_PENDING]!;
    if (pending !== 0) {
      s[b + K_PENDING] = 0;
      switch (pending) {
        case 0xed:
          s[b + K_LEDS] = value & 7;
          return this.#send(ACK);
        case 0xf3:
          s[b + K_TYPEMATIC] = value & 0x7f;
          return this.#send(ACK);
        case 0xf0:
          this.#send(ACK);
          if (value === 0) {
            const set = this.scanSet;
            this.#send(translated ? TRANSLATED_SET[set]! : set);
          } else if (value >= 1 && value <= 3) {
            s[b + K_SCANSET] = value;
          }
          return;
      }
    }
    switch (value) {
      case 0xed:
      case 0xf3:
      case 0xf0:
        s[b + K_PENDING] = value;
        return this.#send(ACK);
      case 0xee: // echo
        return this.#send(0xee);
      case 0xf2: // identify: MF2 keyboard
        this.#send(ACK);
        this.#send(0xab);
        return this.#send(translated ? 0x41 : 0x83);
      case 0xf4:
        s[b + K_ENABLED] = 1;
        return this.#send(ACK);
      case 0xf5: // disable scanning and restore defaults
        s[b + K_ENABLED] = 0;
        s[b + K_TYPEMATIC] = 0x2b;
        return this.#send(ACK);
      case 0xf6: // restore defaults, keep scanning
        s[b + K_TYPEMATIC] = 0x2b;
        s[b + K_ENABLED] = 1;
        return this.#send(ACK);
      case 0xfe: // resend the last byte
        return this.queue.push(s[b + K_LAST]!);
      case 0xff:
        this.queue.clear();
        Ps2Keyboard.init(s, b);
        s[b + K_LEDS] = 0;
        this.#send(ACK);
        return this.#send(SELF_TEST_PASSED);
      default:
        // 0xF7-0xFD (set 3 per-key modes) and the rest: ask the host to send again.
        return this.#send(RESEND);
    }
  }

  /**
   * Queues a key press or release. `set1`/`set2` are its codes (0xE0xx for extended keys); the
   * bytes sent follow the scan set and the controller's translation. False when dropped.
   */
  key(set1: number, set2: number, down: boolean, translated: boolean): boolean {
    if (!this.enabled) return false;
    const bytes: number[] = [];
    if (translated || this.scanSet === 1) {
      if (set1 > 0xff) bytes.push(set1 >> 8);
      bytes.push((set1 & 0x7f) | (down ? 0 : 0x80));
    } else {
      if (set2 > 0xff) bytes.push(set2 >> 8);
      if (!down) bytes.push(0xf0);
      bytes.push(set2 & 0xff);
    }
    if (this.queue.free < bytes.length) return false;
    for (const x of bytes) this.queue.push(x);
    return true;
  }
}

// Mouse slots (relative to its base).
const M_QHEAD = 0;
const M_PENDING = 2;
const M_ENABLED = 3;
const M_RATE = 4;
const M_RESOLUTION = 5;
const M_SCALING = 6;
const M_ID = 7;
const M_RATES = 8; // last three sample rates, packed, for the IntelliMouse knock
const M_REMOTE = 9;
const M_BUTTONS = 10;
const M_LAST = 11;
/** Int32 slots of the mouse's state. */
export const PS2_MOUSE_SLOTS = 12;

/** The PS/2 mouse (state in the i8042's shared memory). */
export class Ps2Mouse {
  readonly #s: Int32Array;
  readonly #b: number;
  readonly queue: ByteQueue;

  /** The mouse over `s[base..base+PS2_MOUSE_SLOTS)` and its queue bytes. */
  constructor(s: Int32Array, base: number, bytes: Uint8Array) {
    this.#s = s;
    this.#b = base;
    this.queue = new ByteQueue(s, base + M_QHEAD, bytes);
  }

  /** Power-on state: reporting off, 100 samples/s, 4 counts/mm, id 0. */
  static init(s: Int32Array, base: number): void {
    s[base + M_ENABLED] = 0;
    s[base + M_RATE] = 100;
    s[base + M_RESOLUTION] = 2;
    s[base + M_SCALING] = 0;
    s[base + M_ID] = 0;
    s[base + M_RATES] = 0;
    s[base + M_REMOTE] = 0;
  }

  /** Device id: 0 standard, 3 IntelliMouse (wheel). */
  get id(): number {
    return this.#s[this.#b + M_ID]!;
  }

  /** True while data reporting is enabled (0xF4). */
  get enabled(): boolean {
    return this.#s[this.#b + M_ENABLED] !== 0;
  }

  #send(b: number): void {
    this.#s[this.#b + M_LAST] = b;
    this.queue.push(b);
  }

  /** A byte from the guest (controller command 0xD4 then the data port). */
  write(value: number): void {
    const s = this.#s, b = this.#b;
    const pending = s[b + M_PENDING]!;
    if (pending !== 0) {
      s[b + M_PENDING] = 0;
      if (pending === 0xf3) {
        s[b + M_RATE] = value;
        const rates = ((s[b + M_RATES]! << 8) | value) & 0xffffff;
        s[b + M_RATES] = rates;
        if (rates === 0xc86450) s[b + M_ID] = 3; // 200, 100, 80: IntelliMouse
      } else if (pending === 0xe8) {
        s[b + M_RESOLUTION] = value & 3;
      }
      return this.#send(ACK);
    }
    switch (value) {
      case 0xe6:
      case 0xe7:
        s[b + M_SCALING] = value === 0xe7 ? 1 : 0;
        return this.#send(ACK);
      case 0xe8:
      case 0xf3:
        s[b + M_PENDING] = value;
        return this.#send(ACK);
      case 0xe9: { // status request
        this.#send(ACK);
        const st = (s[b + M_REMOTE] ? 0x40 : 0) | (this.enabled ? 0x20 : 0) |
          (s[b + M_SCALING] ? 0x10 : 0) | (s[b + M_BUTTONS]! & 7);
        this.#send(st);
        this.#send(s[b + M_RESOLUTION]!);
        return this.#send(s[b + M_RATE]!);
      }
      case 0xea:
        s[b + M_REMOTE] = 0;
        return this.#send(ACK);
      case 0xf0:
        s[b + M_REMOTE] = 1;
        return this.#send(ACK);
      case 0xeb: // read data (remote mode): a packet without motion
        this.#send(ACK);
        return this.#packet(0, 0, 0, s[b + M_BUTTONS]!, true);
      case 0xec:
      case 0xee: // wrap mode is not emulated; acknowledge
        return this.#send(ACK);
      case 0xf2:
        this.#send(ACK);
        return this.#send(this.id);
      case 0xf4:
        s[b + M_ENABLED] = 1;
        return this.#send(ACK);
      case 0xf5:
        s[b + M_ENABLED] = 0;
        return this.#send(ACK);
      case 0xf6:
        Ps2Mouse.init(s, b);
        return this.#send(ACK);
      case 0xfe:
        return this.queue.push(s[b + M_LAST]!);
      case 0xff:
        this.queue.clear();
        Ps2Mouse.init(s, b);
        this.#send(ACK);
        this.#send(SELF_TEST_PASSED);
        return this.#send(0);
      default:
        return this.#send(RESEND);
    }
  }

  /**
   * Queues motion (`dx` right, `dy` down, in counts), wheel steps (positive: away from the user)
   * and the buttons held (bit 0 left, 1 right, 2 middle). Large moves become several packets.
   * False when reporting is off or the queue is full.
   */
  motion(dx: number, dy: number, wheel: number, buttons: number): boolean {
    const s = this.#s, b = this.#b;
    if (!this.enabled || s[b + M_REMOTE]) return false;
    s[b + M_BUTTONS] = buttons & 7;
    let x = Math.round(dx), y = -Math.round(dy), z = Math.round(wheel);
    const per = this.id === 3 ? 4 : 3;
    do {
      if (this.queue.free < per) return false;
      const px = Math.max(-255, Math.min(255, x));
      const py = Math.max(-255, Math.min(255, y));
      const pz = Math.max(-7, Math.min(7, z));
      this.#packet(px, py, pz, buttons, false);
      x -= px;
      y -= py;
      z -= pz;
    } while (x !== 0 || y !== 0 || (z !== 0 && this.id === 3));
    return true;
  }

  #packet(dx: number, dy: number, dz: number, buttons: number, reply: boolean): void {
    const head = 0x08 | (buttons & 7) | (dx < 0 ? 0x10 : 0) | (dy < 0 ? 0x20 : 0);
    const push = reply ? (v: number) => this.#send(v) : (v: number) => this.queue.push(v);
    push(head);
    push(dx & 0xff);
    push(dy & 0xff);
    // IntelliMouse: the wheel byte counts towards the user (Linux negates it).
    if (this.id === 3) push(-dz & 0xff);
  }
}
