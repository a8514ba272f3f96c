/**
 * A request inside one engine core: the serving layer's request and output types, the state the
 * scheduler and the KV cache manager keep per request (invariants C1-C3 in ./engine-core.ts), the
 * FIFO it waits in, a step's plan entry, and the tokens the simulated model emits for it. What
 * the engine core schedules, kept apart from how it schedules.
 */
import type { ExtraKeys } from "../core/block-hasher.js";
import type { ResolvedMockEngineConfig } from "./config.js";
import type { ModelTokenizer } from "./model-tokenizer.js";
import { contextFingerprint } from "./toy-tokenizer.js";

export interface LoraRef {
  name: string;
  /** The adapter's integer id (1, 2, ... in `--lora-modules` order), as vLLM's `lora_int_id`. */
  id: number;
  path: string;
}

/** What the engine core needs of a request (the serving layer validated and clamped it). */
export interface CoreRequestInit {
  requestId: string;
  promptTokenIds: Uint32Array;
  /** Already clamped to maxModelLen - prompt length, >= 1. */
  maxTokens: number;
  minTokens: number;
  ignoreEos: boolean;
  stopTokenIds: readonly number[];
  stop: readonly string[];
  includeStopStrInOutput: boolean;
  /**
   * vLLM's `SamplingParams.detokenize`: false skips the output text (outputs carry tokens only),
   * for callers that never read it (the virtual replay). Requires no stop strings.
   */
  detokenize: boolean;
  /** Mixed into the sampled tokens (request `seed`, choice index for n > 1). */
  sampleSeed: number;
  lora: LoraRef | null;
  cacheSalt: string | null;
  /** Prompt embeddings' per-block digests, concatenated (prompt-embeds.ts). */
  promptEmbeds?: Buffer | null;
  kvTransferParams: Record<string, unknown> | null;
  /** The request's own max_tokens, for the metrics histogram (null when it had none). */
  maxTokensParam: number | null;
  n: number;
  /** Simulated arrival time (ms); default: now. */
  arrivalTime?: number;
}

export interface RequestTimings {
  /** Simulated milliseconds on the engine's clock. */
  arrival: number;
  scheduled: number | null;
  firstToken: number | null;
  lastToken: number | null;
}

/** One step's news for a request: the tokens sampled since the last delta, and the end. */
export interface CoreOutput {
  requestId: string;
  /** New token ids (one per step, none on abort). */
  tokenIds: number[];
  /** New text (held back while it could still turn out to be part of a stop string). */
  text: string;
  finishReason: "stop" | "length" | "abort" | null;
  stopReason: string | number | null;
  /** Prompt tokens served from the prefix cache (local) or a remote prefill (external). */
  numCachedTokens: number;
  numPromptTokens: number;
  kvTransferParams: Record<string, unknown> | null;
  timings: RequestTimings;
  dpRank: number;
}

export type OutputSink = (out: CoreOutput) => void;

export type Status = "waiting" | "running" | "transferring" | "finished";

/** Output tokens the block hashes run ahead of a request's tokens (see `ensureHashes`). */
export const HASH_AHEAD = 1024;

export class CoreRequest {
  readonly id: string;
  readonly promptLen: number;
  /**
   * Prompt then output tokens; capacity grows by doubling. Past `numTokens` it may hold the simulated
   * model's next tokens (hashed ahead), which sampling then appends.
   */
  tokens: Uint32Array;
  numTokens: number;
  numComputed = 0;
  blocks: number[] = [];
  numCachedBlocks = 0;
  /** u64 block hashes of the first `hashes.length` full blocks of `tokens`. */
  hashes: BigUint64Array = new BigUint64Array(0);
  /** `hashes` as 32-bit halves (`halvesOf`), for the block pool's bigint-free calls. */
  hashHalves: Int32Array = new Int32Array(0);
  status: Status = "waiting";
  numOutput = 0;
  numPreemptions = 0;
  /** Set at the first admission. */
  numLocalCached = -1;
  numExternalCached = 0;
  /** Prompt tokens the next step loads from the CPU tier (charged at PCIe speed, then 0). */
  cpuLoadTokens = 0;
  /** Text sampled but not delivered yet (the stop-string holdback). */
  unsent = "";
  /** The last (longest stop - 1) delivered characters: a stop string may start in them. */
  sentTail = "";
  readonly holdback: number;
  readonly maxStop: number;
  readonly timings: RequestTimings;
  /** Simulated time the remote KV is in (decode side of a disaggregated request). */
  transferReadyAt = 0;
  remotePrefill: Record<string, unknown> | null = null;
  readonly remoteDecode: boolean;
  /** max_tokens, forced to 1 for a prefill-only (remote decode) request. */
  readonly maxTokens: number;

  constructor(
    readonly init: CoreRequestInit,
    readonly extraKeys: ExtraKeys | undefined,
    readonly sink: OutputSink,
    arrival: number,
  ) {
    this.id = init.requestId;
    this.promptLen = init.promptTokenIds.length;
    this.tokens = new Uint32Array(Math.max(16, this.promptLen + Math.min(init.maxTokens, HASH_AHEAD)));
    this.tokens.set(init.promptTokenIds);
    this.numTokens = this.promptLen;
    this.maxStop = init.stop.length > 0 ? Math.max(...init.stop.map((s) => s.length)) : 0;
    this.holdback = this.maxStop > 0 && !init.includeStopStrInOutput ? this.maxStop - 1 : 0;
    this.timings = { arrival, scheduled: null, firstToken: null, lastToken: null };
    this.remoteDecode = init.kvTransferParams?.do_remote_decode === true;
    this.maxTokens = this.remoteDecode ? 1 : init.maxTokens;
  }

  append(token: number): void {
    if (this.numTokens === this.tokens.length) this.reserve(this.numTokens + 1);
    this.tokens[this.numTokens++] = token;
  }

  /** Capacity for at least `n` tokens. */
  reserve(n: number): void {
    if (n <= this.tokens.length) return;
    const grown = new Uint32Array(Math.max(n, this.tokens.length * 2));
    grown.set(this.tokens);
    this.tokens = grown;
  }
}

/** A FIFO with cheap push-front (preempted requests go back to the head). */
export class Deque<T> {
  private items: (T | undefined)[] = new Array(16);
  private head = 0;
  private size = 0;

  get length(): number {
    return this.size;
  }

  peek(): T | undefined {
    return this.size === 0 ? undefined : this.items[this.head];
  }

  push(v: T): void {
    this.grow();
    this.items[(this.head + this.size++) % this.items.length] = v;
  }

  unshift(v: T): void {
    this.grow();
    this.head = (this.head - 1 + this.items.length) % this.items.length;
    this.items[this.head] = v;
    this.size++;
  }

  shift(): T | undefined {
    if (this.size === 0) return undefined;
    const v = this.items[this.head];
    this.items[this.head] = undefined;
    this.head = (this.head + 1) % this.items.length;
    this.size--;
    return v;
  }

  remove(v: T): boolean {
    const all = this.toArray();
    const at = all.indexOf(v);
    if (at < 0) return false;
    all.splice(at, 1);
    this.items = new Array(Math.max(16, all.length * 2));
    this.head = 0;
    this.size = all.length;
    all.forEach((x, i) => (this.items[i] = x));
    return true;
  }

  toArray(): T[] {
    const out: T[] = [];
    for (let i = 0; i < this.size; i++) out.push(this.items[(this.head + i) % this.items.length] as T);
    return out;
  }

  private grow(): void {
    if (this.size < this.items.length) return;
    const all = this.toArray();
    this.items = new Array(this.items.length * 2);
    all.forEach((x, i) => (this.items[i] = x));
    this.head = 0;
  }
}

/** One request's share of a step: `numNew` tokens to compute. */
export interface Scheduled {
  req: CoreRequest;
  numNew: number;
}

/**
 * The token the model emits at output position `k` (0-based) of `req`: what sampling appends. A
 * function of the tokens before it (`req.tokens` holds them, real or hashed ahead in order), as
 * greedy decoding is: a migrated stream continues exactly as the unbroken run. Only the EOS
 * position (`eosAfterTokens`) counts output tokens.
 */
export function modelToken(req: CoreRequest, k: number, vocab: ModelTokenizer, config: ResolvedMockEngineConfig): number {
  const { init } = req;
  const eos = vocab.eosTokenId;
  const eosAt = Math.max(config.eosAfterTokens, init.minTokens + 1);
  if (eos !== null && !init.ignoreEos && k + 1 === eosAt) return eos;
  return vocab.sampleToken(contextFingerprint(req.tokens, req.promptLen + k, (config.seed ^ init.sampleSeed) | 0), 0);
}

/** What besides the tokens keys a request's blocks (LoRA, cache salt, prompt embeddings). */
export function extraKeysOf(init: CoreRequestInit): ExtraKeys | undefined {
  if (!init.lora && !init.cacheSalt && !init.promptEmbeds) return undefined;
  const extra: ExtraKeys = {};
  if (init.promptEmbeds) extra.promptEmbeds = init.promptEmbeds;
  if (init.lora) {
    extra.loraName = init.lora.name;
    extra.loraPath = init.lora.path;
  }
  if (init.cacheSalt) extra.cacheSalt = init.cacheSalt;
  return extra;
}
