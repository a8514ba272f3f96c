/**
 * The typed configuration of one vLLM worker process (or a mocker process taking the same flags),
 * and the record a healthy worker publishes to the router's registry (DESIGN.md, "Worker
 * identity"). Nothing here spawns anything; see command-line.ts for the argv and
 * vllm-worker.ts for supervision.
 */
import type { EngineHashAlgorithm } from "../core/block-hasher.js";

/** What the worker does in a deployment. */
export type WorkerRole = "aggregated" | "prefill" | "decode";

/**
 * KV connector shorthands, as Dynamo's `--connector` flag: `nixl` (NixlConnector, P/D transfer),
 * `lmcache` (LMCacheConnectorV1), `kvbm` (Dynamo's KV block manager, DynamoConnector), `none`.
 */
export type ConnectorName = "nixl" | "lmcache" | "kvbm" | "none";

/** vLLM's `KVTransferConfig` (vllm/config/kv_transfer.py) as `--kv-transfer-config` takes it. */
export interface KvTransferConfig {
  kv_connector: string;
  kv_role: "kv_producer" | "kv_consumer" | "kv_both";
  kv_connector_module_path?: string;
  kv_connector_extra_config?: Record<string, unknown>;
  engine_id?: string;
  kv_buffer_device?: string;
  kv_buffer_size?: number;
  kv_rank?: number;
  kv_parallel_size?: number;
  kv_ip?: string;
  kv_port?: number;
  kv_load_failure_policy?: string;
  [field: string]: unknown;
}

/**
 * KV events, turned into `--kv-events-config` with `enable_kv_cache_events: true,
 * publisher: "zmq"` (docs/vllm-kv-events.md, section 7). Endpoints are as vLLM takes them: a
 * `tcp://*:port` endpoint binds, a `tcp://host:port` one connects. With data parallelism vLLM
 * offsets both ports by the rank (endpointForRank).
 */
export interface KvEventsOptions {
  endpoint: string;
  replayEndpoint?: string;
  topic?: string;
  bufferSteps?: number;
  hwm?: number;
}

/**
 * Data parallelism. `internal` (the default when `size > 1`): one process hosts ranks 0..size-1
 * behind one HTTP port (`--data-parallel-size`). `external`: this process hosts the single rank
 * `rank` of a group of `size` (`--data-parallel-size N --data-parallel-rank r`, vLLM's external
 * load-balancing mode, as Dynamo's dep.sh runs one process per rank).
 */
export interface DataParallelOptions {
  size: number;
  rank?: number;
}

export interface VllmWorkerConfig {
  /** Names the worker in logs, events and its record. Default `<role>-<port>`. */
  id?: string;
  /** The positional model argument of `vllm serve`. */
  model: string;
  /** `--served-model-name`; the record's model name. Default: `model`. */
  servedModelName?: string;
  /** `--host`. Default "127.0.0.1". */
  host?: string;
  /** `--port`. */
  port: number;
  /** Host the router reaches the worker at (URL and event endpoints). Default: `host`, or 127.0.0.1 for a wildcard host. */
  advertiseHost?: string;
  /** Default "aggregated". */
  role?: WorkerRole;
  /**
   * KV connector(s) -> `--kv-transfer-config`. Default "none" for aggregated workers and "nixl"
   * for prefill and decode workers. Several (e.g. `["lmcache", "nixl"]`) make a multi-connector.
   */
  connector?: ConnectorName | readonly ConnectorName[];
  /** Used verbatim instead of the one derived from `connector`. */
  kvTransferConfig?: KvTransferConfig;
  /** KV event publishing; none when absent. */
  kvEvents?: KvEventsOptions;
  /** `--block-size`; the engine's default (16 on CUDA) when absent. */
  blockSize?: number;
  /** `--enable-prefix-caching` (true) / `--no-enable-prefix-caching` (false). Default: true with kvEvents, else the engine's default. */
  enablePrefixCaching?: boolean;
  /** `--prefix-caching-hash-algo`; the engine's default (sha256) when absent. */
  prefixCachingHashAlgo?: EngineHashAlgorithm;
  /** `PYTHONHASHSEED` in the worker's environment (vLLM seeds its block hashes with it). */
  pythonHashSeed?: string | number;
  dataParallel?: DataParallelOptions;
  /** `--num-gpu-blocks-override`. */
  numGpuBlocksOverride?: number;
  /** `--gpu-memory-utilization`. */
  gpuMemoryUtilization?: number;
  /** `--max-model-len`. */
  maxModelLen?: number;
  /** `--enable-prompt-embeds`: the worker takes `prompt_embeds` (also detected in `extraArgs`). */
  enablePromptEmbeds?: boolean;
  /** `--dtype` (e.g. "bfloat16"): prompt embeddings are cast to it before vLLM hashes them. */
  dtype?: string;
  /**
   * `VLLM_NIXL_SIDE_CHANNEL_PORT`: workers with the NIXL connector on one host each need their
   * own (vLLM's default is 5600 for all).
   */
  nixlSideChannelPort?: number;
  /** Appended verbatim after the generated flags (e.g. `--speculative-config {...}`, `--enable-prompt-embeds`). */
  extraArgs?: readonly string[];
  /** Added to the inherited environment (PYTHONHASHSEED from `pythonHashSeed` wins). */
  env?: Readonly<Record<string, string>>;
  /** The binary and its leading arguments. Default `["vllm", "serve"]`; see mockerCommand(). */
  command?: readonly string[];
  cwd?: string;
}

/** One DP rank's KV-event endpoints, in the form subscribers connect to. */
export interface KvEventsRecord {
  /** One per entry of `dpRanks`, e.g. `tcp://127.0.0.1:5557`. */
  endpoints: string[];
  /** Same order; null without replay. */
  replayEndpoints: string[] | null;
  topic: string;
  /**
   * The worker's PUB connects to `endpoints` (vLLM's rule for an endpoint without `*` or `::`), so
   * the subscriber binds them. Absent or false: the worker binds and the subscriber connects.
   */
  subscriberBinds?: boolean;
}

/**
 * What the router knows about a worker (DESIGN.md, "Worker identity"). Identity is
 * `(id, dpRank)` with `dpRank` one of `dpRanks`.
 */
export interface WorkerRecord {
  id: string;
  model: string;
  role: WorkerRole;
  /** HTTP base URL, e.g. `http://127.0.0.1:8000`. */
  url: string;
  kvEvents: KvEventsRecord | null;
  blockSize: number;
  hashAlgorithm: EngineHashAlgorithm;
  /** The worker's PYTHONHASHSEED, or null when unset (see docs/hashing.md). */
  hashSeed: string | null;
  /** KV blocks on the GPU, when known (override, or the engine's `vllm:cache_config_info`). */
  numGpuBlocks: number | null;
  dataParallelSize: number;
  /** The DP ranks this process hosts: all of 0..size-1 (internal), or one (external). */
  dpRanks: number[];
  /**
   * The model's tokenizer folder (a Hugging Face folder: `tokenizer.json`...) as the gateway can
   * reach it, when the worker announces one; the gateway then keys text and chat requests with it.
   */
  tokenizer?: string | null;
  /** Started with `--enable-prompt-embeds`: the only workers sent `prompt_embeds` requests. */
  enablePromptEmbeds?: boolean;
  /** `--dtype` when set explicitly (prompt embeddings are hashed in it; default bfloat16). */
  dtype?: string;
}

/**
 * Where a worker announces itself. Called with the record when the worker becomes healthy (again,
 * after a restart), and with its id when it crashes, drains or stops. The router's registry
 * (MemoryRegistry, EtcdRegistry) implements it.
 */
export interface WorkerRegistryHook {
  register(record: WorkerRecord): Promise<void>;
  deregister(id: string): Promise<void>;
}

/** vLLM's defaults, used in records when the config leaves a value to the engine. */
export const VLLM_DEFAULT_BLOCK_SIZE = 16;
export const VLLM_DEFAULT_HASH_ALGORITHM: EngineHashAlgorithm = "sha256";
