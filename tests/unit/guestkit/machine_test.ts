import { deepStrictEqual, ok, strictEqual } from "node:assert/strict";
import {
  APIC_KEY_PIN,
  CR8_CHECK,
  MACHINE_MODULES,
  machineQemuArgs,
  machineScript,
  selfCheckProblem,
  shellQuote,
  softLockupSeconds,
} from "../../guest/machine/test_machine.ts";

Deno.test("machine: shell quoting survives quotes and spaces", async () => {
  strictEqual(shellQuote("plain/path-1.ts"), "plain/path-1.ts");
  strictEqual(shellQuote("it's a test"), `'it'\\''s a test'`);
  const out = await new Deno.Command("/bin/sh", {
    args: ["-c", `printf '%s|' ${["a b", "it's", "$HOME", ""].map(shellQuote).join(" ")}`],
  }).output();
  strictEqual(new TextDecoder().decode(out.stdout), "a b|it's|$HOME||");
});

Deno.test("machine: QEMU runs TCG with SVM, host / read-only, shares after it", () => {
  const args = machineQemuArgs("/boot/vmlinuz", "/i.gz", [{ hostPath: "/r,x", writable: true }], {
    memory: "6G",
    cpus: 2,
  });
  const values = (flag: string) => args.flatMap((a, i) => (args[i - 1] === flag ? [a] : []));
  deepStrictEqual(values("-accel"), ["tcg,thread=multi"]);
  deepStrictEqual(values("-m"), ["6G"]);
  const [root, share] = values("-virtfs");
  ok(root!.includes("path=/,mount_tag=hostroot") && root!.includes("readonly=on"));
  ok(share!.includes("path=/r,,x,mount_tag=share0") && !share!.includes("readonly"));
  ok(args.includes("-no-reboot"));
  // The project's own QEMU build finds Debian's SeaBIOS and option ROMs there.
  deepStrictEqual(values("-L"), ["/usr/share/qemu", "/usr/share/seabios"]);
});

Deno.test("machine: the L1 script mounts the overlay root, shares, and runs in cwd", () => {
  const s = machineScript(["deno", "test", "-A"], "/work/repo", { A: "1 2" }, [
    { hostPath: "/work/repo/build/r", writable: true },
  ]);
  ok(s.includes("hostroot /mnt/lower"));
  ok(s.includes("mount -t overlay"));
  ok(s.includes("share0 /mnt/root/work/repo/build/r"));
  ok(
    s.includes(`/usr/bin/env -i 'A=1 2' /bin/sh -c 'cd "$0" && exec "$@"' /work/repo deno test -A`),
  );
  deepStrictEqual(MACHINE_MODULES.includes("kvm_amd"), true);
});

Deno.test("machine: the L1 script pins KVM's LAPIC keys before the command", () => {
  const s = machineScript(["true"], "/r", {}, []);
  const pin = s.indexOf(`${APIC_KEY_PIN} 2>&1`);
  ok(pin > 0 && pin < s.indexOf("chroot"), s);
  ok(s.includes("hd_mark apic_keys"));
});

Deno.test("machine: soft lockup lines give the stuck time; other lines none", () => {
  deepStrictEqual(
    softLockupSeconds(
      "[  212.984603] watchdog: BUG: soft lockup - CPU#0 stuck for 26s! [worker-2:254]",
    ),
    26,
  );
  deepStrictEqual(softLockupSeconds("[ 1.0] rcu: INFO: rcu_sched detected stalls"), undefined);
});

Deno.test("machine: the outer-QEMU self-check runs before the pin and the command", () => {
  const s = machineScript(["true"], "/r", {}, []);
  const check = s.indexOf(`${CR8_CHECK} 2>&1`);
  ok(s.indexOf("hd_mark cr8_check start") < check, s);
  ok(check > 0 && check < s.indexOf(`${APIC_KEY_PIN} 2>&1`) && check < s.indexOf("chroot"), s);
});

Deno.test("machine: the self-check verdict comes from its marks and QEMU's stderr", () => {
  const marks = (v?: string) => new Map(v === undefined ? [] : [["cr8_check", v]]);
  strictEqual(selfCheckProblem(marks("ok: 100000 CR8 writes ..."), ""), undefined);
  const died = selfCheckProblem(
    marks("start"),
    "**\nERROR:../accel/tcg/tcg-accel-ops.c:83:tcg_handle_interrupt: assertion failed: " +
      "(qemu_mutex_iothread_locked())\nBail out!\n",
  );
  ok(died?.includes("self-check FAILED") && died.includes("tcg_handle_interrupt"), died);
  ok(selfCheckProblem(marks("failed: KVM_RUN: EINVAL"), "")?.includes("failed: KVM_RUN"));
  ok(selfCheckProblem(marks(), "")?.includes("did not run"));
});
