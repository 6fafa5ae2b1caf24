import { deepStrictEqual, ok, strictEqual } from "node:assert/strict";
import {
  APIC_KEY_PIN,
  MACHINE_MODULES,
  machineQemuArgs,
  machineScript,
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
