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
import { erlangC, missShare, serversForMiss, serviceMix, unreachableShare } from "../ts/planner/pooled-queue.js";
import { aggregatedReplicas, decodeReplicas, decodeWindowS, normalQuantile, stallShare, dynamoDecodeReplicas, missTarget, mixedItlMs, dynamoPrefillReplicas, fitGpuBudget, prefillReplicas } from "../ts/planner/replicas.js";
import { SlaPlanner, type IntervalObservation } from "../ts/planner/sla-planner.js";
import { HAND_PROFILE } from "./planner-profile.test.js";

const profile = parseProfile(HAND_PROFILE, "hand");
const m = new ProfileModel(profile);
const targets = { ttftMs: 500, itlMs: 35 };
const load = { requestsPerS: 10, isl: 2000, osl: 200, hitRate: 0.5 };

describe("replica arithmetic", () => {
  it("Erlang C and the pooled queue, by hand", () => {
    // M/M/2 offered 1: B(1) = 1/2, B(2) = 0.5 / 2.5 = 0.2, C = 2 x 0.2 / (2 - 0.8) = 1/3.
    expect(erlangC(2, 1)).toBeCloseTo(1 / 3, 12);
    // C(3, 2) = 4/9, C(4, 2) = 4/23 (B(3) = 4/19, B(4) = 2/21).
    expect(erlangC(3, 2)).toBeCloseTo(4 / 9, 12);
    expect(erlangC(4, 2)).toBeCloseTo(4 / 23, 12);
    expect(erlangC(1, 0)).toBe(0);
    expect(erlangC(2, 2)).toBe(1);
    // Two requests of 100 and 300 ms: mean 200, cs^2 = 100^2 / 200^2 = 0.25.
    const mix = serviceMix([100, 300]);
    expect(mix.meanMs).toBe(200);
    expect(mix.cs2).toBeCloseTo(0.25, 12);
    expect(serviceMix([100]).cs2).toBe(1); // one sample: spread unknown, exponential-like
    // 2 servers, 5 req/s x 200 ms = 1 offered; g = (1 + 0.25) / 2; target 500 ms: slacks 400, 200.
    // P(wait) = g C = 0.625 / 3; mean wait g C s / (c - a), so the tail decays at (c - a) / s.
    const q = { servers: 2, ratePerMs: 0.005, mix, ca2: 1, stretch: 1 };
    const g = 0.625;
    const expected = ((g / 3) * Math.exp(-400 / 200) + (g / 3) * Math.exp(-200 / 200)) / 2;
    expect(missShare(q, 500)).toBeCloseTo(expected, 12);
    // Half-way between 2 and 3 servers: half-way between their misses.
    const c3 = erlangC(3, 1);
    const miss3 = (g * c3 * Math.exp((-2 * 400) / 200) + g * c3 * Math.exp((-2 * 200) / 200)) / 2;
    expect(missShare({ ...q, servers: 2.5 }, 500)).toBeCloseTo((expected + miss3) / 2, 12);
    // Clumped arrivals (ca^2 = 9): g = 4.625 makes g C > 1, so every request waits, with the mean
    // wait g C s / (c - a) = 4.625 / 3 x 200 ms.
    const clumped = missShare({ ...q, ca2: 9 }, 500);
    const meanWait = ((4.625 / 3) * 200) / 1;
    expect(clumped).toBeCloseTo((Math.exp(-400 / meanWait) + Math.exp(-200 / meanWait)) / 2, 12);
    // A request longer than the target is lost whatever the fleet: counted as unreachable.
    expect(unreachableShare(serviceMix([100, 300, 900, 1200]), 1000)).toBe(0.25);
    expect(missTarget(0.25, 0.05)).toBeCloseTo(0.25 + 0.75 * 0.05, 12);
  });

  it("ITL tail: the prefill stall share a request sees, at a quantile, by hand", () => {
    expect(normalQuantile(0.95)).toBeCloseTo(1.645, 3);
    expect(normalQuantile(0.9)).toBeCloseTo(1.2816, 3);
    expect(normalQuantile(0.05)).toBeCloseTo(-1.645, 3);
    // 2 workers, 10 req/s of 100 ms prefills (cs^2 1), a 7 s decode: 5 a second land on a worker,
    // mean share 0.5, sd 0.1 x sqrt(5 x 2 / 7).
    expect(stallShare(2, 10, 0.1, 1, 7, 1.645)).toBeCloseTo(0.5 + 1.645 * 0.1 * Math.sqrt(10 / 7), 12);
    expect(stallShare(0, 10, 0.1, 1, 7, 1.645)).toBe(0.999);
    expect(decodeWindowS(200, 35)).toBeCloseTo(7, 12);
  });

  it("prefill: uncached tokens, the pooled queue's fewest workers within the miss budget", () => {
    // 10 req/s x 2000 x (1 - 0.5) = 10,000 tokens/s; one worker thpt(1000) = 10,000 tokens/s, so
    // a prefill takes 100 ms and the fleet is offered a = 1 worker. One-point mix: cs^2 = 1, g = 1.
    // Target 500 ms, slack 400 ms: miss(c) = C(c, 1) exp(-(c - 1) 400 / 100). c = 1 cannot hold
    // (a >= c: miss 1); c = 2 misses (1/3) e^-4 = 0.0061 <= 0.05. Interpolated between them:
    // 1 + (1 - 0.05) / (1 - 0.0061).
    const p = prefillReplicas(m, load, targets);
    expect(p.tokensPerS).toBe(10000);
    expect(p.load).toBeCloseTo(1, 12);
    expect(p.replicas).toBeCloseTo(1 + 0.95 / (1 - Math.exp(-4) / 3), 9);
    expect(p.reachable).toBe(true);
    expect(p.unreachable).toBe(0);
    // A correction of 2 doubles each prefill: a = 2, slack 300, decay (c - 2) / 200.
    // c = 3: (4/9) e^-1.5 = 0.0992 misses the budget; c = 4: (4/23) e^-3 = 0.0087 holds.
    const m3 = (4 / 9) * Math.exp(-1.5);
    const m4 = (4 / 23) * Math.exp(-3);
    expect(prefillReplicas(m, load, targets, { prefill: 2, decode: 1 }).replicas).toBeCloseTo(3 + (m3 - 0.05) / (m3 - m4), 9);
    // Two GPUs a worker: a prefill takes 50 ms, a = 0.5; c = 1 misses 0.5 e^-4.5 = 0.0056: 1 worker.
    const m2 = new ProfileModel({ ...profile, gpusPerWorker: 2 });
    expect(prefillReplicas(m2, load, targets).replicas).toBeCloseTo(1, 12);
    // Pooling: ten times the load (a = 10) holds the target at the 90% utilization cap, 10 / 0.9
    // workers, under six times the workers a = 1 needs.
    const big = prefillReplicas(m, { ...load, requestsPerS: 100 }, targets);
    expect(big.replicas).toBeCloseTo(10 / 0.9, 9);
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
    // Three intervals ahead: level + 3 x trend; a level-only predictor is flat.
    expect(h.predict(3)).toBeCloseTo(23.25 + 3 * 3.525, 12);
    const c = new ConstantPredictor();
    c.add(7);
    expect(c.predict(4)).toBe(7);
  });

  it("the SLA planner sizes for the busiest forecast until a new worker would serve (cold start)", () => {
    // Rates 1, 2, 3 req/s (Holt): next interval 3.x, two intervals ahead more. With a 20 s cold start
    // and 10 s intervals the planner looks 3 intervals ahead.
    const busy: IntervalObservation = { intervalS: 10, requests: 100, inputTokens: 200_000, cachedTokens: 100_000, outputTokens: 20_000, ttftMs: null, itlMs: null };
    const mk = (coldStartS: number, observedRateFloor = false) => new SlaPlanner({ profile, targets, adjustmentIntervalS: 10, predictor: "holt", corrections: false, coldStartS, observedRateFloor });
    const near = mk(0);
    const far = mk(20);
    // By default the last interval's observed rate is a floor: 4 req/s here, above Holt's 3.89.
    const floored = mk(0, true);
    const h = new HoltPredictor();
    for (const r of [1, 2, 3]) {
      const o = { ...busy, requests: r * 10, inputTokens: r * 20_000, cachedTokens: r * 10_000, outputTokens: r * 2_000 };
      near.decide(o, { aggregated: 1 });
      far.decide(o, { aggregated: 1 });
      floored.decide(o, { aggregated: 1 });
      h.add(r);
    }
    const o = { ...busy, requests: 40, inputTokens: 80_000, cachedTokens: 40_000, outputTokens: 8_000 };
    h.add(4);
    expect(near.decide(o, { aggregated: 1 }).predicted!.requestsPerS).toBeCloseTo(h.predict(1)!, 9);
    expect(far.decide(o, { aggregated: 1 }).predicted!.requestsPerS).toBeCloseTo(h.predict(3)!, 9);
    expect(h.predict(1)!).toBeLessThan(4);
    expect(floored.decide(o, { aggregated: 1 }).predicted!.requestsPerS).toBe(4);
    expect(() => mk(-1)).toThrow(InvalidConfigError);
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
    expect(d.wanted.prefill).toBeCloseTo(1 + 0.95 / (1 - Math.exp(-4) / 3), 9); // as in "prefill" above
    expect(d.wanted.decode).toBeCloseTo(2000 / 768.5, 6);
    expect(d.target).toEqual({ prefill: 2, decode: 3 });
    // The baseline, Dynamo's formulas, on the same interval.
    const b = new SlaPlanner({ profile, targets, adjustmentIntervalS: 10, mode: "disaggregated", corrections: false, formula: "dynamo" });
    expect(b.decide(busy, { prefill: 1, decode: 1 }).target).toEqual({ prefill: 2, decode: 3 });
  });

  it("aggregated workers: prefill stalls decoding, the decode point is chosen jointly; a hand-made change is logged and respected", () => {
    const a = aggregatedReplicas(m, load, targets);
    // Hand check of the returned operating point: rho_itl = (1/s_d - 1/I) / (1/s_d - 1/S_p), with
    // S_p = TTFT(1000) = 100 ms, I = 35 ms. Workers: the most of prefill load / rho_itl, prefill +
    // decode load, and the pooled TTFT count with each worker's prefill slowed by its decode share.
    const sd = a.decode.itlMs;
    expect(sd).toBeLessThan(35);
    expect(a.chunkStepMs).toBe(100);
    const rho = (1 / sd - 1 / 35) / (1 / sd - 1 / 100);
    expect(a.itlUtilization).toBeCloseTo(rho, 12);
    const dec = a.decode.replicas;
    const mix = serviceMix([100]);
    const ttft = serversForMiss((c) => ({ servers: c, ratePerMs: 0.01, mix, ca2: 1, stretch: c / (c - dec) }), 500, 0.05, 1 + dec);
    // ITL: the stall share at the 95th percentile of requests (z = 1.645) stays within rho_itl.
    const z = normalQuantile(0.95);
    const window = decodeWindowS(200, 35);
    expect(stallShare(a.replicas, 10, 0.1, 1, window, z)).toBeLessThanOrEqual(rho + 1e-9);
    expect(a.replicas).toBeGreaterThanOrEqual(Math.max(ttft, 1 / rho, 1 + dec) - 1e-9);
    // Choosing the decode point at the ITL target itself would leave no room for prefill stalls:
    // rho_itl(34.72) = 0.0123 -> the 0.05 floor -> 20 workers.
    expect(a.replicas).toBeLessThan(8);
    expect(mixedItlMs(rho, 100, sd)).toBeCloseTo(35, 9);
    // A decode correction of 2 (observed ITL twice the model's) halves the ITL the sizing aims at.
    const c2 = aggregatedReplicas(m, load, targets, { prefill: 1, decode: 2 });
    const sd2 = c2.decode.itlMs;
    expect(sd2).toBeLessThan(17.5);
    expect(c2.itlUtilization).toBeCloseTo((1 / sd2 - 1 / 17.5) / (1 / sd2 - 1 / 100), 12);
    expect(c2.replicas).toBeGreaterThan(a.replicas);
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
