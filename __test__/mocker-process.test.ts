/**
 * `kvroute mock` as a process (node dist/cli.mjs mock ...; `npm run build:ts` first), over real
 * HTTP and real ZMQ: prefix-cache TTFT and metrics, KV events rebuilding the mocker's exact cached
 * set in a KvIndexer (engine keying) after a random workload with evictions, data-parallel ranks on
 * vLLM's offset ports, disaggregated prefill/decode through the flags, flag errors.
 */
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { afterEach, describe, expect, it } from "vitest";
import { KvIndexer } from "../ts/core/kv-indexer.js";
import { VllmEventSource, type KvEventSink } from "../ts/events/index.js";
import { metric, startMocker, type MockerProcess } from "./helpers/mocker-process.js";
import { freePorts, waitUntil } from "./helpers/zmq-peer.js";
import { mulberry32 as rng } from "../ts/util/prng.js";

const root = fileURLToPath(new URL("..", import.meta.url));
const cli = `${root}dist/cli.mjs`;
const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  await Promise.all(cleanups.splice(0).map((c) => c()));
});

async function mock(args: string[], env: Record<string, string> = {}): Promise<MockerProcess> {
  const m = await startMocker(args, env);
  cleanups.push(m.stop);
  return m;
}

async function post(url: string, path: string, body: unknown, headers: Record<string, string> = {}) {
  const res = await fetch(url + path, { method: "POST", headers: { "content-type": "application/json", ...headers }, body: JSON.stringify(body) });
  return { status: res.status, body: (await res.json()) as Record<string, any> };
}

async function getJson(url: string, path: string) {
  return (await (await fetch(url + path)).json()) as Record<string, any>;
}

/** A KvIndexer fed by a VllmEventSource; remembers the last seq applied per rank. */
function indexerOver(endpoint: string, replayEndpoint: string, dataParallelSize = 1) {
  const indexer = new KvIndexer({ blockSize: 16, keying: "engine", hashAlgorithm: "sha256", hashSeed: "0" });
  const lastSeq = new Map<number, bigint>();
  const sink: KvEventSink = {
    applyBatch(workerId, dpRank, seq, payload) {
      const r = indexer.applyEventBatch(workerId, payload);
      if (r.malformed) throw new Error(r.malformed);
      lastSeq.set(dpRank, seq);
    },
    clear(workerId, dpRank) {
      indexer.clearWorker({ workerId, dpRank });
    },
  };
  const source = new VllmEventSource({ workerId: "w", endpoint, replayEndpoint, dataParallelSize, sink, catchUp: true, socket: { reconnectIvlMs: 20 } });
  cleanups.push(() => source.close());
  source.start();
  return { indexer, lastSeq, source };
}

/** The indexer holds exactly the mocker's cached set for that rank. */
async function expectSameBlocks(url: string, ix: ReturnType<typeof indexerOver>, rank: number) {
  const view = await getJson(url, `/debug/kv-cache?dp_rank=${rank}`);
  if (view.lastEventSeq !== null) {
    await waitUntil(() => ix.lastSeq.get(rank) === BigInt(view.lastEventSeq), `events up to seq ${view.lastEventSeq} of rank ${rank}`);
  }
  const cached: string[] = view.cachedBlocks;
  for (const h of cached) {
    const matches = ix.indexer.findMatches(BigUint64Array.of(BigInt(h)));
    expect(matches.filter((m) => m.dpRank === rank).map((m) => m.blocks)).toEqual([1]);
  }
  return { view, cached };
}

describe("kvroute mock (process)", () => {
  it("a second request with the same prefix gets a lower simulated TTFT; vllm:prefix_cache_hits rises", async () => {
    const m = await mock(["mock-8b", "--host", "127.0.0.1", "--port", "0", "--speedup", "20", "--enable-per-request-metrics"]);
    const prefix = Array.from({ length: 1600 }, (_, i) => 1000 + i);
    const before = await (await fetch(`${m.url}/metrics`)).text();
    const a = await post(m.url, "/v1/completions", { model: "mock-8b", prompt: [...prefix, 1, 2, 3], max_tokens: 3 });
    const mid = await (await fetch(`${m.url}/metrics`)).text();
    const b = await post(m.url, "/v1/completions", { model: "mock-8b", prompt: [...prefix, 4, 5, 6, 7], max_tokens: 3 });
    const after = await (await fetch(`${m.url}/metrics`)).text();
    expect(a.status).toBe(200);
    expect(b.body.metrics.time_to_first_token_ms).toBeLessThan(a.body.metrics.time_to_first_token_ms / 4);
    expect(metric(before, "vllm:prefix_cache_hits_total")).toBe(0);
    expect(metric(mid, "vllm:prefix_cache_hits_total")).toBe(0);
    expect(metric(after, "vllm:prefix_cache_hits_total")).toBe(1600);
    const ttftSum = (t: string) => metric(t, "vllm:time_to_first_token_seconds_sum");
    expect(ttftSum(after) - ttftSum(mid)).toBeLessThan(ttftSum(mid) / 4);
  });

  for (const format of ["current", "0.22.0"]) {
    it(`KV events over ZMQ (${format} wire form) rebuild exactly the mocker's cached blocks in a KvIndexer after a random workload with evictions`, async () => {
      const base = await freePorts(2);
      const m = await mock(
        [
          "mock-8b", "--host", "127.0.0.1", "--port", "0", "--zero-time", "--num-gpu-blocks-override", "96", "--max-num-seqs", "6",
          "--kv-events-format", format,
          "--kv-events-config", JSON.stringify({ enable_kv_cache_events: true, publisher: "zmq", endpoint: `tcp://*:${base}`, replay_endpoint: `tcp://*:${base + 1}`, topic: "kv@w" }),
        ],
        { PYTHONHASHSEED: "0" },
      );
      const ix = indexerOver(`tcp://127.0.0.1:${base}`, `tcp://127.0.0.1:${base + 1}`);
      await waitUntil(() => ix.source.stats().connected, "the SUB to connect");
      const rand = rng(format.length);
      const prefixes = Array.from({ length: 5 }, (_, p) => Array.from({ length: 16 * (2 + p) + p }, (_, i) => 100_000 * (p + 1) + i));
      let next = 0;
      const worker = async () => {
        while (next < 150) {
          const i = next++;
          const prefix = prefixes[Math.floor(rand() * prefixes.length)]!;
          const suffix = Array.from({ length: 1 + Math.floor(rand() * 60) }, () => 1 + Math.floor(rand() * 90_000));
          const r = await post(m.url, "/v1/completions", { prompt: [...prefix, ...suffix], max_tokens: 1 + Math.floor(rand() * 40), ignore_eos: true, request_id: `q${i}` });
          expect(r.status).toBe(200);
        }
      };
      await Promise.all(Array.from({ length: 8 }, worker));
      const { view, cached } = await expectSameBlocks(m.url, ix, 0);
      expect(view.usedBlocks).toBe(0);
      expect(view.duplicateStores).toBe(0);
      expect(cached.length).toBeGreaterThan(40);
      const stats = ix.indexer.eventStats();
      expect(stats.eventsRemoved).toBeGreaterThan(100);
      expect(ix.indexer.stats().blocks).toBe(cached.length);
      expect(stats.workers[0]).toMatchObject({ hashMismatch: false, blockSizeMismatch: false });
      expect(stats.workers[0]!.checked).toBeGreaterThan(0);
      expect(stats.skippedEvents).toBe(0);
      const metrics = await (await fetch(`${m.url}/metrics`)).text();
      expect(metric(metrics, "vllm:num_preemptions_total")).toBeGreaterThanOrEqual(0);
    });
  }

  it("data-parallel ranks: one engine each, events on vLLM's offset ports, X-data-parallel-rank routing", async () => {
    const base = await freePorts(12);
    const m = await mock(
      [
        "mock-8b", "--host", "127.0.0.1", "--port", "0", "--zero-time", "-dp", "2", "--num-gpu-blocks-override", "400",
        "--kv-events-config", JSON.stringify({ enable_kv_cache_events: true, endpoint: `tcp://*:${base}`, replay_endpoint: `tcp://*:${base + 10}` }),
      ],
      { PYTHONHASHSEED: "0" },
    );
    expect(m.kvEvents.map((e) => [e.dpRank, e.endpoint.split(":").pop(), e.replayEndpoint!.split(":").pop()])).toEqual([
      [0, String(base), String(base + 10)],
      [1, String(base + 1), String(base + 11)],
    ]);
    const ix = indexerOver(`tcp://127.0.0.1:${base}`, `tcp://127.0.0.1:${base + 10}`, 2);
    await waitUntil(() => ix.source.stats().connected, "both SUBs to connect");
    for (let i = 0; i < 12; i++) {
      const rank = i % 2;
      const r = await post(m.url, "/v1/completions", { prompt: Array.from({ length: 40 + i }, (_, t) => 1 + t + 1000 * i), max_tokens: 5 }, { "X-data-parallel-rank": String(rank) });
      expect(r.status).toBe(200);
    }
    for (const rank of [0, 1]) {
      const { cached } = await expectSameBlocks(m.url, ix, rank);
      expect(cached.length).toBeGreaterThan(10);
    }
    const metrics = await (await fetch(`${m.url}/metrics`)).text();
    expect(metrics).toContain('vllm:request_success_total{model_name="mock-8b",engine="1",finished_reason="length"} 6.0');
    expect((await post(m.url, "/v1/completions", { prompt: "x" }, { "X-data-parallel-rank": "5" })).status).toBe(400);
  });

  it("disaggregated prefill/decode through --kv-transfer-config", async () => {
    const kv = (id: string) => ["--kv-transfer-config", JSON.stringify({ kv_connector: "NixlConnector", kv_role: "kv_both", engine_id: id })];
    // Speedup 5: with NIXL installed the decode side pulls the blocks for real, and the first pull
    // (UCX wire-up included) takes real milliseconds that simulated time must dwarf.
    const common = ["mock-8b", "--host", "127.0.0.1", "--port", "0", "--speedup", "5", "--enable-per-request-metrics"];
    const [p, d] = await Promise.all([mock([...common, ...kv("p0")]), mock([...common, ...kv("d0")])]);
    const prompt = Array.from({ length: 3000 }, (_, i) => i + 7);
    const pre = await post(p.url, "/v1/completions", { prompt, max_tokens: 1, kv_transfer_params: { do_remote_decode: true } });
    expect(pre.body.kv_transfer_params).toMatchObject({ do_remote_prefill: true, remote_engine_id: "p0", remote_host: "localhost", remote_port: 5600 });
    const dec = await post(d.url, "/v1/completions", { prompt, max_tokens: 4, kv_transfer_params: pre.body.kv_transfer_params });
    const local = await post(p.url, "/v1/completions", { prompt: prompt.map((t) => t + 1), max_tokens: 4 });
    expect(dec.body.usage.completion_tokens).toBe(4);
    expect(dec.body.metrics.time_to_first_token_ms).toBeLessThan(local.body.metrics.time_to_first_token_ms / 2);
  });

  it("rejects unknown flags (exit 2) and bad configs clearly", () => {
    const run = (...args: string[]) => spawnSync(process.execPath, [cli, "mock", ...args], { encoding: "utf8", timeout: 20_000 });
    const bad = run("m", "--no-such-flag", "1");
    expect(bad.status).toBe(2);
    expect(bad.stderr).toContain("unrecognized argument: --no-such-flag");
    expect(run("m", "--prefix-caching-hash-algo", "md5").status).toBe(2);
    expect(run("m", "--kv-events-config", "{not json").stderr).toContain("--kv-events-config must be a JSON object");
    expect(run("m", "--kv-events-config", '{"enable_kv_cache_events": true, "bogus": 1}').stderr).toContain("unknown field 'bogus'");
    const small = run("m", "--num-gpu-blocks-override", "10", "--max-model-len", "4096", "--port", "0");
    expect(small.status).toBe(2);
    expect(small.stderr).toContain("larger than the maximum number of tokens that can be stored in KV cache");
    const profile = run("m", "--profile", "llama-9b", "--port", "0");
    expect(profile.status).toBe(2);
    expect(profile.stderr).toContain('unknown engine profile "llama-9b" (expected one of llama-3.1-8b-h100, llama-3.1-70b-h100-tp4, dynamo-polynomial, llama-3.1-8b-h200)');
    expect(run("--help").status).toBe(0);
  });
});
