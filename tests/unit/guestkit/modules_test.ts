import { deepStrictEqual, strictEqual, throws } from "node:assert/strict";
import {
  moduleNameOfPath,
  normalizeModuleName,
  parseModuleIndex,
  resolveModules,
  uncompressedModulePath,
  UnknownModuleError,
} from "../../guest/kit/modules.ts";

// Excerpt of a real Debian 6.1 modules.dep (transitive closure, deepest dependency last).
const DEP = `
kernel/arch/x86/kvm/kvm.ko: kernel/virt/lib/irqbypass.ko
kernel/arch/x86/kvm/kvm-amd.ko: kernel/drivers/crypto/ccp/ccp.ko kernel/arch/x86/kvm/kvm.ko kernel/virt/lib/irqbypass.ko
kernel/virt/lib/irqbypass.ko:
kernel/drivers/crypto/ccp/ccp.ko:
kernel/fs/netfs/netfs.ko:
kernel/fs/fscache/fscache.ko: kernel/fs/netfs/netfs.ko
kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/fscache/fscache.ko kernel/fs/netfs/netfs.ko
kernel/net/9p/9pnet.ko:
kernel/net/9p/9pnet_virtio.ko.xz: kernel/drivers/virtio/virtio_ring.ko kernel/net/9p/9pnet.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/fs/overlayfs/overlay.ko:
`;
const BUILTIN = "kernel/drivers/tty/serial/8250/8250.ko\nkernel/fs/ext4/ext4.ko\n";

const index = parseModuleIndex(DEP, BUILTIN);
const base = (p: string) => moduleNameOfPath(p);

Deno.test("modules: names compare with - and _ equal, suffixes dropped", () => {
  strictEqual(normalizeModuleName("kvm-amd"), "kvm_amd");
  strictEqual(moduleNameOfPath("kernel/arch/x86/kvm/kvm-amd.ko"), "kvm_amd");
  strictEqual(moduleNameOfPath("a/b/9pnet_virtio.ko.xz"), "9pnet_virtio");
  strictEqual(moduleNameOfPath("a/b/x.ko.zst"), "x");
  strictEqual(uncompressedModulePath("a/b/x.ko.xz"), "a/b/x.ko");
  strictEqual(uncompressedModulePath("a/b/x.ko"), "a/b/x.ko");
});

Deno.test("modules: kvm_amd resolves to irqbypass, kvm, ccp, kvm-amd (dependencies first)", () => {
  deepStrictEqual(resolveModules(index, ["kvm_amd"]).map(base), [
    "irqbypass",
    "kvm",
    "ccp",
    "kvm_amd",
  ]);
});

Deno.test("modules: every module comes after all of its dependencies, each once", () => {
  const order = resolveModules(index, ["9p", "9pnet_virtio", "kvm-amd", "kvm", "overlay"]);
  strictEqual(new Set(order).size, order.length);
  for (const [i, path] of order.entries()) {
    for (const dep of index.deps.get(path)!) {
      const at = order.indexOf(dep);
      strictEqual(at >= 0 && at < i, true, `${dep} must load before ${path}`);
    }
  }
  deepStrictEqual(order.slice(0, 4).map(base), ["netfs", "fscache", "9pnet", "9p"]);
});

Deno.test("modules: built-in modules are skipped, unknown ones are an error", () => {
  deepStrictEqual(resolveModules(index, ["8250", "ext4"]), []);
  throws(() => resolveModules(index, ["no_such_module"]), UnknownModuleError);
});

Deno.test("modules: a dependency cycle is reported", () => {
  const cyclic = parseModuleIndex("a.ko: b.ko\nb.ko: a.ko\n");
  throws(() => resolveModules(cyclic, ["a"]), /cycle/);
});

Deno.test("modules: malformed modules.dep lines are rejected", () => {
  throws(() => parseModuleIndex("kernel/x.ko kernel/y.ko\n"), /malformed/);
});
