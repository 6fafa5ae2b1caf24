/**
 * The bochs-display (issue: PC platform): Linux's `bochs` DRM driver binds to 00:02.0, fb0
 * takes the mode the VMM's EDID offers, and a pattern the guest writes into /dev/fb0 is in the
 * PNG the control socket's `screendump` writes (decoded here, pixels compared).
 */
import assert from "node:assert/strict";
import { askControl, bootGuest, describeRun, guestEnvironment } from "../harness.ts";
import { decodePng } from "../../../src/util/png.ts";

/** The mode the VMM offers (not the driver's 1024x768 default, so the EDID must have won). */
const WIDTH = 800;
const HEIGHT = 600;

/** Three bands: white rows 0-99, grey (0x40) rows 100-199, red rows 200-299 (XRGB8888). */
const DRAW = `
  for v in /sys/class/vtconsole/vtcon*; do
    grep -q 'frame buffer' $v/name && echo 0 > $v/bind
  done
  fb=/sys/class/graphics/fb0
  stride=$(cat $fb/stride)
  head -c $((stride * 100)) /dev/zero | tr '\\000' '\\377' > /tmp/white
  head -c $((stride * 100)) /dev/zero | tr '\\000' '\\100' > /tmp/grey
  printf '\\000\\000\\377\\000' > /tmp/red
  # 2^17 pixels (512 KiB): more than 100 rows of any stride up to 1280 pixels.
  i=0; while [ $i -lt 17 ]; do cat /tmp/red /tmp/red > /tmp/r2; mv /tmp/r2 /tmp/red; i=$((i + 1)); done
  head -c $((stride * 100)) /tmp/red > /tmp/redband
  cat /tmp/white /tmp/grey /tmp/redband | dd of=/dev/fb0 bs=$stride conv=notrunc 2>/dev/null
  sleep 1
`;

Deno.test({
  name:
    "bochs-display: bochs-drm binds, fb0 has the VMM's mode, the guest's pattern is in screendump",
  ignore: !guestEnvironment().ok,
  async fn() {
    const dir = await Deno.makeTempDir();
    const sock = `${dir}/control.sock`;
    const png = `${dir}/screen.png`;
    let dump: Record<string, unknown> = {};
    let pci: Record<string, unknown> = {};
    const run = await bootGuest({
      modules: ["bochs"],
      vmmArgs: ["--display", `bochs,${WIDTH}x${HEIGHT}`, "--control", sock, "--hv", "none"],
      script: `
        d=/sys/bus/pci/devices/0000:00:02.0
        hd_mark ids "$(cat $d/vendor) $(cat $d/device) $(cat $d/class)"
        hd_mark driver "$(basename "$(readlink $d/driver)")"
        hd_mark fb_name "$(cat /sys/class/graphics/fb0/name)"
        hd_mark virtual_size "$(cat /sys/class/graphics/fb0/virtual_size)"
        hd_mark bpp "$(cat /sys/class/graphics/fb0/bits_per_pixel)"
        ${DRAW}
        hd_mark drawn 1
        read -t 120 -r reply
        hd_mark reply "$reply"
      `,
      onMark: async (key) => {
        if (key !== "drawn") return;
        dump = await askControl(sock, { cmd: "screendump", path: png }).catch((e) => ({
          error: String(e),
        }));
        pci = await askControl(sock, { cmd: "pci" }).catch((e) => ({ error: String(e) }));
        return "dumped\n";
      },
    });
    const ctx = describeRun(run, 30);
    assert.equal(run.code, 0, ctx);
    assert.equal(run.marks.get("ids"), "0x1234 0x1111 0x038000", ctx);
    assert.equal(run.marks.get("driver"), "bochs-drm", ctx);
    assert.match(run.marks.get("fb_name") ?? "", /bochs/, ctx);
    assert.equal(run.marks.get("virtual_size"), `${WIDTH},${HEIGHT}`, ctx);
    assert.equal(run.marks.get("bpp"), "32", ctx);
    assert.equal(run.marks.get("reply"), "dumped", ctx);
    assert.deepEqual(dump, { ok: true, width: WIDTH, height: HEIGHT }, ctx);

    // HYPERDENO_SCREENDUMP_DIR (a `--results` share of the test machine): keep the PNG to look at.
    const keep = Deno.env.get("HYPERDENO_SCREENDUMP_DIR");
    if (keep) await Deno.copyFile(png, `${keep}/bochs-screendump.png`);
    const img = decodePng(await Deno.readFile(png));
    assert.equal(img.width, WIDTH);
    assert.equal(img.height, HEIGHT);
    const at = (
      x: number,
      y: number,
    ) => [...img.rgb.subarray((y * WIDTH + x) * 3, (y * WIDTH + x) * 3 + 3)];
    for (const x of [0, 17, 400, WIDTH - 1]) {
      assert.deepEqual(at(x, 1), [255, 255, 255], `white band at ${x},1`);
      assert.deepEqual(at(x, 150), [0x40, 0x40, 0x40], `grey band at ${x},150`);
      assert.deepEqual(at(x, 299), [255, 0, 0], `red band at ${x},299`);
    }
    const devices = (pci.devices ?? []) as {
      bdf: string;
      name: string;
      bars: { index: number; base: string | null }[];
    }[];
    const display = devices.find((d) => d.bdf === "00:02.0");
    assert.equal(display?.name, "bochs-display", JSON.stringify(pci));
    assert.ok(display.bars.every((b) => b.base !== null), JSON.stringify(display));
    console.log(`screendump ${WIDTH}x${HEIGHT}; pci: ${JSON.stringify(display.bars)}`);
    await Deno.remove(dir, { recursive: true });
  },
});
