/**
 * `kvroute replay --planner sla|load|sla+load|dynamo|fixed`: the trace replayed on the virtual
 * clock with a fleet a planner sizes every adjustment interval (ts/replay/planned-replay.ts).
 * Targets and the profile are checked before anything runs: a bad profile, a zero or negative
 * target or one the profile cannot meet exits 2 with the reason.
 */
import { writeFileSync, appendFileSync, mkdirSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { KvrouteError } from "../errors.js";
import { ENGINE_PROFILE_NAMES, engineProfile } from "../mocker/profiles.js";
import { ProfileModel } from "../planner/interpolate.js";
import { sweepMockEngine } from "../planner/mock-profiler.js";
import { PREDICTOR_NAMES } from "../planner/predictors.js";
import { loadProfile, type PerfProfile } from "../planner/profile.js";
import { validateTargets } from "../planner/targets.js";
import { UnreachableTargetError } from "../planner/errors.js";
import { PLANNED_TOPOLOGIES, PLANNER_KINDS, runPlannedReplay, type PlannedTopology, type PlannerKind, type PlannedReplayResult } from "../replay/planned-replay.js";
import { modulateRate, spreadTicks, tileTenants } from "../replay/rate-curve.js";
import { readTrace, TraceError } from "../replay/trace.js";
import { REPLAY_DEFAULTS } from "../replay/virtual-replay.js";
import { parseCommandArgs, positiveInt, UsageError } from "./args.js";
import { positiveNumber } from "./replay.js";

export const PLANNER_HELP = `Usage: kvroute replay --trace FILE --planner KIND --ttft-target MS --itl-target MS [options]

Replays a trace on the virtual clock with a fleet a planner sizes every adjustment interval;
new workers join after a cold start, removed ones drain first. Reports SLA attainment (requests and
intervals within target) and worker-seconds.

  --planner KIND          ${PLANNER_KINDS.join(", ")} (dynamo: Dynamo's published replica formulas,
                          the baseline; fixed: --workers all along)
  --ttft-target MS        TTFT target (ms), > 0 and above the profile's fastest prefill
  --itl-target MS         ITL target (ms), > 0 and above the profile's fastest decode step
  --planner-profile PATH  the planner's performance profile: kvroute JSON, Dynamo raw_data.npz, or a
                          Dynamo results folder (default: a sweep of the workers' mocker profile)
  --profile NAME          the workers' engine profile: ${ENGINE_PROFILE_NAMES.join(", ")}
                          (default ${REPLAY_DEFAULTS.profile})
  --workers N             workers at the start (fixed: all along; default: --min-workers);
                          disagg: prefill workers
  --decode-workers N      disagg: decode workers at the start (default: --workers)
  --min-workers N         default 1
  --max-workers N         default: no limit
  --min-prefill-workers N, --min-decode-workers N
                          disagg: one kind's own minimum, over --min-workers (Dynamo's
                          prefill_min_endpoint, decode_min_endpoint)
  --gpu-budget N          GPUs in all (default: no limit)
  --adjustment-interval S seconds between decisions (default 30)
  --cold-start S          seconds from asking for a worker to its first request (default 30)
  --predictor NAME        ${PREDICTOR_NAMES.join(", ")} (default constant)
  --season-period N       seasonal predictor: intervals per season
  --topology agg|disagg   aggregated workers (default) or prefill + decode workers, both sized
  --miss-budget X         SLA planner: share of servable requests its sizing lets past the TTFT
                          target, 0 < X < 1 (default 0.05)
  --burst-window S        SLA planner: keep at least the workers the busiest interval of the last S
                          seconds needed, its arrivals replayed onto idle workers (0: off; default 300)
  --down-step X           the most of the fleet one scale-down removes, 0 < X <= 1 (default 0.25 for
                          the SLA planners, 1 for dynamo and load)
  --down-margin X         spare share the fleet keeps before it shrinks, 0 <= X <= 0.9 (default 0.15)
  --day-curve P[,LOW,HIGH]  warp arrivals into P day-like peaks (rate LOW..HIGH, default 0.25..1)
  --spread-ticks          spread requests sharing a timestamp evenly to the next one (the Mooncake
                          traces' 3-second ticks of ~10 requests), before the day curve
  --tenants K             K copies of a Mooncake trace as user populations sharing no prefix, each
                          rotated by 1/K of the span (a K-times larger service, same span; before
                          the day curve)
  --limit N, --rate X     as for replay
  --decision-log FILE     every decision with its reasons, one line each
  --json FILE             the result
  --quiet                 no per-decision lines on stderr`;

export async function runPlannedReplayCommand(argv: string[]): Promise<number> {
  let run: () => Promise<PlannedReplayResult>;
  let json: string | undefined;
  try {
    const { values } = parseCommandArgs(argv, {
      trace: { type: "string" },
      planner: { type: "string" },
      "ttft-target": { type: "string" },
      "itl-target": { type: "string" },
      "planner-profile": { type: "string" },
      profile: { type: "string" },
      workers: { type: "string" },
      "decode-workers": { type: "string" },
      "min-workers": { type: "string" },
      "max-workers": { type: "string" },
      "min-prefill-workers": { type: "string" },
      "min-decode-workers": { type: "string" },
      "gpu-budget": { type: "string" },
      "adjustment-interval": { type: "string" },
      "cold-start": { type: "string" },
      predictor: { type: "string" },
      "season-period": { type: "string" },
      "miss-budget": { type: "string" },
      "burst-window": { type: "string" },
      "down-step": { type: "string" },
      "down-margin": { type: "string" },
      topology: { type: "string" },
      "day-curve": { type: "string" },
      "spread-ticks": { type: "boolean" },
      tenants: { type: "string" },
      limit: { type: "string" },
      rate: { type: "string" },
      policy: { type: "string" },
      "decision-log": { type: "string" },
      json: { type: "string" },
      quiet: { type: "boolean" },
      help: { type: "boolean", short: "h" },
    });
    if (values.help) {
      console.log(PLANNER_HELP);
      return 0;
    }
    const planner = values.planner as PlannerKind;
    if (!PLANNER_KINDS.includes(planner)) throw new UsageError(`--planner must be one of ${PLANNER_KINDS.join(", ")}: got '${values.planner}'`);
    if (values.trace === undefined) throw new UsageError("--trace FILE is required");
    const target = (flag: string, v: string | undefined) => {
      if (v === undefined) throw new UsageError(`--${flag} MS is required`);
      const x = Number(v);
      if (!Number.isFinite(x) || x <= 0) throw new UnreachableTargetError(`--${flag} must be a number of milliseconds > 0: got '${v}'`);
      return x;
    };
    const targets = { ttftMs: target("ttft-target", values["ttft-target"]), itlMs: target("itl-target", values["itl-target"]) };
    const workerProfile = values.profile ?? REPLAY_DEFAULTS.profile;
    engineProfile(workerProfile);
    let perf: PerfProfile | undefined;
    if (planner !== "fixed" && planner !== "load") {
      perf = values["planner-profile"] !== undefined ? loadProfile(values["planner-profile"]) : sweepMockEngine({ engine: { profile: workerProfile } });
      validateTargets(new ProfileModel(perf), targets);
    }
    const min = values["min-workers"] === undefined ? 1 : positiveInt("min-workers", values["min-workers"]);
    const max = values["max-workers"] === undefined ? undefined : positiveInt("max-workers", values["max-workers"]);
    if (max !== undefined && max < min) throw new UsageError(`--max-workers ${max} is below --min-workers ${min}`);
    const workers = values.workers === undefined ? undefined : positiveInt("workers", values.workers);
    if (planner === "fixed" && workers === undefined) throw new UsageError("--planner fixed needs --workers N");
    let trace = readTrace(values.trace, { limit: values.limit === undefined ? undefined : positiveInt("limit", values.limit), rate: positiveNumber("rate", values.rate) });
    if (values["spread-ticks"] === true) trace = spreadTicks(trace);
    if (values.tenants !== undefined) trace = tileTenants(trace, positiveInt("tenants", values.tenants));
    if (values["day-curve"] !== undefined) {
      const [p, lo, hi] = values["day-curve"].split(",").map(Number);
      if (!(p! > 0) || (lo !== undefined && !(lo > 0)) || (hi !== undefined && !(hi >= (lo ?? 0.25)))) throw new UsageError(`--day-curve must be PERIODS[,LOW,HIGH] with 0 < LOW <= HIGH: got '${values["day-curve"]}'`);
      trace = modulateRate(trace, { periods: p!, ...(lo !== undefined ? { low: lo } : {}), ...(hi !== undefined ? { high: hi } : {}) });
    }
    const topology = (values.topology ?? "agg") as PlannedTopology;
    if (!PLANNED_TOPOLOGIES.includes(topology)) throw new UsageError(`--topology must be one of ${PLANNED_TOPOLOGIES.join(", ")}: got '${values.topology}'`);
    if (topology === "disagg" && (planner === "load" || planner === "sla+load")) throw new UsageError(`--planner ${planner} runs on aggregated workers only in the virtual replay (--topology agg)`);
    const logFile = values["decision-log"];
    if (logFile) {
      mkdirSync(dirname(resolve(logFile)), { recursive: true });
      writeFileSync(logFile, "");
    }
    const quiet = values.quiet === true;
    json = values.json;
    const opts = {
      trace,
      planner,
      perfProfile: perf,
      targets,
      profile: workerProfile,
      initialWorkers: workers,
      initialDecodeWorkers: values["decode-workers"] === undefined ? undefined : positiveInt("decode-workers", values["decode-workers"]),
      adjustmentIntervalS: positiveNumber("adjustment-interval", values["adjustment-interval"]),
      coldStartS: positiveNumber("cold-start", values["cold-start"], 0, true),
      predictor: values.predictor,
      seasonPeriod: values["season-period"] === undefined ? undefined : positiveInt("season-period", values["season-period"]),
      minByKind: {
        ...(values["min-prefill-workers"] !== undefined ? { prefill: positiveInt("min-prefill-workers", values["min-prefill-workers"]) } : {}),
        ...(values["min-decode-workers"] !== undefined ? { decode: positiveInt("min-decode-workers", values["min-decode-workers"]) } : {}),
      },
      governor: { min, ...(max !== undefined ? { max } : {}), ...(values["down-step"] !== undefined ? { downStepMax: downStep(values["down-step"]) } : {}), ...(values["down-margin"] !== undefined ? { downMargin: downMargin(values["down-margin"]) } : {}) },
      gpuBudget: values["gpu-budget"] === undefined ? undefined : positiveInt("gpu-budget", values["gpu-budget"]),
      missBudget: missBudget(values["miss-budget"]),
      burstWindowS: values["burst-window"] === undefined ? undefined : positiveNumber("burst-window", values["burst-window"], 0, true),
      topology,
      onDecision: (line: string) => {
        if (logFile) appendFileSync(logFile, `${line}\n`);
        if (!quiet) process.stderr.write(`${line}\n`);
      },
    };
    // Settings the planner itself checks (predictor names, seasonal period...): fail before the run.
    run = () => runPlannedReplay(opts);
  } catch (err) {
    if (err instanceof UsageError || err instanceof TraceError || err instanceof KvrouteError) {
      console.error(`kvroute replay: ${err.message}${err instanceof UsageError ? "\n\nRun 'kvroute replay --planner sla --help' for usage." : ""}`);
      return 2;
    }
    throw err;
  }
  let result: PlannedReplayResult;
  try {
    result = await run();
  } catch (err) {
    if (err instanceof KvrouteError) {
      console.error(`kvroute replay: ${err.message}`);
      return 2;
    }
    throw err;
  }
  console.log(plannedSummary(result));
  if (json) {
    mkdirSync(dirname(resolve(json)), { recursive: true });
    writeFileSync(json, `${JSON.stringify(result, null, 2)}\n`);
    console.log(`JSON:   ${resolve(json)}`);
  }
  return 0;
}

function downMargin(v: string): number {
  const x = Number(v);
  if (!(x >= 0 && x <= 0.9)) throw new UsageError(`--down-margin must be a share in [0, 0.9]: got '${v}'`);
  return x;
}

function downStep(v: string): number {
  const x = Number(v);
  if (!(x > 0 && x <= 1)) throw new UsageError(`--down-step must be a share in (0, 1]: got '${v}'`);
  return x;
}

function missBudget(v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  const x = Number(v);
  if (!(x > 0 && x < 1)) throw new UsageError(`--miss-budget must be a share between 0 and 1 (exclusive): got '${v}'`);
  return x;
}

export function plannedSummary(r: PlannedReplayResult): string {
  const pct = (x: number) => `${(x * 100).toFixed(1)}%`;
  return [
    `planner ${r.planner} (${r.topology}): ${r.completed}/${r.requests} requests completed, ${r.failed} failed`,
    `  within target: ${pct(r.requestAttainment)} of requests, ${pct(r.intervalAttainment)} of intervals`,
    `  worker-seconds ${Math.round(r.workerSeconds).toLocaleString("en-US")}${r.topology === "disagg" ? ` (prefill ${Math.round(r.workerSecondsByKind.prefill).toLocaleString("en-US")}, decode ${Math.round(r.workerSecondsByKind.decode).toLocaleString("en-US")})` : ""} (mean ${r.meanWorkers.toFixed(2)} workers, peak ${r.peakWorkers}); ${r.scaleUps} scale-ups, ${r.scaleDowns} scale-downs in ${r.decisions} decisions`,
    `  TTFT p90 ${r.ttftP90Ms.toFixed(0)} ms, ITL p90 ${r.itlP90Ms.toFixed(1)} ms over ${(r.simSeconds / 60).toFixed(1)} simulated minutes (${(r.wallMs / 1000).toFixed(1)} s wall)`,
  ].join("\n");
}
