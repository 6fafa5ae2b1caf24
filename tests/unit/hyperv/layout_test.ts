import { assertEquals } from "./assert.ts";
import * as T from "../../../src/hyperv/tlfs.ts";

Deno.test("TLFS wire struct sizes are pinned", () => {
  assertEquals(T.HV_MESSAGE.size, 256);
  assertEquals(T.HV_MESSAGE.fields.payload.offset, 16);
  assertEquals(T.HV_TIMER_MESSAGE_PAYLOAD.size, 24);
  assertEquals(T.HV_REFERENCE_TSC_PAGE.size, 24);
  assertEquals(T.HV_INPUT_POST_MESSAGE.size, 256);
  assertEquals(T.HV_INPUT_SIGNAL_EVENT.size, 8);
  assertEquals(T.HV_TLB_FLUSH.size, 24);
  assertEquals(T.HV_TLB_FLUSH_EX.size, 32);
  assertEquals(T.HV_SEND_IPI.size, 16);
  assertEquals(T.HV_SEND_IPI_EX.size, 24);
});

Deno.test("hypercall page code: endbr64; out 0xE3, al; ret", () => {
  assertEquals([...T.HYPERCALL_PAGE_CODE], [0xf3, 0x0f, 0x1e, 0xfa, 0xe6, 0xe3, 0xc3]);
});
