/**
 * From a VllmWorkerConfig to the exact `vllm serve` argv and environment, and to the worker's
 * registry record. Pure: nothing here reads the process environment or touches the network
 * (except mockerCommand, which looks for the built CLI on disk).
 *
 * Connector -> `--kv-transfer-config` (Dynamo's `--connector` helper, components/src/dynamo/vllm,
 * and the vLLM / LMCache disaggregation examples):
 *
 * | connector          | aggregated | prefill | decode |
 * |--------------------|------------|---------|--------|
 * | none               | (no flag)  | error   | error  |
 * | nixl               | NixlConnector kv_both (the role is per request, in kv_transfer_params) |||
 * | kvbm               | DynamoConnector (kvbm.vllm_integration.connector) kv_both | error | error |
 * | lmcache            | LMCacheConnectorV1 kv_both | kv_producer | kv_consumer (+ lmcache_rpc_port) |
 * | several            | MultiConnector kv_both over the kv_both configs above; PdConnector (kvbm module) when kvbm is one of them |||
 */
import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { InvalidConfigError } from "../errors.js";
import { endpointForRank, isBindEndpoint } from "../events/vllm-event-publisher.js";
import {
  VLLM_DEFAULT_BLOCK_SIZE,
  VLLM_DEFAULT_HASH_ALGORITHM,
  type ConnectorName,
  type KvEventsOptions,
  type KvEventsRecord,
  type KvTransferConfig,
  type VllmWorkerConfig,
  type WorkerRecord,
  type WorkerRole,
} from "./config.js";

export interface CommandLine {
  /** The binary (`command[0]`). */
  command: string;
  /** Everything after the binary: the command's leading args, the model, the flags, extraArgs. */
  args: string[];
  /** Variables to set on top of the inherited environment. */
  env: Record<string, string>;
}

const ROLES: readonly WorkerRole[] = ["aggregated", "prefill", "decode"];
const CONNECTORS: readonly ConnectorName[] = ["nixl", "lmcache", "kvbm", "none"];
const KVBM_MODULE = "kvbm.vllm_integration.connector";

/** A config with its defaults filled in and checked; what every other function works from. */
export interface ResolvedWorkerConfig extends VllmWorkerConfig {
  id: string;
  host: string;
  advertiseHost: string;
  role: WorkerRole;
  connectors: ConnectorName[];
  dataParallelSize: number;
  /** Ranks hosted by this process. */
  dpRanks: number[];
  /** The rank given with `--data-parallel-rank` (external layout), else null. */
  externalDpRank: number | null;
  command: readonly string[];
}

/** Fills in defaults and validates; throws InvalidConfigError naming the field. */
export function resolveWorkerConfig(config: VllmWorkerConfig): ResolvedWorkerConfig {
  if (typeof config.model !== "string" || config.model.length === 0) throw new InvalidConfigError("worker config: 'model' is required");
  checkPort("port", config.port);
  const role = config.role ?? "aggregated";
  if (!ROLES.includes(role)) throw new InvalidConfigError(`worker config: 'role' must be one of ${ROLES.join(", ")}: got '${String(role)}'`);
  const host = config.host ?? "127.0.0.1";
  const advertiseHost = config.advertiseHost ?? (isWildcardHost(host) ? "127.0.0.1" : host);
  const id = config.id ?? `${role}-${config.port}`;
  if (!/^[A-Za-z0-9][A-Za-z0-9._:@-]*$/.test(id)) throw new InvalidConfigError(`worker config: invalid id '${id}' (letters, digits, . _ : @ -)`);

  const connectors = normalizeConnectors(config.connector ?? (role === "aggregated" ? "none" : "nixl"));
  for (const [field, value] of [
    ["blockSize", config.blockSize],
    ["numGpuBlocksOverride", config.numGpuBlocksOverride],
    ["maxModelLen", config.maxModelLen],
  ] as const) {
    if (value !== undefined && (!Number.isInteger(value) || value <= 0)) {
      throw new InvalidConfigError(`worker config: '${field}' must be a positive integer: got ${String(value)}`);
    }
  }
  if (config.gpuMemoryUtilization !== undefined && !(config.gpuMemoryUtilization > 0 && config.gpuMemoryUtilization <= 1)) {
    throw new InvalidConfigError(`worker config: 'gpuMemoryUtilization' must be in (0, 1]: got ${config.gpuMemoryUtilization}`);
  }
  if (config.nixlSideChannelPort !== undefined) checkPort("nixlSideChannelPort", config.nixlSideChannelPort);

  const dp = config.dataParallel ?? { size: 1 };
  if (!Number.isInteger(dp.size) || dp.size < 1) throw new InvalidConfigError(`worker config: 'dataParallel.size' must be a positive integer: got ${dp.size}`);
  let dpRanks: number[];
  let externalDpRank: number | null = null;
  if (dp.rank !== undefined) {
    if (!Number.isInteger(dp.rank) || dp.rank < 0 || dp.rank >= dp.size) {
      throw new InvalidConfigError(`worker config: 'dataParallel.rank' must be in [0, ${dp.size}): got ${dp.rank}`);
    }
    externalDpRank = dp.rank;
    dpRanks = [dp.rank];
  } else {
    dpRanks = Array.from({ length: dp.size }, (_, r) => r);
  }

  if (config.kvEvents) {
    const ev = config.kvEvents;
    if (typeof ev.endpoint !== "string" || ev.endpoint.length === 0) throw new InvalidConfigError("worker config: 'kvEvents.endpoint' is required");
    if (ev.bufferSteps !== undefined && (!Number.isInteger(ev.bufferSteps) || ev.bufferSteps <= 0)) {
      throw new InvalidConfigError(`worker config: 'kvEvents.bufferSteps' must be a positive integer: got ${ev.bufferSteps}`);
    }
    // vLLM raises for a rank > 0 on an endpoint it cannot offset; fail here instead.
    for (const r of dpRanks) {
      endpointForRank(ev.endpoint, r);
      if (ev.replayEndpoint) endpointForRank(ev.replayEndpoint, r);
    }
  }
  const command = config.command ?? ["vllm", "serve"];
  if (command.length === 0 || typeof command[0] !== "string" || command[0].length === 0) {
    throw new InvalidConfigError("worker config: 'command' must name a binary");
  }
  for (const a of config.extraArgs ?? []) {
    if (typeof a !== "string") throw new InvalidConfigError(`worker config: 'extraArgs' must be strings: got ${JSON.stringify(a)}`);
  }
  // Derive the transfer config once so that a bad connector/role pair fails here.
  if (!config.kvTransferConfig) kvTransferConfigFor(connectors, role, { port: config.port });
  return {
    ...config,
    id,
    host,
    advertiseHost,
    role,
    connectors,
    dataParallelSize: dp.size,
    dpRanks,
    externalDpRank,
    command,
  };
}

/** The `vllm serve` command line of a worker (see the module comment for the connector table). */
export function buildCommandLine(config: VllmWorkerConfig): CommandLine {
  const c = resolveWorkerConfig(config);
  const [command, ...lead] = c.command as [string, ...string[]];
  const args = [...lead, c.model, "--host", c.host, "--port", String(c.port)];
  if (c.servedModelName !== undefined) args.push("--served-model-name", c.servedModelName);
  if (c.blockSize !== undefined) args.push("--block-size", String(c.blockSize));
  const prefixCaching = c.enablePrefixCaching ?? (c.kvEvents ? true : undefined);
  if (prefixCaching === true) args.push("--enable-prefix-caching");
  if (prefixCaching === false) args.push("--no-enable-prefix-caching");
  if (c.prefixCachingHashAlgo !== undefined) args.push("--prefix-caching-hash-algo", c.prefixCachingHashAlgo);
  if (c.numGpuBlocksOverride !== undefined) args.push("--num-gpu-blocks-override", String(c.numGpuBlocksOverride));
  if (c.gpuMemoryUtilization !== undefined) args.push("--gpu-memory-utilization", String(c.gpuMemoryUtilization));
  if (c.maxModelLen !== undefined) args.push("--max-model-len", String(c.maxModelLen));
  if (c.enablePromptEmbeds === true) args.push("--enable-prompt-embeds");
  if (c.dtype !== undefined) args.push("--dtype", c.dtype);
  if (c.dataParallelSize > 1 || c.externalDpRank !== null) args.push("--data-parallel-size", String(c.dataParallelSize));
  if (c.externalDpRank !== null) args.push("--data-parallel-rank", String(c.externalDpRank));
  if (c.kvEvents) args.push("--kv-events-config", JSON.stringify(kvEventsConfigFor(c.kvEvents)));
  const transfer = c.kvTransferConfig ?? kvTransferConfigFor(c.connectors, c.role, { port: c.port });
  if (transfer) args.push("--kv-transfer-config", JSON.stringify(transfer));
  args.push(...(c.extraArgs ?? []));

  const env: Record<string, string> = { ...(c.env ?? {}) };
  if (c.pythonHashSeed !== undefined) env["PYTHONHASHSEED"] = String(c.pythonHashSeed);
  if (c.nixlSideChannelPort !== undefined) env["VLLM_NIXL_SIDE_CHANNEL_PORT"] = String(c.nixlSideChannelPort);
  return { command, args, env };
}

/** `--kv-events-config` JSON (docs/vllm-kv-events.md, section 7): unset fields left to vLLM. */
export function kvEventsConfigFor(options: KvEventsOptions): Record<string, unknown> {
  const json: Record<string, unknown> = { enable_kv_cache_events: true, publisher: "zmq", endpoint: options.endpoint };
  if (options.replayEndpoint !== undefined) json["replay_endpoint"] = options.replayEndpoint;
  if (options.topic !== undefined) json["topic"] = options.topic;
  if (options.bufferSteps !== undefined) json["buffer_steps"] = options.bufferSteps;
  if (options.hwm !== undefined) json["hwm"] = options.hwm;
  return json;
}

/**
 * `--kv-transfer-config` for a connector list and role, or null for none. `port` makes the
 * LMCache RPC name unique per worker on a host.
 */
export function kvTransferConfigFor(
  connector: ConnectorName | readonly ConnectorName[],
  role: WorkerRole,
  options: { port?: number } = {},
): KvTransferConfig | null {
  const list = normalizeConnectors(connector);
  if (list.length === 0) {
    if (role !== "aggregated") throw new InvalidConfigError(`a ${role} worker needs a KV connector that transfers KV blocks (nixl or lmcache)`);
    return null;
  }
  if (role !== "aggregated" && !list.includes("nixl") && !list.includes("lmcache")) {
    throw new InvalidConfigError(`a ${role} worker needs a KV connector that transfers KV blocks (nixl or lmcache): got ${list.join(", ")}`);
  }
  if (list.length === 1) {
    const only = list[0]!;
    if (only === "lmcache" && role !== "aggregated") {
      const producer = role === "prefill";
      return {
        kv_connector: "LMCacheConnectorV1",
        kv_role: producer ? "kv_producer" : "kv_consumer",
        kv_connector_extra_config: {
          discard_partial_chunks: false,
          lmcache_rpc_port: `${producer ? "producer" : "consumer"}${options.port ?? 1}`,
        },
      };
    }
    return singleConnector(only);
  }
  const connectors = list.map(singleConnector);
  if (list.includes("kvbm")) {
    return {
      kv_connector: "PdConnector",
      kv_role: "kv_both",
      kv_connector_extra_config: { connectors },
      kv_connector_module_path: KVBM_MODULE,
    };
  }
  return { kv_connector: "MultiConnector", kv_role: "kv_both", kv_connector_extra_config: { connectors } };
}

function singleConnector(name: Exclude<ConnectorName, "none">): KvTransferConfig {
  switch (name) {
    case "nixl":
      return { kv_connector: "NixlConnector", kv_role: "kv_both" };
    case "lmcache":
      return { kv_connector: "LMCacheConnectorV1", kv_role: "kv_both" };
    case "kvbm":
      return { kv_connector: "DynamoConnector", kv_connector_module_path: KVBM_MODULE, kv_role: "kv_both" };
  }
}

function normalizeConnectors(connector: ConnectorName | readonly ConnectorName[]): Exclude<ConnectorName, "none">[] {
  const list = typeof connector === "string" ? [connector] : [...connector];
  for (const c of list) {
    if (!CONNECTORS.includes(c)) throw new InvalidConfigError(`unknown KV connector '${String(c)}' (expected ${CONNECTORS.join(", ")})`);
  }
  if (list.includes("none") && list.length > 1) throw new InvalidConfigError(`KV connector 'none' cannot be combined with others: ${list.join(", ")}`);
  const out: Exclude<ConnectorName, "none">[] = [];
  for (const c of list) if (c !== "none" && !out.includes(c)) out.push(c);
  return out;
}

/**
 * The worker's registry record. `hashSeed` is the PYTHONHASHSEED the process actually sees
 * (config first, then the inherited environment passed in); `engine` carries what the engine
 * reported about itself (vllm:cache_config_info), which wins over defaults.
 */
export function workerRecordFor(
  config: VllmWorkerConfig,
  runtime: {
    inheritedHashSeed?: string | null;
    engine?: { blockSize?: number; numGpuBlocks?: number; hashAlgorithm?: string };
  } = {},
): WorkerRecord {
  const c = resolveWorkerConfig(config);
  const env = buildCommandLine(config).env;
  const kvEvents: KvEventsRecord | null = c.kvEvents
    ? {
        endpoints: c.dpRanks.map((r) => connectableEndpoint(endpointForRank(c.kvEvents!.endpoint, r), c.advertiseHost)),
        replayEndpoints: c.kvEvents.replayEndpoint
          ? c.dpRanks.map((r) => connectableEndpoint(endpointForRank(c.kvEvents!.replayEndpoint!, r), c.advertiseHost))
          : null,
        topic: c.kvEvents.topic ?? "",
        // vLLM connects its PUB to such an endpoint: whoever subscribes must listen there.
        ...(isBindEndpoint(c.kvEvents.endpoint) ? {} : { subscriberBinds: true }),
      }
    : null;
  const engineAlgo = runtime.engine?.hashAlgorithm;
  return {
    id: c.id,
    model: c.servedModelName ?? c.model,
    role: c.role,
    url: `http://${formatHost(c.advertiseHost)}:${c.port}`,
    kvEvents,
    blockSize: c.blockSize ?? runtime.engine?.blockSize ?? VLLM_DEFAULT_BLOCK_SIZE,
    hashAlgorithm:
      c.prefixCachingHashAlgo ??
      (engineAlgo === "sha256" || engineAlgo === "sha256_cbor" || engineAlgo === "xxhash" || engineAlgo === "xxhash_cbor"
        ? engineAlgo
        : VLLM_DEFAULT_HASH_ALGORITHM),
    hashSeed: env["PYTHONHASHSEED"] ?? runtime.inheritedHashSeed ?? null,
    numGpuBlocks: c.numGpuBlocksOverride ?? runtime.engine?.numGpuBlocks ?? null,
    dataParallelSize: c.dataParallelSize,
    dpRanks: c.dpRanks,
    tokenizer: tokenizerFolderOf(c.model, c.extraArgs ?? []),
    ...promptEmbedsOf(c.enablePromptEmbeds, c.dtype, c.extraArgs ?? []),
  };
}

/** `enablePromptEmbeds` / `dtype` of the record, from the config or the extra arguments. */
function promptEmbedsOf(enable: boolean | undefined, dtype: string | undefined, args: readonly string[]): Pick<WorkerRecord, "enablePromptEmbeds" | "dtype"> {
  const out: Pick<WorkerRecord, "enablePromptEmbeds" | "dtype"> = {};
  if (enable === true || args.includes("--enable-prompt-embeds")) out.enablePromptEmbeds = true;
  const i = args.indexOf("--dtype");
  const d = dtype ?? (i >= 0 ? args[i + 1] : args.find((a) => a.startsWith("--dtype="))?.slice("--dtype=".length));
  if (d !== undefined && d !== "auto") out.dtype = d;
  return out;
}

/**
 * The tokenizer folder vLLM will load, when it is a local folder the gateway can load too: the
 * `--tokenizer` argument, else the model itself when it is a folder with a tokenizer.json (vLLM's
 * default). Hub names are left out (null): the gateway cannot fetch them.
 */
export function tokenizerFolderOf(model: string, args: readonly string[]): string | null {
  let flag: string | undefined;
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (a === "--tokenizer") flag = args[i + 1];
    else if (a.startsWith("--tokenizer=")) flag = a.slice("--tokenizer=".length);
  }
  const candidate = flag ?? model;
  return candidate && existsSync(join(candidate, "tokenizer.json")) ? candidate : null;
}

/** The base URL's host part (IPv6 in brackets). */
export function formatHost(host: string): string {
  return host.includes(":") && !host.startsWith("[") ? `[${host}]` : host;
}

export function isWildcardHost(host: string): boolean {
  return host === "0.0.0.0" || host === "::" || host === "[::]" || host === "*" || host === "";
}

/** `tcp://*:5557` -> `tcp://<host>:5557` (what a subscriber connects to); others unchanged. */
export function connectableEndpoint(endpoint: string, host: string): string {
  const m = /^tcp:\/\/(.*):(\d+)$/.exec(endpoint);
  if (!m || !isWildcardHost(m[1]!)) return endpoint;
  return `tcp://${formatHost(host)}:${m[2]}`;
}

function checkPort(field: string, port: unknown): void {
  if (typeof port !== "number" || !Number.isInteger(port) || port < 1 || port > 65535) {
    throw new InvalidConfigError(`worker config: '${field}' must be a port in [1, 65535]: got ${String(port)}`);
  }
}

/**
 * The command that runs the mocker through the same path as vLLM:
 * `[process.execPath, "<package>/dist/cli.mjs", "mock"]`. Finds the built CLI next to this module
 * (the published bundle) or in the package's dist/ (running from source); throws
 * InvalidConfigError when it has not been built (`npm run build:ts`).
 */
export function mockerCommand(): string[] {
  return [process.execPath, kvrouteCliPath(), "mock"];
}

let cliPath: string | undefined;

export function kvrouteCliPath(): string {
  if (cliPath) return cliPath;
  const here = dirname(fileURLToPath(import.meta.url));
  const beside = join(here, "cli.mjs");
  if (existsSync(beside)) return (cliPath = beside);
  for (let dir = here; ; ) {
    const pkg = join(dir, "package.json");
    if (existsSync(pkg) && isKvroutePackage(pkg)) {
      const built = join(dir, "dist", "cli.mjs");
      if (existsSync(built)) return (cliPath = built);
      throw new InvalidConfigError(`the kvroute CLI is not built (${built} is missing): run 'npm run build:ts'`);
    }
    const parent = dirname(dir);
    if (parent === dir) break;
    dir = parent;
  }
  throw new InvalidConfigError(`cannot find the kvroute CLI (dist/cli.mjs) from ${here}`);
}

function isKvroutePackage(path: string): boolean {
  try {
    return (JSON.parse(readFileSync(path, "utf8")) as { name?: unknown }).name === "kvroute";
  } catch {
    return false;
  }
}
