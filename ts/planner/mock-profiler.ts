/**
 * `kvroute profile --engine mock`: sweeps the mocker's engine (the same EngineCore and timing
 * model mocker workers run) on a simulated clock, in this process, and returns the profile in
 * Dynamo's fields. Seconds of wall time for a sweep that on a GPU takes an hour.
 *
 * - prefill, per input length: one request alone on an idle engine, distinct tokens (no prefix
 *   hit); TTFT = its first token's simulated time; throughput per GPU = isl / TTFT / gpus (as
 *   Dynamo's profiler computes it).
 * - decode, per context length and concurrency: `c` requests of `context` prompt tokens start
 *   together; once every one has its first token, ITL = the mean gap between later tokens;
 *   throughput per GPU = c / ITL / gpus; KV usage = c x context / max_kv_tokens.
 */
import type { MockEngineConfig } from "../mocker/config.js";
import { VirtualWorker } from "../replay/virtual-worker.js";
import { profileToJson, parseProfile, type PerfProfile, PROFILE_FORMAT } from "./profile.js";

export interface MockSweepOptions {
  engine: Partial<MockEngineConfig>;
  gpusPerWorker?: number;
  isl?: number[];
  contexts?: number[];
  /** Shares of the KV cache to load in the decode sweep. */
  kvUsages?: number[];
  /** Output tokens measured per decode point. Default 24. */
  decodeTokens?: number;
}

export const DEFAULT_SWEEP = {
  isl: [256, 512, 1024, 2048, 4096, 8192, 16384, 32768],
  contexts: [1024, 4096, 8192, 16384, 32768],
  kvUsages: [0.01, 0.05, 0.1, 0.2, 0.35, 0.5, 0.7, 0.9],
};

let tokenSeed = 1;
function freshTokens(n: number): Uint32Array {
  // Distinct per request so no prefix is shared; the values are just ids.
  const base = (tokenSeed++ * 7919) % 90000;
  return Uint32Array.from({ length: n }, (_, i) => 1 + ((base + i * 13 + tokenSeed) % 100000));
}

/** Runs an engine until `done()` or it idles; returns the simulated time. */
function runUntil(w: VirtualWorker, now: number, done: () => boolean): number {
  while (!done()) {
    const d = w.core.beginStep(now);
    if (d === null) break;
    now += d;
    w.core.endStep();
  }
  return now;
}

export function sweepMockEngine(o: MockSweepOptions): PerfProfile {
  const gpus = o.gpusPerWorker ?? 1;
  const engine = { model: "profile", ...o.engine, kvEventsConfig: { enableKvCacheEvents: false } } as MockEngineConfig;
  const probe = new VirtualWorker(engine, () => {});
  const maxKvTokens = (probe.config.numGpuBlocks - 1) * probe.config.blockSize;
  const maxLen = probe.config.maxModelLen;
  const isl: number[] = [];
  const ttft: number[] = [];
  const pThpt: number[] = [];
  for (const n of o.isl ?? DEFAULT_SWEEP.isl) {
    if (n + 1 > maxLen) continue;
    const w = new VirtualWorker(engine, () => {});
    let first = -1;
    w.submit({ requestId: "p", promptTokenIds: freshTokens(n), maxTokens: 1, ignoreEos: true, arrivalTime: 0 }, (out) => {
      if (first < 0 && out.tokenIds.length > 0) first = out.timings.firstToken ?? 0;
    });
    const end = runUntil(w, 0, () => first >= 0);
    const t = first >= 0 ? first : end;
    isl.push(n);
    ttft.push(t);
    pThpt.push((n / t) * 1000 / gpus);
  }
  const kv: number[] = [];
  const ctx: number[] = [];
  const itl: number[] = [];
  const dThpt: number[] = [];
  const measureTokens = o.decodeTokens ?? 24;
  for (const context of o.contexts ?? DEFAULT_SWEEP.contexts) {
    if (context + 2 * measureTokens + 1 > maxLen) continue;
    const seen = new Set<number>();
    for (const usage of o.kvUsages ?? DEFAULT_SWEEP.kvUsages) {
      const c = Math.max(1, Math.min(probe.config.maxNumSeqs, Math.round((usage * maxKvTokens) / (context + measureTokens))));
      if (seen.has(c)) continue;
      seen.add(c);
      const w = new VirtualWorker(engine, () => {});
      // Early requests decode while later ones prefill: every request runs long enough to still
      // be decoding once the last has started, and only the gaps after that count.
      const prefillSteps = Math.ceil((c * context) / probe.config.maxNumBatchedTokens);
      const maxTokens = prefillSteps + measureTokens + 2;
      const times: number[][] = Array.from({ length: c }, () => []);
      let now = 0;
      let started = 0;
      for (let i = 0; i < c; i++) {
        w.submit({ requestId: `d${i}`, promptTokenIds: freshTokens(context), maxTokens, ignoreEos: true, arrivalTime: 0 }, (out) => {
          if (out.tokenIds.length === 0) return;
          if (times[i]!.length === 0) started++;
          for (let k = 0; k < out.tokenIds.length; k++) times[i]!.push(now);
        });
      }
      // `now` inside the sink is the step's end: step, then advance, then end the step.
      let allFirst = -1;
      for (;;) {
        const d = w.core.beginStep(now);
        if (d === null) break;
        now += d;
        w.core.endStep();
        if (allFirst < 0 && started === c) allFirst = now;
      }
      let gaps = 0;
      let count = 0;
      for (const t of times) {
        const later = t.filter((x) => x > allFirst).slice(0, measureTokens + 1);
        if (later.length >= 2) {
          gaps += later[later.length - 1]! - later[0]!;
          count += later.length - 1;
        }
      }
      if (count === 0) continue;
      const itlMs = gaps / count;
      kv.push(Math.min(1, (c * (context + measureTokens / 2)) / maxKvTokens));
      ctx.push(context);
      itl.push(itlMs);
      dThpt.push((c / itlMs) * 1000 / gpus);
    }
  }
  return parseProfile(
    {
      format: PROFILE_FORMAT,
      engine: `mock:${o.engine.profile ?? "llama-3.1-8b-h100"}`,
      model: probe.config.servedModelNames[0],
      gpus_per_worker: gpus,
      prefill_isl: isl,
      prefill_ttft: ttft,
      prefill_thpt_per_gpu: pThpt,
      x_kv_usage: kv,
      y_context_length: ctx,
      z_itl: itl,
      z_thpt_per_gpu: dThpt,
      max_kv_tokens: maxKvTokens,
    },
    "mock sweep",
  );
}

export { profileToJson };
