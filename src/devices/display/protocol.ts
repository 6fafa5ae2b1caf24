/**
 * The bochs-display register interface (QEMU `hw/display/bochs-display.c`, Linux
 * `drivers/gpu/drm/tiny/bochs.c`) and the EDID block it serves: constants and the EDID encoder,
 * no I/O.
 *
 * BAR2 (MMIO, 4 KiB): EDID at 0x000-0x3FF, VGA ports 0x3C0-0x3DF at 0x400-0x41F, the VBE DISPI
 * registers (16-bit, index i at 0x500 + 2i), QEMU extension registers at 0x600 (size, then the
 * framebuffer byte order at 0x604). BAR0 is the linear framebuffer.
 * @module
 */

/** PCI identity: QEMU's "stdvga"/bochs vendor and device, class display/other. */
export const BOCHS_PCI = {
  vendor: 0x1234,
  device: 0x1111,
  classCode: 0x038000,
  revision: 2, // revision >= 2: QEMU extension registers present
  subsystemVendor: 0x1af4,
  subsystem: 0x1100,
} as const;

/** BAR2 layout. */
export const MMIO = {
  SIZE: 0x1000,
  EDID: 0x000,
  EDID_SIZE: 0x400,
  VGA: 0x400,
  VGA_SIZE: 0x20,
  DISPI: 0x500,
  DISPI_COUNT: 0x10,
  QEXT: 0x600,
  QEXT_SIZE: 8,
} as const;

/** DISPI register indices. */
export const DISPI = {
  ID: 0x0,
  XRES: 0x1,
  YRES: 0x2,
  BPP: 0x3,
  ENABLE: 0x4,
  BANK: 0x5,
  VIRT_WIDTH: 0x6,
  VIRT_HEIGHT: 0x7,
  X_OFFSET: 0x8,
  Y_OFFSET: 0x9,
  VIDEO_MEMORY_64K: 0xa,
} as const;

/** DISPI ID values a guest may select; reads return the selected one. */
export const DISPI_ID0 = 0xb0c0;
/** The newest interface revision (the reset value of the ID register). */
export const DISPI_ID5 = 0xb0c5;

/** ENABLE register bits. */
export const DISPI_ENABLE = {
  ENABLED: 0x01,
  GETCAPS: 0x02,
  DAC_8BIT: 0x20,
  LFB: 0x40,
  NOCLEARMEM: 0x80,
} as const;

/** Largest mode the device accepts. */
export const DISPI_MAX = { XRES: 2560, YRES: 1600, BPP: 32 } as const;

/** Framebuffer byte-order values of the QEXT register at 0x604. */
export const QEXT_LITTLE_ENDIAN = 0x1e1e1e1e;
/** Big-endian framebuffer (DRM_FORMAT_BGRX8888). */
export const QEXT_BIG_ENDIAN = 0xbebebebe;

/** A display mode for the EDID's preferred (first detailed) timing. */
export interface EdidMode {
  readonly width: number;
  readonly height: number;
  /** Refresh in Hz (the timing uses a reduced-blanking-like fixed porch). */
  readonly refreshHz?: number;
}

/** sRGB chromaticity coordinates in the EDID's 10-byte packing (red, green, blue, white). */
const SRGB_CHROMA = [0xee, 0x91, 0xa3, 0x54, 0x4c, 0x99, 0x26, 0x0f, 0x50, 0x54];

/**
 * A 128-byte EDID 1.4 block whose preferred timing is `mode`: digital input, no established or
 * standard timings, a detailed timing, the monitor name, checksum. Throws `RangeError` for a
 * mode the detailed timing descriptor cannot express (12-bit sizes).
 */
export function buildEdid(mode: EdidMode, name = "hyperdeno"): Uint8Array {
  const { width, height } = mode;
  if (!(width >= 64 && width < 4096 && height >= 64 && height < 4096)) {
    throw new RangeError(`EDID mode ${width}x${height} is outside 64..4095 pixels`);
  }
  const e = new Uint8Array(128);
  e.set([0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00], 0);
  // Manufacturer "HDN" (5-bit letters, A = 1), product 1, serial 0, week 1 of 2026.
  const letters = [..."HDN"].map((c) => c.charCodeAt(0) - 64);
  const mfg = (letters[0]! << 10) | (letters[1]! << 5) | letters[2]!;
  e[8] = mfg >> 8;
  e[9] = mfg & 0xff;
  e[10] = 1;
  e[16] = 1;
  e[17] = 2026 - 1990;
  e[18] = 1; // EDID 1.4
  e[19] = 4;
  e[20] = 0x80; // digital input
  e[21] = Math.max(1, Math.round(width * 0.0265)); // ~96 dpi, in cm
  e[22] = Math.max(1, Math.round(height * 0.0265));
  e[23] = 120; // gamma 2.2
  e[24] = 0x06; // RGB 4:4:4, sRGB, preferred timing is native
  e.set(SRGB_CHROMA, 25);
  for (let i = 38; i < 54; i++) e[i] = 0x01; // standard timings unused
  e.set(detailedTiming(width, height, mode.refreshHz ?? 60), 54);
  e.set(textDescriptor(0xfc, name), 72);
  e.set(textDescriptor(0x10, ""), 90); // dummy
  e.set(textDescriptor(0x10, ""), 108);
  e[126] = 0; // no extensions
  let sum = 0;
  for (let i = 0; i < 127; i++) sum += e[i]!;
  e[127] = (256 - (sum & 0xff)) & 0xff;
  return e;
}

function detailedTiming(w: number, h: number, hz: number): Uint8Array {
  const hBlank = 160;
  const vBlank = Math.max(23, Math.ceil(h * 0.04));
  const hSyncOff = 48;
  const hSyncWidth = 32;
  const vSyncOff = 3;
  const vSyncWidth = 6;
  const clock10k = Math.round(((w + hBlank) * (h + vBlank) * hz) / 10_000);
  const d = new Uint8Array(18);
  d[0] = clock10k & 0xff;
  d[1] = clock10k >> 8;
  d[2] = w & 0xff;
  d[3] = hBlank & 0xff;
  d[4] = ((w >> 8) << 4) | (hBlank >> 8);
  d[5] = h & 0xff;
  d[6] = vBlank & 0xff;
  d[7] = ((h >> 8) << 4) | (vBlank >> 8);
  d[8] = hSyncOff & 0xff;
  d[9] = hSyncWidth & 0xff;
  d[10] = ((vSyncOff & 0xf) << 4) | (vSyncWidth & 0xf);
  d[11] = ((hSyncOff >> 8) << 6) | ((hSyncWidth >> 8) << 4) | ((vSyncOff >> 4) << 2) |
    (vSyncWidth >> 4);
  const wmm = Math.round(w * 0.265);
  const hmm = Math.round(h * 0.265);
  d[12] = wmm & 0xff;
  d[13] = hmm & 0xff;
  d[14] = ((wmm >> 8) << 4) | (hmm >> 8);
  d[17] = 0x1e; // digital separate sync, +hsync +vsync
  return d;
}

function textDescriptor(tag: number, text: string): Uint8Array {
  const d = new Uint8Array(18);
  d[3] = tag;
  const body = new Uint8Array(13).fill(0x20);
  const bytes = new TextEncoder().encode(text.slice(0, 12));
  body.set(bytes);
  if (bytes.length < 13) body[bytes.length] = 0x0a;
  if (tag === 0x10) body.fill(0);
  d.set(body, 5);
  return d;
}
