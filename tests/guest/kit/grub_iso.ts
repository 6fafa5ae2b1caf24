/**
 * Hybrid GRUB boot CDs for firmware tests: `grub-mkrescue` makes one ISO that boots under BIOS
 * (El Torito, i386-pc) and UEFI (its EFI system partition image, x86_64-efi), whose `grub.cfg`
 * prints a marker on the serial port and then runs the caller's GRUB commands (default `halt`).
 * The same ISO serves the QEMU/OVMF reference and hyperdeno's own firmware.
 *
 * ```ts
 * const iso = await buildGrubIso({ dir: await Deno.makeTempDir(), marker: "@@grub-iso:up" });
 * // boot iso.path as a CD, wait for the marker on COM1
 * ```
 *
 * Needs Debian's grub-common, grub-pc-bin, grub-efi-amd64-bin, xorriso and mtools
 * (`GRUB_ISO_PACKAGES`); `missingGrubIsoPackages` says which are absent.
 * @module
 */

/** Debian packages `buildGrubIso` needs. */
export const GRUB_ISO_PACKAGES: readonly string[] = [
  "grub-common",
  "grub-pc-bin",
  "grub-efi-amd64-bin",
  "xorriso",
  "mtools",
];

/** What must exist for each of `GRUB_ISO_PACKAGES`, in the same order. */
const PACKAGE_FILES: readonly string[] = [
  "/usr/bin/grub-mkrescue",
  "/usr/lib/grub/i386-pc/cdboot.img",
  "/usr/lib/grub/x86_64-efi/kernel.img",
  "/usr/bin/xorriso",
  "/usr/bin/mformat",
];

/** The packages of `GRUB_ISO_PACKAGES` whose files are absent on this host. */
export function missingGrubIsoPackages(): string[] {
  return GRUB_ISO_PACKAGES.filter((_, i) => {
    try {
      Deno.statSync(PACKAGE_FILES[i]!);
      return false;
    } catch {
      return true;
    }
  });
}

/** What to put on the ISO. */
export interface GrubIsoOptions {
  /** Directory for the ISO and its staging tree (the caller owns and removes it). */
  readonly dir: string;
  /** Printed by GRUB on COM1 (and the firmware console) once its config runs. One line, no
   * quotes or backslashes. */
  readonly marker: string;
  /** GRUB commands after the marker, one per line; default `["halt"]` (powers the VM off). */
  readonly commands?: readonly string[];
}

/** A built ISO. */
export interface GrubIso {
  readonly path: string;
  /** The `grub.cfg` on it. */
  readonly config: string;
  /** Seconds `grub-mkrescue` took. */
  readonly seconds: number;
}

/** The `grub.cfg` that prints `marker` on the serial port and on the firmware console. */
export function grubIsoConfig(marker: string, commands: readonly string[] = ["halt"]): string {
  if (!/^[\x20-\x7e]+$/.test(marker) || /["'\\$]/.test(marker)) {
    throw new Error(`GRUB ISO marker must be printable ASCII without quotes, $ or \\: ${marker}`);
  }
  return [
    "set timeout=0",
    // GRUB's own 8250 driver on COM1 (BIOS and UEFI alike); under UEFI the firmware console
    // (TerminalDxe on COM1) may print the same line again.
    "serial --unit=0 --speed=115200",
    "terminal_output --append serial",
    `echo "${marker}"`,
    ...commands,
    "",
  ].join("\n");
}

/** Builds a hybrid BIOS/UEFI GRUB ISO with `grub-mkrescue`. Throws with the reason. */
export async function buildGrubIso(options: GrubIsoOptions): Promise<GrubIso> {
  const missing = missingGrubIsoPackages();
  if (missing.length > 0) {
    throw new Error(
      `building a GRUB ISO needs ${missing.join(" ")}: apt-get install ${missing.join(" ")}`,
    );
  }
  const config = grubIsoConfig(options.marker, options.commands);
  const tree = `${options.dir}/iso-tree`;
  await Deno.mkdir(`${tree}/boot/grub`, { recursive: true });
  await Deno.writeTextFile(`${tree}/boot/grub/grub.cfg`, config);
  const path = `${options.dir}/grub.iso`;
  const started = performance.now();
  const out = await new Deno.Command("grub-mkrescue", {
    args: [
      // Every installed platform (i386-pc and x86_64-efi: checked above and after); no
      // translations, fonts or themes, which only make the image bigger.
      "--locales=",
      "--fonts=",
      "--themes=",
      "-o",
      path,
      tree,
    ],
    env: { LC_ALL: "C" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) {
    throw new Error(
      `grub-mkrescue failed: ${new TextDecoder().decode(out.stderr).trim().slice(-2000)}`,
    );
  }
  const seconds = (performance.now() - started) / 1000;
  const iso = await Deno.readFile(path);
  assertHybrid(iso);
  return { path, config, seconds };
}

/** Throws unless `iso` has an MBR boot signature (BIOS hybrid) and an EFI El Torito entry. */
function assertHybrid(iso: Uint8Array): void {
  if (iso.length < 0x8800 || iso[510] !== 0x55 || iso[511] !== 0xaa) {
    throw new Error("grub-mkrescue made an ISO without an MBR (no grub-pc-bin?)");
  }
  // The El Torito boot catalog's section header for platform 0xEF (UEFI).
  const view = new DataView(iso.buffer, iso.byteOffset, iso.byteLength);
  const bootRecord = 0x8800; // volume descriptor 17
  if (
    String.fromCharCode(...iso.subarray(bootRecord + 7, bootRecord + 30)) !==
      "EL TORITO SPECIFICATION"
  ) {
    throw new Error("grub-mkrescue made an ISO without an El Torito boot record");
  }
  const catalog = view.getUint32(bootRecord + 0x47, true) * 2048;
  let efi = false;
  for (let at = catalog; at + 32 <= Math.min(iso.length, catalog + 2048); at += 32) {
    const header = iso[at];
    if ((header === 0x90 || header === 0x91) && iso[at + 1] === 0xef) efi = true;
  }
  if (!efi) throw new Error("grub-mkrescue made an ISO without a UEFI boot entry");
}
