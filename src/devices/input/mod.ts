/**
 * Keyboard and pointer for the guest: the VMBus synthetic keyboard (Linux `hyperv_keyboard`) and
 * synthetic HID mouse (Linux `hid_hyperv`, absolute coordinates), the key tables host front ends
 * map into, and the input router that sends each host event to the device the guest uses.
 *
 * - `protocol.ts`: wire formats and constants of both devices.
 * - `keyboard.ts`, `mouse.ts`: the two `VmbusDevice`s.
 * - `keymap.ts`: keys by set-1 scan code; names, text and X11 keysyms mapped onto them.
 * - `router.ts`: `InputRouter`, the one entry point of host input (synthetic first, else PS/2).
 * @module
 */
export * from "./protocol.ts";
export * from "./keymap.ts";
export {
  MAX_QUEUED_KEYS,
  SyntheticKeyboard,
  type SyntheticKeyboardState,
  type SyntheticKeyboardStats,
} from "./keyboard.ts";
export {
  hidPacket,
  type PointerState,
  SyntheticMouse,
  type SyntheticMouseState,
  type SyntheticMouseStats,
} from "./mouse.ts";
export {
  type InputRoute,
  InputRouter,
  type InputRouterDevices,
  type InputRouterStats,
  type Ps2Input,
} from "./router.ts";
