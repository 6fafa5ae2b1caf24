/**
 * Firmware reference (issue: firmware guests in the test machine): Debian's QEMU with KVM, on the
 * i440FX board hyperdeno's firmware route targets, boots Debian's OVMF (`OVMF_CODE_4M.fd` as
 * pflash + a per-VM copy of `OVMF_VARS_4M.fd`) from a hybrid GRUB ISO made at test time, once
 * from an AHCI CD and once from the board's PIIX IDE CD. OVMF must reach its boot manager
 * (`BdsDxe: loading Boot…`), GRUB must print this run's marker on COM1, and GRUB's `halt` must
 * power the VM off. In the nested test machine this is also the proof that the outer QEMU
 * survives firmware guests (Debian's stock one aborts ~30 s in).
 */
import assert from "node:assert/strict";
import { guestEnvironment } from "../harness.ts";
import { buildGrubIso, missingGrubIsoPackages } from "../kit/grub_iso.ts";
import { which } from "../machine/detect.ts";

const OVMF_CODE = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS = "/usr/share/OVMF/OVMF_VARS_4M.fd";
const BOOT_MANAGER = "BdsDxe: loading Boot";
const ESC = String.fromCharCode(0x1b);
/** Nested, OVMF reaches its boot manager in ~45 s; a stuck boot is cut off here. */
const TIMEOUT_MS = 360_000;

const env = guestEnvironment();
const qemu = which("qemu-system-x86_64");
const ignoreWhy = !env.ok ? env.reason : qemu === undefined ? "qemu-system-x86 missing" : undefined;
if (ignoreWhy !== undefined) console.warn(`OVMF reference tests ignored: ${ignoreWhy}`);

/** Where the CD sits. */
type CdBus = "ahci" | "ide";

function cdArgs(bus: CdBus, iso: string): string[] {
  const drive = `if=none,id=cd,media=cdrom,readonly=on,format=raw,file=${
    iso.replaceAll(",", ",,")
  }`;
  return bus === "ahci"
    ? ["-device", "ahci,id=ahci", "-drive", drive, "-device", "ide-cd,bus=ahci.0,drive=cd"]
    : ["-drive", drive, "-device", "ide-cd,bus=ide.1,unit=0,drive=cd"];
}

interface OvmfBoot {
  readonly serial: string;
  readonly code: number | null;
  readonly timedOut: boolean;
  /** Seconds from QEMU's spawn to each event, when it happened. */
  readonly bootManagerAt: number | undefined;
  readonly markerAt: number | undefined;
  readonly seconds: number;
  readonly stderr: string;
}

async function bootOvmf(bus: CdBus): Promise<OvmfBoot> {
  const missing = missingGrubIsoPackages();
  const missingFirmware = [OVMF_CODE, OVMF_VARS].some((f) => !exists(f));
  if (missing.length > 0 || missingFirmware) {
    const pkgs = [...missing, ...(missingFirmware ? ["ovmf"] : [])].join(" ");
    throw new Error(`the OVMF reference test needs ${pkgs}: apt-get install ${pkgs}`);
  }
  const dir = await Deno.makeTempDir({ prefix: "hd-ovmf-" });
  try {
    const marker = `@@grub-iso:marker-${crypto.randomUUID().slice(0, 8)}`;
    const iso = await buildGrubIso({ dir, marker });
    const vars = `${dir}/OVMF_VARS_4M.fd`;
    await Deno.copyFile(OVMF_VARS, vars);
    const child = new Deno.Command(qemu!, {
      args: [
        ...["-accel", "kvm", "-M", "pc", "-cpu", "host", "-m", "512M", "-smp", "1"],
        ...["-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio"],
        "-no-reboot",
        ...["-drive", `if=pflash,format=raw,unit=0,readonly=on,file=${OVMF_CODE}`],
        ...["-drive", `if=pflash,format=raw,unit=1,file=${vars}`],
        ...cdArgs(bus, iso.path),
      ],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const started = performance.now();
    const at = () => (performance.now() - started) / 1000;
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill("SIGKILL");
    }, TIMEOUT_MS);
    const stderr = new Response(child.stderr).text();
    let serial = "";
    let bootManagerAt: number | undefined;
    let markerAt: number | undefined;
    for await (const s of child.stdout.pipeThrough(new TextDecoderStream())) {
      serial += s;
      if (bootManagerAt === undefined && serial.includes(BOOT_MANAGER)) bootManagerAt = at();
      if (markerAt === undefined && serial.includes(marker)) markerAt = at();
    }
    const status = await child.status;
    clearTimeout(timer);
    const boot = {
      serial,
      code: status.code,
      timedOut,
      bootManagerAt,
      markerAt,
      seconds: at(),
      stderr: await stderr,
    };
    // OVMF and GRUB draw with ANSI escapes; keep the text readable in a failure message.
    const tail = boot.serial.replaceAll(ESC, "^[").slice(-1500);
    const why = `serial tail:\n${tail}\nQEMU stderr: ${boot.stderr.trim()}`;
    assert.ok(!boot.timedOut, `no power-off within ${TIMEOUT_MS / 1000} s; ${why}`);
    assert.ok(boot.bootManagerAt !== undefined, `OVMF never printed "${BOOT_MANAGER}"; ${why}`);
    assert.ok(boot.markerAt !== undefined, `GRUB never printed ${marker}; ${why}`);
    assert.ok(boot.markerAt >= boot.bootManagerAt, "marker before the boot manager");
    assert.equal(boot.code, 0, `QEMU exit ${boot.code} after GRUB's halt; ${why}`);
    console.log(
      `OVMF (${bus} CD): boot manager at ${boot.bootManagerAt.toFixed(1)} s, GRUB marker at ` +
        `${boot.markerAt.toFixed(1)} s, powered off at ${boot.seconds.toFixed(1)} s ` +
        `(ISO built in ${iso.seconds.toFixed(1)} s)`,
    );
    return boot;
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

for (const bus of ["ahci", "ide"] as const) {
  Deno.test({
    name: `ovmf: QEMU/KVM boots Debian's OVMF to a GRUB ISO's serial marker (${bus} CD)`,
    ignore: ignoreWhy !== undefined,
    sanitizeResources: false,
    fn: async () => {
      await bootOvmf(bus);
    },
  });
}
