/**
 * A step's simulated duration, from the step's plan (docs/mocker.md, "Timing model"): kvroute's
 * linear model (`TimingModel`), or Dynamo's polynomial. The engine core (./engine-core.ts) calls
 * `stepDurationMs` once per step.
 *
 * Dynamo's default engine timing (its mocker's `PerfModel::Polynomial`, the AISimulate baseline),
 * for side-by-side runs at matched engines (`benchmarks/vs-dynamo.ts`):
 *
 * - prefill: `c0 + c1·t + c2·t²` ms, `t` = the new (uncached) tokens the step computes, summed
 *   over the batch; no attention-over-prefix term;
 * - decode: `max(floor, d0 + d1·u + d2·u²)` ms, `u` = the decoding requests' KV tokens / the KV
 *   cache's capacity in tokens;
 * - a step that does both lasts prefill + decode; a request's first token (the end of its
 *   prefill) adds no decode time.
 */
import type { ResolvedMockEngineConfig } from "./config.js";
import type { Scheduled } from "./core-request.js";

export interface StepPolynomial {
  /** Prefill ms = p[0] + p[1]·t + p[2]·t². */
  prefill: readonly [number, number, number];
  /** Decode ms = max(decodeFloorMs, d[0] + d[1]·u + d[2]·u²). */
  decode: readonly [number, number, number];
  decodeFloorMs: number;
}

/** Dynamo 1.6.1's defaults (Dynamo's mocker: lib/mocker, `PerfModel::Polynomial`). */
export const DYNAMO_POLYNOMIAL: Readonly<StepPolynomial> = Object.freeze({
  prefill: Object.freeze([16.50142, 0.01518344, 4.209989e-7] as const),
  decode: Object.freeze([5.74, 54.01, -25.74] as const),
  decodeFloorMs: 1,
});

/** A step's simulated ms: `prefillTokens` new tokens prefilled, `decodeSeqs` requests decoding one
 * token each over `decodeKvTokens` context tokens, in a KV cache of `kvCapacityTokens`. */
export function polynomialStepMs(
  p: StepPolynomial,
  prefillTokens: number,
  decodeSeqs: number,
  decodeKvTokens: number,
  kvCapacityTokens: number,
): number {
  let ms = 0;
  if (prefillTokens > 0) ms += p.prefill[0] + p.prefill[1] * prefillTokens + p.prefill[2] * prefillTokens * prefillTokens;
  if (decodeSeqs > 0) {
    const u = decodeKvTokens / kvCapacityTokens;
    ms += Math.max(p.decodeFloorMs, p.decode[0] + p.decode[1] * u + p.decode[2] * u * u);
  }
  return ms;
}

/**
 * Simulated duration of a step (docs/mocker.md, "Timing model"). Charges the CPU-tier loads of the
 * linear model's requests, and clears them: they are paid once.
 */
export function stepDurationMs(config: ResolvedMockEngineConfig, plan: readonly Scheduled[]): number {
  const t = config.timing;
  if (t.polynomial !== undefined) return polynomialStep(config, t.polynomial, plan);
  let ms = t.stepBaseMs;
  for (const { req, numNew } of plan) {
    if (req.numTokens - req.numComputed === 1 && numNew === 1 && req.numOutput > 0) {
      // Decode: one token against the whole context.
      ms += t.decodePerSeqMs + t.decodePerContextTokenMs * req.numComputed;
    } else {
      ms += t.prefillPerTokenMs * numNew + t.attentionPerTokenPairMs * numNew * (req.numComputed + numNew / 2);
    }
    if (req.cpuLoadTokens > 0) {
      ms += t.cpuLoadPerTokenMs * req.cpuLoadTokens;
      req.cpuLoadTokens = 0;
    }
  }
  return ms;
}

/** Dynamo's polynomial step time: decode steps are the one-token steps of requests past their
 * prompt, the rest is prefill. */
function polynomialStep(config: ResolvedMockEngineConfig, p: StepPolynomial, plan: readonly Scheduled[]): number {
  let prefill = 0;
  let decodeSeqs = 0;
  let decodeKv = 0;
  for (const { req, numNew } of plan) {
    if (req.numTokens - req.numComputed === 1 && numNew === 1 && req.numOutput > 0) {
      decodeSeqs++;
      decodeKv += req.numComputed;
    } else prefill += numNew;
  }
  return polynomialStepMs(p, prefill, decodeSeqs, decodeKv, config.numGpuBlocks * config.blockSize);
}

/** Checks a polynomial's shape: clear errors, never NaN timings later. */
export function polynomialProblem(p: unknown): string | null {
  if (typeof p !== "object" || p === null) return "must be an object";
  const q = p as Partial<StepPolynomial>;
  for (const k of ["prefill", "decode"] as const) {
    const c = q[k];
    if (!Array.isArray(c) || c.length !== 3 || !c.every((x) => typeof x === "number" && Number.isFinite(x))) {
      return `${k} must be three finite numbers`;
    }
  }
  if (typeof q.decodeFloorMs !== "number" || !(q.decodeFloorMs >= 0) || !Number.isFinite(q.decodeFloorMs)) return "decodeFloorMs must be a finite number >= 0";
  return null;
}
