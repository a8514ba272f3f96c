/**
 * `kvroute mock`: a simulated vLLM server that takes the `vllm serve` flags that matter to a router
 * (so a worker controller starts it exactly as it starts `vllm serve`), plus the mocker's own
 * timing flags. Unknown flags are an error (exit 2). Prints one line when ready:
 * `kvroute mock: ready {json}` with the URL and the bound KV event endpoints.
 */
import { InvalidConfigError, KvrouteError } from "../errors.js";
import { ENGINE_HASH_ALGORITHMS, type EngineHashAlgorithm } from "../core/block-hasher.js";
import { type KvEventsConfig, type KvTransferConfig, type LoraModule, type MockEngineConfig, type TimingModel } from "../mocker/config.js";
import { MockServer } from "../mocker/http-server.js";
import { MockEngine } from "../mocker/mock-engine.js";
import { UsageError } from "./args.js";

const USAGE = `Usage: kvroute mock [<model>] [options]

A simulated vLLM OpenAI server (no GPU): KV cache with prefix caching, vLLM's KV events over ZMQ,
vLLM's metrics, a timing model. Takes the 'vllm serve' flags below; see docs/mocker.md.

vLLM flags:
  <model> | --model <name>              Model (served name by default)
  --served-model-name <name>...         Names accepted in requests (first one reported)
  --host <addr>                         Default 0.0.0.0
  --port <n>                            Default 8000 (0: any free port)
  --block-size <n>                      Tokens per KV block (default 16)
  --num-gpu-blocks-override <n>         KV blocks per rank (default: the profile's, 26000)
  --enable-prefix-caching | --no-enable-prefix-caching   (default on)
  --prefix-caching-hash-algo <algo>     sha256 (default), sha256_cbor, xxhash, xxhash_cbor
  --kv-events-config <json>             enable_kv_cache_events, publisher, endpoint, replay_endpoint,
                                        topic, buffer_steps, hwm, max_queue_size
  --kv-transfer-config <json>           kv_connector, kv_role, engine_id, kv_connector_extra_config
  --nixl-block-bytes <n>                NixlConnector: bytes per KV block moved over NIXL (default 8192,
                                        Llama-3.1-8B's 2 MiB scaled by 1/256); KVROUTE_MOCK_NIXL=0: timing model only
  --data-parallel-size, -dp <n>         Engines (ranks) in this process (default 1)
  --data-parallel-rank, -dpn <r>        Run only rank r (external load-balancing mode)
  --max-model-len <n>                   Default 131072, fitted to the KV cache when unset or -1; 32k, 1m ok
  --max-num-seqs <n>                    Default 1024
  --max-num-batched-tokens <n>          Step token budget (default 8192)
  --seed <n>                            Sampling seed (default 0)
  --enable-lora, --lora-modules <name=path|json>...
  --enable-prompt-tokens-details, --enable-force-include-usage, --enable-per-request-metrics
  --enable-prompt-embeds                completions may carry prompt_embeds (base64 torch.save tensors)
  --dtype float32|float16|bfloat16|auto  the model's dtype (prompt embeddings are cast to it; auto: bfloat16)
  --tokenizer <dir>                     A Hugging Face tokenizer folder: prompts are tokenized
                                        exactly as vLLM does, outputs are ids of that vocabulary
                                        (default: the mocker's toy tokenizer)
  Accepted and ignored: --tensor-parallel-size/-tp, --pipeline-parallel-size/-pp,
  --gpu-memory-utilization, --dtype, --trust-remote-code, --enforce-eager, --disable-log-requests,
  --enable-log-requests, --disable-log-stats, --uvicorn-log-level, --max-loras, --max-lora-rank,
  --disable-uvicorn-access-log, --revision, --download-dir, --load-format

Mocker flags:
  --profile <name>                      The model on its GPUs the timing model and KV cache size
                                        stand for: llama-3.1-8b-h100 (default),
                                        llama-3.1-70b-h100-tp4 (see docs/mocker.md)
  --speedup <x>                         Simulated/wall time (default 1; inf = no sleeping)
  --zero-time                           Same as --speedup inf
  --eos-after-tokens <n>                The model emits EOS as its n-th token (default 1024)
  --kv-events-format <v>                current (default, vLLM 0.33), legacy (0.9.0) or a version
  --step-base-ms, --prefill-per-token-ms, --attention-per-token-pair-ms, --decode-per-seq-ms,
  --decode-per-context-token-ms, --kv-transfer-base-ms, --kv-transfer-per-token-ms, --cpu-load-per-token-ms <ms>
                                        Timing model (defaults: docs/mocker.md)`;

type Kind = "string" | "boolean" | "list" | "ignored-value" | "ignored-flag";

const FLAGS: Record<string, Kind> = {
  model: "string",
  "served-model-name": "list",
  host: "string",
  port: "string",
  "block-size": "string",
  "num-gpu-blocks-override": "string",
  "enable-prefix-caching": "boolean",
  "no-enable-prefix-caching": "boolean",
  "prefix-caching-hash-algo": "string",
  "kv-events-config": "string",
  "kv-transfer-config": "string",
  "nixl-block-bytes": "string",
  "data-parallel-size": "string",
  "data-parallel-rank": "string",
  "max-model-len": "string",
  "max-num-seqs": "string",
  "max-num-batched-tokens": "string",
  seed: "string",
  "enable-lora": "boolean",
  "lora-modules": "list",
  "enable-prompt-tokens-details": "boolean",
  "enable-prompt-embeds": "boolean",
  dtype: "string",
  "enable-force-include-usage": "boolean",
  "enable-per-request-metrics": "boolean",
  tokenizer: "string",
  speedup: "string",
  "zero-time": "boolean",
  profile: "string",
  "eos-after-tokens": "string",
  "kv-events-format": "string",
  "step-base-ms": "string",
  "prefill-per-token-ms": "string",
  "attention-per-token-pair-ms": "string",
  "decode-per-seq-ms": "string",
  "decode-per-context-token-ms": "string",
  "kv-transfer-base-ms": "string",
  "kv-transfer-per-token-ms": "string",
  "cpu-load-per-token-ms": "string",
  "tensor-parallel-size": "ignored-value",
  "pipeline-parallel-size": "ignored-value",
  "gpu-memory-utilization": "ignored-value",
  revision: "ignored-value",
  "download-dir": "ignored-value",
  "load-format": "ignored-value",
  "uvicorn-log-level": "ignored-value",
  "max-loras": "ignored-value",
  "max-lora-rank": "ignored-value",
  "trust-remote-code": "ignored-flag",
  "enforce-eager": "ignored-flag",
  "disable-log-requests": "ignored-flag",
  "enable-log-requests": "ignored-flag",
  "disable-log-stats": "ignored-flag",
  "disable-uvicorn-access-log": "ignored-flag",
  help: "boolean",
};

const SHORT: Record<string, string> = { dp: "data-parallel-size", dpn: "data-parallel-rank", tp: "tensor-parallel-size", pp: "pipeline-parallel-size", h: "help" };

export interface ParsedMockArgs {
  values: Map<string, string | string[] | true>;
  positionals: string[];
  ignored: string[];
}

/** argparse-like: `--flag value`, `--flag=value`, underscores as dashes, nargs lists. */
export function parseMockArgs(argv: string[]): ParsedMockArgs {
  const values = new Map<string, string | string[] | true>();
  const positionals: string[] = [];
  const ignored: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (!arg.startsWith("-") || arg === "-") {
      positionals.push(arg);
      continue;
    }
    const eq = arg.indexOf("=");
    const rawName = (eq < 0 ? arg : arg.slice(0, eq)).replace(/^-+/, "");
    const inline = eq < 0 ? undefined : arg.slice(eq + 1);
    const long = arg.startsWith("--");
    const name = long ? rawName.replace(/_/g, "-") : SHORT[rawName];
    const kind = name === undefined ? undefined : FLAGS[name];
    if (name === undefined || kind === undefined) throw new UsageError(`unrecognized argument: ${arg.slice(0, eq < 0 ? undefined : eq)}`);
    if (kind === "boolean" || kind === "ignored-flag") {
      if (inline !== undefined) throw new UsageError(`--${name} takes no value`);
      if (kind === "ignored-flag") ignored.push(`--${name}`);
      else values.set(name, true);
      continue;
    }
    if (kind === "list") {
      const list: string[] = inline !== undefined ? [inline] : [];
      while (inline === undefined && i + 1 < argv.length && !argv[i + 1]!.startsWith("-")) list.push(argv[++i]!);
      if (list.length === 0) throw new UsageError(`--${name} expects at least one value`);
      values.set(name, list);
      continue;
    }
    const value = inline ?? argv[++i];
    if (value === undefined) throw new UsageError(`--${name} expects a value`);
    if (kind === "ignored-value") ignored.push(`--${name}`);
    else values.set(name, value);
  }
  return { values, positionals, ignored };
}

/** vLLM's human-readable ints: 32k, 1m, 1K (x1024). */
function humanInt(flag: string, v: string): number {
  const m = /^(\d+(?:\.\d+)?)([kKmMgG]?)$/.exec(v.trim());
  if (!m) throw new UsageError(`--${flag} must be an integer: got '${v}'`);
  const scale: Record<string, number> = { "": 1, k: 1e3, m: 1e6, g: 1e9, K: 1024, M: 1024 ** 2, G: 1024 ** 3 };
  const n = Number(m[1]) * scale[m[2]!]!;
  if (!Number.isInteger(n) || n <= 0) throw new UsageError(`--${flag} must be a positive integer: got '${v}'`);
  return n;
}

function intFlag(flag: string, v: string, min = 1): number {
  const n = Number(v);
  if (!/^-?\d+$/.test(v.trim()) || n < min) throw new UsageError(`--${flag} must be an integer >= ${min}: got '${v}'`);
  return n;
}

function msFlag(flag: string, v: string): number {
  const n = Number(v);
  if (v.trim() === "" || !Number.isFinite(n) || n < 0) throw new UsageError(`--${flag} must be a number >= 0: got '${v}'`);
  return n;
}

function jsonFlag(flag: string, v: string): Record<string, unknown> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(v);
  } catch {
    throw new UsageError(`--${flag} must be a JSON object: got '${v}'`);
  }
  if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) throw new UsageError(`--${flag} must be a JSON object`);
  return parsed as Record<string, unknown>;
}

const KV_EVENTS_FIELDS = ["enable_kv_cache_events", "publisher", "endpoint", "replay_endpoint", "buffer_steps", "hwm", "max_queue_size", "topic"];
const KV_TRANSFER_FIELDS = ["kv_connector", "kv_role", "engine_id", "kv_connector_extra_config", "kv_buffer_device", "kv_port", "kv_buffer_size", "kv_rank", "kv_parallel_size", "kv_ip", "kv_connector_module_path"];

function checkFields(flag: string, obj: Record<string, unknown>, known: string[]): void {
  for (const k of Object.keys(obj)) {
    if (!known.includes(k)) throw new UsageError(`--${flag}: unknown field '${k}' (known: ${known.join(", ")})`);
  }
}

/** The mocker's engine and server options from `vllm serve`-style arguments. */
export function mockConfigFromArgs(argv: string[]): {
  engine: MockEngineConfig;
  host: string;
  port: number;
  server: { enablePromptTokensDetails: boolean; enableForceIncludeUsage: boolean; enablePerRequestMetrics: boolean };
  ignored: string[];
  help: boolean;
} {
  const { values, positionals, ignored } = parseMockArgs(argv);
  const str = (k: string) => values.get(k) as string | undefined;
  const flag = (k: string) => values.get(k) === true;
  if (positionals.length > 1) throw new UsageError(`unrecognized arguments: ${positionals.slice(1).join(" ")}`);
  const model = str("model") ?? positionals[0];
  if (flag("help")) return { engine: { model: model ?? "" }, host: "", port: 0, server: {} as never, ignored, help: true };
  if (!model) throw new UsageError("a model is required (positional <model> or --model)");
  if (flag("enable-prefix-caching") && flag("no-enable-prefix-caching")) {
    throw new UsageError("--enable-prefix-caching and --no-enable-prefix-caching are mutually exclusive");
  }
  const algo = str("prefix-caching-hash-algo");
  if (algo !== undefined && !ENGINE_HASH_ALGORITHMS.includes(algo as EngineHashAlgorithm)) {
    throw new UsageError(`--prefix-caching-hash-algo: invalid choice '${algo}' (choose from ${ENGINE_HASH_ALGORITHMS.join(", ")})`);
  }

  let kvEventsConfig: KvEventsConfig | undefined;
  const ev = str("kv-events-config");
  if (ev !== undefined) {
    const o = jsonFlag("kv-events-config", ev);
    checkFields("kv-events-config", o, KV_EVENTS_FIELDS);
    kvEventsConfig = {
      enableKvCacheEvents: o.enable_kv_cache_events as boolean | undefined,
      publisher: o.publisher as string | undefined,
      endpoint: o.endpoint as string | undefined,
      replayEndpoint: (o.replay_endpoint as string | null | undefined) ?? null,
      bufferSteps: o.buffer_steps as number | undefined,
      hwm: o.hwm as number | undefined,
      maxQueueSize: o.max_queue_size as number | undefined,
      topic: o.topic as string | undefined,
    };
  }
  let kvTransferConfig: KvTransferConfig | undefined;
  const kt = str("kv-transfer-config");
  if (kt !== undefined) {
    const o = jsonFlag("kv-transfer-config", kt);
    checkFields("kv-transfer-config", o, KV_TRANSFER_FIELDS);
    kvTransferConfig = {
      kvConnector: o.kv_connector as string | undefined,
      kvRole: o.kv_role as KvTransferConfig["kvRole"],
      engineId: o.engine_id as string | undefined,
      kvConnectorExtraConfig: o.kv_connector_extra_config as Record<string, unknown> | undefined,
    };
  }
  let loraModules: LoraModule[] | undefined;
  const lm = values.get("lora-modules") as string[] | undefined;
  if (lm) {
    if (!flag("enable-lora")) throw new UsageError("--lora-modules requires --enable-lora");
    loraModules = lm.map((item) => {
      if (item.includes("=") && !item.includes(",")) {
        const at = item.indexOf("=");
        return { name: item.slice(0, at), path: item.slice(at + 1) };
      }
      const o = jsonFlag("lora-modules", item);
      if (typeof o.name !== "string" || typeof o.path !== "string") throw new UsageError(`Invalid fields for --lora-modules: ${item}`);
      return { name: o.name, path: o.path };
    });
  }

  const timing: Partial<TimingModel> = {};
  const timingFlags: Record<string, Exclude<keyof TimingModel, "polynomial">> = {
    "step-base-ms": "stepBaseMs",
    "prefill-per-token-ms": "prefillPerTokenMs",
    "attention-per-token-pair-ms": "attentionPerTokenPairMs",
    "decode-per-seq-ms": "decodePerSeqMs",
    "decode-per-context-token-ms": "decodePerContextTokenMs",
    "kv-transfer-base-ms": "kvTransferBaseMs",
    "kv-transfer-per-token-ms": "kvTransferPerTokenMs",
    "cpu-load-per-token-ms": "cpuLoadPerTokenMs",
  };
  for (const [f, key] of Object.entries(timingFlags)) {
    const v = str(f);
    if (v !== undefined) timing[key] = msFlag(f, v);
  }
  let speedup: number | undefined;
  const sp = str("speedup");
  if (sp !== undefined) {
    speedup = /^(inf|infinity)$/i.test(sp.trim()) ? Infinity : Number(sp);
    if (!(speedup > 0)) throw new UsageError(`--speedup must be > 0 (or inf): got '${sp}'`);
  }
  const served = values.get("served-model-name") as string[] | undefined;
  const engine: MockEngineConfig = {
    model,
    servedModelName: served,
    blockSize: str("block-size") === undefined ? undefined : intFlag("block-size", str("block-size")!),
    numGpuBlocks: str("num-gpu-blocks-override") === undefined ? undefined : intFlag("num-gpu-blocks-override", str("num-gpu-blocks-override")!, 2),
    enablePrefixCaching: flag("no-enable-prefix-caching") ? false : undefined,
    enablePromptEmbeds: flag("enable-prompt-embeds"),
    ...(str("dtype") !== undefined ? { dtype: str("dtype") } : {}),
    hashAlgorithm: algo as EngineHashAlgorithm | undefined,
    // -1: fit to the KV cache (vLLM's auto-fit); the mocker also fits when the flag is absent.
    maxModelLen: str("max-model-len") === undefined || str("max-model-len")!.trim() === "-1" ? undefined : humanInt("max-model-len", str("max-model-len")!),
    maxNumSeqs: str("max-num-seqs") === undefined ? undefined : intFlag("max-num-seqs", str("max-num-seqs")!),
    maxNumBatchedTokens: str("max-num-batched-tokens") === undefined ? undefined : humanInt("max-num-batched-tokens", str("max-num-batched-tokens")!),
    seed: str("seed") === undefined ? undefined : intFlag("seed", str("seed")!, -(2 ** 31)),
    dataParallelSize: str("data-parallel-size") === undefined ? undefined : intFlag("data-parallel-size", str("data-parallel-size")!),
    dataParallelRank: str("data-parallel-rank") === undefined ? undefined : intFlag("data-parallel-rank", str("data-parallel-rank")!, 0),
    kvEventsConfig,
    kvEventsFormat: str("kv-events-format"),
    kvTransferConfig,
    nixlBlockBytes: str("nixl-block-bytes") === undefined ? undefined : intFlag("nixl-block-bytes", str("nixl-block-bytes")!),
    loraModules,
    timing,
    speedup,
    zeroTime: flag("zero-time") || undefined,
    profile: str("profile"),
    eosAfterTokens: str("eos-after-tokens") === undefined ? undefined : intFlag("eos-after-tokens", str("eos-after-tokens")!),
    tokenizer: str("tokenizer"),
  };
  return {
    engine,
    host: str("host") ?? "0.0.0.0",
    port: str("port") === undefined ? 8000 : intFlag("port", str("port")!, 0),
    server: {
      enablePromptTokensDetails: flag("enable-prompt-tokens-details"),
      enableForceIncludeUsage: flag("enable-force-include-usage"),
      enablePerRequestMetrics: flag("enable-per-request-metrics"),
    },
    ignored,
    help: false,
  };
}

export async function runMock(argv: string[]): Promise<number> {
  let parsed: ReturnType<typeof mockConfigFromArgs>;
  try {
    parsed = mockConfigFromArgs(argv);
  } catch (err) {
    if (err instanceof UsageError) {
      console.error(`kvroute mock: error: ${err.message}\n\n${USAGE}`);
      return 2;
    }
    throw err;
  }
  if (parsed.help) {
    console.log(USAGE);
    return 0;
  }
  if (parsed.ignored.length > 0) console.error(`kvroute mock: accepted and ignored (no effect in the mocker): ${parsed.ignored.join(" ")}`);

  let engine: MockEngine;
  let server: MockServer;
  try {
    engine = await MockEngine.start(parsed.engine);
    server = await MockServer.start({ engine, host: parsed.host, port: parsed.port, ...parsed.server });
  } catch (err) {
    if (err instanceof InvalidConfigError || err instanceof KvrouteError) {
      console.error(`kvroute mock: error: ${err.message}`);
      return 2;
    }
    throw err;
  }
  const cfg = engine.config;
  console.log(
    `kvroute mock: ready ${JSON.stringify({
      url: server.url,
      host: parsed.host,
      port: server.port,
      model: engine.modelName,
      dataParallelSize: cfg.dataParallelSize,
      ranks: cfg.ranks,
      blockSize: cfg.blockSize,
      numGpuBlocks: cfg.numGpuBlocks,
      maxModelLen: cfg.maxModelLen,
      hashAlgorithm: cfg.hashAlgorithm,
      tokenizer: cfg.tokenizer?.dir ?? null,
      kvEvents: engine.kvEventEndpoints(),
      speedup: cfg.zeroTime ? "inf" : cfg.speedup,
      pid: process.pid,
    })}`,
  );

  await new Promise<void>((resolve) => {
    const stop = () => resolve();
    process.once("SIGTERM", stop);
    process.once("SIGINT", stop);
  });
  await server.close();
  await engine.close();
  return 0;
}

