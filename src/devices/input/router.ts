/**
 * One input router per boot: each host key or pointer event goes to the device the guest is
 * using right now. The synthetic keyboard and mouse take over as soon as the guest's drivers
 * opened their channels (and finished their handshake); before that (firmware, boot loader,
 * early boot, a guest without VMBus) the PS/2 keyboard and mouse behind the i8042 get them.
 *
 * Host front ends (control socket, VNC, web console) all feed the router; none of them talks to a
 * device directly. Pointer positions are absolute (0..`MOUSE_AXIS_MAX` on both axes); for the
 * relative PS/2 mouse the router turns them into motion in screen pixels.
 * @module
 */
import { set2Of } from "./keymap.ts";
import { MOUSE_AXIS_MAX } from "./protocol.ts";
import type { SyntheticKeyboard } from "./keyboard.ts";
import type { SyntheticMouse } from "./mouse.ts";

/** The PS/2 side of the i8042, as the router drives it (implemented in `src/machine`). */
export interface Ps2Input {
  /**
   * Queues one key on the PS/2 keyboard. Both encodings are given (0xE0xx for extended keys);
   * the keyboard sends the one its scan code set and the controller's translation ask for.
   * Returns false when the keyboard is disabled or its buffer is full.
   */
  ps2Key(set1: number, set2: number, down: boolean): boolean;
  /** Queues relative motion (pixels, y down) and the button state on the PS/2 mouse. */
  ps2Mouse(dx: number, dy: number, wheel: number, buttons: number): boolean;
}

/** Which device received input last. */
export type InputRoute = "synthetic" | "ps2" | "none";

/** Counters of the router. */
export interface InputRouterStats {
  keysSynthetic: number;
  keysPs2: number;
  keysDropped: number;
  pointerSynthetic: number;
  pointerPs2: number;
  pointerDropped: number;
}

/** Devices the router may use; any may be absent. */
export interface InputRouterDevices {
  readonly keyboard?: SyntheticKeyboard;
  readonly mouse?: SyntheticMouse;
  readonly ps2?: Ps2Input;
}

/** Routes host input to the guest's keyboard and pointer. */
export class InputRouter {
  readonly #dev: InputRouterDevices;
  /** Counters. */
  readonly stats: InputRouterStats = {
    keysSynthetic: 0,
    keysPs2: 0,
    keysDropped: 0,
    pointerSynthetic: 0,
    pointerPs2: 0,
    pointerDropped: 0,
  };
  /** Screen size in pixels, for turning absolute positions into PS/2 motion. */
  screen = { width: 1024, height: 768 };
  #lastX = -1;
  #lastY = -1;

  /** A router over `devices`. */
  constructor(devices: InputRouterDevices) {
    this.#dev = devices;
  }

  /** Where keys go now. */
  get keyRoute(): InputRoute {
    if (this.#dev.keyboard?.isReady) return "synthetic";
    return this.#dev.ps2 ? "ps2" : "none";
  }

  /** Where pointer events go now. */
  get pointerRoute(): InputRoute {
    if (this.#dev.mouse?.isReady) return "synthetic";
    return this.#dev.ps2 ? "ps2" : "none";
  }

  /** One key press or release (`scanCode`: set-1 make code, 0xE0xx for extended keys). */
  key(scanCode: number, down: boolean): boolean {
    const kbd = this.#dev.keyboard;
    if (kbd?.isReady) {
      if (kbd.sendKey(scanCode, down)) {
        this.stats.keysSynthetic++;
        return true;
      }
    } else if (this.#dev.ps2) {
      const set2 = set2Of(scanCode);
      if (set2 !== undefined && this.#dev.ps2.ps2Key(scanCode, set2, down)) {
        this.stats.keysPs2++;
        return true;
      }
    }
    this.stats.keysDropped++;
    return false;
  }

  /**
   * The pointer is at (`x`, `y`) (0..`MOUSE_AXIS_MAX`) with `buttons` (`MouseButton` bits)
   * held; `wheel` steps since the last event (positive: away from the user).
   */
  pointer(x: number, y: number, buttons: number, wheel = 0): boolean {
    const ax = clamp(x), ay = clamp(y);
    const mouse = this.#dev.mouse;
    let ok = false;
    if (mouse?.isReady) {
      ok = mouse.sendPointer({ buttons, x: ax, y: ay, wheel });
      if (ok) this.stats.pointerSynthetic++;
    } else if (this.#dev.ps2) {
      const px = Math.round(ax * (this.screen.width - 1) / MOUSE_AXIS_MAX);
      const py = Math.round(ay * (this.screen.height - 1) / MOUSE_AXIS_MAX);
      const dx = this.#lastX < 0 ? 0 : px - this.#lastX;
      const dy = this.#lastY < 0 ? 0 : py - this.#lastY;
      ok = this.#dev.ps2.ps2Mouse(dx, dy, wheel, buttons);
      if (ok) this.stats.pointerPs2++;
    }
    this.#lastX = Math.round(ax * (this.screen.width - 1) / MOUSE_AXIS_MAX);
    this.#lastY = Math.round(ay * (this.screen.height - 1) / MOUSE_AXIS_MAX);
    if (!ok) this.stats.pointerDropped++;
    return ok;
  }

  /** A status object for the control socket. */
  status(): Record<string, unknown> {
    return {
      keyRoute: this.keyRoute,
      pointerRoute: this.pointerRoute,
      keyboard: this.#dev.keyboard
        ? { state: this.#dev.keyboard.state, ...this.#dev.keyboard.stats }
        : null,
      mouse: this.#dev.mouse ? { state: this.#dev.mouse.state, ...this.#dev.mouse.stats } : null,
      ps2: this.#dev.ps2 !== undefined,
      ...this.stats,
    };
  }
}

function clamp(v: number): number {
  if (!Number.isFinite(v)) return 0;
  return Math.max(0, Math.min(MOUSE_AXIS_MAX, Math.round(v)));
}
