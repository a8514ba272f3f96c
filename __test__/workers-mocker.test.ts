// Worker control against real mocker processes (`node dist/cli.mjs mock`, built by
// `npm run build:ts`), started through VllmWorker exactly as vLLM would be.
import { afterEach, describe, expect, it } from "vitest";
import { KvIndexer } from "../ts/core/kv-indexer.js";
import { indexerSink, VllmEventSource } from "../ts/events/index.js";
import { metric } from "./helpers/mocker-process.js";
import { waitUntil } from "./helpers/zmq-peer.js";
import {
  findFreePortRange,
  groupAlive,
  isAlive,
  launchTopology,
  mockerCommand,
  VllmWorker,
  type WorkerGroup,
  type WorkerRecord,
  type WorkerRegistryHook,
} from "../ts/workers/index.js";

const MODEL = "Qwen/Qwen3-0.6B";
const cleanup: (() => Promise<void>)[] = [];

afterEach(async () => {
  await Promise.all(cleanup.splice(0).map((f) => f()));
});

class MemoryHook implements WorkerRegistryHook {
  readonly records = new Map<string, WorkerRecord>();
  async register(record: WorkerRecord) {
    this.records.set(record.id, record);
  }
  async deregister(id: string) {
    this.records.delete(id);
  }
}

async function complete(url: string, prompt: string, maxTokens = 4): Promise<{ choices: { text: string }[] }> {
  const res = await fetch(`${url}/v1/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model: MODEL, prompt, max_tokens: maxTokens }),
  });
  expect(res.status).toBe(200);
  return (await res.json()) as { choices: { text: string }[] };
}

async function mockWorker(options: { speedup?: number; registry?: WorkerRegistryHook } = {}) {
  const [port, eventPort] = [await findFreePortRange(1), await findFreePortRange(2)];
  const worker = new VllmWorker(
    {
      id: `mock-${port}`,
      model: MODEL,
      port,
      blockSize: 16,
      numGpuBlocksOverride: 1024,
      pythonHashSeed: 0,
      kvEvents: { endpoint: `tcp://*:${eventPort}`, replayEndpoint: `tcp://*:${eventPort + 1}` },
      command: mockerCommand(),
      extraArgs: ["--speedup", String(options.speedup ?? 100)],
    },
    { logger: null, healthPollMs: 50, restartBackoffMs: 50, startTimeoutMs: 20_000, registry: options.registry ?? null },
  );
  cleanup.push(() => worker.stop({ graceMs: 2000 }));
  return worker;
}

describe("VllmWorker with the mocker", () => {
  it("a mocker started through VllmWorker: a repeated prefix gets a lower TTFT, hits rise, and its KV events rebuild its cache", async () => {
    const worker = await mockWorker();
    await worker.start();
    const record = worker.record!;
    const indexer = new KvIndexer({ blockSize: 16, keying: "engine", hashAlgorithm: "sha256", hashSeed: "0" });
    const source = new VllmEventSource({
      workerId: record.id,
      endpoint: record.kvEvents!.endpoints,
      replayEndpoint: record.kvEvents!.replayEndpoints,
      sink: indexerSink(indexer),
      catchUp: true,
    }).start();
    cleanup.push(() => source.close());
    await waitUntil(() => source.stats().connected, "the KV-event subscription");

    const prefix = Array.from({ length: 2048 }, (_, i) => 1000 + i);
    const ttft = async (suffix: number) => {
      const before = await (await fetch(`${worker.url}/metrics`)).text();
      const res = await fetch(`${worker.url}/v1/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ model: MODEL, prompt: [...prefix, suffix], max_tokens: 2 }),
      });
      expect(res.status).toBe(200);
      await res.json();
      const after = await (await fetch(`${worker.url}/metrics`)).text();
      const sum = "vllm:time_to_first_token_seconds_sum";
      return { ttft: metric(after, sum) - metric(before, sum), hits: metric(after, "vllm:prefix_cache_hits_total") };
    };
    const first = await ttft(1);
    const second = await ttft(2);
    expect(first.hits).toBe(0);
    expect(second.hits).toBeGreaterThanOrEqual(2048);
    expect(second.ttft).toBeLessThan(first.ttft / 2);

    const view = (await (await fetch(`${worker.url}/debug/kv-cache`)).json()) as { cachedBlocks: string[]; lastEventSeq: number };
    await waitUntil(() => source.stats().ranks[0]!.lastSeq === BigInt(view.lastEventSeq), "the last KV event batch");
    expect(view.cachedBlocks.length).toBeGreaterThanOrEqual(128);
    expect(indexer.stats().blocks).toBe(view.cachedBlocks.length);
    for (const h of view.cachedBlocks) expect(indexer.findMatches(BigUint64Array.of(BigInt(h)))[0]?.workerId).toBe(record.id);
  });

  it("starts two mockers of a topology together, serves through them, and stops them together", async () => {
    const basePort = await findFreePortRange(2);
    const baseEventPort = await findFreePortRange(4);
    const group: WorkerGroup = await launchTopology("agg-router", {
      engine: "mock",
      workers: 2,
      basePort,
      baseEventPort,
      blockSize: 16,
      numGpuBlocksOverride: 2048,
      speedup: 100,
      supervision: { logger: null, healthPollMs: 50, startTimeoutMs: 20_000 },
    });
    cleanup.push(() => group.stop({ graceMs: 2000 }));
    const records = group.records;
    expect(records.map((r) => [r.id, r.url, r.role, r.blockSize, r.numGpuBlocks, r.hashSeed])).toEqual([
      ["worker-0", `http://127.0.0.1:${basePort}`, "aggregated", 16, 2048, "0"],
      ["worker-1", `http://127.0.0.1:${basePort + 1}`, "aggregated", 16, 2048, "0"],
    ]);
    // Events on the workers' host (127.0.0.1): vLLM's PUB connects there, so the subscriber binds.
    expect(records.map((r) => r.kvEvents)).toEqual([
      { endpoints: [`tcp://127.0.0.1:${baseEventPort}`], replayEndpoints: [`tcp://127.0.0.1:${baseEventPort + 2}`], topic: "", subscriberBinds: true },
      { endpoints: [`tcp://127.0.0.1:${baseEventPort + 1}`], replayEndpoints: [`tcp://127.0.0.1:${baseEventPort + 3}`], topic: "", subscriberBinds: true },
    ]);
    for (const r of records) {
      const models = (await (await fetch(`${r.url}/v1/models`)).json()) as { data: { id: string }[] };
      expect(models.data.map((m) => m.id)).toContain(MODEL);
      expect((await complete(r.url, "The quick brown fox")).choices).toHaveLength(1);
    }
    const pids = group.workers.map((w) => w.pid!);
    expect(pids.every((p) => isAlive(p))).toBe(true);
    await group.stop({ graceMs: 2000 });
    expect(group.workers.map((w) => w.state)).toEqual(["stopped", "stopped"]);
    for (const pid of pids) {
      expect(isAlive(pid)).toBe(false);
      expect(groupAlive(pid)).toBe(false);
    }
  });

  it("restarts a mocker killed with SIGKILL; it serves again with a fresh engine", async () => {
    const registry = new MemoryHook();
    const worker = await mockWorker({ registry });
    await worker.start();
    await complete(worker.url, "Hello there, this prompt fills a block or two of the cache");
    const pid = worker.pid!;
    process.kill(pid, "SIGKILL");
    await new Promise((r) => worker.once("restarting", r));
    expect(registry.records.has(worker.id)).toBe(false);
    await new Promise((r) => worker.once("healthy", r));
    expect(worker.pid).not.toBe(pid);
    expect(isAlive(pid)).toBe(false);
    expect(registry.records.get(worker.id)?.url).toBe(worker.url);
    expect((await complete(worker.url, "Hello again")).choices).toHaveLength(1);
    const health = await fetch(`${worker.url}/health`);
    expect(health.status).toBe(200);
  });

  it("drain waits for an in-flight streaming request, then stop leaves no process", async () => {
    const worker = await mockWorker({ speedup: 1 });
    await worker.start();
    const res = await fetch(`${worker.url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: MODEL, prompt: "Tell me a long story", max_tokens: 120, ignore_eos: true, stream: true }),
    });
    expect(res.status).toBe(200);
    const reader = res.body!.getReader();
    const first = await reader.read(); // the request is running
    expect(first.done).toBe(false);
    let body = new TextDecoder().decode(first.value);
    const reading = (async () => {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) return Date.now();
        body += new TextDecoder().decode(value);
      }
    })();

    expect(await worker.inFlight()).toBe(1);
    const t0 = Date.now();
    const result = await worker.drain({ deadlineMs: 15_000, pollMs: 20 });
    const drainedAt = Date.now();
    const streamEnd = await reading;
    expect(result).toMatchObject({ drained: true, inFlight: 0 });
    expect(worker.acceptingRequests).toBe(false);
    expect(drainedAt - t0).toBeGreaterThan(100); // it did wait
    expect(drainedAt).toBeGreaterThanOrEqual(streamEnd - 150); // and not much past the end of the stream
    expect(body).toContain("data: [DONE]");

    const pid = worker.pid!;
    await worker.stop({ graceMs: 2000 });
    expect(worker.state).toBe("stopped");
    expect(isAlive(pid)).toBe(false);
    expect(groupAlive(pid)).toBe(false);
  });

  it("runs a DP group of two ranks in one mocker process (dp preset), one event endpoint per rank", async () => {
    const basePort = await findFreePortRange(1);
    const baseEventPort = await findFreePortRange(4);
    const group = await launchTopology("dp", {
      engine: "mock",
      workers: 2,
      basePort,
      baseEventPort,
      numGpuBlocksOverride: 512,
      speedup: 100,
      supervision: { logger: null, healthPollMs: 50, startTimeoutMs: 20_000 },
    });
    cleanup.push(() => group.stop({ graceMs: 2000 }));
    expect(group.workers).toHaveLength(1);
    const [record] = group.records;
    expect(record).toMatchObject({ id: "dp", dataParallelSize: 2, dpRanks: [0, 1] });
    expect(record!.kvEvents!.endpoints).toEqual([`tcp://127.0.0.1:${baseEventPort}`, `tcp://127.0.0.1:${baseEventPort + 1}`]);
    expect((await complete(record!.url, "data parallel")).choices).toHaveLength(1);
  });
});
