/**
 * KvRouter: the library's router. Per model one native `KvRouterCore` (kvroute-core's scheduler)
 * holds the KV index fed by the workers' events, the candidate (worker, dpRank) targets from the
 * registry, the router's own load bookkeeping, speculative entries and scraped metrics; a
 * decision is one native call (tokens in, hashing included; a packed answer out). This file maps
 * names to target ids, keeps the registry in sync and builds the decision objects; it never loops
 * over blocks. The cost model is in docs/router.md.
 */
import { InvalidConfigError, InvalidInputError, callNative } from "../errors.js";
import { native } from "../native.js";
import { toTokenArray, type EngineHashAlgorithm } from "../core/block-hasher.js";
import type { ApplyEventBatchResult, Keying, KvEventStats } from "../core/kv-indexer.js";
import type { KvEventSink } from "../events/types.js";
import { parsePrometheus } from "../workers/engine-http.js";
import type { WorkerRecord, WorkerRole } from "../workers/config.js";
import { NoWorkerError } from "./errors.js";
import type {
  CandidateScore,
  Registry,
  RequestLifecycle,
  RouteDecision,
  RouteRequest,
  RouterMode,
  WorkerTarget,
} from "./types.js";

export const ROUTER_MODES: readonly RouterMode[] = ["kv", "round-robin", "random", "least-loaded"];

/** The gauges a worker's /metrics scrape feeds the router. */
const LOAD_METRICS: ReadonlySet<string> = new Set(["vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc"]);

/** Per-model hashing settings; each defaults to the model's first registered worker record. */
export interface ModelRoutingConfig {
  blockSize?: number;
  /** Default `"tokens"` (router keys; needs no worker hash settings). */
  keying?: Keying;
  /** The workers' `--prefix-caching-hash-algo` (engine keying hashes requests with it). */
  hashAlgorithm?: EngineHashAlgorithm;
  /** The workers' PYTHONHASHSEED; null: unset. */
  hashSeed?: string | null;
  /** Bound of each (worker, dpRank) engine-hash map (token keying). */
  maxEngineMapEntries?: number;
}

/** Skip a worker (unless every candidate is over) when one of these is exceeded. */
export interface BusyThreshold {
  /** KV cache usage, 0..1 (vLLM's `kv_cache_usage_perc`): busy above it. */
  kvUsage?: number;
  /** Waiting requests (`num_requests_waiting`): busy above it. */
  queueDepth?: number;
  /** The router's own unfinished requests on the (worker, rank): busy at it. */
  activeRequests?: number;
}

export interface KvRouterOptions {
  registry: Registry;
  /** Default `"kv"`. */
  mode?: RouterMode;
  /** Weight of the prefill terms against the decode term. Default 16 (docs/router.md, "Tuning"). */
  overlapWeight?: number;
  /** Weight of the per-sequence context term (docs/router.md). Default 1.6. */
  sequenceWeight?: number;
  /** 0 (default): the minimum cost; > 0: softmax sampling over costs normalized to [0, 1]. */
  temperature?: number;
  busyThreshold?: BusyThreshold;
  /** How long a decision credits the chosen worker with the prompt's blocks. Default 2000; 0: off. */
  speculativeTtlMs?: number;
  /** Bound of the speculative entries, in (block, worker) pairs. Default 262144. */
  maxSpeculativeBlocks?: number;
  /** A decision's load booking lapses after this long unless `started` confirms it. Default 2000. */
  unstartedTtlMs?: number;
  /** Metrics older than this are ignored; the load they show that the router did not place fades to 0 over it. Default 10000. */
  metricsTtlMs?: number;
  /**
   * A scrape is assumed taken this long before it reaches `updateMetrics` unless `takenAtMs`
   * says when: the router's requests that finished since still count as its own in it. Default 250.
   */
  metricsLagMs?: number;
  /**
   * What a prefix hit on a slower KV cache tier saves, as a fraction of its prefill (0..1; GPU
   * hits save all of it): `1 - load time / prefill time` per block (`tierCredit` derives it from a
   * profile's speeds). Defaults CPU 0.95, DISK 0.75. 0 prices a tier's hits like misses (a router
   * blind to that tier).
   */
  tierCredits?: { CPU?: number; DISK?: number };
  /** Per model; defaults from the registry records. */
  models?: Record<string, ModelRoutingConfig>;
  /** PRNG seed (tie-breaks, sampling, random mode). */
  seed?: number;
  /** Monotonic milliseconds. Default `performance.now`. */
  clock?: () => number;
  /** Warnings (e.g. a worker whose block size differs from its model's). Default console.warn. */
  log?: (message: string) => void;
}

/** One worker's scraped load (`vllm:*` gauges). */
export interface WorkerMetricsUpdate {
  numRequestsWaiting?: number;
  numRequestsRunning?: number;
  /** A fraction, 0..1. */
  kvCacheUsagePerc?: number;
  /** The rank these are for; absent: the whole worker (counts split over its ranks). */
  dpRank?: number;
  /**
   * When the scrape was requested, on the router's `clock` (default: `metricsLagMs` before the
   * call). Requests the router finished after it still count as its own.
   */
  takenAtMs?: number;
}

/** The router's predicted load on one (worker, dpRank). */
export interface WorkerLoad extends WorkerTarget {
  model: string;
  /** Requests placed there and not finished. */
  requests: number;
  /** Of those, requests with no first token yet. */
  prefilling: number;
  prefillBlocks: number;
  decodeBlocks: number;
}

export interface KvRouterModelStats {
  blockSize: number;
  keying: Keying;
  /** Registered (worker, dpRank) targets. */
  targets: number;
  activeRequests: number;
  unstartedRequests: number;
  /** Decisions whose booking lapsed without `started`. */
  lapsedBookings: number;
  /** Lifecycle calls for unknown request ids (ignored). */
  unknownLifecycle: number;
  speculativeBlocks: number;
  speculativeEvicted: number;
  decisions: number;
  blindDecisions: number;
  allBusyDecisions: number;
  /** Index: distinct blocks, (block, worker, tier) holdings, workers seen in events, bytes. */
  blocks: number;
  pairs: number;
  indexedWorkers: number;
  approxBytes: number;
}

export interface KvRouterStats {
  mode: RouterMode;
  models: Record<string, KvRouterModelStats>;
}

/** A KV event batch as typed arrays (`ts/replay/direct-batch.ts`, `kvroute_core::events::decode_direct`). */
export interface DirectBatchArrays {
  rank: number;
  /** `hashes` are router keys (`applyKeyedBatchInto`), `tokens` unused. */
  keyed?: boolean;
  ops: Uint32Array;
  hashes: BigUint64Array;
  tokens: Uint32Array;
}

/** What `eventSink(model)` returns: a sink for VllmEventSource and an applier for KvEventReplica. */
export interface RouterEventSink extends KvEventSink {
  applyEventBatch(workerId: string, payload: Uint8Array, dpRank?: number): ApplyEventBatchResult;
  /**
   * A batch in the in-process form of a virtual replay's engines (`DirectBatch`): the same effect
   * as its wire bytes, without them.
   */
  applyDirectBatch(workerId: string, batch: DirectBatchArrays): ApplyEventBatchResult;
  clearWorker(worker: { workerId: string; dpRank?: number }): number;
  stats(): RouterEventSinkStats;
}

export interface RouterEventSinkStats {
  batches: number;
  malformed: number;
  /** Batches with unreadable events: the worker's view was dropped and rebuilds. */
  resyncs: number;
  clears: number;
}

type NativeCore = InstanceType<typeof native.KvRouterCore>;

/** A routed prompt as other replicas book it: its block keys and its length in tokens. */
export interface PromptKeys {
  keys: BigUint64Array;
  promptTokens: number;
}

/** Told of this router's own lifecycle steps; `started` gets the prompt's block keys when known. */
export interface LifecycleObserver extends Omit<RequestLifecycle, "started"> {
  started(decision: RouteDecision, prompt?: PromptKeys): void;
  /** Settles once the steps told so far have reached their audience; null when nothing is pending. */
  delivered?(): Promise<void> | null;
}

interface TargetInfo extends WorkerTarget {
  record: WorkerRecord;
}

interface ModelState {
  name: string;
  core: NativeCore;
  blockSize: number;
  keying: Keying;
  hashAlgorithm: EngineHashAlgorithm | undefined;
  hashSeed: string | undefined;
  /** By native target id. */
  targets: (TargetInfo | undefined)[];
  /** `workerId \0 dpRank` -> target id. */
  byKey: Map<string, number>;
  /** workerId -> its target ids. */
  workers: Map<string, number[]>;
  /** The packed answer of `route` (header + every candidate). */
  out: Float64Array;
}

interface Pending {
  m: ModelState;
  started: boolean;
  at: number;
}

const HEADER = 8;
const STRIDE = 15;
const MODE_CODE: Record<RouterMode, number> = { kv: 0, "round-robin": 1, random: 2, "least-loaded": 3 };
const ROLE_BIT: Record<WorkerRole, number> = { aggregated: 1, prefill: 2, decode: 4 };
const MAX_U32 = 0xffff_ffff;
/** Prune request ids of decisions never started every this many decisions. */
const PRUNE_EVERY = 1024;

const targetKey = (workerId: string, dpRank: number) => `${workerId}\u0000${dpRank}`;

export class KvRouter implements RequestLifecycle {
  readonly mode: RouterMode;
  private readonly registry: Registry;
  private readonly options: KvRouterOptions;
  private readonly clock: () => number;
  private readonly log: (message: string) => void;
  private readonly models = new Map<string, ModelState>();
  private readonly workerModels = new Map<string, ModelState>();
  /** Request id -> its model, from the decision until `finished`. */
  private readonly pending = new Map<string, Pending>();
  private readonly unwatch: () => void;
  private readonly idPrefix = `kvr-${Math.floor(Math.random() * 2 ** 32).toString(36)}-`;
  private nextId = 0;
  private routes = 0;
  private observer: LifecycleObserver | null = null;
  /** A decision's prompt keys, kept only while an observer wants them (fleet mode). */
  private readonly decisionKeys = new WeakMap<RouteDecision, PromptKeys>();

  constructor(options: KvRouterOptions) {
    validateOptions(options);
    this.options = options;
    this.registry = options.registry;
    this.mode = options.mode ?? "kv";
    this.clock = options.clock ?? (() => performance.now());
    this.log = options.log ?? ((m) => console.warn(m));
    for (const record of this.registry.list()) this.onAdded(record);
    // Configured models without workers yet (routing to them says `no_workers`, and their event
    // sinks work); one without a block size waits for its first worker.
    for (const [name, c] of Object.entries(options.models ?? {})) if (c.blockSize !== undefined) this.ensureModel(name, undefined);
    this.unwatch = this.registry.watch((change) => {
      if (change.type === "added") this.onAdded(change.record);
      else this.onRemoved(change.record);
    });
  }

  /** Stops following the registry. */
  close(): void {
    this.unwatch();
  }

  /** The model of a registered worker. */
  modelOf(workerId: string): string | undefined {
    return this.workerModels.get(workerId)?.name;
  }

  /** Models the router knows (configured, or with a registered worker). */
  modelNames(): string[] {
    return [...this.models.keys()];
  }

  /**
   * A model's native core and its targets by native id, for the native front, which routes on
   * the same core (gateway/native-front.ts); null for an unknown model.
   */
  nativeView(model: string): { core: NativeCore; targets: { tid: number; workerId: string; dpRank: number; record: WorkerRecord }[] } | null {
    const m = this.models.get(model);
    if (m === undefined) return null;
    const targets: { tid: number; workerId: string; dpRank: number; record: WorkerRecord }[] = [];
    m.targets.forEach((t, tid) => {
      if (t !== undefined) targets.push({ tid, workerId: t.workerId, dpRank: t.dpRank, record: t.record });
    });
    return { core: m.core, targets };
  }

  /** Whether some observer is told of every lifecycle step (fleet mode). */
  get observed(): boolean {
    return this.observer !== null;
  }

  // ---- decisions --------------------------------------------------------------------------

  /**
   * Chooses a (worker, dpRank) for the request: one native call (hashing, index walk, scoring).
   * Unless `dryRun`, books the request's load there (lapsing after `unstartedTtlMs` unless
   * `started` confirms it) and credits the worker with its blocks for `speculativeTtlMs`.
   * Throws NoWorkerError when there is no candidate, InvalidInputError for bad tokens.
   */
  route(req: RouteRequest): RouteDecision {
    const m = this.models.get(req.model);
    if (m === undefined) throw new NoWorkerError(req.model, "unknown_model");
    if (m.workers.size === 0) throw new NoWorkerError(req.model, "no_workers");
    const tokens = toTokenArray(req.tokens);
    const maxTokens = req.maxTokens;
    if (maxTokens !== undefined && !(Number.isInteger(maxTokens) && maxTokens >= 0 && maxTokens <= MAX_U32)) {
      throw new InvalidInputError(`maxTokens must be an integer in [0, 2^32): got ${String(maxTokens)}`);
    }
    let role = 0;
    if (req.role !== undefined) {
      role = ROLE_BIT[req.role];
      if (role === undefined) throw new InvalidInputError(`role must be aggregated, prefill or decode: got ${JSON.stringify(req.role)}`);
    }
    let exclude: Uint32Array | null = null;
    if (req.exclude !== undefined && req.exclude.length > 0) {
      const tids: number[] = [];
      for (const t of req.exclude) {
        const tid = m.byKey.get(targetKey(t.workerId, t.dpRank));
        if (tid !== undefined) tids.push(tid);
      }
      if (tids.length > 0) exclude = Uint32Array.from(tids);
    }
    const requestId = req.requestId ?? this.idPrefix + (this.nextId++).toString(36);
    const explain = req.explain === true;
    const dryRun = req.dryRun === true;
    const flags = (explain ? 1 : 0) | (dryRun ? 2 : 0) | (role << 8);
    const now = this.clock();
    const ok = callNative(() =>
      m.core.route(
        tokens,
        requestId,
        now,
        MODE_CODE[this.mode],
        flags,
        maxTokens ?? null,
        req.loraName ?? null,
        req.cacheSalt ?? null,
        exclude,
        m.out,
        req.promptEmbeds ?? null,
      ),
    );
    if (ok === 0) throw new NoWorkerError(req.model, "all_excluded");
    const out = m.out;
    const chosen = m.targets[out[0]!]!;
    const decision: RouteDecision = {
      requestId,
      workerId: chosen.workerId,
      dpRank: chosen.dpRank,
      url: chosen.record.url,
      overlapBlocks: out[1]!,
      promptBlocks: out[2]!,
      bestOverlapBlocks: out[3]!,
      blind: out[4] === 1,
      mode: this.mode,
      allBusy: out[5] === 1,
      cost: out[6]!,
    };
    if (maxTokens !== undefined) decision.maxTokens = maxTokens;
    if (explain) {
      const n = out[7]!;
      const candidates: CandidateScore[] = new Array(n);
      for (let k = 0, at = HEADER; k < n; k++, at += STRIDE) {
        const t = m.targets[out[at]!]!;
        candidates[k] = {
          workerId: t.workerId,
          dpRank: t.dpRank,
          overlapBlocks: out[at + 1]!,
          speculativeBlocks: out[at + 2]!,
          prefillBlocks: out[at + 3]!,
          queuedPrefillBlocks: out[at + 4]!,
          decodeBlocks: out[at + 5]!,
          penalty: out[at + 6]!,
          cost: out[at + 7]!,
          busy: out[at + 8] === 1,
          kvView: out[at + 9] === 1,
          contextBlocks: out[at + 10]!,
          tiers: tierBlocks(out[at + 11]!, out[at + 12]!, out[at + 13]!),
          loadBlocks: out[at + 14]!,
        };
      }
      decision.candidates = candidates;
    }
    if (!dryRun) {
      if (this.observer) this.decisionKeys.set(decision, { keys: m.core.lastKeys(), promptTokens: tokens.length });
      this.pending.set(requestId, { m, started: false, at: now });
      if (++this.routes % PRUNE_EVERY === 0) this.prunePending(now);
    }
    return decision;
  }

  // ---- request lifecycle ------------------------------------------------------------------

  /** The request was sent to the decision's worker: its booking becomes permanent until finished. */
  started(decision: RouteDecision): void {
    this.book.started(decision);
    if (this.observer) this.observer.started(decision, this.decisionKeys.get(decision));
  }

  /** The first output token arrived: the request's prefill load goes. */
  firstToken(requestId: string): void {
    this.book.firstToken(requestId);
    this.observer?.firstToken(requestId);
  }

  /** Output tokens so far: the request's decode load grows with its context. */
  tokens(requestId: string, generated: number): void {
    this.book.tokens(requestId, generated);
    this.observer?.tokens(requestId, generated);
  }

  /** Finished, failed or cancelled: all the request's load goes. */
  finished(requestId: string, outcome: "ok" | "error" | "cancelled"): void {
    this.book.finished(requestId, outcome);
    this.observer?.finished(requestId, outcome);
  }

  /**
   * Settles once the lifecycle observer has passed on the steps told so far (fleet mode: the
   * NATS server has the `finished` of the requests that just ended); null when nothing waits.
   * The gateway ends those responses after it.
   */
  lifecycleDelivered(): Promise<void> | null {
    return this.observer?.delivered?.() ?? null;
  }

  /**
   * Told of every lifecycle step of this router's own requests, after its bookkeeping (fleet
   * mode publishes them to the other replicas). One observer; null removes it.
   */
  observeLifecycle(observer: LifecycleObserver | null): void {
    this.observer = observer;
  }

  /**
   * Another replica's request (fleet mode), started on (workerId, dpRank): booked with its prompt's
   * block keys as if routed here, and in kv mode its blocks past `overlapBlocks` credited to that
   * worker speculatively, as this router credits its own choices. Returns false for a worker
   * this router does not know. Later steps go through `book` with the same id.
   */
  bookRemote(r: { requestId: string; workerId: string; dpRank: number; keys: BigUint64Array; promptTokens: number; overlapBlocks: number; maxTokens: number | null }): boolean {
    const m = this.workerModels.get(r.workerId);
    const tid = m?.byKey.get(targetKey(r.workerId, r.dpRank));
    if (m === undefined || tid === undefined) return false;
    const now = this.clock();
    m.core.startedRemote(r.requestId, tid, r.keys, r.promptTokens, r.overlapBlocks, r.maxTokens, this.mode === "kv", now);
    this.pending.set(r.requestId, { m, started: true, at: now });
    return true;
  }

  /**
   * The same bookkeeping for requests another replica placed (their ids must not clash with
   * this router's: fleet mode prefixes them with the replica's id). Not observed.
   */
  readonly book: RequestLifecycle = {
    started: (decision) => {
      const m = this.pending.get(decision.requestId)?.m ?? this.workerModels.get(decision.workerId);
      if (m === undefined) return;
      const tid = m.byKey.get(targetKey(decision.workerId, decision.dpRank));
      if (tid === undefined) return; // the worker left meanwhile
      m.core.started(decision.requestId, tid, decision.promptBlocks, decision.overlapBlocks, decision.maxTokens ?? null);
      this.pending.set(decision.requestId, { m, started: true, at: this.clock() });
    },
    firstToken: (requestId) => {
      this.pending.get(requestId)?.m.core.firstToken(requestId);
    },
    tokens: (requestId, generated) => {
      const p = this.pending.get(requestId);
      if (p === undefined) return;
      const n = Number.isFinite(generated) ? Math.min(MAX_U32, Math.max(0, Math.floor(generated))) : 0;
      p.m.core.tokens(requestId, n);
    },
    finished: (requestId) => {
      const p = this.pending.get(requestId);
      if (p === undefined) return;
      this.pending.delete(requestId);
      p.m.core.finished(requestId, this.clock());
    },
  };

  private prunePending(now: number): void {
    const ttl = this.options.unstartedTtlMs ?? 2000;
    for (const [id, p] of this.pending) {
      if (!p.started && now - p.at > ttl) this.pending.delete(id);
    }
  }

  // ---- KV events and metrics --------------------------------------------------------------

  /**
   * The KV-event sink of a model's workers, for `VllmEventSource` (and, as an applier, for
   * `KvEventReplica`): each batch is decoded and applied in Rust; a batch with unreadable events
   * drops that worker's view (rebuilt from the next events); a clear drops it too. The first time
   * a worker is flagged for a hash or block-size mismatch, one warning is logged.
   */
  eventSink(model: string): RouterEventSink {
    const counts: RouterEventSinkStats = { batches: 0, malformed: 0, resyncs: 0, clears: 0 };
    const reported = new Set<string>();
    const fed = new Set<string>();
    const state = (): ModelState => {
      const m = this.models.get(model);
      if (m === undefined) {
        throw new InvalidConfigError(`no block size is known for model ${JSON.stringify(model)}: register a worker or configure it in models`);
      }
      return m;
    };
    const checkParity = (m: ModelState) => {
      for (const w of m.core.eventStats().workers) {
        const key = targetKey(w.workerId, w.dpRank);
        if (!fed.has(w.workerId) || reported.has(key) || !(w.hashMismatch || w.blockSizeMismatch)) continue;
        reported.add(key);
        const what = w.blockSizeMismatch
          ? `block size ${w.workerBlockSize ?? "?"} differs from the model's ${m.blockSize}`
          : "its block hashes differ from the router's";
        this.log(
          `kvroute: worker ${w.workerId} (dp rank ${w.dpRank}): ${what}; likely cause: ${w.likelyCause ?? "unknown"}. ` +
            "Its cached prefixes will not match requests until the worker and the router agree (block size, hash algorithm, PYTHONHASHSEED). Still serving.",
        );
      }
    };
    // The outcome comes back packed (a native object's properties cost more than applying a small batch).
    const packed = new Uint32Array(7);
    const apply = (workerId: string, payload: Uint8Array | DirectBatchArrays, dpRank: number | undefined): ApplyEventBatchResult => {
      const m = state();
      const malformed =
        payload instanceof Uint8Array
          ? m.core.applyEventBatchInto(workerId, payload, dpRank ?? null, packed)
          : payload.keyed
            ? m.core.applyKeyedBatchInto(workerId, payload.rank, payload.ops, payload.hashes, packed)
            : m.core.applyDirectBatchInto(workerId, payload.rank, payload.ops, payload.hashes, payload.tokens, packed);
      const result: ApplyEventBatchResult = {
        events: packed[0]!,
        stored: packed[1]!,
        removed: packed[2]!,
        cleared: packed[3]!,
        skipped: packed[4]!,
        skippedKnown: packed[5]!,
        dpRank: packed[6]!,
      };
      if (malformed !== null) result.malformed = malformed;
      counts.batches++;
      fed.add(workerId);
      if (result.malformed !== undefined && result.malformed !== null) counts.malformed++;
      if (result.skippedKnown > 0) {
        m.core.clearWorker(workerId, result.dpRank);
        counts.resyncs++;
      }
      // A keyed batch carries no tokens and no block size: nothing to check.
      const keyed = !(payload instanceof Uint8Array) && payload.keyed === true;
      if ((counts.batches <= 32 || counts.batches % 256 === 0) && !keyed) checkParity(m);
      return result;
    };
    const clear = (workerId: string, dpRank: number | undefined): number => {
      counts.clears++;
      return state().core.clearWorker(workerId, dpRank ?? null);
    };
    return {
      applyBatch: (workerId, dpRank, _seq, payload) => void apply(workerId, payload, dpRank),
      clear: (workerId, dpRank) => void clear(workerId, dpRank),
      applyEventBatch: (workerId, payload, dpRank) => apply(workerId, payload, dpRank),
      applyDirectBatch: (workerId, batch) => apply(workerId, batch, batch.rank),
      clearWorker: (worker) => clear(worker.workerId, worker.dpRank),
      stats: () => ({ ...counts }),
    };
  }

  /**
   * The native core holding `model`'s KV index, for simulated engines in this process that apply
   * their keyed event batches to it from native code (the virtual replay's Rust engines,
   * `SimEngines.run`): what `eventSink(model).applyDirectBatch` does with a keyed batch, and
   * `tokens` does with a request's progress, without a JS call for each. The sink's counters
   * (`stats`) do not see those batches. Not for a router with a lifecycle observer (fleet mode),
   * which must hear of every step.
   */
  keyedEventCore(model: string): NativeCore {
    if (this.observer !== null) throw new InvalidConfigError("keyedEventCore: this router has a lifecycle observer, which must hear of every step");
    const m = this.models.get(model);
    if (m === undefined) throw new InvalidConfigError(`no block size is known for model ${JSON.stringify(model)}: register a worker or configure it in models`);
    return m.core;
  }

  /**
   * The block keys of the prompt `route` last hashed for `model` (a copy): for a simulated engine
   * in this process that keys its cache the same way (the virtual replay's keyed engines).
   */
  lastPromptKeys(model: string): BigUint64Array | undefined {
    return this.models.get(model)?.core.lastKeys();
  }

  /** A model's skipped events by reason (`eventStats(model).skippedReasons`, without the rest). */
  skippedReasons(model: string): Record<string, number> | undefined {
    return this.models.get(model)?.core.skippedReasons();
  }

  /** Counters of a model's event application (as `KvIndexer.eventStats`). */
  eventStats(model: string): KvEventStats | undefined {
    return this.models.get(model)?.core.eventStats() as KvEventStats | undefined;
  }

  /** Whether events have given the router a view of the worker's cache (any rank, or `dpRank`). */
  hasKvView(workerId: string, dpRank?: number): boolean {
    return this.workerModels.get(workerId)?.core.hasKvView(workerId, dpRank ?? null) ?? false;
  }

  /**
   * A worker's scraped load; feeds the busy threshold and the metrics correction (docs/router.md):
   * the load it shows that the router did not place is computed now, against the router's
   * requests there now and those it finished since the scrape was taken, and kept until the next
   * scrape (fading over `metricsTtlMs`). Returns false for an unknown worker.
   */
  updateMetrics(workerId: string, metrics: WorkerMetricsUpdate): boolean {
    const m = this.workerModels.get(workerId);
    if (m === undefined) return false;
    return m.core.updateMetrics(
      workerId,
      metrics.dpRank ?? null,
      metrics.numRequestsWaiting ?? 0,
      metrics.numRequestsRunning ?? 0,
      metrics.kvCacheUsagePerc ?? 0,
      this.clock(),
      metrics.takenAtMs ?? null,
    );
  }

  /**
   * `updateMetrics` from a worker's /metrics text: `vllm:num_requests_waiting`,
   * `vllm:num_requests_running` and `vllm:kv_cache_usage_perc`, per rank when the worker hosts
   * several and labels them `engine="<rank>"`, else for the whole worker. `takenAtMs`: as in
   * `WorkerMetricsUpdate`.
   */
  updateMetricsFromPrometheus(workerId: string, text: string, takenAtMs?: number): boolean {
    const m = this.workerModels.get(workerId);
    if (m === undefined) return false;
    const ranks = new Set((m.workers.get(workerId) ?? []).map((t) => m.targets[t]!.dpRank));
    const per = new Map<string, { w: number; r: number; kv: number }>();
    for (const s of parsePrometheus(text, LOAD_METRICS)) {
      const field =
        s.name === "vllm:num_requests_waiting" ? "w" : s.name === "vllm:num_requests_running" ? "r" : s.name === "vllm:kv_cache_usage_perc" ? "kv" : null;
      if (field === null || !Number.isFinite(s.value)) continue;
      const engine = s.labels["engine"] ?? "";
      const acc = per.get(engine) ?? { w: 0, r: 0, kv: 0 };
      if (field === "kv") acc.kv = Math.max(acc.kv, s.value);
      else acc[field] += s.value;
      per.set(engine, acc);
    }
    if (per.size === 0) return false;
    const byRank = ranks.size > 1 && [...per.keys()].every((e) => ranks.has(Number(e)) && e !== "");
    if (byRank) {
      let any = false;
      for (const [e, v] of per) {
        any = this.updateMetrics(workerId, { dpRank: Number(e), numRequestsWaiting: v.w, numRequestsRunning: v.r, kvCacheUsagePerc: v.kv, takenAtMs }) || any;
      }
      return any;
    }
    const total = { w: 0, r: 0, kv: 0 };
    for (const v of per.values()) {
      total.w += v.w;
      total.r += v.r;
      total.kv = Math.max(total.kv, v.kv);
    }
    return this.updateMetrics(workerId, { numRequestsWaiting: total.w, numRequestsRunning: total.r, kvCacheUsagePerc: total.kv, takenAtMs });
  }

  // ---- introspection ----------------------------------------------------------------------

  /** The router's predicted load per (worker, dpRank), of one model or all. */
  workerLoads(model?: string): WorkerLoad[] {
    const out: WorkerLoad[] = [];
    for (const m of this.models.values()) {
      if (model !== undefined && m.name !== model) continue;
      for (const l of m.core.targetLoads()) {
        out.push({
          model: m.name,
          workerId: l.workerId,
          dpRank: l.dpRank,
          requests: l.requests,
          prefilling: l.prefilling,
          prefillBlocks: l.prefillBlocks,
          decodeBlocks: l.decodeBlocks,
        });
      }
    }
    return out;
  }

  stats(): KvRouterStats {
    const models: Record<string, KvRouterModelStats> = {};
    for (const m of this.models.values()) {
      const s = m.core.stats();
      models[m.name] = {
        blockSize: m.blockSize,
        keying: m.keying,
        targets: s.targets,
        activeRequests: s.activeRequests,
        unstartedRequests: s.unstartedRequests,
        lapsedBookings: s.lapsedBookings,
        unknownLifecycle: s.unknownLifecycle,
        speculativeBlocks: s.speculativePairs,
        speculativeEvicted: s.speculativeEvicted,
        decisions: s.decisions,
        blindDecisions: s.blindDecisions,
        allBusyDecisions: s.allBusyDecisions,
        blocks: s.blocks,
        pairs: s.pairs,
        indexedWorkers: s.indexedWorkers,
        approxBytes: s.approxBytes,
      };
    }
    return { mode: this.mode, models };
  }

  // ---- registry ---------------------------------------------------------------------------

  private ensureModel(name: string, record: WorkerRecord | undefined): ModelState {
    const existing = this.models.get(name);
    if (existing !== undefined) return existing;
    const cfg = this.options.models?.[name] ?? {};
    const blockSize = cfg.blockSize ?? record?.blockSize;
    if (blockSize === undefined) {
      throw new InvalidConfigError(`model ${JSON.stringify(name)}: no blockSize (configure it in models, or register a worker)`);
    }
    const keying = cfg.keying ?? "tokens";
    const hashAlgorithm = cfg.hashAlgorithm ?? record?.hashAlgorithm;
    const seed = cfg.hashSeed !== undefined ? cfg.hashSeed : record?.hashSeed;
    const hashSeed = seed === null ? undefined : seed;
    const o = this.options;
    const b = o.busyThreshold ?? {};
    const core = callNative(
      () =>
        new native.KvRouterCore({
          blockSize,
          keying,
          hashAlgorithm,
          hashSeed,
          maxEngineMapEntries: cfg.maxEngineMapEntries,
          overlapWeight: o.overlapWeight,
          sequenceWeight: o.sequenceWeight,
          temperature: o.temperature,
          busyKvUsage: b.kvUsage,
          busyQueueDepth: b.queueDepth,
          busyActiveRequests: b.activeRequests === undefined ? undefined : Math.floor(b.activeRequests),
          speculativeTtlMs: o.speculativeTtlMs,
          maxSpeculativeBlocks: o.maxSpeculativeBlocks === undefined ? undefined : Math.floor(o.maxSpeculativeBlocks),
          unstartedTtlMs: o.unstartedTtlMs,
          metricsTtlMs: o.metricsTtlMs,
          metricsLagMs: o.metricsLagMs,
          seed: o.seed === undefined ? undefined : o.seed >>> 0,
          cpuTierCredit: o.tierCredits?.CPU,
          diskTierCredit: o.tierCredits?.DISK,
        }),
    );
    const m: ModelState = {
      name,
      core,
      blockSize,
      keying,
      hashAlgorithm,
      hashSeed,
      targets: [],
      byKey: new Map(),
      workers: new Map(),
      out: new Float64Array(HEADER + STRIDE * 8),
    };
    this.models.set(name, m);
    return m;
  }

  private onAdded(record: WorkerRecord): void {
    const previous = this.workerModels.get(record.id);
    if (previous !== undefined && previous.name !== record.model) this.onRemoved(record, previous);
    const m = this.ensureModel(record.model, record);
    this.checkRecord(m, record);
    const tids = m.core.upsertWorker(record.id, [...record.dpRanks], record.role);
    for (const tid of m.workers.get(record.id) ?? []) {
      const t = m.targets[tid];
      if (t !== undefined) m.byKey.delete(targetKey(t.workerId, t.dpRank));
      m.targets[tid] = undefined;
    }
    tids.forEach((tid, i) => {
      const dpRank = record.dpRanks[i]!;
      m.targets[tid] = { workerId: record.id, dpRank, record };
      m.byKey.set(targetKey(record.id, dpRank), tid);
    });
    m.workers.set(record.id, tids);
    this.workerModels.set(record.id, m);
    const needed = HEADER + STRIDE * m.targets.length;
    if (m.out.length < needed) m.out = new Float64Array(needed * 2);
  }

  private onRemoved(record: WorkerRecord, from?: ModelState): void {
    const m = from ?? this.workerModels.get(record.id);
    if (m === undefined) return;
    m.core.removeWorker(record.id);
    for (const tid of m.workers.get(record.id) ?? []) {
      const t = m.targets[tid];
      if (t !== undefined) m.byKey.delete(targetKey(t.workerId, t.dpRank));
      m.targets[tid] = undefined;
    }
    m.workers.delete(record.id);
    this.workerModels.delete(record.id);
  }

  private checkRecord(m: ModelState, r: WorkerRecord): void {
    if (r.blockSize !== m.blockSize) {
      this.log(`kvroute: worker ${r.id} has block size ${r.blockSize} but model ${m.name} is routed with ${m.blockSize}: its cached prefixes will not match`);
    }
    if (m.keying === "engine" && (r.hashAlgorithm !== m.hashAlgorithm || (r.hashSeed ?? undefined) !== m.hashSeed)) {
      this.log(`kvroute: worker ${r.id} hashes blocks with ${r.hashAlgorithm}/seed ${String(r.hashSeed)}, model ${m.name} with ${String(m.hashAlgorithm)}/seed ${String(m.hashSeed)} (engine keying): its cached prefixes will not match`);
    }
  }
}

function validateOptions(o: KvRouterOptions): void {
  if (o === null || typeof o !== "object" || o.registry === undefined) throw new InvalidConfigError("KvRouter needs { registry }");
  if (o.mode !== undefined && !ROUTER_MODES.includes(o.mode)) {
    throw new InvalidConfigError(`mode must be one of ${ROUTER_MODES.join(", ")}: got ${JSON.stringify(o.mode)}`);
  }
  const nonneg = (v: number | undefined, name: string, max = Infinity) => {
    if (v !== undefined && !(typeof v === "number" && Number.isFinite(v) && v >= 0 && v <= max)) {
      throw new InvalidConfigError(`${name} must be a finite number in [0, ${max}]: got ${String(v)}`);
    }
  };
  nonneg(o.overlapWeight, "overlapWeight");
  nonneg(o.sequenceWeight, "sequenceWeight");
  nonneg(o.temperature, "temperature");
  nonneg(o.speculativeTtlMs, "speculativeTtlMs");
  nonneg(o.unstartedTtlMs, "unstartedTtlMs");
  nonneg(o.metricsTtlMs, "metricsTtlMs");
  nonneg(o.metricsLagMs, "metricsLagMs");
  nonneg(o.maxSpeculativeBlocks, "maxSpeculativeBlocks", MAX_U32);
  nonneg(o.tierCredits?.CPU, "tierCredits.CPU", 1);
  nonneg(o.tierCredits?.DISK, "tierCredits.DISK", 1);
  nonneg(o.busyThreshold?.kvUsage, "busyThreshold.kvUsage");
  nonneg(o.busyThreshold?.queueDepth, "busyThreshold.queueDepth");
  nonneg(o.busyThreshold?.activeRequests, "busyThreshold.activeRequests", MAX_U32);
  if (o.seed !== undefined && !Number.isInteger(o.seed)) throw new InvalidConfigError("seed must be an integer");
  for (const [name, c] of Object.entries(o.models ?? {})) {
    if (c.blockSize !== undefined && !(Number.isInteger(c.blockSize) && c.blockSize > 0)) {
      throw new InvalidConfigError(`models.${name}.blockSize must be a positive integer`);
    }
    if (c.keying !== undefined && c.keying !== "tokens" && c.keying !== "engine") {
      throw new InvalidConfigError(`models.${name}.keying must be "tokens" or "engine"`);
    }
  }
}

/** The indexed overlap by tier, tiers without blocks left out (e.g. `{ GPU: 10, CPU: 30 }`). */
function tierBlocks(gpu: number, cpu: number, disk: number): Record<string, number> {
  const t: Record<string, number> = {};
  if (gpu > 0) t["GPU"] = gpu;
  if (cpu > 0) t["CPU"] = cpu;
  if (disk > 0) t["DISK"] = disk;
  return t;
}

/**
 * A tier's credit (`KvRouterOptions.tierCredits`) from speeds: prefill computes a token in
 * `prefillPerTokenMs`, the tier loads one in `loadPerTokenMs` (KV bytes per token / bandwidth).
 */
export function tierCredit(prefillPerTokenMs: number, loadPerTokenMs: number): number {
  if (!(prefillPerTokenMs > 0) || !(loadPerTokenMs >= 0)) return 0;
  return Math.min(1, Math.max(0, 1 - loadPerTokenMs / prefillPerTokenMs));
}
