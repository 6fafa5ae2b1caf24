/**
 * Power requests from any thread (ACPI PM1 sleep, i8042 reset line, the reset MSR, the shutdown
 * IC). The main thread owns the VM and acts on them; devices only ask.
 * @module
 */

/** What a device can ask of the machine's power state. */
export interface PowerControl {
  /** Guest asked to power off (ACPI S5). */
  powerOff(): void;
  /** Guest asked for a reset (i8042 pulse, 0xCF9, ACPI reset register, reset MSR). */
  reset(): void;
}

/** A power request the main thread acts on. */
export type PowerRequest = "poweroff" | "reset" | "crash";

const REQUEST_CODES: Record<PowerRequest, number> = { poweroff: 1, reset: 2, crash: 3 };

/**
 * `PowerControl` over shared memory: any thread records the request (the first one wins: a
 * reset after a power-off request does not undo it) and wakes the main thread through `wake`
 * (in the VMM, an eventfd write).
 */
export class SharedPowerControl implements PowerControl {
  readonly #word: Int32Array;
  readonly #wake: () => void;

  /** Fresh shared state (no request). */
  static createState(): SharedArrayBuffer {
    return new SharedArrayBuffer(4);
  }

  constructor(state: SharedArrayBuffer, wake: () => void) {
    this.#word = new Int32Array(state, 0, 1);
    this.#wake = wake;
  }

  #post(r: PowerRequest): void {
    Atomics.compareExchange(this.#word, 0, 0, REQUEST_CODES[r]);
    this.#wake();
  }

  powerOff(): void {
    this.#post("poweroff");
  }

  reset(): void {
    this.#post("reset");
  }

  /** The guest reported a crash (Hyper-V crash MSRs); the main thread applies `--on-crash`. */
  crash(): void {
    this.#post("crash");
  }

  /** The pending request, if any (left in place: the VM is torn down after it). */
  pending(): PowerRequest | undefined {
    const v = Atomics.load(this.#word, 0);
    return v === 1 ? "poweroff" : v === 2 ? "reset" : v === 3 ? "crash" : undefined;
  }
}
