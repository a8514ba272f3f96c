/**
 * The simulation tells the truth: the same slice replayed on the virtual clock (in process, no
 * HTTP) and on the real one (mocker processes behind the real gateway, HTTP + SSE + ZMQ KV events
 * + /metrics scraping, timestamps scaled by the speedup) gives the same hit rate within 10% and
 * the same TTFT p50 within 25%. The TTFT bound is loose on purpose: the real clock's share of a
 * busy machine's scheduling delay counts `speedup` times over in simulated time (measured on a busy
 * 2-core box: -5%..+6%, docs/replay.md), while a timing model that drifted (a 2x error in prefill
 * or decode speed) still fails it.
 */
import { describe, expect, it } from "vitest";
import { runLiveReplay } from "../ts/replay/live-replay.js";
import { runVirtualReplay } from "../ts/replay/virtual-replay.js";
import { chatWorkload } from "../ts/replay/workload.js";

describe("virtual vs real clock", () => {
  it("agree on hit rate (10%) and TTFT p50 (25%)", async () => {
    // 166 requests over ~60 simulated seconds (~20 s of wall time at 3x), 2-8 turns each.
    const trace = chatWorkload({
      conversations: 30,
      horizonS: 40,
      thinkS: [2, 6],
      turns: [2, 8],
      apps: 8,
      systemBlocks: [2, 6],
      turnBlocks: [1, 3],
      outputTokens: [40, 240],
    });
    const settings = { trace, policy: "kv" as const, workers: 4, numGpuBlocks: 8000, profile: "llama-3.1-8b-h100" };
    const virtual = await runVirtualReplay(settings);
    const real = await runLiveReplay({ ...settings, speedup: 3 });
    const summary = (r: typeof real) => `hit ${(r.hitRate * 100).toFixed(2)}%, TTFT p50 ${r.ttftMs.p50.toFixed(1)} ms, completed ${r.completed}`;
    console.log(`virtual: ${summary(virtual)}\nreal:    ${summary(real)}`);
    expect(real.completed).toBe(trace.requests.length);
    expect(real.failed).toBe(0);
    expect(real.clock).toBe("real");
    expect(Math.abs(real.hitRate - virtual.hitRate) / virtual.hitRate).toBeLessThan(0.1);
    expect(Math.abs(real.ttftMs.p50 - virtual.ttftMs.p50) / virtual.ttftMs.p50).toBeLessThan(0.25);
    // The live numbers come from the workers' own metrics and the gateway's routing.
    expect(real.prefixCacheQueries).toBe(virtual.prefixCacheQueries);
    expect(real.perWorker.reduce((n, w) => n + w.requests, 0)).toBe(trace.requests.length);
    expect(real.routerCpuUsPerRequest).toBeGreaterThan(0);
  }, 180_000);
});
