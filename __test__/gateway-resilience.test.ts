/**
 * The gateway when things go wrong, against real mocker processes: a worker killed mid-stream
 * (migration), a client that goes away (cancellation), workers added and removed under traffic.
 */
import http from "node:http";
import { afterEach, describe, expect, it } from "vitest";
import { decode } from "../ts/mocker/toy-tokenizer.js";
import { get, metricValue, MODEL, post, sleep, sseData, startFleet, startMockWorker, workerRequests, type Fleet } from "./helpers/gateway-fleet.js";

let fleet: Fleet | null = null;
afterEach(async () => {
  await fleet?.stop();
  fleet = null;
});

interface StreamRead {
  status: number;
  headers: http.IncomingHttpHeaders;
  events: any[];
  tokens: number;
}

/**
 * Streams a request, calling `onTokens(total)` as token ids arrive (the client asks for
 * `return_token_ids`, so it can count exactly).
 */
function stream(url: string, path: string, body: unknown, onTokens: (total: number, headers: http.IncomingHttpHeaders) => void = () => {}): Promise<StreamRead> {
  return new Promise((resolve, reject) => {
    const u = new URL(url + path);
    const req = http.request({ host: u.hostname, port: u.port, path: u.pathname, method: "POST", headers: { "content-type": "application/json" } }, (res) => {
      let buf = "";
      const events: any[] = [];
      let tokens = 0;
      res.setEncoding("utf8");
      res.on("data", (chunk: string) => {
        buf += chunk;
        let end: number;
        while ((end = buf.indexOf("\n\n")) >= 0) {
          const ev = buf.slice(0, end);
          buf = buf.slice(end + 2);
          if (!ev.startsWith("data: ")) continue;
          const data = ev.slice(6);
          const obj = data === "[DONE]" ? data : JSON.parse(data);
          events.push(obj);
          if (obj !== "[DONE]") for (const c of obj.choices ?? []) tokens += c.token_ids?.length ?? 0;
        }
        onTokens(tokens, res.headers);
      });
      res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, events, tokens }));
      res.on("error", reject);
    });
    req.on("error", reject);
    req.end(JSON.stringify(body));
  });
}

function workerOf(f: Fleet, id: string) {
  const w = f.workers.find((x) => x.id === id);
  if (!w) throw new Error(`no worker ${id}`);
  return w;
}

describe("gateway: migration", () => {
  it("a stream whose workers are killed twice completes with exactly max_tokens tokens (migrationLimit 2)", async () => {
    fleet = await startFleet(3, { migrationLimit: 2 }, { speedup: 2 });
    const f = fleet;
    const prompt = Array.from({ length: 100 }, (_, i) => 300 + i);
    const killed: string[] = [];
    const killAt = [40, 120];
    const read = await stream(
      f.gateway.url,
      "/v1/completions",
      { model: MODEL, prompt, max_tokens: 300, ignore_eos: true, stream: true, return_token_ids: true, stream_options: { include_usage: true } },
      (tokens) => {
        if (killed.length < killAt.length && tokens >= killAt[killed.length]!) {
          // Kill whichever worker runs the request now.
          const busy = f.gateway.gateway.metrics.activeRequests;
          void busy.get().then((m) => {
            const w = m.values.find((v) => v.value > 0)?.labels.worker as string | undefined;
            if (w && !killed.includes(w)) {
              killed.push(w);
              process.kill(workerOf(f, w).pid!, "SIGKILL");
            }
          });
        }
      },
    );
    expect(read.status).toBe(200);
    expect(killed.length).toBe(2);
    const chunks = read.events.filter((e) => e !== "[DONE]");
    expect(read.events[read.events.length - 1]).toBe("[DONE]");
    expect(read.events.filter((e) => e === "[DONE]").length).toBe(1);
    // One stream: one id, one object type, one final chunk, exact token count.
    expect(new Set(chunks.map((c) => c.id)).size).toBe(1);
    expect(new Set(chunks.map((c) => c.object))).toEqual(new Set(["text_completion"]));
    const ids = chunks.flatMap((c) => c.choices.flatMap((ch: any) => ch.token_ids ?? []));
    expect(ids.length).toBe(300);
    expect(read.tokens).toBe(300);
    expect(chunks.map((c) => c.choices.map((ch: any) => ch.text).join("")).join("")).toBe(decode(ids));
    expect(chunks.filter((c) => c.choices.some((ch: any) => ch.finish_reason)).map((c) => c.choices[0].finish_reason)).toEqual(["length"]);
    // The prompt ids show once (first chunk), usage adds up over the three workers.
    expect(chunks.filter((c) => c.choices.some((ch: any) => Array.isArray(ch.prompt_token_ids))).length).toBe(1);
    const usage = chunks[chunks.length - 1].usage;
    expect(usage).toMatchObject({ prompt_tokens: 100, completion_tokens: 300, total_tokens: 400 });
    const metrics = (await get(f.gateway.url, "/metrics")).text;
    expect(metricValue(metrics, "kvroute_migrations_total")).toBe(2);
  });

  it("a chat stream continues on another worker as one chat stream; a non-stream request is retried whole", async () => {
    fleet = await startFleet(3, { migrationLimit: 2 }, { speedup: 2 });
    const f = fleet;
    let killed: string | null = null;
    const read = await stream(
      f.gateway.url,
      "/v1/chat/completions",
      { model: MODEL, messages: [{ role: "user", content: "tell me a long story" }], max_tokens: 120, ignore_eos: true, stream: true },
      (_tokens, headers) => {
        if (killed === null) {
          killed = headers["x-kvroute-worker"] as string;
          setTimeout(() => process.kill(workerOf(f, killed!).pid!, "SIGKILL"), 100);
        }
      },
    );
    expect(read.status).toBe(200);
    const chunks = read.events.filter((e) => e !== "[DONE]");
    expect(new Set(chunks.map((c) => c.id)).size).toBe(1);
    expect(new Set(chunks.map((c) => c.object))).toEqual(new Set(["chat.completion.chunk"]));
    expect(chunks.filter((c) => c.choices[0]?.delta?.role === "assistant").length).toBe(1);
    const words = chunks.map((c) => c.choices[0]?.delta?.content ?? "").join("");
    // Every toy output token is one " xxxxxx" word.
    expect(words.length).toBe(120 * 7);
    expect(chunks.some((c) => "token_ids" in c.choices[0] && c.choices[0].token_ids !== null)).toBe(false);
    expect(chunks.filter((c) => c.choices[0]?.finish_reason).map((c) => c.choices[0].finish_reason)).toEqual(["length"]);

    // Non-stream: find the worker holding the request (the only one in flight; engines know it by
    // the gateway's id, not the client's), kill it, get the whole answer from another.
    const pending = post(f.gateway.url, "/v1/completions", { model: MODEL, prompt: "once upon a time", max_tokens: 200, ignore_eos: true }, { "x-request-id": "whole-1" });
    let victim: string | null = null;
    for (let i = 0; i < 100 && victim === null; i++) {
      await sleep(10);
      for (const w of f.workers) {
        if (w.state !== "healthy") continue;
        if ((await workerRequests(w.url)).length > 0) victim = w.id;
      }
    }
    expect(victim).not.toBeNull();
    process.kill(workerOf(f, victim!).pid!, "SIGKILL");
    const r = await pending;
    expect(r.status).toBe(200);
    expect(r.json.usage.completion_tokens).toBe(200);
    expect(r.headers["x-kvroute-worker"]).not.toBe(victim);
    expect(metricValue((await get(f.gateway.url, "/metrics")).text, "kvroute_migrations_total")).toBe(2);
  });

  it("without migration a broken stream ends with an error event, and the next request avoids nothing it should not", async () => {
    fleet = await startFleet(2, { migrationLimit: 0 }, { speedup: 2 });
    const f = fleet;
    let killed = false;
    const read = await stream(
      f.gateway.url,
      "/v1/completions",
      { model: MODEL, prompt: "abc", max_tokens: 200, ignore_eos: true, stream: true, return_token_ids: true },
      (tokens, headers) => {
        if (!killed && tokens >= 10) {
          killed = true;
          process.kill(workerOf(f, headers["x-kvroute-worker"] as string).pid!, "SIGKILL");
        }
      },
    );
    expect(read.status).toBe(200);
    const last = read.events.filter((e) => e !== "[DONE]").at(-1);
    expect(last.error.code).toBe("KVR_UPSTREAM_FAILED");
    expect(read.tokens).toBeLessThan(200);
    const ok = await post(f.gateway.url, "/v1/completions", { model: MODEL, prompt: "abc", max_tokens: 5 });
    expect(ok.status, ok.text).toBe(200);
  });
});

/** Requests the worker has finished with finished_reason "abort". */
async function workerAborts(url: string): Promise<number> {
  return metricValue((await get(url, "/metrics")).text, "vllm:request_success_total", { finished_reason: "abort" });
}

describe("gateway: cancellation", () => {
  // What this proves without a clock: the request leaves the worker because it was aborted (the
  // worker counts it under finished_reason "abort"), long before it could have finished on its
  // own (1,000 tokens at real speed), in decode and in prefill.
  it("a client that disconnects shows up as an aborted, freed request on the worker (decode and prefill)", async () => {
    fleet = await startFleet(2, {}, { speedup: 1 });
    const f = fleet;
    const cases = [
      // Decode: disconnect after the first tokens.
      { id: "cancel-decode", prompt: Array.from({ length: 64 }, (_, i) => 1000 + i), afterTokens: true },
      // Prefill: 8000 uncached tokens take ~0.3 s to prefill at speedup 1; disconnect before any token.
      { id: "cancel-prefill", prompt: Array.from({ length: 8000 }, (_, i) => 2000 + i), afterTokens: false },
    ];
    for (const c of cases) {
      const u = new URL(f.gateway.url);
      const req = http.request({ host: u.hostname, port: u.port, path: "/v1/completions", method: "POST", headers: { "content-type": "application/json", "x-request-id": c.id } });
      req.on("error", () => {});
      const gotHeaders = new Promise<http.IncomingMessage>((resolve) => req.on("response", resolve));
      req.end(JSON.stringify({ model: MODEL, prompt: c.prompt, max_tokens: 1000, ignore_eos: true, stream: true }));
      // Engines know a request by the gateway's id (x-kvroute-request-id), not the client's.
      let engineId: string;
      let worker: (typeof f.workers)[number];
      if (c.afterTokens) {
        const res = await gotHeaders;
        worker = workerOf(f, res.headers["x-kvroute-worker"] as string);
        engineId = `cmpl-${res.headers["x-kvroute-request-id"]}-0`;
        await new Promise((r) => res.once("data", r));
      } else {
        // Still prefilling (the mocker answers with its first token): find it on the workers, the
        // only request in flight.
        let found: { w: (typeof f.workers)[number]; id: string } | undefined;
        for (let i = 0; i < 50 && !found; i++) {
          await sleep(5);
          for (const w of f.workers) {
            const ids = await workerRequests(w.url);
            if (ids.length > 0) found = { w, id: ids[0]! };
          }
        }
        expect(found).toBeDefined();
        worker = found!.w;
        engineId = found!.id;
      }
      expect(await workerRequests(worker.url)).toContain(engineId);
      const abortsBefore = await workerAborts(worker.url);
      const t0 = performance.now();
      req.destroy();
      // Until it is gone from the worker (the test's timeout bounds a cancellation that never comes).
      while ((await workerRequests(worker.url)).includes(engineId)) await sleep(2);
      if (process.env.KVROUTE_TEST_VERBOSE) console.log(`${c.id}: freed on the worker after ${(performance.now() - t0).toFixed(1)} ms`);
      // Freed by the abort, not by finishing: the worker counted it as aborted.
      expect(await workerAborts(worker.url), `${c.id} aborted on the worker`).toBe(abortsBefore + 1);
    }
    await sleep(20);
    const metrics = (await get(f.gateway.url, "/metrics")).text;
    expect(metricValue(metrics, "kvroute_cancellations_total", { phase: "decode" })).toBe(1);
    expect(metricValue(metrics, "kvroute_cancellations_total", { phase: "prefill" })).toBe(1);
    expect(metricValue(metrics, "kvroute_worker_active_requests")).toBe(0);
    // The router's own bookkeeping is free of them too.
    expect(f.gateway.router.workerLoads().reduce((n, l) => n + l.requests, 0)).toBe(0);
  });
});

describe("gateway: workers added and removed under traffic", () => {
  it("loses no request that had not started on a removed worker", async () => {
    fleet = await startFleet(3, { migrationLimit: 0 }, { speedup: 10 });
    const f = fleet;
    const results: { ok: boolean; worker: string | null; at: number; error?: string }[] = [];
    let running = true;
    const t0 = performance.now();
    const loop = async (k: number) => {
      let i = 0;
      while (running) {
        const streamed = (k + i++) % 2 === 0;
        const at = performance.now() - t0;
        const body = { model: MODEL, prompt: `shared system prompt number ${k % 3} and a question ${i}`, max_tokens: 24, ignore_eos: true, stream: streamed };
        try {
          const r = await post(f.gateway.url, "/v1/completions", body);
          const worker = (r.headers["x-kvroute-worker"] as string | undefined) ?? null;
          if (r.status !== 200) results.push({ ok: false, worker, at, error: r.text });
          else if (streamed) {
            const events = sseData(r.text);
            const err = events.find((e) => e !== "[DONE]" && e.error);
            results.push({ ok: !err && events.at(-1) === "[DONE]", worker, at, error: err ? JSON.stringify(err) : undefined });
          } else results.push({ ok: r.json.usage.completion_tokens === 24, worker, at });
        } catch (err) {
          results.push({ ok: false, worker: null, at, error: String(err) });
        }
      }
    };
    const loops = Array.from({ length: 8 }, (_, k) => loop(k));
    // Between steps, let traffic answer `n` more requests (not a fixed time: a loaded machine is slow).
    const traffic = async (n: number) => {
      const target = results.length + n;
      while (results.length < target) await sleep(10);
    };
    await traffic(16);
    // Add a worker: it takes traffic from the next requests on.
    const added = await startMockWorker({ id: "w3", speedup: 10 }, f.gateway.registry);
    f.workers.push(added);
    const addedAt = performance.now() - t0;
    await traffic(24);
    // Remove one gracefully: deregistered at once, drained, then stopped.
    const drainAt = performance.now() - t0;
    const w0 = workerOf(f, "w0");
    const drained = await w0.drain({ deadlineMs: 5000, pollMs: 20 });
    expect(drained.drained).toBe(true);
    await w0.stop();
    await traffic(16);
    // Remove one abruptly: deregistered and killed with requests in flight.
    const active = await f.gateway.gateway.metrics.activeRequests.get();
    await f.gateway.registry.deregister("w1");
    const inFlight = active.values.filter((v) => v.labels.worker === "w1").reduce((n, v) => n + v.value, 0);
    process.kill(workerOf(f, "w1").pid!, "SIGKILL");
    await traffic(16);
    running = false;
    await Promise.all(loops);

    expect(results.length).toBeGreaterThan(40);
    const failed = results.filter((r) => !r.ok);
    // Only requests running on w1 when it was killed may fail, and each names w1.
    expect(failed.length).toBeLessThanOrEqual(inFlight);
    for (const r of failed) expect(r.error ?? "").toContain("w1");
    const metrics = (await get(f.gateway.url, "/metrics")).text;
    expect(metricValue(metrics, "kvroute_upstream_errors_total", { worker: "w1", kind: "broken" })).toBe(failed.length);
    // The new worker served requests; the drained one got none once it was being drained.
    expect(results.some((r) => r.worker === "w3" && r.at > addedAt)).toBe(true);
    expect(results.filter((r) => r.worker === "w0" && r.at > drainAt + 5).length).toBe(0);
  });
});
