/**
 * The planner's configuration (`kvroute planner --config FILE`, `kvroute up --planner`), validated
 * once: every field named in its error. Targets and the profile are checked against each other
 * here too, so a run that cannot meet its targets never starts.
 */
import { readFileSync } from "node:fs";
import { parseK8sConnectorUrl } from "../kubernetes/kubernetes-worker-connector.js";
import { InvalidConfigError } from "../errors.js";
import { ProfileModel } from "./interpolate.js";
import { makePredictor } from "./predictors.js";
import { loadProfile, type PerfProfile } from "./profile.js";
import type { Targets } from "./replicas.js";
import type { FleetMode } from "./sla-planner.js";
import { validateTargets } from "./targets.js";
import { UnreachableTargetError } from "./errors.js";

export const PLANNER_MODES = ["sla", "load", "sla+load"] as const;
export type PlannerMode = (typeof PLANNER_MODES)[number];

export interface PlannerConfig {
  planner: PlannerMode;
  mode: FleetMode;
  targets: Targets;
  /** Required for "sla" and "sla+load". */
  profile: PerfProfile | null;
  adjustmentIntervalS: number;
  predictor: string;
  seasonPeriod?: number;
  /** Seconds from asking for a worker to its first request (the forecast's horizon). */
  coldStartS?: number;
  /** Share of servable requests the sizing lets past the TTFT target (default 0.05). */
  missBudget?: number;
  /** Seconds of arrivals whose bursts set the SLA planner's floor (0: off; default 300). */
  burstWindowS?: number;
  /** Share of the running fleet one scale-down may remove, (0, 1] (SLA planner default 0.25). */
  downStepMax?: number;
  /** Spare share the fleet keeps before it shrinks, [0, 0.9] (default 0.15). */
  downMargin?: number;
  minWorkers: number;
  maxWorkers?: number;
  gpuBudget?: number;
  /** The gateway's /metrics URL (kvroute planner; `kvroute up` reads it in process). */
  gatewayMetricsUrl?: string;
  /** `k8s://<namespace>[?...]`: KubernetesWorkerConnector (docs/kubernetes.md). */
  connector: "dry-run" | "local" | `k8s://${string}`;
  decisionLog?: string;
  /** Port of the planner's own /metrics (kvroute planner), 0 = none. */
  metricsPort: number;
}

export function readPlannerConfig(file: string): PlannerConfig {
  let value: unknown;
  try {
    value = JSON.parse(readFileSync(file, "utf8"));
  } catch (err) {
    throw new InvalidConfigError(`${file}: ${err instanceof Error ? err.message : String(err)}`);
  }
  return parsePlannerConfig(value, file);
}

/** `profile`, when given, is used instead of the config's `profile` field (a sweep made here). */
export function parsePlannerConfig(value: unknown, source = "planner config", given?: PerfProfile): PlannerConfig {
  const bad = (why: string): never => {
    throw new InvalidConfigError(`${source}: ${why}`);
  };
  if (typeof value !== "object" || value === null || Array.isArray(value)) bad("must be a JSON object");
  const v = value as Record<string, unknown>;
  const known = new Set(["planner", "mode", "ttftTargetMs", "itlTargetMs", "profile", "adjustmentIntervalS", "predictor", "seasonPeriod", "coldStartS", "missBudget", "burstWindowS", "downStepMax", "downMargin", "minWorkers", "maxWorkers", "gpuBudget", "gateway", "connector", "decisionLog", "metricsPort"]);
  for (const k of Object.keys(v)) if (!known.has(k)) bad(`unknown field '${k}' (expected ${[...known].join(", ")})`);
  const planner = (v["planner"] ?? "sla") as PlannerMode;
  if (!PLANNER_MODES.includes(planner)) bad(`planner must be one of ${PLANNER_MODES.join(", ")}`);
  const mode = (v["mode"] ?? "aggregated") as FleetMode;
  if (mode !== "aggregated" && mode !== "disaggregated") bad("mode must be aggregated or disaggregated");
  const num = (k: string, fallback?: number): number | undefined => {
    const x = v[k] ?? fallback;
    if (x === undefined) return undefined;
    if (typeof x !== "number" || !Number.isFinite(x)) bad(`${k} must be a number`);
    return x as number;
  };
  const int = (k: string, min: number, fallback?: number): number | undefined => {
    const x = num(k, fallback);
    if (x !== undefined && (!Number.isInteger(x) || x < min)) bad(`${k} must be an integer >= ${min}`);
    return x;
  };
  for (const k of ["ttftTargetMs", "itlTargetMs"]) {
    const x = v[k];
    if (x === undefined) throw new UnreachableTargetError(`${source}: ${k} is required`);
    if (typeof x !== "number" || !Number.isFinite(x) || x <= 0) throw new UnreachableTargetError(`${source}: ${k} must be a number of milliseconds > 0 (got ${JSON.stringify(x)})`);
  }
  const targets = { ttftMs: v["ttftTargetMs"] as number, itlMs: v["itlTargetMs"] as number };
  let profile: PerfProfile | null = null;
  if (planner !== "load" && given) {
    profile = given;
    validateTargets(new ProfileModel(profile), targets);
  } else if (planner !== "load") {
    const p = v["profile"];
    if (typeof p !== "string" && !(Array.isArray(p) && p.every((x) => typeof x === "string"))) bad(`profile (a path, or a list of paths) is required for the ${planner} planner`);
    profile = loadProfile(p as string | string[]);
    validateTargets(new ProfileModel(profile), targets);
  }
  const adjustmentIntervalS = num("adjustmentIntervalS", 30)!;
  if (!(adjustmentIntervalS > 0)) bad("adjustmentIntervalS must be > 0");
  const predictor = (v["predictor"] ?? "constant") as string;
  const seasonPeriod = int("seasonPeriod", 2);
  makePredictor(predictor, seasonPeriod !== undefined ? { period: seasonPeriod } : {});
  const coldStartS = num("coldStartS", undefined);
  if (coldStartS !== undefined && !(coldStartS >= 0)) bad("coldStartS must be >= 0 seconds");
  const missBudget = num("missBudget", undefined);
  if (missBudget !== undefined && !(missBudget > 0 && missBudget < 1)) bad("missBudget must be a share between 0 and 1 (exclusive)");
  const burstWindowS = num("burstWindowS", undefined);
  if (burstWindowS !== undefined && !(burstWindowS >= 0)) bad("burstWindowS must be >= 0 seconds");
  const downStepMax = num("downStepMax", undefined);
  if (downStepMax !== undefined && !(downStepMax > 0 && downStepMax <= 1)) bad("downStepMax must be a share in (0, 1]");
  const downMargin = num("downMargin", undefined);
  if (downMargin !== undefined && !(downMargin >= 0 && downMargin <= 0.9)) bad("downMargin must be a share in [0, 0.9]");
  const minWorkers = int("minWorkers", 0, 1)!;
  const maxWorkers = int("maxWorkers", Math.max(1, minWorkers));
  const gpuBudget = int("gpuBudget", 1);
  const connector = (v["connector"] ?? "dry-run") as PlannerConfig["connector"];
  if (typeof connector === "string" && connector.startsWith("k8s://")) parseK8sConnectorUrl(connector);
  else if (connector !== "dry-run" && connector !== "local") bad("connector must be dry-run, local or k8s://<namespace>");
  const gateway = v["gateway"];
  if (gateway !== undefined && (typeof gateway !== "string" || !URL.canParse(gateway))) bad("gateway must be the gateway's base URL");
  const decisionLog = v["decisionLog"];
  if (decisionLog !== undefined && typeof decisionLog !== "string") bad("decisionLog must be a path");
  return {
    planner,
    mode,
    targets,
    profile,
    adjustmentIntervalS,
    predictor,
    ...(seasonPeriod !== undefined ? { seasonPeriod } : {}),
    ...(coldStartS !== undefined ? { coldStartS } : {}),
    ...(missBudget !== undefined ? { missBudget } : {}),
    ...(burstWindowS !== undefined ? { burstWindowS } : {}),
    ...(downStepMax !== undefined ? { downStepMax } : {}),
    ...(downMargin !== undefined ? { downMargin } : {}),
    minWorkers,
    ...(maxWorkers !== undefined ? { maxWorkers } : {}),
    ...(gpuBudget !== undefined ? { gpuBudget } : {}),
    ...(gateway !== undefined ? { gatewayMetricsUrl: `${(gateway as string).replace(/\/+$/, "")}/metrics` } : {}),
    connector,
    ...(decisionLog !== undefined ? { decisionLog: decisionLog as string } : {}),
    metricsPort: int("metricsPort", 0, 0)!,
  };
}
