/** storvsp wire format: struct sizes and offsets pinned, version helpers. */
import {
  ChannelProperties,
  FcWwnPacket,
  formatVstorVersion,
  isSupportedVstorVersion,
  MAX_VSTOR_PACKET_SIZE,
  ProtocolVersion,
  SCSI_CLASS_ID,
  SrbStatus,
  srbToNtStatus,
  VMSCSI_WIN8_EXTENSION_SIZE,
  VmscsiRequest,
  VstorPacketHeader,
  vstorPacketSize,
  VstorStatus,
  VstorVersion,
  vstorVersion,
} from "../../../../src/devices/storage/protocol.ts";
import { assertEquals } from "./helpers.ts";

Deno.test("protocol: struct sizes match storvsc_drv.c", () => {
  assertEquals(VstorPacketHeader.size, 12);
  assertEquals(VmscsiRequest.size, 0x34);
  assertEquals(VmscsiRequest.fields.cdb.offset, 16);
  assertEquals(VmscsiRequest.fields.srbFlags.offset, 40);
  assertEquals(ChannelProperties.size, 24);
  assertEquals(ChannelProperties.fields.maxTransferBytes.offset, 12);
  assertEquals(ProtocolVersion.size, 4);
  assertEquals(FcWwnPacket.size, 36);
  assertEquals(MAX_VSTOR_PACKET_SIZE, 64);
  assertEquals(VMSCSI_WIN8_EXTENSION_SIZE, 16);
});

Deno.test("protocol: versions and packet sizes per revision", () => {
  assertEquals(vstorVersion(6, 2), VstorVersion.WIN10);
  assertEquals(vstorVersion(4, 2), 0x0402);
  assertEquals(formatVstorVersion(VstorVersion.WIN8), "5.1");
  assertEquals(vstorPacketSize(VstorVersion.WIN6), 48);
  assertEquals(vstorPacketSize(VstorVersion.WIN7), 48);
  assertEquals(vstorPacketSize(VstorVersion.WIN8), 64);
  assertEquals(vstorPacketSize(VstorVersion.WIN10), 64);
  assertEquals(isSupportedVstorVersion(0x0602), true);
  assertEquals(isSupportedVstorVersion(0x0700), false);
  assertEquals(SCSI_CLASS_ID, "ba6163d9-04a1-4d29-b605-72e2ffb1dc7f");
  assertEquals(srbToNtStatus(SrbStatus.SUCCESS | 0x80), VstorStatus.SUCCESS);
  assertEquals(srbToNtStatus(SrbStatus.INVALID_LUN), VstorStatus.DEVICE_DOES_NOT_EXIST);
  assertEquals(srbToNtStatus(SrbStatus.ERROR | 0x80), VstorStatus.IO_DEVICE_ERROR);
});
