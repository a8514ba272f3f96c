/**
 * Engine profiles: a profile sets the timing model's and the KV cache's defaults, explicit settings
 * win, unknown names are a clear config error; the replay's fleet line prices a trace's prefill on
 * the profile it names.
 */
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { InvalidConfigError } from "../ts/errors.js";
import { resolveMockEngineConfig } from "../ts/mocker/config.js";
import { DEFAULT_ENGINE_PROFILE, ENGINE_PROFILE_NAMES, engineProfile } from "../ts/mocker/profiles.js";
import { describeFleet, prefillLoad } from "../ts/replay/replay.js";
import type { Trace } from "../ts/replay/trace.js";
import { VirtualWorker } from "../ts/replay/virtual-worker.js";

/** Simulated ms from submitting one prompt of `n` tokens on an idle engine to its first token. */
function ttft(profile: string, n: number): number {
  const worker = new VirtualWorker({ model: "m", profile }, () => {});
  let first: number | null = null;
  const promptTokenIds = Uint32Array.from({ length: n }, (_, i) => i + 7);
  worker.submit({ requestId: "r", promptTokenIds, maxTokens: 4, ignoreEos: true, arrivalTime: 0 }, (out) => {
    if (first === null && out.tokenIds.length > 0) first = out.timings.firstToken;
  });
  let now = 0;
  while (first === null) {
    const step = worker.core.beginStep(now);
    if (step === null) throw new Error("the engine stopped before the first token");
    now += step;
    worker.core.endStep();
  }
  return first;
}

describe("engine profiles", () => {
  it("set the timing and KV cache defaults; explicit settings win; unknown names are refused", () => {
    expect(ENGINE_PROFILE_NAMES).toEqual(["llama-3.1-8b-h100", "llama-3.1-70b-h100-tp4", "dynamo-polynomial", "llama-3.1-8b-h200"]);
    const base = resolveMockEngineConfig({ model: "m" });
    expect(base.timing).toEqual(engineProfile(DEFAULT_ENGINE_PROFILE).timing);
    const big = resolveMockEngineConfig({ model: "m", profile: "llama-3.1-70b-h100-tp4" });
    expect(big.timing.prefillPerTokenMs).toBe(0.089);
    expect(big.numGpuBlocks).toBe(26_000);
    const mixed = resolveMockEngineConfig({ model: "m", profile: "llama-3.1-70b-h100-tp4", numGpuBlocks: 500, timing: { stepBaseMs: 1 } });
    expect(mixed).toMatchObject({ numGpuBlocks: 500, timing: { stepBaseMs: 1, prefillPerTokenMs: 0.089 } });
    expect(() => resolveMockEngineConfig({ model: "m", profile: "h100" })).toThrow(InvalidConfigError);
  });

  it("llama-3.1-8b-h200 reproduces the prefill measured on the H200 (scripts/profile-gpu) within 10%", () => {
    const measured = JSON.parse(readFileSync("scripts/profile-gpu/profile-llama-3.1-8b-h200.json", "utf8")) as { prefill: { isl: number; ms: number }[] };
    for (const isl of [4096, 8192, 16384, 32768]) {
      const m = measured.prefill.find((p) => p.isl === isl)!.ms;
      const t = ttft("llama-3.1-8b-h200", isl);
      expect(Math.abs(t - m) / m).toBeLessThan(0.1);
    }
  });

  it("a 70B worker on four GPUs prefills ~2.5x slower than an 8B one on one", () => {
    const small = ttft("llama-3.1-8b-h100", 4000);
    const large = ttft("llama-3.1-70b-h100-tp4", 4000);
    expect(large / small).toBeGreaterThan(2.2);
    expect(large / small).toBeLessThan(2.8);
  });

  it("the fleet line states the load a trace puts on the fleet before caching", () => {
    // Two 1,000-token prompts 1 s apart on one 8B worker: 2 × (1000 × 0.035 + 1.2e-6 × 1000² / 2) ms.
    const trace: Trace = {
      file: "t.jsonl",
      format: "mooncake",
      requests: [0, 1000].map((t, index) => ({ index, line: index + 1, timestampMs: t, inputLength: 1000, maxTokens: 1 })),
    };
    const fleet = { workers: 1, profile: "llama-3.1-8b-h100" };
    expect(prefillLoad(trace, fleet)).toBeCloseTo((2 * (35 + 0.6)) / 1000, 9);
    expect(prefillLoad(trace, { ...fleet, workers: 2 })).toBeCloseTo((2 * (35 + 0.6)) / 2000, 9);
    expect(prefillLoad({ ...trace, requests: trace.requests.slice(0, 1) }, fleet)).toBeNull();
    expect(describeFleet(fleet, trace)).toBe(
      "fleet: 1 x llama-3.1-8b-h100 (Llama-3.1-8B, bf16, one H100 SXM), 26,000 KV blocks of 16 tokens each; the prompts' prefill without cache hits takes 7% of the fleet's time",
    );
  });
});
