/**
 * Every fuzz target, in one registry: the unit tests run each at a fixed seed
 * (`tests/unit/fuzz/fuzz_test.ts`), `deno task fuzz` runs them all with random seeds
 * (`tests/fuzz/main.ts`). A new guest-facing parser adds its target here.
 * @module
 */
import type { FuzzTarget } from "./target.ts";
import { VMBUS_MESSAGES, VMBUS_RINGS } from "./targets/vmbus.ts";
import { IC_PACKETS } from "./targets/ic.ts";
import { STORVSP_SRBS } from "./targets/storvsp.ts";
import { DOORBELLS, HV_MSRS, HYPERCALL_INPUTS } from "./targets/hyperv.ts";
import { PC_PORTS } from "./targets/pc_ports.ts";
import { QCOW2_METADATA } from "./targets/qcow2.ts";

export type { FuzzTarget } from "./target.ts";

/** The fuzz targets, in the order they run. */
export const FUZZ_TARGETS: readonly FuzzTarget[] = [
  HYPERCALL_INPUTS,
  HV_MSRS,
  DOORBELLS,
  PC_PORTS,
  VMBUS_MESSAGES,
  VMBUS_RINGS,
  IC_PACKETS,
  STORVSP_SRBS,
  QCOW2_METADATA,
];
