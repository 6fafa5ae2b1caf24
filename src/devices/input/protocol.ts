/**
 * Wire formats of the two synthetic input devices: the keyboard (Linux `hyperv_keyboard`,
 * `drivers/input/serio/hyperv-keyboard.c`) and the HID mouse (Linux `hid_hyperv`,
 * `drivers/hid/hid-hyperv.c`). Layouts and constants only, no I/O; sizes are pinned by
 * `tests/unit/devices/input/protocol_test.ts`.
 *
 * The keyboard sends raw in-band packets that start with a u32 message type. The mouse wraps
 * every message in a pipe header `{u32 type = DATA, u32 size}` and then a synthhid header
 * `{u32 type, u32 size}`, all packed. Both drivers ignore completion packets: every answer is
 * in-band.
 * @module
 */
import { defineLayout } from "../../util/layout.ts";

/** VMBus class id of the synthetic keyboard (`HV_KBD_GUID`). */
export const KEYBOARD_CLASS_ID = "f912ad6d-2b17-48ea-bd65-f927a61c7684";
/** Instance id Hyper-V gives the keyboard (Windows binds by it). */
export const KEYBOARD_INSTANCE_ID = "d34b2567-b9b6-42b9-8778-0a4ec0b955bf";
/** VMBus class id of the synthetic mouse (`HV_MOUSE_GUID`). */
export const MOUSE_CLASS_ID = "cfa8b69e-5b4a-4cc0-b98b-8ba1a1f3f95a";
/** Instance id Hyper-V gives the mouse. */
export const MOUSE_INSTANCE_ID = "58f75a6d-d949-4320-99e1-a2a2576d581c";

// ---- keyboard ----------------------------------------------------------------------------------

/** Keyboard protocol version 1.0 (`major << 16 | minor`), the only one. */
export const SYNTH_KBD_VERSION = 0x0001_0000;

/** Keyboard message types (an open enum: unknown values are ordinary numbers). */
export const KbdMessageType = {
  PROTOCOL_REQUEST: 1,
  PROTOCOL_RESPONSE: 2,
  EVENT: 3,
  LED_INDICATORS: 4,
} as const;

/** `proto_status` bit: the version is accepted. */
export const KBD_PROTOCOL_ACCEPTED = 1;

/** Keystroke `info` bits. */
export const KbdInfo = {
  IS_UNICODE: 1,
  IS_BREAK: 2,
  IS_E0: 4,
  IS_E1: 8,
} as const;

/** `synth_kbd_protocol_request` (guest → host). */
export const KbdProtocolRequest = defineLayout("synth_kbd_protocol_request", 8, {
  type: { offset: 0, type: "u32" },
  version: { offset: 4, type: "u32" },
});

/** `synth_kbd_protocol_response` (host → guest). */
export const KbdProtocolResponse = defineLayout("synth_kbd_protocol_response", 8, {
  type: { offset: 0, type: "u32" },
  status: { offset: 4, type: "u32" },
});

/** `synth_kbd_keystroke` (host → guest): a set-1 make code and its flags. */
export const KbdKeystroke = defineLayout("synth_kbd_keystroke", 12, {
  type: { offset: 0, type: "u32" },
  makeCode: { offset: 4, type: "u16" },
  reserved: { offset: 6, type: "u16" },
  info: { offset: 8, type: "u32" },
});

/** `synth_kbd_led_indicators` (guest → host, Windows): the LED state. */
export const KbdLedIndicators = defineLayout("synth_kbd_led_indicators", 8, {
  type: { offset: 0, type: "u32" },
  flags: { offset: 4, type: "u32" },
});

// ---- mouse (synthetic HID) ----------------------------------------------------------------------

/** synthhid version 2.0 (`major << 16 | minor`), what Linux 6.1 asks for. */
export const SYNTHHID_VERSION = 0x0002_0000;

/** Pipe message type of every synthhid packet. */
export const PIPE_MESSAGE_DATA = 1;

/** synthhid message types (open enum). */
export const HidMessageType = {
  PROTOCOL_REQUEST: 0,
  PROTOCOL_RESPONSE: 1,
  INITIAL_DEVICE_INFO: 2,
  INITIAL_DEVICE_INFO_ACK: 3,
  INPUT_REPORT: 4,
} as const;

/** Pipe header then synthhid header: 16 bytes in front of every message body. */
export const HidHeader = defineLayout("pipe_prt_msg+synthhid_msg_hdr", 16, {
  pipeType: { offset: 0, type: "u32" },
  /** Bytes after the pipe header (synthhid header + body). */
  pipeSize: { offset: 4, type: "u32" },
  type: { offset: 8, type: "u32" },
  /** Bytes of the body. */
  size: { offset: 12, type: "u32" },
});

/** Offset of the synthhid body in a packet. */
export const HID_BODY_OFFSET = HidHeader.size;

/** `synthhid_protocol_response` body: version and an approval byte (pipe size must be 13). */
export const HidProtocolResponseBody = defineLayout("synthhid_protocol_response body", 5, {
  version: { offset: 0, type: "u32" },
  approved: { offset: 4, type: "u8" },
});

/**
 * `hv_input_dev_info` + `hid_descriptor` (the body of INITIAL_DEVICE_INFO, before the report
 * descriptor). Linux wants vendor 0x045E product 0x0621 to bind hid-hyperv's own HID driver.
 */
export const HidDeviceInfoBody = defineLayout("synthhid_device_info body", 41, {
  infoSize: { offset: 0, type: "u32" },
  vendor: { offset: 4, type: "u16" },
  product: { offset: 6, type: "u16" },
  version: { offset: 8, type: "u16" },
  // reserved[11] u16 at 10..32
  bLength: { offset: 32, type: "u8" },
  bDescriptorType: { offset: 33, type: "u8" },
  bcdHid: { offset: 34, type: "u16" },
  bCountryCode: { offset: 36, type: "u8" },
  bNumDescriptors: { offset: 37, type: "u8" },
  reportDescriptorType: { offset: 38, type: "u8" },
  reportDescriptorLength: { offset: 39, type: "u16" },
});

/** `hv_input_dev_info.size`. */
export const HV_INPUT_DEV_INFO_SIZE = 32;
/** `hid_descriptor.bLength` (one report descriptor entry). */
export const HID_DESCRIPTOR_LENGTH = 9;
/** USB HID descriptor types. */
export const HID_DT_HID = 0x21;
/** USB HID report descriptor type. */
export const HID_DT_REPORT = 0x22;
/** Vendor and product Hyper-V reports (Linux's hid-hyperv matches them). */
export const MOUSE_VENDOR = 0x045e;
/** Product id of the Hyper-V mouse. */
export const MOUSE_PRODUCT = 0x0621;

/** Largest coordinate of the absolute axes (logical maximum in the report descriptor). */
export const MOUSE_AXIS_MAX = 0x7fff;

/**
 * The report descriptor: an absolute pointer with 5 buttons (3 padding bits), X and Y 16-bit
 * 0..32767, and a 16-bit relative wheel. Written here from the HID usage tables. Byte 14 is a
 * Usage Maximum (0x29), so Linux's SA-167 fix-up (0x25 → 0x29 at byte 14) changes nothing.
 */
export const MOUSE_REPORT_DESCRIPTOR: Uint8Array = new Uint8Array([
  0x05,
  0x01, // Usage Page (Generic Desktop)
  0x09,
  0x02, // Usage (Mouse)
  0xa1,
  0x01, // Collection (Application)
  0x09,
  0x01, //   Usage (Pointer)
  0xa1,
  0x00, //   Collection (Physical)
  0x05,
  0x09, //     Usage Page (Button)
  0x19,
  0x01, //     Usage Minimum (1)
  0x29,
  0x05, //     Usage Maximum (5)
  0x15,
  0x00, //     Logical Minimum (0)
  0x25,
  0x01, //     Logical Maximum (1)
  0x95,
  0x05, //     Report Count (5)
  0x75,
  0x01, //     Report Size (1)
  0x81,
  0x02, //     Input (Data, Variable, Absolute)
  0x95,
  0x01, //     Report Count (1)
  0x75,
  0x03, //     Report Size (3)
  0x81,
  0x01, //     Input (Constant)
  0x05,
  0x01, //     Usage Page (Generic Desktop)
  0x09,
  0x30, //     Usage (X)
  0x09,
  0x31, //     Usage (Y)
  0x15,
  0x00, //     Logical Minimum (0)
  0x26,
  0xff,
  0x7f, // Logical Maximum (32767)
  0x75,
  0x10, //     Report Size (16)
  0x95,
  0x02, //     Report Count (2)
  0x81,
  0x02, //     Input (Data, Variable, Absolute)
  0x09,
  0x38, //     Usage (Wheel)
  0x16,
  0x01,
  0x80, // Logical Minimum (-32767)
  0x26,
  0xff,
  0x7f, // Logical Maximum (32767)
  0x75,
  0x10, //     Report Size (16)
  0x95,
  0x01, //     Report Count (1)
  0x81,
  0x06, //     Input (Data, Variable, Relative)
  0xc0, //         End Collection
  0xc0, //       End Collection
]);

/** One input report: buttons, X, Y, wheel (matches `MOUSE_REPORT_DESCRIPTOR`). */
export const MouseReport = defineLayout("mouse input report", 7, {
  buttons: { offset: 0, type: "u8" },
  x: { offset: 1, type: "u16" },
  y: { offset: 3, type: "u16" },
  wheel: { offset: 5, type: "u16" },
});

/** Mouse button bits in `MouseReport.buttons`. */
export const MouseButton = {
  LEFT: 1,
  RIGHT: 2,
  MIDDLE: 4,
  SIDE: 8,
  EXTRA: 16,
} as const;
