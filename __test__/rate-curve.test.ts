/**
 * The planner benchmark's trace transforms, by hand: the day curve (same requests, same order,
 * same span, the rate following low..high) and the spreading of requests recorded on one tick.
 */
import { describe, expect, it } from "vitest";
import { InvalidConfigError } from "../ts/errors.js";
import { curveAt, modulateRate, spreadTicks, tileTenants } from "../ts/replay/rate-curve.js";
import type { Trace } from "../ts/replay/trace.js";

function trace(times: number[]): Trace {
  return { file: "t", format: "mooncake", requests: times.map((t, i) => ({ index: i, line: i + 1, timestampMs: t, inputLength: 10, maxTokens: 1, hashIds: [i] })) };
}

describe("rate curve", () => {
  it("spreads a tick's requests evenly to the next tick, the last over the mean tick", () => {
    // Ticks at 0 (3 requests), 3000 (1), 6000 (2): mean tick 3000 ms.
    const t = spreadTicks(trace([0, 0, 0, 3000, 6000, 6000]));
    expect(t.requests.map((r) => r.timestampMs)).toEqual([0, 1000, 2000, 3000, 6000, 7500]);
    expect(t.requests.map((r) => r.index)).toEqual([0, 1, 2, 3, 4, 5]);
    expect(spreadTicks(trace([5])).requests[0]!.timestampMs).toBe(5);
  });

  it("a day curve keeps order and span; the rate at the peak is high / low times the trough's", () => {
    const times = Array.from({ length: 10_001 }, (_, i) => i * 10); // 100 req/s for 100 s
    const t = modulateRate(trace(times), { periods: 1, low: 0.1, high: 1 });
    const out = t.requests.map((r) => r.timestampMs);
    for (let i = 1; i < out.length; i++) expect(out[i]!).toBeGreaterThanOrEqual(out[i - 1]!);
    expect(out[0]).toBe(0);
    expect(out[out.length - 1]).toBe(100_000);
    // Requests within 2 s of the start (trough) and of the middle (peak).
    const within = (a: number, b: number) => out.filter((x) => x >= a && x < b).length;
    const ratio = within(49_000, 51_000) / within(0, 2_000);
    expect(ratio).toBeGreaterThan(8);
    expect(ratio).toBeLessThan(10.5);
    expect(curveAt(50, 100, { low: 0.1, high: 1 })).toBeCloseTo(1, 12);
    expect(() => modulateRate(trace(times), { low: 0 })).toThrow(InvalidConfigError);
  });

  it("tenants: K copies with prefixes of their own, each rotated by 1/K of the span, renumbered", () => {
    // Span 0..300 (period 301): copy 1 shifted by 151 (mod 301) lands at 151, 251, 50 and 150 (the last two wrapped).
    const base = { file: "t", format: "mooncake" as const, requests: [0, 100, 200, 300].map((t, i) => ({ index: i, line: i + 1, timestampMs: t, inputLength: 1024, maxTokens: 1, hashIds: [7, 7 + i] })) };
    const t = tileTenants(base, 2);
    expect(t.requests.map((r) => r.timestampMs)).toEqual([0, 50, 100, 150, 151, 200, 251, 300]);
    expect(t.requests.map((r) => r.index)).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    // Block ids up to 10: copy 1's ids move by 11, so no prefix is shared between copies.
    expect(t.requests.map((r) => r.hashIds)).toEqual([[7, 7], [18, 20], [7, 8], [18, 21], [18, 18], [7, 9], [18, 19], [7, 10]]);
    expect(tileTenants(base, 1)).toBe(base);
    expect(() => tileTenants(base, 0)).toThrow(InvalidConfigError);
    expect(() => tileTenants({ ...base, requests: [{ ...base.requests[0]!, hashIds: undefined }] }, 2)).toThrow(/Mooncake/);
  });
});
