/**
 * `kvroute replay --topology agg|disagg|conditional`: the same trace on the same number of
 * simulated GPUs arranged three ways, on the virtual clock (the mocker's engine cores, the
 * KvRouter, KV events), reporting TTFT and ITL percentiles.
 *
 * - agg: P + D aggregated workers, KV-aware routing.
 * - disagg: P prefill and D decode workers; every request prefills on a prefill worker (chosen
 *   KV-aware, `role: "prefill"`), then its decode worker (chosen by decode load and its own
 *   overlap, `role: "decode"`) receives the KV at the profile's transfer cost
 *   (`kvTransferBaseMs` + `kvTransferPerTokenMs` x the pulled tokens) and decodes.
 * - conditional: as disagg, but the gateway's conditional policy (disagg-policy.ts; default
 *   `isl`, Dynamo's 2,048 tokens and 70%) sends short or mostly cached prompts to the decode
 *   worker's local prefill.
 *
 * The prefill leg is vLLM's NixlConnector exchange as the mocker implements it (max_tokens 1,
 * `do_remote_decode`; the decode leg gets the returned `kv_transfer_params`). TTFT counts from the
 * arrival to the decode worker's first token; ITL is (last - first token) / (tokens - 1) per request.
 */
import { setImmediate as yieldImmediate } from "node:timers/promises";
import type { CoreOutput } from "../mocker/engine-core.js";
import type { Family } from "../mocker/metrics.js";
import { MemoryRegistry } from "../registry/memory-registry.js";
import type { RouterEventSink } from "../router/kv-router.js";
import type { RouteDecision } from "../router/types.js";
import type { WorkerRecord, WorkerRole } from "../workers/config.js";
import { decideDisagg, type DisaggPolicyConfig } from "../gateway/disagg-policy.js";
import { EventQueue } from "./event-queue.js";
import { promptTokens, type Trace, type TraceRequest } from "./trace.js";
import { DirectBatch } from "./direct-batch.js";
import { VirtualWorker } from "./virtual-worker.js";
import { fleetEngine, REPLAY_DEFAULTS, replayRouter, type FleetSettings } from "./virtual-replay.js";

export const TOPOLOGIES = ["agg", "disagg", "conditional"] as const;
export type Topology = (typeof TOPOLOGIES)[number];

export const CONDITIONAL_DEFAULTS: DisaggPolicyConfig = {
  policy: "isl",
  localPrefillMaxTokens: 512,
  islMinTokens: 2048,
  islMinFraction: 0.7,
  prefillBusyActive: 8,
  decodeBusyActive: 0,
};

export interface TopologyReplayOptions extends Omit<FleetSettings, "workers"> {
  trace: Trace;
  topology: Topology;
  prefillWorkers: number;
  decodeWorkers: number;
  /** conditional: the policy (default `isl`, 2,048 tokens, 70%). */
  disagg?: Partial<DisaggPolicyConfig>;
  eventDelayMs?: number;
  seed?: number;
  signal?: AbortSignal;
  onProgress?: (p: { topology: Topology; completed: number; total: number }) => void;
}

export interface Percentiles {
  p50: number;
  p90: number;
  p99: number;
  mean: number;
}

export interface TopologyResult {
  topology: Topology;
  prefillWorkers: number;
  decodeWorkers: number;
  aggregatedWorkers: number;
  requests: number;
  completed: number;
  failed: number;
  remotePrefills: number;
  localPrefills: number;
  ttftMs: Percentiles;
  itlMs: Percentiles;
  e2eMs: Percentiles;
  outputTokensPerS: number;
  makespanMs: number;
  wallMs: number;
  partial: boolean;
}

function percentiles(values: number[]): Percentiles {
  const v = [...values].sort((a, b) => a - b);
  const at = (p: number) => (v.length === 0 ? NaN : v[Math.min(v.length - 1, Math.round((v.length - 1) * p))]!);
  return { p50: at(0.5), p90: at(0.9), p99: at(0.99), mean: v.length === 0 ? NaN : v.reduce((a, b) => a + b, 0) / v.length };
}

function total(f: Family): number {
  let v = 0;
  for (const s of f.series.values()) v += s.value;
  return v;
}

const enum Kind {
  StepEnd = 0,
  Deliver = 1,
  Scrape = 2,
  Wake = 3,
}

interface Flight {
  req: TraceRequest;
  id: string;
  tokens: Uint32Array;
  arrival: number;
  decode: RouteDecision;
  first: number;
  generated: number;
}

export async function runTopologyReplay(o: TopologyReplayOptions): Promise<TopologyResult> {
  const wall0 = performance.now();
  const { trace, topology } = o;
  const model = o.model ?? REPLAY_DEFAULTS.model;
  const blockSize = o.blockSize ?? REPLAY_DEFAULTS.blockSize;
  const { profile, numGpuBlocks } = fleetEngine({ ...o, workers: o.prefillWorkers + o.decodeWorkers });
  const eventDelay = o.eventDelayMs ?? REPLAY_DEFAULTS.eventDelayMs;
  const scrapeEvery = o.metricsScrapeIntervalMs ?? REPLAY_DEFAULTS.metricsScrapeIntervalMs;
  const policy: DisaggPolicyConfig = { ...CONDITIONAL_DEFAULTS, ...o.disagg };

  const roles: WorkerRole[] =
    topology === "agg"
      ? Array.from({ length: o.prefillWorkers + o.decodeWorkers }, () => "aggregated" as const)
      : [...Array.from({ length: o.prefillWorkers }, () => "prefill" as const), ...Array.from({ length: o.decodeWorkers }, () => "decode" as const)];
  const ids = roles.map((r, i) => (r === "aggregated" ? `worker-${i}` : r === "prefill" ? `prefill-${i}` : `decode-${i - o.prefillWorkers}`));
  const indexOf = new Map(ids.map((id, w) => [id, w]));

  let now = 0;
  const registry = new MemoryRegistry();
  const router = replayRouter({ ...o, workers: ids.length }, "kv", registry, () => now);
  const queue = new EventQueue<Kind>();
  let sink: RouterEventSink;
  const engines = ids.map(
    (id, w) =>
      new VirtualWorker(
        {
          ...o.engine,
          profile,
          model,
          blockSize,
          numGpuBlocks,
          hashAlgorithm: o.hashAlgorithm ?? REPLAY_DEFAULTS.hashAlgorithm,
          hashSeed: REPLAY_DEFAULTS.hashSeed,
          kvEventsConfig: { enableKvCacheEvents: true },
          ...(roles[w] === "aggregated" ? {} : { kvTransferConfig: { kvConnector: "NixlConnector", kvRole: "kv_both", engineId: id } }),
          nixl: false,
        },
        (payload) => queue.push(now + eventDelay, Kind.Deliver, w, payload),
        "direct",
      ),
  );
  for (const [w, id] of ids.entries()) await registry.register(record(id, model, blockSize, roles[w]!, engines[w]!));
  sink = router.eventSink(model);

  const busy = new Uint8Array(ids.length);
  let stepping = 0;
  let wakes = 0;
  const kick = (w: number) => {
    const d = engines[w]!.core.beginStep(now);
    stepping -= busy[w]!;
    busy[w] = d === null ? 0 : 1;
    stepping += busy[w]!;
    if (d !== null) queue.push(now + d, Kind.StepEnd, w);
    else {
      // Only a remote-KV transfer left: begin a step when it lands.
      const t = engines[w]!.core.nextTransferTime();
      if (t !== null) {
        wakes++;
        queue.push(Math.max(t, now), Kind.Wake, w);
      }
    }
  };

  const ttft: number[] = [];
  const itl: number[] = [];
  const e2e: number[] = [];
  let completed = 0;
  let failed = 0;
  let inflight = 0;
  let outputTokens = 0;
  let lastFinish = 0;
  let remote = 0;
  let local = 0;
  const prefillActive = new Map<string, number>();
  const decodeActive = new Map<string, number>();
  const bump = (m: Map<string, number>, k: string, by: number) => m.set(k, (m.get(k) ?? 0) + by);

  const decodeSink = (f: Flight) => (out: CoreOutput) => {
    const k = out.tokenIds.length;
    if (k > 0) {
      if (f.first < 0) {
        f.first = now;
        router.firstToken(f.id);
      }
      f.generated += k;
    }
    if (out.finishReason === null) return;
    inflight--;
    bump(decodeActive, f.decode.workerId, -1);
    if (out.finishReason === "abort") {
      failed++;
      router.finished(f.id, "cancelled");
      return;
    }
    router.finished(f.id, "ok");
    completed++;
    outputTokens += f.generated;
    lastFinish = Math.max(lastFinish, now);
    const first = f.first < 0 ? now : f.first;
    ttft.push(first - f.arrival);
    e2e.push(now - f.arrival);
    if (f.generated > 1) itl.push((now - first) / (f.generated - 1));
  };

  const submit = (w: number, f: Flight, maxTokens: number | undefined, kv: Record<string, unknown> | null, out: (o: CoreOutput) => void, requestId: string) => {
    engines[w]!.submit(
      { requestId, promptTokenIds: f.tokens, maxTokens, ignoreEos: true, detokenize: false, arrivalTime: now, ...(kv ? { kvTransferParams: kv } : {}) },
      out,
    );
    if (busy[w] === 0) kick(w);
  };

  const decodeLocally = (f: Flight, kv: Record<string, unknown> | null) => {
    const w = indexOf.get(f.decode.workerId)!;
    submit(w, f, f.req.maxTokens ?? undefined, kv, decodeSink(f), f.id);
  };

  const arrive = (req: TraceRequest) => {
    const tokens = promptTokens(req);
    const id = `r${req.index}`;
    const maxTokens = req.maxTokens ?? undefined;
    const role = topology === "agg" ? undefined : ("decode" as const);
    const decode = router.route({ model, tokens, requestId: id, ...(role ? { role } : {}), ...(maxTokens !== undefined ? { maxTokens } : {}) });
    router.started(decode);
    const f: Flight = { req, id, tokens, arrival: now, decode, first: -1, generated: 0 };
    inflight++;
    bump(decodeActive, decode.workerId, 1);
    try {
      if (topology === "agg") return decodeLocally(f, null);
      const prefill = router.route({ model, tokens, requestId: `${id}~p`, role: "prefill", maxTokens: 1 });
      if (topology === "conditional") {
        const uncached = Math.max(0, tokens.length - decode.overlapBlocks * blockSize);
        const choice = decideDisagg(policy, {
          promptTokens: tokens.length,
          uncachedTokens: uncached,
          prefillActive: prefillActive.get(prefill.workerId) ?? 0,
          decodeActive: (decodeActive.get(decode.workerId) ?? 1) - 1,
        });
        if (choice.path === "local") {
          router.finished(prefill.requestId, "cancelled");
          local++;
          return decodeLocally(f, null);
        }
      }
      remote++;
      router.started(prefill);
      bump(prefillActive, prefill.workerId, 1);
      const pw = indexOf.get(prefill.workerId)!;
      const kvAsk = { do_remote_decode: true, do_remote_prefill: false, remote_engine_id: null, remote_block_ids: null, remote_host: null, remote_port: null, remote_request_id: null };
      submit(pw, f, 1, kvAsk, (out) => {
        if (out.finishReason === null) return;
        bump(prefillActive, prefill.workerId, -1);
        router.finished(prefill.requestId, out.finishReason === "abort" ? "cancelled" : "ok");
        // The decode leg: the KV arrives at the profile's transfer cost (or, refused, local prefill).
        decodeLocally(f, out.kvTransferParams ?? null);
      }, `${id}~p`);
    } catch {
      failed++;
      inflight--;
      bump(decodeActive, decode.workerId, -1);
      router.finished(id, "error");
    }
  };

  const requests = trace.requests;
  const t0 = requests[0]!.timestampMs;
  queue.push(t0 + scrapeEvery, Kind.Scrape);
  let next = 0;
  let aborted = false;
  for (;;) {
    if (o.signal?.aborted) {
      aborted = true;
      break;
    }
    const sliceEnd = performance.now() + 50;
    let done = false;
    let tick = 0;
    for (;;) {
      if ((++tick & 255) === 0 && performance.now() > sliceEnd) break;
      const tArrival = next < requests.length ? requests[next]!.timestampMs : Infinity;
      if (tArrival === Infinity && (inflight === 0 || (stepping === 0 && wakes === 0))) {
        failed += inflight;
        done = true;
        break;
      }
      if (queue.peekTime() <= tArrival) {
        const e = queue.pop()!;
        now = e.t;
        switch (e.kind) {
          case Kind.StepEnd:
            engines[e.worker]!.core.endStep();
            kick(e.worker);
            break;
          case Kind.Deliver:
            if (e.payload instanceof DirectBatch) sink.applyDirectBatch(ids[e.worker]!, e.payload);
            else sink.applyEventBatch(ids[e.worker]!, e.payload!, 0);
            engines[e.worker]!.release(e.payload!);
            break;
          case Kind.Scrape:
            for (const [w, id] of ids.entries()) {
              const m = engines[w]!.metrics;
              router.updateMetrics(id, { numRequestsWaiting: total(m.waiting), numRequestsRunning: total(m.running), kvCacheUsagePerc: total(m.kvUsage) });
            }
            queue.push(now + scrapeEvery, Kind.Scrape);
            break;
          case Kind.Wake:
            wakes--;
            if (busy[e.worker] === 0) kick(e.worker);
            break;
        }
      } else {
        now = tArrival;
        arrive(requests[next++]!);
      }
    }
    o.onProgress?.({ topology, completed, total: requests.length });
    if (done) break;
    await yieldImmediate();
  }
  router.close();
  const makespan = Math.max(1, lastFinish - t0);
  return {
    topology,
    prefillWorkers: topology === "agg" ? 0 : o.prefillWorkers,
    decodeWorkers: topology === "agg" ? 0 : o.decodeWorkers,
    aggregatedWorkers: topology === "agg" ? o.prefillWorkers + o.decodeWorkers : 0,
    requests: next,
    completed,
    failed,
    remotePrefills: remote,
    localPrefills: topology === "agg" ? completed : local,
    ttftMs: percentiles(ttft),
    itlMs: percentiles(itl),
    e2eMs: percentiles(e2e),
    outputTokensPerS: outputTokens / (makespan / 1000),
    makespanMs: makespan,
    wallMs: performance.now() - wall0,
    partial: aborted,
  };
}

function record(id: string, model: string, blockSize: number, role: WorkerRole, engine: VirtualWorker): WorkerRecord {
  return {
    id,
    model,
    role,
    url: `http://${id}.virtual`,
    kvEvents: null,
    blockSize,
    hashAlgorithm: engine.config.hashAlgorithm,
    hashSeed: engine.config.hashSeed ?? null,
    numGpuBlocks: engine.config.numGpuBlocks,
    dataParallelSize: 1,
    dpRanks: [0],
  };
}

/** The comparison table (ms). */
export function topologyTable(results: readonly TopologyResult[]): string {
  const f = (v: number) => (Number.isFinite(v) ? (v >= 100 ? v.toFixed(0) : v.toFixed(1)) : "-");
  const head = "| topology | workers | remote / local prefills | TTFT p50 | TTFT p90 | TTFT p99 | ITL p50 | ITL p90 | ITL p99 | E2E p50 | output tok/s |";
  const sep = "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|";
  const rows = results.map((r) => {
    const workers = r.topology === "agg" ? `${r.aggregatedWorkers} agg` : `${r.prefillWorkers}P + ${r.decodeWorkers}D`;
    return `| ${r.topology}${r.partial ? " (partial)" : ""} | ${workers} | ${r.remotePrefills} / ${r.localPrefills} | ${f(r.ttftMs.p50)} | ${f(r.ttftMs.p90)} | ${f(r.ttftMs.p99)} | ${f(r.itlMs.p50)} | ${f(r.itlMs.p90)} | ${f(r.itlMs.p99)} | ${f(r.e2eMs.p50)} | ${r.outputTokensPerS.toFixed(0)} |`;
  });
  return [head, sep, ...rows].join("\n");
}
