/**
 * hyperdeno command line: `boot` a Linux kernel, `doctor` this host's KVM, `--help`, `--version`.
 * Bad input prints one line on stderr and exits 2; a guest power-off exits 0.
 * @module
 */
import { parseArgs } from "node:util";
import { UsageError } from "./src/util/errors.ts";
import {
  hvFeaturesOf,
  parseCpus,
  parseDisplay,
  parseOnCrash,
  parseSeconds,
  parseSerial,
  parseSignedSeconds,
  parseSize,
  parseSyndbg,
  parseVnc,
  parseWeb,
  type VmConfig,
} from "./src/vmm/config.ts";
import { parseDiskSpec } from "./src/devices/storage/backend/disk_spec.ts";
import { parseFirmwareOptions } from "./src/vmm/firmware.ts";
import { parseNetSpec } from "./src/devices/net/tap.ts";
import denoJson from "./deno.json" with { type: "json" };

/** Version printed by `--version`. */
export const VERSION: string = denoJson.version;

const HELP =
  `hyperdeno ${VERSION}: a KVM hypervisor hosted by Deno, with Hyper-V enlightenments and VMBus

Usage:
  hyperdeno boot --kernel PATH [options]   boot a Linux bzImage
  hyperdeno boot --firmware uefi [options] boot UEFI firmware (OVMF) from flash
  hyperdeno create-disk FILE SIZE [--format raw|qcow2]   make a disk image
  hyperdeno doctor                         what this host's /dev/kvm can do
  hyperdeno --help | --version

boot options:
  --kernel PATH          Linux bzImage (64-bit boot protocol 2.12+)   (required without --firmware)
  --firmware KIND        uefi: boot Debian's OVMF instead of a kernel | none     (default: none)
  --firmware-code PATH   UEFI code image          (default: /usr/share/OVMF/OVMF_CODE_4M.fd)
  --efi-vars FILE        this VM's UEFI variable store; created from OVMF_VARS_4M.fd if absent,
                         never shared (default: a fresh store kept only for this run)
  --initrd PATH          initramfs / initrd image
  --cmdline STR          kernel command line        (default: "console=ttyS0 panic=-1")
  --memory SIZE          guest RAM, e.g. 512M, 2G (no unit = MiB)                (default: 512M)
  --cpus N               vCPUs, 1..64                                            (default: 1)
  --serial SPEC          COM1: stdio | file=PATH (appended to) | none             (default: stdio)
  --no-reboot            exit 0 when the guest resets instead of rebooting it
  --hv LIST              Hyper-V enlightenments: all | none | comma list         (default: all)
  --hv-kvm-leaves        also expose KVM's CPUID leaves (at 0x40000100)
  --syndbg SPEC          Hyper-V synthetic debugger bridged to the kernel debugger over UDP:
                         [HOST:]PORT[,hcalls][,allow-remote] (HOST default 127.0.0.1; adds
                         syndbg to --hv all; a HOST outside 127/8 needs allow-remote)
  --on-crash ACTION      guest crash report: poweroff | pause | reset            (default: poweroff)
  --shutdown-timeout S   seconds the guest gets after SIGTERM/SIGINT             (default: 30)
  --disk SPEC            synthetic SCSI disk (repeatable):
                         path=FILE[,readonly=on][,format=raw|qcow2][,serial=STR][,lun=N]
                         [,bus=scsi|sata] (sata: a port of the AHCI controller, 00:03.0)
  --cdrom FILE           read-only ATAPI CD-ROM (an ISO) on the AHCI controller (repeatable)
  --net SPEC             synthetic NIC on an existing tap device (repeatable):
                         tap=NAME[,mac=52:54:00:12:34:56][,queues=N][,mtu=N]
  --rtc-offset S         start the guest's CMOS clock S seconds off the host's   (default: 0)
  --control PATH         JSON-lines control socket: status, shutdown, reboot, kvp-get, kvp-set,
                         channels, disks, screendump, pci, send-keys, type, pointer, input
                         (e.g. echo '{"cmd":"channels"}' | socat - UNIX:PATH); owner-only
                         (0600); an existing file or a live socket at PATH is refused, only a
                         stale socket is replaced
  --display SPEC         none | bochs[,WxH]: a bochs-display PCI device (EDID mode WxH,
                         default 1024x768)                                       (default: none)
  --vnc ADDR             VNC server for the screen, keyboard and mouse: unix:PATH (the --control
                         rule) or IPV4:PORT (e.g. 127.0.0.1:5900; outside 127/8 needs
                         --vnc-password)
  --vnc-password PW      VNC authentication (1-8 bytes; the link is not encrypted)
  --web IPV4:PORT        web console (noVNC in the browser) at the URL printed at start,
                         with a random token; loopback only unless --web-allow-remote
  --web-allow-remote     let --web listen outside 127/8 (plain HTTP, guarded by the token)
  --vsock PATH           hv_sock (AF_VSOCK over VMBus), Firecracker-style: a guest connecting to
                         CID 2 port P reaches the unix socket PATH_P; a host client connecting to
                         PATH and writing "CONNECT P\n" reaches a guest listening on port P
                         (PATH follows the --control rule)
  --log-level LEVEL      error | warning | info | debug                          (default: warning)

Exit status: 0 guest powered off (or reset with --no-reboot), 1 the VM failed (triple fault,
internal error: the vCPU state is printed; or the guest crashed), 2 bad input.
SIGTERM/SIGINT ask the guest to shut down (Hyper-V shutdown IC), forcing power-off after
--shutdown-timeout; a second signal forces it at once.

Examples:
  deno run -A cli.ts boot --kernel /boot/vmlinuz-6.1.0-56-amd64 --initrd init.cpio.gz --cpus 2
  deno run -A cli.ts boot --kernel bzImage --memory 2G --serial file=console.log --no-reboot
  deno run -A cli.ts doctor
`;

/**
 * The order of AHCI drives on the command line (`--disk …,bus=sata` and `--cdrom`): their
 * ports, and so the firmware's boot order, follow it.
 */
function sataOrderOf(args: readonly string[]): ("disk" | "cdrom")[] {
  const out: ("disk" | "cdrom")[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (a === "--") break;
    const [flag, inline] = a.includes("=") && a.startsWith("--")
      ? [a.slice(0, a.indexOf("=")), a.slice(a.indexOf("=") + 1)]
      : [a, undefined];
    if (flag !== "--disk" && flag !== "--cdrom") continue;
    const value = inline ?? args[++i] ?? "";
    if (flag === "--cdrom") out.push("cdrom");
    else if (/(^|,)bus=sata(,|$)/.test(value)) out.push("disk");
  }
  return out;
}

/** Parses `boot` arguments into a VmConfig; throws UsageError on any bad input. */
export function parseBootArgs(args: string[]): VmConfig {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      strict: true,
      allowPositionals: false,
      options: {
        kernel: { type: "string" },
        initrd: { type: "string" },
        cmdline: { type: "string", default: "console=ttyS0 panic=-1" },
        memory: { type: "string", default: "512M" },
        cpus: { type: "string", default: "1" },
        serial: { type: "string", default: "stdio" },
        "no-reboot": { type: "boolean", default: false },
        hv: { type: "string", default: "all" },
        "hv-kvm-leaves": { type: "boolean", default: false },
        syndbg: { type: "string" },
        "on-crash": { type: "string", default: "poweroff" },
        "shutdown-timeout": { type: "string", default: "30" },
        disk: { type: "string", multiple: true, default: [] },
        cdrom: { type: "string", multiple: true, default: [] },
        net: { type: "string", multiple: true, default: [] },
        "rtc-offset": { type: "string", default: "0" },
        control: { type: "string" },
        vnc: { type: "string" },
        "vnc-password": { type: "string" },
        web: { type: "string" },
        "web-allow-remote": { type: "boolean", default: false },
        display: { type: "string", default: "none" },
        vsock: { type: "string" },
        "log-level": { type: "string", default: "warning" },
        firmware: { type: "string" },
        "firmware-code": { type: "string" },
        "efi-vars": { type: "string" },
      },
    });
  } catch (e) {
    throw new UsageError(`boot: ${(e as Error).message}`);
  }
  const v = parsed.values;
  const firmware = parseFirmwareOptions(
    { firmware: v.firmware, firmwareCode: v["firmware-code"], efiVars: v["efi-vars"] },
    v.kernel !== undefined,
  );
  if (!["error", "warning", "info", "debug"].includes(v["log-level"])) {
    throw new UsageError(
      `--log-level: '${v["log-level"]}' is not one of error, warning, info, debug`,
    );
  }
  const config: VmConfig = {
    kernelPath: v.kernel ?? "",
    cmdline: v.cmdline,
    memoryBytes: parseSize(v.memory, "--memory"),
    cpus: parseCpus(v.cpus),
    serial: parseSerial(v.serial),
    noReboot: v["no-reboot"],
    hv: v.hv,
    hvKvmLeaves: v["hv-kvm-leaves"],
    onCrash: parseOnCrash(v["on-crash"]),
    shutdownTimeoutSeconds: parseSeconds(v["shutdown-timeout"], "--shutdown-timeout"),
    disks: v.disk.map((d) => parseDiskSpec(d)),
    cdroms: v.cdrom.map((c) => {
      if (c === "") throw new UsageError("--cdrom needs an ISO file name");
      return c;
    }),
    sataOrder: sataOrderOf(args),
    rtcOffsetSeconds: parseSignedSeconds(v["rtc-offset"], "--rtc-offset"),
    logLevel: v["log-level"],
    display: parseDisplay(v.display),
  };
  if (firmware) config.firmware = firmware;
  if (v.initrd !== undefined) {
    if (firmware) throw new UsageError("--initrd goes with --kernel, not --firmware uefi");
    config.initrdPath = v.initrd;
  }
  if (v.control !== undefined) config.controlPath = v.control;
  if (v.vsock !== undefined) config.vsockPath = v.vsock;
  const vnc = parseVnc(v.vnc, v["vnc-password"]);
  if (vnc) config.vnc = vnc;
  if (v["vnc-password"] !== undefined) config.vncPassword = v["vnc-password"];
  const web = parseWeb(v.web, v["web-allow-remote"]);
  if (web) config.web = web;
  if (v.syndbg !== undefined) config.syndbg = parseSyndbg(v.syndbg);
  if (v.net.length > 0) config.nets = v.net.map((n) => parseNetSpec(n));
  hvFeaturesOf(config); // a bad --hv list (or --syndbg mismatch) fails here, before any file is read
  return config;
}

/** `create-disk FILE SIZE [--format raw|qcow2]`: a sparse raw or minimal qcow2 v3 image. */
async function createDiskCommand(args: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      allowPositionals: true,
      options: {
        format: { type: "string", default: "raw" },
        force: { type: "boolean", default: false },
      },
    });
  } catch (e) {
    throw new UsageError(`create-disk: ${(e as Error).message}`);
  }
  const [file, size, ...extra] = parsed.positionals;
  if (!file || !size || extra.length > 0) {
    throw new UsageError("create-disk: usage: create-disk FILE SIZE [--format raw|qcow2]");
  }
  const format = parsed.values.format;
  if (format !== "raw" && format !== "qcow2") {
    throw new UsageError(`create-disk: --format '${format}' is not raw or qcow2`);
  }
  const { createDisk } = await import("./src/devices/storage/backend/create.ts");
  const bytes = await createDisk(file, size, { format, overwrite: parsed.values.force });
  console.log(`created ${file}: ${format}, ${bytes} bytes`);
  return 0;
}

/** Runs the CLI; returns the process exit status. */
export async function main(args: string[]): Promise<number> {
  const [command, ...rest] = args;
  try {
    switch (command) {
      case undefined:
      case "--help":
      case "-h":
      case "help":
        console.log(HELP);
        return command === undefined ? 2 : 0;
      case "--version":
      case "-V":
        console.log(`hyperdeno ${VERSION} (deno ${Deno.version.deno})`);
        return 0;
      case "boot": {
        if (rest.includes("--help") || rest.includes("-h")) {
          console.log(HELP);
          return 0;
        }
        const config = parseBootArgs(rest);
        const { configureLogging } = await import("./src/vmm/logging.ts");
        await configureLogging(config.logLevel);
        const { runVm } = await import("./src/vmm/vmm.ts");
        return await runVm(config);
      }
      case "create-disk":
        return await createDiskCommand(rest);
      case "doctor": {
        const { doctor } = await import("./src/vmm/doctor.ts");
        return doctor();
      }
      default:
        throw new UsageError(`unknown command '${command}' (try --help)`);
    }
  } catch (e) {
    if (e instanceof UsageError) {
      console.error(`hyperdeno: ${e.message}`);
      return 2;
    }
    throw e;
  }
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
