import assert from "node:assert/strict";
import { parseBootArgs } from "../../../cli.ts";
import { UsageError } from "../../../src/util/errors.ts";
import { DEFAULT_OVMF_CODE, loadFirmware, varsTemplateFor } from "../../../src/vmm/firmware.ts";

const HAVE_OVMF = (() => {
  try {
    return Deno.statSync(DEFAULT_OVMF_CODE).isFile;
  } catch {
    return false;
  }
})();

function usage(f: () => unknown, re: RegExp) {
  assert.throws(f, (e: unknown) => e instanceof UsageError && re.test(e.message));
}

Deno.test("--firmware uefi: defaults to Debian's OVMF, vars template beside the code", () => {
  const c = parseBootArgs(["--firmware", "uefi", "--efi-vars", "vm.vars"]);
  assert.deepEqual(c.firmware, {
    kind: "uefi",
    codePath: "/usr/share/OVMF/OVMF_CODE_4M.fd",
    varsTemplate: "/usr/share/OVMF/OVMF_VARS_4M.fd",
    varsPath: "vm.vars",
  });
  assert.equal(c.kernelPath, "");
  assert.equal(parseBootArgs(["--kernel", "k"]).firmware, undefined);
  assert.equal(varsTemplateFor("/x/OVMF_CODE.fd"), "/x/OVMF_VARS.fd");
  assert.equal(varsTemplateFor("fw/OVMF_CODE_4M.secboot.fd"), "fw/OVMF_VARS_4M.fd");
  assert.equal(varsTemplateFor("/x/mine.fd"), "/x/OVMF_VARS_4M.fd");
});

const BAD: [string[], RegExp][] = [
  [["--firmware", "bios"], /--firmware: 'bios' is not one of uefi, none/],
  [["--kernel", "k", "--firmware", "uefi"], /give one of them/],
  [["--kernel", "k", "--efi-vars", "v"], /--efi-vars needs --firmware uefi/],
  [["--firmware-code", "c"], /--firmware-code needs --firmware uefi/],
  [["--firmware", "uefi", "--initrd", "i"], /--initrd goes with --kernel/],
  [["--firmware", "uefi", "--efi-vars", ""], /need a file name/],
];
for (const [args, re] of BAD) {
  Deno.test(`firmware arguments rejected: ${args.join(" ")}`, () =>
    usage(() => parseBootArgs(args), re));
}

Deno.test("loadFirmware: a missing code image names Debian's ovmf package", () => {
  usage(
    () =>
      loadFirmware({ kind: "uefi", codePath: "/nonexistent/OVMF_CODE_4M.fd", varsTemplate: "/x" }),
    /not found: check --firmware-code, or install Debian's 'ovmf' package/,
  );
  const dir = Deno.makeTempDirSync();
  try {
    const junk = `${dir}/junk.fd`;
    Deno.writeFileSync(junk, new Uint8Array(8192));
    usage(
      () => loadFirmware({ kind: "uefi", codePath: junk, varsTemplate: "/x" }),
      /not a UEFI firmware image/,
    );
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test({
  name: "loadFirmware: Debian's OVMF sits below 4 GiB; SMM builds and foreign vars are refused",
  ignore: !HAVE_OVMF,
}, () => {
  const dir = Deno.makeTempDirSync();
  try {
    const fw = loadFirmware(
      parseBootArgs(["--firmware", "uefi", "--efi-vars", `${dir}/a.vars`]).firmware!,
    );
    assert.deepEqual(fw.layout, {
      varsGpa: 0xffc0_0000,
      varsSize: 0x8_4000,
      codeGpa: 0xffc8_4000,
      codeSize: 0x37_c000,
    });
    // The reset vector (last 16 bytes) holds code: a near jump or a wbinvd/jmp sequence.
    assert.ok(fw.code.subarray(fw.code.length - 16).some((b) => b !== 0 && b !== 0xff));
    fw.varsFile!.close();
    const volatile = loadFirmware(parseBootArgs(["--firmware", "uefi"]).firmware!);
    assert.equal(volatile.varsFile, undefined);
    assert.equal(volatile.vars.length, 0x8_4000);
    usage(
      () =>
        loadFirmware(
          parseBootArgs([
            "--firmware",
            "uefi",
            "--firmware-code",
            "/usr/share/OVMF/OVMF_CODE_4M.ms.fd",
          ])
            .firmware!,
        ),
      /SMM build of OVMF/,
    );
    Deno.writeFileSync(`${dir}/b.vars`, Deno.readFileSync(DEFAULT_OVMF_CODE).subarray(0, 0x8_4000));
    usage(
      () =>
        loadFirmware(
          parseBootArgs(["--firmware", "uefi", "--efi-vars", `${dir}/b.vars`]).firmware!,
        ),
      /b\.vars is not an EFI variable store for this firmware: its firmware volume is not an NV/,
    );
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("a bad --firmware-code is one line on stderr and exit status 2", async () => {
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      "--no-check",
      new URL("../../../cli.ts", import.meta.url).pathname,
      "boot",
      "--firmware",
      "uefi",
      "--firmware-code",
      "/nonexistent/code.fd",
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const err = new TextDecoder().decode(out.stderr).trim();
  assert.equal(out.code, 2);
  assert.equal(err.split("\n").length, 1, err);
  assert.match(err, /^hyperdeno: UEFI firmware \/nonexistent\/code\.fd not found/);
});

Deno.test("--cdrom and SATA disks keep their command-line order (ports, boot order)", async () => {
  const c = parseBootArgs([
    "--firmware",
    "uefi",
    "--disk",
    "scsi.img",
    "--cdrom=a.iso",
    "--disk",
    "path=b.img,bus=sata",
  ]);
  assert.deepEqual(c.cdroms, ["a.iso"]);
  assert.deepEqual(c.sataOrder, ["cdrom", "disk"]);
  const dir = Deno.makeTempDirSync();
  try {
    Deno.writeFileSync(`${dir}/a.iso`, new Uint8Array(2048 * 16));
    Deno.writeFileSync(`${dir}/b.img`, new Uint8Array(1 << 20));
    const { openAhciDrives, ahciBootOrder } = await import("../../../src/vmm/ahci_host.ts");
    const { parseDiskSpec } = await import("../../../src/devices/storage/backend/disk_spec.ts");
    const host = (await openAhciDrives(
      [parseDiskSpec(`path=${dir}/b.img,bus=sata`)],
      [`${dir}/a.iso`],
      c.sataOrder,
    ))!;
    assert.deepEqual(host.drives.map((d) => d.kind), ["cdrom", "disk"]);
    assert.deepEqual(ahciBootOrder(host), [
      "/pci@i0cf8/pci8086,2922@3/drive@0/disk@0",
      "/pci@i0cf8/pci8086,2922@3/drive@1/disk@0",
    ]);
    host.close();
    usage(() => parseBootArgs(["--kernel", "k", "--cdrom", ""]), /--cdrom needs an ISO/);
    await assert.rejects(
      () => openAhciDrives([], [`${dir}/missing.iso`]),
      (e: unknown) =>
        e instanceof UsageError && /--cdrom .*missing\.iso: file not found/.test(e.message),
    );
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});
