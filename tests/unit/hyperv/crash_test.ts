import { assert, assertEquals } from "./assert.ts";
import { CRASH_MESSAGE_MAX, guestOsKind, readCrashMessage } from "../../../src/hyperv/crash.ts";
import * as T from "../../../src/hyperv/tlfs.ts";
import { makeRig, type Rig } from "./fakes.ts";

/** Windows 10 (vendor Microsoft, OS id 4 = NT, version 10.0 build 19045). */
const WINDOWS_ID = (1n << 48n) | (4n << 40n) | (10n << 32n) | 19045n;
/** Linux 6.1 as hv_generate_guest_id() encodes it. */
const LINUX_ID = (0x8100n << 48n) | (0x060100n << 16n);

function crash(r: Rig, osId: bigint, params: bigint[], ctl: bigint): void {
  assert(r.hv.wrmsr(0, T.HV_X64_MSR_GUEST_OS_ID, osId));
  params.forEach((p, i) => assert(r.hv.wrmsr(1, T.HV_X64_MSR_CRASH_P0 + i, p)));
  assert(r.hv.wrmsr(1, T.HV_X64_MSR_CRASH_CTL, ctl));
}

Deno.test("guest OS kinds from the OS id", () => {
  assertEquals(guestOsKind(WINDOWS_ID), "windows");
  assertEquals(guestOsKind(LINUX_ID), "linux");
  assertEquals(guestOsKind((0x82n << 56n) | 1n), "freebsd");
  assertEquals(guestOsKind(0n), "unknown");
  assertEquals(guestOsKind(2n << 48n), "other");
});

Deno.test("CRASH_CTL reads the capabilities; P0-P4 read back; no report without NOTIFY", () => {
  const r = makeRig();
  assertEquals(
    r.hv.rdmsr(0, T.HV_X64_MSR_CRASH_CTL),
    T.HV_CRASH_CTL_CRASH_NOTIFY | T.HV_CRASH_CTL_CRASH_NOTIFY_MSG,
  );
  assert(r.hv.wrmsr(0, T.HV_X64_MSR_CRASH_P0 + 4, 0x1234n));
  assertEquals(r.hv.rdmsr(3, T.HV_X64_MSR_CRASH_P0 + 4), 0x1234n);
  assert(r.hv.wrmsr(0, T.HV_X64_MSR_CRASH_CTL, 0n));
  assertEquals(r.crashes.length, 0);
});

Deno.test("Windows bugcheck: code, name and parameters", () => {
  const r = makeRig();
  crash(
    r,
    WINDOWS_ID,
    [0x7bn, 0xffff_f880_0098_97e8n, 0xc0000034n, 0n, 0n],
    T.HV_CRASH_CTL_CRASH_NOTIFY,
  );
  assertEquals(r.crashes.length, 1);
  const c = r.crashes[0]!;
  assertEquals(c.os, "windows");
  assertEquals(c.vp, 1);
  assertEquals(c.bugcheck?.code, 0x7b);
  assertEquals(c.bugcheck?.name, "INACCESSIBLE_BOOT_DEVICE");
  assertEquals(c.bugcheck?.args, [0xffff_f880_0098_97e8n, 0xc0000034n, 0n, 0n]);
  assert(c.summary.startsWith("Windows bugcheck 0x0000007B INACCESSIBLE_BOOT_DEVICE ("), c.summary);

  const names: [bigint, string][] = [
    [0x0an, "IRQL_NOT_LESS_OR_EQUAL"],
    [0x1en, "KMODE_EXCEPTION_NOT_HANDLED"],
    [0x3bn, "SYSTEM_SERVICE_EXCEPTION"],
    [0x50n, "PAGE_FAULT_IN_NONPAGED_AREA"],
    [0x7en, "SYSTEM_THREAD_EXCEPTION_NOT_HANDLED"],
    [0x7fn, "UNEXPECTED_KERNEL_MODE_TRAP"],
    [0xd1n, "DRIVER_IRQL_NOT_LESS_OR_EQUAL"],
    [0xefn, "CRITICAL_PROCESS_DIED"],
    [0x133n, "DPC_WATCHDOG_VIOLATION"],
    [0x139n, "KERNEL_SECURITY_CHECK_FAILURE"],
    [0x124n, "WHEA_UNCORRECTABLE_ERROR"],
    [0x9fn, "DRIVER_POWER_STATE_FAILURE"],
    [0x1an, "MEMORY_MANAGEMENT"],
    [0xc2n, "BAD_POOL_CALLER"],
    [0xc5n, "DRIVER_CORRUPTED_EXPOOL"],
    [0x19n, "BAD_POOL_HEADER"],
    [0x101n, "CLOCK_WATCHDOG_TIMEOUT"],
  ];
  for (const [code, name] of names) {
    crash(r, WINDOWS_ID, [code, 0n, 0n, 0n, 0n], T.HV_CRASH_CTL_CRASH_NOTIFY);
    assertEquals(r.crashes.at(-1)!.bugcheck?.name, name);
  }
  crash(r, WINDOWS_ID, [0x12345n, 0n, 0n, 0n, 0n], T.HV_CRASH_CTL_CRASH_NOTIFY);
  assertEquals(r.crashes.at(-1)!.bugcheck, { code: 0x12345, args: [0n, 0n, 0n, 0n] });
});

Deno.test("Linux panic message from the message page: printable, bounded", () => {
  const r = makeRig();
  const text =
    "[   1.0] Oops\x1b[0m\r\n[   1.1] Kernel panic - not syncing: VFS: Unable to mount root fs\n\0\0";
  const bytes = new TextEncoder().encode(text);
  r.memory.write(0x9000, bytes);
  const ctl = T.HV_CRASH_CTL_CRASH_NOTIFY | T.HV_CRASH_CTL_CRASH_NOTIFY_MSG;
  crash(r, LINUX_ID, [0n, 0n, 0n, 0x9000n, BigInt(bytes.length)], ctl);
  const c = r.crashes[0]!;
  assertEquals(c.os, "linux");
  assertEquals(
    c.message,
    "[   1.0] Oops[0m\n[   1.1] Kernel panic - not syncing: VFS: Unable to mount root fs",
  );
  assert(c.summary.includes("Kernel panic - not syncing: VFS"), c.summary);

  crash(r, LINUX_ID, [0n, 0n, 0n, 0x7fff_0000n, 100n], ctl);
  assertEquals(r.crashes.at(-1)!.message, undefined);
  assert(r.crashes.at(-1)!.summary.includes("not guest RAM"));

  r.memory.slice(0x10000, 8192).fill(0x41);
  crash(r, LINUX_ID, [0n, 0n, 0n, 0x10000n, 1n << 40n], ctl);
  assertEquals(r.crashes.at(-1)!.message?.length, CRASH_MESSAGE_MAX, "bounded to 4 KiB");
  assertEquals(readCrashMessage(r.memory, -1n, 4n), undefined);
  assertEquals(readCrashMessage(r.memory, 0x10000n, 0n), undefined);
});

Deno.test("Linux panic registers without a message page", () => {
  const r = makeRig();
  crash(
    r,
    LINUX_ID,
    [0x0en, LINUX_ID, 0xffff_ffff_8100_0000n, 0x1n, 0xffff_c900_0000_0000n],
    T.HV_CRASH_CTL_CRASH_NOTIFY,
  );
  const c = r.crashes[0]!;
  assertEquals(c.bugcheck, undefined);
  assert(c.summary.includes("rip 0xFFFFFFFF81000000"), c.summary);
});
