import assert from "node:assert/strict";
import {
  NdisOffload,
  NdisRssCaps,
  NvspInit,
  NvspInitComplete,
  NvspNdisConfig,
  NvspRecvBufComplete,
  NvspRndisPacket,
  NvspSendBufComplete,
  RndisInit,
  RndisInitComplete,
  RndisPacket,
  RndisPpi,
  RndisQuery,
  RndisQueryComplete,
} from "../../../../src/devices/net/protocol.ts";
import { offloadCapabilities } from "../../../../src/devices/net/rndis.ts";

Deno.test("net protocol: layout sizes match Linux's structs", () => {
  assert.equal(NvspInit.size, 12);
  assert.equal(NvspInitComplete.size, 16);
  assert.equal(NvspNdisConfig.size, 20);
  assert.equal(NvspRecvBufComplete.size, 28, "Linux needs >= 28 payload bytes");
  assert.equal(NvspSendBufComplete.size, 12);
  assert.equal(NvspRndisPacket.size, 16);
  assert.equal(RndisInit.size, 16);
  assert.equal(RndisInitComplete.size, 44);
  assert.equal(RndisQuery.size, 20);
  assert.equal(RndisQueryComplete.size, 16);
  assert.equal(RndisPacket.size, 36);
  assert.equal(RndisPpi.size, 12);
  assert.equal(NdisOffload.size, 156, "ndis_offload rev 3 (NDIS 6.30)");
  assert.equal(NdisRssCaps.size, 18);
});

Deno.test("net protocol: offload capabilities satisfy rndis_query_hwcaps and enable TSO", () => {
  const caps = offloadCapabilities(true);
  const dv = new DataView(caps.buffer);
  assert.equal(caps[0], 0xa7);
  assert.ok(caps[1]! >= 1);
  const size = dv.getUint16(2, true);
  assert.ok(size >= 112 && size <= caps.length);
  assert.equal(dv.getUint32(8, true) & 0x14, 0x14, "NDIS_TXCSUM_ALL_TCP4");
  assert.equal(dv.getUint32(80, true) & 2, 2, "LSOv2 IPv4 802.3");
  assert.equal(dv.getUint32(104, true) & 5, 5, "NDIS_LSOV2_CAP_IP6");
  const none = offloadCapabilities(false);
  assert.equal(new DataView(none.buffer).getUint32(8, true), 0);
});
