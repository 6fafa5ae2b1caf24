/**
 * storvsp end to end through the real `VmbusServer`: `StorvscGuest` plays storvsc's init
 * sequence and I/O (GPA-direct page lists in guest memory) over `LoopbackGuest`.
 */
import {
  ChannelProperties,
  SRB_STATUS_AUTOSENSE_VALID,
  SrbStatus,
  STORAGE_CHANNEL_SUPPORTS_MULTI_CHANNEL,
  VstorOperation,
  VstorStatus,
  VstorVersion,
} from "../../../../src/devices/storage/protocol.ts";
import { RawFileBackend } from "../../../../src/devices/storage/backend/raw.ts";
import { ScsiController } from "../../../../src/devices/storage/scsi/controller.ts";
import { ScsiDisk } from "../../../../src/devices/storage/scsi/disk.ts";
import { decodeSense } from "../../../../src/devices/storage/scsi/sense.ts";
import { Asc, SenseKey } from "../../../../src/devices/storage/scsi/constants.ts";
import {
  assert,
  assertEquals,
  be32,
  MemoryBackend,
  pattern,
  StorvscGuest,
  tempDir,
  vstorPacket,
} from "./helpers.ts";

Deno.test("storvsp: Linux 6.1 init negotiates 6.2 with 64-byte replies and reports properties", async () => {
  const g = StorvscGuest.withDisks([new MemoryBackend(1 << 20)], {
    maxSubChannels: 3,
    maxTransferBytes: 512 << 10,
  });
  const { version, properties } = await g.init();
  assertEquals(version, VstorVersion.WIN10);
  assertEquals(g.device.state, "ready");
  assertEquals(properties.packetSize, 64);
  const p = ChannelProperties.decode(properties.payload, 12)!;
  assertEquals(p.maxChannelCount, 3);
  assertEquals(p.flags, STORAGE_CHANNEL_SUPPORTS_MULTI_CHANNEL);
  assertEquals(p.maxTransferBytes, 512 << 10);
});

Deno.test("storvsp: a pre-Win8 guest (4.2, 48-byte packets) gets 48-byte completions, no multi-channel", async () => {
  const g = StorvscGuest.withDisks([new MemoryBackend(1 << 20)], { maxSubChannels: 3 });
  const { version, properties } = await g.init([VstorVersion.WIN7], 48);
  assertEquals(version, VstorVersion.WIN7);
  assertEquals(properties.packetSize, 48);
  assertEquals(ChannelProperties.decode(properties.payload, 12)!.flags, 0);
  const pages = g.pages(1);
  const tid = g.sendSrb({
    cdb: [0x12, 0, 0, 0, 36, 0],
    dataIn: 1,
    pages,
    length: 36,
    packetSize: 48,
  });
  const r = await g.wait(tid);
  assertEquals(r.packetSize, 48);
  assertEquals(r.srbStatus, SrbStatus.SUCCESS);
  assertEquals(r.dataTransferLength, 36);
});

Deno.test("storvsp: unknown versions get REVISION_MISMATCH, out-of-order operations INVALID_DEVICE_STATE", async () => {
  const g = StorvscGuest.withDisks([new MemoryBackend(1 << 20)]);
  // EXECUTE_SRB before init.
  let r = await g.call(vstorPacket(VstorOperation.EXECUTE_SRB));
  assertEquals(r.status, VstorStatus.INVALID_DEVICE_STATE);
  r = await g.call(vstorPacket(VstorOperation.BEGIN_INITIALIZATION));
  assertEquals(r.status, 0);
  const v = new Uint8Array([0x00, 0x07, 0, 0]);
  r = await g.call(vstorPacket(VstorOperation.QUERY_PROTOCOL_VERSION, 64, v));
  assertEquals(r.status, VstorStatus.REVISION_MISMATCH);
  r = await g.call(vstorPacket(VstorOperation.END_INITIALIZATION));
  assertEquals(r.status, VstorStatus.INVALID_DEVICE_STATE);
  r = await g.call(vstorPacket(99));
  assertEquals(r.status, VstorStatus.INVALID_DEVICE_STATE);
  const ok = new Uint8Array([0x01, 0x05, 0, 0]);
  r = await g.call(vstorPacket(VstorOperation.QUERY_PROTOCOL_VERSION, 64, ok));
  assertEquals(r.status, 0);
  assertEquals(g.device.version, VstorVersion.WIN8);
  assert(g.device.stats.protocolErrors >= 3);
});

Deno.test("storvsp: reads a pattern the host wrote into a raw file, writes through to the file", async () => {
  using dir = tempDir();
  const path = `${dir.path}/disk.raw`;
  const content = pattern(4 << 20, 7);
  Deno.writeFileSync(path, content);
  const backend = RawFileBackend.open(path);
  const g = StorvscGuest.withDisks([backend]);
  await g.init();
  // 64 KiB at LBA 100 into scattered pages, starting 512 bytes into the first page.
  const { reply, data } = await g.rw("read", 100, 128, { scattered: true, offset: 512 });
  assertEquals(reply.operation, VstorOperation.COMPLETE_IO);
  assertEquals(reply.srbStatus, SrbStatus.SUCCESS);
  assertEquals(reply.scsiStatus, 0);
  assertEquals(reply.dataTransferLength, 128 * 512);
  assertEquals(data, content.subarray(100 * 512, 228 * 512));
  // Write 40 KiB at LBA 2000 from scattered pages; the file changes.
  const out = pattern(80 * 512, 9);
  const w = await g.rw("write", 2000, 80, { data: out, scattered: true });
  assertEquals(w.reply.srbStatus, SrbStatus.SUCCESS);
  assertEquals(w.reply.dataTransferLength, 80 * 512);
  const file = Deno.readFileSync(path);
  assertEquals(file.subarray(2000 * 512, 2080 * 512), out);
  assertEquals(file.subarray(0, 2000 * 512), content.subarray(0, 2000 * 512));
  backend.close();
});

Deno.test("storvsp: many commands in flight complete out of order, all answered", async () => {
  const mem = new MemoryBackend(8 << 20);
  mem.bytes.set(pattern(mem.size, 3));
  mem.delayMs = 2;
  const g = StorvscGuest.withDisks([mem]);
  await g.init();
  const tids: { tid: bigint; lba: number; pages: number[] }[] = [];
  for (let i = 0; i < 40; i++) {
    const lba = (i * 37) % 8000;
    const pages = g.pages(1);
    const tid = g.sendSrb({
      cdb: [0x28, 0, ...be32(lba), 0, 0, 8, 0],
      dataIn: 1,
      pages,
      length: 4096,
    });
    tids.push({ tid, lba, pages });
  }
  for (const t of tids) {
    const r = await g.wait(t.tid);
    assertEquals(r.srbStatus, SrbStatus.SUCCESS);
    assertEquals(g.collect(t.pages, 0, 4096), mem.bytes.subarray(t.lba * 512, t.lba * 512 + 4096));
  }
  assert(mem.maxInflight > 4, `max in flight ${mem.maxInflight}`);
  assertEquals(g.device.inflight, 0);
});

Deno.test("storvsp: completions wait for ring space and the queue depth limits reading", async () => {
  const mem = new MemoryBackend(1 << 20);
  const c = new ScsiController();
  c.attach(0, new ScsiDisk(mem));
  const g = StorvscGuest.open(c, { queueDepth: 4, ringPages: 2 });
  // Give the guest a large send ring but a one-page receive ring.
  g.guest.close(g.ch);
  g.ch = g.guest.open(g.offer, { sendPages: 16, recvPages: 2 });
  await g.init();
  const n = 120;
  const tids: bigint[] = [];
  for (let i = 0; i < n; i++) {
    tids.push(g.sendSrb({ cdb: [0x00, 0, 0, 0, 0, 0] }));
  }
  // Let the host run without the guest reading its ring.
  for (let i = 0; i < 20; i++) {
    g.guest.runDeferred();
    await new Promise((r) => setTimeout(r, 1));
  }
  assert(g.device.stats.backlogged > 0, "some completions waited for ring space");
  for (const tid of tids) assertEquals((await g.wait(tid)).srbStatus, SrbStatus.SUCCESS);
  assertEquals(g.device.stats.completions, n + 4);
});

Deno.test("storvsp: CREATE_SUB_CHANNELS offers sub-channels that carry I/O; too many is refused", async () => {
  const mem = new MemoryBackend(1 << 20);
  mem.bytes.set(pattern(mem.size, 5));
  const g = StorvscGuest.withDisks([mem], { maxSubChannels: 2 });
  await g.init();
  const body = new Uint8Array([3, 0]);
  let r = await g.call(vstorPacket(VstorOperation.CREATE_SUB_CHANNELS, 64, body));
  assertEquals(r.status, VstorStatus.INVALID_PARAMETER);
  body[0] = 2;
  r = await g.call(vstorPacket(VstorOperation.CREATE_SUB_CHANNELS, 64, body));
  assertEquals(r.status, 0);
  const subs = g.guest.subChannelOffers(g.offer);
  assertEquals(subs.map((s) => s.subChannelIndex), [1, 2]);
  const chs = subs.map((s) => g.guest.open(s, { targetVp: s.subChannelIndex }));
  for (const ch of chs) {
    const pages = g.pages(1);
    const tid = g.sendSrb(
      { cdb: [0x28, 0, 0, 0, 0, 4, 0, 0, 1, 0], dataIn: 1, pages, length: 512 },
      ch,
    );
    const reply = await g.wait(tid, [ch]);
    assertEquals(reply.srbStatus, SrbStatus.SUCCESS);
    assertEquals(g.collect(pages, 0, 512), mem.bytes.subarray(2048, 2560));
  }
});

Deno.test("storvsp: hot add and remove send ENUMERATE_BUS; REPORT LUNS and INVALID_LUN follow", async () => {
  const g = StorvscGuest.withDisks([new MemoryBackend(1 << 20)]);
  await g.init();
  g.controller.attach(3, new ScsiDisk(new MemoryBackend(2 << 20)));
  g.poll();
  assertEquals(g.unsolicited.map((u) => u.operation), [VstorOperation.ENUMERATE_BUS]);
  assertEquals(g.unsolicited[0]!.packetSize, 64);
  const pages = g.pages(1);
  let tid = g.sendSrb({
    cdb: [0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0],
    dataIn: 1,
    pages,
    length: 256,
  });
  let r = await g.wait(tid);
  assertEquals(r.dataTransferLength, 24);
  assertEquals([...g.collect(pages, 0, 24)], [
    0,
    0,
    0,
    16,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    3,
    0,
    0,
    0,
    0,
    0,
    0,
  ]);
  g.controller.detach(3);
  g.poll();
  assertEquals(g.unsolicited.length, 2);
  tid = g.sendSrb({ cdb: [0x00, 0, 0, 0, 0, 0], lun: 3 });
  r = await g.wait(tid);
  assertEquals(r.srbStatus, SrbStatus.INVALID_LUN);
  assertEquals(r.status, VstorStatus.DEVICE_DOES_NOT_EXIST);
  // INQUIRY to a missing LUN: peripheral qualifier 3, so the guest adds no device.
  tid = g.sendSrb({ cdb: [0x12, 0, 0, 0, 36, 0], lun: 3, dataIn: 1, pages, length: 36 });
  r = await g.wait(tid);
  assertEquals(r.srbStatus, SrbStatus.SUCCESS);
  assertEquals(g.collect(pages, 0, 1)[0], 0x7f);
});

Deno.test("storvsp: CHECK CONDITION carries autosense (srb 0x84, 18 bytes of fixed sense)", async () => {
  const g = StorvscGuest.withDisks([new MemoryBackend(1 << 20)]);
  await g.init();
  const tid = g.sendSrb({ cdb: [0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0], cdbLength: 10 });
  const r = await g.wait(tid);
  assertEquals(r.srbStatus, SrbStatus.ERROR | SRB_STATUS_AUTOSENSE_VALID);
  assertEquals(r.scsiStatus, 2);
  assertEquals(r.senseLength, 18);
  assertEquals(decodeSense(r.sense), {
    key: SenseKey.ILLEGAL_REQUEST,
    asc: Asc.INVALID_COMMAND_OPERATION_CODE,
  });
  assertEquals(r.status, VstorStatus.IO_DEVICE_ERROR);
});

Deno.test("storvsp: page lists that disagree with the transfer length are refused, the channel goes on", async () => {
  const mem = new MemoryBackend(1 << 20);
  const g = StorvscGuest.withDisks([mem]);
  await g.init();
  const pages = g.pages(2);
  const read8 = [0x28, 0, 0, 0, 0, 0, 0, 0, 8, 0];
  // data_transfer_length larger than the page list.
  let r = await g.wait(g.sendSrb({ cdb: read8, dataIn: 1, pages, length: 8192, rangeBytes: 4096 }));
  assertEquals(r.srbStatus, SrbStatus.INVALID_REQUEST);
  assertEquals(r.dataTransferLength, 0);
  // Pages outside guest RAM.
  r = await g.wait(g.sendSrb({ cdb: read8, dataIn: 1, pages: [0x4000_0000], length: 4096 }));
  assertEquals(r.srbStatus, SrbStatus.INVALID_REQUEST);
  // In-band packet that claims data.
  r = await g.wait(g.sendSrb({ cdb: read8, dataIn: 1, length: 4096 }));
  assertEquals(r.srbStatus, SrbStatus.INVALID_REQUEST);
  // CDB lengths 0 and 17.
  r = await g.wait(g.sendSrb({ cdb: [0, 0, 0, 0, 0, 0], cdbLength: 0 }));
  assertEquals(r.srbStatus, SrbStatus.INVALID_REQUEST);
  r = await g.wait(g.sendSrb({ cdb: [0, 0, 0, 0, 0, 0], cdbLength: 17 }));
  assertEquals(r.srbStatus, SrbStatus.INVALID_REQUEST);
  // A transfer length in the CDB larger than the buffer: INVALID FIELD IN CDB.
  r = await g.wait(g.sendSrb({ cdb: read8, dataIn: 1, pages, length: 2048 }));
  assertEquals(r.scsiStatus, 2);
  assertEquals(decodeSense(r.sense).asc, Asc.INVALID_FIELD_IN_CDB);
  // A buffer larger than the transfer: the residual stays with the guest.
  r = await g.wait(g.sendSrb({ cdb: read8, dataIn: 1, pages, length: 8192 }));
  assertEquals([r.srbStatus, r.dataTransferLength], [SrbStatus.SUCCESS, 4096]);
  assertEquals(g.device.stats.malformed, 0);
});

Deno.test("storvsp: a malformed packet stops that channel only; reopening starts over", async () => {
  const g = StorvscGuest.withDisks([new MemoryBackend(1 << 20)]);
  await g.init();
  g.ch.send(new Uint8Array(8), { completionRequested: true, transactionId: 77n });
  const tid = g.send(vstorPacket(VstorOperation.EXECUTE_SRB));
  for (let i = 0; i < 5; i++) {
    g.poll();
    await new Promise((r) => setTimeout(r, 1));
  }
  assertEquals(g.device.stats.malformed, 1);
  assert(!g.replies.has(tid) && !g.replies.has(77n), "a stopped channel answers nothing");
  assert(g.guest.close(g.ch));
  assertEquals(g.device.state, "begin");
  g.ch = g.guest.open(g.offer);
  const { version } = await g.init();
  assertEquals(version, VstorVersion.WIN10);
  assertEquals(g.guest.server.stats.deviceErrors, 0);
});
