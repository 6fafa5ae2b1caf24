/**
 * Hyper-V enlightenment guest tests (issue: enlightenments): a stock Debian 6.1 kernel with two
 * vCPUs detects Hyper-V, uses the hypercall-based TLB flush and IPIs, keeps TSC stable, has the
 * TSC page and the synthetic timer clockevent, and keeps time at the host's rate.
 */
import assert from "node:assert/strict";
import { assertMark, describeRun, guestTest } from "../harness.ts";
import { hvPrivileges, hvRecommendations, parseHvFeatures } from "../../../src/hyperv/mod.ts";

/** Window of the time-rate check: serial latency in the nested machine is a few hundred ms. */
const SECONDS = 40;

guestTest(
  "Hyper-V: detection, hints, PV TLB flush and IPIs, stable TSC, TSC page, stimer, host-rate time",
  {
    cpus: 2,
    memory: "512M",
    timeoutMs: 300_000,
    script: `
    dm() { dmesg | grep -c "$1"; }
    hd_mark detected "$(dm 'Hypervisor detected: Microsoft Hyper-V')"
    hd_mark hints "$(dmesg | grep -o 'Hyper-V: privilege flags low 0x[0-9a-f]*, high 0x[0-9a-f]*, hints 0x[0-9a-f]*' | head -1)"
    hd_mark paravirt "$(dm 'Booting paravirtualized kernel on Hyper-V')"
    hd_mark tlbflush "$(dm 'Using hypercall for remote TLB flush')"
    hd_mark ipi "$(dm 'Using IPI hypercalls')"
    hd_mark tsc_unstable "$(dm 'Marking TSC unstable')"
    cs=/sys/devices/system/clocksource/clocksource0
    hd_mark clocksource "$(cat $cs/current_clocksource)"
    hd_mark available "$(cat $cs/available_clocksource)"
    hd_mark clockevent "$(cat /sys/devices/system/clockevents/clockevent0/current_device)"
    # Select the TSC page by hand: it must keep time too.
    echo hyperv_clocksource_tsc_page > $cs/current_clocksource
    hd_mark selected "$(cat $cs/current_clocksource)"
    sleep 2 # let the clocksource switch (stop_machine, IPIs) settle before the first sample
    hd_mark t0 "$(cut -d' ' -f1 /proc/uptime)"
    sleep ${SECONDS}
    hd_mark t1 "$(cut -d' ' -f1 /proc/uptime)"
    hd_mark stimer_ticks "$(awk '/HVS:/ {print ($2 > 0 && $3 > 0) ? "both" : "not-both"}' /proc/interrupts)"
  `,
  },
  (run) => {
    assertMark(run, "detected", "1");
    // The CPUID leaves Linux read are the ones `--hv all` builds (0x40000003 EAX/EBX, 0x40000004
    // EAX), and they carry the bits these features rest on (TLFS bit numbers, spelled out).
    const m = /^Hyper-V: privilege flags low 0x([0-9a-f]+), high 0x([0-9a-f]+), hints 0x([0-9a-f]+)/
      .exec(run.marks.get("hints") ?? "");
    assert.ok(m, `no hints line: ${run.marks.get("hints")}\n${describeRun(run, 20)}`);
    const [low, high, hints] = [m[1]!, m[2]!, m[3]!].map((h) => parseInt(h, 16)) as [
      number,
      number,
      number,
    ];
    const all = parseHvFeatures("all");
    const priv = hvPrivileges(all, true);
    assert.equal(low, priv.eax, `privilege flags low 0x${low.toString(16)}`);
    assert.equal(high, priv.ebx, `privilege flags high 0x${high.toString(16)}`);
    assert.equal(hints, hvRecommendations(all), `hints 0x${hints.toString(16)}`);
    const bits = (v: number, named: Record<string, number>) =>
      Object.entries(named).filter(([, b]) => (v & (1 << b)) === 0).map(([n]) => n);
    assert.deepEqual(
      bits(hints, {
        remoteTlbFlush: 2,
        relaxedTiming: 5,
        deprecatingAutoEoi: 9,
        clusterIpi: 10,
        exProcessorMasks: 11,
      }),
      [],
      `hints 0x${hints.toString(16)} lacks bits`,
    );
    assert.deepEqual(
      bits(low, { vpRuntime: 0, timeRefCount: 1, synic: 2, stimer: 3, hypercall: 5, vpIndex: 6 }),
      [],
      `privilege flags low 0x${low.toString(16)} lack bits`,
    );
    assert.deepEqual(
      bits(high, { postMessages: 4, signalEvents: 5 }),
      [],
      `privilege flags high 0x${high.toString(16)} lack bits`,
    );
    assertMark(run, "paravirt", "1");
    assertMark(run, "tlbflush", "1");
    assertMark(run, "ipi", "1");
    assertMark(run, "tsc_unstable", "0");
    // HV_ACCESS_TSC_INVARIANT makes Linux trust the TSC and rate the TSC page lower (250).
    assertMark(run, "clocksource", "tsc");
    assertMark(run, "available", /hyperv_clocksource_tsc_page/);
    assertMark(run, "clockevent", "Hyper-V clockevent");
    assertMark(run, "selected", "hyperv_clocksource_tsc_page");
    assertMark(run, "stimer_ticks", "both");
    const guest = Number(run.marks.get("t1")) - Number(run.marks.get("t0"));
    const host = run.markArrivals.get("t1")! - run.markArrivals.get("t0")!;
    const ratio = guest / host;
    assert.ok(
      Math.abs(ratio - 1) < 0.01,
      `guest/host time ratio ${ratio} (guest ${guest} s, host ${host} s)\n${describeRun(run, 20)}`,
    );
  },
);
