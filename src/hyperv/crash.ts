/**
 * Guest crash reports from the crash MSRs (CRASH_P0-P4 and CRASH_CTL).
 *
 * Windows writes its bugcheck: P0 = bugcheck code, P1-P4 = the four parameters. Linux
 * (`hyperv_report_panic`) writes P0 = error, P1 = guest OS id, P2 = RIP, P3 = RAX, P4 = RSP; when
 * the hypervisor advertises CRASH_NOTIFY_MSG in CRASH_CTL it instead dumps the kernel log tail
 * into a page and writes P3 = GPA, P4 = length with CRASH_CTL = NOTIFY | NOTIFY_MSG
 * (drivers/hv/hv_common.c `hv_kmsg_dump`). The message is guest memory: its length is bounded,
 * its bytes are checked against RAM and filtered to printable text.
 * @module
 */
import type { GuestMemory } from "../kvm/guest_memory.ts";
import * as T from "./tlfs.ts";

/** Longest crash message read from guest memory. */
export const CRASH_MESSAGE_MAX = 4096;

/** Guest OS family, from HV_X64_MSR_GUEST_OS_ID. */
export type GuestOsKind = "windows" | "linux" | "freebsd" | "other" | "unknown";

/** What a crashing guest reported. */
export interface GuestCrashReport {
  /** VP that wrote CRASH_CTL. */
  readonly vp: number;
  /** Raw HV_X64_MSR_GUEST_OS_ID. */
  readonly guestOsId: bigint;
  /** Family decoded from the guest OS id. */
  readonly os: GuestOsKind;
  /** CRASH_P0..CRASH_P4 as written. */
  readonly params: readonly [bigint, bigint, bigint, bigint, bigint];
  /** The CRASH_CTL value written. */
  readonly control: bigint;
  /** Windows bugcheck (P0 code, P1-P4 arguments) when the guest is Windows. */
  readonly bugcheck?: {
    readonly code: number;
    readonly name?: string;
    readonly args: readonly [bigint, bigint, bigint, bigint];
  };
  /** Panic text read from guest memory (CRASH_NOTIFY_MSG), printable characters only. */
  readonly message?: string;
  /** One line for the host log: "Windows bugcheck 0x0000007B INACCESSIBLE_BOOT_DEVICE (…)". */
  readonly summary: string;
}

/** Receives crash reports; called on the vCPU thread that wrote CRASH_CTL. */
export type CrashSink = (report: GuestCrashReport) => void;

/** Names of common Windows bugcheck codes. */
export const BUGCHECK_NAMES: ReadonlyMap<number, string> = new Map([
  [0x0a, "IRQL_NOT_LESS_OR_EQUAL"],
  [0x19, "BAD_POOL_HEADER"],
  [0x1a, "MEMORY_MANAGEMENT"],
  [0x1e, "KMODE_EXCEPTION_NOT_HANDLED"],
  [0x24, "NTFS_FILE_SYSTEM"],
  [0x3b, "SYSTEM_SERVICE_EXCEPTION"],
  [0x3d, "INTERRUPT_EXCEPTION_NOT_HANDLED"],
  [0x3e, "MULTIPROCESSOR_CONFIGURATION_NOT_SUPPORTED"],
  [0x50, "PAGE_FAULT_IN_NONPAGED_AREA"],
  [0x5c, "HAL_INITIALIZATION_FAILED"],
  [0x5d, "UNSUPPORTED_PROCESSOR"],
  [0x77, "KERNEL_STACK_INPAGE_ERROR"],
  [0x7a, "KERNEL_DATA_INPAGE_ERROR"],
  [0x7b, "INACCESSIBLE_BOOT_DEVICE"],
  [0x7e, "SYSTEM_THREAD_EXCEPTION_NOT_HANDLED"],
  [0x7f, "UNEXPECTED_KERNEL_MODE_TRAP"],
  [0x8e, "KERNEL_MODE_EXCEPTION_NOT_HANDLED"],
  [0x9c, "MACHINE_CHECK_EXCEPTION"],
  [0x9f, "DRIVER_POWER_STATE_FAILURE"],
  [0xa5, "ACPI_BIOS_ERROR"],
  [0xc2, "BAD_POOL_CALLER"],
  [0xc5, "DRIVER_CORRUPTED_EXPOOL"],
  [0xd1, "DRIVER_IRQL_NOT_LESS_OR_EQUAL"],
  [0xe2, "MANUALLY_INITIATED_CRASH"],
  [0xed, "UNMOUNTABLE_BOOT_VOLUME"],
  [0xef, "CRITICAL_PROCESS_DIED"],
  [0xf4, "CRITICAL_OBJECT_TERMINATION"],
  [0x101, "CLOCK_WATCHDOG_TIMEOUT"],
  [0x109, "CRITICAL_STRUCTURE_CORRUPTION"],
  [0x116, "VIDEO_TDR_FAILURE"],
  [0x124, "WHEA_UNCORRECTABLE_ERROR"],
  [0x133, "DPC_WATCHDOG_VIOLATION"],
  [0x139, "KERNEL_SECURITY_CHECK_FAILURE"],
  [0x1000007e, "SYSTEM_THREAD_EXCEPTION_NOT_HANDLED_M"],
  [0x1000008e, "KERNEL_MODE_EXCEPTION_NOT_HANDLED_M"],
  [0xc000021a, "STATUS_SYSTEM_PROCESS_TERMINATED"],
  [0xdeaddead, "MANUALLY_INITIATED_CRASH1"],
]);

/** Decodes the guest OS family from HV_X64_MSR_GUEST_OS_ID (TLFS "Reporting the Guest OS Identity"). */
export function guestOsKind(guestOsId: bigint): GuestOsKind {
  if (guestOsId === 0n) return "unknown";
  if (guestOsId & T.HV_GUEST_OS_OPEN_SOURCE) {
    const type = Number((guestOsId >> 56n) & 0x7fn);
    if (type === T.HV_GUEST_OS_TYPE_LINUX) return "linux";
    if (type === T.HV_GUEST_OS_TYPE_FREEBSD) return "freebsd";
    return "other";
  }
  const vendor = Number((guestOsId >> 48n) & 0x7fffn);
  return vendor === T.HV_GUEST_OS_VENDOR_MICROSOFT ? "windows" : "other";
}

/**
 * Reads at most `CRASH_MESSAGE_MAX` bytes at `gpa` and keeps printable text: printable ASCII,
 * newline and tab; other bytes (and a trailing run of NULs) are dropped, invalid UTF-8 becomes
 * U+FFFD. Returns `undefined` when the range is not guest RAM.
 */
export function readCrashMessage(
  memory: GuestMemory,
  gpa: bigint,
  length: bigint,
): string | undefined {
  if (gpa < 0n || length <= 0n || gpa > BigInt(Number.MAX_SAFE_INTEGER)) return undefined;
  const len = Number(length > BigInt(CRASH_MESSAGE_MAX) ? BigInt(CRASH_MESSAGE_MAX) : length);
  const bytes = memory.trySlice(Number(gpa), len);
  if (!bytes) return undefined;
  const text = new TextDecoder("utf-8", { fatal: false }).decode(bytes);
  // Keep printable characters, newline and tab; drop other controls (NULs, escapes, CRs).
  // deno-lint-ignore no-control-regex
  return text.replace(/[\u0000-\u0008\u000b-\u001f\u007f-\u009f]/g, "").trimEnd();
}

function hex(v: bigint | number, width = 16): string {
  return "0x" + v.toString(16).toUpperCase().padStart(width, "0");
}

/** Builds the report for a CRASH_CTL write with CRASH_NOTIFY set. */
export function buildCrashReport(
  input: {
    vp: number;
    guestOsId: bigint;
    params: readonly [bigint, bigint, bigint, bigint, bigint];
    control: bigint;
  },
  memory: GuestMemory,
): GuestCrashReport {
  const os = guestOsKind(input.guestOsId);
  const [p0, p1, p2, p3, p4] = input.params;
  const base = {
    vp: input.vp,
    guestOsId: input.guestOsId,
    os,
    params: input.params,
    control: input.control,
  };
  if (input.control & T.HV_CRASH_CTL_CRASH_NOTIFY_MSG) {
    const message = readCrashMessage(memory, p3, p4);
    const summary = message !== undefined
      ? `guest panic (${os}) on VP ${input.vp}: ${lastLine(message)}`
      : `guest panic (${os}) on VP ${input.vp}: message at ${hex(p3)} (+${p4}) is not guest RAM`;
    return message !== undefined ? { ...base, message, summary } : { ...base, summary };
  }
  if (os === "windows") {
    const code = Number(BigInt.asUintN(32, p0));
    const name = BUGCHECK_NAMES.get(code);
    const args = [p1, p2, p3, p4] as const;
    const summary = `Windows bugcheck ${hex(code, 8)}${name ? " " + name : ""} (${
      args.map((a) => hex(a)).join(", ")
    }) on VP ${input.vp}`;
    return { ...base, bugcheck: name ? { code, name, args } : { code, args }, summary };
  }
  if (os === "linux") {
    return {
      ...base,
      summary: `Linux panic on VP ${input.vp}: error ${hex(p0)} rip ${hex(p2)} rax ${hex(p3)} rsp ${
        hex(p4)
      }`,
    };
  }
  return {
    ...base,
    summary: `guest crash (${os}) on VP ${input.vp}: P0-P4 ${
      input.params.map((p) => hex(p)).join(", ")
    }`,
  };
}

function lastLine(message: string): string {
  const lines = message.split("\n").map((l) => l.trim()).filter((l) => l !== "");
  const panic = lines.findLast((l) => l.includes("Kernel panic"));
  return panic ?? lines.at(-1) ?? "(empty message)";
}
