/**
 * Launch topologies, after Dynamo's vLLM launch scripts (examples/backends/vllm/launch/*.sh),
 * worker side only (the gateway in front is `kvroute up`):
 *
 * | preset          | workers                                   | connector | KV events |
 * |-----------------|-------------------------------------------|-----------|-----------|
 * | `agg`           | N aggregated (agg.sh: 1)                  | none      | off       |
 * | `agg-router`    | N aggregated (agg_router.sh: 2)           | none      | on        |
 * | `disagg`        | P prefill + D decode (disagg.sh: 1 + 1)   | nixl      | off       |
 * | `disagg-router` | P prefill + D decode (disagg_router.sh: 2 + 2) | nixl | on        |
 * | `dp`            | one DP group of size N (dep.sh: 4)        | none      | on        |
 *
 * Ports, in group order (prefill workers before decode workers): HTTP `basePort`, +1, ...;
 * KV-event PUB endpoints `tcp://<host>:<baseEventPort + k>` (`tcp://*:...` for a wildcard host)
 * where each worker (DP group) takes as many
 * ports as it has DP ranks, since vLLM offsets each rank's port by its rank; replay endpoints the
 * same, from `baseReplayPort` (default: right after the PUB ports). NIXL side-channel ports
 * likewise from `baseSideChannelPort`. Event sockets live where the workers' HTTP binds (`host`):
 * with a wildcard host vLLM binds its PUB on every interface; with a specific one its rule makes the
 * PUB connect, so the router's SUB binds `host:port` (the record's `subscriberBinds`) and nothing
 * listens on another address. The replay ROUTER always binds, at `host`. With `engine: "vllm"` each process gets its GPUs through
 * CUDA_VISIBLE_DEVICES (as the scripts do), unless `assignGpus` is false.
 *
 * DP layout: `internal` (one process, `--data-parallel-size N`, one HTTP port) or `external` (N
 * processes, `--data-parallel-rank r`, one HTTP port each, as dep.sh). Default: internal for the
 * mocker, external for vLLM.
 */
import { InvalidConfigError } from "../errors.js";
import type { EngineHashAlgorithm } from "../core/block-hasher.js";
import { formatHost, isWildcardHost, mockerCommand } from "./command-line.js";
import type { ConnectorName, VllmWorkerConfig, WorkerRole } from "./config.js";
import { WorkerGroup, type WorkerGroupOptions } from "./worker-group.js";


/** The model Dynamo's launch scripts serve, and `kvroute up`'s default. */
export const DEFAULT_TOPOLOGY_MODEL = "Qwen/Qwen3-0.6B";
export type TopologyPreset = "agg" | "agg-router" | "disagg" | "disagg-router" | "dp";
export const TOPOLOGY_PRESETS: readonly TopologyPreset[] = ["agg", "agg-router", "disagg", "disagg-router", "dp"];

export type EngineKind = "mock" | "vllm";

export interface TopologyOptions {
  /** Default "vllm". "mock" runs `kvroute mock` (mockerCommand()) with the same flags. */
  engine?: EngineKind;
  /** Default "Qwen/Qwen3-0.6B" (the model of Dynamo's scripts): DEFAULT_TOPOLOGY_MODEL. */
  model?: string;
  servedModelName?: string;
  /** Aggregated workers (agg, agg-router), or the DP size (dp). */
  workers?: number;
  prefillWorkers?: number;
  decodeWorkers?: number;
  /** DP size of every worker in agg/disagg presets (default 1); for `dp`, same as `workers`. */
  dataParallelSize?: number;
  dpLayout?: "internal" | "external";
  /** `--host`. Default "127.0.0.1". */
  host?: string;
  advertiseHost?: string;
  /** Default 8100 (8000 is left to the gateway). */
  basePort?: number;
  /** Default 5557 (vLLM's). */
  baseEventPort?: number;
  /** Default: right after the PUB ports. */
  baseReplayPort?: number;
  /** Override the preset's choice of KV events. */
  kvEvents?: boolean;
  /** Default "" (vLLM's). */
  topic?: string;
  bufferSteps?: number;
  /** Default 20096 (Dynamo's). */
  baseSideChannelPort?: number;
  /** Default: the preset's (nixl for prefill/decode). */
  connector?: ConnectorName | readonly ConnectorName[];
  blockSize?: number;
  prefixCachingHashAlgo?: EngineHashAlgorithm;
  /** Default "0", as Dynamo's scripts export PYTHONHASHSEED=0. */
  pythonHashSeed?: string | number;
  numGpuBlocksOverride?: number;
  maxModelLen?: number;
  gpuMemoryUtilization?: number;
  /** Mocker only: `--speedup`. */
  speedup?: number;
  extraArgs?: readonly string[];
  env?: Readonly<Record<string, string>>;
  /** Replaces the engine's command (`["vllm", "serve"]` or mockerCommand()). */
  command?: readonly string[];
  cwd?: string;
  /** vLLM only: set CUDA_VISIBLE_DEVICES per process. Default true for vllm. */
  assignGpus?: boolean;
  /** GPUs per DP rank when assigning (e.g. the tensor-parallel size). Default 1. */
  gpusPerRank?: number;
  /** Prefix of worker ids. Default "". */
  idPrefix?: string;
}

interface Slot {
  role: WorkerRole;
  id: string;
  dpSize: number;
  dpRank?: number;
  /** Index of the DP group (ports and GPUs are allocated per group). */
  group: number;
}

/** The worker configs of a preset (pure; launchTopology starts them). */
export function planTopology(preset: TopologyPreset, options: TopologyOptions = {}): VllmWorkerConfig[] {
  if (!TOPOLOGY_PRESETS.includes(preset)) throw new InvalidConfigError(`unknown topology '${String(preset)}' (expected ${TOPOLOGY_PRESETS.join(", ")})`);
  const engine = options.engine ?? "vllm";
  if (engine !== "mock" && engine !== "vllm") throw new InvalidConfigError(`unknown engine '${String(engine)}' (expected mock or vllm)`);
  const count = (name: string, value: number | undefined, fallback: number) => {
    const n = value ?? fallback;
    if (!Number.isInteger(n) || n < 1) throw new InvalidConfigError(`topology: '${name}' must be a positive integer: got ${String(n)}`);
    return n;
  };
  const prefix = options.idPrefix ?? "";
  const slots: Slot[] = [];
  let groups = 0;
  const addGroup = (role: WorkerRole, id: string, dpSize: number, layout: "internal" | "external") => {
    const group = groups++;
    if (dpSize > 1 && layout === "external") {
      for (let r = 0; r < dpSize; r++) slots.push({ role, id: `${id}-rank${r}`, dpSize, dpRank: r, group });
    } else {
      slots.push({ role, id, dpSize, group });
    }
  };
  const layout = options.dpLayout ?? (engine === "mock" ? "internal" : "external");
  if (layout !== "internal" && layout !== "external") throw new InvalidConfigError(`topology: 'dpLayout' must be internal or external: got ${String(layout)}`);
  const dpSize = count("dataParallelSize", options.dataParallelSize, 1);
  switch (preset) {
    case "agg":
    case "agg-router": {
      const n = count("workers", options.workers, preset === "agg" ? 1 : 2);
      for (let i = 0; i < n; i++) addGroup("aggregated", `${prefix}worker-${i}`, dpSize, layout);
      break;
    }
    case "disagg":
    case "disagg-router": {
      const fallback = preset === "disagg" ? 1 : 2;
      const p = count("prefillWorkers", options.prefillWorkers, options.workers ?? fallback);
      const d = count("decodeWorkers", options.decodeWorkers, options.workers ?? fallback);
      for (let i = 0; i < p; i++) addGroup("prefill", `${prefix}prefill-${i}`, dpSize, layout);
      for (let i = 0; i < d; i++) addGroup("decode", `${prefix}decode-${i}`, dpSize, layout);
      break;
    }
    case "dp": {
      const n = count("workers", options.workers ?? options.dataParallelSize, 4);
      addGroup("aggregated", `${prefix}dp`, n, layout);
      break;
    }
  }

  const host = options.host ?? "127.0.0.1";
  const basePort = options.basePort ?? 8100;
  const baseEventPort = options.baseEventPort ?? 5557;
  const eventPortsPerGroup = new Map<number, number>();
  const groupDp = new Map<number, number>();
  for (const s of slots) groupDp.set(s.group, s.dpSize);
  let offset = 0;
  for (let g = 0; g < groups; g++) {
    eventPortsPerGroup.set(g, offset);
    offset += groupDp.get(g)!;
  }
  const totalRanks = offset;
  const baseReplayPort = options.baseReplayPort ?? baseEventPort + totalRanks;
  const baseSideChannelPort = options.baseSideChannelPort ?? 20096;
  const events = options.kvEvents ?? (preset === "agg-router" || preset === "disagg-router" || preset === "dp");
  const assignGpus = options.assignGpus ?? engine === "vllm";
  const gpusPerRank = count("gpusPerRank", options.gpusPerRank, 1);
  const command = options.command ?? (engine === "mock" ? mockerCommand() : ["vllm", "serve"]);
  const extra = [...(options.extraArgs ?? [])];
  if (options.speedup !== undefined) {
    if (engine !== "mock") throw new InvalidConfigError("topology: 'speedup' is a mocker option (engine: mock)");
    extra.push("--speedup", String(options.speedup));
  }

  return slots.map((s, k): VllmWorkerConfig => {
    const groupOffset = eventPortsPerGroup.get(s.group)!;
    const env: Record<string, string> = { ...(options.env ?? {}) };
    if (assignGpus) {
      // Internal DP: the process drives all the group's ranks; external: its own rank's GPUs.
      const firstRank = groupOffset + (s.dpRank ?? 0);
      const ranksHere = s.dpRank === undefined ? s.dpSize : 1;
      const first = firstRank * gpusPerRank;
      env["CUDA_VISIBLE_DEVICES"] = Array.from({ length: ranksHere * gpusPerRank }, (_, i) => first + i).join(",");
    }
    const config: VllmWorkerConfig = {
      id: s.id,
      model: options.model ?? DEFAULT_TOPOLOGY_MODEL,
      host,
      port: basePort + k,
      role: s.role,
      pythonHashSeed: options.pythonHashSeed ?? "0",
      env,
      command,
      extraArgs: extra,
    };
    if (options.advertiseHost !== undefined) config.advertiseHost = options.advertiseHost;
    if (options.servedModelName !== undefined) config.servedModelName = options.servedModelName;
    if (options.connector !== undefined) config.connector = options.connector;
    if (options.blockSize !== undefined) config.blockSize = options.blockSize;
    if (options.prefixCachingHashAlgo !== undefined) config.prefixCachingHashAlgo = options.prefixCachingHashAlgo;
    if (options.numGpuBlocksOverride !== undefined) config.numGpuBlocksOverride = options.numGpuBlocksOverride;
    if (options.maxModelLen !== undefined) config.maxModelLen = options.maxModelLen;
    if (options.gpuMemoryUtilization !== undefined) config.gpuMemoryUtilization = options.gpuMemoryUtilization;
    if (options.cwd !== undefined) config.cwd = options.cwd;
    if (s.dpSize > 1) config.dataParallel = s.dpRank === undefined ? { size: s.dpSize } : { size: s.dpSize, rank: s.dpRank };
    if (events) {
      // The endpoint is the group's base: vLLM adds the rank (external ranks share it).
      const eventHost = isWildcardHost(host) ? "*" : formatHost(host);
      config.kvEvents = {
        endpoint: `tcp://${eventHost}:${baseEventPort + groupOffset}`,
        replayEndpoint: `tcp://${eventHost}:${baseReplayPort + groupOffset}`,
        topic: options.topic ?? "",
      };
      if (options.bufferSteps !== undefined) config.kvEvents.bufferSteps = options.bufferSteps;
    }
    const connectors = options.connector === undefined ? [] : typeof options.connector === "string" ? [options.connector] : options.connector;
    if (s.role !== "aggregated" || connectors.includes("nixl")) {
      config.nixlSideChannelPort = baseSideChannelPort + groupOffset;
    }
    return config;
  });
}

/**
 * Starts a preset as one WorkerGroup: resolves when every worker is healthy (records in
 * `group.records`), or rejects after stopping them all.
 */
export async function launchTopology(
  preset: TopologyPreset,
  options: TopologyOptions & { supervision?: WorkerGroupOptions } = {},
): Promise<WorkerGroup> {
  const group = new WorkerGroup(planTopology(preset, options), options.supervision);
  await group.start();
  return group;
}

