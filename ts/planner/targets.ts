/**
 * Latency targets, checked once when a planner starts: a zero, negative or non-numeric target, or
 * one below the fastest the profile ever measured (the shortest prompt's TTFT alone on a worker,
 * the lightest decode step's ITL), is refused with a message that names the profile's best.
 */
import type { ProfileModel } from "./interpolate.js";
import type { Targets } from "./replicas.js";
import { UnreachableTargetError } from "./errors.js";

export function validateTargets(m: ProfileModel, t: Partial<Targets>): Targets {
  const check = (name: string, v: number | undefined): number => {
    if (v === undefined) throw new UnreachableTargetError(`the ${name} target is required`);
    if (typeof v !== "number" || !Number.isFinite(v) || v <= 0) throw new UnreachableTargetError(`the ${name} target must be a number of milliseconds > 0 (got ${String(v)})`);
    return v;
  };
  const ttftMs = check("TTFT", t.ttftMs);
  const itlMs = check("ITL", t.itlMs);
  const src = m.profile.source;
  if (ttftMs <= m.prefill.minTtftMs) {
    throw new UnreachableTargetError(
      `TTFT target ${ttftMs} ms is out of reach: the fastest prefill in ${src} takes ${m.prefill.minTtftMs.toFixed(1)} ms (a ${m.profile.prefill.isl[0]}-token prompt alone on a worker)`,
    );
  }
  if (itlMs <= m.decode.minItlMs) {
    throw new UnreachableTargetError(`ITL target ${itlMs} ms is out of reach: the fastest decode step in ${src} takes ${m.decode.minItlMs.toFixed(2)} ms`);
  }
  return { ttftMs, itlMs };
}
