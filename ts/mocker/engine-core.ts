/**
 * One simulated vLLM engine core (one data-parallel rank): vLLM v1's FCFS scheduler with chunked
 * prefill and preemption (vllm/v1/core/sched/scheduler.py), its KV cache manager over a
 * `BlockPool`, the NixlConnector's request-level protocol, and a timing model instead of a GPU.
 * This file holds the scheduler, its loop and clocks, and sampling; the other parts live beside
 * it, one file each: a request's state and types (./core-request.ts), the KV cache manager
 * (./kv-cache-manager.ts), the NixlConnector protocol (./nixl-protocol.ts), and a step's modelled
 * duration (./step-timing.ts).
 *
 * The loop runs steps: schedule (running requests first, one decode token each or the next prefill
 * chunk; then waiting requests, FCFS, after a prefix-cache lookup, while the token budget, the
 * sequence limit and the free blocks allow; a running request that cannot get a block preempts
 * the youngest running one), sleep the step's modelled duration / speedup, then sample one token
 * for every request whose computed tokens caught up with its tokens, and publish the step's KV
 * events as one batch.
 *
 * Clocks: `vclock` is simulated milliseconds. It advances by each step's modelled duration (and
 * over idle gaps, by wall time x speedup); every latency the engine reports (metrics, per-request
 * timings) is simulated time, so it is the same at any speedup, and meaningful with zero time.
 * Instead of `start()`, a caller may step the core on its own discrete-event clock (`beginStep` /
 * `endStep`: the virtual-time replay); the loop runs the very same two halves of a step.
 *
 * Invariants:
 * - C1: a request is in exactly one of `waiting`, `running`, `transferring`, or none (finished).
 * - C2: a request's `blocks` hold one reference each; `numComputed <= blocks.length * blockSize`;
 *   its first `numCachedBlocks` blocks are in the prefix cache under `hashes[0..numCachedBlocks)`.
 * - C3: `numComputed <= numTokens`; a token is sampled exactly when a step makes them equal.
 */
import { setImmediate as yieldImmediate } from "node:timers/promises";
import type { KvEvent } from "../events/codec.js";
import { BlockPool } from "./block-pool.js";
import { CpuOffloadTier, cpuHitRun } from "./cpu-offload.js";
import type { ResolvedMockEngineConfig } from "./config.js";
import {
  CoreRequest,
  Deque,
  extraKeysOf,
  modelToken,
  type CoreOutput,
  type CoreRequestInit,
  type OutputSink,
  type Scheduled,
} from "./core-request.js";
import { KvCacheManager } from "./kv-cache-manager.js";
import type { EngineMetrics, FinishReasonLabel } from "./metrics.js";
import { modelTokenizerFor, type ModelTokenizer } from "./model-tokenizer.js";
import { nixlEngineId, producerTransferParams, remotePrefillParams, type KvTransferHooks } from "./nixl-protocol.js";
import { stepDurationMs } from "./step-timing.js";

// The request types live with the request (./core-request.ts), the transfer hooks with the
// protocol (./nixl-protocol.ts); the serving layer imports them all from here.
export type { CoreOutput, CoreRequestInit, LoraRef, OutputSink, RequestTimings } from "./core-request.js";
export type { KvTransferHooks } from "./nixl-protocol.js";

const NO_PLAN: readonly Scheduled[] = [];

/** Where a core sends its KV event batches (MockEngine encodes and publishes them). */
export type EventBatchSink = (rank: number, events: KvEvent[]) => void;

export class EngineCore {
  readonly rank: number;
  readonly pool: BlockPool;
  /** The prefix cache over `pool`: lookups, allocation, block hashes (./kv-cache-manager.ts). */
  private readonly kv: KvCacheManager;
  private readonly waiting = new Deque<CoreRequest>();
  private running: CoreRequest[] = [];
  private readonly transferring = new Set<CoreRequest>();
  private readonly requests = new Map<string, CoreRequest>();
  private vclock = 0;
  private wallDeadline = 0;
  private inStep = false;
  private stepStartV = 0;
  private stepStartWall = 0;
  private stepDuration = 0;
  /** The step in progress (between prepareStep and finishStep). */
  private plan: readonly Scheduled[] = NO_PLAN;
  /**
   * The entries `schedule` hands out, reused step after step (a step schedules every running
   * request: a fresh object each would be most of the engine's garbage). One plan is live at a
   * time: it is applied before the next step is scheduled.
   */
  private readonly entries: Scheduled[] = [];
  private wake: (() => void) | null = null;
  /** Real KV transfers (ts/mocker/nixl-kv.ts); null: the timing model prices them. */
  kvTransfer: KvTransferHooks | null = null;
  private closed = false;
  private loopDone: Promise<void> = Promise.resolve();
  private stepsRun = 0;
  private adds = 0;
  private idling = false;
  private idleStartWall = 0;
  private idleCap = Infinity;
  private readonly engineId: string | null;
  /** What the simulated model emits: toy words, or a real vocabulary's ids and text. */
  private readonly vocab: ModelTokenizer;

  constructor(
    readonly config: ResolvedMockEngineConfig,
    rank: number,
    private readonly metrics: EngineMetrics,
    private readonly onEvents: EventBatchSink | null,
  ) {
    this.rank = rank;
    const caching = config.enablePrefixCaching;
    this.pool = new BlockPool(config.numGpuBlocks, caching, caching && onEvents !== null);
    if (caching && config.numCpuBlocks > 0) {
      this.pool.offload = new CpuOffloadTier(config.numCpuBlocks);
      this.pool.offloadBlockSize = config.blockSize;
    }
    this.engineId = nixlEngineId(config, rank);
    this.vocab = modelTokenizerFor(config.tokenizer);
    this.kv = new KvCacheManager(this.pool, config, this.vocab);
    this.metrics.scheduler(0, 0, 0, 0);
  }

  start(): void {
    this.loopDone = this.loop().catch((err: unknown) => {
      console.error(`kvroute mock: engine core ${this.rank} crashed:`, err);
    });
  }

  async close(): Promise<void> {
    this.closed = true;
    this.wake?.();
    await this.loopDone;
    for (const req of [...this.requests.values()]) this.abort(req.id);
  }

  /**
   * Current simulated time in ms: mid-step, the elapsed part of the step; idle, the idle wall time
   * x speedup (capped at the next transfer's end). Busy time advances only by modelled durations,
   * so timer jitter never leaks into simulated latencies.
   */
  now(): number {
    const { zeroTime, speedup } = this.config;
    if (zeroTime) return this.vclock;
    const wall = performance.now();
    if (this.inStep) return this.stepStartV + Math.min((wall - this.stepStartWall) * speedup, this.stepDuration);
    if (this.idling) return this.vclock + Math.min((wall - this.idleStartWall) * speedup, this.idleCap);
    return this.vclock;
  }

  /** waiting (incl. remote-KV transfers) + running: what vLLM's DP load balancer compares. */
  load(): number {
    return this.waiting.length + this.transferring.size + this.running.length;
  }

  get numSteps(): number {
    return this.stepsRun;
  }

  has(requestId: string): boolean {
    return this.requests.has(requestId);
  }

  /** Queues a request; outputs go to `sink` as steps produce them. */
  /**
   * Queues a request. `promptKeys`, with `keyByRouter`: the router keys of the prompt's full
   * blocks, already computed by the caller (the replay's router hashed the prompt to route it),
   * so that the engine hashes only past them; ignored for a request with extra keys or keys of
   * another length.
   */
  add(init: CoreRequestInit, sink: OutputSink, promptKeys?: BigUint64Array): void {
    if (this.closed) throw new Error("engine is closed");
    if (this.requests.has(init.requestId)) throw new Error(`duplicate request id ${init.requestId}`);
    const req = new CoreRequest(init, extraKeysOf(init), sink, init.arrivalTime ?? this.now());
    req.remotePrefill = remotePrefillParams(this.config, init.kvTransferParams);
    this.kv.hashPrompt(req, promptKeys);
    this.requests.set(req.id, req);
    this.waiting.push(req);
    this.adds++;
    this.metrics.requestParams(init.n, init.maxTokensParam);
    this.wake?.();
  }

  /**
   * Keys the prefix cache with the router's own block keys (`algorithm: "router"`) instead of the
   * configured vLLM hash, so that the KV events name router keys: for a caller in the router's
   * process (the virtual replay, `writeKeyedBatch`). The cache hits and evicts the same blocks (a
   * block's key names its whole prefix either way); only the 64-bit values differ. Before any
   * request only.
   */
  keyByRouter(): void {
    if (this.requests.size > 0 || this.pool.numCachedBlocks > 0) throw new Error("keyByRouter: the engine has already served requests");
    this.kv.keyByRouter();
  }

  /** Aborts a request: its blocks are freed at once, its sink gets a final "abort" output. */
  abort(requestId: string): boolean {
    const req = this.requests.get(requestId);
    if (!req) return false;
    if (req.status === "waiting") this.waiting.remove(req);
    else if (req.status === "running") {
      const at = this.running.indexOf(req);
      if (at >= 0) this.running.splice(at, 1);
    } else if (req.status === "transferring") this.transferring.delete(req);
    this.finish(req, "abort", null);
    this.publishScheduler();
    return true;
  }

  /** vLLM's reset_prefix_cache: only succeeds when no block is in use. */
  resetPrefixCache(): boolean {
    const ok = this.pool.resetPrefixCache();
    if (ok) this.flushEvents();
    return ok;
  }

  debugRequests(): { running: string[]; waiting: string[]; transferring: string[] } {
    return {
      running: this.running.map((r) => r.id),
      waiting: this.waiting.toArray().map((r) => r.id),
      transferring: [...this.transferring].map((r) => r.id),
    };
  }

  // ---------------------------------------------------------------------------------------------
  // The loop

  private async loop(): Promise<void> {
    const { config } = this;
    while (!this.closed) {
      const d = this.prepareStep();
      if (d === null) {
        const next = this.nextTransferAt();
        if (next === null && this.running.length + this.waiting.length > 0) {
          // Everything running was preempted this step: schedule again (maxModelLen fits the pool,
          // so a lone request always fits).
          await yieldImmediate();
          continue;
        }
        await this.idle(next);
        continue;
      }
      this.stepStartV = this.vclock;
      this.stepStartWall = performance.now();
      this.inStep = true;
      if (config.zeroTime) await yieldImmediate();
      else await this.sleepWall(d / config.speedup);
      this.inStep = false;
      this.finishStep();
    }
  }

  /**
   * Manual stepping, for a caller that runs the engine on its own discrete-event clock (the
   * virtual-time replay) instead of `start()`: schedules one step at simulated time `now` (an idle
   * core's clock jumps there) and returns its modelled duration, or null when nothing is runnable.
   * The caller calls `endStep()` once its clock reaches `now` + duration; requests added meanwhile
   * (with their `arrivalTime`) wait for the next step, as in vLLM. Remote-KV transfers
   * (disaggregated decode) land at `nextTransferTime()`: begin a step then.
   */
  beginStep(now: number): number | null {
    if (now > this.vclock) this.vclock = now;
    // A step that only preempted schedules again (see loop()); bounded in case of a bug.
    for (let tries = 0; tries < 64; tries++) {
      const d = this.prepareStep();
      if (d !== null || this.running.length + this.waiting.length === 0 || this.transferring.size > 0) return d;
    }
    return null;
  }

  /**
   * Manual stepping: the simulated time the next remote-KV transfer lands (a step should begin
   * then), or null. Lets a discrete-event caller drive disaggregated decode.
   */
  nextTransferTime(): number | null {
    return this.nextTransferAt();
  }

  /** Ends the step `beginStep` started: samples tokens, finishes requests, flushes KV events. */
  endStep(): void {
    this.finishStep();
  }

  /** Schedules a step at the current clock: its modelled duration, or null (nothing runnable). */
  private prepareStep(): number | null {
    this.completeTransfers();
    const plan = this.running.length + this.waiting.length > 0 ? this.schedule() : NO_PLAN;
    if (plan.length === 0) {
      this.flushEvents();
      this.publishScheduler();
      return null;
    }
    this.plan = plan;
    this.stepDuration = stepDurationMs(this.config, plan);
    return this.stepDuration;
  }

  /** The prepared step is over: the clock moves past it and its results come out. */
  private finishStep(): void {
    const plan = this.plan;
    this.plan = NO_PLAN;
    this.vclock += this.stepDuration;
    this.stepsRun++;
    this.applyStep(plan);
    this.flushEvents();
    this.publishScheduler();
  }

  /** Waits for a new request, or until simulated time `until` (a transfer completing). */
  private async idle(until: number | null): Promise<void> {
    const { config } = this;
    if (config.zeroTime) {
      if (until === null) {
        await new Promise<void>((resolve) => (this.wake = resolve));
        this.wake = null;
        return;
      }
      // Let requests already on their way in first; if none came, jump to the transfer's end.
      const adds = this.adds;
      await yieldImmediate();
      if (this.adds === adds) this.vclock = Math.max(this.vclock, until);
      return;
    }
    this.idling = true;
    this.idleStartWall = performance.now();
    this.idleCap = until === null ? Infinity : Math.max(0, until - this.vclock);
    const wakeup = new Promise<boolean>((resolve) => (this.wake = () => resolve(true)));
    let timer: NodeJS.Timeout | undefined;
    const woken =
      until === null
        ? await wakeup
        : await Promise.race([
            wakeup,
            new Promise<boolean>((r) => (timer = setTimeout(() => r(false), this.idleCap / config.speedup))),
          ]);
    clearTimeout(timer);
    this.wake = null;
    // Woken by a request: the idle wall time passed (capped); timed out: exactly to the transfer.
    this.vclock = woken ? this.now() : this.vclock + this.idleCap;
    this.idling = false;
    this.wallDeadline = performance.now();
  }

  /** Sleeps so that steps keep their modelled pace on average (timer granularity is ~1 ms). */
  private async sleepWall(ms: number): Promise<void> {
    const now = performance.now();
    this.wallDeadline = Math.max(this.wallDeadline, now - 5) + ms;
    const wait = this.wallDeadline - now;
    if (wait >= 1) await new Promise<void>((r) => setTimeout(r, wait));
    else await yieldImmediate();
  }

  // ---------------------------------------------------------------------------------------------
  // Scheduling (vLLM v1, FCFS)

  private schedule(): Scheduled[] {
    const { config } = this;
    let budget = config.maxNumBatchedTokens;
    const plan: Scheduled[] = [];
    let preempted = false;

    for (let i = 0; i < this.running.length && budget > 0; ) {
      const req = this.running[i]!;
      const numNew = Math.min(req.numTokens - req.numComputed, budget);
      if (numNew <= 0) {
        i++;
        continue;
      }
      let ok = true;
      while (!this.kv.allocateSlots(req, numNew)) {
        const victim = this.running.pop()!;
        this.preempt(victim);
        preempted = true;
        if (victim === req) {
          ok = false;
          break;
        }
      }
      if (!ok) break;
      plan.push(this.entry(plan.length, req, numNew));
      budget -= numNew;
      i++;
    }

    if (!preempted) {
      while (this.waiting.length > 0 && budget > 0 && this.running.length < config.maxNumSeqs) {
        const req = this.waiting.peek()!;
        if (req.numComputed > 0) {
          // Its remote KV arrived: only the last prompt token is left to compute.
          const numNew = Math.min(req.numTokens - req.numComputed, budget);
          if (!this.kv.allocateSlots(req, numNew)) break;
          this.waiting.shift();
          this.admit(req, plan, numNew);
          budget -= numNew;
          continue;
        }
        const [hitBlocks, hitTokens] = this.kv.findCacheHit(req);
        if (req.remotePrefill) {
          // NixlConnector (decode side): pull the rest of the prompt from the prefill engine.
          const external = req.promptLen - hitTokens;
          if (!this.kv.allocateSlots(req, external, hitBlocks, hitTokens, true)) break;
          this.waiting.shift();
          this.recordLookup(req, hitTokens);
          req.numExternalCached = external;
          const params = req.remotePrefill;
          req.remotePrefill = null;
          req.status = "transferring";
          const modelled = config.timing.kvTransferBaseMs + config.timing.kvTransferPerTokenMs * external;
          req.transferReadyAt = this.vclock + modelled;
          if (this.kvTransfer) {
            // The request waits for the real bytes (wall time), or the model if the pull fails.
            req.transferReadyAt = Infinity;
            const firstBlock = Math.floor(hitTokens / config.blockSize);
            void this.kvTransfer
              .pull(params, req.blocks.slice(), firstBlock, req.tokens, req.promptLen, config.blockSize)
              .then((ok) => this.transferArrived(req, ok ? 0 : modelled));
          }
          req.timings.scheduled ??= this.vclock;
          this.transferring.add(req);
          continue;
        }
        // The OffloadingConnector's hits: the run of CPU-tier blocks right after the GPU hits.
        const cpuTokens = cpuHitRun(this.pool.offload, req.hashes, hitBlocks.length, Math.floor((req.numTokens - 1) / config.blockSize)) * config.blockSize;
        const numNew = Math.min(req.numTokens - hitTokens - cpuTokens, budget);
        if (!this.kv.allocateSlots(req, numNew, hitBlocks, hitTokens + cpuTokens)) break;
        this.waiting.shift();
        if (cpuTokens > 0) {
          req.cpuLoadTokens = cpuTokens;
          if (req.numLocalCached < 0) req.numExternalCached = cpuTokens;
          if (req.numPreemptions === 0) this.metrics.hostCacheHits(cpuTokens);
        }
        this.recordLookup(req, hitTokens);
        this.admit(req, plan, numNew);
        budget -= numNew;
      }
    }
    return plan;
  }

  private admit(req: CoreRequest, plan: Scheduled[], numNew: number): void {
    req.status = "running";
    req.timings.scheduled ??= this.vclock;
    this.running.push(req);
    plan.push(this.entry(plan.length, req, numNew));
  }

  /** Plan entry `i` (reused, see `entries`). */
  private entry(i: number, req: CoreRequest, numNew: number): Scheduled {
    const e = this.entries[i];
    if (e === undefined) {
      const fresh = { req, numNew };
      this.entries.push(fresh);
      return fresh;
    }
    e.req = req;
    e.numNew = numNew;
    return e;
  }

  private recordLookup(req: CoreRequest, hitTokens: number): void {
    if (req.numLocalCached < 0) req.numLocalCached = hitTokens;
    // vLLM counts previously preempted requests separately (not in queries/hits).
    if (req.numPreemptions === 0 && this.kv.caching) this.metrics.prefixCache(req.numTokens, hitTokens);
  }

  private preempt(req: CoreRequest): void {
    this.kv.freeBlocks(req);
    req.numComputed = 0;
    req.status = "waiting";
    req.numPreemptions++;
    this.waiting.unshift(req);
    this.metrics.preemption();
  }

  private nextTransferAt(): number | null {
    let next: number | null = null;
    // Infinity: a real transfer in flight, which wakes the loop when it lands.
    for (const r of this.transferring) if (r.transferReadyAt !== Infinity && (next === null || r.transferReadyAt < next)) next = r.transferReadyAt;
    return next;
  }

  /** A real KV pull ended: the request's KV is in (or, `afterMs` > 0, modelled from now). */
  private transferArrived(req: CoreRequest, afterMs: number): void {
    if (req.status !== "transferring" || this.closed) return;
    req.transferReadyAt = afterMs > 0 ? this.now() + afterMs : 0;
    this.wake?.();
  }

  /** Remote KV that has arrived: cache its blocks, recompute the last prompt token locally. */
  private completeTransfers(): void {
    if (this.transferring.size === 0) return;
    const B = this.config.blockSize;
    const done = [...this.transferring].filter((r) => r.transferReadyAt <= this.vclock);
    done.sort((a, b) => a.transferReadyAt - b.transferReadyAt);
    for (let i = done.length - 1; i >= 0; i--) {
      const req = done[i]!;
      this.transferring.delete(req);
      req.numComputed = req.promptLen;
      this.kv.cacheFullBlocks(req, Math.floor(req.numComputed / B));
      req.numComputed = req.numTokens - 1;
      req.status = "waiting";
      this.waiting.unshift(req);
    }
  }

  // ---------------------------------------------------------------------------------------------
  // After the step

  private applyStep(plan: readonly Scheduled[]): void {
    let promptComputed = 0;
    let generated = 0;
    let anyFinished = false;
    const now = this.vclock;
    for (const { req, numNew } of plan) {
      if (req.status !== "running") continue; // aborted mid-step
      if (req.numComputed < req.promptLen) promptComputed += Math.min(numNew, req.promptLen - req.numComputed);
      req.numComputed += numNew;
      if (req.numComputed < req.numTokens) continue; // chunked prefill goes on
      generated++;
      if (this.sample(req, now)) anyFinished = true;
    }
    if (anyFinished) this.running = this.running.filter((r) => r.status === "running");
    this.metrics.iteration(promptComputed, generated);
  }

  /** Samples the next token; returns true when the request finished. */
  private sample(req: CoreRequest, now: number): boolean {
    const { init } = req;
    const k = req.numOutput + 1;
    const token = modelToken(req, req.numOutput, this.vocab, this.config);
    req.append(token);
    req.numOutput = k;
    // Without detokenization no text is built: the per-token string work is most of a decode step.
    const piece = init.detokenize ? this.vocab.tokenText(token) : "";
    if (piece.length > 0) req.unsent += piece;

    const first = req.timings.firstToken === null;
    if (first) {
      req.timings.firstToken = now;
      const local = Math.max(req.numLocalCached, 0);
      this.metrics.firstToken(req.promptLen, local, req.numExternalCached, (now - req.timings.arrival) / 1000);
    } else {
      this.metrics.interTokenLatency((now - (req.timings.lastToken ?? now)) / 1000);
    }
    req.timings.lastToken = now;

    // vLLM's check_stop order: EOS, stop token ids, length; stop strings in the detokenizer.
    let finish: "stop" | "length" | null = null;
    let stopReason: string | number | null = null;
    if (token === this.vocab.eosTokenId) finish = "stop";
    else if (init.stopTokenIds.includes(token)) {
      finish = "stop";
      stopReason = token;
    } else if (req.numTokens >= this.config.maxModelLen || k >= req.maxTokens) finish = "length";
    if (k >= init.minTokens && req.maxStop > 0 && piece.length > 0) {
      // Only the recent text can hold a stop string ending in the new piece (strings stay small).
      const window = req.sentTail + req.unsent;
      const hit = findStopString(window, piece.length, init.stop, init.includeStopStrInOutput);
      if (hit) {
        finish = "stop";
        stopReason = hit.stop;
        if (hit.truncateTo >= 0) req.unsent = window.slice(req.sentTail.length, Math.max(hit.truncateTo, req.sentTail.length));
      }
    }
    if (finish) {
      this.finish(req, finish, stopReason, [token]);
      return true;
    }
    let text = "";
    const deliverable = req.unsent.length - req.holdback;
    if (deliverable > 0) {
      text = req.unsent.slice(0, deliverable);
      req.unsent = req.unsent.slice(deliverable);
      if (req.maxStop > 1) req.sentTail = (req.sentTail + text).slice(-(req.maxStop - 1));
    }
    req.sink(this.output(req, [token], text, null, null, null));
    return false;
  }

  private finish(req: CoreRequest, reason: "stop" | "length" | "abort", stopReason: string | number | null, tokens: number[] = []): void {
    let kvParams: Record<string, unknown> | null = null;
    if (req.remoteDecode && this.config.kvTransfer && reason !== "abort") {
      kvParams = producerTransferParams(req, this.config, this.engineId, this.rank);
      this.kvTransfer?.produced(req.blocks, req.tokens, req.promptLen, this.config.blockSize);
    }
    req.status = "finished";
    this.kv.freeBlocks(req);
    this.requests.delete(req.id);
    const t = req.timings;
    const now = this.now();
    const sched = t.scheduled ?? now;
    const first = t.firstToken ?? now;
    const last = t.lastToken ?? now;
    this.metrics.finished({
      finishReason: reason as FinishReasonLabel,
      e2eLatency: (now - t.arrival) / 1000,
      queuedTime: (sched - t.arrival) / 1000,
      prefillTime: (first - sched) / 1000,
      inferenceTime: (last - sched) / 1000,
      decodeTime: (last - first) / 1000,
      meanTimePerOutputToken: req.numOutput > 1 ? (last - first) / 1000 / (req.numOutput - 1) : 0,
      numPromptTokens: req.promptLen,
      numGenerationTokens: req.numOutput,
      numCachedTokens: Math.max(req.numLocalCached, 0) + req.numExternalCached,
      numPreemptions: req.numPreemptions,
      maxTokensParam: req.init.maxTokensParam,
    });
    const text = reason === "abort" ? "" : req.unsent;
    req.unsent = "";
    req.sink(this.output(req, tokens, text, reason, stopReason, kvParams));
  }

  private output(
    req: CoreRequest,
    tokenIds: number[],
    text: string,
    finishReason: CoreOutput["finishReason"],
    stopReason: string | number | null,
    kvTransferParams: Record<string, unknown> | null,
  ): CoreOutput {
    return {
      requestId: req.id,
      tokenIds,
      text,
      finishReason,
      stopReason,
      numCachedTokens: Math.max(req.numLocalCached, 0) + req.numExternalCached,
      numPromptTokens: req.promptLen,
      kvTransferParams,
      timings: req.timings,
      dpRank: this.rank,
    };
  }

  private flushEvents(): void {
    const events = this.pool.takeEvents();
    if (events.length > 0 && this.onEvents) this.onEvents(this.rank, events);
  }

  private publishScheduler(): void {
    this.metrics.scheduler(this.running.length, this.waiting.length, this.transferring.size, this.pool.usage());
  }
}

/**
 * vLLM's `check_stop_strings`: looks for a stop string ending in the newly added text; returns
 * it and where to truncate the text (-1: keep all).
 */
export function findStopString(
  text: string,
  newChars: number,
  stops: readonly string[],
  includeInOutput: boolean,
): { stop: string; truncateTo: number } | null {
  for (const stop of stops) {
    if (!stop) continue;
    const from = Math.max(0, text.length - newChars - stop.length + 1);
    let at = text.indexOf(stop, from);
    if (at < 0) continue;
    if (includeInOutput) {
      at += stop.length;
      if (at >= text.length) return { stop, truncateTo: -1 };
    }
    return { stop, truncateTo: at };
  }
  return null;
}
