/**
 * synthvid against Linux 6.1's hyperv_drm sequence (hyperv_drm_proto.c, ported: its size checks
 * on every host packet) over a real VMBus server, and a fuzz of the guest messages.
 */
import assert from "node:assert/strict";
import {
  Dirt,
  DirtRect,
  FeatureChange,
  PointerShape,
  ResolutionResponse,
  SituationUpdate,
  Synthvid,
  SYNTHVID_CLASS_ID,
  SynthvidHeader,
  SynthvidMessage,
  synthvidPacket,
  SynthvidVersion,
  VersionResponse,
  VramLocation,
  VramLocationAck,
} from "../../../../src/devices/video/mod.ts";
import { type GuestChannel, LoopbackGuest } from "../../../../src/vmbus/testing/mod.ts";
import { prng } from "../../prng.ts";
import type { FramebufferSource } from "../../../../src/console/framebuffer.ts";

const VRAM_BYTES = 8 << 20;
const VRAM_GPA = 0xf000_0000;

class LinuxHypervDrm {
  readonly ch: GuestChannel;
  readonly errors: string[] = [];
  /** The last completion-driving answer (version, resolution, VRAM ack). */
  answer: Uint8Array | undefined;
  dirtNeeded = false;
  constructor(guest: LoopbackGuest) {
    const offer = guest.requestOffers().find((o) => o.classId === SYNTHVID_CLASS_ID)!;
    this.ch = guest.open(offer, { sendPages: 64, recvPages: 64 });
  }
  send(type: number, body: Uint8Array): void {
    this.ch.send(synthvidPacket(type, body));
  }
  /** hyperv_receive + hyperv_receive_sub. */
  pump(): void {
    for (const p of this.ch.receive()) {
      const m = p.payload;
      if (p.type !== 6) continue;
      if (m.length > 0x4000) {
        this.errors.push("packet larger than the receive buffer");
        continue;
      }
      if (m.length < 16) {
        this.errors.push("too small for header");
        continue;
      }
      if (SynthvidHeader.get(m, 0, "pipeType") !== 1) continue;
      const type = SynthvidHeader.get(m, 0, "type");
      let need = 16;
      switch (type) {
        case SynthvidMessage.VERSION_RESPONSE:
          need += VersionResponse.size;
          break;
        case SynthvidMessage.RESOLUTION_RESPONSE:
          need += ResolutionResponse.size;
          if (m.length >= need) need += 4 * m[16 + 128]!;
          break;
        case SynthvidMessage.VRAM_LOCATION_ACK:
          need += VramLocationAck.size;
          break;
        case SynthvidMessage.FEATURE_CHANGE:
          if (m.length < 16 + FeatureChange.size) this.errors.push("feature change too small");
          else this.dirtNeeded = m[16] !== 0;
          continue;
        default:
          continue;
      }
      if (m.length < need) this.errors.push(`type ${type} too small`);
      else this.answer = m.slice(16);
    }
  }
  /** hyperv_connect_vsp + probe: version, resolutions, VRAM location, mode. */
  probe(): { w: number; h: number; count: number } {
    this.send(SynthvidMessage.VERSION_REQUEST, new Uint8Array([3, 0, 5, 0]));
    this.pump();
    assert.equal(VersionResponse.get(this.answer!, 0, "isAccepted"), 1);
    this.send(SynthvidMessage.RESOLUTION_REQUEST, new Uint8Array([64]));
    this.pump();
    const r = this.answer!;
    const count = r[128]!, index = r[129]!;
    assert.ok(count >= 1 && count <= 64 && index < count);
    const dv = new DataView(r.buffer, r.byteOffset);
    const w = dv.getUint16(131 + index * 4, true), h = dv.getUint16(133 + index * 4, true);
    this.send(
      SynthvidMessage.VRAM_LOCATION,
      VramLocation.encode({
        userCtx: BigInt(VRAM_GPA),
        isVramGpaSpecified: 1,
        vramGpa: BigInt(VRAM_GPA),
      }),
    );
    this.pump();
    assert.equal(VramLocationAck.get(this.answer!, 0, "userCtx"), BigInt(VRAM_GPA));
    this.send(
      SynthvidMessage.SITUATION_UPDATE,
      SituationUpdate.encode({
        videoOutputCount: 1,
        active: 1,
        depthBits: 32,
        widthPixels: w,
        heightPixels: h,
        pitchBytes: w * 4,
      }),
    );
    this.pump();
    return { w, h, count };
  }
  dirt(x1: number, y1: number, x2: number, y2: number): void {
    const b = new Uint8Array(Dirt.size + DirtRect.size);
    Dirt.encode({ videoOutput: 0, dirtCount: 1 }, b);
    DirtRect.encode({ x1, y1, x2, y2 }, b, Dirt.size);
    this.send(SynthvidMessage.DIRT, b);
  }
}

function setup() {
  const mapped: number[] = [];
  const vram = {
    bytes: new Uint8Array(VRAM_BYTES),
    map: (gpa: number) => (mapped.push(gpa), true),
  };
  const dev = new Synthvid({ vram });
  const { guest, server } = LoopbackGuest.create({ devices: [dev], memoryBytes: 32 << 20 });
  assert.ok(guest.connect() > 0);
  return { dev, guest, server, mapped, vram };
}

Deno.test("synthvid protocol: sizes match hyperv_drm_proto.c", () => {
  assert.equal(SynthvidHeader.size, 16);
  assert.equal(VersionResponse.size, 6);
  assert.equal(VramLocation.size, 17);
  assert.equal(SituationUpdate.size, 27);
  assert.equal(PointerShape.size, 18);
  assert.equal(ResolutionResponse.size, 131);
  assert.equal(DirtRect.size, 16);
  assert.equal(SynthvidVersion.WIN10, 0x00050003);
});

Deno.test("synthvid: hyperv_drm's probe (3.5, resolutions, VRAM at its GPA, mode) and dirt", () => {
  const { dev, guest, mapped, vram, server } = setup();
  const changes: string[] = [];
  dev.subscribe((c) =>
    changes.push(c.kind === "damage" ? `damage ${JSON.stringify(c.rect)}` : c.kind)
  );
  const linux = new LinuxHypervDrm(guest);
  const mode = linux.probe();
  assert.deepEqual(linux.errors, []);
  assert.deepEqual({ w: mode.w, h: mode.h }, { w: 1024, h: 768 }, "the default is preferred");
  assert.equal(dev.version, SynthvidVersion.WIN10);
  assert.deepEqual(mapped, [VRAM_GPA]);
  assert.equal(linux.dirtNeeded, true, "the host asked for DIRT");
  assert.equal(dev.active, true);
  const f = dev.frame();
  assert.deepEqual([f.width, f.height, f.stride], [1024, 768, 4096]);
  // The guest draws a red pixel at (100, 700) and reports it.
  vram.bytes.set([0, 0, 0xff, 0], 700 * 4096 + 400);
  linux.dirt(100, 700, 101, 701);
  linux.dirt(-5, -5, 5000, 3); // clipped to the frame
  linux.pump();
  assert.deepEqual(changes, [
    "resize",
    'damage {"x":100,"y":700,"width":1,"height":1}',
    'damage {"x":0,"y":0,"width":1024,"height":3}',
  ]);
  assert.deepEqual([...dev.frame().data.subarray(700 * 4096 + 400, 700 * 4096 + 404)], [
    0,
    0,
    255,
    0,
  ]);
  assert.equal(server.stats.deviceErrors, 0);
});

Deno.test("synthvid: modes outside the VRAM, bad depth and refused VRAM GPAs are ignored", () => {
  const mapped: number[] = [];
  const vram = {
    bytes: new Uint8Array(VRAM_BYTES),
    map: (gpa: number) => gpa === VRAM_GPA && (mapped.push(gpa), true),
  };
  const dev = new Synthvid({ vram });
  const { guest } = LoopbackGuest.create({ devices: [dev], memoryBytes: 32 << 20 });
  guest.connect();
  const linux = new LinuxHypervDrm(guest);
  linux.probe();
  for (
    const bad of [
      { widthPixels: 4096, heightPixels: 4096, pitchBytes: 16384, depthBits: 32 },
      { widthPixels: 800, heightPixels: 600, pitchBytes: 3200, depthBits: 16 },
      { widthPixels: 800, heightPixels: 600, pitchBytes: 100, depthBits: 32 },
      { widthPixels: 0, heightPixels: 600, pitchBytes: 3200, depthBits: 32 },
    ]
  ) {
    linux.send(
      SynthvidMessage.SITUATION_UPDATE,
      SituationUpdate.encode({ videoOutputCount: 1, active: 1, ...bad }),
    );
  }
  linux.send(
    SynthvidMessage.VRAM_LOCATION,
    VramLocation.encode({ userCtx: 7n, isVramGpaSpecified: 1, vramGpa: 0x1234n }),
  );
  linux.pump();
  assert.notEqual(VramLocationAck.get(linux.answer!, 0, "userCtx"), 7n, "refusal not echoed");
  assert.deepEqual([dev.frame().width, dev.frame().height], [1024, 768], "mode unchanged");
  assert.equal(dev.stats.malformed, 5);
});

Deno.test("synthvid fuzz: hostile messages never throw, never describe a frame outside the VRAM", () => {
  const { dev, guest, server, vram } = setup();
  const linux = new LinuxHypervDrm(guest);
  linux.probe();
  const rng = prng(0x5e7d);
  const types = Object.values(SynthvidMessage);
  for (let i = 0; i < 5000; i++) {
    const body = new Uint8Array(rng.pick([0, 1, 2, 4, 6, 10, 17, 18, 26, 27, 40, 200, 3000]));
    for (let k = 0; k < body.length; k++) {
      body[k] = rng.chance(0.6) ? rng.pick([0, 1, 0xff, 32]) : rng.int(256);
    }
    const pkt = synthvidPacket(rng.pick(types), body);
    if (rng.chance(0.1)) pkt[0] = rng.int(3);
    linux.ch.send(rng.chance(0.1) ? pkt.subarray(0, rng.int(pkt.length)) : pkt);
    if (i % 16 === 0) linux.pump();
    const f = dev.frame();
    assert.ok(
      f.data.length === 0 ||
        f.data.byteOffset + f.data.length <= vram.bytes.byteOffset + VRAM_BYTES,
    );
    assert.ok((f.height - 1) * f.stride + f.width * 4 <= f.data.length || f.data.length === 0);
    assert.equal(server.stats.deviceErrors, 0);
    assert.equal(server.stats.internalErrors, 0);
  }
  linux.pump();
  assert.deepEqual(linux.errors, []);
});

Deno.test("synthvid is a framebuffer source the console front ends take as is", () => {
  const { dev } = setup();
  const source: FramebufferSource = dev;
  assert.equal(source.frame().width, 1024);
});
