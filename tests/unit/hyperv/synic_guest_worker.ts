/**
 * A fake guest VP on its own thread for `synic_threads_test.ts`: enables its SynIC through the
 * MSRs, then consumes `count` messages from SINT2 the way Linux does (read, cmpxchg the type to
 * HVMSG_NONE, EOM if msg_pending), checking every payload is whole.
 * @module
 */
import { GuestMemory } from "../../../src/kvm/guest_memory.ts";
import { SynIC } from "../../../src/hyperv/synic.ts";
import * as T from "../../../src/hyperv/tlfs.ts";

const SIMP = 0x10000;

interface Init {
  state: SharedArrayBuffer;
  ram: SharedArrayBuffer;
  count: number;
}

/** The worker global scope, typed without pulling the worker lib into the shared check. */
const scope = self as unknown as {
  onmessage: ((e: MessageEvent<Init>) => void) | null;
  postMessage(message: unknown): void;
};

scope.onmessage = (e: MessageEvent<Init>) => {
  const { state, ram, count } = e.data;
  const memory = new GuestMemory([{ gpa: 0, bytes: new Uint8Array(ram) }]);
  const synic = new SynIC(state, { memory, msi: { signalMsi() {} } });
  synic.writeMsr(0, T.HV_X64_MSR_SIMP, BigInt(SIMP) | 1n);
  synic.writeMsr(0, T.HV_X64_MSR_SINT0 + 2, 0x40n);
  synic.writeMsr(0, T.HV_X64_MSR_SCONTROL, 1n);
  scope.postMessage({ ready: true });

  const base = SIMP + 2 * 256;
  const words = new Int32Array(ram, base, 64);
  const bytes = new Uint8Array(ram, base, 256);
  let eoms = 0;
  const errors: string[] = [];
  for (let expect = 1; expect <= count;) {
    const type = Atomics.load(words, 0);
    if (type === 0) {
      Atomics.wait(words, 0, 0, 0.05); // let the host thread run on a busy machine
      continue;
    }
    if (type !== expect) errors.push(`got message ${type}, expected ${expect}`);
    const size = bytes[4]!;
    if (size !== 64) errors.push(`message ${type}: payload size ${size}`);
    for (let i = 0; i < size; i++) {
      if (bytes[16 + i] !== (type & 0xff)) {
        errors.push(`message ${type}: torn payload at byte ${i}`);
        break;
      }
    }
    Atomics.compareExchange(words, 0, type, 0);
    if (Atomics.load(bytes, 5) & T.HV_MESSAGE_FLAG_PENDING) {
      synic.writeMsr(0, T.HV_X64_MSR_EOM, 0n);
      eoms++;
    }
    expect = type + 1;
    if (errors.length > 5) break;
  }
  scope.postMessage({ done: true, errors, eoms });
};
