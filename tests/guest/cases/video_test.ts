/**
 * Synthetic video on a stock Debian 6.1 guest: hyperv_drm binds (synthvid 3.5), its fb0 mode is
 * the 1024x768 the host offers as default, and a pattern the guest writes into /dev/fb0 reaches
 * the host's VRAM and is in the frame a real VNC client (gtk-vnc's gvnccapture) fetches and in
 * the control socket's `screendump`.
 */
import assert from "node:assert/strict";
import { askControl, bootGuest, describeRun, guestEnvironment } from "../harness.ts";
import { decodePng } from "../../unit/console/png.ts";

function have(cmd: string): boolean {
  try {
    return new Deno.Command("sh", { args: ["-c", `command -v ${cmd}`] }).outputSync().success;
  } catch {
    return false;
  }
}

Deno.test({
  name: "synthvid: hyperv_drm binds at 3.5 with the offered 1024x768 mode; the console the guest " +
    "draws is in gvnccapture's frame and in screendump",
  ignore: !guestEnvironment().ok || !have("gvnccapture"),
  async fn() {
    const dir = Deno.env.get("VIDEO_TEST_SHOT_DIR") ?? await Deno.makeTempDir();
    const display = 60 + Math.floor(Math.random() * 30);
    const shot = `${dir}/synthvid.png`;
    const dump = `${dir}/synthvid-screendump.png`;
    const sock = `${await Deno.makeTempDir()}/control.sock`;
    let capture = "";
    let dumped: Record<string, unknown> = {};
    const run = await bootGuest({
      modules: ["hv_vmbus", "hyperv_drm"],
      vmmArgs: [
        "--vnc",
        `127.0.0.1:${5900 + display}`,
        "--control",
        sock,
        "--log-level",
        "info",
      ],
      timeoutMs: 300_000,
      script: `
        for i in $(seq 1 60); do [ -e /dev/fb0 ] && break; sleep 1; done
        hd_mark synthvid "$(dmesg | grep -o 'Synthvid Version major [0-9]*, minor [0-9]*' | head -1)"
        hd_mark fb "$(cat /sys/class/graphics/fb0/name) $(cat /sys/class/graphics/fb0/virtual_size)"
        hd_mark mode "$(head -1 /sys/class/drm/card0-Virtual-1/modes 2>/dev/null)"
        hd_mark iomem "$(grep -i -E 'vmbus|hyperv|f[0-9a-f]{7}-' /proc/iomem | tr '\n' ';')"
        hd_mark drm-log "$(dmesg | grep -i -E 'hyperv_drm|synthvid|vram' | tr '\n' ';')"
        # The guest draws through its console: fbcon clears tty1 with background colour 7
        # (0xAAAAAA in the VT palette), rendered by hyperv_drm into VRAM and reported as DIRT.
        printf '\\033[47m\\033[2J\\033[H' > /dev/tty1
        sleep 3
        hd_mark tty "$?"
        hd_mark fb-written 1
        read -t 120 -r reply
      `,
      onMark: async (key) => {
        if (key !== "fb-written") return;
        // The test machine may start with loopback down (the VMM listens on 127.0.0.1).
        await new Deno.Command("ip", { args: ["link", "set", "lo", "up"] }).output().catch(
          () => {},
        );
        const out = await new Deno.Command("gvnccapture", {
          args: [`127.0.0.1:${display}`, shot],
          stdout: "piped",
          stderr: "piped",
        }).output();
        capture = `gvnccapture ${out.code}: ${new TextDecoder().decode(out.stderr)}${
          new TextDecoder().decode(out.stdout)
        }`;
        dumped = await askControl(sock, { cmd: "screendump", path: dump }).catch((e) => ({
          error: String(e),
        }));
        return "go\n";
      },
    });
    const ctx = `${capture} screendump ${JSON.stringify(dumped)}\n${describeRun(run, 40)}`;
    assert.equal(run.code, 0, ctx);
    assert.deepEqual(dumped, { ok: true, width: 1024, height: 768 }, ctx);
    const png = decodePng(Deno.readFileSync(dump));
    assert.equal(png.rgb(500, 400).toString(16), "aaaaaa", ctx);
    assert.equal(run.marks.get("synthvid"), "Synthvid Version major 3, minor 5", ctx);
    assert.equal(run.marks.get("fb"), "hyperv_drmdrmfb 1024,768", ctx);
    assert.equal(run.marks.get("mode"), "1024x768", ctx);
    const img = decodePng(Deno.readFileSync(shot));
    assert.deepEqual([img.width, img.height], [1024, 768], ctx);
    const at = (x: number, y: number) => img.rgb(x, y).toString(16).padStart(6, "0");
    for (const [x, y] of [[0, 100], [500, 400], [1023, 767]]) {
      assert.equal(at(x!, y!), "aaaaaa", `console background at ${x},${y}\n${ctx}`);
    }
  },
});

Deno.test({
  name: "bochs-display through VNC: the guest's fb0 bands are in gvnccapture's frame",
  ignore: !guestEnvironment().ok || !have("gvnccapture"),
  async fn() {
    const dir = Deno.env.get("VIDEO_TEST_SHOT_DIR") ?? await Deno.makeTempDir();
    const display = 60 + Math.floor(Math.random() * 30);
    const shot = `${dir}/bochs-vnc.png`;
    let capture = "";
    const run = await bootGuest({
      modules: ["bochs"],
      vmmArgs: [
        "--display",
        "bochs,800x600",
        "--hv",
        "none",
        "--vnc",
        `127.0.0.1:${5900 + display}`,
      ],
      timeoutMs: 300_000,
      script: `
        for v in /sys/class/vtconsole/vtcon*; do
          grep -q 'frame buffer' $v/name && echo 0 > $v/bind
        done
        stride=$(cat /sys/class/graphics/fb0/stride)
        hd_mark fb "$(cat /sys/class/graphics/fb0/virtual_size) $stride"
        # White rows 0-99, grey (0x40) rows 100-199.
        head -c $((stride * 100)) /dev/zero | tr '\\000' '\\377' > /tmp/white
        head -c $((stride * 100)) /dev/zero | tr '\\000' '\\100' > /tmp/grey
        cat /tmp/white /tmp/grey | dd of=/dev/fb0 bs=$stride conv=notrunc 2>/dev/null
        sleep 1
        hd_mark drawn 1
        read -t 120 -r reply
      `,
      onMark: async (key) => {
        if (key !== "drawn") return;
        // The test machine may start with loopback down (the VMM listens on 127.0.0.1).
        await new Deno.Command("ip", { args: ["link", "set", "lo", "up"] }).output().catch(
          () => {},
        );
        const out = await new Deno.Command("gvnccapture", {
          args: [`127.0.0.1:${display}`, shot],
          stdout: "piped",
          stderr: "piped",
        }).output();
        capture = `gvnccapture ${out.code}: ${new TextDecoder().decode(out.stderr)}${
          new TextDecoder().decode(out.stdout)
        }`;
        return "go\n";
      },
    });
    const ctx = `${capture}\n${describeRun(run, 40)}`;
    assert.equal(run.code, 0, ctx);
    const img = decodePng(Deno.readFileSync(shot));
    assert.deepEqual([img.width, img.height], [800, 600], ctx);
    const at = (x: number, y: number) => img.rgb(x, y).toString(16).padStart(6, "0");
    for (const x of [0, 400, 799]) {
      assert.equal(at(x, 50), "ffffff", `white at ${x},50\n${ctx}`);
      assert.equal(at(x, 150), "404040", `grey at ${x},150\n${ctx}`);
    }
  },
});
