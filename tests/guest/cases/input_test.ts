/**
 * Keyboard and pointer on a stock Debian 6.1 guest: hyperv_keyboard and hid_hyperv bind to the
 * synthetic devices; keys and pointer moves sent on the control socket arrive as input events
 * on their /dev/input nodes; with VMBus off the same keys reach the guest through the PS/2
 * keyboard of the i8042; ctrl-alt-delete resets the guest.
 */
import assert from "node:assert/strict";
import { askControl, bootGuest, describeRun, guestEnvironment } from "../harness.ts";

/** One `struct input_event` (24 bytes on x86-64): type, code, value. */
interface InputEvent {
  type: number;
  code: number;
  value: number;
}

function parseEvents(hex: string): InputEvent[] {
  const bytes = new Uint8Array((hex.match(/../g) ?? []).map((h) => parseInt(h, 16)));
  const dv = new DataView(bytes.buffer);
  const out: InputEvent[] = [];
  for (let at = 0; at + 24 <= bytes.length; at += 24) {
    out.push({
      type: dv.getUint16(at + 16, true),
      code: dv.getUint16(at + 18, true),
      value: dv.getInt32(at + 20, true),
    });
  }
  return out;
}

const EV_KEY = 1, EV_ABS = 3;
const KEY_A = 30,
  KEY_B = 48,
  KEY_C = 46,
  KEY_Z = 44,
  KEY_LEFTSHIFT = 42,
  KEY_DELETE = 111,
  BTN_LEFT = 0x110;

/** Key transitions of a dump, as "code:value" strings. */
function keys(events: InputEvent[]): string[] {
  return events.filter((e) => e.type === EV_KEY).map((e) => `${e.code}:${e.value}`);
}

/** The event node of the first input device whose block in /proc/bus/input/devices matches. */
function eventNodeScript(variable: string, pattern: string): string {
  return `${variable}=$(awk '/${pattern}/{f=1} f&&/Handlers/{match($0,/event[0-9]+/);` +
    `print substr($0,RSTART,RLENGTH);exit}' /proc/bus/input/devices)`;
}

/** A minimal RFB client: handshake (security None), then `messages`, then close. */
async function vncSend(
  path: string,
  messages: number[],
): Promise<{ width: number; height: number }> {
  const conn = await Deno.connect({ transport: "unix", path });
  let buf = new Uint8Array(0);
  const read = async (n: number) => {
    while (buf.length < n) {
      const chunk = new Uint8Array(4096);
      const got = await conn.read(chunk);
      if (got === null) throw new Error("VNC server closed the connection");
      const b = new Uint8Array(buf.length + got);
      b.set(buf);
      b.set(chunk.subarray(0, got), buf.length);
      buf = b;
    }
    const out = buf.slice(0, n);
    buf = buf.slice(n);
    return out;
  };
  try {
    await read(12);
    await conn.write(new TextEncoder().encode("RFB 003.008\n"));
    const [n] = await read(1);
    await read(n!);
    await conn.write(new Uint8Array([1]));
    await read(4);
    await conn.write(new Uint8Array([1]));
    const init = new DataView((await read(24)).buffer);
    await read(init.getUint32(20));
    await conn.write(new Uint8Array(messages));
    await new Promise((r) => setTimeout(r, 500));
    return { width: init.getUint16(0), height: init.getUint16(2) };
  } finally {
    conn.close();
  }
}

/** RFB KeyEvent bytes. */
function vncKey(down: boolean, keysym: number): number[] {
  return [
    4,
    down ? 1 : 0,
    0,
    0,
    keysym >>> 24,
    (keysym >> 16) & 0xff,
    (keysym >> 8) & 0xff,
    keysym & 0xff,
  ];
}

const READ_EVENTS = `
  # Dump the events of $1 into $2 for as long as the host takes.
  capture() { cat /dev/input/$1 > $2 & }
  dump() { od -An -tx1 -v $1 | tr -d ' \\n'; }
`;

Deno.test({
  ignore: !guestEnvironment().ok || Deno.env.get("INPUT_TEST_ONLY") === "ps2",
  name: "synthetic input: hyperv_keyboard and hid_hyperv bind; keys and pointer moves from the " +
    "control socket and VNC arrive as input events; ctrl-alt-delete resets the guest",
  async fn() {
    const dir = await Deno.makeTempDir();
    const sock = `${dir}/control.sock`;
    const vnc = `${dir}/vnc.sock`;
    const answers: Record<string, unknown>[] = [];
    let resetAsked: Record<string, unknown> | undefined;
    let vncScreen: unknown;
    const run = await bootGuest({
      modules: ["hv_vmbus", "evdev", "hyperv_keyboard", "hid_hyperv"],
      vmmArgs: ["--control", sock, "--log-level", "info", "--vnc", `unix:${vnc}`],
      timeoutMs: 300_000,
      script: `
        ${READ_EVENTS}
        for i in $(seq 1 60); do
          grep -q 'Phys=d34b2567' /proc/bus/input/devices &&
            grep -q 'Vmbus HID-compliant Mouse' /proc/bus/input/devices && break
          sleep 1
        done
        hd_mark drivers "$(ls /sys/bus/vmbus/drivers/hyperv_keyboard /sys/bus/vmbus/drivers/hid_hyperv | grep -c -- -)"
        ${eventNodeScript("kev", "Phys=d34b2567")}
        ${eventNodeScript("mev", "Vmbus HID-compliant Mouse")}
        hd_mark nodes "$kev $mev"
        capture $kev /tmp/k; capture $mev /tmp/m
        sleep 1
        hd_mark input-ready 1
        read -t 120 -r reply
        sleep 2
        hd_mark kbd "$(dump /tmp/k)"
        hd_mark mouse "$(dump /tmp/m)"
        hd_mark cad-ready 1
        read -t 120 -r reply
        sleep 60
        hd_mark not-reset 1
      `,
      onMark: async (key) => {
        if (key === "input-ready") {
          for (
            const req of [
              { cmd: "send-keys", keys: "a shift-b delete" },
              { cmd: "type", text: "c" },
              { cmd: "pointer", x: 16384, y: 8192, buttons: 1 },
              { cmd: "pointer", x: 16384, y: 8192, buttons: 0 },
              { cmd: "input" },
            ]
          ) answers.push(await askControl(sock, req));
          // Keys through VNC: 'z' by keysym, then the pointer to the middle of the screen.
          vncScreen = await vncSend(vnc, [...vncKey(true, 0x7a), ...vncKey(false, 0x7a)]).catch(
            (e) => String(e),
          );
          answers.push(await askControl(sock, { cmd: "input" }));
          return "go\n";
        }
        if (key === "cad-ready") {
          resetAsked = await askControl(sock, { cmd: "send-keys", keys: "ctrl-alt-delete" });
          return "go\n";
        }
      },
    });
    const ctx = `answers ${JSON.stringify(answers)} cad ${JSON.stringify(resetAsked)} ` +
      `vnc ${JSON.stringify(vncScreen)}\n` +
      describeRun(run, 40);
    assert.equal(run.marks.get("drivers"), "2", ctx);
    for (const a of answers) assert.equal(a.ok, true, ctx);
    assert.equal(answers[0]!.route, "synthetic", ctx);
    assert.equal(answers[2]!.route, "synthetic", ctx);
    const kbd = parseEvents(run.marks.get("kbd") ?? "");
    assert.deepEqual(keys(kbd), [
      `${KEY_A}:1`,
      `${KEY_A}:0`,
      `${KEY_LEFTSHIFT}:1`,
      `${KEY_B}:1`,
      `${KEY_B}:0`,
      `${KEY_LEFTSHIFT}:0`,
      `${KEY_DELETE}:1`,
      `${KEY_DELETE}:0`,
      `${KEY_C}:1`,
      `${KEY_C}:0`,
      `${KEY_Z}:1`,
      `${KEY_Z}:0`,
    ], ctx);
    assert.deepEqual(vncScreen, { width: 640, height: 480 }, ctx);
    const mouse = parseEvents(run.marks.get("mouse") ?? "");
    const abs = mouse.filter((e) => e.type === EV_ABS).map((e) => `${e.code}:${e.value}`);
    assert.ok(abs.includes("0:16384") && abs.includes("1:8192"), `ABS_X/Y: ${abs}\n${ctx}`);
    assert.deepEqual(keys(mouse), [`${BTN_LEFT}:1`, `${BTN_LEFT}:0`], ctx);
    // ctrl-alt-delete: the kernel's VT keyboard handler restarts the machine (C_A_D=1), so the
    // guest resets before its 60 s sleep ends and the VMM (--no-reboot) exits.
    assert.equal(resetAsked?.ok, true, ctx);
    assert.equal(run.marks.has("not-reset"), false, ctx);
    assert.match(run.stderr, /guest reset/, ctx);
    assert.equal(run.code, 0, ctx);
  },
});

Deno.test({
  name: "PS/2 input: with VMBus off (--hv none) typed keys and pointer moves reach atkbd and " +
    "psmouse through the i8042",
  ignore: !guestEnvironment().ok,
  async fn() {
    const dir = await Deno.makeTempDir();
    const sock = `${dir}/control.sock`;
    const answers: Record<string, unknown>[] = [];
    const run = await bootGuest({
      modules: ["evdev", "psmouse"],
      vmmArgs: ["--control", sock, "--hv", "none"],
      timeoutMs: 300_000,
      script: `
        ${READ_EVENTS}
        for i in $(seq 1 30); do
          grep -q 'Phys=isa0060/serio1' /proc/bus/input/devices && break
          sleep 1
        done
        ${eventNodeScript("kev", "Phys=isa0060\\/serio0")}
        ${eventNodeScript("mev", "Phys=isa0060\\/serio1")}
        hd_mark nodes "$kev $mev"
        hd_mark serio "$(ls /sys/bus/serio/devices/ | tr '\n' ' ') $(cat /sys/bus/serio/devices/*/drvctl 2>/dev/null; ls /sys/bus/serio/drivers | tr '\n' ' ')"
        hd_mark dmesg-input "$(dmesg | grep -iE 'serio|i8042|psmouse|mouse|aux' | tr '\n' ';')"
        hd_mark mouse-name "$(grep -B1 'Phys=isa0060/serio1' /proc/bus/input/devices | sed -n 's/.*Name="\\(.*\\)"/\\1/p')"
        capture $kev /tmp/k; capture $mev /tmp/m
        sleep 1
        hd_mark ps2-ready 1
        read -t 120 -r reply
        sleep 3
        hd_mark kbd "$(dump /tmp/k)"
        hd_mark mouse "$(dump /tmp/m)"
      `,
      onMark: async (key) => {
        if (key !== "ps2-ready") return;
        for (
          const req of [
            { cmd: "type", text: "hi" },
            { cmd: "pointer", x: 0, y: 0, buttons: 0 },
            { cmd: "pointer", x: 16384, y: 8192, buttons: 1 },
            { cmd: "input" },
          ]
        ) answers.push(await askControl(sock, req));
        return "go\n";
      },
    });
    const ctx = `answers ${JSON.stringify(answers)}\n${describeRun(run, 40)}`;
    assert.equal(run.code, 0, ctx);
    assert.equal(answers[0]!.route, "ps2", ctx);
    assert.equal(answers[0]!.ok, true, ctx);
    const kbd = parseEvents(run.marks.get("kbd") ?? "");
    assert.deepEqual(keys(kbd), [`35:1`, `35:0`, `23:1`, `23:0`], ctx); // KEY_H, KEY_I
    const mouse = parseEvents(run.marks.get("mouse") ?? "");
    const EV_REL = 2;
    const sum = (code: number) =>
      mouse.filter((e) => e.type === EV_REL && e.code === code).reduce((a, e) => a + e.value, 0);
    // 1024x768 screen: (16384, 8192) of 32767 is 512 pixels right, 192 down.
    assert.equal(sum(0), 512, `REL_X ${JSON.stringify(mouse)}\n${ctx}`);
    assert.equal(sum(1), 192, `REL_Y\n${ctx}`);
    assert.deepEqual(keys(mouse), [`${BTN_LEFT}:1`], ctx);
  },
});
