/**
 * The burst floor (an interval's own arrivals replayed onto idle workers) and the asymmetric
 * scale-down, against hand-traced cases.
 */
import { describe, expect, it } from "vitest";
import { InvalidConfigError } from "../ts/errors.js";
import { burstMissShare, burstWorkers, RecentMax } from "../ts/planner/burst-floor.js";
import { ReplicaGovernor } from "../ts/planner/governor.js";
import { parsePlannerConfig } from "../ts/planner/config.js";
import { parseProfile } from "../ts/planner/profile.js";
import { ProfileModel } from "../ts/planner/interpolate.js";
import { SlaPlanner, type IntervalObservation } from "../ts/planner/sla-planner.js";
import { HAND_PROFILE } from "./planner-profile.test.js";

const profile = parseProfile(HAND_PROFILE, "hand");
const targets = { ttftMs: 500, itlMs: 35 };

describe("burst floor", () => {
  it("replays a clump onto c idle workers, each request on the worker free first (hand-traced)", () => {
    // Four 600 ms prefills at once, target 1,000 ms. One worker: TTFTs 600, 1200, 1800, 2400 (3 of 4
    // miss); two: 600, 600, 1200, 1200 (2 of 4); four: all 600.
    const clump = [0, 0, 0, 0].map((atMs) => ({ atMs, serviceMs: 600 }));
    expect(burstMissShare(clump, 1, 1000)).toBe(0.75);
    expect(burstMissShare(clump, 2, 1000)).toBe(0.5);
    expect(burstMissShare(clump, 4, 1000)).toBe(0);
    expect(burstWorkers(clump, 1000, 0.05)).toBe(4);
    expect(burstWorkers(clump, 1000, 0.5)).toBe(2);
    // Spread 600 ms apart, one worker serves them all in time.
    expect(burstWorkers([0, 600, 1200, 1800].map((atMs) => ({ atMs, serviceMs: 600 })), 1000, 0)).toBe(1);
    // Arrival order, not input order.
    expect(burstWorkers([1800, 0, 1200, 600].map((atMs) => ({ atMs, serviceMs: 600 })), 1000, 0)).toBe(1);
  });

  it("a prompt no worker serves in time holds a worker but is not counted; stretch slows every prefill", () => {
    // 1,500 ms (unservable) then two of 600 at once. Two workers: the long one takes w0 until 1500;
    // 600 on w1 (TTFT 600), the next waits for w1 (TTFT 1200): 1 of 2 servable missed.
    const a = [{ atMs: 0, serviceMs: 1500 }, { atMs: 0, serviceMs: 600 }, { atMs: 0, serviceMs: 600 }];
    expect(burstMissShare(a, 2, 1000)).toBe(0.5);
    expect(burstMissShare(a, 3, 1000)).toBe(0);
    expect(burstWorkers(a, 1000, 0.05)).toBe(3);
    // Stretch 1.5: 600 -> 900 ms; two at once on one worker: 900 and 1800.
    expect(burstMissShare(a.slice(1), 1, 1000, 1.5)).toBe(0.5);
    // c = 1 and 2 cannot hold the decode load (stretch Infinity): the count starts at 3.
    expect(burstWorkers(a.slice(1), 1000, 0, (c) => (c > 2 ? 1 : Number.POSITIVE_INFINITY))).toBe(3);
    expect(burstWorkers([], 1000, 0.05)).toBe(0);
  });

  it("keeps the largest need of the last intervals", () => {
    const r = new RecentMax(3);
    expect(r.value).toBe(0);
    for (const v of [1, 5, 2]) r.add(v);
    expect(r.value).toBe(5);
    r.add(1);
    r.add(1);
    expect(r.value).toBe(2);
  });

  it("the SLA planner holds the workers a clump needed, and says so; 0 turns it off", () => {
    // 20 requests on one millisecond, each 1,000 uncached tokens (the hand profile's prefill of
    // 1,000 tokens is well within 500 ms on an idle worker, but 20 at once queue).
    const n = 20;
    const obs: IntervalObservation = {
      intervalS: 10,
      requests: n,
      inputTokens: n * 1000,
      cachedTokens: 0,
      outputTokens: n * 50,
      ttftMs: null,
      itlMs: null,
      uncachedTokens: new Array(n).fill(1000),
      arrivalsMs: new Array(n).fill(5),
    };
    const m = new ProfileModel(profile);
    const s = (1000 * 1000) / m.prefill.thptPerGpu(1000);
    const perWorker = Math.floor(500 / s);
    const on = new SlaPlanner({ profile, targets, adjustmentIntervalS: 10, corrections: false, observedRateFloor: false });
    const off = new SlaPlanner({ profile, targets, adjustmentIntervalS: 10, corrections: false, observedRateFloor: false, burstWindowS: 0 });
    const dOn = on.decide(obs, { aggregated: 1 });
    const dOff = off.decide(obs, { aggregated: 1 });
    expect(dOff.wanted.aggregated!).toBeLessThan(dOn.wanted.aggregated!);
    // At least ceil(20 / prefills one worker fits in the target), more with decode sharing the worker.
    expect(dOn.wanted.aggregated!).toBeGreaterThanOrEqual(Math.ceil(n / perWorker));
    expect(dOn.reasons.join("\n")).toMatch(/burst floor: the last 300 s of arrivals needed/);
    expect(() => new SlaPlanner({ profile, targets, adjustmentIntervalS: 10, burstWindowS: -1 })).toThrow(InvalidConfigError);
  });
});

describe("asymmetric scale-down", () => {
  it("removes at most downStepMax of the fleet a decision (hand-traced)", () => {
    const g = new ReplicaGovernor({ min: 1, downStepMax: 0.25, downCooldownIntervals: 0 });
    expect(g.decide(20).target).toBe(20);
    expect(g.decide(1).target).toBe(20); // vote 1
    const d = g.decide(1); // vote 2: 20 - floor(20 x 0.25) = 15
    expect(d.target).toBe(15);
    expect(d.reason).toMatch(/at most 25% removed a decision/);
    expect(g.decide(1).target).toBe(15); // votes restart after a change
    expect(g.decide(1).target).toBe(12); // 15 - floor(3.75)
    const small = new ReplicaGovernor({ min: 1, downStepMax: 0.25, downCooldownIntervals: 0 }, 3);
    small.decide(0.1);
    expect(small.decide(0.1).target).toBe(2); // at least one worker a step
    expect(() => new ReplicaGovernor({ downStepMax: 0 })).toThrow(/downStepMax/);
    expect(() => new ReplicaGovernor({ downStepMax: 1.5 })).toThrow(/downStepMax/);
  });

  it("the SLA planner steps down by a quarter by default; Dynamo's formulas set counts as they come", () => {
    const big: IntervalObservation = { intervalS: 10, requests: 400, inputTokens: 800_000, cachedTokens: 0, outputTokens: 40_000, ttftMs: null, itlMs: null };
    const tiny: IntervalObservation = { ...big, requests: 1, inputTokens: 2000, outputTokens: 100 };
    const p = new SlaPlanner({ profile, targets, adjustmentIntervalS: 10, corrections: false, governor: { downCooldownIntervals: 0 } });
    const up = p.decide(big, { aggregated: 1 }).target.aggregated!;
    expect(up).toBeGreaterThan(8);
    p.decide(tiny, { aggregated: up });
    expect(p.decide(tiny, { aggregated: up }).target.aggregated).toBe(up - Math.floor(up / 4));
  });
});

describe("planner config", () => {
  it("reads burstWindowS, downStepMax and downMargin, and refuses bad values with the field named", () => {
    const base = { planner: "load", ttftTargetMs: 500, itlTargetMs: 35, minWorkers: 1 };
    const c = parsePlannerConfig({ ...base, burstWindowS: 60, downStepMax: 0.5, downMargin: 0 });
    expect(c.burstWindowS).toBe(60);
    expect(c.downStepMax).toBe(0.5);
    expect(c.downMargin).toBe(0);
    expect(() => parsePlannerConfig({ ...base, downMargin: 0.95 })).toThrow(/downMargin/);
    expect(() => parsePlannerConfig({ ...base, burstWindowS: -1 })).toThrow(/burstWindowS/);
    expect(() => parsePlannerConfig({ ...base, downStepMax: 0 })).toThrow(/downStepMax/);
    expect(() => parsePlannerConfig({ ...base, downStepMax: "half" })).toThrow(/downStepMax/);
  });
});
