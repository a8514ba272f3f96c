/**
 * GatewayMetricsSource: the SLA planner's interval observation, read from the gateway's own
 * `kvroute_*` metrics (its /metrics text, scraped, or `GatewayMetrics.text()` in process) as the
 * difference between two snapshots:
 * requests = routing decisions; prompt tokens = kvroute_prefill_tokens_total; cached tokens =
 * kvroute_prefill_tokens_saved_total; output tokens = first tokens + later token chunks (the TTFT
 * and ITL histograms' counts: one chunk per token, as vLLM and the mocker stream); TTFT p90 from
 * the TTFT histogram's buckets; ITL = the ITL histogram's sum / count.
 * A counter that went down (the gateway restarted) restarts the baseline: that interval reads as
 * empty rather than negative.
 */
import type { IntervalObservation } from "./sla-planner.js";
import { buckets, parseSamples, quantileBetween, sum, type Sample } from "./prometheus-text.js";

interface Snapshot {
  at: number;
  requests: number;
  input: number;
  cached: number;
  ttftCount: number;
  itlCount: number;
  itlSum: number;
  ttftBuckets: [number, number][];
}

function snapshot(samples: Sample[], at: number): Snapshot {
  return {
    at,
    requests: sum(samples, "kvroute_routing_decisions_total"),
    input: sum(samples, "kvroute_prefill_tokens_total"),
    cached: sum(samples, "kvroute_prefill_tokens_saved_total"),
    ttftCount: sum(samples, "kvroute_time_to_first_token_seconds_count"),
    itlCount: sum(samples, "kvroute_inter_token_latency_seconds_count"),
    itlSum: sum(samples, "kvroute_inter_token_latency_seconds_sum"),
    ttftBuckets: buckets(samples, "kvroute_time_to_first_token_seconds"),
  };
}

export class GatewayMetricsSource {
  private last: Snapshot | null = null;
  constructor(
    private readonly text: () => Promise<string>,
    private readonly clock: () => number = () => Date.now(),
  ) {}

  /** Takes the first snapshot (the next `observe` covers the time from now). */
  async prime(): Promise<void> {
    this.last = snapshot(parseSamples(await this.text()), this.clock());
  }

  async observe(): Promise<IntervalObservation> {
    const now = snapshot(parseSamples(await this.text()), this.clock());
    const prev = this.last;
    this.last = now;
    const intervalS = prev ? Math.max(1e-3, (now.at - prev.at) / 1000) : 1e-3;
    if (!prev || now.requests < prev.requests || now.ttftCount < prev.ttftCount) {
      return { intervalS, requests: 0, inputTokens: 0, cachedTokens: 0, outputTokens: 0, ttftMs: null, itlMs: null };
    }
    const itlN = now.itlCount - prev.itlCount;
    const ttft = quantileBetween(prev.ttftBuckets, now.ttftBuckets, 0.9);
    return {
      intervalS,
      requests: now.requests - prev.requests,
      inputTokens: now.input - prev.input,
      cachedTokens: now.cached - prev.cached,
      outputTokens: now.ttftCount - prev.ttftCount + itlN,
      ttftMs: ttft === null ? null : ttft * 1000,
      itlMs: itlN > 0 ? ((now.itlSum - prev.itlSum) / itlN) * 1000 : null,
    };
  }
}
