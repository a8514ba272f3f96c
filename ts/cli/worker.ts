/**
 * `kvroute worker`: starts one vLLM (or mocker) worker, or a launch topology, supervises it
 * (health, restarts, logs with a `[worker-id]` prefix on stderr), prints each worker's record as a
 * JSON line on stdout once all are healthy (and again when one comes back after a restart), and
 * stops everything on SIGINT/SIGTERM (draining first with --drain).
 */
import { KvrouteError } from "../errors.js";
import type { EngineHashAlgorithm } from "../core/block-hasher.js";
import { ENGINE_HASH_ALGORITHMS } from "../core/block-hasher.js";
import {
  mockerCommand,
  planTopology,
  TOPOLOGY_PRESETS,
  WorkerGroup,
  type ConnectorName,
  type TopologyOptions,
  type TopologyPreset,
  type VllmWorkerConfig,
  type WorkerRole,
} from "../workers/index.js";
import { parseCommandArgs, positiveInt, UsageError } from "./args.js";
import { loadGatewayConfig, type GatewayConfig } from "../config/index.js";
import { openWorkerFleet, type WorkerFleet } from "../fleet/worker-fleet.js";

const HELP = `Usage: kvroute worker [options] [-- <engine args>]

Starts vLLM workers (or mocker workers with the same flags), waits until each answers /health,
prints one JSON line per worker record on stdout, restarts crashed workers with backoff, and
stops them all (SIGTERM, then SIGKILL) on SIGINT/SIGTERM. Engine output goes to stderr with a
[worker-id] prefix. Arguments after -- are passed verbatim to every engine.

What to start:
  --preset P              ${TOPOLOGY_PRESETS.join(" | ")} (Dynamo's launch scripts); without it, one worker
  --workers N             aggregated workers (agg, agg-router) or DP size (dp)
  --prefill-workers N     (disagg presets; default --workers, else 1 / 2)
  --decode-workers N      (disagg presets; default --workers, else 1 / 2)
  --engine E              vllm | mock (default vllm; mock runs 'kvroute mock')
  --model M               default Qwen/Qwen3-0.6B
  --served-model-name M

Ports (a topology allocates consecutive ones from these):
  --host H                --host of every engine (default 127.0.0.1)
  --advertise-host H      host the router uses (default --host, 127.0.0.1 for 0.0.0.0)
  --port N                HTTP port (default 8000 for one worker, 8100 for a preset)
  --event-port N          KV-event PUB port, binds tcp://*:N (default 5557 for router presets;
                          one worker: KV events only when given)
  --replay-port N         KV-event replay port (default: after the PUB ports / none)
  --no-kv-events          presets: no KV events
  --topic T               KV-event topic (default "")

Engine:
  --role R                one worker: aggregated | prefill | decode (default aggregated)
  --id ID                 one worker: its id (default <role>-<port>)
  --connector C[,C]       ${["nixl", "lmcache", "kvbm", "none"].join(" | ")} (default none; nixl for prefill/decode)
  --block-size N          --block-size
  --hash-algo A           --prefix-caching-hash-algo: ${ENGINE_HASH_ALGORITHMS.join(" | ")}
  --hash-seed S           PYTHONHASHSEED (presets default 0, as Dynamo's scripts)
  --num-gpu-blocks N      --num-gpu-blocks-override
  --max-model-len N
  --gpu-memory-utilization F
  --data-parallel-size N
  --data-parallel-rank R  one worker: host only rank R (vLLM's external DP mode)
  --dp-layout L           presets: internal | external (default internal for mock, external for vllm)
  --speedup X             mock only: simulated time runs X times faster
  --no-gpu-assignment     vllm presets: do not set CUDA_VISIBLE_DEVICES per worker

Fleet mode (docs/fleet.md; credentials as KVROUTE_FLEET_* variables, see kvroute serve --help):
  --registry etcd://H:P   register each worker in etcd once healthy, under a lease (etcds:// for TLS)
  --bus nats://H:P        relay each worker's KV events onto the NATS JetStream stream
  --namespace NS          fleet namespace (default "default")
  --lease-ttl S           lease TTL of each record (default 10)

Supervision:
  --max-restarts N        consecutive restarts after a crash before giving up (default 5)
  --start-timeout S       seconds to become healthy (default 600)
  --drain S               on SIGINT/SIGTERM, drain for up to S seconds before stopping (default 0)
  --stop-grace S          seconds between SIGTERM and SIGKILL (default 10)
  --quiet                 do not print engine output

Exit codes: 0 stopped by a signal, 1 a worker failed to start or kept crashing, 2 bad usage.`;

export async function runWorker(argv: string[]): Promise<number> {
  const dashDash = argv.indexOf("--");
  const own = dashDash >= 0 ? argv.slice(0, dashDash) : argv;
  const passthrough = dashDash >= 0 ? argv.slice(dashDash + 1) : [];
  let group: WorkerGroup;
  let drainSeconds: number;
  let graceMs: number;
  let fleetConfig: GatewayConfig | null = null;
  let groupOptions: ConstructorParameters<typeof WorkerGroup>[1];
  let planned: VllmWorkerConfig[];
  try {
    const { values: v } = parseCommandArgs(own, {
      preset: { type: "string" },
      workers: { type: "string" },
      "prefill-workers": { type: "string" },
      "decode-workers": { type: "string" },
      engine: { type: "string" },
      model: { type: "string" },
      "served-model-name": { type: "string" },
      host: { type: "string" },
      "advertise-host": { type: "string" },
      port: { type: "string" },
      "event-port": { type: "string" },
      "replay-port": { type: "string" },
      "no-kv-events": { type: "boolean" },
      topic: { type: "string" },
      role: { type: "string" },
      id: { type: "string" },
      connector: { type: "string" },
      "block-size": { type: "string" },
      "hash-algo": { type: "string" },
      "hash-seed": { type: "string" },
      "num-gpu-blocks": { type: "string" },
      "max-model-len": { type: "string" },
      "gpu-memory-utilization": { type: "string" },
      "data-parallel-size": { type: "string" },
      "data-parallel-rank": { type: "string" },
      "dp-layout": { type: "string" },
      speedup: { type: "string" },
      "no-gpu-assignment": { type: "boolean" },
      "max-restarts": { type: "string" },
      "start-timeout": { type: "string" },
      drain: { type: "string" },
      "stop-grace": { type: "string" },
      registry: { type: "string" },
      bus: { type: "string" },
      namespace: { type: "string" },
      "lease-ttl": { type: "string" },
      quiet: { type: "boolean" },
      help: { type: "boolean", short: "h" },
    });
    if (v.help) {
      console.log(HELP);
      return 0;
    }
    const engine = v.engine ?? "vllm";
    if (engine !== "vllm" && engine !== "mock") throw new UsageError(`--engine must be vllm or mock: got '${engine}'`);
    const optInt = (flag: string, value: string | undefined) => (value === undefined ? undefined : positiveInt(flag, value));
    const seconds = (flag: string, value: string | undefined, fallback: number) => {
      if (value === undefined) return fallback;
      const n = Number(value);
      if (!Number.isFinite(n) || n < 0) throw new UsageError(`--${flag} must be a number of seconds >= 0: got '${value}'`);
      return n;
    };
    const port = (flag: string, value: string | undefined) => {
      if (value === undefined) return undefined;
      const n = Number(value);
      if (!Number.isInteger(n) || n < 1 || n > 65535) throw new UsageError(`--${flag} must be a port in [1, 65535]: got '${value}'`);
      return n;
    };
    const hashAlgo = v["hash-algo"];
    if (hashAlgo !== undefined && !(ENGINE_HASH_ALGORITHMS as readonly string[]).includes(hashAlgo)) {
      throw new UsageError(`--hash-algo must be one of ${ENGINE_HASH_ALGORITHMS.join(", ")}: got '${hashAlgo}'`);
    }
    const connector = v.connector?.split(",").map((c) => c.trim()) as ConnectorName[] | undefined;
    const gpuMem = v["gpu-memory-utilization"] === undefined ? undefined : Number(v["gpu-memory-utilization"]);
    const speedup = v.speedup === undefined ? undefined : Number(v.speedup);
    if (speedup !== undefined && !(speedup > 0)) throw new UsageError(`--speedup must be a positive number: got '${v.speedup}'`);
    if (speedup !== undefined && engine !== "mock") throw new UsageError("--speedup needs --engine mock");
    const maxRestarts = v["max-restarts"] === undefined ? 5 : Number(v["max-restarts"]);
    if (!Number.isInteger(maxRestarts) || maxRestarts < 0) throw new UsageError(`--max-restarts must be an integer >= 0: got '${v["max-restarts"]}'`);
    drainSeconds = seconds("drain", v.drain, 0);
    const fleetOverrides = { registry: v.registry, bus: v.bus, "fleet.namespace": v.namespace, "fleet.leaseTtlSeconds": v["lease-ttl"] };
    const fleet = loadGatewayConfig({
      file: undefined,
      env: { ...process.env, KVROUTE_CONFIG: undefined },
      overrides: fleetOverrides,
      overrideSources: { registry: "--registry", bus: "--bus", "fleet.namespace": "--namespace", "fleet.leaseTtlSeconds": "--lease-ttl" },
    });
    if (fleet.registry || fleet.bus) fleetConfig = fleet;
    graceMs = seconds("stop-grace", v["stop-grace"], 10) * 1000;

    let configs: VllmWorkerConfig[];
    if (v.preset !== undefined) {
      if (!(TOPOLOGY_PRESETS as readonly string[]).includes(v.preset)) {
        throw new UsageError(`--preset must be one of ${TOPOLOGY_PRESETS.join(", ")}: got '${v.preset}'`);
      }
      for (const f of ["role", "id", "data-parallel-rank"] as const) {
        if (v[f] !== undefined) throw new UsageError(`--${f} is for one worker, not with --preset`);
      }
      const dpLayout = v["dp-layout"];
      if (dpLayout !== undefined && dpLayout !== "internal" && dpLayout !== "external") {
        throw new UsageError(`--dp-layout must be internal or external: got '${dpLayout}'`);
      }
      const options: TopologyOptions = {
        engine,
        model: v.model,
        servedModelName: v["served-model-name"],
        workers: optInt("workers", v.workers),
        prefillWorkers: optInt("prefill-workers", v["prefill-workers"]),
        decodeWorkers: optInt("decode-workers", v["decode-workers"]),
        dataParallelSize: optInt("data-parallel-size", v["data-parallel-size"]),
        dpLayout,
        host: v.host,
        advertiseHost: v["advertise-host"],
        basePort: port("port", v.port),
        baseEventPort: port("event-port", v["event-port"]),
        baseReplayPort: port("replay-port", v["replay-port"]),
        kvEvents: v["no-kv-events"] ? false : undefined,
        topic: v.topic,
        connector,
        blockSize: optInt("block-size", v["block-size"]),
        prefixCachingHashAlgo: hashAlgo as EngineHashAlgorithm | undefined,
        pythonHashSeed: v["hash-seed"],
        numGpuBlocksOverride: optInt("num-gpu-blocks", v["num-gpu-blocks"]),
        maxModelLen: optInt("max-model-len", v["max-model-len"]),
        gpuMemoryUtilization: gpuMem,
        speedup,
        extraArgs: passthrough,
        assignGpus: v["no-gpu-assignment"] ? false : undefined,
      };
      configs = planTopology(v.preset as TopologyPreset, dropUndefined(options));
    } else {
      for (const f of ["workers", "prefill-workers", "decode-workers", "dp-layout", "no-kv-events"] as const) {
        if (v[f] !== undefined) throw new UsageError(`--${f} needs --preset`);
      }
      const role = (v.role ?? "aggregated") as WorkerRole;
      if (!["aggregated", "prefill", "decode"].includes(role)) throw new UsageError(`--role must be aggregated, prefill or decode: got '${role}'`);
      const eventPort = port("event-port", v["event-port"]);
      const replayPort = port("replay-port", v["replay-port"]);
      if (replayPort !== undefined && eventPort === undefined) throw new UsageError("--replay-port needs --event-port");
      const dpSize = optInt("data-parallel-size", v["data-parallel-size"]);
      const dpRank = v["data-parallel-rank"] === undefined ? undefined : Number(v["data-parallel-rank"]);
      const extraArgs = [...(speedup !== undefined ? ["--speedup", String(speedup)] : []), ...passthrough];
      const config: VllmWorkerConfig = dropUndefined({
        id: v.id,
        model: v.model ?? "Qwen/Qwen3-0.6B",
        servedModelName: v["served-model-name"],
        host: v.host,
        advertiseHost: v["advertise-host"],
        port: port("port", v.port) ?? 8000,
        role,
        connector,
        kvEvents:
          eventPort === undefined
            ? undefined
            : dropUndefined({
                endpoint: `tcp://*:${eventPort}`,
                replayEndpoint: replayPort === undefined ? undefined : `tcp://*:${replayPort}`,
                topic: v.topic,
              }),
        blockSize: optInt("block-size", v["block-size"]),
        prefixCachingHashAlgo: hashAlgo as EngineHashAlgorithm | undefined,
        pythonHashSeed: v["hash-seed"],
        dataParallel: dpSize === undefined && dpRank === undefined ? undefined : dropUndefined({ size: dpSize ?? 1, rank: dpRank }),
        numGpuBlocksOverride: optInt("num-gpu-blocks", v["num-gpu-blocks"]),
        maxModelLen: optInt("max-model-len", v["max-model-len"]),
        gpuMemoryUtilization: gpuMem,
        extraArgs,
        command: engine === "mock" ? mockerCommand() : undefined,
      });
      configs = [config];
    }
    groupOptions = {
      logger: v.quiet ? null : undefined,
      maxRestarts,
      startTimeoutMs: seconds("start-timeout", v["start-timeout"], 600) * 1000,
      stopGraceMs: graceMs,
    };
    planned = configs;
    group = new WorkerGroup(configs, groupOptions);
  } catch (err) {
    if (err instanceof UsageError || err instanceof KvrouteError) {
      console.error(`kvroute worker: ${err.message}\n\nRun 'kvroute worker --help' for the options.`);
      return 2;
    }
    throw err;
  }

  // Fleet mode: etcd and NATS must take the credentials before any engine starts.
  let fleet: WorkerFleet | null = null;
  if (fleetConfig) {
    try {
      fleet = await openWorkerFleet(fleetConfig, (m) => console.error(`kvroute worker: ${m}`));
    } catch (err) {
      console.error(`kvroute worker: ${err instanceof Error ? err.message : String(err)}`);
      return 1;
    }
    group = new WorkerGroup(planned, { ...groupOptions, registry: fleet.hook });
  }

  let stopping = false;
  let exitCode = 0;
  let wake: () => void = () => {};
  const done = new Promise<void>((resolve) => (wake = resolve));
  const onSignal = (signal: NodeJS.Signals) => {
    if (stopping) {
      // A second signal: do not wait for graceful shutdown any more.
      console.error(`kvroute worker: ${signal} again, killing the workers`);
      for (const w of group.workers) void w.stop({ graceMs: 0 });
      return;
    }
    stopping = true;
    console.error(`kvroute worker: ${signal}, stopping ${group.workers.length} worker(s)`);
    wake();
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  group.on("workerFailed", ({ error }) => {
    console.error(`kvroute worker: ${error.message}`);
    exitCode = 1;
    wake();
  });
  group.on("workerRestarted", ({ record }) => console.log(JSON.stringify(record)));
  try {
    const startPromise = group.start();
    startPromise.catch(() => {}); // handled below, or moot once a signal arrived
    await Promise.race([startPromise, done]);
    if (!stopping) {
      for (const record of await startPromise) console.log(JSON.stringify(record));
      await done;
    }
  } catch (err) {
    if (!stopping) {
      console.error(`kvroute worker: ${err instanceof Error ? err.message : String(err)}`);
      exitCode = 1;
    }
  } finally {
    if (drainSeconds > 0 && exitCode === 0) await group.drain({ deadlineMs: drainSeconds * 1000 });
    await group.stop({ graceMs });
    await fleet?.close();
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
  }
  return exitCode;
}

function dropUndefined<T extends object>(value: T): T {
  return Object.fromEntries(Object.entries(value).filter(([, x]) => x !== undefined)) as T;
}
