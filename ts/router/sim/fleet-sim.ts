/**
 * FleetSim: an in-process, virtual-time model of N vLLM workers for the router's pathology tests
 * and the hot-spotting numbers of `bench:router` — not part of the package API. Each worker has a
 * prefix cache (LRU over block keys, `capacityBlocks`), a FIFO prefill queue served one request
 * at a time at `prefillTokensPerMs` for the tokens it does not have cached, and decode that takes
 * `decodeMsPerToken` per output token, slowed by `decodeSlowdown` per other running request.
 * After each prefill the worker publishes its new (and evicted) blocks as a real vLLM KVEventBatch
 * (msgpack, `encodeKvEventBatch`) to a sink after `eventDelayMs`. The hit rate is what vLLM's
 * prefix-cache metrics report: cached prompt tokens / prompt tokens, measured at prefill start.
 *
 * Clients run a closed loop: `concurrency` of them, each sending its next request when the
 * previous one finishes, until `requests` are done. A `SimPolicy` places each request; the
 * KvRouter policy makes the same lifecycle calls a gateway does (started at send, firstToken at
 * prefill end, finished at the end).
 */
import { BlockHasher } from "../../core/block-hasher.js";
import { encodeKvEventBatch, type KvEvent } from "../../events/codec.js";
import type { KvEventSink } from "../../events/types.js";
import type { KvRouter } from "../kv-router.js";
import { mulberry32 } from "../../util/prng.js";

export interface SimRequest {
  id: string;
  tokens: Uint32Array;
  outputTokens: number;
}

export interface FleetSimOptions {
  workers: number;
  blockSize?: number;
  /** Per worker; default 1 << 16. */
  capacityBlocks?: number;
  /** Default 20 (a 2,000-token prefill takes 100 ms). */
  prefillTokensPerMs?: number;
  /** Default 10. */
  decodeMsPerToken?: number;
  /** Default 0.02: each other running request slows decode by 2%. */
  decodeSlowdown?: number;
  /** Default 5. */
  eventDelayMs?: number;
  /** Where workers publish KV events (none: the router never sees any). */
  sink?: KvEventSink;
}

/** Places requests. `workerIndex` is 0..workers-1. */
export interface SimPolicy {
  route(req: SimRequest, sim: FleetSim): number;
  started?(req: SimRequest): void;
  firstToken?(req: SimRequest): void;
  finished?(req: SimRequest): void;
}

export interface SimResult {
  /** Requests per worker. */
  perWorker: number[];
  /** Busiest worker's count / mean count. */
  maxOverMean: number;
  /** Cached prompt tokens / prompt tokens. */
  hitRate: number;
  meanTtftMs: number;
  makespanMs: number;
}

interface Job {
  req: SimRequest;
  keys: BigUint64Array;
  arrived: number;
}

class SimWorker {
  /** LRU: insertion order = recency (oldest first). */
  readonly cache = new Map<bigint, true>();
  readonly queue: Job[] = [];
  busy = false;
  running = 0;
  seq = 0n;
  constructor(
    readonly id: string,
    readonly capacity: number,
  ) {}

  /** Cached leading blocks of `keys` (touching them). */
  hit(keys: BigUint64Array): number {
    let n = 0;
    for (const k of keys) {
      if (!this.cache.has(k)) break;
      this.cache.delete(k);
      this.cache.set(k, true);
      n++;
    }
    return n;
  }

  /** Whether the cache holds the leading `n` keys, without touching them. */
  peek(keys: BigUint64Array): number {
    let n = 0;
    for (const k of keys) {
      if (!this.cache.has(k)) break;
      n++;
    }
    return n;
  }
}

/** A binary heap of timed callbacks (ties in insertion order). */
class Agenda {
  private heap: { t: number; n: number; f: () => void }[] = [];
  private n = 0;
  push(t: number, f: () => void): void {
    const h = this.heap;
    h.push({ t, n: this.n++, f });
    let i = h.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (less(h[p]!, h[i]!)) break;
      [h[p], h[i]] = [h[i]!, h[p]!];
      i = p;
    }
  }
  pop(): { t: number; f: () => void } | undefined {
    const h = this.heap;
    if (h.length === 0) return undefined;
    const top = h[0]!;
    const last = h.pop()!;
    if (h.length > 0) {
      h[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < h.length && less(h[l]!, h[m]!)) m = l;
        if (r < h.length && less(h[r]!, h[m]!)) m = r;
        if (m === i) break;
        [h[m], h[i]] = [h[i]!, h[m]!];
        i = m;
      }
    }
    return top;
  }
}
const less = (a: { t: number; n: number }, b: { t: number; n: number }) => a.t < b.t || (a.t === b.t && a.n < b.n);

export class FleetSim {
  /** Virtual time, ms (use `() => sim.now` as the router's clock). */
  now = 0;
  readonly workers: SimWorker[];
  readonly blockSize: number;
  private readonly hasher: BlockHasher;
  private readonly o: Required<Omit<FleetSimOptions, "sink">> & { sink?: KvEventSink };
  private readonly agenda = new Agenda();
  private hitTokens = 0;
  private promptTokens = 0;
  private ttftSum = 0;
  private done = 0;

  constructor(options: FleetSimOptions) {
    this.o = {
      blockSize: 16,
      capacityBlocks: 1 << 16,
      prefillTokensPerMs: 20,
      decodeMsPerToken: 10,
      decodeSlowdown: 0.02,
      eventDelayMs: 5,
      ...options,
    };
    this.blockSize = this.o.blockSize;
    this.hasher = new BlockHasher({ blockSize: this.blockSize });
    this.workers = Array.from({ length: options.workers }, (_, i) => new SimWorker(`w${i}`, this.o.capacityBlocks));
  }

  /** Leading blocks of `tokens` worker `i` has cached now (an oracle, for baselines). */
  cachedBlocks(i: number, tokens: Uint32Array): number {
    return this.workers[i]!.peek(this.hasher.hash(tokens));
  }

  /** What worker `i`'s /metrics would say now. */
  metrics(i: number): { numRequestsWaiting: number; numRequestsRunning: number; kvCacheUsagePerc: number } {
    const w = this.workers[i]!;
    return {
      numRequestsWaiting: w.queue.length,
      numRequestsRunning: w.running + (w.busy ? 1 : 0),
      kvCacheUsagePerc: w.cache.size / w.capacity,
    };
  }

  /** Runs the closed loop over `requests` with `concurrency` clients. */
  run(requests: readonly SimRequest[], concurrency: number, policy: SimPolicy): SimResult {
    const perWorker = new Array<number>(this.workers.length).fill(0);
    let next = 0;
    const send = () => {
      if (next >= requests.length) return;
      const req = requests[next++]!;
      const w = policy.route(req, this);
      perWorker[w]!++;
      policy.started?.(req);
      this.enqueue(w, { req, keys: this.hasher.hash(req.tokens), arrived: this.now }, policy, send);
    };
    for (let c = 0; c < concurrency; c++) send();
    for (let ev = this.agenda.pop(); ev !== undefined; ev = this.agenda.pop()) {
      this.now = ev.t;
      ev.f();
    }
    const mean = requests.length / this.workers.length;
    return {
      perWorker,
      maxOverMean: Math.max(...perWorker) / mean,
      hitRate: this.promptTokens === 0 ? 0 : this.hitTokens / this.promptTokens,
      meanTtftMs: this.done === 0 ? 0 : this.ttftSum / this.done,
      makespanMs: this.now,
    };
  }

  private enqueue(w: number, job: Job, policy: SimPolicy, onDone: () => void): void {
    const worker = this.workers[w]!;
    worker.queue.push(job);
    if (!worker.busy) this.startPrefill(worker, policy, onDone);
  }

  private startPrefill(worker: SimWorker, policy: SimPolicy, onDone: () => void): void {
    const job = worker.queue.shift();
    if (job === undefined) {
      worker.busy = false;
      return;
    }
    worker.busy = true;
    const tokens = job.req.tokens.length;
    const hit = Math.min(worker.hit(job.keys) * this.blockSize, tokens - 1);
    this.hitTokens += hit;
    this.promptTokens += tokens;
    const ms = (tokens - hit) / this.o.prefillTokensPerMs;
    this.agenda.push(this.now + ms, () => {
      this.store(worker, job);
      this.ttftSum += this.now - job.arrived;
      policy.firstToken?.(job.req);
      worker.running++;
      const decodeMs = job.req.outputTokens * this.o.decodeMsPerToken * (1 + this.o.decodeSlowdown * (worker.running - 1));
      this.agenda.push(this.now + decodeMs, () => {
        worker.running--;
        this.done++;
        policy.finished?.(job.req);
        onDone();
      });
      this.startPrefill(worker, policy, onDone);
    });
  }

  /** Caches the job's blocks and publishes the change. */
  private store(worker: SimWorker, job: Job): void {
    const keys = job.keys;
    const bs = this.blockSize;
    let first = 0;
    while (first < keys.length && worker.cache.has(keys[first]!)) first++;
    const evicted: bigint[] = [];
    const stored: bigint[] = [];
    for (let i = 0; i < keys.length; i++) {
      const k = keys[i]!;
      worker.cache.delete(k);
      worker.cache.set(k, true);
      // From the first uncached block on, everything is (re)stored, as vLLM re-emits a block
      // cached again (its BlockStored chains must be contiguous).
      if (i >= first) stored.push(k);
    }
    while (worker.cache.size > worker.capacity) {
      const oldest = worker.cache.keys().next().value as bigint;
      worker.cache.delete(oldest);
      evicted.push(oldest);
    }
    const sink = this.o.sink;
    if (sink === undefined || (stored.length === 0 && evicted.length === 0)) return;
    const events: KvEvent[] = [];
    if (stored.length > 0) {
      events.push({
        type: "BlockStored",
        blockHashes: stored,
        parentBlockHash: first === 0 ? null : keys[first - 1]!,
        tokenIds: job.req.tokens.subarray(first * bs, (first + stored.length) * bs),
        blockSize: bs,
        medium: "GPU",
      });
    }
    if (evicted.length > 0) events.push({ type: "BlockRemoved", blockHashes: evicted, medium: "GPU" });
    const payload = encodeKvEventBatch({ ts: this.now / 1000, dataParallelRank: 0, events });
    const seq = worker.seq++;
    this.agenda.push(this.now + this.o.eventDelayMs, () => sink.applyBatch(worker.id, 0, seq, payload));
  }
}

/** The KvRouter as a sim policy, with the gateway's lifecycle calls. */
export function routerPolicy(router: KvRouter, model: string): SimPolicy {
  const decisions = new Map<string, ReturnType<KvRouter["route"]>>();
  return {
    route(req) {
      const d = router.route({ model, tokens: req.tokens, requestId: req.id, maxTokens: req.outputTokens });
      decisions.set(req.id, d);
      return Number(d.workerId.slice(1));
    },
    started(req) {
      router.started(decisions.get(req.id)!);
    },
    firstToken(req) {
      router.firstToken(req.id);
    },
    finished(req) {
      decisions.delete(req.id);
      router.finished(req.id, "ok");
    },
  };
}

/** Pure affinity (the hit-rate ceiling): the worker caching the longest prefix now, lowest index on ties. */
export const affinityPolicy: SimPolicy = {
  route(req, sim) {
    let best = 0;
    let bestBlocks = -1;
    for (let i = 0; i < sim.workers.length; i++) {
      const n = sim.cachedBlocks(i, req.tokens);
      if (n > bestBlocks) {
        best = i;
        bestBlocks = n;
      }
    }
    return best;
  },
};

/** Round-robin, the no-affinity baseline. */
export function roundRobinPolicy(): SimPolicy {
  let i = 0;
  return { route: (_req, sim) => i++ % sim.workers.length };
}

/**
 * The acceptance workload: `n` requests sharing one `systemTokens`-token system prompt, each with
 * a distinct user turn of `userMin..userMax` tokens and `outMin..outMax` output tokens.
 */
export function sharedPrefixWorkload(options: {
  n: number;
  systemTokens: number;
  userMin?: number;
  userMax?: number;
  outMin?: number;
  outMax?: number;
  seed?: number;
  /** Token id offset of the system prompt (distinct offsets: distinct prompts). */
  systemBase?: number;
}): SimRequest[] {
  const rand = mulberry32(options.seed ?? 1);
  const between = (a: number, b: number) => a + Math.floor(rand() * (b - a + 1));
  const system = Uint32Array.from({ length: options.systemTokens }, (_, i) => (options.systemBase ?? 1_000_000) + i);
  return Array.from({ length: options.n }, (_, r) => {
    const user = between(options.userMin ?? 50, options.userMax ?? 300);
    const tokens = new Uint32Array(options.systemTokens + user);
    tokens.set(system);
    for (let i = 0; i < user; i++) tokens[options.systemTokens + i] = Math.floor(rand() * 30_000);
    return { id: `req-${r}`, tokens, outputTokens: between(options.outMin ?? 20, options.outMax ?? 100) };
  });
}

