/**
 * `kvroute replay`: replays a workload trace against N simulated workers once per routing policy
 * and compares them (docs/replay.md). Virtual clock (default): engines and router in this process
 * on a discrete-event clock. Real clock: mocker processes behind the gateway over HTTP and ZMQ.
 * Ctrl-C stops the workers and still writes the (partial) report; exit code 130.
 */
import { InvalidConfigError, KvrouteError } from "../errors.js";
import { MemoryRegistry } from "../registry/memory-registry.js";
import { KvRouter, ROUTER_MODES } from "../router/kv-router.js";
import type { RouterMode } from "../router/types.js";
import { availableParallelism } from "node:os";
import { isPolicyChild, ReplayJobError, runPolicyJobs, sendToParent, withoutFlags } from "../replay/policy-jobs.js";
import { describeFleet, describeSettings, runReplay, writeReports, type ReplayOptions } from "../replay/replay.js";
import type { PolicyResult, ReplayClock } from "../replay/result.js";
import { comparison, formatSimTime, ProgressBar, resultsTable } from "../replay/terminal.js";
import { readTrace, TraceError, type Trace } from "../replay/trace.js";
import { REPLAY_DEFAULTS, type ReplayProgress } from "../replay/virtual-replay.js";
import { ENGINE_PROFILE_NAMES, engineProfile } from "../mocker/profiles.js";
import { parseCommandArgs, positiveInt, UsageError } from "./args.js";
import { writeFileSync } from "node:fs";
import { resolve as resolvePath } from "node:path";
import { DISAGG_POLICIES, type DisaggPolicyName } from "../gateway/disagg-policy.js";
import { runTopologyReplay, topologyTable, TOPOLOGIES, type Topology, type TopologyResult } from "../replay/topology-replay.js";
import { runPlannedReplayCommand } from "./replay-planner.js";

const HELP = `Usage: kvroute replay --trace FILE [options]

Replays a workload trace against N simulated vLLM workers, once per routing policy, and reports
prefix-cache hit rate, TTFT, end-to-end latency, throughput, load imbalance and router CPU time.

  --trace FILE            Mooncake trace (timestamp, input_length, output_length, hash_ids) or a
                          JSONL of OpenAI requests (prompt or messages, optional timestamp)
  --workers N             simulated workers (default 8)
  --policy LIST           comma-separated: ${ROUTER_MODES.join(", ")} (default kv,round-robin)
  --clock C               virtual (default): in-process discrete-event simulation, no sleeping;
                          real: mocker processes behind the gateway over HTTP and ZMQ
  --limit N               only the first N requests
  --rate X                scale timestamps to X requests/s on average
  --speedup S             real clock: simulated time runs S times faster than wall time (default 5)
  --event-delay-ms D      virtual clock: KV events reach the router D simulated ms late (default 5)
  --event-drop-rate P     virtual clock: lose this fraction of KV event batches (default 0)
  --engine rust|ts        virtual clock: the engine core in Rust (default where it applies: the
                          keyed event path, no CPU tier, the toy tokenizer) or the mocker's own;
                          both replay a trace alike (rust: a configuration it cannot run, exit 2)
  --profile NAME          the workers' model and GPUs (timing model, KV cache size):
                          ${ENGINE_PROFILE_NAMES.join(", ")}
                          (default ${REPLAY_DEFAULTS.profile})
  --block-size N          tokens per KV block (default 16)
  --num-gpu-blocks N      KV blocks per worker (default: the profile's, 26000)
  --cpu-blocks N          virtual clock: a CPU offload tier of N blocks per worker behind the
                          GPU (vLLM's OffloadingConnector; default 0, none). The router prices
                          CPU hits with --router '{"tierCredits":{"CPU":x}}' (default 0.95)
  --router JSON           KvRouter options for every policy, e.g. '{"overlapWeight": 4}'
                          (overlapWeight, sequenceWeight, temperature, busyThreshold, ...)
  --seed N                router and drop PRNG seed (default 1)
  --json FILE             results: one object per policy
  --html FILE             a self-contained HTML report with charts
  --jobs N                virtual clock: policies replayed side by side, one process each
                          (default: the number of CPUs)
  --quiet                 no progress bar
  --planner KIND          a planner sizes the fleet (sla, load, sla+load, dynamo, fixed) with
                          --ttft-target MS --itl-target MS: see 'kvroute replay --planner sla --help'

Topologies (virtual clock, KV-aware routing; instead of --policy):
  --topology LIST         comma-separated: agg, disagg, conditional. The same GPUs as P + D
                          aggregated workers, or P prefill + D decode workers (KV moved at the
                          profile's transfer cost), or conditional disaggregation; reports TTFT
                          and ITL percentiles
  --prefill-workers P     (default: half of --workers)
  --decode-workers D      (default: the rest of --workers)
  --disagg-policy NAME    conditional: isl (default; 2,048 tokens and 70% uncached), threshold,
                          always, prefill-load, isl-or-load

Exit codes: 0 done, 1 failed, 2 bad usage or trace, 130 interrupted (partial report written).`;

export interface ReplayCliOptions {
  trace: Trace;
  replay: Omit<ReplayOptions, "trace" | "signal" | "onProgress" | "onResult">;
  json?: string;
  html?: string;
  quiet: boolean;
  command: string;
  title?: string;
  /** Virtual clock, several policies: at most this many replay side by side (child processes). */
  jobs?: number;
  /** The CLI arguments that replay one policy of this run in a child process. */
  childArgv?: (policy: RouterMode) => string[];
  /** The command, for messages. Default "replay". */
  name?: string;
}

/** In a policy's child process: replays, reporting progress and the result to the parent. */
async function runAsChild(o: ReplayCliOptions): Promise<number> {
  const abort = new AbortController();
  const stop = () => abort.abort();
  process.on("SIGINT", stop);
  process.on("SIGTERM", stop);
  let last = 0;
  const pending: Promise<void>[] = [];
  try {
    await runReplay({
      ...o.replay,
      trace: o.trace,
      signal: abort.signal,
      onProgress: (progress) => {
        const now = performance.now();
        if (now - last < 100 && progress.completed < progress.total) return;
        last = now;
        pending.push(sendToParent({ type: "progress", progress }));
      },
      onResult: (result) => void pending.push(sendToParent({ type: "result", result })),
    });
  } catch (err) {
    // A setting the replay refuses once it resolves the fleet (e.g. --engine rust with a CPU tier).
    if (!(err instanceof KvrouteError)) throw err;
    console.error(`kvroute replay: ${err.message}`);
    return exitCodeFor(err);
  } finally {
    process.off("SIGINT", stop);
    process.off("SIGTERM", stop);
  }
  await Promise.all(pending);
  process.disconnect?.();
  return abort.signal.aborted ? 130 : 0;
}

/** Runs a replay with the terminal UI (progress, table, report paths) and SIGINT handling. */
/** 2 for a setting the replay refuses (as for usage errors; in a policy's process too), 1 for a replay that failed. */
function exitCodeFor(err: KvrouteError): number {
  return err instanceof InvalidConfigError || (err instanceof ReplayJobError && err.refused) ? 2 : 1;
}

export async function runReplayWithUi(o: ReplayCliOptions): Promise<number> {
  if (isPolicyChild()) return runAsChild(o);
  const me = `kvroute ${o.name ?? "replay"}`;
  const bar = new ProgressBar(process.stderr);
  const abort = new AbortController();
  let interrupts = 0;
  const onSigint = () => {
    interrupts++;
    bar.clear();
    if (interrupts === 1) {
      process.stderr.write(`${me}: interrupted, stopping the workers and writing the partial report\n`);
      abort.abort();
    } else if (interrupts === 2) {
      // Leaving now could orphan worker processes (their own process groups); the stop is bounded.
      process.stderr.write(`${me}: still stopping the workers (a few seconds at most); Ctrl-C again to quit anyway\n`);
    } else {
      process.exit(130);
    }
  };
  process.on("SIGINT", onSigint);
  process.on("SIGTERM", onSigint);
  console.log(describeFleet(o.replay, o.trace));
  const wall0 = performance.now();
  const quiet = o.quiet;
  let results: PolicyResult[] = [];
  const onResult = (r: PolicyResult) => {
    bar.clear();
    if (!quiet) {
      process.stderr.write(
        `${me}: ${r.policy}: ${r.completed.toLocaleString("en-US")} requests in ${(r.wallMs / 1000).toFixed(1)} s wall (${r.clock} clock${r.partial ? ", partial" : ""})\n`,
      );
    }
  };
  const policies = o.replay.policies;
  const jobs = Math.min(o.jobs ?? availableParallelism(), policies.length);
  try {
    if ((o.replay.clock ?? "virtual") === "virtual" && jobs > 1 && o.childArgv) {
      // Side by side: one child process per policy, progress summed.
      const progress = new Map<RouterMode, ReplayProgress>();
      results = await runPolicyJobs({
        policies,
        jobs,
        argvFor: o.childArgv,
        signal: abort.signal,
        onProgress: (p) => {
          progress.set(p.policy, p);
          if (quiet) return;
          let done = 0;
          let total = 0;
          for (const q of progress.values()) {
            done += q.completed;
            total += q.total;
          }
          total += (policies.length - progress.size) * o.trace.requests.length;
          const each = [...progress.values()].map((q) => `${q.policy} ${Math.floor((100 * q.completed) / Math.max(q.total, 1))}%`).join(", ");
          bar.update(`${policies.length} policies`, done, total, `${each}  wall ${((performance.now() - wall0) / 1000).toFixed(1)}s`);
        },
        onResult,
      });
    } else {
      results = await runReplay({
        ...o.replay,
        trace: o.trace,
        signal: abort.signal,
        onProgress: (p) => {
          if (quiet) return;
          const done = p.completed === p.total;
          bar.update(p.policy, p.completed, p.total, `sim ${formatSimTime(p.simMs)}  wall ${((performance.now() - wall0) / 1000).toFixed(1)}s`, done);
        },
        onResult,
      });
    }
  } catch (err) {
    if (!(err instanceof KvrouteError)) throw err;
    bar.clear();
    console.error(`${me}: ${err.message}`);
    return exitCodeFor(err);
  } finally {
    process.off("SIGINT", onSigint);
    process.off("SIGTERM", onSigint);
    bar.clear();
  }
  const partial = abort.signal.aborted;
  if (results.length > 0) {
    console.log(resultsTable(results));
    for (const line of comparison(results)) console.log(line);
  }
  const written = writeReports(
    results,
    { command: o.command, trace: o.trace, clock: o.replay.clock ?? "virtual", workers: o.replay.workers, settings: describeSettings(o.replay, o.trace), title: o.title },
    { json: o.json, html: o.html },
  );
  if (written.json) console.log(`JSON:   ${written.json}`);
  if (written.html) console.log(`Report: ${written.html}`);
  return partial ? 130 : 0;
}

export function parsePolicies(value: string): RouterMode[] {
  const list = value.split(",").map((s) => s.trim()).filter((s) => s.length > 0);
  if (list.length === 0) throw new UsageError("--policy needs at least one policy");
  for (const p of list) {
    if (!ROUTER_MODES.includes(p as RouterMode)) throw new UsageError(`unknown policy '${p}' (expected ${ROUTER_MODES.join(", ")})`);
  }
  return [...new Set(list)] as RouterMode[];
}

export function parseClock(value: string | undefined): ReplayClock {
  const c = value ?? "virtual";
  if (c !== "virtual" && c !== "real") throw new UsageError(`--clock must be virtual or real: got '${c}'`);
  return c;
}

export function positiveNumber(flag: string, value: string | undefined, min = 0, inclusive = false): number | undefined {
  if (value === undefined) return undefined;
  const x = Number(value);
  if (!Number.isFinite(x) || (inclusive ? x < min : x <= min)) throw new UsageError(`--${flag} must be a number ${inclusive ? ">=" : ">"} ${min}: got '${value}'`);
  return x;
}

export async function runReplayCommand(argv: string[]): Promise<number> {
  // A planner sizes the fleet: its own flags and report (replay-planner.ts).
  if (argv.some((a) => a === "--planner" || a.startsWith("--planner="))) return runPlannedReplayCommand(argv);
  let cli: ReplayCliOptions;
  try {
    const { values } = parseCommandArgs(argv, {
      trace: { type: "string" },
      workers: { type: "string" },
      policy: { type: "string" },
      clock: { type: "string" },
      limit: { type: "string" },
      rate: { type: "string" },
      speedup: { type: "string" },
      "event-delay-ms": { type: "string" },
      "event-drop-rate": { type: "string" },
      engine: { type: "string" },
      "block-size": { type: "string" },
      "num-gpu-blocks": { type: "string" },
      "cpu-blocks": { type: "string" },
      profile: { type: "string" },
      seed: { type: "string" },
      router: { type: "string" },
      json: { type: "string" },
      html: { type: "string" },
      jobs: { type: "string" },
      quiet: { type: "boolean" },
      topology: { type: "string" },
      "prefill-workers": { type: "string" },
      "decode-workers": { type: "string" },
      "disagg-policy": { type: "string" },
      help: { type: "boolean", short: "h" },
    });
    if (values.help) {
      console.log(HELP);
      return 0;
    }
    if (values.trace === undefined) throw new UsageError("--trace FILE is required");
    if (values.topology !== undefined) return await runTopologies(values, argv);
    const jobs = values.jobs === undefined ? undefined : positiveInt("jobs", values.jobs);
    const clock = parseClock(values.clock);
    const policies = parsePolicies(values.policy ?? "kv,round-robin");
    const limit = values.limit === undefined ? undefined : positiveInt("limit", values.limit);
    const rate = positiveNumber("rate", values.rate);
    const dropRate = positiveNumber("event-drop-rate", values["event-drop-rate"], 0, true);
    if (dropRate !== undefined && dropRate > 1) throw new UsageError(`--event-drop-rate must be in [0, 1]: got '${values["event-drop-rate"]}'`);
    const seed = values.seed === undefined ? undefined : Number(values.seed);
    if (seed !== undefined && !Number.isInteger(seed)) throw new UsageError(`--seed must be an integer: got '${values.seed}'`);
    const engine = values.engine;
    if (engine !== undefined && engine !== "rust" && engine !== "ts") throw new UsageError(`--engine must be rust or ts: got '${engine}'`);
    const ignored = clock === "virtual" ? ["speedup"] : ["event-delay-ms", "event-drop-rate", "jobs", "cpu-blocks", "engine"];
    for (const flag of ignored) {
      if (values[flag as keyof typeof values] !== undefined && !isPolicyChild()) console.error(`kvroute replay: --${flag} has no effect with --clock ${clock}`);
    }
    const router = values.router === undefined ? undefined : parseRouterOptions(values.router);
    if (values.profile !== undefined) engineProfile(values.profile); // an unknown name: exit 2, listing the names
    const trace = readTrace(values.trace, { limit, rate });
    cli = {
      trace,
      replay: {
        policies,
        clock,
        workers: positiveInt("workers", values.workers, 8),
        speedup: positiveNumber("speedup", values.speedup),
        eventDelayMs: positiveNumber("event-delay-ms", values["event-delay-ms"], 0, true),
        eventDropRate: dropRate,
        ...(engine !== undefined ? { engineImpl: engine } : {}),
        blockSize: values["block-size"] === undefined ? undefined : positiveInt("block-size", values["block-size"]),
        numGpuBlocks: values["num-gpu-blocks"] === undefined ? undefined : positiveInt("num-gpu-blocks", values["num-gpu-blocks"]),
        numCpuBlocks: values["cpu-blocks"] === undefined ? undefined : positiveInt("cpu-blocks", values["cpu-blocks"]),
        profile: values.profile,
        seed,
        ...(router ? { router } : {}),
      },
      json: values.json,
      html: values.html,
      quiet: values.quiet === true,
      command: ["kvroute", "replay", ...argv].map(shellQuote).join(" "),
      jobs,
      childArgv: (policy) => ["replay", ...withoutFlags(argv, ["policy", "json", "html", "jobs"], ["quiet"]), "--policy", policy, "--quiet"],
    };
  } catch (err) {
    if (err instanceof UsageError || err instanceof TraceError || err instanceof KvrouteError) {
      console.error(`kvroute replay: ${err.message}${err instanceof UsageError ? "\n\nRun 'kvroute replay --help' for usage." : ""}`);
      return 2;
    }
    throw err;
  }
  return runReplayWithUi(cli);
}

/** `--topology`: agg vs disagg vs conditional on the same GPUs, virtual clock (topology-replay.ts). */
async function runTopologies(values: Record<string, string | boolean | undefined>, argv: string[]): Promise<number> {
  const str = (k: string) => values[k] as string | undefined;
  const list = str("topology")!.split(",").map((t) => t.trim()).filter((t) => t.length > 0);
  if (list.length === 0) throw new UsageError("--topology needs at least one of agg, disagg, conditional");
  for (const t of list) if (!TOPOLOGIES.includes(t as Topology)) throw new UsageError(`unknown topology '${t}' (expected ${TOPOLOGIES.join(", ")})`);
  if (str("clock") !== undefined && str("clock") !== "virtual") throw new UsageError("--topology runs on the virtual clock");
  const workers = positiveInt("workers", str("workers"), 8);
  const prefillWorkers = positiveInt("prefill-workers", str("prefill-workers"), Math.max(1, Math.floor(workers / 2)));
  const decodeWorkers = positiveInt("decode-workers", str("decode-workers"), Math.max(1, workers - prefillWorkers));
  const policy = str("disagg-policy") ?? "isl";
  if (!DISAGG_POLICIES.includes(policy as DisaggPolicyName)) throw new UsageError(`--disagg-policy must be one of ${DISAGG_POLICIES.join(", ")}: got '${policy}'`);
  if (str("profile") !== undefined) engineProfile(str("profile")!);
  const trace = readTrace(str("trace")!, { limit: str("limit") === undefined ? undefined : positiveInt("limit", str("limit")), rate: positiveNumber("rate", str("rate")) });
  const router = str("router") === undefined ? undefined : parseRouterOptions(str("router")!);
  const abort = new AbortController();
  const stop = () => abort.abort();
  process.on("SIGINT", stop);
  const results: TopologyResult[] = [];
  try {
    console.log(`${trace.requests.length.toLocaleString("en-US")} requests; ${prefillWorkers + decodeWorkers} GPUs as ${prefillWorkers + decodeWorkers} aggregated or ${prefillWorkers}P + ${decodeWorkers}D workers (${str("profile") ?? REPLAY_DEFAULTS.profile}); conditional policy ${policy}`);
    for (const topology of list as Topology[]) {
      if (abort.signal.aborted) break;
      const r = await runTopologyReplay({
        trace,
        topology,
        prefillWorkers,
        decodeWorkers,
        disagg: { policy: policy as DisaggPolicyName },
        profile: str("profile"),
        blockSize: str("block-size") === undefined ? undefined : positiveInt("block-size", str("block-size")),
        numGpuBlocks: str("num-gpu-blocks") === undefined ? undefined : positiveInt("num-gpu-blocks", str("num-gpu-blocks")),
        eventDelayMs: positiveNumber("event-delay-ms", str("event-delay-ms"), 0, true),
        seed: str("seed") === undefined ? undefined : Number(str("seed")),
        ...(router ? { router } : {}),
        signal: abort.signal,
      });
      results.push(r);
      if (values.quiet !== true) process.stderr.write(`kvroute replay: ${topology}: ${r.completed.toLocaleString("en-US")} requests in ${(r.wallMs / 1000).toFixed(1)} s wall\n`);
    }
  } finally {
    process.off("SIGINT", stop);
  }
  console.log(topologyTable(results));
  console.log("(ms; TTFT from arrival to the decode worker's first token, ITL per request: (last - first token) / (tokens - 1))");
  const json = str("json");
  if (json) {
    const file = resolvePath(json);
    writeFileSync(file, JSON.stringify({ command: ["kvroute", "replay", ...argv].map(shellQuote).join(" "), trace: trace.file, results }, null, 2) + "\n");
    console.log(`JSON:   ${file}`);
  }
  return abort.signal.aborted ? 130 : 0;
}

/** `--router`: a JSON object of KvRouter options, checked by the router itself. */
export function parseRouterOptions(text: string): NonNullable<ReplayOptions["router"]> {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new UsageError(`--router must be a JSON object: ${err instanceof Error ? err.message : String(err)}`);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) throw new UsageError("--router must be a JSON object");
  const options = value as NonNullable<ReplayOptions["router"]>;
  for (const k of ["registry", "mode", "clock"]) if (k in options) throw new UsageError(`--router: '${k}' is set by the replay`);
  try {
    new KvRouter({ ...options, registry: new MemoryRegistry() }).close();
  } catch (err) {
    throw new UsageError(`--router: ${err instanceof Error ? err.message : String(err)}`);
  }
  return options;
}

export function shellQuote(s: string): string {
  return /^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}
