/**
 * Interpolation over a profile: prefill TTFT and throughput against input length (piecewise
 * linear, clamped at the ends, TTFT extrapolated in proportion past the longest point), and
 * decode ITL and throughput against KV usage and context length (piecewise linear along KV usage
 * within each profiled context length, then linear between context lengths). Piecewise linear
 * rather than Dynamo's cubic fits: it never overshoots between points, so a sparse profile cannot
 * invent capacity it did not measure.
 */
import type { DecodeProfile, PerfProfile, PrefillProfile } from "./profile.js";

/** y at x over sorted xs, clamped to the end values outside [xs[0], xs[n-1]]. */
export function lerp(xs: readonly number[], ys: readonly number[], x: number): number {
  const n = xs.length;
  if (n === 1 || x <= xs[0]!) return ys[0]!;
  if (x >= xs[n - 1]!) return ys[n - 1]!;
  let lo = 0;
  let hi = n - 1;
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (xs[mid]! <= x) lo = mid;
    else hi = mid;
  }
  const t = (x - xs[lo]!) / (xs[hi]! - xs[lo]!);
  return ys[lo]! + t * (ys[hi]! - ys[lo]!);
}

export class PrefillCurve {
  constructor(private readonly p: PrefillProfile) {}

  /** TTFT in ms of one request of `isl` tokens on an idle worker. */
  ttftMs(isl: number): number {
    const xs = this.p.isl;
    const last = xs[xs.length - 1]!;
    if (isl > last) return (this.p.ttftMs[xs.length - 1]! * isl) / last;
    return lerp(xs, this.p.ttftMs, isl);
  }

  /** Prompt tokens/s per GPU at `isl` tokens per request. */
  thptPerGpu(isl: number): number {
    return lerp(this.p.isl, this.p.thptPerGpu, isl);
  }

  /** The shortest TTFT the profile shows (its shortest input). */
  get minTtftMs(): number {
    return Math.min(...this.p.ttftMs);
  }
}

interface Row {
  context: number;
  kv: number[];
  itl: number[];
  thpt: number[];
}

export interface DecodePoint {
  thptPerGpu: number;
  itlMs: number;
  kvUsage: number;
}

/** Steps of the KV-usage scan in `bestThroughput`. */
const KV_STEPS = 200;

export class DecodeSurface {
  private readonly rows: Row[];
  readonly maxKvTokens: number;

  constructor(p: DecodeProfile, maxKvTokens: number) {
    this.maxKvTokens = maxKvTokens;
    const byCtx = new Map<number, { kv: number; itl: number; thpt: number }[]>();
    for (let i = 0; i < p.kvUsage.length; i++) {
      const c = p.contextLength[i]!;
      let list = byCtx.get(c);
      if (!list) byCtx.set(c, (list = []));
      list.push({ kv: p.kvUsage[i]!, itl: p.itlMs[i]!, thpt: p.thptPerGpu[i]! });
    }
    this.rows = [...byCtx.entries()]
      .sort((a, b) => a[0] - b[0])
      .map(([context, pts]) => {
        pts.sort((a, b) => a.kv - b.kv);
        // Points at the same KV usage: keep the last (a repeated measurement).
        const dedup = pts.filter((q, i) => i === pts.length - 1 || pts[i + 1]!.kv !== q.kv);
        return { context, kv: dedup.map((q) => q.kv), itl: dedup.map((q) => q.itl), thpt: dedup.map((q) => q.thpt) };
      });
  }

  private at(field: "itl" | "thpt", kv: number, context: number): number {
    const rows = this.rows;
    if (context <= rows[0]!.context || rows.length === 1) return lerp(rows[0]!.kv, rows[0]![field], kv);
    const last = rows[rows.length - 1]!;
    if (context >= last.context) return lerp(last.kv, last[field], kv);
    let k = 1;
    while (rows[k]!.context < context) k++;
    const a = rows[k - 1]!;
    const b = rows[k]!;
    const t = (context - a.context) / (b.context - a.context);
    return (1 - t) * lerp(a.kv, a[field], kv) + t * lerp(b.kv, b[field], kv);
  }

  itlMs(kvUsage: number, context: number): number {
    return this.at("itl", kvUsage, context);
  }

  thptPerGpu(kvUsage: number, context: number): number {
    return this.at("thpt", kvUsage, context);
  }

  /** KV usage of `concurrency` sequences of `context` tokens each. */
  kvUsageFor(concurrency: number, context: number): number {
    return (concurrency * context) / this.maxKvTokens;
  }

  /** Highest KV usage any row of the profile reaches. */
  private get maxKv(): number {
    return Math.max(...this.rows.map((r) => r.kv[r.kv.length - 1]!));
  }

  /**
   * The highest throughput per GPU whose ITL fits `itlMs` at this context length, scanning KV
   * usage (neither curve need be monotonic). None fits: throughput 0, with the lightest point's
   * ITL, so the caller can say the target is out of reach.
   */
  bestThroughput(itlMs: number, context: number): DecodePoint {
    const top = this.maxKv;
    let best: DecodePoint | null = null;
    for (let s = 0; s <= KV_STEPS; s++) {
      const kv = (top * s) / KV_STEPS;
      const itl = this.itlMs(kv, context);
      if (itl > itlMs) continue;
      const thpt = this.thptPerGpu(kv, context);
      if (best === null || thpt > best.thptPerGpu) best = { thptPerGpu: thpt, itlMs: itl, kvUsage: kv };
    }
    return best ?? { thptPerGpu: 0, itlMs: this.itlMs(0, context), kvUsage: 0 };
  }

  /** The lowest ITL anywhere in the profile. */
  get minItlMs(): number {
    return Math.min(...this.rows.flatMap((r) => r.itl));
  }
}

/** A profile with its interpolators. */
export class ProfileModel {
  readonly prefill: PrefillCurve;
  readonly decode: DecodeSurface;
  constructor(readonly profile: PerfProfile) {
    this.prefill = new PrefillCurve(profile.prefill);
    this.decode = new DecodeSurface(profile.decode, profile.maxKvTokens);
  }
}
