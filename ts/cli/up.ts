/**
 * `kvroute up <preset>`: a whole deployment on one machine, as Dynamo's vLLM launch scripts start
 * one (agg, agg-router, disagg, disagg-router, dp): the gateway on --port, then the workers of the
 * preset (vLLM or the mocker), each registering itself in the gateway's registry once healthy (so
 * the router follows their KV events and metrics). Ctrl-C stops the gateway, then every worker.
 */
import { loadGatewayConfig } from "../config/index.js";
import { KvrouteError } from "../errors.js";
import { startGateway, type RunningGateway } from "../gateway/server.js";
import { resolve } from "node:path";
import { Tokenizer } from "../tokenizer/tokenizer.js";
import { DEFAULT_TOPOLOGY_MODEL, findFreePortRange, launchTopology, planTopology, TOPOLOGY_PRESETS, type EngineKind, type TopologyOptions, type TopologyPreset, type WorkerGroup } from "../workers/index.js";
import { parseArgs } from "node:util";
import { accessHelp, ACCESS_OPTIONS, withAccessFlags } from "./access-flags.js";
import { positiveInt, UsageError } from "./args.js";
import { waitForSignal, warnUntokenized } from "./serve.js";
import { parsePlannerConfig, type PlannerConfig } from "../planner/config.js";
import { LocalConnector } from "../planner/local-connector.js";
import { sweepMockEngine } from "../planner/mock-profiler.js";
import type { PlannerLoop } from "../planner/planner-loop.js";
import { scaleProfileTime } from "../planner/profile.js";
import { startPlanner } from "../planner/start-planner.js";
import { PlannerMetrics } from "../planner/planner-metrics.js";
import type { WorkerKind } from "../planner/sla-planner.js";
import { readFileSync } from "node:fs";

const HELP = `Usage: kvroute up <preset> [options] [-- <engine args>]

Starts a deployment: the KV-aware gateway on --port and the workers of a preset, as Dynamo's vLLM
launch scripts do. Presets: ${TOPOLOGY_PRESETS.join(", ")}.
  agg            N aggregated workers, no KV events (the router routes blind)
  agg-router     N aggregated workers with KV events (KV-aware routing)
  disagg         prefill + decode workers (NIXL connector), no KV events
  disagg-router  prefill + decode workers with KV events
  dp             one data-parallel group of N ranks with KV events

  --workers N             aggregated workers, the DP size (dp), or prefill and decode workers each
  --prefill-workers N     disagg presets
  --decode-workers N      disagg presets
  --port P                gateway port (default 8000)
  --host H                where the gateway, the workers' HTTP and their KV-event and replay
                          sockets listen (default: workers and their events on 127.0.0.1, the
                          gateway on its configured host, 0.0.0.0 unless set)
  --engine E              mock | vllm (default mock)
  --router-mode M         kv | round-robin | random | least-loaded (default kv)
  --migration-limit N     default 0
  --model M               default Qwen/Qwen3-0.6B
  --tokenizer DIR         the model's tokenizer folder (Hugging Face: tokenizer.json...): the
                          gateway keys text and chat requests with it, and the workers get
                          --tokenizer DIR (vLLM's flag; the mocker tokenizes like vLLM with it)
  --base-port N           first worker HTTP port (default: free ports)
  --event-port N          first KV-event port (default: free ports)
  --block-size N          --block-size of every worker
  --num-gpu-blocks N      --num-gpu-blocks-override
  --speedup X             mock: simulated time runs X times faster
  --config FILE           gateway settings (JSON/YAML, as kvroute serve; its models are ignored)
  --registry etcd://H:P   fleet mode: the workers register in etcd (other gateways see them too)
  --bus nats://H:P        fleet mode: share request load with other gateway replicas over NATS
${accessHelp(26)}
  --planner KIND          sla | load | sla+load: a planner sizes the fleet (agg-router, disagg-router
                          presets); workers start and drain through the local connector
  --ttft-target MS        --planner: TTFT target
  --itl-target MS         --planner: ITL target
  --planner-profile PATH  --planner: the profile (default with --engine mock: a sweep of the mocker)
  --planner-config FILE   --planner: more settings (JSON, as kvroute planner --config)
  --quiet                 do not print engine output

Prints 'kvroute up: ready {json}' once every worker is healthy. Exit codes: 0 stopped by a
signal, 1 could not start, 2 bad usage.`;

export async function runUp(argv: string[]): Promise<number> {
  const dashDash = argv.indexOf("--");
  const own = dashDash >= 0 ? argv.slice(0, dashDash) : argv;
  const passthrough = dashDash >= 0 ? argv.slice(dashDash + 1) : [];
  let preset: TopologyPreset;
  let topology: TopologyOptions;
  let gatewayInput;
  let quiet: boolean;
  let tokenizer: Tokenizer | null = null;
  let model: string;
  let plannerConfig: PlannerConfig | null = null;
  try {
    let parsed;
    try {
      parsed = parseArgs({
        args: own,
        allowPositionals: true,
        strict: true,
        options: {
          workers: { type: "string" },
          "prefill-workers": { type: "string" },
          "decode-workers": { type: "string" },
          port: { type: "string" },
          host: { type: "string" },
          engine: { type: "string" },
          "router-mode": { type: "string" },
          "migration-limit": { type: "string" },
          model: { type: "string" },
          tokenizer: { type: "string" },
          "base-port": { type: "string" },
          "event-port": { type: "string" },
          "block-size": { type: "string" },
          "num-gpu-blocks": { type: "string" },
          speedup: { type: "string" },
          config: { type: "string" },
          planner: { type: "string" },
          "ttft-target": { type: "string" },
          "itl-target": { type: "string" },
          "planner-profile": { type: "string" },
          "planner-config": { type: "string" },
          registry: { type: "string" },
          bus: { type: "string" },
          ...ACCESS_OPTIONS,
          quiet: { type: "boolean" },
          help: { type: "boolean", short: "h" },
        },
      });
    } catch (err) {
      throw new UsageError(err instanceof Error ? err.message : String(err));
    }
    const { values, positionals } = parsed;
    if (values.help) {
      console.log(HELP);
      return 0;
    }
    if (positionals.length !== 1) throw new UsageError(`expected one preset (${TOPOLOGY_PRESETS.join(", ")})`);
    preset = positionals[0] as TopologyPreset;
    if (!TOPOLOGY_PRESETS.includes(preset)) throw new UsageError(`unknown preset '${preset}' (expected ${TOPOLOGY_PRESETS.join(", ")})`);
    const engine = (values.engine ?? "mock") as EngineKind;
    if (engine !== "mock" && engine !== "vllm") throw new UsageError(`--engine must be mock or vllm: got '${engine}'`);
    quiet = values.quiet === true;
    const overrides: Record<string, string | undefined> = {
      port: values.port ?? "8000",
      host: values.host,
      routerMode: values["router-mode"],
      migrationLimit: values["migration-limit"],
      registry: values.registry,
      bus: values.bus,
    };
    gatewayInput = loadGatewayConfig({
      file: values.config,
      overrides,
      overrideSources: { port: "--port", host: "--host", routerMode: "--router-mode", migrationLimit: "--migration-limit", registry: "--registry", bus: "--bus" },
    });
    gatewayInput = { ...withAccessFlags(gatewayInput, values), models: [] };
    topology = { engine };
    if (values.host !== undefined) topology.host = values.host;
    const int = (flag: string) => (values[flag as keyof typeof values] === undefined ? undefined : positiveInt(flag, values[flag as keyof typeof values] as string));
    if (values.workers !== undefined) topology.workers = int("workers");
    if (values["prefill-workers"] !== undefined) topology.prefillWorkers = int("prefill-workers");
    if (values["decode-workers"] !== undefined) topology.decodeWorkers = int("decode-workers");
    if (values.model !== undefined) topology.model = values.model;
    if (values["block-size"] !== undefined) topology.blockSize = int("block-size");
    if (values["num-gpu-blocks"] !== undefined) topology.numGpuBlocksOverride = int("num-gpu-blocks");
    if (values.speedup !== undefined) {
      const x = values.speedup === "inf" ? Infinity : Number(values.speedup);
      if (!(x > 0)) throw new UsageError(`--speedup must be > 0 or inf: got '${values.speedup}'`);
      topology.speedup = x;
    }
    model = topology.model ?? DEFAULT_TOPOLOGY_MODEL;
    const extraArgs = [...passthrough];
    if (values.tokenizer !== undefined) {
      const dir = resolve(values.tokenizer);
      tokenizer = Tokenizer.fromDir(dir);
      extraArgs.push("--tokenizer", dir);
    }
    if (extraArgs.length > 0) topology.extraArgs = extraArgs;
    topology.basePort = values["base-port"] !== undefined ? int("base-port") : undefined;
    topology.baseEventPort = values["event-port"] !== undefined ? int("event-port") : undefined;
    if (values.planner !== undefined) plannerConfig = upPlannerConfig(values, preset, topology);
  } catch (err) {
    if (err instanceof UsageError || err instanceof KvrouteError) {
      console.error(`kvroute up: ${err.message}\n\nRun 'kvroute up --help' for usage.`);
      return 2;
    }
    throw err;
  }

  let running: RunningGateway | null = null;
  let group: WorkerGroup | null = null;
  let planned: { loop: PlannerLoop; connector: LocalConnector } | null = null;
  const stopAll = async () => {
    await planned?.loop.stop();
    await running?.close();
    await group?.stop({ graceMs: 5000 });
    await planned?.connector.close();
  };
  const signal = waitForSignal();
  let interrupted = false;
  void signal.then(() => (interrupted = true));
  try {
    // The launched model is served for good: 503 (retry), not 404, while its workers restart.
    running = await startGateway(gatewayInput, { servedModels: [model], ...(tokenizer ? { tokenizers: { [model]: tokenizer } } : {}) });
    warnUntokenized("kvroute up", running.gateway.tokenizers.missing([model]));
    if (plannerConfig) {
      planned = await startPlannedFleet(preset, topology, plannerConfig, running, quiet);
      if (!interrupted) {
        const kinds = plannerConfig.mode === "aggregated" ? ["aggregated"] : ["prefill", "decode"];
        console.log(`kvroute up: ready ${JSON.stringify({ url: running.url, preset, routerMode: running.config.routerMode, planner: plannerConfig.planner, workers: running.registry.list().map((r) => ({ id: r.id, role: r.role, url: r.url })), kinds })}`);
        await signal;
      }
      console.error("kvroute up: stopping");
      await stopAll();
      return 0;
    }
    // One range of free ports: HTTP per process, then PUB + replay per DP rank, then NIXL side channels.
    const plan = planTopology(preset, { ...topology, basePort: 1, baseEventPort: 1 });
    const processes = plan.length;
    const ranks = plan.reduce((n, c) => n + (c.dataParallel && c.dataParallel.rank === undefined ? c.dataParallel.size : 1), 0);
    const base = await findFreePortRange(processes + 3 * ranks);
    topology.basePort ??= base;
    topology.baseEventPort ??= base + processes;
    topology.baseSideChannelPort = base + processes + 2 * ranks;
    const launching = launchTopology(preset, {
      ...topology,
      supervision: { registry: running.registry, logger: quiet ? null : undefined, maxRestarts: 3, startTimeoutMs: topology.engine === "mock" ? 60_000 : 600_000 },
    });
    group = await Promise.race([launching, signal.then(() => null)]);
    if (!group) {
      await launching.then((g) => g.stop({ graceMs: 2000 })).catch(() => {});
    }
  } catch (err) {
    console.error(`kvroute up: ${err instanceof Error ? err.message : String(err)}`);
    await stopAll();
    return 1;
  }
  if (!interrupted && group) {
    const workers = group.workers.map((w) => ({ id: w.id, role: w.config.role, url: w.url, dpRanks: w.record?.dpRanks ?? [] }));
    console.log(`kvroute up: ready ${JSON.stringify({ url: running.url, preset, routerMode: running.config.routerMode, workers })}`);
    await signal;
  }
  console.error("kvroute up: stopping");
  await stopAll();
  return 0;
}

/** `--planner` flags (and `--planner-config`) as a PlannerConfig for this deployment. */
function upPlannerConfig(values: Record<string, string | string[] | boolean | undefined>, preset: TopologyPreset, topology: TopologyOptions): PlannerConfig {
  if (preset !== "agg-router" && preset !== "disagg-router" && preset !== "agg" && preset !== "disagg") throw new UsageError(`--planner works with the agg, agg-router, disagg and disagg-router presets, not ${preset}`);
  let file: Record<string, unknown> = {};
  if (typeof values["planner-config"] === "string") {
    try {
      file = JSON.parse(readFileSync(values["planner-config"], "utf8")) as Record<string, unknown>;
    } catch (err) {
      throw new UsageError(`--planner-config: ${err instanceof Error ? err.message : String(err)}`);
    }
  }
  const num = (flag: string) => (typeof values[flag] === "string" ? Number(values[flag]) : undefined);
  const input: Record<string, unknown> = { ...file, planner: values.planner, mode: preset.startsWith("disagg") ? "disaggregated" : "aggregated", connector: "local" };
  if (num("ttft-target") !== undefined) input["ttftTargetMs"] = num("ttft-target");
  if (num("itl-target") !== undefined) input["itlTargetMs"] = num("itl-target");
  if (typeof values["planner-profile"] === "string") input["profile"] = values["planner-profile"];
  if (input["profile"] === undefined && values.planner !== "load") {
    if (topology.engine !== "mock") throw new UsageError("--planner with --engine vllm needs --planner-profile (kvroute profile --engine vllm writes one)");
    // The mocker's own engine, swept on its simulated clock, in wall time at its speedup.
    const swept = sweepMockEngine({ engine: { ...(topology.numGpuBlocksOverride ? { numGpuBlocks: topology.numGpuBlocksOverride } : {}), ...(topology.blockSize ? { blockSize: topology.blockSize } : {}) } });
    const speed = topology.speedup ?? 1;
    return parsePlannerConfig(input, "--planner", Number.isFinite(speed) ? scaleProfileTime(swept, 1 / speed) : swept);
  }
  return parsePlannerConfig(input, "--planner");
}

/** Starts the initial workers through the local connector, then the planner loop. */
async function startPlannedFleet(preset: TopologyPreset, topology: TopologyOptions, c: PlannerConfig, running: RunningGateway, quiet: boolean): Promise<{ loop: PlannerLoop; connector: LocalConnector }> {
  const configFor = async (kind: WorkerKind, n: number) => {
    const base = await findFreePortRange(8);
    const plan = planTopology(preset, { ...topology, workers: 1, prefillWorkers: 1, decodeWorkers: 1, basePort: base, baseEventPort: base + 2, baseSideChannelPort: base + 6, idPrefix: `planned-${n}-` });
    const cfg = plan.find((p) => (p.role ?? "aggregated") === kind) ?? plan[0]!;
    return { ...cfg, id: `${kind}-${n}-${cfg.port}` };
  };
  const connector = new LocalConnector({
    registry: running.registry,
    workerConfig: configFor,
    supervision: { logger: quiet ? null : undefined, maxRestarts: 3, startTimeoutMs: topology.engine === "mock" ? 60_000 : 600_000 },
    inFlight: async (id) => {
      const m = await running.gateway.metrics.activeRequests.get();
      return m.values.filter((v) => v.labels["worker"] === id).reduce((a, v) => a + v.value, 0);
    },
  });
  const kinds: WorkerKind[] = c.mode === "aggregated" ? ["aggregated"] : ["prefill", "decode"];
  const initial = (k: WorkerKind) => Math.max(c.minWorkers, k === "prefill" ? (topology.prefillWorkers ?? 1) : k === "decode" ? (topology.decodeWorkers ?? 1) : (topology.workers ?? 1));
  for (const k of kinds) await connector.scale(k, initial(k), "initial fleet");
  const deadline = Date.now() + (topology.engine === "mock" ? 60_000 : 600_000);
  while (kinds.some((k) => running.registry.list().filter((r) => r.role === k).length < initial(k))) {
    if (Date.now() > deadline) throw new Error("the initial workers did not become healthy in time");
    await new Promise((r) => setTimeout(r, 100));
  }
  // kvroute_planner_* join the gateway's own /metrics.
  const metrics = new PlannerMetrics(running.gateway.metrics.registry);
  const loop = await startPlanner(c, { connector, gatewayMetrics: () => running.gateway.metrics.text(), registry: running.registry, metrics });
  return { loop, connector };
}
