/**
 * The SLA planner's arithmetic against hand-computed cases: replica counts (kvroute's sizing and
 * Dynamo's formulas), the GPU budget, the predictors, the hysteresis governor (no flapping,
 * cooldowns, bounds, hand-made changes), and the planner holding its minimum with no data.
 */
import { describe, expect, it } from "vitest";
import { InvalidConfigError } from "../ts/errors.js";
import { ReplicaGovernor } from "../ts/planner/governor.js";
import { LoadPlanner } from "../ts/planner/load-planner.js";
import { ProfileModel } from "../ts/planner/interpolate.js";
import { ConstantPredictor, HoltPredictor, KalmanPredictor, makePredictor, MovingAveragePredictor, SeasonalPredictor } from "../ts/planner/predictors.js";
import { parseProfile } from "../ts/planner/profile.js";
import { aggregatedReplicas, decodeReplicas, dynamoDecodeReplicas, mixedItlMs, dynamoPrefillReplicas, fitGpuBudget, prefillReplicas } from "../ts/planner/replicas.js";
import { SlaPlanner, type IntervalObservation } from "../ts/planner/sla-planner.js";
import { HAND_PROFILE } from "./planner-profile.test.js";

const profile = parseProfile(HAND_PROFILE, "hand");
const m = new ProfileModel(profile);
const targets = { ttftMs: 500, itlMs: 35 };
const load = { requestsPerS: 10, isl: 2000, osl: 200, hitRate: 0.5 };

describe("replica arithmetic", () => {
  it("prefill: uncached tokens over capacity at the utilization the TTFT target allows", () => {
    // 10 req/s x 2000 x (1 - 0.5) = 10,000 tokens/s; capacity thpt(1000) = 10,000 tokens/s;
    // idle TTFT(1000) = 100 ms, r = 500 / 100 = 5, rho_max = (5 - 1) / (2 + 5 - 1) = 2/3:
    // 10,000 / (10,000 x 2/3) = 1.5.
    const p = prefillReplicas(m, load, targets);
    expect(p.tokensPerS).toBe(10000);
    expect(p.utilization).toBeCloseTo(2 / 3, 12);
    expect(p.replicas).toBeCloseTo(1.5, 12);
    expect(p.reachable).toBe(true);
    // A correction of 2 doubles the idle TTFT: r = 2.5, rho_max = 1.5 / 3.5 = 3/7.
    expect(prefillReplicas(m, load, targets, { prefill: 2, decode: 1 }).replicas).toBeCloseTo(7 / 3, 12);
    // Two GPUs a worker: half the workers.
    const m2 = new ProfileModel({ ...profile, gpusPerWorker: 2 });
    expect(prefillReplicas(m2, load, targets).replicas).toBeCloseTo(0.75, 12);
  });

  it("decode: output tokens over the best throughput within the ITL target at isl + osl/2", () => {
    // context 2000 + 100 = 2100; best point kv 0.56: 0.45 x 1060 + 0.55 x 530 = 768.5 tokens/s.
    const d = decodeReplicas(m, load, targets);
    expect(d.context).toBe(2100);
    expect(d.tokensPerS).toBe(2000);
    expect(d.capacityPerWorker).toBeCloseTo(768.5, 6);
    expect(d.replicas).toBeCloseTo(2000 / 768.5, 6);
    // Correction 35/31 leaves an ITL budget of 31 ms: kv 0.5 (ITL 31.000000000000004 misses by rounding: 0.495).
    const c = decodeReplicas(m, load, targets, { prefill: 1, decode: 35 / 31.5 });
    expect(c.kvUsage).toBeLessThan(0.56);
  });

  it("Dynamo's formulas: every prompt token, no headroom, min(1, p_corr)", () => {
    // 10 x 2000 / 10,000 = 2; a correction above 1 is ignored, below 1 shrinks.
    expect(dynamoPrefillReplicas(m, load)).toBe(2);
    expect(dynamoPrefillReplicas(m, load, { prefill: 3, decode: 1 })).toBe(2);
    expect(dynamoPrefillReplicas(m, load, { prefill: 0.5, decode: 1 })).toBe(1);
    expect(dynamoDecodeReplicas(m, load, targets)).toBe(3);
    expect(dynamoDecodeReplicas(m, { ...load, requestsPerS: 0.001 }, targets, undefined, 2)).toBe(2);
  });

  it("GPU budget: scaled down in proportion, minimums kept", () => {
    expect(fitGpuBudget(4, 6, 1, 1, 20)).toEqual({ prefill: 4, decode: 6, capped: false });
    // 10 GPUs wanted, 5 allowed: 4 x 0.5 = 2, 6 x 0.5 = 3.
    expect(fitGpuBudget(4, 6, 1, 1, 5)).toEqual({ prefill: 2, decode: 3, capped: true });
    // Two GPUs a prefill worker: 4 x 2 + 6 = 14 > 7: floor(2) + floor(3) = 7.
    expect(fitGpuBudget(4, 6, 2, 1, 7)).toEqual({ prefill: 2, decode: 3, capped: true });
    expect(fitGpuBudget(3, 3, 1, 1, 1)).toEqual({ prefill: 1, decode: 1, capped: true });
  });
});

describe("predictors", () => {
  it("nothing before data", () => {
    for (const name of ["constant", "moving-average", "holt", "kalman"]) expect(makePredictor(name).predict()).toBeNull();
    expect(new SeasonalPredictor(4).predict()).toBeNull();
  });

  it("constant and moving average", () => {
    const c = new ConstantPredictor();
    c.add(3);
    c.add(5);
    expect(c.predict()).toBe(5);
    const a = new MovingAveragePredictor(3);
    for (const v of [1, 2, 3, 4]) a.add(v);
    expect(a.predict()).toBe(3);
  });

  it("Holt: level and trend by hand", () => {
    const h = new HoltPredictor(0.5, 0.3);
    h.add(10);
    expect(h.predict()).toBe(10);
    h.add(20); // level 15, trend 1.5
    expect(h.predict()).toBeCloseTo(16.5, 12);
    h.add(30); // level 0.5 x 30 + 0.5 x 16.5 = 23.25, trend 0.3 x 8.25 + 0.7 x 1.5 = 3.525
    expect(h.predict()).toBeCloseTo(26.775, 12);
  });

  it("Kalman follows a ramp", () => {
    const k = new KalmanPredictor();
    for (let i = 1; i <= 10; i++) k.add(10 * i);
    expect(k.predict()!).toBeGreaterThan(104);
    expect(k.predict()!).toBeLessThan(116);
  });

  it("seasonal: an exact repeating pattern is predicted exactly; Holt until one period", () => {
    const s = new SeasonalPredictor(4);
    s.add(10);
    s.add(20);
    // Holt(0.4, 0.1) meanwhile: level 0.4 x 20 + 0.6 x 10 = 14, trend 0.1 x 4 = 0.4.
    expect(s.predict()).toBeCloseTo(14.4, 12);
    const s2 = new SeasonalPredictor(4);
    for (let i = 0; i < 20; i++) s2.add([10, 20, 30, 20][i % 4]!);
    expect(s2.predict()).toBeCloseTo(10, 9);
    s2.add(10);
    expect(s2.predict()).toBeCloseTo(20, 9);
  });

  it("forecasts are never negative; bad settings are config errors", () => {
    const h = new HoltPredictor(1, 1);
    h.add(100);
    h.add(0);
    expect(h.predict()).toBe(0);
    expect(() => makePredictor("prophet")).toThrow(InvalidConfigError);
    expect(() => makePredictor("seasonal")).toThrow(/needs a period/);
    expect(() => new MovingAveragePredictor(0)).toThrow(/window/);
  });
});

describe("hysteresis governor", () => {
  it("up at once, down only with margin, patience and cooldown (hand-traced)", () => {
    const g = new ReplicaGovernor({ min: 1 });
    expect(g.decide(1.9).target).toBe(2);
    expect(g.decide(2.1).target).toBe(3);
    // ceil(1.9 / 0.85) = 3: no room to shrink.
    expect(g.decide(1.9).target).toBe(3);
    // 0.5 wanted: ceil(0.5 / 0.85) = 1 < 3; vote 1 (2nd decision since the change), vote 2 but
    // cooldown (3rd), then the 4th decision after the change shrinks.
    expect(g.decide(0.5).target).toBe(3);
    expect(g.decide(0.5).target).toBe(3);
    const d = g.decide(0.5);
    expect(d.target).toBe(1);
    expect(d.reason).toMatch(/3 -> 1/);
  });

  it("never flaps on a load hovering around a boundary", () => {
    const g = new ReplicaGovernor({ min: 1 });
    const targets: number[] = [];
    for (let i = 0; i < 40; i++) targets.push(g.decide(i % 2 === 0 ? 1.9 : 2.1).target);
    let changes = 0;
    for (let i = 1; i < targets.length; i++) if (targets[i] !== targets[i - 1]) changes++;
    expect(changes).toBeLessThanOrEqual(1);
    expect(targets.at(-1)).toBe(3);
  });

  it("a load that comes back up cancels a pending shrink", () => {
    const g = new ReplicaGovernor({ min: 1, downCooldownIntervals: 0 });
    g.decide(4);
    expect(g.decide(1).target).toBe(4); // vote 1
    expect(g.decide(3.8).target).toBe(4); // votes reset
    expect(g.decide(1).target).toBe(4); // vote 1 again
    expect(g.decide(1).target).toBe(2); // ceil(1 / 0.85) = 2
  });

  it("bounds and hand-made changes", () => {
    const g = new ReplicaGovernor({ min: 2, max: 4 });
    expect(g.current).toBe(2);
    expect(g.decide(10).target).toBe(4);
    expect(g.observe(4)).toBe(false);
    expect(g.observe(6)).toBe(true); // someone started two more by hand
    expect(g.current).toBe(6);
    expect(g.decide(5).target).toBe(4); // above the maximum: back to it
    expect(() => new ReplicaGovernor({ min: 3, max: 2 })).toThrow(InvalidConfigError);
    expect(() => new ReplicaGovernor({ downMargin: 1 })).toThrow(/downMargin/);
  });
});

describe("SlaPlanner", () => {
  const quiet: IntervalObservation = { intervalS: 10, requests: 0, inputTokens: 0, cachedTokens: 0, outputTokens: 0, ttftMs: null, itlMs: null };
  const busy: IntervalObservation = { intervalS: 10, requests: 100, inputTokens: 200_000, cachedTokens: 100_000, outputTokens: 20_000, ttftMs: null, itlMs: null };

  it("holds the configured minimum with no data, and says so", () => {
    const p = new SlaPlanner({ profile, targets, adjustmentIntervalS: 10, governor: { min: 2 } });
    const d = p.decide(quiet, { aggregated: 2 });
    expect(d.target).toEqual({ aggregated: 2 });
    expect(d.reasons.join("\n")).toMatch(/no traffic observed yet: holding the configured minimum/);
    expect(d.predicted).toBeNull();
  });

  it("sizes prefill and decode from the observed interval (constant predictor, no correction)", () => {
    const p = new SlaPlanner({ profile, targets, adjustmentIntervalS: 10, mode: "disaggregated", corrections: false });
    const d = p.decide(busy, { prefill: 1, decode: 1 });
    expect(d.predicted).toEqual(load);
    expect(d.wanted.prefill).toBeCloseTo(1.5, 9);
    expect(d.wanted.decode).toBeCloseTo(2000 / 768.5, 6);
    expect(d.target).toEqual({ prefill: 2, decode: 3 });
    // The baseline, Dynamo's formulas, on the same interval.
    const b = new SlaPlanner({ profile, targets, adjustmentIntervalS: 10, mode: "disaggregated", corrections: false, formula: "dynamo" });
    expect(b.decide(busy, { prefill: 1, decode: 1 }).target).toEqual({ prefill: 2, decode: 3 });
  });

  it("aggregated workers: prefill stalls decoding, the decode point is chosen jointly; a hand-made change is logged and respected", () => {
    const a = aggregatedReplicas(m, load, targets);
    // Hand check of the returned operating point: rho_itl = (1/s_d - 1/I) / (1/s_d - 1/S_p), with
    // S_p = TTFT(1000) = 100 ms, I = 35 ms; prefill share at min(2/3, rho_itl); decode added.
    const sd = a.decode.itlMs;
    expect(sd).toBeLessThan(35);
    expect(a.chunkStepMs).toBe(100);
    const rho = (1 / sd - 1 / 35) / (1 / sd - 1 / 100);
    expect(a.itlUtilization).toBeCloseTo(rho, 12);
    expect(a.replicas).toBeCloseTo(10000 / (10000 * Math.min(2 / 3, rho)) + 2000 / a.decode.capacityPerWorker, 9);
    // Choosing the decode point at the ITL target itself would leave no room for prefill stalls:
    // rho_itl(34.72) = 0.0123 -> the 0.05 floor -> 20 prefill workers + 2.6 decode.
    expect(a.replicas).toBeLessThan(8);
    expect(mixedItlMs(rho, 100, sd)).toBeCloseTo(35, 9);
    const p = new SlaPlanner({ profile, targets, adjustmentIntervalS: 10, corrections: false });
    const d = p.decide(busy, { aggregated: 1 });
    expect(d.wanted.aggregated).toBeCloseTo(a.replicas, 9);
    expect(d.target).toEqual({ aggregated: Math.ceil(a.replicas) });
    const h = p.decide(busy, { aggregated: 12 });
    expect(h.reasons[0]).toMatch(/aggregated: 12 running where the planner had set \d+ \(changed by hand\?\)/);
    expect(h.target).toEqual({ aggregated: 12 }); // cooldown: the hand-made 12 stands for now
  });

  it("a GPU budget caps the fleet", () => {
    const p = new SlaPlanner({ profile, targets, adjustmentIntervalS: 10, mode: "disaggregated", corrections: false, gpuBudget: 3 });
    const d = p.decide(busy, { prefill: 1, decode: 1 });
    expect(d.target.prefill! + d.target.decode!).toBeLessThanOrEqual(3);
    expect(d.reasons.join("\n")).toMatch(/GPU budget 3/);
  });
});

describe("LoadPlanner", () => {
  const t = { ttftMs: 500, itlMs: 40 };
  it("pressure from waiting, KV usage and measured latency (hand-computed), through the governor", () => {
    const lp = new LoadPlanner({ targets: t, governor: { min: 1 } });
    // 2 workers, 6 waiting in all: 1 + 6 / 2 / 2 = 2.5 beats kv 0.5 / 0.85 and TTFT 600 / 500.
    const d = lp.decide({ workers: [{ waiting: 4, running: 8, kvUsage: 0.5 }, { waiting: 2, running: 8, kvUsage: 0.5 }], ttftMs: 600, itlMs: 20 }, 2);
    expect(d.pressure).toBeCloseTo(2.5, 12);
    expect(d.wanted).toBeCloseTo(5, 12);
    expect(d.target).toBe(5);
    expect(d.reasons.join(" ")).toMatch(/pressure 2.50 \(waiting/);
  });

  it("decides with no data at all (never stalls), shrinking only through the governor; the SLA floor holds", () => {
    const lp = new LoadPlanner({ targets: t, governor: { min: 1, downCooldownIntervals: 0 } });
    const idle = { workers: [{ waiting: 0, running: 0, kvUsage: 0 }, { waiting: 0, running: 0, kvUsage: 0 }, { waiting: 0, running: 0, kvUsage: 0 }], ttftMs: null, itlMs: null };
    expect(lp.decide(idle, 3).target).toBe(3); // hand-made 3 noticed, vote 1
    expect(lp.decide(idle, 3).target).toBe(1); // vote 2: down to the minimum
    // Beside the SLA planner: its count is the floor.
    const lp2 = new LoadPlanner({ targets: t, governor: { min: 1 } });
    expect(lp2.decide(idle, 1, 4).target).toBe(4);
    expect(() => new LoadPlanner({ targets: { ttftMs: 0, itlMs: 40 } })).toThrow(/TTFT target must be a number of milliseconds > 0/);
  });
});
