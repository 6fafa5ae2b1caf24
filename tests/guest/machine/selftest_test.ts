/**
 * Self-test of the guest test stack, independent of our VMM: Deno can create a VM on this
 * /dev/kvm (nested in the test machine, or direct), and a kit initramfs boots the Debian kernel
 * to its test body under QEMU with KVM, with modules and their dependencies loaded.
 * @module
 */
import { assertGuestOk, assertMark, guestEnvironment, guestTest } from "../harness.ts";

const KVM_GET_API_VERSION = 0xae00n;
const KVM_CREATE_VM = 0xae01n;
const KVM_CREATE_VCPU = 0xae41n;
const O_RDWR_CLOEXEC = 0o2 | 0o2000000;

const env = guestEnvironment();

Deno.test({
  name: "selftest: Deno creates a VM and a vCPU on /dev/kvm through libc FFI",
  ignore: !env.ok,
  fn: () => {
    const libc = Deno.dlopen("libc.so.6", {
      open: { parameters: ["buffer", "i32"], result: "i32" }, // int open(const char*, int)
      ioctl: { parameters: ["i32", "u64", "u64"], result: "i32" }, // int ioctl(int, ulong, ...)
      close: { parameters: ["i32"], result: "i32" }, // int close(int)
    });
    try {
      const kvm = libc.symbols.open(new TextEncoder().encode("/dev/kvm\0"), O_RDWR_CLOEXEC);
      if (kvm < 0) throw new Error("open /dev/kvm failed");
      const api = libc.symbols.ioctl(kvm, KVM_GET_API_VERSION, 0n);
      if (api !== 12) throw new Error(`KVM_GET_API_VERSION returned ${api}, want 12`);
      const vm = libc.symbols.ioctl(kvm, KVM_CREATE_VM, 0n);
      if (vm < 0) throw new Error("KVM_CREATE_VM failed");
      const vcpu = libc.symbols.ioctl(vm, KVM_CREATE_VCPU, 0n);
      if (vcpu < 0) throw new Error("KVM_CREATE_VCPU failed");
      libc.symbols.close(vcpu);
      libc.symbols.close(vm);
      libc.symbols.close(kvm);
    } finally {
      libc.close();
    }
  },
});

guestTest("selftest: kit initramfs boots the Debian kernel under QEMU/KVM", {
  vmm: "qemu",
  modules: ["9p", "overlay"], // 9p pulls in 9pnet, netfs, fscache through modules.dep
  script: `
hd_mark hypervisor "$(dmesg | sed -n 's/.*Hypervisor detected: //p' | head -n1)"
hd_mark clocksource "$(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)"
hd_check "9p and its dependencies loaded" sh -c 'lsmod | grep -q "^9pnet " && grep -q 9p /proc/filesystems'
hd_check "overlay registered" grep -q overlay /proc/filesystems
hd_check "devtmpfs mounted" test -c /dev/null
echo "guest uptime at body: $(cut -d' ' -f1 /proc/uptime)"
`,
}, (run) => {
  assertGuestOk(run);
  assertMark(run, "hypervisor", "KVM");
  assertMark(run, "clocksource", "kvm-clock");
  if (run.checks.length !== 3) throw new Error(`expected 3 checks, got ${run.checks.length}`);
  console.log(
    `L2 Debian boot under QEMU/KVM: ${run.seconds.toFixed(1)} s wall, ` +
      `init at ${run.bootedAtSeconds} s guest uptime`,
  );
});
