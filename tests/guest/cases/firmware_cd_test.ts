/**
 * UEFI boot from a CD (issue: firmware boot): a hybrid GRUB ISO built at test time
 * (`grub-mkrescue`, the Debian kernel and a busybox initramfs that prints what it saw) boots from
 * `--cdrom` through OVMF and the AHCI controller: BdsDxe picks the DVD-ROM, GRUB prints its
 * marker, Linux reports EFI, the SMBIOS identity and our ACPI tables (from the table-loader, with
 * the interpreter enabled), then powers off through ACPI S5 and the VMM exits 0.
 */
import assert from "node:assert/strict";
import { CLI_PATH, guestEnvironment } from "../harness.ts";

const env = guestEnvironment();
const have = (cmd: string) =>
  new Deno.Command("sh", { args: ["-c", `command -v ${cmd}`], stdout: "null" }).outputSync()
    .success;
const tools = ["grub-mkrescue", "xorriso", "busybox", "cpio"].filter((t) => !have(t));
const haveOvmf = (() => {
  try {
    return Deno.statSync("/usr/share/OVMF/OVMF_CODE_4M.fd").isFile;
  } catch {
    return false;
  }
})();

const INIT = `#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs dev /dev 2>/dev/null
echo "HDM-INIT-OK"
[ -d /sys/firmware/efi ] && echo "HDM-EFI-BOOT $(cat /sys/firmware/efi/fw_platform_size)"
dmesg | grep -E 'efi: EFI v|DMI:|ACPI: (FACP|DSDT|APIC|FACS)|ACPI: Interpreter enabled'
echo "HDM-DONE"
poweroff -f
`;

const GRUB_CFG = `serial --unit=0 --speed=115200
terminal_input serial
terminal_output serial
set timeout=0
set default=0
echo "HDM-GRUB-OK platform=\${grub_platform}"
menuentry 'hdm linux' {
  linux /boot/vmlinuz console=ttyS0 quiet panic=-1
  initrd /boot/initrd.gz
}
`;

function newestKernel(): string {
  const k = [...Deno.readDirSync("/boot")].map((e) => e.name).filter((n) =>
    n.startsWith("vmlinuz-")
  ).sort().pop();
  if (!k) throw new Error("no /boot/vmlinuz-*");
  return `/boot/${k}`;
}

async function buildIso(dir: string): Promise<string> {
  await Deno.mkdir(`${dir}/ird/bin`, { recursive: true });
  for (const d of ["proc", "sys", "dev"]) await Deno.mkdir(`${dir}/ird/${d}`);
  await Deno.mkdir(`${dir}/iso/boot/grub`, { recursive: true });
  await Deno.writeTextFile(`${dir}/ird/init`, INIT, { mode: 0o755 });
  await Deno.writeTextFile(`${dir}/iso/boot/grub/grub.cfg`, GRUB_CFG);
  await Deno.copyFile(newestKernel(), `${dir}/iso/boot/vmlinuz`);
  const script = `set -e
cp "$(command -v busybox)" ird/bin/busybox
(cd ird && find . | cpio -o -H newc --quiet | gzip -1) > iso/boot/initrd.gz
grub-mkrescue -o cd.iso iso -- -volid HDMTEST >/dev/null 2>&1`;
  const r = await new Deno.Command("sh", { args: ["-c", script], cwd: dir }).output();
  if (!r.success) throw new Error(`building the ISO failed: ${new TextDecoder().decode(r.stderr)}`);
  return `${dir}/cd.iso`;
}

Deno.test({
  name: "UEFI: OVMF boots a GRUB ISO from --cdrom (AHCI); Linux sees EFI, SMBIOS and our ACPI",
  ignore: !env.ok || !haveOvmf || tools.length > 0,
}, async () => {
  const dir = await Deno.makeTempDir({ prefix: "hyperdeno-fwcd-" });
  try {
    const iso = await buildIso(dir);
    const t0 = performance.now();
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        CLI_PATH,
        "boot",
        "--firmware",
        "uefi",
        "--efi-vars",
        `${dir}/vm.vars`,
        "--cdrom",
        iso,
        "--hv",
        "none",
        "--memory",
        "512M",
        "--no-reboot",
      ],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const timer = setTimeout(() => child.kill("SIGKILL"), 600_000);
    const out = await child.output();
    clearTimeout(timer);
    // deno-lint-ignore no-control-regex
    const text = new TextDecoder().decode(out.stdout).replace(/\x1b\[[0-9;?=]*[A-Za-z]/g, "");
    const ctx = `\n--- console ---\n${text.slice(-4000)}\n--- stderr ---\n${
      new TextDecoder().decode(out.stderr).slice(-2000)
    }`;
    console.log(`firmware start to power-off: ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    assert.match(text, /BdsDxe: loading Boot[0-9A-F]{4} "UEFI hyperdeno DVD-ROM/, ctx);
    assert.match(text, /HDM-GRUB-OK platform=efi/, ctx);
    assert.match(text, /efi: EFI v2\.70 by EDK II/, ctx);
    assert.match(text, /HDM-EFI-BOOT 64/, ctx);
    assert.match(text, /DMI: hyperdeno hyperdeno PC \(i440FX \+ PIIX\)/, ctx);
    for (const t of ["FACP", "DSDT", "APIC"]) {
      assert.match(text, new RegExp(`ACPI: ${t} 0x[0-9A-F]+ [0-9A-F]+ \\(v0\\d HYPDNO`), ctx);
    }
    assert.match(text, /ACPI: Interpreter enabled/, ctx);
    assert.match(text, /HDM-DONE/, ctx);
    assert.equal(out.code, 0, `ACPI power-off ends the VMM with 0${ctx}`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
