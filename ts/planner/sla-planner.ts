/**
 * SlaPlanner: every adjustment interval, from what the gateway observed (requests, prompt and
 * output tokens, prefix hits, TTFT and ITL), predict the next interval and set the workers of
 * each type (aggregated, or prefill and decode) to hold the TTFT and ITL targets.
 *
 * Steps of `decide(observation)`:
 * 1. The hand-made check: the running counts the connector reports are compared with what the
 *    planner last set; a difference is logged and respected (the governors start from it).
 * 2. No traffic ever seen: hold the configured minimum, saying so (never stall, never guess).
 * 3. Correction factors from this interval: observed TTFT / the TTFT the profile expects at the
 *    observed load (queueing included), observed ITL / profiled ITL at the observed concurrency;
 *    smoothed and bounded so one odd interval cannot swing the fleet.
 * 4. Predict rate, input and output length and hit rate (one predictor each, same kind).
 * 5. Size (replicas.ts: kvroute's sizing, or Dynamo's formulas as a baseline), cap to the GPU
 *    budget, pass through the governors (hysteresis, cooldowns, bounds).
 */
import { InvalidConfigError } from "../errors.js";
import { ProfileModel } from "./interpolate.js";
import { ReplicaGovernor, type GovernorOptions } from "./governor.js";
import { makePredictor, type Predictor, type PredictorOptions } from "./predictors.js";
import {
  aggregatedReplicas,
  chunkStepMs,
  decodeReplicas,
  mixedItlMs,
  dynamoAggregatedReplicas,
  dynamoDecodeReplicas,
  dynamoPrefillReplicas,
  fitGpuBudget,
  prefillReplicas,
  MISS_BUDGET,
  decodeWindowS,
  normalQuantile,
  prefillMix,
  stallShare,
  type Corrections,
  type LoadForecast,
  type Targets,
} from "./replicas.js";
import { ttftQuantile, type PooledQueue } from "./pooled-queue.js";
import { validateTargets } from "./targets.js";
import { burstWorkers, RecentMax, type BurstArrival } from "./burst-floor.js";
import type { PerfProfile } from "./profile.js";

export type FleetMode = "aggregated" | "disaggregated";
export type WorkerKind = "aggregated" | "prefill" | "decode";
export type Replicas = Partial<Record<WorkerKind, number>>;

/** What the gateway saw over one adjustment interval. */
export interface IntervalObservation {
  intervalS: number;
  requests: number;
  inputTokens: number;
  /** Prompt tokens the chosen workers already held. */
  cachedTokens: number;
  outputTokens: number;
  /** Observed TTFT over the interval (ms; p90 where known), null without data. */
  ttftMs: number | null;
  /** Observed mean ITL (ms), null without data. */
  itlMs: number | null;
  /** Mean request duration (ms), null without data. */
  durationMs?: number | null;
  /** p90 over the interval's requests of each one's mean ITL (ms): the tail the ITL target bounds. */
  itlP90Ms?: number | null;
  /** Mean TTFT (ms) over the interval (Dynamo's corrections use the mean), null without data. */
  ttftMeanMs?: number | null;
  /** Squared coefficient of variation of the interval's gaps between arrivals (1: Poisson). */
  arrivalCv2?: number | null;
  /** Uncached prompt tokens of (a sample of) the interval's requests: the mix of prefill sizes. */
  uncachedTokens?: readonly number[];
  /** Arrival times (ms, any origin) of the same requests, in the same order: the burst floor. */
  arrivalsMs?: readonly number[];
}

export interface SlaPlannerOptions {
  profile: PerfProfile;
  targets: Partial<Targets>;
  mode?: FleetMode;
  /** "kvroute" (default) or "dynamo": the baseline's published formulas. */
  formula?: "kvroute" | "dynamo";
  adjustmentIntervalS: number;
  predictor?: string;
  predictorOptions?: PredictorOptions;
  /** Per worker kind: bounds and hysteresis. */
  governor?: GovernorOptions;
  /**
   * A kind's own minimum, over `governor.min` (disaggregated: Dynamo's `prefill_min_endpoint` and
   * `decode_min_endpoint`).
   */
  minByKind?: Partial<Record<WorkerKind, number>>;
  /** GPUs the fleet may use in all. Default: no limit. */
  gpuBudget?: number;
  /** Apply observed/profiled corrections. Default true. */
  corrections?: boolean;
  /** Share of servable requests the sizing lets past the TTFT target (replicas.ts). Default 0.05. */
  missBudget?: number;
  /**
   * Arrivals' squared coefficient of variation the queue model assumes (1: Poisson). Default: the
   * observed one (smoothed), 1 until observed.
   */
  arrivalCv2?: number;
  /**
   * Seconds from asking for a worker to its first request. Workers asked for now serve from then
   * on: the sizing takes the highest forecast up to that horizon (trend predictors look ahead).
   * Default 0 (the next interval only).
   */
  coldStartS?: number;
  /**
   * Burst floor (burst-floor.ts): keep at least the workers the busiest of the last this-many
   * seconds of observed arrivals needed, replayed onto idle workers (0: off). Needs the
   * observation's `arrivalsMs`. Default 300.
   */
  burstWindowS?: number;
  /**
   * Size for at least the rate observed in the last interval, whatever the predictor says (a
   * moving average lags a rise). Default true.
   */
  observedRateFloor?: boolean;
}

export interface PlannerDecision {
  /** Seconds since the planner started. */
  atS: number;
  observed: { requestsPerS: number; isl: number; osl: number; hitRate: number; ttftMs: number | null; itlMs: number | null } | null;
  predicted: LoadForecast | null;
  /** Workers wanted, fractional, before bounds and hysteresis. */
  wanted: Replicas;
  /** Workers to run. */
  target: Replicas;
  running: Replicas;
  estimated: { ttftMs: number | null; itlMs: number | null };
  corrections: Corrections;
  /** One line per worker kind, and any notice (hand-made change, budget, no data). */
  reasons: string[];
}

const CORRECTION_BOUNDS: [number, number] = [0.5, 3];
/** Weight of the latest interval in the smoothed correction factors. */
const CORRECTION_GAIN = 0.3;
/** The most one interval's observed / modelled ratio may differ from the current factor. */
const CORRECTION_STEP = 1.5;

export class SlaPlanner {
  readonly model: ProfileModel;
  readonly targets: Targets;
  readonly mode: FleetMode;
  private readonly o: SlaPlannerOptions;
  private readonly predictors: Record<keyof LoadForecast, Predictor>;
  private readonly governors: Map<WorkerKind, ReplicaGovernor>;
  private corr: Corrections = { prefill: 1, decode: 1 };
  private seenTraffic = false;
  private readonly missBudget: number;
  private readonly horizon: number;
  /** Uncached lengths of the latest requests (bounded): the prompt mix the sizing assumes. */
  private readonly mix: number[] = [];
  /** Smoothed observed arrival burstiness (ca^2). */
  private ca2 = 1;
  private elapsedS = 0;
  /** Workers the recent intervals' arrivals needed (burst-floor.ts); null when off. */
  private readonly bursts: RecentMax | null;

  constructor(o: SlaPlannerOptions) {
    this.o = o;
    this.model = new ProfileModel(o.profile);
    this.targets = validateTargets(this.model, o.targets);
    this.mode = o.mode ?? "aggregated";
    this.missBudget = o.missBudget ?? MISS_BUDGET;
    if (!(this.missBudget > 0 && this.missBudget < 1)) throw new InvalidConfigError(`missBudget must be in (0, 1) (got ${o.missBudget})`);
    if (o.arrivalCv2 !== undefined && !(o.arrivalCv2 >= 0)) throw new InvalidConfigError(`arrivalCv2 must be >= 0 (got ${o.arrivalCv2})`);
    if (o.coldStartS !== undefined && !(o.coldStartS >= 0)) throw new InvalidConfigError(`coldStartS must be >= 0 (got ${o.coldStartS})`);
    this.horizon = 1 + Math.ceil((o.coldStartS ?? 0) / o.adjustmentIntervalS - 1e-9);
    if (o.burstWindowS !== undefined && !(o.burstWindowS >= 0)) throw new InvalidConfigError(`burstWindowS must be >= 0 (got ${o.burstWindowS})`);
    const burstWindowS = o.burstWindowS ?? BURST_WINDOW_S;
    this.bursts = o.formula === "dynamo" || burstWindowS === 0 ? null : new RecentMax(Math.max(1, Math.ceil(burstWindowS / o.adjustmentIntervalS - 1e-9)));
    if (!(o.adjustmentIntervalS > 0)) throw new InvalidConfigError(`the adjustment interval must be > 0 s (got ${o.adjustmentIntervalS})`);
    if (o.gpuBudget !== undefined && !(Number.isInteger(o.gpuBudget) && o.gpuBudget >= 1)) throw new InvalidConfigError(`the GPU budget must be an integer >= 1 (got ${o.gpuBudget})`);
    const kind = o.predictor ?? "constant";
    this.predictors = {
      requestsPerS: makePredictor(kind, o.predictorOptions),
      isl: makePredictor(kind, o.predictorOptions),
      osl: makePredictor(kind, o.predictorOptions),
      hitRate: makePredictor(kind, o.predictorOptions),
    };
    const gpus = o.profile.gpusPerWorker;
    const budgetMax = o.gpuBudget === undefined ? undefined : Math.floor(o.gpuBudget / gpus);
    const gov = (k: WorkerKind): ReplicaGovernor => {
      const min = o.minByKind?.[k] ?? o.governor?.min;
      const max = Math.min(o.governor?.max ?? Number.POSITIVE_INFINITY, budgetMax ?? Number.POSITIVE_INFINITY);
      // kvroute's planner scales down slower than up (a quarter of the fleet a decision at most).
      const downStepMax = o.formula === "dynamo" ? undefined : (o.governor?.downStepMax ?? DOWN_STEP_MAX);
      return new ReplicaGovernor({ ...o.governor, ...(min !== undefined ? { min } : {}), max, ...(downStepMax !== undefined ? { downStepMax } : {}) });
    };
    this.governors = new Map(this.kinds().map((k) => [k, gov(k)]));
  }

  kinds(): WorkerKind[] {
    return this.mode === "aggregated" ? ["aggregated"] : ["prefill", "decode"];
  }

  /** The counts the planner holds before any decision (the minimum of each kind). */
  initialReplicas(): Replicas {
    return Object.fromEntries(this.kinds().map((k) => [k, this.governors.get(k)!.current]));
  }

  decide(obs: IntervalObservation, running: Replicas): PlannerDecision {
    this.elapsedS += obs.intervalS;
    const reasons: string[] = [];
    for (const k of this.kinds()) {
      const actual = running[k];
      const g = this.governors.get(k)!;
      const planned = g.current;
      if (actual !== undefined && g.observe(actual)) reasons.push(`${k}: ${actual} running where the planner had set ${planned} (changed by hand?): respected until this decision says otherwise`);
    }
    const observed = observedLoad(obs);
    if (observed !== null) this.seenTraffic = true;
    if (!this.seenTraffic) {
      const target = Object.fromEntries(this.kinds().map((k) => [k, this.governors.get(k)!.decide(this.governors.get(k)!.min).target]));
      reasons.push(`no traffic observed yet: holding the configured minimum (${JSON.stringify(target)})`);
      return { atS: this.elapsedS, observed: null, predicted: null, wanted: {}, target, running, estimated: { ttftMs: null, itlMs: null }, corrections: { ...this.corr }, reasons };
    }
    if (observed !== null) {
      if (this.o.corrections !== false) this.updateCorrections(obs, observed, running);
      for (const u of obs.uncachedTokens ?? []) this.mix.push(u);
      if (obs.arrivalCv2 != null && obs.requests >= MIN_GAPS) this.ca2 = clampTo(0.7 * this.ca2 + 0.3 * obs.arrivalCv2, CA2_BOUNDS);
      if (this.mix.length > MIX_SAMPLES) this.mix.splice(0, this.mix.length - MIX_SAMPLES);
      if (this.bursts && obs.arrivalsMs && obs.uncachedTokens && obs.arrivalsMs.length === obs.uncachedTokens.length) this.bursts.add(this.burstNeed(obs, observed));
      this.predictors.requestsPerS.add(observed.requestsPerS);
      if (observed.requestsPerS > 0) {
        this.predictors.isl.add(observed.isl);
        this.predictors.osl.add(observed.osl);
        this.predictors.hitRate.add(observed.hitRate);
      }
    } else {
      // An interval with no requests at all: the rate was zero.
      this.predictors.requestsPerS.add(0);
      this.bursts?.add(0);
    }
    // New workers serve `horizon` intervals from now: size for the busiest forecast until then.
    let rate = 0;
    for (let h = 1; h <= this.horizon; h++) rate = Math.max(rate, this.predictors.requestsPerS.predict(h) ?? 0);
    // A rise shows in the latest interval before any average follows it.
    if (this.o.formula !== "dynamo" && this.o.observedRateFloor !== false && observed !== null) rate = Math.max(rate, observed.requestsPerS);
    const predicted: LoadForecast = {
      requestsPerS: rate,
      isl: this.predictors.isl.predict() ?? 0,
      osl: Math.max(1, this.predictors.osl.predict() ?? 1),
      hitRate: Math.min(1, Math.max(0, this.predictors.hitRate.predict() ?? 0)),
    };
    if (observed !== null) {
      const f = (x: number | null) => (x === null ? "n/a" : `${x.toFixed(1)} ms`);
      reasons.push(
        `observed ${observed.requestsPerS.toFixed(2)} req/s, isl ${observed.isl.toFixed(0)}, osl ${observed.osl.toFixed(0)}, hit ${(observed.hitRate * 100).toFixed(0)}%, TTFT p90 ${f(observed.ttftMs)}, ITL ${f(observed.itlMs)}; predicted ${predicted.requestsPerS.toFixed(2)} req/s; corrections prefill ${this.corr.prefill.toFixed(2)} decode ${this.corr.decode.toFixed(2)}`,
      );
    }
    const wanted = this.size(predicted);
    const floorKind: WorkerKind = this.mode === "aggregated" ? "aggregated" : "prefill";
    const burst = this.bursts?.value ?? 0;
    if (burst > (wanted[floorKind] ?? 0)) {
      reasons.push(`burst floor: the last ${BURST_WINDOW_LABEL(this.o.burstWindowS)} of arrivals needed ${burst} ${floorKind} workers (sizing says ${(wanted[floorKind] ?? 0).toFixed(2)})`);
      wanted[floorKind] = burst;
    }
    const target: Replicas = {};
    let capped = { ...wanted };
    if (this.o.gpuBudget !== undefined && this.mode === "disaggregated") {
      const g = this.o.profile.gpusPerWorker;
      const fit = fitGpuBudget(Math.ceil(wanted.prefill!), Math.ceil(wanted.decode!), g, g, this.o.gpuBudget, this.governors.get("prefill")!.min, this.governors.get("decode")!.min);
      if (fit.capped) {
        reasons.push(`GPU budget ${this.o.gpuBudget}: prefill ${Math.ceil(wanted.prefill!)} -> ${fit.prefill}, decode ${Math.ceil(wanted.decode!)} -> ${fit.decode}`);
        capped = { prefill: Math.min(wanted.prefill!, fit.prefill), decode: Math.min(wanted.decode!, fit.decode) };
      }
    }
    for (const k of this.kinds()) {
      const g = this.governors.get(k)!;
      // Dynamo's planner sets its formulas' counts as they come (bounds only, no hysteresis).
      const d = this.o.formula === "dynamo" ? g.force(Math.ceil(capped[k]! - 1e-9)) : g.decide(capped[k]!);
      target[k] = d.target;
      reasons.push(`${k}: ${d.reason}`);
    }
    return { atS: this.elapsedS, observed, predicted, wanted, target, running, estimated: this.estimate(predicted, target), corrections: { ...this.corr }, reasons };
  }

  /** Fractional workers per kind for a load. */
  size(load: LoadForecast): Replicas {
    const m = this.model;
    if (load.requestsPerS <= 0 || load.isl <= 0) return Object.fromEntries(this.kinds().map((k) => [k, 0]));
    if (this.o.formula === "dynamo") {
      if (this.mode === "aggregated") return { aggregated: dynamoAggregatedReplicas(m, load, this.targets, this.corr) };
      return { prefill: dynamoPrefillReplicas(m, load, this.corr, 0), decode: dynamoDecodeReplicas(m, load, this.targets, this.corr, 0) };
    }
    const o = this.sizingOptions();
    if (this.mode === "aggregated") return { aggregated: aggregatedReplicas(m, load, this.targets, this.corr, o).replicas };
    const p = prefillReplicas(m, load, this.targets, this.corr, o);
    const d = decodeReplicas(m, load, this.targets, this.corr);
    return { prefill: p.replicas, decode: d.replicas };
  }

  /**
   * Workers this interval's own arrivals needed (burst-floor.ts): each request's prefill time from
   * the profile at its uncached length (corrected); aggregated workers' prefills slowed by the
   * observed decode load's share of each worker.
   */
  private burstNeed(obs: IntervalObservation, observed: NonNullable<PlannerDecision["observed"]>): number {
    const m = this.model;
    const gpus = m.profile.gpusPerWorker;
    const arrivals: BurstArrival[] = obs.uncachedTokens!.map((u, i) => {
      const n = Math.max(1, u);
      return { atMs: obs.arrivalsMs![i]!, serviceMs: ((1000 * n) / (m.prefill.thptPerGpu(n) * gpus)) * this.corr.prefill };
    });
    const decode = this.mode === "aggregated" ? decodeReplicas(m, { requestsPerS: observed.requestsPerS, isl: observed.isl, osl: observed.osl, hitRate: observed.hitRate }, this.targets, this.corr).replicas : 0;
    return burstWorkers(arrivals, this.targets.ttftMs, this.missBudget, (c) => (c > decode ? c / (c - decode) : Number.POSITIVE_INFINITY));
  }

  private sizingOptions(uncached: readonly number[] = this.mix) {
    return { uncached, missBudget: this.missBudget, arrivalCv2: this.o.arrivalCv2 ?? this.ca2 };
  }

  /** TTFT (p90) and ITL the profile expects at `load` on `workers`, for the prompt mix `uncached`. */
  private estimate(load: LoadForecast, workers: Replicas, uncached: readonly number[] = this.mix): { ttftMs: number | null; itlMs: number | null } {
    if (load.requestsPerS <= 0) return { ttftMs: null, itlMs: null };
    const m = this.model;
    const p = prefillReplicas(m, load, this.targets, this.corr, this.sizingOptions(uncached));
    const pWorkers = workers.prefill ?? workers.aggregated ?? 0;
    const dWorkers = workers.decode ?? workers.aggregated ?? 0;
    if (pWorkers <= 0 || dWorkers <= 0) return { ttftMs: null, itlMs: null };
    const rho = Math.min(0.99, p.tokensPerS / (p.capacityPerWorker * pWorkers));
    const context = load.isl + load.osl / 2;
    const itl0 = m.decode.itlMs(0, context);
    const durationS = (p.idleTtftMs + load.osl * itl0) / 1000;
    const concurrency = (load.requestsPerS * durationS) / dWorkers;
    const rawItl = m.decode.itlMs(Math.min(1, m.decode.kvUsageFor(concurrency, context)), context);
    const decodeItl = rawItl * this.corr.decode;
    const mix = prefillMix(m, load, this.corr, uncached);
    const queue: PooledQueue = { servers: pWorkers, ratePerMs: load.requestsPerS / 1000, mix, ca2: this.o.arrivalCv2 ?? this.ca2, stretch: 1 };
    if (this.mode !== "aggregated") return { ttftMs: ttftQuantile(queue, 0.9), itlMs: decodeItl };
    // One worker does both: decoding takes a share of its time, and prefill chunks stall decoding.
    const d = decodeReplicas(m, load, this.targets, this.corr);
    const decodeShare = Math.min(0.95, d.replicas / dWorkers);
    const meanUncached = Math.max(1, load.isl * (1 - load.hitRate));
    // p90, as observed (the planner compares this with the interval's p90 to correct itself).
    const z = normalQuantile(0.9);
    const stall = stallShare(dWorkers, load.requestsPerS, mix.meanMs / 1000, mix.cs2, decodeWindowS(load.osl, this.targets.itlMs), z);
    return {
      ttftMs: ttftQuantile({ ...queue, stretch: 1 / (1 - decodeShare) }, 0.9),
      // The request at the p90 of stalls; the decode correction scales the
      // mixed ITL as a whole (see aggregatedReplicas).
      itlMs: mixedItlMs(stall, chunkStepMs(m, meanUncached, 8192) * this.corr.prefill, rawItl) * this.corr.decode,
    };
  }

  private updateCorrections(obs: IntervalObservation, observed: NonNullable<PlannerDecision["observed"]>, running: Replicas): void {
    if (this.o.formula === "dynamo") return this.updateDynamoCorrections(obs, observed, running);
    const est = this.estimateUncorrected(observed, running, obs.uncachedTokens);
    // Smoothed (one interval's ITL or TTFT tail is noisy) and bounded: one odd interval cannot swing the fleet.
    // An interval the fleet could not keep up with (workers still starting) shows a backlog, not a
    // model error: one interval's ratio counts at most 1.5x either way of the current factor.
    const smooth = (prev: number, ratio: number) => {
      const step = clampTo(ratio, [prev / CORRECTION_STEP, prev * CORRECTION_STEP]);
      return clampTo((1 - CORRECTION_GAIN) * prev + CORRECTION_GAIN * clampTo(step, CORRECTION_BOUNDS), CORRECTION_BOUNDS);
    };
    if (obs.ttftMs !== null && est.ttftMs !== null && est.ttftMs > 0) this.corr.prefill = smooth(this.corr.prefill, obs.ttftMs / est.ttftMs);
    // The ITL target bounds each request's ITL: with the per-request p90 at hand, the correction
    // carries the spread between requests as well (the model gives a fleet-wide mean).
    const itl = obs.itlP90Ms ?? obs.itlMs;
    if (itl !== null && est.itlMs !== null && est.itlMs > 0) this.corr.decode = smooth(this.corr.decode, itl / est.itlMs);
  }

  /**
   * Dynamo's corrections, as published: observed TTFT / profiled TTFT at the mean input length
   * (no queueing, no cache hits), observed ITL / profiled ITL at concurrency = requests per
   * decode worker x duration / interval and context isl + osl / 2; the latest ratio, unsmoothed.
   */
  private updateDynamoCorrections(obs: IntervalObservation, o: NonNullable<PlannerDecision["observed"]>, running: Replicas): void {
    const m = this.model;
    const ttft = obs.ttftMeanMs ?? obs.ttftMs;
    if (ttft !== null) this.corr.prefill = ttft / m.prefill.ttftMs(o.isl);
    const workers = running.decode ?? running.aggregated ?? 0;
    if (obs.itlMs !== null && workers > 0) {
      const context = o.isl + o.osl / 2;
      const durationS = obs.durationMs != null ? obs.durationMs / 1000 : (m.prefill.ttftMs(o.isl) + o.osl * m.decode.itlMs(0, context)) / 1000;
      const concurrency = (o.requestsPerS * obs.intervalS * durationS) / workers / obs.intervalS;
      const expected = m.decode.itlMs(Math.min(1, m.decode.kvUsageFor(concurrency, context)), context);
      this.corr.decode = obs.itlMs / expected;
    }
  }

  private estimateUncorrected(o: NonNullable<PlannerDecision["observed"]>, running: Replicas, uncached?: readonly number[]): { ttftMs: number | null; itlMs: number | null } {
    const saved = this.corr;
    this.corr = { prefill: 1, decode: 1 };
    try {
      return this.estimate({ requestsPerS: o.requestsPerS, isl: o.isl, osl: o.osl, hitRate: o.hitRate }, running, uncached && uncached.length > 0 ? uncached : this.mix);
    } finally {
      this.corr = saved;
    }
  }
}

/** Share of the running fleet one scale-down may remove (GovernorOptions.downStepMax). */
const DOWN_STEP_MAX = 0.25;

/** Seconds of intervals whose arrivals set the burst floor (SlaPlannerOptions.burstWindowS). */
const BURST_WINDOW_S = 300;
const BURST_WINDOW_LABEL = (s: number | undefined) => `${s ?? BURST_WINDOW_S} s`;

/** Arrivals an interval needs before its burstiness counts; the bounds of the smoothed ca^2. */
const MIN_GAPS = 8;
const CA2_BOUNDS: [number, number] = [0.5, 25];

/** Uncached prompt lengths the planner keeps as its picture of the prompt mix. */
const MIX_SAMPLES = 1024;

function observedLoad(o: IntervalObservation): PlannerDecision["observed"] {
  if (!(o.requests > 0)) return null;
  return {
    requestsPerS: o.requests / o.intervalS,
    isl: o.inputTokens / o.requests,
    osl: Math.max(1, o.outputTokens / o.requests),
    hitRate: o.inputTokens > 0 ? Math.min(1, o.cachedTokens / o.inputTokens) : 0,
    ttftMs: o.ttftMs,
    itlMs: o.itlMs,
  };
}

function clampTo(x: number, [lo, hi]: [number, number]): number {
  return x < lo ? lo : x > hi ? hi : x;
}
