/**
 * Router replicas that agree: two `kvroute serve --registry etcd://... --bus nats://...`
 * processes in front of the same real mocker workers (registered in a real etcd), sharing their
 * request load over a real nats-server. Client-side round-robin across the replicas must keep
 * one replica's prefix-cache hit rate, and replicas that start at the same moment must not all
 * pile onto the same worker (the failure Dynamo's users report). Garbage on the load subjects
 * is survived and counted.
 */
import { setMaxListeners } from "node:events";
import { connect } from "@nats-io/transport-node";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { EtcdRegistry } from "../ts/registry/etcd-registry.js";
import type { VllmWorker } from "../ts/workers/index.js";
import { EtcdServer } from "./helpers/etcd-server.js";
import { startServeProcess, stopFleetProcesses, type FleetProcess } from "./helpers/fleet-processes.js";
import { request } from "undici";
import { agent, get, metricValue, MODEL, post, startMockWorker } from "./helpers/gateway-fleet.js";
import { NatsServer } from "./helpers/nats-server.js";

const WORKERS = 4;
let etcd: EtcdServer;
let nats: NatsServer;
let writer: EtcdRegistry;
let workers: VllmWorker[] = [];
let replicas: (FleetProcess & { url: string })[] = [];

beforeAll(async () => {
  [etcd, nats] = await Promise.all([EtcdServer.start(), NatsServer.start()]);
  writer = await EtcdRegistry.connect({ endpoints: etcd.url, namespace: "replicas", log: null });
  workers = await Promise.all(Array.from({ length: WORKERS }, (_, i) => startMockWorker({ id: `w${i}`, speedup: 10 }, writer)));
  // Both replicas start at the same moment.
  const args = ["--registry", etcd.url, "--bus", nats.url, "--namespace", "replicas"];
  replicas = await Promise.all([startServeProcess(args), startServeProcess(args)]);
  for (const r of replicas) {
    await vi.waitFor(async () => expect(metricValue((await get(r.url, "/metrics")).text, "kvroute_fleet_replicas")).toBe(1), { timeout: 10_000, interval: 50 });
  }
}, 120_000);

afterAll(async () => {
  await stopFleetProcesses();
  await Promise.all(workers.map((w) => w.stop({ graceMs: 500 })));
  await writer?.close();
  await Promise.all([etcd?.dispose(), nats?.dispose()]);
});

async function workerCounters(): Promise<{ hits: number; queries: number }> {
  let hits = 0;
  let queries = 0;
  for (const w of workers) {
    const m = (await get(w.url, "/metrics")).text;
    hits += metricValue(m, "vllm:prefix_cache_hits_total");
    queries += metricValue(m, "vllm:prefix_cache_queries_total");
  }
  return { hits, queries };
}

/**
 * Chat sessions in lockstep: each turn resends the whole conversation so far (a 2,000-token
 * history) plus a new user message, every session alternating between the given replicas turn by
 * turn; all sessions send turn t together once every session has its answer to turn t-1. (Free-
 * running sessions make the hit rate hang on sub-millisecond races between one session's next
 * turn and another's first prefill on the same worker, which trade the cache for load with one
 * router as with two; lockstep keeps the comparison about what the replicas know.)
 */
async function chatWorkload(urls: string[], offset: number): Promise<number> {
  const before = await workerCounters();
  const SESSIONS = 8;
  const TURNS = 6;
  const trail: string[] = [];
  const histories = Array.from({ length: SESSIONS }, (_, s) => Array.from({ length: 2000 }, (_, k) => offset + s * 10_000 + k));
  for (let t = 0; t < TURNS; t++) {
    await Promise.all(
      histories.map(async (history, s) => {
        history.push(...Array.from({ length: 60 }, (_, k) => offset + s * 10_000 + 3000 + t * 100 + k));
        const url = urls[(s + t) % urls.length]!; // client-side round-robin: the next turn goes to the next replica
        const r = await post(url, "/v1/completions", { model: MODEL, prompt: history, max_tokens: 8, ignore_eos: true });
        expect(r.status).toBe(200);
        trail[s] = `${trail[s] ?? ""} ${r.headers["x-kvroute-worker"]}@${urls.indexOf(url)}:${r.headers["x-kvroute-overlap-blocks"]}`;
        history.push(...Array.from({ length: 8 }, (_, k) => offset + s * 10_000 + 7000 + t * 100 + k));
      }),
    );
  }
  const after = await workerCounters();
  if (process.env.TRAIL === "1") console.log(trail.join("\n"));
  return (after.hits - before.hits) / (after.queries - before.queries);
}

describe("two gateway replicas sharing load over NATS", () => {
  it("replicas started at the same moment spread a burst sharing a system prompt: no worker gets more than 1.5x the mean", async () => {
    const SYSTEM = Array.from({ length: 1024 }, (_, i) => 200_000 + i);
    const N = 64;
    const perWorker = new Map<string, number>();
    // The whole burst stays in flight until every request has been placed, so the counts are the
    // load each worker carries at once (short requests would let a worker that finishes early
    // take more in total, which is not load). The bodies are not read: backpressure keeps the
    // streams from loading the machine meanwhile.
    const controller = new AbortController();
    setMaxListeners(N, controller.signal); // one listener per request
    const streams = await Promise.all(
      Array.from({ length: N }, async (_, i) => {
        const prompt = [...SYSTEM, ...Array.from({ length: 32 }, (_, k) => 300_000 + i * 100 + k)];
        const res = await request(`${replicas[i % 2]!.url}/v1/completions`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          // 2,000 tokens keep them running for seconds while up to ~28 fit one worker's KV cache
          // (4,000 blocks) with their shared prefix: none waits for KV space.
          body: JSON.stringify({ model: MODEL, prompt, max_tokens: 2000, ignore_eos: true, stream: true }),
          signal: controller.signal,
          dispatcher: agent,
        });
        expect(res.statusCode).toBe(200);
        res.body.on("error", () => {});
        const w = res.headers["x-kvroute-worker"] as string;
        perWorker.set(w, (perWorker.get(w) ?? 0) + 1);
        return res;
      }),
    );
    controller.abort();
    await Promise.allSettled(streams.map((s) => s.body.text()));
    const mean = N / WORKERS;
    const max = Math.max(...perWorker.values());
    console.log(`burst per worker: ${JSON.stringify(Object.fromEntries([...perWorker].sort()))}`);
    expect(max, JSON.stringify(Object.fromEntries(perWorker))).toBeLessThanOrEqual(1.5 * mean);
    // Each replica booked the other's requests (the sync did the work, not luck).
    for (const r of replicas) {
      expect(metricValue((await get(r.url, "/metrics")).text, "kvroute_fleet_load_messages_total", { kind: "started" })).toBeGreaterThanOrEqual(N / 2);
    }
  });

  it("a replica scores workers with the other replica's requests in flight as that replica does", async () => {
    const controller = new AbortController();
    // Long requests through replica 0 only, kept in flight.
    const streams = await Promise.all(
      Array.from({ length: 8 }, async (_, i) => {
        const res = await request(`${replicas[0]!.url}/v1/completions`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ model: MODEL, prompt: Array.from({ length: 512 }, (_, k) => 400_000 + i * 1000 + k), max_tokens: 20_000, ignore_eos: true, stream: true }),
          signal: controller.signal,
          dispatcher: agent,
        });
        expect(res.statusCode).toBe(200);
        res.body.on("data", () => {});
        res.body.on("error", () => {});
        return res;
      }),
    );
    /** Decode blocks per worker as a replica scores them (`explain` of a dry-run decision). */
    const view = async (url: string) => {
      const r = await post(url, "/v1/kvroute/route", { model: MODEL, prompt: [1, 2, 3], explain: true });
      return Object.fromEntries((r.json.candidates as { worker: string; decodeBlocks: number }[]).map((c) => [c.worker, c.decodeBlocks]));
    };
    await vi.waitFor(async () => {
      const [a, b] = [await view(replicas[0]!.url), await view(replicas[1]!.url)];
      const total = Object.values(a).reduce((x, y) => x + y, 0);
      expect(total).toBeGreaterThan(8 * 30); // 8 requests of 32+ context blocks
      // Token counts travel every 16 tokens (one block): the views may differ by that much.
      for (const w of Object.keys(a)) expect(Math.abs(a[w]! - (b[w] ?? 0)), `${w}: ${JSON.stringify({ a, b })}`).toBeLessThanOrEqual(2);
    }, { timeout: 10_000, interval: 50 });
    controller.abort();
    await Promise.allSettled(streams.map((s) => s.body.text()));
  });

  it("round-robin over two replicas reaches a prefix-cache hit rate within 5% of one replica's on the same chat workload", async () => {
    // KVROUTE_TEST_ROUNDS=40 repeats the comparison (docs/fleet.md's counts; with
    // KVROUTE_FLEET_FINISH_ACK_MS=0 in the environment the replicas answer without the ack).
    const rounds = Number(process.env.KVROUTE_TEST_ROUNDS ?? 1);
    for (let round = 0; round < rounds; round++) {
      const one = await chatWorkload([replicas[0]!.url], 1_000_000 + round * 200_000);
      const two = await chatWorkload(replicas.map((r) => r.url), 1_100_000 + round * 200_000);
      console.log(`prefix-cache hit rate: one replica ${one.toFixed(3)}, two replicas ${two.toFixed(3)}`);
      expect(one).toBeGreaterThan(0.5);
      expect(two, `round ${round}: one replica ${one.toFixed(3)}, two ${two.toFixed(3)}`).toBeGreaterThanOrEqual(one * 0.95);
    }
  }, 600_000);

  it("remote load drains: once every request finished, no replica holds another's requests", async () => {
    for (const r of replicas) {
      await vi.waitFor(async () => expect(metricValue((await get(r.url, "/metrics")).text, "kvroute_fleet_remote_requests")).toBe(0), { timeout: 10_000, interval: 50 });
    }
  });

  it("garbage on the load subjects is survived and counted; the replicas keep serving", async () => {
    const nc = await connect({ servers: nats.url });
    nc.publish("kvroute.load.replicas.evil", "{not json");
    nc.publish("kvroute.load.replicas.evil", JSON.stringify({ v: 1, r: "evil", m: [{ k: "s", q: ["id", MODEL, "w0", -1, 0, 0, null] }, { k: "h", a: "nope" }] }));
    nc.publish("kvroute.load.replicas.evil", JSON.stringify({ v: 1, r: "evil", m: [{ k: "s", q: ["id2", MODEL, "w0", 0, 1, 0, null], n: 16, h: "!!notbase64-but-len-odd" }] }));
    nc.publish("kvroute.load.replicas.evil", new Uint8Array([0xff, 0x00, 0x13]));
    nc.publish("kvroute.load.replicas.evil", JSON.stringify([1, 2, 3]));
    await nc.flush();
    await nc.close();
    for (const r of replicas) {
      await vi.waitFor(async () => {
        const m = (await get(r.url, "/metrics")).text;
        expect(metricValue(m, "kvroute_fleet_load_messages_invalid_total", { reason: "bad_json" })).toBe(2);
        expect(metricValue(m, "kvroute_fleet_load_messages_invalid_total", { reason: "bad_shape" })).toBe(4);
      }, { timeout: 5000, interval: 50 });
      const res = await post(r.url, "/v1/completions", { model: MODEL, prompt: [1, 2, 3, 4], max_tokens: 2 });
      expect(res.status).toBe(200);
    }
  });
});
