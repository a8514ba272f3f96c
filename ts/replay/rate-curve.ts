/**
 * Rate modulation of a trace: the same requests, in the same order, with arrival times warped so
 * the rate follows a day-like curve — low at the start, `high / low` times higher at the peak,
 * `periods` peaks over the trace's span, the span unchanged. Used to benchmark planners on the
 * Mooncake trace (whose own rate is nearly flat).
 *
 * f(t) = low + (high - low) x (1 - cos(2 pi periods t / T)) / 2; an original time u maps to the t
 * with F(t) = mean(f) x u, F the integral of f (monotonic: f > 0), so the rate at t is the
 * original rate x f(t) / mean(f).
 */
import { InvalidConfigError } from "../errors.js";
import type { Trace } from "./trace.js";

export interface DayCurve {
  /** Peaks over the trace. Default 1. */
  periods?: number;
  /** Relative rate at the trough. Default 0.25. */
  low?: number;
  /** Relative rate at the peak. Default 1. */
  high?: number;
}

export function modulateRate(trace: Trace, curve: DayCurve = {}): Trace {
  const periods = curve.periods ?? 1;
  const low = curve.low ?? 0.25;
  const high = curve.high ?? 1;
  if (!(low > 0 && high >= low)) throw new InvalidConfigError(`a day curve needs 0 < low <= high (got ${low}, ${high})`);
  if (!(periods > 0)) throw new InvalidConfigError(`a day curve needs periods > 0 (got ${periods})`);
  const reqs = trace.requests;
  if (reqs.length < 2) return trace;
  const t0 = reqs[0]!.timestampMs;
  const T = reqs[reqs.length - 1]!.timestampMs - t0;
  if (!(T > 0)) return trace;
  const a = (low + high) / 2;
  const b = (high - low) / 2;
  const w = (2 * Math.PI * periods) / T;
  const F = (t: number) => a * t - (b / w) * Math.sin(w * t);
  const warp = (u: number) => {
    const goal = a * u;
    let lo = 0;
    let hi = T;
    for (let k = 0; k < 60; k++) {
      const mid = (lo + hi) / 2;
      if (F(mid) < goal) lo = mid;
      else hi = mid;
    }
    return (lo + hi) / 2;
  };
  return {
    ...trace,
    file: `${trace.file} (day curve x${periods}, ${low}..${high})`,
    requests: reqs.map((r) => ({ ...r, timestampMs: t0 + Math.round(warp(r.timestampMs - t0)) })),
  };
}

/**
 * Spreads requests that share one timestamp evenly over the time to the next distinct timestamp.
 * The Mooncake traces record arrivals on 3-second ticks (about 10 requests, up to 28, on the same
 * millisecond): replayed as recorded, every tick is a clump whose size does not shrink with the
 * rate, so a warped trough still delivers peak-sized clumps. Spreading keeps each tick's requests
 * and order and the trace's span; it removes the clumps the recording's resolution made.
 */
export function spreadTicks(trace: Trace): Trace {
  const reqs = trace.requests;
  if (reqs.length < 2) return trace;
  const out = reqs.map((r) => ({ ...r }));
  let i = 0;
  while (i < out.length) {
    let j = i;
    while (j + 1 < out.length && out[j + 1]!.timestampMs === out[i]!.timestampMs) j++;
    const t = out[i]!.timestampMs;
    // The last tick has no next one: spread it over the trace's mean gap between ticks.
    const next = j + 1 < out.length ? out[j + 1]!.timestampMs : t + meanTick(reqs);
    const n = j - i + 1;
    for (let k = 0; k < n; k++) out[i + k]!.timestampMs = t + Math.round(((next - t) * k) / n);
    i = j + 1;
  }
  return { ...trace, file: `${trace.file} (ticks spread)`, requests: out };
}

function meanTick(reqs: Trace["requests"]): number {
  let ticks = 0;
  for (let k = 1; k < reqs.length; k++) if (reqs[k]!.timestampMs !== reqs[k - 1]!.timestampMs) ticks++;
  return ticks > 0 ? (reqs[reqs.length - 1]!.timestampMs - reqs[0]!.timestampMs) / ticks : 0;
}

/** The curve's relative rate at time t of a span T (for reports). */
export function curveAt(t: number, T: number, curve: DayCurve = {}): number {
  const low = curve.low ?? 0.25;
  const high = curve.high ?? 1;
  return low + ((high - low) * (1 - Math.cos((2 * Math.PI * (curve.periods ?? 1) * t) / T))) / 2;
}

/**
 * A bigger service from one trace: `tenants` copies of its requests as user populations that share
 * no prefix (each copy's Mooncake block ids moved to a range of its own), copy k rotated in time by
 * k/tenants of the span so the populations are at different moments of their own traffic (their
 * bursts do not line up). The span is kept, the rate multiplied by `tenants`; requests are
 * renumbered in arrival order. A copy's requests that rotate past the span's end wrap to its start.
 */
export function tileTenants(trace: Trace, tenants: number): Trace {
  if (!(Number.isInteger(tenants) && tenants >= 1)) throw new InvalidConfigError(`tenants must be an integer >= 1 (got ${tenants})`);
  if (tenants === 1) return trace;
  const reqs = trace.requests;
  if (reqs.some((r) => r.hashIds === undefined)) {
    throw new InvalidConfigError("tenants need a Mooncake trace (block ids to give each copy its own prefixes)");
  }
  if (reqs.length === 0) return trace;
  let maxId = 0;
  for (const r of reqs) for (const h of r.hashIds!) if (h > maxId) maxId = h;
  const stride = maxId + 1;
  if (stride * tenants > Number.MAX_SAFE_INTEGER) throw new InvalidConfigError(`tenants: ${tenants} copies of block ids up to ${maxId} overflow`);
  const t0 = reqs[0]!.timestampMs;
  const span = reqs[reqs.length - 1]!.timestampMs - t0;
  const period = span > 0 ? span + 1 : 1;
  const out: Trace["requests"] = [];
  for (let k = 0; k < tenants; k++) {
    const shift = Math.round((k * period) / tenants);
    for (const r of reqs) {
      out.push({ ...r, timestampMs: t0 + ((r.timestampMs - t0 + shift) % period), hashIds: k === 0 ? r.hashIds : r.hashIds!.map((h) => h + k * stride) });
    }
  }
  // Stable: within a timestamp, copy order then trace order.
  out.sort((a, b) => a.timestampMs - b.timestampMs);
  for (let i = 0; i < out.length; i++) out[i] = { ...out[i]!, index: i };
  return { ...trace, file: `${trace.file} (x${tenants} tenants)`, requests: out };
}
