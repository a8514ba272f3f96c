/**
 * The `dynamo-polynomial` profile times steps with Dynamo's mocker polynomial: a lone prefill of
 * t new tokens takes 16.50142 + 0.01518344·t + 4.209989e-7·t² ms, a decode step
 * max(1, 5.74 + 54.01·u − 25.74·u²) ms with u the decoding requests' KV share, a mixed step the sum;
 * cached tokens are not prefilled; a bad polynomial is a clear config error.
 */
import { describe, expect, it } from "vitest";
import { InvalidConfigError } from "../ts/errors.js";
import { resolveMockEngineConfig } from "../ts/mocker/config.js";
import { ENGINE_PROFILE_NAMES } from "../ts/mocker/profiles.js";
import { DYNAMO_POLYNOMIAL, polynomialStepMs } from "../ts/mocker/step-timing.js";
import { VirtualWorker } from "../ts/replay/virtual-worker.js";

const prefillMs = (t: number) => 16.50142 + 0.01518344 * t + 4.209989e-7 * t * t;
const decodeMs = (u: number) => Math.max(1, 5.74 + 54.01 * u - 25.74 * u * u);

/** Runs one engine's steps to the end; returns each step's (start, duration) and the requests' first-token times. */
function run(prompts: { id: string; at: number; tokens: Uint32Array; max: number }[], numGpuBlocks = 1000) {
  const worker = new VirtualWorker({ model: "m", profile: "dynamo-polynomial", numGpuBlocks }, () => {});
  const first = new Map<string, number>();
  const steps: number[] = [];
  let now = 0;
  let next = 0;
  const sorted = [...prompts].sort((a, b) => a.at - b.at);
  for (;;) {
    while (next < sorted.length && sorted[next]!.at <= now) {
      const p = sorted[next++]!;
      worker.submit({ requestId: p.id, promptTokenIds: p.tokens, maxTokens: p.max, ignoreEos: true, arrivalTime: p.at }, (out) => {
        if (!first.has(p.id) && out.tokenIds.length > 0) first.set(p.id, out.timings.firstToken!);
      });
    }
    const step = worker.core.beginStep(now);
    if (step === null) {
      if (next === sorted.length) break;
      now = sorted[next]!.at;
      continue;
    }
    steps.push(step);
    now += step;
    worker.core.endStep();
  }
  return { first, steps };
}

const tokens = (n: number, base: number) => Uint32Array.from({ length: n }, (_, i) => base + i);

describe("dynamo-polynomial engine timing", () => {
  it("is a named profile; the polynomial matches Dynamo's curve values", () => {
    expect(ENGINE_PROFILE_NAMES).toContain("dynamo-polynomial");
    // Dynamo's own check values: prefill(1000) = 32.1058589 ms, decode(0.5) = 26.31 ms, floor 1 ms.
    expect(polynomialStepMs(DYNAMO_POLYNOMIAL, 1000, 0, 0, 1)).toBeCloseTo(32.1058589, 6);
    expect(polynomialStepMs(DYNAMO_POLYNOMIAL, 0, 3, 500, 1000)).toBeCloseTo(26.31, 9);
    expect(polynomialStepMs(DYNAMO_POLYNOMIAL, 0, 1, 0, 1000)).toBeCloseTo(5.74, 9);
    expect(polynomialStepMs({ ...DYNAMO_POLYNOMIAL, decode: [-10, 0, 0] }, 0, 1, 0, 1000)).toBe(1);
    expect(polynomialStepMs(DYNAMO_POLYNOMIAL, 1000, 1, 500, 1000)).toBeCloseTo(32.1058589 + 26.31, 6);
    expect(polynomialStepMs(DYNAMO_POLYNOMIAL, 0, 0, 0, 1000)).toBe(0);
  });

  it("times the engine's steps: a lone prefill, then decode steps by KV share", () => {
    const { first, steps } = run([{ id: "a", at: 0, tokens: tokens(1000, 5), max: 3 }]);
    expect(first.get("a")).toBeCloseTo(prefillMs(1000), 6);
    expect(steps[0]).toBeCloseTo(prefillMs(1000), 6);
    // Two decode steps over 1,000 then 1,001 context tokens of a 1000 × 16-token cache.
    expect(steps[1]).toBeCloseTo(decodeMs(1000 / 16000), 9);
    expect(steps[2]).toBeCloseTo(decodeMs(1001 / 16000), 9);
    expect(steps.length).toBe(3);
  });

  it("a mixed step is prefill plus decode; chunked prefill sums the batch's new tokens", () => {
    // b arrives while a decodes: that step prefills b (2,000 tokens) and decodes a.
    const { first, steps } = run([
      { id: "a", at: 0, tokens: tokens(1000, 5), max: 4 },
      { id: "b", at: 1, tokens: tokens(2000, 90_000), max: 2 },
    ]);
    const mixed = prefillMs(2000) + decodeMs(1000 / 16000);
    expect(steps[1]).toBeCloseTo(mixed, 6);
    expect(first.get("b")).toBeCloseTo(prefillMs(1000) + mixed, 6);
    // A 10,000-token prompt: chunks of the 8,192-token budget, each its own prefill step.
    const long = run([{ id: "c", at: 0, tokens: tokens(10_000, 7), max: 1 }], 2000);
    expect(long.steps[0]).toBeCloseTo(prefillMs(8192), 6);
    expect(long.steps[1]).toBeCloseTo(prefillMs(10_000 - 8192), 6);
  });

  it("cached prompt tokens are not prefilled again", () => {
    const p = tokens(1600, 11);
    const { first } = run([
      { id: "a", at: 0, tokens: p, max: 1 },
      { id: "b", at: 10_000, tokens: p, max: 1 },
    ]);
    // b hits all but the last block (vLLM recomputes the last token): 16 new tokens.
    expect(first.get("b")! - 10_000).toBeCloseTo(prefillMs(16), 6);
  });

  it("refuses a malformed polynomial", () => {
    const bad = (polynomial: unknown) => () =>
      resolveMockEngineConfig({ model: "m", timing: { polynomial: polynomial as never } });
    expect(bad({ prefill: [1, 2], decode: [1, 2, 3], decodeFloorMs: 1 })).toThrow(InvalidConfigError);
    expect(bad({ prefill: [1, 2, NaN], decode: [1, 2, 3], decodeFloorMs: 1 })).toThrow(/prefill must be three finite numbers/);
    expect(bad({ prefill: [1, 2, 3], decode: [1, 2, 3], decodeFloorMs: -1 })).toThrow(/decodeFloorMs/);
    expect(resolveMockEngineConfig({ model: "m", profile: "dynamo-polynomial" }).timing.polynomial).toEqual(DYNAMO_POLYNOMIAL);
  });
});
