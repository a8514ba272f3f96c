/**
 * Builds a running PlannerLoop from a validated PlannerConfig: the SLA and/or load planners per
 * worker kind, the gateway metrics source, the connector, metrics and the decision log (JSON
 * lines, appended). The load planner reads each registered worker's vLLM /metrics
 * (`vllm:num_requests_waiting`, `vllm:num_requests_running`, `vllm:kv_cache_usage_perc`).
 */
import { appendFileSync, mkdirSync } from "node:fs";
import { dirname, resolve } from "node:path";
import type { Registry } from "../router/types.js";
import type { PlannerConfig } from "./config.js";
import type { WorkerConnector } from "./connector.js";
import { GatewayMetricsSource } from "./gateway-source.js";
import { LoadPlanner, type WorkerLoadSample } from "./load-planner.js";
import { PlannerLoop } from "./planner-loop.js";
import { PlannerMetrics } from "./planner-metrics.js";
import { parseSamples, sum } from "./prometheus-text.js";
import { SlaPlanner, type WorkerKind } from "./sla-planner.js";

export interface StartPlannerOptions {
  connector: WorkerConnector;
  /** The gateway's metrics text (in process, or fetched from its /metrics). */
  gatewayMetrics: () => Promise<string>;
  /** Where the load planner finds the workers (their records' URLs). */
  registry?: Registry;
  metrics?: PlannerMetrics;
  log?: (line: string) => void;
}

async function workerLoads(registry: Registry | undefined, kind: WorkerKind): Promise<WorkerLoadSample[]> {
  if (!registry) return [];
  const records = registry.list().filter((r) => r.role === kind);
  return Promise.all(
    records.map(async (r) => {
      try {
        const s = parseSamples(await (await fetch(`${r.url}/metrics`, { signal: AbortSignal.timeout(2000) })).text());
        return { waiting: sum(s, "vllm:num_requests_waiting"), running: sum(s, "vllm:num_requests_running"), kvUsage: Math.min(1, sum(s, "vllm:kv_cache_usage_perc") / Math.max(1, r.dpRanks.length)) };
      } catch {
        // An unreadable worker counts as idle: the planner decides on the others.
        return { waiting: 0, running: 0, kvUsage: 0 };
      }
    }),
  );
}

export async function startPlanner(c: PlannerConfig, o: StartPlannerOptions): Promise<PlannerLoop> {
  const kinds: WorkerKind[] = c.mode === "aggregated" ? ["aggregated"] : ["prefill", "decode"];
  const governor = { min: c.minWorkers, ...(c.maxWorkers !== undefined ? { max: c.maxWorkers } : {}), ...(c.downStepMax !== undefined ? { downStepMax: c.downStepMax } : {}), ...(c.downMargin !== undefined ? { downMargin: c.downMargin } : {}) };
  const sla =
    c.planner === "load"
      ? undefined
      : new SlaPlanner({
          profile: c.profile!,
          targets: c.targets,
          mode: c.mode,
          adjustmentIntervalS: c.adjustmentIntervalS,
          predictor: c.predictor,
          predictorOptions: c.seasonPeriod !== undefined ? { period: c.seasonPeriod } : {},
          governor,
          ...(c.gpuBudget !== undefined ? { gpuBudget: c.gpuBudget } : {}),
          ...(c.coldStartS !== undefined ? { coldStartS: c.coldStartS } : {}),
          ...(c.missBudget !== undefined ? { missBudget: c.missBudget } : {}),
          ...(c.burstWindowS !== undefined ? { burstWindowS: c.burstWindowS } : {}),
        });
  const load =
    c.planner === "sla"
      ? undefined
      : Object.fromEntries(kinds.map((k) => [k, { planner: new LoadPlanner({ targets: c.targets, governor }), workers: () => workerLoads(o.registry, k) }]));
  let decisionLog: ((r: unknown) => void) | undefined;
  if (c.decisionLog) {
    const file = resolve(c.decisionLog);
    mkdirSync(dirname(file), { recursive: true });
    decisionLog = (r) => appendFileSync(file, `${JSON.stringify(r)}\n`);
  }
  const loop = new PlannerLoop({
    kinds,
    intervalMs: c.adjustmentIntervalS * 1000,
    source: new GatewayMetricsSource(o.gatewayMetrics),
    connector: o.connector,
    ...(sla ? { sla } : {}),
    ...(load ? { load } : {}),
    metrics: o.metrics ?? new PlannerMetrics(),
    ...(decisionLog ? { decisionLog } : {}),
    ...(o.log ? { log: o.log } : {}),
  });
  await loop.start();
  return loop;
}
