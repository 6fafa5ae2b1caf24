/**
 * Synthetic bzImages for tests that need a kernel file that parses without shipping one.
 * @module
 */
import { BOOT_PARAMS, LOADED_HIGH } from "../../../src/machine/boot_params.ts";

/** Header fields a test may set (everything else gets a plausible 64-bit kernel's value). */
export interface FakeImage {
  setupSects?: number;
  version?: number;
  loadflags?: number;
  xloadflags?: number;
  payload?: number;
  syssize?: number;
  relocatable?: number;
  alignment?: number;
  pref?: bigint;
  initSize?: number;
  initrdAddrMax?: number;
  cmdlineSize?: number;
}

/** A synthetic bzImage: setup sectors, a header, and a payload of 0xAB bytes. */
export function fakeImage(o: FakeImage = {}): Uint8Array {
  const sects = o.setupSects ?? 4;
  const payload = o.payload ?? 0x4000;
  const img = new Uint8Array(((sects === 0 ? 4 : sects) + 1) * 512 + payload);
  const P = BOOT_PARAMS;
  img[0x201] = 0x6a;
  P.set(img, 0, "setup_sects", sects);
  P.set(img, 0, "boot_flag", 0xaa55);
  P.set(img, 0, "header", 0x53726448);
  P.set(img, 0, "version", o.version ?? 0x020f);
  P.set(img, 0, "loadflags", o.loadflags ?? LOADED_HIGH);
  P.set(img, 0, "xloadflags", o.xloadflags ?? 0x7f);
  P.set(img, 0, "syssize", o.syssize ?? Math.ceil(payload / 16));
  P.set(img, 0, "relocatable_kernel", o.relocatable ?? 1);
  P.set(img, 0, "kernel_alignment", o.alignment ?? 0x20_0000);
  P.set(img, 0, "pref_address", o.pref ?? 0x100_0000n);
  P.set(img, 0, "init_size", o.initSize ?? 0x80_0000);
  P.set(img, 0, "initrd_addr_max", o.initrdAddrMax ?? 0x7fff_ffff);
  P.set(img, 0, "cmdline_size", o.cmdlineSize ?? 0x7ff);
  P.set(img, 0, "kernel_version", 0x100);
  img.set(new TextEncoder().encode("6.1.0-test (x@y) #1\0"), 0x300);
  img.fill(0xab, img.length - payload);
  return img;
}
