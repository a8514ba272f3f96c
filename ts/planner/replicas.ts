/**
 * Replica arithmetic: from a predicted load and the profile, how many prefill and decode workers
 * hold the TTFT and ITL targets. Pure functions of their inputs (the unit tests check them
 * against hand-computed cases); the planner adds bounds, budget and hysteresis (governor.ts).
 *
 * kvroute's SLA sizing:
 * - prefill: only the tokens the fleet must compute count, `isl x (1 - hit rate)`, and the fleet is
 *   one pooled queue (pooled-queue.ts: M/G/c, Erlang C), since the router spreads prefills over
 *   the workers with room. Each request's prefill time comes from the profile at its own uncached
 *   length (a sample of recent requests, scaled to the predicted mean; one point without one), so
 *   the mix of prompt sizes is in the model instead of in a correction factor. Workers = the fewest
 *   whose modelled share of requests past the TTFT target is at most `missBudget` of those any
 *   fleet can serve (a prompt whose own prefill exceeds the target is lost whatever the size).
 * - decode: output tokens/s over the best per-GPU throughput whose ITL (divided by the observed /
 *   profiled correction) fits the target at context `isl + osl / 2`.
 * - aggregated workers do both, and a prefill chunk in a step stalls every decoding sequence of
 *   that worker (vLLM's chunked prefill): with a share rho of its time in prefill steps of S_p ms
 *   and the rest in decode steps of s_d ms, a sequence sees 1 / (rho / S_p + (1 - rho) / s_d) ms
 *   per token. ITL <= target caps rho at (1/s_d - 1/I) / (1/s_d - 1/S_p). Workers = the most of:
 *   prefill load / that cap, prefill + decode load, and the pooled TTFT count with each worker's
 *   prefill slowed by its decode share; for the decode operating point (ITL s_d <= I) that needs
 *   the fewest.
 *
 * Dynamo's published formulas (the baseline of benchmarks/RESULTS.md), for comparison:
 * prefill = ceil(num_req x isl / interval x min(1, p_corr) / thpt(isl) / gpus) — every prompt token
 * counted, no queueing headroom; decode = ceil(num_req x osl / interval / best_thpt(itl / d_corr,
 * isl + osl / 2) / gpus).
 */
import type { ProfileModel } from "./interpolate.js";
import { serviceMix, serversForMiss, unreachableShare, type PooledQueue, type ServiceMix } from "./pooled-queue.js";

export interface LoadForecast {
  /** Requests per second. */
  requestsPerS: number;
  /** Mean prompt tokens. */
  isl: number;
  /** Mean output tokens. */
  osl: number;
  /** Share of prompt tokens already in a worker's KV cache, 0..1. */
  hitRate: number;
}

export interface Targets {
  ttftMs: number;
  itlMs: number;
}

export interface Corrections {
  /** Observed / expected TTFT (1: the profile is right). */
  prefill: number;
  /** Observed / expected ITL. */
  decode: number;
}

export const NO_CORRECTION: Readonly<Corrections> = Object.freeze({ prefill: 1, decode: 1 });

/** Share of the servable requests the sizing lets past the TTFT target (the target is a p90). */
export const MISS_BUDGET = 0.05;

/** The busiest share of its time a prefill worker may be, whatever the target allows. */
export const MAX_PREFILL_UTILIZATION = 0.9;

export interface SizingOptions {
  /** Uncached prompt lengths of recent requests (the mix); scaled to the forecast's mean. */
  uncached?: readonly number[];
  /** Share of servable requests allowed past the TTFT target. Default MISS_BUDGET. */
  missBudget?: number;
  /** Arrivals' squared coefficient of variation (1: Poisson). Default 1. */
  arrivalCv2?: number;
  /** vLLM's token budget per step (aggregated prefill chunks). Default 8192. */
  chunkTokens?: number;
}

export interface PrefillSizing {
  /** Workers, fractional (before rounding, bounds and hysteresis). */
  replicas: number;
  /** Prompt tokens/s the fleet must compute. */
  tokensPerS: number;
  /** Tokens/s one worker computes flat out (at the mean uncached length). */
  capacityPerWorker: number;
  /** Offered prefill load, in workers busy (rate x mean prefill time). */
  load: number;
  /** Busy share of a worker at this size: load / replicas. */
  utilization: number;
  /** TTFT of a mean request on an idle worker, corrected. */
  idleTtftMs: number;
  /** Share of requests whose own prefill exceeds the TTFT target (no fleet size helps them). */
  unreachable: number;
  /** False when even an idle worker misses the target at the mean length. */
  reachable: boolean;
}

/** The prefill times (ms, corrected) of the mix, scaled to the forecast's mean uncached length. */
export function prefillMix(m: ProfileModel, load: LoadForecast, corr: Corrections, uncached?: readonly number[]): ServiceMix {
  const mean = Math.max(1, load.isl * (1 - clamp01(load.hitRate)));
  const sample = uncached !== undefined && uncached.length > 0 ? uncached : [mean];
  let sum = 0;
  for (const u of sample) sum += u;
  const scale = sum > 0 ? (mean * sample.length) / sum : 1;
  const gpus = m.profile.gpusPerWorker;
  const time = (u: number) => {
    const n = Math.max(1, u * scale);
    return ((1000 * n) / (m.prefill.thptPerGpu(n) * gpus)) * corr.prefill;
  };
  // A one-point mix stands for an unknown spread: serviceMix then assumes cs^2 = 1.
  return serviceMix(sample.map(time));
}

export function prefillReplicas(m: ProfileModel, load: LoadForecast, targets: Targets, corr: Corrections = NO_CORRECTION, o: SizingOptions = {}): PrefillSizing {
  const uncached = Math.max(1, load.isl * (1 - clamp01(load.hitRate)));
  const tokensPerS = load.requestsPerS * uncached;
  const capacityPerWorker = m.prefill.thptPerGpu(uncached) * m.profile.gpusPerWorker;
  const mix = prefillMix(m, load, corr, o.uncached);
  const ratePerMs = load.requestsPerS / 1000;
  const offered = ratePerMs * mix.meanMs;
  const unreachable = unreachableShare(mix, targets.ttftMs);
  const budget = missTarget(unreachable, o.missBudget);
  const queue = (c: number): PooledQueue => ({ servers: c, ratePerMs, mix, ca2: o.arrivalCv2 ?? 1, stretch: 1 });
  const pooled = offered > 0 ? serversForMiss(queue, targets.ttftMs, budget, offered) : 0;
  const replicas = Math.max(pooled, offered / MAX_PREFILL_UTILIZATION);
  const idleTtftMs = ((1000 * uncached) / capacityPerWorker) * corr.prefill;
  return { replicas, tokensPerS, capacityPerWorker, load: offered, utilization: replicas > 0 ? offered / replicas : 0, idleTtftMs, unreachable, reachable: idleTtftMs < targets.ttftMs };
}

/** The miss share the sizing aims at: the unreachable requests plus the budget of the rest. */
export function missTarget(unreachable: number, missBudget = MISS_BUDGET): number {
  return unreachable + (1 - unreachable) * missBudget;
}

export interface DecodeSizing {
  replicas: number;
  /** Output tokens/s the fleet must generate. */
  tokensPerS: number;
  /** Tokens/s one worker generates at the chosen operating point. */
  capacityPerWorker: number;
  /** The operating point's ITL (profiled) and KV usage. */
  itlMs: number;
  kvUsage: number;
  context: number;
  reachable: boolean;
}

export function decodeReplicas(m: ProfileModel, load: LoadForecast, targets: Targets, corr: Corrections = NO_CORRECTION): DecodeSizing {
  const context = load.isl + load.osl / 2;
  const itlBudget = targets.itlMs / (corr.decode > 0 ? corr.decode : 1);
  const best = m.decode.bestThroughput(itlBudget, context);
  const tokensPerS = load.requestsPerS * load.osl;
  const reachable = best.thptPerGpu > 0;
  // Out of reach: size at the lightest point's throughput rather than dividing by zero.
  const perGpu = reachable ? best.thptPerGpu : Math.max(m.decode.thptPerGpu(0, context), 1e-9);
  const capacityPerWorker = perGpu * m.profile.gpusPerWorker;
  return { replicas: tokensPerS / capacityPerWorker, tokensPerS, capacityPerWorker, itlMs: best.itlMs, kvUsage: best.kvUsage, context, reachable };
}

export interface AggregatedSizing {
  replicas: number;
  prefill: PrefillSizing;
  decode: DecodeSizing;
  /** The prefill share of a worker's time allowed by the ITL target (chunked-prefill stalls). */
  itlUtilization: number;
  /** ms of one prefill chunk step. */
  chunkStepMs: number;
}

/** A prefill chunk's step time (ms) for an uncached prompt, at vLLM's token budget per step. */
export function chunkStepMs(m: ProfileModel, uncachedIsl: number, chunkTokens: number): number {
  const n = Math.min(uncachedIsl, chunkTokens);
  return m.prefill.ttftMs(n);
}

/** Mean ITL (ms) a decoding sequence sees with a share `rho` of its worker's time in prefill steps. */
export function mixedItlMs(rho: number, chunkMs: number, decodeMs: number): number {
  const r = Math.min(0.999, Math.max(0, rho));
  return 1 / (r / chunkMs + (1 - r) / decodeMs);
}

/** The standard normal quantile (Abramowitz and Stegun 26.2.23, |error| < 4.5e-4). */
export function normalQuantile(p: number): number {
  if (!(p > 0 && p < 1)) throw new RangeError(`a quantile needs 0 < p < 1 (got ${p})`);
  const q = p < 0.5 ? p : 1 - p;
  const t = Math.sqrt(-2 * Math.log(q));
  const z = t - (2.515517 + 0.802853 * t + 0.010328 * t * t) / (1 + 1.432788 * t + 0.189269 * t * t + 0.001308 * t * t * t);
  return p < 0.5 ? -z : z;
}

/**
 * The share of its worker's time a request's decode sees taken by prefill chunks, at the quantile
 * `z` over requests: the prefill work landing on one of `workers` workers during the request's
 * decode (`windowS` seconds) is compound Poisson, rate / workers arrivals a second of mean time
 * `meanS` (seconds) and squared CV `cs2`: mean a / c, sd meanS sqrt((rate / c)(1 + cs2) / window).
 * Capped below 1.
 */
export function stallShare(workers: number, ratePerS: number, meanS: number, cs2: number, windowS: number, z: number): number {
  if (workers <= 0) return 0.999;
  const perWorker = ratePerS / workers;
  const mean = perWorker * meanS;
  const sd = meanS * Math.sqrt((perWorker * (1 + cs2)) / Math.max(windowS, 1e-3));
  return Math.min(0.999, Math.max(0, mean + z * sd));
}

/** The fewest workers (fractional) whose stall share at `z` is at most `cap`. */
function workersForStall(cap: number, ratePerS: number, meanS: number, cs2: number, windowS: number, z: number): number {
  const f = (c: number) => stallShare(c, ratePerS, meanS, cs2, windowS, z);
  let lo = (ratePerS * meanS) / cap;
  if (f(lo) <= cap) return lo;
  let hi = Math.max(1, lo * 2);
  while (f(hi) > cap && hi < 1e6) hi *= 2;
  for (let k = 0; k < 60; k++) {
    const mid = (lo + hi) / 2;
    if (f(mid) > cap) lo = mid;
    else hi = mid;
  }
  return hi;
}

export function aggregatedReplicas(m: ProfileModel, load: LoadForecast, targets: Targets, corr: Corrections = NO_CORRECTION, o: SizingOptions = {}): AggregatedSizing {
  const p = prefillReplicas(m, load, targets, corr, o);
  const uncached = Math.max(1, load.isl * (1 - clamp01(load.hitRate)));
  const sp = chunkStepMs(m, uncached, o.chunkTokens ?? 8192) * corr.prefill;
  const mix = prefillMix(m, load, corr, o.uncached);
  const ratePerMs = load.requestsPerS / 1000;
  const a = p.load;
  const budget = missTarget(p.unreachable, o.missBudget);
  const z = normalQuantile(1 - (o.missBudget ?? MISS_BUDGET));
  // The decode operating point and the prefill share trade against each other: a lighter decode
  // point (lower ITL) leaves more room for prefill stalls. Try ITL budgets up to the target and
  // keep the one that needs the fewest workers. The decode correction (observed / modelled mixed
  // ITL) scales the whole mixed ITL, so it tightens the target rather than the decode step alone.
  let best: AggregatedSizing | null = null;
  const I = targets.itlMs / (corr.decode > 0 ? corr.decode : 1);
  const uncorrected = { prefill: corr.prefill, decode: 1 };
  const floor = m.decode.minItlMs;
  for (let k = 1; k <= AGG_BUDGET_STEPS; k++) {
    const itlBudget = floor + ((I - floor) * k) / AGG_BUDGET_STEPS;
    const d = decodeReplicas(m, load, { ttftMs: targets.ttftMs, itlMs: itlBudget }, uncorrected);
    if (!d.reachable && best !== null) continue;
    const sd = Math.max(1e-6, d.itlMs);
    let itlUtilization = MAX_PREFILL_UTILIZATION;
    if (sd >= I) itlUtilization = 0.05;
    else if (sp > I) itlUtilization = (1 / sd - 1 / I) / (1 / sd - 1 / sp);
    const u = Math.max(0.05, Math.min(MAX_PREFILL_UTILIZATION, itlUtilization));
    // ITL is judged per request: the stall share a request sees varies with the prefills that land
    // on its worker while it decodes; the cap holds at the miss budget's quantile, not the mean.
    const itlWorkers = workersForStall(u, load.requestsPerS, mix.meanMs / 1000, mix.cs2, decodeWindowS(load.osl, targets.itlMs), z);
    // Each worker spends d / c of its time decoding: its prefills run that much slower.
    const queue = (c: number): PooledQueue => ({ servers: c, ratePerMs, mix, ca2: o.arrivalCv2 ?? 1, stretch: c > d.replicas ? c / (c - d.replicas) : 1e9 });
    const ttft = a > 0 ? serversForMiss(queue, targets.ttftMs, budget, a + d.replicas) : 0;
    const replicas = Math.max(ttft, itlWorkers, a + d.replicas);
    if (best === null || replicas < best.replicas) best = { replicas, prefill: p, decode: d, itlUtilization, chunkStepMs: sp };
  }
  return best!;
}

/** Seconds a request decodes for, at the ITL target (the window its ITL is averaged over). */
export function decodeWindowS(osl: number, itlMs: number): number {
  return Math.max(1, osl) * itlMs / 1000;
}

/** ITL budgets tried by `aggregatedReplicas`. */
const AGG_BUDGET_STEPS = 40;

/** Dynamo's prefill formula (see the header): whole replicas, at least `minReplicas`. */
export function dynamoPrefillReplicas(m: ProfileModel, load: LoadForecast, corr: Corrections = NO_CORRECTION, minReplicas = 1): number {
  const thpt = load.requestsPerS * load.isl * Math.min(1, corr.prefill);
  const perGpu = m.prefill.thptPerGpu(load.isl);
  return Math.max(minReplicas, Math.ceil(thpt / perGpu / m.profile.gpusPerWorker));
}

/** Dynamo's decode formula (see the header): whole replicas, at least `minReplicas`. */
export function dynamoDecodeReplicas(m: ProfileModel, load: LoadForecast, targets: Targets, corr: Corrections = NO_CORRECTION, minReplicas = 1): number {
  const itl = corr.decode <= 0 ? targets.itlMs : targets.itlMs / corr.decode;
  const best = m.decode.bestThroughput(itl, load.isl + load.osl / 2);
  if (best.thptPerGpu <= 0) return minReplicas;
  return Math.max(minReplicas, Math.ceil((load.requestsPerS * load.osl) / best.thptPerGpu / m.profile.gpusPerWorker));
}

/** Dynamo's fractions (before ceil) for an aggregated fleet: prefill share + decode share. */
export function dynamoAggregatedReplicas(m: ProfileModel, load: LoadForecast, targets: Targets, corr: Corrections = NO_CORRECTION): number {
  const p = (load.requestsPerS * load.isl * Math.min(1, corr.prefill)) / m.prefill.thptPerGpu(load.isl) / m.profile.gpusPerWorker;
  const itl = corr.decode <= 0 ? targets.itlMs : targets.itlMs / corr.decode;
  const best = m.decode.bestThroughput(itl, load.isl + load.osl / 2);
  const d = best.thptPerGpu > 0 ? (load.requestsPerS * load.osl) / best.thptPerGpu / m.profile.gpusPerWorker : 0;
  return p + d;
}

/**
 * Scales wanted replicas down to a GPU budget, in proportion (as Dynamo does), keeping at least
 * `min` of each. Returns the counts unchanged when they fit.
 */
export function fitGpuBudget(prefill: number, decode: number, gpusPrefill: number, gpusDecode: number, budget: number, minPrefill = 1, minDecode = 1): { prefill: number; decode: number; capped: boolean } {
  const total = prefill * gpusPrefill + decode * gpusDecode;
  if (!Number.isFinite(budget) || total <= budget) return { prefill, decode, capped: false };
  const scale = budget / total;
  let p = Math.max(minPrefill, Math.floor(prefill * scale));
  let d = Math.max(minDecode, Math.floor(decode * scale));
  // Floors can leave a worker's worth of GPUs unused: give it to whichever was cut more.
  while (p * gpusPrefill + d * gpusDecode > budget && (p > minPrefill || d > minDecode)) {
    if (p > minPrefill && p / prefill >= d / Math.max(decode, 1)) p--;
    else if (d > minDecode) d--;
    else p--;
  }
  return { prefill: p, decode: d, capped: true };
}

function clamp01(x: number): number {
  return x < 0 ? 0 : x > 1 ? 1 : x;
}
