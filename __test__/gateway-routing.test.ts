/**
 * Routing end to end through the gateway, over real mocker processes with real KV events: the
 * hot-spotting pathology of incumbent KV routers (one long shared system prompt sends everything to
 * one worker) must not happen, without giving up the cache hits that affinity would get.
 */
import { afterAll, describe, expect, it } from "vitest";
import { agent, get, metricValue, MODEL, post, startFleet, startMockWorker, type Fleet } from "./helpers/gateway-fleet.js";
import type { VllmWorker } from "../ts/workers/index.js";

const SYSTEM = Array.from({ length: 2000 }, (_, i) => 1000 + ((i * 7919) % 100_000));
const REQUESTS = 200;
const CONCURRENCY = 16;

function prompt(i: number): number[] {
  return [...SYSTEM, ...Array.from({ length: 40 }, (_, k) => 110_000 + ((i * 41 + k) % 15_000))];
}

/** Sends the workload at a fixed concurrency; returns the worker of each response. */
async function run(url: string): Promise<string[]> {
  const workers: string[] = [];
  let next = 0;
  const loop = async () => {
    while (next < REQUESTS) {
      const i = next++;
      const r = await post(url, "/v1/completions", { model: MODEL, prompt: prompt(i), max_tokens: 16, ignore_eos: true });
      expect(r.status).toBe(200);
      workers.push((r.headers["x-kvroute-worker"] as string | undefined) ?? "direct");
    }
  };
  await Promise.all(Array.from({ length: CONCURRENCY }, loop));
  return workers;
}

async function hitRate(urls: string[]): Promise<number> {
  let hits = 0;
  let queries = 0;
  for (const u of urls) {
    const m = (await get(u, "/metrics")).text;
    hits += metricValue(m, "vllm:prefix_cache_hits_total");
    queries += metricValue(m, "vllm:prefix_cache_queries_total");
  }
  return hits / queries;
}

let fleet: Fleet | null = null;
let single: VllmWorker | null = null;
afterAll(async () => {
  await fleet?.stop();
  await single?.stop();
  void agent;
});

describe("gateway: hot-spotting", () => {
  it("200 requests sharing a 2,000-token system prompt at concurrency 16 spread over 4 workers, keeping affinity's hit rate", async () => {
    // With metrics scraping on (every 250 ms; SCRAPE=<ms> to change, 0: off). The router prices
    // the load a scrape shows that it did not place as of the scrape's arrival: its own requests,
    // this short, finishing before the next scrape must not read as "external load" (they used
    // to starve a worker for a scrape interval: 3 of 200 requests on one at a 1 s interval).
    const scrape = Number(process.env.SCRAPE ?? 250);
    const [f, w] = await Promise.allSettled([
      startFleet(4, { routerMode: "kv", metricsScrapeIntervalMs: scrape }, { speedup: 20 }),
      startMockWorker({ id: "affinity", speedup: 20, kvEvents: false }, null),
    ]);
    fleet = f.status === "fulfilled" ? f.value : null;
    single = w.status === "fulfilled" ? w.value : null;
    if (!fleet || !single) throw f.status === "rejected" ? f.reason : (w as PromiseRejectedResult).reason;
    // Pure affinity: the same workload on one worker, which holds every prefix it has seen.
    await run(single.url);
    const affinity = await hitRate([single.url]);

    const served = await run(fleet.gateway.url);
    const counts = new Map<string, number>();
    for (const w of served) counts.set(w, (counts.get(w) ?? 0) + 1);
    const mean = REQUESTS / 4;
    const busiest = Math.max(...counts.values());
    const kv = await hitRate(fleet.workers.map((w) => w.url));
    if (process.env.KVROUTE_TEST_VERBOSE) {
      console.log(`hot-spotting: per worker ${JSON.stringify(Object.fromEntries(counts))}; hit rate ${kv.toFixed(3)} vs pure affinity ${affinity.toFixed(3)}`);
    }
    expect(counts.size).toBe(4);
    expect(busiest).toBeLessThanOrEqual(1.5 * mean);
    expect(kv).toBeGreaterThanOrEqual(0.9 * affinity);
    const m = (await get(fleet.gateway.url, "/metrics")).text;
    // What the router saved is what the workers hit (same token accounting, same blocks).
    expect(metricValue(m, "kvroute_prefill_tokens_saved_total")).toBeGreaterThan(0.8 * metricValue(m, "kvroute_prefill_tokens_avoidable_total"));
  });
});
