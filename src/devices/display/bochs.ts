/**
 * bochs-display: a PCI display with a linear framebuffer (BAR0, a KVM memory slot over VRAM the
 * VMM owns, so guest drawing never exits) and the VBE DISPI registers in BAR2 MMIO (QEMU
 * `hw/display/bochs-display.c` for the register behaviour). Linux's `bochs` DRM driver and
 * OVMF's QemuVideoDxe drive it.
 *
 * The registers live in shared state: every vCPU thread answers BAR2 on its own; the main
 * thread reads the mode for `screendump` ({@linkcode BochsDisplay.screen}).
 * @module
 */
import type { BusDevice } from "../../machine/bus.ts";
import { lockAcquire, lockRelease } from "../../util/shared_lock.ts";
import {
  buildEdid,
  DISPI,
  DISPI_ENABLE,
  DISPI_ID0,
  DISPI_ID5,
  DISPI_MAX,
  type EdidMode,
  MMIO,
  QEXT_BIG_ENDIAN,
  QEXT_LITTLE_ENDIAN,
} from "./protocol.ts";

/** What the display is built with. */
export interface BochsDisplayOptions {
  /** Framebuffer size in bytes (a power of two, at least 1 MiB: BAR0's size). */
  readonly vramBytes: number;
  /** The mode the EDID offers as preferred. */
  readonly mode: EdidMode;
}

// Shared layout (Int32 words): lock, 16 DISPI registers, QEXT byte order; then the EDID bytes.
const W_LOCK = 0;
const W_REGS = 1;
const W_ENDIAN = W_REGS + MMIO.DISPI_COUNT;
const WORDS = W_ENDIAN + 1;
const EDID_BYTE = WORDS * 4;

/** The visible screen, as the guest programmed it. */
export interface ScreenGeometry {
  readonly width: number;
  readonly height: number;
  readonly bpp: number;
  /** Bytes from one row to the next. */
  readonly stride: number;
  /** Byte offset of the top-left pixel in VRAM. */
  readonly offset: number;
  /** 32 bpp pixels are stored X,R,G,B (the guest selected big-endian). */
  readonly bigEndian: boolean;
}

/** The display's registers over shared state; `mmio` answers BAR2. */
export class BochsDisplay {
  readonly #w: Int32Array;
  readonly #edid: Uint8Array;
  readonly #vramBytes: number;
  /** BAR2's device (EDID, VGA ports, DISPI, QEMU extension registers). */
  readonly mmio: BusDevice;

  /** Shared state at reset: ID5, VRAM size, the EDID for `options.mode`. */
  static createState(options: BochsDisplayOptions): SharedArrayBuffer {
    const sab = new SharedArrayBuffer(EDID_BYTE + 128);
    const w = new Int32Array(sab, 0, WORDS);
    w[W_REGS + DISPI.ID] = DISPI_ID5;
    w[W_REGS + DISPI.VIDEO_MEMORY_64K] = Math.floor(options.vramBytes / 0x10000);
    w[W_ENDIAN] = QEXT_LITTLE_ENDIAN;
    new Uint8Array(sab, EDID_BYTE, 128).set(buildEdid(options.mode));
    return sab;
  }

  /** This thread's view; `vramBytes` bounds every mode the guest sets. */
  constructor(state: SharedArrayBuffer, options: { vramBytes: number }) {
    this.#w = new Int32Array(state, 0, WORDS);
    this.#edid = new Uint8Array(state, EDID_BYTE, 128);
    this.#vramBytes = options.vramBytes;
    this.mmio = {
      read: (offset, data) => this.#read(offset, data),
      write: (offset, data) => this.#write(offset, data),
    };
  }

  /** A DISPI register as the guest reads it. */
  dispi(index: number): number {
    const w = this.#w;
    if (
      (index === DISPI.XRES || index === DISPI.YRES || index === DISPI.BPP) &&
      w[W_REGS + DISPI.ENABLE]! & DISPI_ENABLE.GETCAPS
    ) {
      return index === DISPI.XRES ? DISPI_MAX.XRES : index === DISPI.YRES ? DISPI_MAX.YRES : 32;
    }
    return index < MMIO.DISPI_COUNT ? w[W_REGS + index]! & 0xffff : 0;
  }

  /**
   * The visible screen, or a reason it cannot be shown (display off, unsupported depth, or a
   * mode that does not fit in VRAM: guest values are never trusted).
   */
  screen(): ScreenGeometry | string {
    const w = this.#w;
    lockAcquire(w, W_LOCK);
    try {
      const r = (i: number) => w[W_REGS + i]! & 0xffff;
      if (!(r(DISPI.ENABLE) & DISPI_ENABLE.ENABLED)) return "the display is off (no mode set)";
      const bpp = r(DISPI.BPP);
      const bytes = bpp === 32 ? 4 : bpp === 24 ? 3 : bpp === 16 || bpp === 15 ? 2 : 0;
      if (!bytes) return `unsupported depth ${bpp} bpp`;
      const width = r(DISPI.XRES);
      const height = r(DISPI.YRES);
      const virtWidth = Math.max(r(DISPI.VIRT_WIDTH), width);
      const stride = virtWidth * bytes;
      const offset = r(DISPI.Y_OFFSET) * stride + r(DISPI.X_OFFSET) * bytes;
      if (!width || !height) return "the mode is empty";
      if (offset + (height - 1) * stride + width * bytes > this.#vramBytes) {
        return `the mode ${width}x${height} at offset ${offset} does not fit in VRAM`;
      }
      return { width, height, bpp, stride, offset, bigEndian: w[W_ENDIAN] === QEXT_BIG_ENDIAN };
    } finally {
      lockRelease(w, W_LOCK);
    }
  }

  #read(offset: number, data: Uint8Array): void {
    for (let i = 0; i < data.length; i++) data[i] = this.#readByte(offset + i);
  }

  #readByte(at: number): number {
    if (at < MMIO.EDID + MMIO.EDID_SIZE) return at < 128 ? this.#edid[at]! : 0;
    if (at >= MMIO.DISPI && at < MMIO.DISPI + 2 * MMIO.DISPI_COUNT) {
      const v = this.dispi((at - MMIO.DISPI) >> 1);
      return (at & 1 ? v >> 8 : v) & 0xff;
    }
    if (at >= MMIO.QEXT && at < MMIO.QEXT + 4) return (MMIO.QEXT_SIZE >>> (8 * (at & 3))) & 0xff;
    if (at >= MMIO.QEXT + 4 && at < MMIO.QEXT + 8) {
      return (this.#w[W_ENDIAN]! >>> (8 * (at & 3))) & 0xff;
    }
    return 0; // VGA ports (status reads 0) and the rest of the BAR
  }

  #write(offset: number, data: Uint8Array): void {
    const w = this.#w;
    lockAcquire(w, W_LOCK);
    try {
      for (let i = 0; i < data.length;) {
        const at = offset + i;
        if (at >= MMIO.DISPI && at < MMIO.DISPI + 2 * MMIO.DISPI_COUNT) {
          // A 16-bit register: the bytes of this access that fall in it, merged with the rest.
          const index = (at - MMIO.DISPI) >> 1;
          const lowAt = MMIO.DISPI + index * 2;
          let v = w[W_REGS + index]! & 0xffff;
          let n = 0;
          while (i + n < data.length && offset + i + n < lowAt + 2) {
            const shift = ((offset + i + n) - lowAt) * 8;
            v = (v & ~(0xff << shift)) | (data[i + n]! << shift);
            n++;
          }
          this.#writeDispi(index, v);
          i += n;
        } else if (at >= MMIO.QEXT + 4 && at < MMIO.QEXT + 8) {
          const shift = 8 * (at & 3);
          w[W_ENDIAN] = (w[W_ENDIAN]! & ~(0xff << shift)) | (data[i]! << shift);
          i++;
        } else i++; // EDID, VGA ports, QEXT size: read-only or ignored
      }
    } finally {
      lockRelease(w, W_LOCK);
    }
  }

  /** Applies a DISPI write. Lock held. */
  #writeDispi(index: number, value: number): void {
    const w = this.#w;
    switch (index) {
      case DISPI.ID:
        if (value >= DISPI_ID0 && value <= DISPI_ID5) w[W_REGS + index] = value;
        return;
      case DISPI.VIDEO_MEMORY_64K:
        return; // read-only
      case DISPI.ENABLE:
        // bochs-display never clears VRAM on a mode set (stdvga does): Linux re-sets the mode
        // while its fbdev shadow is only partly flushed, and a clear would lose the rest.
        w[W_REGS + index] = value &
          (DISPI_ENABLE.ENABLED | DISPI_ENABLE.GETCAPS | DISPI_ENABLE.DAC_8BIT | DISPI_ENABLE.LFB |
            DISPI_ENABLE.NOCLEARMEM);
        return;
      default:
        if (index < MMIO.DISPI_COUNT) w[W_REGS + index] = value & 0xffff;
    }
  }
}

/**
 * The visible screen as RGB bytes (3 per pixel, rows top to bottom) from `vram` laid out as
 * `g` says (32 bpp XRGB little-endian or its big-endian twin, 24 bpp BGR, 16 bpp RGB565,
 * 15 bpp XRGB1555).
 */
export function screenPixels(vram: Uint8Array, g: ScreenGeometry): Uint8Array {
  const out = new Uint8Array(g.width * g.height * 3);
  let o = 0;
  for (let y = 0; y < g.height; y++) {
    let p = g.offset + y * g.stride;
    for (let x = 0; x < g.width; x++) {
      let r: number, gr: number, b: number;
      if (g.bpp === 32) {
        if (g.bigEndian) {
          r = vram[p + 1]!;
          gr = vram[p + 2]!;
          b = vram[p + 3]!;
        } else {
          b = vram[p]!;
          gr = vram[p + 1]!;
          r = vram[p + 2]!;
        }
        p += 4;
      } else if (g.bpp === 24) {
        b = vram[p]!;
        gr = vram[p + 1]!;
        r = vram[p + 2]!;
        p += 3;
      } else {
        const v = vram[p]! | (vram[p + 1]! << 8);
        p += 2;
        if (g.bpp === 16) {
          r = ((v >> 11) & 0x1f) * 255 / 31;
          gr = ((v >> 5) & 0x3f) * 255 / 63;
        } else {
          r = ((v >> 10) & 0x1f) * 255 / 31;
          gr = ((v >> 5) & 0x1f) * 255 / 31;
        }
        b = (v & 0x1f) * 255 / 31;
      }
      out[o++] = r;
      out[o++] = gr;
      out[o++] = b;
    }
  }
  return out;
}
