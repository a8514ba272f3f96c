/**
 * Virtual-time replay (`kvroute replay --clock virtual`): N simulated vLLM engines (the mocker's
 * engine core: vLLM's scheduler, block pool with prefix caching and LRU eviction, timing model)
 * and the library's KvRouter, in this process, on one discrete-event clock. No HTTP, no sleeping:
 * simulated time jumps from event to event, so an hour of trace replays in seconds.
 *
 * Events, in time order (ties in the order they were scheduled):
 * - arrival: the router decides (`route`, `started`, as the gateway does), the request joins the
 *   chosen engine's waiting queue, an idle engine starts a step;
 * - step end: the engine applies the step (`endStep`: tokens sampled, requests finished, KV events
 *   flushed) and starts the next one if it has work. First tokens and finishes reach the router
 *   (`firstToken`, `tokens` every block, `finished`) at the step's end, as a stream would;
 * - KV event delivery: each step's KVEventBatch (the engine's own msgpack bytes) reaches the
 *   router's event sink `eventDelayMs` later, unless dropped (`eventDropRate`; a dropped batch is
 *   lost for good: the router's view of that worker drifts, the worst case of a lossy link);
 * - metrics scrape: every `metricsScrapeIntervalMs` the router gets each engine's running/waiting
 *   gauges and KV usage, as the gateway's scraper would;
 * - sample: the timeline (hit rate per interval, each worker's active requests).
 *
 * The run yields to the event loop every ~50 ms of wall time, so progress can be drawn and an
 * abort signal (Ctrl-C) stops it with a partial result.
 */
import { setImmediate as yieldImmediate } from "node:timers/promises";
import type { EngineHashAlgorithm } from "../core/block-hasher.js";
import { InvalidConfigError } from "../errors.js";
import type { MockEngineConfig, ResolvedMockEngineConfig } from "../mocker/config.js";
import type { CoreOutput } from "../mocker/engine-core.js";
import type { Family, VllmMetrics } from "../mocker/metrics.js";
import { coreRequestInit } from "../mocker/mock-engine.js";
import { engineProfile, type EngineProfileName } from "../mocker/profiles.js";
import { MemoryRegistry } from "../registry/memory-registry.js";
import { tierCredit, type KvRouterOptions, type RouterEventSink } from "../router/kv-router.js";
import type { RouterMode } from "../router/types.js";
import type { WorkerRecord } from "../workers/config.js";
import { EventQueue } from "./event-queue.js";
import { ResultCollector, type PolicyResult, type RequestRecord } from "./result.js";
import { DirectBatch } from "./direct-batch.js";
import { virtualEngineConfig, VirtualWorker } from "./virtual-worker.js";
import { OUTPUT_WORDS, RUN_OUTPUTS, RUN_UNTIL, RustEngines, rustEngineProblem, type ReplayEngineImpl } from "./rust-engines.js";
import { TimedRouter } from "./timed-router.js";
import { expandHashIds, promptTokens, type Trace, type TraceRequest } from "./trace.js";
import { mulberry32 } from "../util/prng.js";

/** Settings shared by both clocks (defaults in `REPLAY_DEFAULTS`). */
export interface FleetSettings {
  workers: number;
  /** Served model name. */
  model?: string;
  /** Tokens per KV block (`--block-size`). */
  blockSize?: number;
  /** The workers' engine profile (a model on its GPUs: timing and KV cache size). */
  profile?: string;
  /** KV blocks per worker (`--num-gpu-blocks-override`). Default: the profile's. */
  numGpuBlocks?: number;
  /** CPU offload tier blocks per worker (OffloadingConnector `num_cpu_blocks`). Default 0: none. */
  numCpuBlocks?: number;
  /** The engines' `--prefix-caching-hash-algo` (no effect on routing: the router keys by tokens). */
  hashAlgorithm?: EngineHashAlgorithm;
  /** Engine settings beyond those (timing model, max_num_seqs...). */
  engine?: Partial<MockEngineConfig>;
  /** KvRouter options (overlapWeight, temperature, busy thresholds...). */
  router?: Partial<Omit<KvRouterOptions, "registry" | "mode" | "clock">>;
  /** How often workers' metrics reach the router, simulated ms. */
  metricsScrapeIntervalMs?: number;
  /** Timeline resolution, simulated ms; default: ~400 samples over the trace. */
  sampleIntervalMs?: number;
}

export const REPLAY_DEFAULTS = {
  model: "kvroute-replay",
  blockSize: 16,
  /**
   * Replays default to 70B-class workers: at the Mooncake conversation trace's own arrival rate
   * 8 of them have work to do, where 8B workers would idle (docs/replay.md, "The fleet").
   */
  profile: "llama-3.1-70b-h100-tp4" as EngineProfileName,
  hashAlgorithm: "xxhash_cbor" as EngineHashAlgorithm,
  hashSeed: "0",
  metricsScrapeIntervalMs: 1000,
  eventDelayMs: 5,
  seed: 1,
};

export interface VirtualReplayOptions extends FleetSettings {
  trace: Trace;
  policy: RouterMode;
  /** Simulated delay of KV events from the engine's step to the router. Default 5 ms. */
  eventDelayMs?: number;
  /** Fraction of KV event batches lost, 0..1. Default 0. */
  eventDropRate?: number;
  /**
   * How KV event batches reach the router (the engines and the router share this process):
   * `"keyed"`, the engines key their caches with the router's keyer and hand it keys only;
   * `"direct"`, typed arrays of hashes and tokens read in place (`DirectBatch`); `"wire"`, the
   * msgpack bytes a live worker publishes. The router routes the same way on all three
   * (`__test__/replay-direct-events.test.ts`). Default: keyed where it applies (no CPU tier, no
   * cache salts in the trace, no event drops, a router keying by tokens), else direct.
   */
  eventPath?: ReplayEventPath;
  /**
   * Which engine steps the workers: `"rust"`, the engine core in Rust (`RustEngines`: the same
   * scheduler, block pool and timing, at a fraction of the cost), or `"ts"`, the mocker's own
   * (`VirtualWorker`). Default: rust where it applies (the keyed event path, no CPU tier, the
   * toy tokenizer, no stop strings: `rustEngineProblem`), else ts. Both replay a trace alike
   * (`__test__/replay-rust-engine.test.ts`).
   */
  engineImpl?: ReplayEngineImpl;
  /** PRNG seed (router sampling and tie-breaks, event drops). Default 1. */
  seed?: number;
  onProgress?: (progress: ReplayProgress) => void;
  /** Each completed request. */
  onRequest?: (record: RequestRecord) => void;
  /** Aborting stops the replay; the result covers what completed (`partial: true`). */
  signal?: AbortSignal;
}

export type ReplayEventPath = "keyed" | "direct" | "wire";

/** The event path a replay takes: `requested`, or the cheapest one that applies. */
export function replayEventPath(
  trace: Trace,
  s: { numCpuBlocks: number; routerKeying?: string; dropRate: number },
  requested?: ReplayEventPath,
): ReplayEventPath {
  // Keys only cover GPU blocks of plain requests (a salted block is keyed with its salt), for a
  // router that keys by tokens (an engine-keyed router hashes prompts with the engines' algorithm),
  // on a lossless link: after a lost store the token path cannot place the children (their parent
  // hash is unknown to it), where keys would place them anyway.
  const keyable =
    s.numCpuBlocks === 0 && (s.routerKeying ?? "tokens") === "tokens" && s.dropRate === 0 && trace.requests.every((r) => r.hashIds || !r.openai?.cacheSalt);
  if (requested === "keyed" && !keyable) throw new InvalidConfigError("eventPath keyed needs a trace without cache salts, no CPU tier, no event drops and a router keying by tokens");
  return requested ?? (keyable ? "keyed" : "direct");
}

export interface ReplayProgress {
  policy: RouterMode;
  sent: number;
  completed: number;
  total: number;
  /** Simulated ms since the first arrival. */
  simMs: number;
}

const enum Kind {
  StepEnd = 0,
  Deliver = 1,
  Scrape = 2,
  Sample = 3,
}

interface Flight {
  index: number;
  /** Its position in the trace (the Rust engines' handle). */
  handle: number;
  id: string;
  worker: number;
  arrival: number;
  first: number;
  generated: number;
}

/** The engine a replay runs, when `options.engineImpl` (or the default) allows. */
export function replayEngineImpl(config: ResolvedMockEngineConfig, trace: Trace, eventPath: ReplayEventPath, eventDelayMs: number, requested?: ReplayEngineImpl): ReplayEngineImpl {
  const problem = rustEngineProblem(config, trace, eventPath, eventDelayMs);
  if (requested === "rust" && problem !== null) throw new InvalidConfigError(`engineImpl rust cannot replay this configuration: ${problem}`);
  return requested ?? (problem === null ? "rust" : "ts");
}

/** Prompt tokens an engine loaded from its CPU tier (`prompt_tokens_cached_by_source{source="host"}`). */
function hostHits(m: VllmMetrics): number {
  let v = 0;
  for (const [key, s] of m.promptTokensCachedBySource.series) if (key.endsWith("\u0000host")) v += s.value;
  return v;
}

/** Sum of a gauge or counter family's series (one engine, one rank: one series). */
function total(f: Family): number {
  let v = 0;
  for (const s of f.series.values()) v += s.value;
  return v;
}

export function sampleIntervalFor(trace: Trace, requested?: number): number {
  if (requested !== undefined) return requested;
  const reqs = trace.requests;
  const span = reqs[reqs.length - 1]!.timestampMs - reqs[0]!.timestampMs;
  return Math.max(100, Math.ceil(span / 400 / 100) * 100);
}

export function workerIds(n: number): string[] {
  return Array.from({ length: n }, (_, i) => `worker-${i}`);
}

/** The router a replay (either clock) routes with: the fleet's options, quiet, on `clock`. */
export function replayRouter(o: FleetSettings & { seed?: number }, policy: RouterMode, registry: MemoryRegistry, clock: () => number): TimedRouter {
  // A CPU hit is priced from the fleet's profile (prefill vs PCIe speed) unless the options say.
  const t = { ...engineProfile(o.profile ?? REPLAY_DEFAULTS.profile).timing, ...o.engine?.timing };
  const tierCredits = { CPU: tierCredit(t.prefillPerTokenMs, t.cpuLoadPerTokenMs), ...o.router?.tierCredits };
  return new TimedRouter({ ...o.router, tierCredits, registry, mode: policy, seed: o.seed ?? REPLAY_DEFAULTS.seed, clock, log: () => {} });
}

/** The engine profile and KV blocks per worker a fleet runs with. */
export function fleetEngine(s: FleetSettings): { profile: string; numGpuBlocks: number } {
  const profile = s.profile ?? REPLAY_DEFAULTS.profile;
  return { profile, numGpuBlocks: s.numGpuBlocks ?? engineProfile(profile).numGpuBlocks };
}

export async function runVirtualReplay(options: VirtualReplayOptions): Promise<PolicyResult> {
  const wall0 = performance.now();
  const cpu0 = process.cpuUsage();
  const { trace, policy } = options;
  const model = options.model ?? REPLAY_DEFAULTS.model;
  const blockSize = options.blockSize ?? REPLAY_DEFAULTS.blockSize;
  const { profile, numGpuBlocks } = fleetEngine(options);
  const hashAlgorithm = options.hashAlgorithm ?? REPLAY_DEFAULTS.hashAlgorithm;
  const eventDelay = options.eventDelayMs ?? REPLAY_DEFAULTS.eventDelayMs;
  const dropRate = options.eventDropRate ?? 0;
  const scrapeEvery = options.metricsScrapeIntervalMs ?? REPLAY_DEFAULTS.metricsScrapeIntervalMs;
  const sampleEvery = sampleIntervalFor(trace, options.sampleIntervalMs);
  const ids = workerIds(options.workers);
  const indexOf = new Map(ids.map((id, w) => [id, w]));
  const n = ids.length;

  let now = 0;
  const registry = new MemoryRegistry();
  const router = replayRouter(options, policy, registry, () => now);
  const queue = new EventQueue<Kind>();
  const drop = mulberry32((options.seed ?? REPLAY_DEFAULTS.seed) ^ 0x5eed);
  let sink: RouterEventSink;
  // A batch's buffer goes back to its worker once applied or dropped (VirtualWorker.release).
  const deliver = (w: number, payload: Buffer | DirectBatch) => {
    if (payload instanceof DirectBatch) sink.applyDirectBatch(ids[w]!, payload);
    else sink.applyEventBatch(ids[w]!, payload, 0);
    engines[w]!.release(payload);
  };
  const publisher = (w: number) => (payload: Buffer | DirectBatch) => {
    if (dropRate > 0 && drop() < dropRate) engines[w]!.release(payload);
    else if (eventDelay > 0) queue.push(now + eventDelay, Kind.Deliver, w, payload);
    else deliver(w, payload);
  };
  const engineConfig = {
    ...options.engine,
    profile,
    model,
    blockSize,
    numGpuBlocks,
    numCpuBlocks: options.numCpuBlocks ?? 0,
    hashAlgorithm,
    hashSeed: REPLAY_DEFAULTS.hashSeed,
    kvEventsConfig: { enableKvCacheEvents: true },
  };
  const form = replayEventPath(trace, { numCpuBlocks: engineConfig.numCpuBlocks, routerKeying: options.router?.models?.[model]?.keying, dropRate }, options.eventPath);
  const resolved = virtualEngineConfig(engineConfig);
  const impl = replayEngineImpl(resolved, trace, form, eventDelay, options.engineImpl);
  // Exactly one of the two is used: the TS workers on this file's agenda, or the Rust engines
  // on theirs (which also holds this file's scrapes and samples: one order for all events).
  const engines = impl === "ts" ? ids.map((_, w) => new VirtualWorker(engineConfig, publisher(w), form)) : [];
  const rust = impl === "rust" ? new RustEngines(resolved, ids, eventDelay) : null;
  for (const id of ids) await registry.register(virtualRecord(id, model, blockSize, { config: resolved }));
  sink = router.eventSink(model);
  const routerCore = rust !== null ? router.keyedEventCore(model) : null;

  const collector = new ResultCollector(ids, sampleEvery);
  const busy = new Uint8Array(n);
  let stepping = 0;
  const requests = trace.requests;
  let next = 0;
  let inflight = 0;

  const kick = (w: number) => {
    if (rust !== null) return void (stepping = rust.kick(w, now));
    const d = engines[w]!.core.beginStep(now);
    stepping -= busy[w]!;
    busy[w] = d === null ? 0 : 1;
    stepping += busy[w]!;
    if (d !== null) queue.push(now + d, Kind.StepEnd, w);
  };

  // A request's news from a step: `k` tokens more, and its end (null: goes on).
  const progress = (f: Flight, k: number, finishReason: CoreOutput["finishReason"], cachedTokens: number) => {
    if (k > 0) {
      if (f.first < 0) {
        f.first = now;
        router.firstToken(f.id);
      }
      const before = f.generated;
      f.generated += k;
      if (Math.floor(f.generated / blockSize) !== Math.floor(before / blockSize)) router.tokens(f.id, f.generated);
    }
    if (finishReason !== null) {
      inflight--;
      flights[f.handle] = undefined;
      if (finishReason === "abort") {
        collector.failed++;
        router.finished(f.id, "cancelled");
      } else {
        router.finished(f.id, "ok");
        const ttft = (f.first < 0 ? now : f.first) - f.arrival;
        collector.finished(ttft, now - f.arrival, now, f.generated);
        options.onRequest?.({ index: f.index, worker: ids[f.worker]!, ttftMs: ttft, e2eMs: now - f.arrival, outputTokens: f.generated, cachedTokens });
      }
    }
  };
  const outputSink = (f: Flight) => (out: CoreOutput) => progress(f, out.tokenIds.length, out.finishReason, out.numCachedTokens);
  // The Rust engines' requests by handle (their position in the trace).
  const flights: (Flight | undefined)[] = [];
  /** What the Rust engines' latest step said (only the outputs the router hears about). */
  const outputs = (rust: RustEngines) => {
    const out = rust.out;
    for (let i = 0, k = rust.state[2]!; i < k; i++) {
      const at = OUTPUT_WORDS * i;
      const f = flights[out[at + 1]!]!;
      progress(f, out[at + 2]! - f.generated, out[at + 3] === 1 ? "length" : null, out[at + 4]!);
    }
  };

  // The Rust engines copy what they keep of a prompt (its tail: its keys come from the router),
  // and the router keeps none of it, so with them a Mooncake prompt is expanded into one reused
  // buffer instead of a new array per request (145M tokens over the whole conversation trace).
  let scratch = new Uint32Array(0);
  const promptOf = (req: TraceRequest): Uint32Array => {
    if (rust === null || req.tokens || !req.hashIds) return promptTokens(req);
    if (scratch.length < req.inputLength) scratch = new Uint32Array(Math.max(req.inputLength, 2 * scratch.length));
    return expandHashIds(req.hashIds, req.inputLength, scratch);
  };

  const arrive = (req: TraceRequest, handle: number) => {
    const tokens = promptOf(req);
    const id = `r${req.index}`;
    const maxTokens = req.maxTokens ?? undefined;
    const decision = router.route({ model, tokens, requestId: id, ...(maxTokens !== undefined ? { maxTokens } : {}) });
    const w = indexOf.get(decision.workerId)!;
    router.started(decision);
    collector.arrived(now, w);
    const f: Flight = { index: req.index, handle, id, worker: w, arrival: now, first: -1, generated: 0 };
    try {
      // Keyed engines take the prompt's keys the router just computed (the same router keys).
      const keys = form === "keyed" ? router.lastPromptKeys(model) : undefined;
      if (rust !== null) {
        rust.add(w, handle, coreRequestInit(resolved, generateRequest(req, id, tokens, now), null), keys);
        flights[handle] = f;
      } else engines[w]!.submit(generateRequest(req, id, tokens, now), outputSink(f), keys);
    } catch {
      // Rejected as vLLM would reject it (e.g. a prompt longer than the context): a failed request.
      collector.failed++;
      router.finished(id, "error");
      return;
    }
    inflight++;
    if (busy[w] === 0) kick(w);
  };

  const scrape = () => {
    for (let w = 0; w < n; w++) {
      if (rust !== null) {
        const st = rust.stats(w);
        router.updateMetrics(ids[w]!, { numRequestsWaiting: st[1]!, numRequestsRunning: st[0]!, kvCacheUsagePerc: st[2]! });
        continue;
      }
      const m = engines[w]!.metrics;
      router.updateMetrics(ids[w]!, { numRequestsWaiting: total(m.waiting), numRequestsRunning: total(m.running), kvCacheUsagePerc: total(m.kvUsage) });
    }
  };

  const counters = () => {
    let queries = 0;
    let hits = 0;
    if (rust !== null) {
      for (let w = 0; w < n; w++) {
        const st = rust.stats(w);
        queries += st[3]!;
        hits += st[4]!;
      }
    }
    for (const e of engines) {
      queries += total(e.metrics.prefixQueries);
      hits += total(e.metrics.prefixHits);
    }
    return { queries, hits };
  };
  const sample = () => {
    const { queries, hits } = counters();
    collector.sample(now, queries, hits, rust !== null ? ids.map((_, w) => rust.stats(w)[5]!) : engines.map((e) => e.core.load()));
  };

  const t0 = requests[0]!.timestampMs;
  const schedule = (t: number, kind: Kind) => (rust !== null ? rust.push(t, kind) : queue.push(t, kind));
  schedule(t0 + scrapeEvery, Kind.Scrape);
  schedule(t0 + sampleEvery, Kind.Sample);
  const report = () =>
    options.onProgress?.({ policy, sent: next, completed: collector.completed, total: requests.length, simMs: now - t0 });

  let aborted = false;
  for (;;) {
    if (options.signal?.aborted) {
      aborted = true;
      break;
    }
    const sliceEnd = performance.now() + 50;
    let done = false;
    let tick = 0;
    for (;;) {
      if ((++tick & 255) === 0 && performance.now() > sliceEnd) break;
      const tArrival = next < requests.length ? requests[next]!.timestampMs : Infinity;
      if (tArrival === Infinity && (inflight === 0 || stepping === 0)) {
        // All done; or (never expected) requests left that no idle engine will schedule.
        collector.failed += inflight;
        done = true;
        break;
      }
      if (rust !== null) {
        // The Rust agenda runs up to the next arrival; it stops early for what this loop does.
        const core = rust.run(tArrival, routerCore!);
        now = rust.state[0]!;
        stepping = rust.state[1]!;
        if (core === RUN_UNTIL) {
          now = tArrival;
          arrive(requests[next]!, next);
          next++;
        } else if (core === RUN_OUTPUTS) outputs(rust);
        else if (core === Kind.Scrape) {
          scrape();
          rust.push(now + scrapeEvery, Kind.Scrape);
        } else if (core === Kind.Sample) {
          sample();
          rust.push(now + sampleEvery, Kind.Sample);
        }
        continue;
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
            deliver(e.worker, e.payload!);
            break;
          case Kind.Scrape:
            scrape();
            queue.push(now + scrapeEvery, Kind.Scrape);
            break;
          case Kind.Sample:
            sample();
            queue.push(now + sampleEvery, Kind.Sample);
            break;
        }
      } else {
        now = tArrival;
        arrive(requests[next]!, next);
        next++;
      }
    }
    report();
    if (done) break;
    await yieldImmediate();
  }
  sample();
  report();
  // The replay never waits, so wall time it did not get on a CPU was taken by other load on the
  // machine, evenly over its code: the router's share of it is not the router's cost.
  const wallMs = performance.now() - wall0;
  const cpu = process.cpuUsage(cpu0);
  const cpuShare = Math.min(1, (cpu.user + cpu.system) / 1000 / Math.max(wallMs, 1e-3));
  collector.routerMs = (router.busyMs + (rust?.routerMs ?? 0)) * cpuShare;
  router.close();
  return collector.build({
    policy,
    clock: "virtual",
    trace: trace.file,
    partial: aborted,
    wallMs,
    prefixCache:
      rust !== null
        ? ids.map((_, w) => {
            const st = rust.stats(w);
            return { queries: st[3]!, hits: st[4]!, hostHits: 0 };
          })
        : engines.map((e) => ({ queries: total(e.metrics.prefixQueries), hits: total(e.metrics.prefixHits), hostHits: hostHits(e.metrics) })),
    preemptions: rust !== null ? ids.reduce((sum, _, w) => sum + rust.stats(w)[6]!, 0) : engines.reduce((sum, e) => sum + total(e.metrics.preemptions), 0),
  });
}

/**
 * What a live replay sends, as the engine's request (same fields, same defaults). Nobody reads the
 * output text here, so it is not detokenized (as vLLM's `detokenize=False`), unless stop strings
 * need it.
 */
export function generateRequest(req: TraceRequest, requestId: string, tokens: Uint32Array, now: number) {
  if (req.hashIds) return { requestId, promptTokenIds: tokens, maxTokens: req.maxTokens, ignoreEos: true, detokenize: false, arrivalTime: now };
  const body = req.openai!.body;
  const num = (k: string) => (typeof body[k] === "number" ? (body[k] as number) : undefined);
  const stop = typeof body["stop"] === "string" ? [body["stop"]] : Array.isArray(body["stop"]) ? (body["stop"] as string[]) : undefined;
  return {
    requestId,
    promptTokenIds: tokens,
    maxTokens: req.maxTokens,
    minTokens: num("min_tokens"),
    ignoreEos: body["ignore_eos"] === true,
    stopTokenIds: Array.isArray(body["stop_token_ids"]) ? (body["stop_token_ids"] as number[]) : undefined,
    stop,
    detokenize: stop !== undefined && stop.length > 0,
    seed: num("seed"),
    cacheSalt: req.openai!.cacheSalt,
    arrivalTime: now,
  };
}

export function virtualRecord(id: string, model: string, blockSize: number, engine: { config: ResolvedMockEngineConfig }): WorkerRecord {
  return {
    id,
    model,
    role: "aggregated",
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

