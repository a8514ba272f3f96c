/**
 * `kvroute serve` and `kvroute up` as a user runs them (`node dist/cli.mjs ...`), with real mocker
 * workers: config file + flags, KV events and metrics followed, disaggregated prefill/decode,
 * data-parallel ranks, and everything stopped on a signal.
 */
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { kvroute, portOpen, stopCliProcesses } from "./helpers/cli-process.js";
import { get, metricValue, post, sleep, sseData, startMockWorker } from "./helpers/gateway-fleet.js";
import { childPids } from "./helpers/proc.js";
import { GATEWAY_V8_FLAGS } from "../ts/cli/heap-respawn.js";
import type { VllmWorker } from "../ts/workers/index.js";

const workers: VllmWorker[] = [];
afterEach(async () => {
  stopCliProcesses();
  await Promise.all(workers.splice(0).map((w) => w.stop()));
});

describe("kvroute serve", () => {
  it("serves the workers of a YAML config, following their KV events; flags beat the file", async () => {
    const started = await Promise.allSettled([startMockWorker({ id: "a", speedup: 20 }, null), startMockWorker({ id: "b", speedup: 20 }, null)]);
    for (const r of started) if (r.status === "fulfilled") workers.push(r.value);
    for (const r of started) if (r.status === "rejected") throw r.reason;
    const [a, b] = workers;
    const dir = mkdtempSync(join(tmpdir(), "kvroute-serve-"));
    const file = join(dir, "fleet.yaml");
    const ev = (w: VllmWorker) => w.record!.kvEvents!;
    writeFileSync(
      file,
      [
        "port: 1 # replaced by --port",
        "routerMode: round-robin # replaced by KVROUTE_ROUTER_MODE",
        "host: 127.0.0.1",
        "models:",
        "  - name: toy",
        "    blockSize: 16",
        "    hashAlgorithm: sha256",
        "    hashSeed: 0",
        "    workers:",
        ...[a!, b!].flatMap((w) => [`      - id: ${w.id}`, `        url: ${w.url}`, `        kvEvents: ${ev(w).endpoints[0]}`, `        kvEventsReplay: ${ev(w).replayEndpoints![0]}`]),
      ].join("\n"),
    );
    const serve = kvroute(["serve", "--config", file, "--port", "0"], { KVROUTE_ROUTER_MODE: "kv" });
    const ready = await serve.readyPromise;
    expect(ready).toMatchObject({ routerMode: "kv", models: ["toy"], workers: 2 });
    const prompt = Array.from({ length: 320 }, (_, i) => 7000 + i);
    const first = await post(ready.url, "/v1/completions", { model: "toy", prompt, max_tokens: 2 });
    expect(first.status).toBe(200);
    // KV events reach the router: the same prompt goes back to the worker that holds it, all 20 blocks.
    // Polled until they do (the test timeout bounds it; a loaded machine may take a while).
    let route: any = null;
    for (;;) {
      route = (await post(ready.url, "/v1/kvroute/route", { model: "toy", prompt })).json;
      if (route.overlapBlocks === 20) break;
      await sleep(50);
    }
    expect(route.overlapBlocks).toBe(20);
    expect(route.worker).toBe(first.headers["x-kvroute-worker"]);
    serve.child.kill("SIGTERM");
    expect(await serve.exit).toBe(0);
  });

  it("refuses a bad config with exit code 2 and a message naming the field", async () => {
    const dir = mkdtempSync(join(tmpdir(), "kvroute-serve-"));
    const file = join(dir, "bad.json");
    writeFileSync(file, JSON.stringify({ models: [{ name: "m", workers: [{ id: "w", url: "localhost:8000" }] }] }));
    const serve = kvroute(["serve", "--config", file]);
    expect(await serve.exit).toBe(2);
    expect(serve.stderr()).toContain(`${file}: 'models[0].workers[0].url' must be an http(s) URL`);
    const flag = kvroute(["serve", "--router-mode", "fastest"]);
    expect(await flag.exit).toBe(2);
    expect(flag.stderr()).toContain("--router-mode: 'routerMode' must be one of kv, round-robin, random, least-loaded");
  });
});

describe("kvroute serve's gateway process (its V8 heap setting)", () => {
  const cmdline = (pid: number) => readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0");
  const config = () => {
    const file = join(mkdtempSync(join(tmpdir(), "kvroute-serve-")), "gateway.yaml");
    writeFileSync(file, ["host: 127.0.0.1", "metricsScrapeIntervalMs: 0", "models:", "  - name: toy", "    workers:", "      - id: w", "        url: http://127.0.0.1:9"].join("\n"));
    return file;
  };

  it("runs in a child under the heap flags, answers there, passes SIGTERM on and its exit code back", async () => {
    const serve = kvroute(["serve", "--config", config(), "--port", "0"]);
    const ready = await serve.readyPromise;
    const [gateway, ...others] = childPids(serve.child.pid!);
    expect(others).toEqual([]);
    expect(cmdline(gateway!)).toEqual(expect.arrayContaining([...GATEWAY_V8_FLAGS, "serve"]));
    expect(cmdline(serve.child.pid!)).not.toEqual(expect.arrayContaining([...GATEWAY_V8_FLAGS]));
    expect((await get(ready.url, "/health")).status).toBe(200);
    serve.child.kill("SIGTERM");
    expect(await serve.exit).toBe(0);
    expect(existsSync(`/proc/${gateway}`)).toBe(false);
  });

  it("dies with the first process, even when that one is SIGKILLed", async () => {
    const serve = kvroute(["serve", "--config", config(), "--port", "0"]);
    await serve.readyPromise;
    const [gateway] = childPids(serve.child.pid!);
    expect(gateway).toBeDefined();
    serve.child.kill("SIGKILL");
    await serve.exit;
    // No clock: the test's timeout bounds the wait for the gateway to go (gone, or a zombie).
    const alive = (pid: number) => {
      try {
        return !readFileSync(`/proc/${pid}/stat`, "utf8").includes(") Z");
      } catch {
        return false;
      }
    };
    while (alive(gateway!)) await sleep(20);
  });

  it("runs in place with KVROUTE_NO_RESPAWN=1", async () => {
    const serve = kvroute(["serve", "--config", config(), "--port", "0"], { KVROUTE_NO_RESPAWN: "1" });
    const ready = await serve.readyPromise;
    expect(childPids(serve.child.pid!)).toEqual([]);
    expect((await get(ready.url, "/health")).status).toBe(200);
    serve.child.kill("SIGTERM");
    expect(await serve.exit).toBe(0);
  });
});

describe("kvroute up", () => {
  it("disagg-router: long prompts prefill on the prefill worker, short ones locally; Ctrl-C stops everything", async () => {
    const up = kvroute(["up", "disagg-router", "--workers", "1", "--port", "0", "--speedup", "20", "--quiet", "--model", "toy"]);
    const ready = await up.readyPromise;
    expect(ready.workers.map((w: { role: string }) => w.role)).toEqual(["prefill", "decode"]);
    const long = await post(ready.url, "/v1/completions", { model: "toy", prompt: Array.from({ length: 1200 }, (_, i) => 3000 + i), max_tokens: 4 });
    expect(long.status).toBe(200);
    expect(long.headers["x-kvroute-prefill-worker"]).toBe("prefill-0");
    expect(long.headers["x-kvroute-worker"]).toBe("decode-0");
    expect(long.json.usage.completion_tokens).toBe(4);
    const chat = await post(ready.url, "/v1/chat/completions", { model: "toy", messages: [{ role: "user", content: "word ".repeat(700) }], max_tokens: 3, stream: true });
    expect(chat.headers["x-kvroute-prefill-worker"]).toBe("prefill-0");
    expect(sseData(chat.text).at(-1)).toBe("[DONE]");
    const short = await post(ready.url, "/v1/completions", { model: "toy", prompt: "a short prompt", max_tokens: 4 });
    expect(short.status).toBe(200);
    expect(short.headers["x-kvroute-prefill-worker"]).toBeUndefined();
    const m = (await get(ready.url, "/metrics")).text;
    expect(metricValue(m, "kvroute_disagg_prefills_total", { where: "remote" })).toBe(2);
    expect(metricValue(m, "kvroute_disagg_prefills_total", { where: "local" })).toBe(1);
    // The decode worker received the prompt's KV from the prefill worker instead of computing it.
    const decodeUrl = ready.workers.find((w: { role: string }) => w.role === "decode").url;
    const dm = (await get(decodeUrl, "/metrics")).text;
    expect(metricValue(dm, "vllm:prompt_tokens_by_source_total", { source: "external_kv_transfer" })).toBeGreaterThan(1000);
    up.child.kill("SIGINT");
    expect(await up.exit).toBe(0);
    for (const w of ready.workers) expect(await portOpen(w.url)).toBe(false);
    expect(await portOpen(ready.url)).toBe(false);
  });

  it("dp: one worker with two data-parallel ranks, each request served by the rank the router chose", async () => {
    const up = kvroute(["up", "dp", "--workers", "2", "--port", "0", "--speedup", "20", "--quiet", "--router-mode", "round-robin"]);
    const ready = await up.readyPromise;
    expect(ready.workers).toHaveLength(1);
    expect(ready.workers[0].dpRanks).toEqual([0, 1]);
    const perRank = new Map<string, number>();
    for (let i = 0; i < 6; i++) {
      const r = await post(ready.url, "/v1/completions", { model: "Qwen/Qwen3-0.6B", prompt: `hello ${i}`, max_tokens: 2 });
      expect(r.status).toBe(200);
      const rank = r.headers["x-kvroute-dp-rank"] as string;
      perRank.set(rank, (perRank.get(rank) ?? 0) + 1);
    }
    expect(perRank).toEqual(new Map([["0", 3], ["1", 3]]));
    // The engine ran each on that rank (vLLM's X-data-parallel-rank header).
    const wm = (await get(ready.workers[0].url, "/metrics")).text;
    for (const rank of ["0", "1"]) expect(metricValue(wm, "vllm:request_success_total", { engine: rank })).toBe(3);
    up.child.kill("SIGTERM");
    expect(await up.exit).toBe(0);
  });
});
