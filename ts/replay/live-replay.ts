/**
 * Live replay (`kvroute replay --clock real`): the real thing on one machine — N mocker worker
 * processes (`kvroute mock`, started by `launchTopology("agg-router")` exactly as vLLM workers
 * are), the real gateway (`startGateway`: HTTP, SSE, KV events over ZMQ, /metrics scraping) with
 * the library's KvRouter, and an HTTP client sending the trace's requests at their timestamps
 * divided by `speedup` (the workers run their simulated clocks `speedup` times faster than wall
 * time, so simulated latencies are comparable with a virtual replay).
 *
 * Measured: simulated TTFT and end-to-end latency from the engine's per-request metrics
 * (`--enable-per-request-metrics`: queue + time to first token, + generation), the hit rate from
 * each worker's vllm:prefix_cache_hits / vllm:prefix_cache_queries, the timeline from scraping
 * the workers' /metrics, and the router's own time (TimedRouter). Every policy gets a fresh fleet.
 */
import { setMaxListeners } from "node:events";
import { Agent, request } from "undici";
import { startGateway, type RunningGateway } from "../gateway/server.js";
import { MemoryRegistry } from "../registry/memory-registry.js";
import type { RouterMode } from "../router/types.js";
import { parsePrometheus } from "../workers/engine-http.js";
import { findFreePortRange } from "../workers/ports.js";
import { launchTopology } from "../workers/topology.js";
import type { WorkerGroup } from "../workers/worker-group.js";
import { percentiles, ResultCollector, Samples, type PolicyResult, type RequestRecord } from "./result.js";
import { promptTokens, type Trace, type TraceRequest } from "./trace.js";
import { fleetEngine, REPLAY_DEFAULTS, replayRouter, sampleIntervalFor, workerIds, type FleetSettings, type ReplayProgress } from "./virtual-replay.js";

export const DEFAULT_SPEEDUP = 5;

export interface LiveReplayOptions extends FleetSettings {
  trace: Trace;
  policy: RouterMode;
  /**
   * Simulated time / wall time of the workers and of the arrivals. Default 5. Wall-clock costs
   * (HTTP, JSON, the gateway) count this many times over in simulated time, so lower is truer.
   */
  speedup?: number;
  seed?: number;
  onProgress?: (progress: ReplayProgress) => void;
  /** Each completed request. */
  onRequest?: (record: RequestRecord) => void;
  signal?: AbortSignal;
  /** Worker output lines (default: discarded). */
  workerLog?: ((line: string) => void) | null;
  /** The engine command (default: the mocker, `kvroute mock`). */
  command?: readonly string[];
}

interface WorkerCounters {
  queries: number;
  hits: number;
  active: number;
}

/** Resolves after `ms`, or at once when `signal` aborts. */
function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
  });
}

/** The mocker flags for the engine settings a replay may change (as virtual replay applies them). */
export function engineArgs(settings: FleetSettings): string[] {
  const e = settings.engine ?? {};
  const out: string[] = ["--enable-per-request-metrics", "--profile", fleetEngine(settings).profile];
  const flag = (name: string, v: number | undefined) => {
    if (v !== undefined) out.push(`--${name}`, String(v));
  };
  flag("max-num-seqs", e.maxNumSeqs);
  flag("max-num-batched-tokens", e.maxNumBatchedTokens);
  flag("max-model-len", e.maxModelLen);
  flag("eos-after-tokens", e.eosAfterTokens);
  const t = e.timing ?? {};
  flag("step-base-ms", t.stepBaseMs);
  flag("prefill-per-token-ms", t.prefillPerTokenMs);
  flag("attention-per-token-pair-ms", t.attentionPerTokenPairMs);
  flag("decode-per-seq-ms", t.decodePerSeqMs);
  flag("decode-per-context-token-ms", t.decodePerContextTokenMs);
  flag("kv-transfer-base-ms", t.kvTransferBaseMs);
  flag("kv-transfer-per-token-ms", t.kvTransferPerTokenMs);
  return out;
}

async function scrapeWorker(agent: Agent, url: string): Promise<WorkerCounters | null> {
  try {
    const res = await request(`${url}/metrics`, { dispatcher: agent, headersTimeout: 5000, bodyTimeout: 5000 });
    const text = await res.body.text();
    if (res.statusCode !== 200) return null;
    const c: WorkerCounters = { queries: 0, hits: 0, active: 0 };
    for (const s of parsePrometheus(text)) {
      if (s.name === "vllm:prefix_cache_queries_total") c.queries += s.value;
      else if (s.name === "vllm:prefix_cache_hits_total") c.hits += s.value;
      else if (s.name === "vllm:num_requests_running" || s.name === "vllm:num_requests_waiting") c.active += s.value;
    }
    return c;
  } catch {
    return null;
  }
}

/** The body a live replay sends for a trace request (streamed, with usage and engine metrics). */
export function requestBody(req: TraceRequest, model: string): { path: string; body: Record<string, unknown> } {
  const stream = { stream: true, stream_options: { include_usage: true } };
  if (req.openai) {
    const path = req.openai.endpoint === "chat" ? "/v1/chat/completions" : "/v1/completions";
    return { path, body: { ...req.openai.body, model, ...stream } };
  }
  return { path: "/v1/completions", body: { model, prompt: Array.from(promptTokens(req)), max_tokens: req.maxTokens, ignore_eos: true, ...stream } };
}

export async function runLiveReplay(options: LiveReplayOptions): Promise<PolicyResult> {
  const wall0 = performance.now();
  const { trace, policy } = options;
  const speedup = options.speedup ?? DEFAULT_SPEEDUP;
  const model = options.model ?? REPLAY_DEFAULTS.model;
  const n = options.workers;
  const ids = workerIds(n);
  const index = new Map(ids.map((id, i) => [id, i]));
  const sampleEvery = sampleIntervalFor(trace, options.sampleIntervalMs);
  const scrapeEvery = options.metricsScrapeIntervalMs ?? REPLAY_DEFAULTS.metricsScrapeIntervalMs;
  const collector = new ResultCollector(ids, sampleEvery);
  /** TTFT as the HTTP client saw it (send to first byte), in simulated ms. */
  const clientTtft = new Samples();
  const registry = new MemoryRegistry();
  // The router's clock is simulated time too, so its TTLs (speculative credit, metrics) mean what
  // they mean in a virtual replay.
  const router = replayRouter(options, policy, registry, () => performance.now() * speedup);
  const agent = new Agent({ connections: 256, keepAliveTimeout: 30_000, headersTimeout: 0, bodyTimeout: 0 });
  const abort = new AbortController();
  // Every request in flight listens to it.
  setMaxListeners(0, abort.signal);
  const onAbort = () => abort.abort();
  options.signal?.addEventListener("abort", onAbort, { once: true });
  let gateway: RunningGateway | null = null;
  let group: WorkerGroup | null = null;
  let partial = false;
  let sampler: NodeJS.Timeout | null = null;
  const urls: string[] = [];
  const last: WorkerCounters[] = ids.map(() => ({ queries: 0, hits: 0, active: 0 }));
  try {
    gateway = await startGateway(
      {
        host: "127.0.0.1",
        port: 0,
        routerMode: policy,
        metricsScrapeIntervalMs: Math.max(20, Math.round(scrapeEvery / speedup)),
        upstreamTimeoutMs: 600_000,
        upstreamIdleTimeoutMs: 600_000,
      },
      { registry, router, log: null },
    );
    const base = await findFreePortRange(4 * n);
    const launching = launchTopology("agg-router", {
      engine: "mock",
      workers: n,
      model,
      blockSize: options.blockSize ?? REPLAY_DEFAULTS.blockSize,
      prefixCachingHashAlgo: options.hashAlgorithm ?? REPLAY_DEFAULTS.hashAlgorithm,
      pythonHashSeed: REPLAY_DEFAULTS.hashSeed,
      numGpuBlocksOverride: fleetEngine(options).numGpuBlocks,
      speedup,
      basePort: base,
      baseEventPort: base + n,
      baseSideChannelPort: base + 3 * n,
      extraArgs: engineArgs(options),
      ...(options.command ? { command: options.command } : {}),
      supervision: {
        registry,
        logger: options.workerLog ? (line) => options.workerLog!(line) : null,
        maxRestarts: 0,
        startTimeoutMs: 120_000,
        stopGraceMs: 3000,
      },
    });
    const stopped = new Promise<null>((resolve) => abort.signal.addEventListener("abort", () => resolve(null), { once: true }));
    group = await Promise.race([launching, stopped]);
    if (!group) {
      partial = true;
      group = await launching.catch(() => null);
      return finish();
    }
    for (const w of group.workers) urls[index.get(w.id)!] = w.url;

    const requests = trace.requests;
    const t0 = requests[0]!.timestampMs;
    const wallStart = performance.now();
    const simNow = () => t0 + (performance.now() - wallStart) * speedup;
    let sent = 0;
    let inflight = 0;
    let settled: (() => void) | null = null;
    const report = () => options.onProgress?.({ policy, sent, completed: collector.completed, total: requests.length, simMs: simNow() - t0 });

    const sample = async () => {
      const t = simNow();
      const got = await Promise.all(urls.map((u) => scrapeWorker(agent, u)));
      got.forEach((c, w) => {
        if (c) last[w] = c;
      });
      let q = 0;
      let h = 0;
      for (const c of last) {
        q += c.queries;
        h += c.hits;
      }
      collector.sample(t, q, h, last.map((c) => c.active));
    };
    let sampling: Promise<void> = Promise.resolve();
    sampler = setInterval(() => {
      sampling = sampling.then(sample);
      report();
    }, Math.max(100, sampleEvery / speedup));

    const send = async (req: TraceRequest) => {
      const { path, body } = requestBody(req, model);
      const arrival = simNow();
      try {
        const res = await request(gateway!.url + path, {
          method: "POST",
          body: JSON.stringify(body),
          headers: { "content-type": "application/json" },
          dispatcher: agent,
          signal: abort.signal,
        });
        const worker = index.get(String(res.headers["x-kvroute-worker"] ?? ""));
        if (worker !== undefined) collector.arrived(arrival, worker);
        else collector.requests++;
        if (res.statusCode !== 200) {
          await res.body.text();
          collector.failed++;
          return;
        }
        let buf = "";
        let firstAt = -1;
        let metrics: Record<string, number> | null = null;
        let completion = 0;
        for await (const chunk of res.body) {
          if (firstAt < 0) firstAt = simNow();
          buf += (chunk as Buffer).toString("utf8");
          let cut: number;
          while ((cut = buf.indexOf("\n\n")) >= 0) {
            const event = buf.slice(0, cut);
            buf = buf.slice(cut + 2);
            if (!event.includes('"usage"')) continue;
            const data = event.startsWith("data: ") ? event.slice(6) : event;
            try {
              const obj = JSON.parse(data) as { usage?: { completion_tokens?: number }; metrics?: Record<string, number> };
              if (obj.usage?.completion_tokens !== undefined) completion = obj.usage.completion_tokens;
              if (obj.metrics) metrics = obj.metrics;
            } catch {
              // not a JSON event ([DONE])
            }
          }
        }
        const end = simNow();
        clientTtft.push((firstAt < 0 ? end : firstAt) - arrival);
        if (metrics && typeof metrics.time_to_first_token_ms === "number") {
          const queue = metrics.queue_time_ms ?? 0;
          const ttft = queue + metrics.time_to_first_token_ms;
          const e2e = ttft + (metrics.generation_time_ms ?? 0);
          collector.finished(ttft, e2e, end, completion);
          options.onRequest?.({ index: req.index, worker: ids[worker ?? -1] ?? "?", ttftMs: ttft, e2eMs: e2e, outputTokens: completion });
        } else {
          // Not the mocker: client-side times (include the gateway and the HTTP round trips).
          collector.finished((firstAt < 0 ? end : firstAt) - arrival, end - arrival, end, completion);
        }
      } catch {
        if (!abort.signal.aborted) collector.failed++;
      }
    };
    collector.firstArrival = t0;

    for (const req of requests) {
      if (abort.signal.aborted) break;
      const due = wallStart + (req.timestampMs - t0) / speedup;
      const wait = due - performance.now();
      if (wait > 1) {
        await sleep(wait, abort.signal);
        if (abort.signal.aborted) break;
      }
      sent++;
      inflight++;
      void send(req).finally(() => {
        inflight--;
        if (inflight === 0) settled?.();
      });
    }
    if (inflight > 0 && !abort.signal.aborted) {
      await new Promise<void>((resolve) => {
        settled = resolve;
        abort.signal.addEventListener("abort", () => resolve(), { once: true });
      });
    }
    partial = abort.signal.aborted;
    clearInterval(sampler);
    sampler = null;
    await sampling;
    await sample();
    report();
    return finish();
  } finally {
    if (sampler) clearInterval(sampler);
    options.signal?.removeEventListener("abort", onAbort);
    abort.abort();
    await gateway?.close().catch(() => {});
    await group?.stop({ graceMs: 3000 }).catch(() => {});
    router.close();
    await agent.close().catch(() => {});
  }

  function finish(): PolicyResult {
    collector.routerMs = router.busyMs;
    const result = collector.build({
      policy,
      clock: "real",
      trace: trace.file,
      partial,
      wallMs: performance.now() - wall0,
      prefixCache: last.map((c) => ({ queries: c.queries, hits: c.hits })),
    });
    result.clientTtftMs = percentiles(clientTtft.values());
    result.speedup = speedup;
    return result;
  }
}
