/**
 * KV cache tiers end to end, real processes: a gateway (in this process) and two mocker workers
 * (`kvroute mock` started through VllmWorker, KV events over ZMQ), one with an OffloadingConnector
 * CPU tier. A prefix evicted from that worker's GPU to its CPU tier shows in the router's index on
 * the CPU tier; the next request with the prefix goes to that worker, which reports a CPU-tier
 * (host) hit.
 */
import { afterEach, describe, expect, it } from "vitest";
import { startGateway } from "../ts/gateway/index.js";
import { get, metricValue, MODEL, post, startMockWorker } from "./helpers/gateway-fleet.js";

const cleanups: (() => Promise<unknown> | unknown)[] = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

/** Polls an async condition until it holds (bounded by the test's timeout). */
async function until(cond: () => Promise<boolean>): Promise<void> {
  while (!(await cond())) await new Promise((r) => setTimeout(r, 50));
}

const ids = (n: number, start: number) => Array.from({ length: n }, (_, i) => start + i);

describe("KV cache tiers across real processes", () => {
  it("a prefix evicted to the CPU tier is routed back to its worker, which loads it from the CPU", async () => {
    const gateway = await startGateway({ host: "127.0.0.1", port: 0, metricsScrapeIntervalMs: 200 }, { log: null });
    cleanups.push(() => gateway.close());
    const offload = JSON.stringify({ kv_connector: "OffloadingConnector", kv_role: "kv_both", kv_connector_extra_config: { num_cpu_blocks: 1024 } });
    const [w0, w1] = await Promise.all([
      startMockWorker({ id: "w0", numGpuBlocks: 64, extraArgs: ["--kv-transfer-config", offload] }, gateway.registry),
      startMockWorker({ id: "w1", numGpuBlocks: 64 }, gateway.registry),
    ]);
    cleanups.push(() => w0!.stop({ graceMs: 1000 }), () => w1!.stop({ graceMs: 1000 }));
    const url0 = w0!.url;

    // The prefix is computed on w0 (sent to it directly), then other prompts push it out of w0's
    // 64-block GPU pool: its blocks go to the CPU tier.
    const prefix = ids(40 * 16, 1);
    const direct = async (prompt: number[]) => {
      const r = await post(url0, "/v1/completions", { model: MODEL, prompt, max_tokens: 2, ignore_eos: true });
      expect(r.status).toBe(200);
    };
    await direct([...prefix, 7]);
    for (let k = 1; k <= 3; k++) await direct(ids(50 * 16, 100_000 * k));

    const explain = async () => {
      const r = await post(gateway.url, "/v1/kvroute/route", { model: MODEL, prompt: [...prefix, 8], explain: true });
      expect(r.status).toBe(200);
      return r.json as { worker: string; candidates: { worker: string; tiers: Record<string, number>; loadBlocks: number }[] };
    };
    // The router's index: w0 holds the prefix on the CPU tier (and no longer on its GPU).
    await until(async () => {
      const c = (await explain()).candidates.find((x) => x.worker === "w0");
      return (c?.tiers["CPU"] ?? 0) >= 40 && (c?.tiers["GPU"] ?? 0) === 0;
    });
    const view = await explain();
    expect(view.worker).toBe("w0");
    expect(view.candidates.find((x) => x.worker === "w0")!.loadBlocks).toBeGreaterThan(0);

    // Through the gateway: the request goes to w0, which loads the prefix from its CPU tier.
    const hostBefore = metricValue((await get(url0, "/metrics")).text, "vllm:prompt_tokens_cached_by_source_total", { source: "host" });
    const r = await post(gateway.url, "/v1/completions", { model: MODEL, prompt: [...prefix, 9], max_tokens: 2, ignore_eos: true });
    expect(r.status).toBe(200);
    expect(r.headers["x-kvroute-worker"]).toBe("w0");
    const hostAfter = metricValue((await get(url0, "/metrics")).text, "vllm:prompt_tokens_cached_by_source_total", { source: "host" });
    expect(hostAfter - hostBefore).toBe(prefix.length);
    expect(metricValue((await get(w1!.url, "/metrics")).text, "vllm:prompt_tokens_cached_by_source_total", { source: "host" })).toBe(0);
  }, 60_000);
});
