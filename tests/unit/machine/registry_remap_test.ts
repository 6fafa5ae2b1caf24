import { strictEqual } from "node:assert/strict";
import { DeviceRegistry, IoDispatch } from "../../../src/machine/registry.ts";

Deno.test("registry: a range unmapped and mapped again at the same base answers again", () => {
  // OVMF's PCI enumeration does this to every BAR: decode on, off while it sizes, on again at
  // the same address. The AHCI ABAR went dark after it before this was fixed.
  const reg = DeviceRegistry.create();
  const id = reg.addDevice("dev");
  const handle = reg.add("mmio", 0x8000_0000, 0x1000, id);
  const dispatch = new IoDispatch(reg, [{ read: (_o, d) => void d.fill(0x42), write() {} }]);
  const read = () => {
    const d = new Uint8Array(4);
    dispatch.access("mmio", 0x8000_0004, false, d);
    return d[0];
  };
  strictEqual(read(), 0x42);
  reg.move(handle, undefined);
  strictEqual(read(), 0xff);
  reg.move(handle, 0x8000_0000);
  strictEqual(read(), 0x42, "mapped again");
});
