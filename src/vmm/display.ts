/**
 * The display's host side: the framebuffer memory the VMM owns (a memory slot for the guest)
 * and `screendump`, which writes what the guest shows as a PNG.
 * @module
 */
import { C, libc, mmap } from "../../ffi/libc.ts";
import { type BochsDisplay, screenPixels } from "../devices/display/bochs.ts";
import { encodePng } from "../util/png.ts";

/** Framebuffer size: 16 MiB (2560x1600 at 32 bpp fits, as QEMU's default VRAM). */
export const VRAM_BYTES = 16 << 20;

/** Host memory for the framebuffer; `close()` unmaps it (after every vCPU stopped). */
export interface Framebuffer {
  readonly address: bigint;
  readonly bytes: Uint8Array;
  close(): void;
}

/** Maps `size` bytes of zeroed memory for the framebuffer. */
export function createFramebuffer(size = VRAM_BYTES): Framebuffer {
  const ptr = mmap(
    size,
    C.PROT_READ | C.PROT_WRITE,
    C.MAP_PRIVATE | C.MAP_ANONYMOUS | C.MAP_NORESERVE,
  );
  let open = true;
  return {
    address: BigInt(Deno.UnsafePointer.value(ptr)),
    bytes: new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(ptr, size)),
    close() {
      if (!open) return;
      open = false;
      libc.munmap(ptr, BigInt(size));
    },
  };
}

/**
 * `screendump`: the visible screen to `path` as PNG. Written to a temporary file beside it
 * and renamed, so a failure never leaves a half-written file where `path` was.
 */
export function screendumper(
  display: BochsDisplay,
  vram: Uint8Array,
): (path: string) => Promise<{ width: number; height: number }> {
  return async (path) => {
    const g = display.screen();
    if (typeof g === "string") throw new Error(`screendump: ${g}`);
    const png = encodePng(g.width, g.height, screenPixels(vram, g));
    const tmp = `${path}.${Deno.pid}.tmp`;
    try {
      await Deno.writeFile(tmp, png, { createNew: true });
      await Deno.rename(tmp, path);
    } catch (e) {
      await Deno.remove(tmp).catch(() => {});
      throw new Error(`screendump: cannot write '${path}': ${(e as Error).message}`);
    }
    return { width: g.width, height: g.height };
  };
}
