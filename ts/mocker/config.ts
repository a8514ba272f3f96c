/**
 * MockEngine configuration: the `vllm serve` settings the mocker honours, the timing model's
 * parameters (defaults: roughly Llama-3.1-8B in bf16 on one H100 SXM, see docs/mocker.md), and
 * their validation. Everything here is plain data; `resolveMockEngineConfig` fills defaults and
 * checks ranges once, so the engine trusts its config.
 */
import { randomBytes, randomUUID } from "node:crypto";
import { InvalidConfigError } from "../errors.js";
import { ENGINE_HASH_ALGORITHMS, type EngineHashAlgorithm } from "../core/block-hasher.js";
import type { KvEventFormat } from "../events/codec.js";
import { Tokenizer } from "../tokenizer/tokenizer.js";
import { DEFAULT_ENGINE_PROFILE, engineProfile } from "./profiles.js";
import { polynomialProblem, type StepPolynomial } from "./step-timing.js";

/** Simulated step costs, in simulated milliseconds (see docs/mocker.md for the derivation). */
export interface TimingModel {
  /** Fixed cost of every engine step (weights read once per forward pass, launch, scheduling). */
  stepBaseMs: number;
  /** Compute per prefill token (2 x params FLOPs at a realistic MFU). */
  prefillPerTokenMs: number;
  /** Attention per (new token x context token) pair of a prefill chunk. */
  attentionPerTokenPairMs: number;
  /** Compute (and sampling) per sequence decoding one token in the step. */
  decodePerSeqMs: number;
  /** KV cache read per context token of the decoding sequences (memory bound). */
  decodePerContextTokenMs: number;
  /** Remote prefill (NixlConnector pull): fixed handshake/notification cost per request. */
  kvTransferBaseMs: number;
  /** Remote prefill: per token pulled (KV bytes per token / RDMA bandwidth). */
  kvTransferPerTokenMs: number;
  /**
   * When set, steps are timed by this polynomial (Dynamo's model, ./step-timing.ts) instead of
   * the linear terms above, which then only feed estimates (the replay's fleet line).
   */
  polynomial?: StepPolynomial;
  /** CPU offload tier hit: per token loaded host-to-device (KV bytes per token / PCIe bandwidth). */
  cpuLoadPerTokenMs: number;
}

/** The default profile's timing (Llama-3.1-8B on one H100). */
export const DEFAULT_TIMING: Readonly<TimingModel> = engineProfile(DEFAULT_ENGINE_PROFILE).timing;

/** `--kv-events-config`, with vLLM's field names in camelCase. */
export interface KvEventsConfig {
  enableKvCacheEvents?: boolean;
  /** "zmq" or "null"; vLLM 0.11.1+: unset means "zmq" when events are enabled. */
  publisher?: string;
  /** PUB endpoint before the rank offset. Default "tcp://*:5557". */
  endpoint?: string;
  replayEndpoint?: string | null;
  bufferSteps?: number;
  hwm?: number;
  maxQueueSize?: number;
  topic?: string;
}

/** `--kv-transfer-config`, with vLLM's field names in camelCase. */
export interface KvTransferConfig {
  kvConnector?: string | null;
  kvRole?: "kv_producer" | "kv_consumer" | "kv_both" | null;
  /** Default: a random UUID, as vLLM; `_dp<rank>` is appended per rank when data-parallel. */
  engineId?: string | null;
  kvConnectorExtraConfig?: Record<string, unknown>;
}

/** A LoRA adapter served under its own model name (`--lora-modules name=path`). */
export interface LoraModule {
  name: string;
  path: string;
}

/** Where a rank's KV event batches go, when not to vLLM's ZMQ publisher. */
export interface KvEventPublisherLike {
  /** One encoded KVEventBatch; returns its sequence number. */
  publish(payload: Buffer): bigint;
  close(): Promise<void> | void;
}

export interface MockEngineConfig {
  /** The model path or hub id (`vllm serve <model>`). */
  model: string;
  /** `--served-model-name`: names accepted in requests; the first is reported. Default [model]. */
  servedModelName?: string | string[];
  /**
   * A model on its GPUs (`ENGINE_PROFILE_NAMES`): the defaults of `timing` and `numGpuBlocks`.
   * Default "llama-3.1-8b-h100".
   */
  profile?: string;
  /** Tokens per KV block. Default 16. */
  blockSize?: number;
  /** Blocks in each rank's pool, the null block included, as vLLM counts them. Default: the profile's (26,000). */
  numGpuBlocks?: number;
  /**
   * Blocks of the CPU offload tier per rank (0: none). Default: from `kvTransferConfig` when its
   * connector is `OffloadingConnector` (`num_cpu_blocks`, or `cpu_bytes_to_use` over the profile's
   * KV bytes per block).
   */
  numCpuBlocks?: number;
  /** Default true (vLLM v1). */
  enablePrefixCaching?: boolean;
  /** `--enable-prompt-embeds`: completions may carry `prompt_embeds`. Default false. */
  enablePromptEmbeds?: boolean;
  /** `--dtype`: prompt embeddings are cast to it before hashing. Default bfloat16 (auto). */
  dtype?: string;
  /** `--prefix-caching-hash-algo`. Default "sha256". */
  hashAlgorithm?: EngineHashAlgorithm;
  /**
   * The PYTHONHASHSEED the engine hashes with. Default: `process.env.PYTHONHASHSEED` taken as
   * vLLM takes it (the raw string; unset means sha256's fixed default seed, and for xxhash a
   * random seed per process, as vLLM does). `null` forces "unset".
   */
  hashSeed?: string | null;
  /** Default 131,072 (Llama-3.1-8B). */
  maxModelLen?: number;
  /** Default 1,024 (vLLM's default for an H100 API server). */
  maxNumSeqs?: number;
  /** Token budget per step (chunked prefill). Default 8,192 (H100 API server). */
  maxNumBatchedTokens?: number;
  /** `--seed`: mixed into every generated token. Default 0. */
  seed?: number;
  timing?: Partial<TimingModel>;
  /**
   * Simulated time / wall time. Default 1 (real time). `Infinity` (or `zeroTime`) never sleeps:
   * steps run back to back, simulated clocks still advance by the modelled durations.
   */
  speedup?: number;
  zeroTime?: boolean;
  /** The model emits EOS as its N-th output token unless `ignore_eos`. Default 1,024. */
  eosAfterTokens?: number;
  /** `--data-parallel-size`: one engine per rank. Default 1. */
  dataParallelSize?: number;
  /**
   * `--data-parallel-rank`: this process runs only that rank (vLLM's external load-balancing
   * mode), publishing on that rank's endpoints. Default: every rank 0..size-1.
   */
  dataParallelRank?: number;
  kvEventsConfig?: KvEventsConfig | null;
  /** Wire form of the events: "current" (default, vLLM 0.33), "legacy" (0.9.0) or a version. */
  kvEventsFormat?: KvEventFormat;
  /** Replaces the ZMQ publisher of each rank (tests, in-process buses). */
  eventPublisherFactory?: (dpRank: number) => KvEventPublisherLike | Promise<KvEventPublisherLike>;
  kvTransferConfig?: KvTransferConfig | null;
  /** `VLLM_NIXL_SIDE_CHANNEL_HOST` / `_PORT` as reported in kv_transfer_params. */
  nixlSideChannelHost?: string;
  nixlSideChannelPort?: number;
  /**
   * Disaggregated mode with NixlConnector: move real KV bytes over NIXL when the library loads
   * (default true; KVROUTE_MOCK_NIXL=0 turns it off), `nixlBlockBytes` per block (default 8192).
   */
  nixl?: boolean;
  nixlBlockBytes?: number;
  loraModules?: LoraModule[];
  /**
   * `--tokenizer`: a Hugging Face tokenizer folder (or a loaded `Tokenizer`). Prompts are then
   * tokenized exactly as vLLM does, and generated ids and text come from that vocabulary.
   * Default: the toy tokenizer (docs/mocker.md). A bad folder throws `TokenizerLoadError`.
   */
  tokenizer?: string | Tokenizer | null;
}

export interface ResolvedMockEngineConfig {
  model: string;
  servedModelNames: string[];
  blockSize: number;
  numGpuBlocks: number;
  /** CPU offload tier blocks per rank (0: none). */
  numCpuBlocks: number;
  enablePromptEmbeds: boolean;
  dtype: string | undefined;
  enablePrefixCaching: boolean;
  hashAlgorithm: EngineHashAlgorithm;
  /** What the hasher gets: undefined = unset (sha256 default seed). */
  hashSeed: string | undefined;
  maxModelLen: number;
  maxNumSeqs: number;
  maxNumBatchedTokens: number;
  seed: number;
  timing: TimingModel;
  speedup: number;
  zeroTime: boolean;
  eosAfterTokens: number;
  dataParallelSize: number;
  /** The ranks this process runs. */
  ranks: number[];
  kvEvents: Required<Omit<KvEventsConfig, "replayEndpoint">> & { replayEndpoint: string | null; enabled: boolean };
  kvEventsFormat: KvEventFormat;
  eventPublisherFactory?: MockEngineConfig["eventPublisherFactory"];
  kvTransfer: { connector: string; role: string; engineId: string; extra: Record<string, unknown> } | null;
  nixlSideChannelHost: string;
  nixlSideChannelPort: number;
  nixl: { enabled: boolean; blockBytes: number };
  loraModules: LoraModule[];
  /** The real tokenizer, or null for the toy one. */
  tokenizer: Tokenizer | null;
}

function positiveInt(name: string, value: number | undefined, fallback: number): number {
  const v = value ?? fallback;
  if (!Number.isInteger(v) || v <= 0) throw new InvalidConfigError(`${name} must be a positive integer: got ${String(value)}`);
  return v;
}

function nonNegative(name: string, value: number): number {
  if (typeof value !== "number" || !Number.isFinite(value) || value < 0) {
    throw new InvalidConfigError(`timing.${name} must be a finite number >= 0: got ${String(value)}`);
  }
  return value;
}

/**
 * The seed vLLM's `resolve_none_hash_seed` would use: PYTHONHASHSEED's raw string when set (even
 * empty); unset → sha256 family: its fixed default (the hasher's `undefined`); xxhash family:
 * `os.urandom(32).hex()`, a random seed per process.
 */
export function resolveHashSeed(algorithm: EngineHashAlgorithm, seed: string | null | undefined): string | undefined {
  const raw = seed === undefined ? process.env.PYTHONHASHSEED : seed ?? undefined;
  if (raw !== undefined) return raw;
  return algorithm.startsWith("xxhash") ? randomBytes(32).toString("hex") : undefined;
}

/**
 * The CPU tier's blocks: `numCpuBlocks`, else the OffloadingConnector's `num_cpu_blocks` (vLLM
 * < 0.12) or `cpu_bytes_to_use` over the bytes of a block, else 0.
 */
function cpuBlocks(config: MockEngineConfig, kt: ResolvedMockEngineConfig["kvTransfer"], bytesPerBlock: number): number {
  if (config.numCpuBlocks !== undefined) {
    if (!Number.isInteger(config.numCpuBlocks) || config.numCpuBlocks < 0) {
      throw new InvalidConfigError(`numCpuBlocks must be an integer >= 0: got ${String(config.numCpuBlocks)}`);
    }
    return config.numCpuBlocks;
  }
  if (kt?.connector !== "OffloadingConnector") return 0;
  const { num_cpu_blocks: blocks, cpu_bytes_to_use: bytes } = kt.extra;
  const whole = (v: unknown): v is number => typeof v === "number" && Number.isInteger(v) && v > 0;
  if (blocks !== undefined) {
    if (!whole(blocks)) throw new InvalidConfigError(`kv_connector_extra_config.num_cpu_blocks must be a positive integer: got ${JSON.stringify(blocks)}`);
    return blocks;
  }
  if (bytes !== undefined) {
    if (!whole(bytes)) throw new InvalidConfigError(`kv_connector_extra_config.cpu_bytes_to_use must be a positive integer: got ${JSON.stringify(bytes)}`);
    return Math.floor(bytes / bytesPerBlock);
  }
  throw new InvalidConfigError("OffloadingConnector needs kv_connector_extra_config.num_cpu_blocks or cpu_bytes_to_use");
}

export function resolveMockEngineConfig(config: MockEngineConfig): ResolvedMockEngineConfig {
  if (typeof config.model !== "string" || config.model.length === 0) throw new InvalidConfigError("model is required");
  const served = config.servedModelName === undefined ? [config.model] : [config.servedModelName].flat();
  if (served.length === 0 || served.some((n) => typeof n !== "string" || n.length === 0)) {
    throw new InvalidConfigError("servedModelName must be a non-empty string (or list of them)");
  }
  const hashAlgorithm = config.hashAlgorithm ?? "sha256";
  if (!ENGINE_HASH_ALGORITHMS.includes(hashAlgorithm)) {
    throw new InvalidConfigError(`hashAlgorithm must be one of ${ENGINE_HASH_ALGORITHMS.join(", ")}: got ${String(hashAlgorithm)}`);
  }
  const blockSize = positiveInt("blockSize", config.blockSize, 16);
  const profile = engineProfile(config.profile ?? DEFAULT_ENGINE_PROFILE);
  const numGpuBlocks = positiveInt("numGpuBlocks", config.numGpuBlocks, profile.numGpuBlocks);
  if (numGpuBlocks < 2) throw new InvalidConfigError("numGpuBlocks must be at least 2 (block 0 is vLLM's null block)");
  const maxModelLen = positiveInt("maxModelLen", config.maxModelLen, 131_072);
  const maxNumSeqs = positiveInt("maxNumSeqs", config.maxNumSeqs, 1024);
  const maxNumBatchedTokens = positiveInt("maxNumBatchedTokens", config.maxNumBatchedTokens, 8192);
  const dataParallelSize = positiveInt("dataParallelSize", config.dataParallelSize, 1);
  let ranks = Array.from({ length: dataParallelSize }, (_, r) => r);
  if (config.dataParallelRank !== undefined) {
    const r = config.dataParallelRank;
    if (!Number.isInteger(r) || r < 0 || r >= dataParallelSize) {
      throw new InvalidConfigError(`dataParallelRank must be in [0, ${dataParallelSize}): got ${r}`);
    }
    ranks = [r];
  }
  const timing = { ...profile.timing, ...config.timing };
  for (const [k, v] of Object.entries(timing)) {
    if (k !== "polynomial") nonNegative(k, v as number);
  }
  if (timing.polynomial !== undefined) {
    const problem = polynomialProblem(timing.polynomial);
    if (problem !== null) throw new InvalidConfigError(`timing.polynomial: ${problem}`);
  }
  const speedup = config.speedup ?? 1;
  if (typeof speedup !== "number" || !(speedup > 0)) throw new InvalidConfigError(`speedup must be > 0: got ${String(speedup)}`);
  const zeroTime = config.zeroTime === true || speedup === Infinity;
  const eosAfterTokens = config.eosAfterTokens ?? 1024;
  if (!Number.isInteger(eosAfterTokens) || eosAfterTokens <= 0) throw new InvalidConfigError("eosAfterTokens must be a positive integer");
  const seed = config.seed ?? 0;
  if (!Number.isInteger(seed)) throw new InvalidConfigError("seed must be an integer");

  const ev = config.kvEventsConfig ?? {};
  const enableEvents = ev.enableKvCacheEvents === true;
  const publisher = ev.publisher ?? (enableEvents ? "zmq" : "null");
  if (publisher !== "zmq" && publisher !== "null") {
    throw new InvalidConfigError(`kv_events_config.publisher must be "zmq" or "null": got ${JSON.stringify(publisher)}`);
  }
  const kvEvents = {
    enableKvCacheEvents: enableEvents,
    publisher,
    endpoint: ev.endpoint ?? "tcp://*:5557",
    replayEndpoint: ev.replayEndpoint ?? null,
    bufferSteps: ev.bufferSteps ?? 10_000,
    hwm: ev.hwm ?? 100_000,
    maxQueueSize: ev.maxQueueSize ?? 100_000,
    topic: ev.topic ?? "",
    // vLLM 0.11.1+: a "zmq" publisher without enable_kv_cache_events is a null publisher.
    enabled: enableEvents && (publisher === "zmq" || config.eventPublisherFactory !== undefined),
  };

  let kvTransfer: ResolvedMockEngineConfig["kvTransfer"] = null;
  const kt = config.kvTransferConfig;
  if (kt?.kvConnector) {
    const role = kt.kvRole;
    if (!role) throw new InvalidConfigError("kv_transfer_config: please specify kv_role when kv_connector is set");
    if (!["kv_producer", "kv_consumer", "kv_both"].includes(role)) {
      throw new InvalidConfigError(`kv_transfer_config: unsupported kv_role ${JSON.stringify(role)}`);
    }
    kvTransfer = {
      connector: kt.kvConnector,
      role,
      engineId: kt.engineId ?? randomUUID(),
      extra: kt.kvConnectorExtraConfig ?? {},
    };
  }
  const loraModules = config.loraModules ?? [];
  for (const m of loraModules) {
    if (!m.name || !m.path) throw new InvalidConfigError("each LoRA module needs a name and a path");
  }

  return {
    model: config.model,
    servedModelNames: served,
    blockSize,
    numGpuBlocks,
    enablePromptEmbeds: config.enablePromptEmbeds === true,
    dtype: config.dtype === "auto" ? undefined : config.dtype,
    numCpuBlocks: cpuBlocks(config, kvTransfer, profile.kvBytesPerToken * blockSize),
    enablePrefixCaching: config.enablePrefixCaching ?? true,
    hashAlgorithm,
    hashSeed: resolveHashSeed(hashAlgorithm, config.hashSeed),
    maxModelLen,
    maxNumSeqs,
    maxNumBatchedTokens,
    seed,
    timing,
    speedup,
    zeroTime,
    eosAfterTokens,
    dataParallelSize,
    ranks,
    kvEvents,
    kvEventsFormat: config.kvEventsFormat ?? "current",
    eventPublisherFactory: config.eventPublisherFactory,
    kvTransfer,
    nixlSideChannelHost: config.nixlSideChannelHost ?? process.env.VLLM_NIXL_SIDE_CHANNEL_HOST ?? "localhost",
    nixlSideChannelPort: config.nixlSideChannelPort ?? Number(process.env.VLLM_NIXL_SIDE_CHANNEL_PORT ?? 5600),
    nixl: {
      enabled: kvTransfer !== null && /nixl/i.test(kvTransfer.connector) && (config.nixl ?? process.env.KVROUTE_MOCK_NIXL !== "0"),
      blockBytes: positiveInt("nixlBlockBytes", config.nixlBlockBytes, 8192),
    },
    loraModules,
    tokenizer: typeof config.tokenizer === "string" ? Tokenizer.fromDir(config.tokenizer) : (config.tokenizer ?? null),
  };
}
