import { ok, strictEqual, throws } from "node:assert/strict";
import { grubIsoConfig } from "../../guest/kit/grub_iso.ts";

Deno.test("grub iso: the config prints the marker on the serial port, then halts", () => {
  const cfg = grubIsoConfig("@@grub-iso:marker-1234");
  const lines = cfg.trim().split("\n");
  const serial = lines.indexOf("serial --unit=0 --speed=115200");
  const echo = lines.indexOf(`echo "@@grub-iso:marker-1234"`);
  ok(serial >= 0 && lines.indexOf("terminal_output --append serial") > serial, cfg);
  ok(echo > serial, cfg);
  strictEqual(lines.at(-1), "halt");
  strictEqual(
    grubIsoConfig("m", ["linux /k", "boot"]).trim().split("\n").slice(-2).join(),
    "linux /k,boot",
  );
});

Deno.test("grub iso: a marker GRUB would expand or that breaks the line is refused", () => {
  for (const bad of ['a"b', "a$b", "a\\b", "a\nb", ""]) throws(() => grubIsoConfig(bad));
});
