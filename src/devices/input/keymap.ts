/**
 * Keys as the host names them and as the guest's keyboards encode them. A key is identified by
 * its PC scan code set 1 make code, with 0xE0 in the high byte for the extended keys (0xE053 is
 * Delete): what the synthetic keyboard sends as is, and what the PS/2 keyboard turns into set 2
 * (`set2Of`). Host front ends map into it: key names for the control socket (`parseKeyCombos`,
 * `textToKeys`) and X11 keysyms for VNC (`keysymToScanCode`). US layout.
 * @module
 */

/** One key: names (first is canonical), set-1 code, set-2 code (both with 0xE0xx for E0 keys). */
interface KeyDef {
  readonly names: readonly string[];
  readonly set1: number;
  readonly set2: number;
  /** The character typed without and with shift (for `textToKeys` and keysyms). */
  readonly chars?: string;
}

const KEYS: readonly KeyDef[] = [
  { names: ["esc", "escape"], set1: 0x01, set2: 0x76 },
  { names: ["1"], set1: 0x02, set2: 0x16, chars: "1!" },
  { names: ["2"], set1: 0x03, set2: 0x1e, chars: "2@" },
  { names: ["3"], set1: 0x04, set2: 0x26, chars: "3#" },
  { names: ["4"], set1: 0x05, set2: 0x25, chars: "4$" },
  { names: ["5"], set1: 0x06, set2: 0x2e, chars: "5%" },
  { names: ["6"], set1: 0x07, set2: 0x36, chars: "6^" },
  { names: ["7"], set1: 0x08, set2: 0x3d, chars: "7&" },
  { names: ["8"], set1: 0x09, set2: 0x3e, chars: "8*" },
  { names: ["9"], set1: 0x0a, set2: 0x46, chars: "9(" },
  { names: ["0"], set1: 0x0b, set2: 0x45, chars: "0)" },
  { names: ["minus"], set1: 0x0c, set2: 0x4e, chars: "-_" },
  { names: ["equal"], set1: 0x0d, set2: 0x55, chars: "=+" },
  { names: ["backspace"], set1: 0x0e, set2: 0x66 },
  { names: ["tab"], set1: 0x0f, set2: 0x0d, chars: "\t" },
  { names: ["q"], set1: 0x10, set2: 0x15, chars: "qQ" },
  { names: ["w"], set1: 0x11, set2: 0x1d, chars: "wW" },
  { names: ["e"], set1: 0x12, set2: 0x24, chars: "eE" },
  { names: ["r"], set1: 0x13, set2: 0x2d, chars: "rR" },
  { names: ["t"], set1: 0x14, set2: 0x2c, chars: "tT" },
  { names: ["y"], set1: 0x15, set2: 0x35, chars: "yY" },
  { names: ["u"], set1: 0x16, set2: 0x3c, chars: "uU" },
  { names: ["i"], set1: 0x17, set2: 0x43, chars: "iI" },
  { names: ["o"], set1: 0x18, set2: 0x44, chars: "oO" },
  { names: ["p"], set1: 0x19, set2: 0x4d, chars: "pP" },
  { names: ["bracket_left"], set1: 0x1a, set2: 0x54, chars: "[{" },
  { names: ["bracket_right"], set1: 0x1b, set2: 0x5b, chars: "]}" },
  { names: ["enter", "ret", "return"], set1: 0x1c, set2: 0x5a, chars: "\n" },
  { names: ["ctrl", "ctrl_l", "control"], set1: 0x1d, set2: 0x14 },
  { names: ["a"], set1: 0x1e, set2: 0x1c, chars: "aA" },
  { names: ["s"], set1: 0x1f, set2: 0x1b, chars: "sS" },
  { names: ["d"], set1: 0x20, set2: 0x23, chars: "dD" },
  { names: ["f"], set1: 0x21, set2: 0x2b, chars: "fF" },
  { names: ["g"], set1: 0x22, set2: 0x34, chars: "gG" },
  { names: ["h"], set1: 0x23, set2: 0x33, chars: "hH" },
  { names: ["j"], set1: 0x24, set2: 0x3b, chars: "jJ" },
  { names: ["k"], set1: 0x25, set2: 0x42, chars: "kK" },
  { names: ["l"], set1: 0x26, set2: 0x4b, chars: "lL" },
  { names: ["semicolon"], set1: 0x27, set2: 0x4c, chars: ";:" },
  { names: ["apostrophe"], set1: 0x28, set2: 0x52, chars: "'\"" },
  { names: ["grave_accent"], set1: 0x29, set2: 0x0e, chars: "`~" },
  { names: ["shift", "shift_l"], set1: 0x2a, set2: 0x12 },
  { names: ["backslash"], set1: 0x2b, set2: 0x5d, chars: "\\|" },
  { names: ["z"], set1: 0x2c, set2: 0x1a, chars: "zZ" },
  { names: ["x"], set1: 0x2d, set2: 0x22, chars: "xX" },
  { names: ["c"], set1: 0x2e, set2: 0x21, chars: "cC" },
  { names: ["v"], set1: 0x2f, set2: 0x2a, chars: "vV" },
  { names: ["b"], set1: 0x30, set2: 0x32, chars: "bB" },
  { names: ["n"], set1: 0x31, set2: 0x31, chars: "nN" },
  { names: ["m"], set1: 0x32, set2: 0x3a, chars: "mM" },
  { names: ["comma"], set1: 0x33, set2: 0x41, chars: ",<" },
  { names: ["dot"], set1: 0x34, set2: 0x49, chars: ".>" },
  { names: ["slash"], set1: 0x35, set2: 0x4a, chars: "/?" },
  { names: ["shift_r"], set1: 0x36, set2: 0x59 },
  { names: ["kp_multiply"], set1: 0x37, set2: 0x7c },
  { names: ["alt", "alt_l"], set1: 0x38, set2: 0x11 },
  { names: ["space", "spc"], set1: 0x39, set2: 0x29, chars: " " },
  { names: ["caps_lock"], set1: 0x3a, set2: 0x58 },
  { names: ["f1"], set1: 0x3b, set2: 0x05 },
  { names: ["f2"], set1: 0x3c, set2: 0x06 },
  { names: ["f3"], set1: 0x3d, set2: 0x04 },
  { names: ["f4"], set1: 0x3e, set2: 0x0c },
  { names: ["f5"], set1: 0x3f, set2: 0x03 },
  { names: ["f6"], set1: 0x40, set2: 0x0b },
  { names: ["f7"], set1: 0x41, set2: 0x83 },
  { names: ["f8"], set1: 0x42, set2: 0x0a },
  { names: ["f9"], set1: 0x43, set2: 0x01 },
  { names: ["f10"], set1: 0x44, set2: 0x09 },
  { names: ["num_lock"], set1: 0x45, set2: 0x77 },
  { names: ["scroll_lock"], set1: 0x46, set2: 0x7e },
  { names: ["kp_7"], set1: 0x47, set2: 0x6c },
  { names: ["kp_8"], set1: 0x48, set2: 0x75 },
  { names: ["kp_9"], set1: 0x49, set2: 0x7d },
  { names: ["kp_subtract"], set1: 0x4a, set2: 0x7b },
  { names: ["kp_4"], set1: 0x4b, set2: 0x6b },
  { names: ["kp_5"], set1: 0x4c, set2: 0x73 },
  { names: ["kp_6"], set1: 0x4d, set2: 0x74 },
  { names: ["kp_add"], set1: 0x4e, set2: 0x79 },
  { names: ["kp_1"], set1: 0x4f, set2: 0x69 },
  { names: ["kp_2"], set1: 0x50, set2: 0x72 },
  { names: ["kp_3"], set1: 0x51, set2: 0x7a },
  { names: ["kp_0"], set1: 0x52, set2: 0x70 },
  { names: ["kp_decimal"], set1: 0x53, set2: 0x71 },
  { names: ["f11"], set1: 0x57, set2: 0x78 },
  { names: ["f12"], set1: 0x58, set2: 0x07 },
  { names: ["kp_enter"], set1: 0xe01c, set2: 0xe05a },
  { names: ["ctrl_r"], set1: 0xe01d, set2: 0xe014 },
  { names: ["kp_divide"], set1: 0xe035, set2: 0xe04a },
  { names: ["print", "sysrq"], set1: 0xe037, set2: 0xe07c },
  { names: ["alt_r", "altgr"], set1: 0xe038, set2: 0xe011 },
  { names: ["home"], set1: 0xe047, set2: 0xe06c },
  { names: ["up"], set1: 0xe048, set2: 0xe075 },
  { names: ["pgup", "page_up"], set1: 0xe049, set2: 0xe07d },
  { names: ["left"], set1: 0xe04b, set2: 0xe06b },
  { names: ["right"], set1: 0xe04d, set2: 0xe074 },
  { names: ["end"], set1: 0xe04f, set2: 0xe069 },
  { names: ["down"], set1: 0xe050, set2: 0xe072 },
  { names: ["pgdn", "page_down"], set1: 0xe051, set2: 0xe07a },
  { names: ["insert", "ins"], set1: 0xe052, set2: 0xe070 },
  { names: ["delete", "del"], set1: 0xe053, set2: 0xe071 },
  { names: ["meta_l", "win", "super"], set1: 0xe05b, set2: 0xe01f },
  { names: ["meta_r"], set1: 0xe05c, set2: 0xe027 },
  { names: ["menu"], set1: 0xe05d, set2: 0xe02f },
];

const BY_NAME = new Map<string, KeyDef>();
const BY_SET1 = new Map<number, KeyDef>();
/** Character → [set-1 code, needs shift]. */
const BY_CHAR = new Map<string, [number, boolean]>();
for (const k of KEYS) {
  for (const n of k.names) BY_NAME.set(n, k);
  BY_SET1.set(k.set1, k);
  if (k.chars) {
    BY_CHAR.set(k.chars[0]!, [k.set1, false]);
    if (k.chars.length > 1) BY_CHAR.set(k.chars[1]!, [k.set1, true]);
  }
}

/** Set-1 code of the left shift key. */
export const SCAN_LEFT_SHIFT = 0x2a;

/** One key transition. */
export interface KeyEvent {
  /** Set-1 make code (0xE0xx for extended keys). */
  readonly scanCode: number;
  /** True for a press, false for a release. */
  readonly down: boolean;
}

/** The set-2 code of a set-1 key (0xE0xx for extended keys), or undefined when unknown. */
export function set2Of(scanCode: number): number | undefined {
  return BY_SET1.get(scanCode)?.set2;
}

/** The set-1 code of a key name (`ctrl`, `delete`, `a`, `f1`…), or undefined. */
export function scanCodeOfName(name: string): number | undefined {
  const n = name.toLowerCase();
  const k = BY_NAME.get(n);
  if (k) return k.set1;
  if (n.length === 1) return BY_CHAR.get(n)?.[0];
  return undefined;
}

/** Thrown by `parseKeyCombos` for a name it does not know. */
export class KeyNameError extends Error {}

/**
 * Parses combos such as `ctrl-alt-delete` or `shift-a b ret` (space-separated combos, `-`
 * between the keys held together) into press/release events: each combo presses its keys in
 * order and releases them in reverse. Throws `KeyNameError` naming the first unknown key.
 */
export function parseKeyCombos(text: string): KeyEvent[] {
  const out: KeyEvent[] = [];
  const combos = text.trim().split(/\s+/).filter((c) => c !== "");
  if (combos.length === 0) throw new KeyNameError("no keys given");
  for (const combo of combos) {
    // A lone "-" names the minus key; otherwise "-" separates the keys of the combo.
    const names = combo === "-" ? ["minus"] : combo.split("-");
    const codes = names.map((n) => {
      const c = scanCodeOfName(n);
      if (c === undefined) {
        throw new KeyNameError(
          `unknown key '${n}' (names such as ctrl, alt, shift, delete, ret, f1, a, 1)`,
        );
      }
      return c;
    });
    for (const c of codes) out.push({ scanCode: c, down: true });
    for (const c of codes.toReversed()) out.push({ scanCode: c, down: false });
  }
  return out;
}

/**
 * Key events that type `text` on a US keyboard (shift where needed). Throws `KeyNameError` for a
 * character no key types.
 */
export function textToKeys(text: string): KeyEvent[] {
  const out: KeyEvent[] = [];
  for (const ch of text) {
    const k = BY_CHAR.get(ch);
    if (!k) {
      throw new KeyNameError(`cannot type ${JSON.stringify(ch)} on a US keyboard`);
    }
    const [code, shift] = k;
    if (shift) out.push({ scanCode: SCAN_LEFT_SHIFT, down: true });
    out.push({ scanCode: code, down: true }, { scanCode: code, down: false });
    if (shift) out.push({ scanCode: SCAN_LEFT_SHIFT, down: false });
  }
  return out;
}

/** X11 keysyms of the keys that type no character. */
const KEYSYMS: ReadonlyMap<number, string> = new Map([
  [0xff08, "backspace"],
  [0xff09, "tab"],
  [0xff0d, "enter"],
  [0xff14, "scroll_lock"],
  [0xff15, "sysrq"],
  [0xff1b, "esc"],
  [0xff50, "home"],
  [0xff51, "left"],
  [0xff52, "up"],
  [0xff53, "right"],
  [0xff54, "down"],
  [0xff55, "pgup"],
  [0xff56, "pgdn"],
  [0xff57, "end"],
  [0xff61, "print"],
  [0xff63, "insert"],
  [0xff67, "menu"],
  [0xff7f, "num_lock"],
  [0xff8d, "kp_enter"],
  [0xffaa, "kp_multiply"],
  [0xffab, "kp_add"],
  [0xffad, "kp_subtract"],
  [0xffae, "kp_decimal"],
  [0xffaf, "kp_divide"],
  [0xffe1, "shift"],
  [0xffe2, "shift_r"],
  [0xffe3, "ctrl"],
  [0xffe4, "ctrl_r"],
  [0xffe5, "caps_lock"],
  [0xffe7, "meta_l"],
  [0xffe8, "meta_r"],
  [0xffe9, "alt"],
  [0xffea, "alt_r"],
  [0xffeb, "meta_l"],
  [0xffec, "meta_r"],
  [0xfe03, "alt_r"], // ISO_Level3_Shift (AltGr)
  [0xffff, "delete"],
]);

/** The set-1 code for an X11 keysym (what RFB KeyEvent carries), or undefined. */
export function keysymToScanCode(keysym: number): number | undefined {
  if (keysym >= 0xffbe && keysym <= 0xffc9) return scanCodeOfName(`f${keysym - 0xffbe + 1}`);
  if (keysym >= 0xffb0 && keysym <= 0xffb9) return scanCodeOfName(`kp_${keysym - 0xffb0}`);
  const name = KEYSYMS.get(keysym);
  if (name) return scanCodeOfName(name);
  // Latin-1 keysyms equal their character codes.
  if (keysym >= 0x20 && keysym <= 0x7e) return BY_CHAR.get(String.fromCharCode(keysym))?.[0];
  return undefined;
}
