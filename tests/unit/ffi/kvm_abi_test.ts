import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { cannotGenerateReason, generateAbi } from "../../../ffi/gen/gen_abi.ts";
import { KVM_IOCTL, KVM_STRUCT } from "../../../ffi/kvm_abi.ts";

const why = cannotGenerateReason();

Deno.test({
  name: "ffi/kvm_abi.ts is what the generator produces from this host's <linux/kvm.h>",
  ignore: why !== undefined,
  async fn() {
    const current = await Deno.readTextFile(
      fileURLToPath(new URL("../../../ffi/kvm_abi.ts", import.meta.url)),
    );
    assert.equal(await generateAbi(), current, "ffi/kvm_abi.ts is stale: run `deno task gen:abi`");
  },
});
if (why) console.warn(`skipped: KVM ABI generator check (${why})`);

Deno.test("KVM ABI has the x86-64 values the VMM relies on", () => {
  assert.equal(KVM_IOCTL.KVM_RUN, 0xae80);
  assert.equal(KVM_IOCTL.KVM_CREATE_VM, 0xae01);
  assert.equal(KVM_STRUCT.kvm_regs.size, 18 * 8);
  assert.equal(KVM_STRUCT.kvm_run.exit_reason, 8);
  assert.equal(KVM_STRUCT.kvm_run.io_port % 2, 0);
  assert.equal(KVM_STRUCT.kvm_userspace_memory_region.size, 32);
});
