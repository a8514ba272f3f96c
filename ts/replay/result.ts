/**
 * What a replay measures, per routing policy, and the collector both clocks fill in. Field names
 * are the `--json` contract (docs/replay.md); times are simulated milliseconds (the engines'
 * clock), except `wallMs` and `routerCpuUsPerRequest`.
 */
import type { RouterMode } from "../router/types.js";

export type ReplayClock = "virtual" | "real";

export interface Percentiles {
  p50: number;
  p90: number;
  p99: number;
  mean: number;
  max: number;
}

export interface WorkerSummary {
  id: string;
  /** Requests routed to it. */
  requests: number;
  /** Its own vllm:prefix_cache_hits / vllm:prefix_cache_queries. */
  hitRate: number;
  /** Time-averaged running + waiting requests (its own gauges). */
  meanActive: number;
  maxActive: number;
}

/** Sampled every `intervalMs` of simulated time. */
export interface Timeline {
  intervalMs: number;
  /** Sample times, ms since the first arrival. */
  tMs: number[];
  /** Hit rate of the prefix-cache queries made in each interval (null: none made). */
  hitRate: (number | null)[];
  /** Per worker (in `perWorker` order), running + waiting requests at each sample. */
  active: number[][];
}

export interface PolicyResult {
  policy: RouterMode;
  clock: ReplayClock;
  trace: string;
  workers: number;
  /** Requests sent to a worker. */
  requests: number;
  completed: number;
  failed: number;
  /** Stopped early (Ctrl-C): the numbers cover what completed. */
  partial: boolean;
  /** Prefix-cache hit rate from the workers' own metrics: Σ hits / Σ queries (tokens). */
  hitRate: number;
  /** Prompt tokens loaded from the workers' CPU offload tiers (`prompt_tokens_cached_by_source{source="host"}`). */
  prefixCacheHostHits?: number;
  /** GPU and CPU tier hits over the same queries. */
  hitRateAllTiers?: number;
  prefixCacheQueries: number;
  prefixCacheHits: number;
  /** Virtual clock: requests the engines preempted (Σ `vllm:num_preemptions`). */
  preemptions?: number;
  /** Arrival to first token. */
  ttftMs: Percentiles;
  /** Arrival to last token. */
  e2eMs: Percentiles;
  /** Output tokens per second of simulated time (first arrival to last completion). */
  throughput: number;
  /** Completed requests per second of simulated time. */
  requestThroughput: number;
  /** Simulated time from the first arrival to the last completion. */
  durationMs: number;
  /** Load imbalance: max / mean of the workers' active requests, averaged over the samples with load. */
  imbalance: number;
  /**
   * Time spent in the router (decisions, lifecycle calls, KV events, metrics) per request, µs.
   * Virtual clock: scaled by the replay's CPU share (CPU time / wall time), so other load on the
   * machine does not count; real clock: wall time of the (synchronous) router calls.
   */
  routerCpuUsPerRequest: number;
  /** Wall-clock time of the replay. */
  wallMs: number;
  perWorker: WorkerSummary[];
  timeline: Timeline;
  /** TTFT CDF, at most ~200 points: [ms, fraction of requests with TTFT <= ms]. */
  ttftCdf: [number, number][];
  /**
   * Real clock only: TTFT as the HTTP client saw it (request sent to first byte), wall time x the
   * speedup; includes the gateway and HTTP, magnified by the speedup.
   */
  clientTtftMs?: Percentiles;
  /** Real clock only: simulated time / wall time. */
  speedup?: number;
}

/** One completed request (`onRequest`). */
export interface RequestRecord {
  /** Its index in the trace. */
  index: number;
  worker: string;
  ttftMs: number;
  e2eMs: number;
  outputTokens: number;
  /** Prompt tokens its engine found in its prefix cache (virtual clock only). */
  cachedTokens?: number;
}

/** Percentiles of a sample (nearest rank); zeros when empty. */
export function percentiles(values: Float64Array): Percentiles {
  const n = values.length;
  if (n === 0) return { p50: 0, p90: 0, p99: 0, mean: 0, max: 0 };
  const sorted = Float64Array.from(values).sort();
  const at = (q: number) => sorted[Math.min(n - 1, Math.max(0, Math.ceil(q * n) - 1))]!;
  let sum = 0;
  for (let i = 0; i < n; i++) sum += sorted[i]!;
  return { p50: at(0.5), p90: at(0.9), p99: at(0.99), mean: sum / n, max: sorted[n - 1]! };
}

/** An empirical CDF reduced to at most `points` steps. */
export function cdf(values: Float64Array, points = 200): [number, number][] {
  const n = values.length;
  if (n === 0) return [];
  const sorted = Float64Array.from(values).sort();
  const out: [number, number][] = [];
  const step = Math.max(1, Math.floor(n / points));
  for (let i = step - 1; i < n; i += step) out.push([round3(sorted[i]!), round3((i + 1) / n)]);
  if (out[out.length - 1]![1] !== 1) out.push([round3(sorted[n - 1]!), 1]);
  return out;
}

const round3 = (x: number) => Math.round(x * 1000) / 1000;

/** A growable Float64Array. */
export class Samples {
  private buf = new Float64Array(1024);
  length = 0;
  push(v: number): void {
    if (this.length === this.buf.length) {
      const grown = new Float64Array(this.buf.length * 2);
      grown.set(this.buf);
      this.buf = grown;
    }
    this.buf[this.length++] = v;
  }
  values(): Float64Array {
    return this.buf.subarray(0, this.length);
  }
}

/**
 * Collects one policy's measurements as the replay runs (either clock) and builds its result.
 * Workers are indices 0..n-1 in the order given.
 */
export class ResultCollector {
  readonly ttft = new Samples();
  readonly e2e = new Samples();
  requests = 0;
  completed = 0;
  failed = 0;
  outputTokens = 0;
  firstArrival = Infinity;
  lastFinish = 0;
  routerMs = 0;
  readonly perWorkerRequests: number[];
  private readonly tMs: number[] = [];
  private readonly hitRate: (number | null)[] = [];
  private readonly active: number[][];
  private lastQueries = 0;
  private lastHits = 0;
  private imbalanceSum = 0;
  private imbalanceSamples = 0;

  constructor(
    readonly workerIds: readonly string[],
    readonly intervalMs: number,
  ) {
    this.perWorkerRequests = workerIds.map(() => 0);
    this.active = workerIds.map(() => []);
  }

  arrived(t: number, worker: number): void {
    if (t < this.firstArrival) this.firstArrival = t;
    this.requests++;
    this.perWorkerRequests[worker]!++;
  }

  /** A completed request: its TTFT and end-to-end latency, when it ended (for the makespan). */
  finished(ttftMs: number, e2eMs: number, end: number, outputTokens: number): void {
    this.completed++;
    this.outputTokens += outputTokens;
    this.ttft.push(ttftMs);
    this.e2e.push(e2eMs);
    if (end > this.lastFinish) this.lastFinish = end;
  }

  /** One timeline sample: cumulative prefix-cache counters (all workers) and each worker's load. */
  sample(t: number, queries: number, hits: number, active: readonly number[]): void {
    const dq = queries - this.lastQueries;
    this.tMs.push(Math.round(t - (Number.isFinite(this.firstArrival) ? this.firstArrival : 0)));
    this.hitRate.push(dq > 0 ? round3((hits - this.lastHits) / dq) : null);
    this.lastQueries = queries;
    this.lastHits = hits;
    let max = 0;
    let sum = 0;
    for (let w = 0; w < active.length; w++) {
      const a = active[w]!;
      this.active[w]!.push(a);
      sum += a;
      if (a > max) max = a;
    }
    if (sum > 0) {
      this.imbalanceSum += max / (sum / active.length);
      this.imbalanceSamples++;
    }
  }

  build(input: {
    policy: RouterMode;
    clock: ReplayClock;
    trace: string;
    partial: boolean;
    wallMs: number;
    /** Per worker, its own counters. */
    prefixCache: { queries: number; hits: number; hostHits?: number }[];
    preemptions?: number;
  }): PolicyResult {
    let queries = 0;
    let hits = 0;
    let hostHits = 0;
    for (const c of input.prefixCache) {
      queries += c.queries;
      hits += c.hits;
      hostHits += c.hostHits ?? 0;
    }
    const duration = this.completed > 0 ? this.lastFinish - this.firstArrival : 0;
    const perWorker: WorkerSummary[] = this.workerIds.map((id, w) => {
      const series = this.active[w]!;
      let sum = 0;
      let max = 0;
      for (const a of series) {
        sum += a;
        if (a > max) max = a;
      }
      const c = input.prefixCache[w] ?? { queries: 0, hits: 0 };
      return {
        id,
        requests: this.perWorkerRequests[w]!,
        hitRate: c.queries > 0 ? c.hits / c.queries : 0,
        meanActive: series.length > 0 ? round3(sum / series.length) : 0,
        maxActive: max,
      };
    });
    return {
      policy: input.policy,
      clock: input.clock,
      trace: input.trace,
      workers: this.workerIds.length,
      requests: this.requests,
      completed: this.completed,
      failed: this.failed,
      partial: input.partial,
      hitRate: queries > 0 ? hits / queries : 0,
      prefixCacheQueries: queries,
      prefixCacheHits: hits,
      prefixCacheHostHits: hostHits,
      hitRateAllTiers: queries > 0 ? (hits + hostHits) / queries : 0,
      ...(input.preemptions !== undefined ? { preemptions: input.preemptions } : {}),
      ttftMs: percentiles(this.ttft.values()),
      e2eMs: percentiles(this.e2e.values()),
      throughput: duration > 0 ? (this.outputTokens / duration) * 1000 : 0,
      requestThroughput: duration > 0 ? (this.completed / duration) * 1000 : 0,
      durationMs: duration,
      imbalance: this.imbalanceSamples > 0 ? this.imbalanceSum / this.imbalanceSamples : 1,
      routerCpuUsPerRequest: this.requests > 0 ? (this.routerMs * 1000) / this.requests : 0,
      wallMs: input.wallMs,
      perWorker,
      timeline: { intervalMs: this.intervalMs, tMs: this.tMs, hitRate: this.hitRate, active: this.active },
      ttftCdf: cdf(this.ttft.values()),
    };
  }
}
