// Test worker: runs a real-mode guest spinning in `jmp $` until kicked with STOP.
import { Vcpu } from "../../../src/kvm/vcpu.ts";
import { VCPU_REQUEST, VcpuControl } from "../../../src/kvm/vcpu_control.ts";
import { armKicks, runVcpu } from "../../../src/kvm/vcpu_loop.ts";

const scope = globalThis as unknown as {
  onmessage: ((e: MessageEvent) => void) | null;
  postMessage(m: unknown): void;
};
scope.onmessage = (e) => {
  const { fd, runSize, syncRegs, control: sab } = e.data;
  const control = new VcpuControl(sab);
  const vcpu = new Vcpu(fd, 0, runSize, syncRegs);
  const s = vcpu.getSregs();
  s.cs.base = 0n;
  s.cs.selector = 0;
  vcpu.setSregs(s);
  vcpu.setAllRegs({ rip: 0x1000n, rflags: 2n });
  control.publishThread(armKicks(vcpu));
  let kicks = 0;
  const stop = runVcpu(vcpu, {
    pio() {},
    mmio() {},
    rdmsr: () => undefined,
    wrmsr: () => false,
    onKick() {
      kicks++;
      return (control.takeRequests() & VCPU_REQUEST.STOP) === 0;
    },
  });
  control.markExited();
  scope.postMessage({ stop, kicks });
};
