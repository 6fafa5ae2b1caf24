import { strictEqual } from "node:assert/strict";
import { soakProblem, type SoakSample } from "../../soak.ts";

const flat: SoakSample[] = [1, 2, 3, 4, 5, 6].map((minute) => ({
  minute,
  rssKiB: 200_000 + (minute % 2) * 5_000,
  fds: 40 + (minute % 2),
  boots: minute,
}));

Deno.test("soak: steady RSS and fds pass; growth in the last third fails", () => {
  strictEqual(soakProblem(flat), undefined);
  const leaking = flat.map((s) => ({ ...s, rssKiB: 200_000 + s.minute * 100_000 }));
  strictEqual(soakProblem(leaking)?.includes("RSS grew"), true);
  const fds = flat.map((s) => ({ ...s, fds: 40 + s.minute * 5 }));
  strictEqual(soakProblem(fds)?.includes("fds grew"), true);
  strictEqual(soakProblem(flat.slice(0, 2)), undefined, "too few samples to judge");
});
