/**
 * MockEngine: what one `vllm serve` process runs behind its HTTP server, simulated: one
 * `EngineCore` per data-parallel rank, vLLM's DP load balancing across them, each rank's KV events
 * published on its own ZMQ endpoints (vLLM's port offsets, `VllmEventPublisher`), the Prometheus
 * metrics, and the request API the HTTP layer (or an in-process user) calls.
 *
 *   const engine = await MockEngine.start({ model: "m", numGpuBlocks: 1000, zeroTime: true });
 *   const req = engine.generate({ promptTokenIds: [1, 2, 3], maxTokens: 8 });
 *   for await (const out of req) ...;          // or: const result = await req.result;
 *   engine.abort(req.requestId);               // frees its blocks at once
 *   await engine.close();
 */
import { randomBytes } from "node:crypto";
import { InvalidConfigError, InvalidInputError } from "../errors.js";
import { toTokenArray, type TokenIds } from "../core/block-hasher.js";
import { encodeKvEventBatch, type KvEvent, type KvEventFormat } from "../events/codec.js";
import { VllmEventPublisher, type ReplayLayout } from "../events/vllm-event-publisher.js";
import { resolveMockEngineConfig, type KvEventPublisherLike, type MockEngineConfig, type ResolvedMockEngineConfig } from "./config.js";
import { EngineCore, type CoreOutput, type CoreRequestInit, type LoraRef, type RequestTimings } from "./engine-core.js";
import { VllmMetrics } from "./metrics.js";
import { NixlKv, nixlKvFamilies } from "./nixl-kv.js";

export interface GenerateRequest {
  /** Default: a random id. Must be unique among the engine's live requests. */
  requestId?: string;
  promptTokenIds: TokenIds;
  /** Default (and cap): maxModelLen - prompt length. */
  maxTokens?: number | null;
  minTokens?: number;
  ignoreEos?: boolean;
  stopTokenIds?: readonly number[];
  stop?: readonly string[];
  includeStopStrInOutput?: boolean;
  /** vLLM's `detokenize` (default true): false, outputs carry no text (no stop strings then). */
  detokenize?: boolean;
  /** Sampling seed: requests with the same prompt and seed generate the same tokens. */
  seed?: number;
  /** A served model name or a LoRA module name; default the base model. */
  model?: string;
  cacheSalt?: string | null;
  /** Prompt embeddings: per full block its 32-byte digest, concatenated (the prompt is then 0s). */
  promptEmbeds?: Buffer | null;
  kvTransferParams?: Record<string, unknown> | null;
  /** Route to this rank (vLLM's `X-data-parallel-rank`); default the least loaded rank. */
  dataParallelRank?: number;
  /** For the `request_params_n` metric; the caller submits one request per choice. */
  n?: number;
  /** Simulated arrival time (ms on the engine's clock); default: now. For callers that step the core themselves. */
  arrivalTime?: number;
}

export interface MockRequestResult {
  requestId: string;
  dpRank: number;
  promptTokenIds: Uint32Array;
  tokenIds: number[];
  text: string;
  finishReason: "stop" | "length" | "abort";
  stopReason: string | number | null;
  numCachedTokens: number;
  kvTransferParams: Record<string, unknown> | null;
  /** Simulated milliseconds. */
  timings: RequestTimings;
}

export interface KvEventEndpoint {
  dpRank: number;
  endpoint: string;
  replayEndpoint: string | null;
}

export interface KvCacheDebugView {
  dataParallelRank: number;
  blockSize: number;
  numGpuBlocks: number;
  /** Blocks held by requests (the null block excluded). */
  usedBlocks: number;
  freeBlocks: number;
  /** Distinct block hashes in the prefix cache, u64 in decimal, as KV events carry them. */
  cachedBlocks: string[];
  /** Hashes held by more than one block (vLLM does not de-duplicate; see docs/mocker.md). */
  duplicateHashes: number;
  /** Since start: blocks cached under a hash another block already held (each sent BlockStored again). */
  duplicateStores: number;
  /** Seq of the last KV event batch published by this rank, or null. */
  lastEventSeq: string | null;
}

/** A request in flight: async-iterable outputs, its final result, and abort. */
export class MockRequest implements AsyncIterable<CoreOutput> {
  readonly result: Promise<MockRequestResult>;
  private readonly queue: CoreOutput[] = [];
  private notify: (() => void) | null = null;
  private done = false;
  private readonly tokens: number[] = [];
  private text = "";
  private resolve!: (r: MockRequestResult) => void;

  constructor(
    private readonly engine: MockEngine,
    readonly requestId: string,
    readonly promptTokenIds: Uint32Array,
  ) {
    this.result = new Promise((r) => (this.resolve = r));
  }

  /** The rank the request runs on (set once submitted). */
  dpRank = 0;

  /** @internal */
  push(out: CoreOutput): void {
    for (const t of out.tokenIds) this.tokens.push(t);
    this.text += out.text;
    this.queue.push(out);
    if (out.finishReason) {
      this.done = true;
      this.resolve({
        requestId: this.requestId,
        dpRank: out.dpRank,
        promptTokenIds: this.promptTokenIds,
        tokenIds: this.tokens,
        text: this.text,
        finishReason: out.finishReason,
        stopReason: out.stopReason,
        numCachedTokens: out.numCachedTokens,
        kvTransferParams: out.kvTransferParams,
        timings: { ...out.timings },
      });
    }
    this.notify?.();
  }

  abort(): boolean {
    return this.engine.abort(this.requestId);
  }

  async *[Symbol.asyncIterator](): AsyncIterator<CoreOutput> {
    for (;;) {
      const next = this.queue.shift();
      if (next) {
        yield next;
        if (next.finishReason) return;
        continue;
      }
      if (this.done) return;
      await new Promise<void>((r) => (this.notify = r));
      this.notify = null;
    }
  }
}

/** "legacy" and releases before 0.26 reply to replays without the topic frame. */
export function replayLayoutFor(format: KvEventFormat): ReplayLayout {
  if (format === "current") return "v0.26";
  if (format === "legacy") return "v0.9";
  const m = /^v?(\d+)\.(\d+)/.exec(format);
  if (!m) return "v0.26";
  const [major, minor] = [Number(m[1]), Number(m[2])];
  return major > 0 || minor >= 26 ? "v0.26" : "v0.9";
}

/**
 * vLLM's input processing for one request (prompt within the context, max_tokens clamped to the
 * room left, at least 1) and the engine core's request built from it; `lora` is the adapter the
 * request's model named. Shared by `MockEngine.submit` and callers that drive an `EngineCore`
 * themselves (the virtual-time replay).
 */
export function coreRequestInit(
  config: ResolvedMockEngineConfig,
  request: GenerateRequest & { requestId: string; promptTokenIds: Uint32Array },
  lora: LoraRef | null,
): CoreRequestInit {
  const prompt = request.promptTokenIds;
  const { maxModelLen } = config;
  if (prompt.length === 0) throw new InvalidInputError("the prompt is empty");
  if (prompt.length > maxModelLen) {
    throw new InvalidInputError(
      `This model's maximum context length is ${maxModelLen} tokens. However, your prompt contains ${prompt.length} input tokens.`,
    );
  }
  const room = maxModelLen - prompt.length;
  const maxTokens = request.maxTokens == null ? room : Math.min(request.maxTokens, room);
  if (!Number.isInteger(maxTokens) || maxTokens < 1) {
    throw new InvalidInputError(`max_tokens must be at least 1, got ${maxTokens}.`);
  }
  const detokenize = request.detokenize ?? true;
  // As vLLM's SamplingParams: stop strings are matched in the detokenized text.
  if (!detokenize && (request.stop?.length ?? 0) > 0) {
    throw new InvalidInputError("stop strings are only supported when detokenize is True. Set detokenize=True to use stop.");
  }
  const init: CoreRequestInit = {
    requestId: request.requestId,
    promptTokenIds: prompt,
    maxTokens,
    minTokens: request.minTokens ?? 0,
    ignoreEos: request.ignoreEos ?? false,
    stopTokenIds: request.stopTokenIds ?? [],
    stop: request.stop ?? [],
    includeStopStrInOutput: request.includeStopStrInOutput ?? false,
    detokenize,
    sampleSeed: request.seed ?? 0,
    lora,
    cacheSalt: request.cacheSalt ?? null,
    promptEmbeds: request.promptEmbeds ?? null,
    kvTransferParams: request.kvTransferParams ?? null,
    maxTokensParam: request.maxTokens ?? null,
    n: request.n ?? 1,
  };
  if (request.arrivalTime !== undefined) init.arrivalTime = request.arrivalTime;
  return init;
}

export class MockEngine {
  readonly config: ResolvedMockEngineConfig;
  readonly metrics: VllmMetrics;
  /** One core per rank this process runs (`config.ranks`). */
  readonly cores: EngineCore[];
  private readonly publishers = new Map<number, KvEventPublisherLike>();
  private readonly lastSeq = new Map<number, bigint>();
  private readonly owner = new Map<string, EngineCore>();
  private readonly lora = new Map<string, LoraRef>();
  private readonly endpoints: KvEventEndpoint[] = [];
  private closed = false;
  private nextRank = 0;
  private readonly nixl: NixlKv[] = [];

  private constructor(config: ResolvedMockEngineConfig) {
    this.config = config;
    this.metrics = new VllmMetrics(config.maxModelLen);
    const modelName = config.servedModelNames[0]!;
    const sink = config.kvEvents.enabled ? (rank: number, events: KvEvent[]) => this.publishEvents(rank, events) : null;
    this.cores = config.ranks.map((rank) => new EngineCore(config, rank, this.metrics.engine(modelName, rank), sink));
    config.loraModules.forEach((m, i) => this.lora.set(m.name, { name: m.name, id: i + 1, path: m.path }));
  }

  /** Validates the config, opens the KV event sockets of every rank and starts the cores. */
  static async start(config: MockEngineConfig): Promise<MockEngine> {
    const resolved = resolveMockEngineConfig(config);
    const capacity = (resolved.numGpuBlocks - 1) * resolved.blockSize;
    if (resolved.maxModelLen > capacity) {
      if (config.maxModelLen !== undefined) {
        throw new InvalidConfigError(
          `The model's max seq len (${resolved.maxModelLen}) is larger than the maximum number of tokens that can be stored in KV cache (${capacity}). Try increasing numGpuBlocks or decreasing maxModelLen.`,
        );
      }
      // vLLM 0.33 fits an unspecified max_model_len to the KV cache.
      resolved.maxModelLen = capacity;
    }
    const engine = new MockEngine(resolved);
    try {
      await engine.openPublishers();
    } catch (err) {
      await engine.close();
      throw err;
    }
    await engine.startNixl();
    for (const core of engine.cores) core.start();
    return engine;
  }

  /** The served model name reported in responses and metrics. */
  get modelName(): string {
    return this.config.servedModelNames[0]!;
  }

  /** PUB (and replay) endpoints per rank, as bound. */
  kvEventEndpoints(): KvEventEndpoint[] {
    return this.endpoints.slice();
  }

  loraModules(): LoraRef[] {
    return [...this.lora.values()];
  }

  /** Resolves a request's `model`: undefined/"" or a served name → base; a LoRA name → it. */
  resolveModel(model: string | null | undefined): { ok: true; lora: LoraRef | null } | { ok: false } {
    if (!model || this.config.servedModelNames.includes(model)) return { ok: true, lora: null };
    const lora = this.lora.get(model);
    return lora ? { ok: true, lora } : { ok: false };
  }

  /** Starts a request and returns its handle (outputs, result, abort). */
  generate(request: GenerateRequest): MockRequest {
    const prompt = toTokenArray(request.promptTokenIds as number[], "promptTokenIds");
    const requestId = request.requestId ?? `req-${randomBytes(8).toString("hex")}`;
    const handle = new MockRequest(this, requestId, prompt);
    handle.dpRank = this.submit({ ...request, requestId, promptTokenIds: prompt }, (out) => handle.push(out));
    return handle;
  }

  /**
   * Low-level submit (the HTTP layer's path): validates like vLLM's input processing, picks the
   * rank, queues the request; `sink` gets every output. Returns the rank.
   */
  submit(request: GenerateRequest & { requestId: string }, sink: (out: CoreOutput) => void): number {
    if (this.closed) throw new InvalidInputError("the engine is closed");
    const prompt = toTokenArray(request.promptTokenIds as number[], "promptTokenIds");
    const init = coreRequestInit(this.config, { ...request, promptTokenIds: prompt }, null);
    const resolved = this.resolveModel(request.model);
    if (!resolved.ok) throw new InvalidInputError(`The model \`${request.model}\` does not exist.`);
    init.lora = resolved.lora;
    if (this.owner.has(request.requestId)) throw new InvalidInputError(`request id ${request.requestId} is already in use`);
    const core = this.pickCore(request.dataParallelRank);
    this.owner.set(request.requestId, core);
    core.add(init, (out) => {
      if (out.finishReason) this.owner.delete(out.requestId);
      sink(out);
    });
    return core.rank;
  }

  /** Aborts a request; its blocks are freed before this returns. */
  abort(requestId: string): boolean {
    const core = this.owner.get(requestId);
    return core ? core.abort(requestId) : false;
  }

  /** vLLM's `/reset_prefix_cache`: succeeds only when every rank has no block in use. */
  resetPrefixCache(): boolean {
    return this.cores.map((c) => c.resetPrefixCache()).every(Boolean);
  }

  core(dpRank: number): EngineCore | undefined {
    return this.cores.find((c) => c.rank === dpRank);
  }

  debugKvCache(dpRank = this.cores[0]!.rank): KvCacheDebugView {
    const core = this.core(dpRank);
    if (!core) throw new InvalidInputError(`no data-parallel rank ${dpRank} in this process`);
    const pool = core.pool;
    const seq = this.lastSeq.get(dpRank);
    return {
      dataParallelRank: dpRank,
      blockSize: this.config.blockSize,
      numGpuBlocks: this.config.numGpuBlocks,
      usedBlocks: pool.numUsed,
      freeBlocks: pool.numFree,
      cachedBlocks: pool.cachedHashes().map(String),
      duplicateHashes: pool.numDuplicateHashes,
      duplicateStores: pool.numDuplicateStores,
      lastEventSeq: seq === undefined ? null : String(seq),
    };
  }

  debugRequests(): { dataParallelRank: number; running: string[]; waiting: string[]; transferring: string[] }[] {
    return this.cores.map((c) => ({ dataParallelRank: c.rank, ...c.debugRequests() }));
  }

  renderMetrics(): string {
    return this.metrics.render();
  }

  /**
   * Disaggregated mode: real KV transfers over NIXL for every core (ts/mocker/nixl-kv.ts), or the
   * timing model, said once, when NIXL is not available here.
   */
  private async startNixl(): Promise<void> {
    const { nixl, kvTransfer } = this.config;
    if (!nixl.enabled || kvTransfer === null) return;
    const families = nixlKvFamilies(this.metrics);
    try {
      for (const core of this.cores) {
        const kv = await NixlKv.start({
          engineId: kvTransfer.engineId,
          rank: core.rank,
          numBlocks: this.config.numGpuBlocks,
          blockBytes: nixl.blockBytes,
          sideChannelHost: this.config.nixlSideChannelHost,
          sideChannelPort: this.config.nixlSideChannelPort,
          log: (m) => console.error(`kvroute mock: ${m}`),
          metrics: { ...families, labels: [this.modelName, String(core.rank)] },
        });
        this.nixl.push(kv);
        core.kvTransfer = kv;
      }
      console.error(`kvroute mock: KV transfers over NIXL (${this.nixl.length} pool(s) of ${this.config.numGpuBlocks} x ${nixl.blockBytes} bytes)`);
    } catch (err) {
      for (const core of this.cores) core.kvTransfer = null;
      await Promise.all(this.nixl.splice(0).map((k) => k.close()));
      console.error(`kvroute mock: ${err instanceof Error ? err.message : String(err)}; KV transfers use the timing model`);
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.all(this.cores.map((c) => c.close()));
    await Promise.all(this.nixl.splice(0).map((k) => k.close()));
    await Promise.all([...this.publishers.values()].map((p) => p.close()));
  }

  private pickCore(rank: number | undefined): EngineCore {
    if (rank !== undefined) {
      const core = this.core(rank);
      if (!core) throw new InvalidInputError(`data-parallel rank ${rank} is not served here (ranks ${this.config.ranks.join(", ")})`);
      return core;
    }
    // vLLM's DP client: the least loaded engine, starting the scan after the last pick.
    let best = this.cores[0]!;
    let bestLoad = Infinity;
    const n = this.cores.length;
    for (let i = 0; i < n; i++) {
      const core = this.cores[(this.nextRank + i) % n]!;
      const load = core.load();
      if (load < bestLoad) {
        best = core;
        bestLoad = load;
      }
    }
    this.nextRank = (this.cores.indexOf(best) + 1) % n;
    return best;
  }

  private async openPublishers(): Promise<void> {
    const { kvEvents, ranks, kvEventsFormat, eventPublisherFactory } = this.config;
    if (!kvEvents.enabled) return;
    for (const rank of ranks) {
      if (eventPublisherFactory) {
        this.publishers.set(rank, await eventPublisherFactory(rank));
        continue;
      }
      const pub = await VllmEventPublisher.start({
        endpoint: kvEvents.endpoint,
        replayEndpoint: kvEvents.replayEndpoint,
        topic: kvEvents.topic,
        bufferSteps: kvEvents.bufferSteps,
        hwm: kvEvents.hwm,
        dataParallelRank: rank,
        replayLayout: replayLayoutFor(kvEventsFormat),
      });
      this.publishers.set(rank, pub);
      this.endpoints.push({ dpRank: rank, endpoint: pub.endpoint, replayEndpoint: pub.replayEndpoint });
    }
  }

  private publishEvents(rank: number, events: KvEvent[]): void {
    const pub = this.publishers.get(rank);
    if (!pub) return;
    const payload = encodeKvEventBatch({ ts: Date.now() / 1000, dataParallelRank: rank, events }, this.config.kvEventsFormat);
    this.lastSeq.set(rank, pub.publish(payload));
  }
}
