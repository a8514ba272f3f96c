/**
 * `kvroute planner --config FILE`: the SLA and/or load planner beside a running gateway. It reads
 * the gateway's /metrics every adjustment interval and decides; with `"connector": "dry-run"` it
 * logs and exports its decisions without touching the fleet (workers this process starts would
 * not be in the gateway's in-memory registry: to let the planner start and drain workers, run it
 * inside the deployment with `kvroute up --planner`).
 */
import { createServer } from "node:http";
import { KvrouteError } from "../errors.js";
import { readPlannerConfig } from "../planner/config.js";
import { DryRunConnector, type WorkerConnector } from "../planner/connector.js";
import { KubernetesWorkerConnector, parseK8sConnectorUrl } from "../kubernetes/kubernetes-worker-connector.js";
import { PlannerMetrics } from "../planner/planner-metrics.js";
import { startPlanner } from "../planner/start-planner.js";
import { parseCommandArgs, UsageError } from "./args.js";
import { waitForSignal } from "./serve.js";

const HELP = `Usage: kvroute planner --config FILE

Runs the planner beside a gateway: every adjustment interval it reads the gateway's /metrics,
predicts the next interval and decides how many workers each kind needs for the TTFT and ITL
targets. Decisions are logged (stderr, and "decisionLog" as JSON lines) and exported as
kvroute_planner_* metrics on "metricsPort".

FILE (JSON):
  planner             sla | load | sla+load (default sla)
  mode                aggregated | disaggregated (default aggregated)
  ttftTargetMs        required, > 0 and above the profile's fastest prefill
  itlTargetMs         required, > 0 and above the profile's fastest decode step
  profile             kvroute profile JSON, Dynamo raw_data.npz, a Dynamo results folder, or a list
  gateway             the gateway's base URL (its /metrics is read)
  adjustmentIntervalS default 30
  predictor           constant | moving-average | holt | kalman | seasonal (default constant)
  seasonPeriod        seasonal: intervals per season
  minWorkers, maxWorkers, gpuBudget
  connector           dry-run (default; kvroute up --planner runs the local connector), or
                      k8s://<namespace>[?prefill=D&decode=D&aggregated=D]: scale the Deployments
                      (drain first; docs/kubernetes.md)
  decisionLog         a file: one JSON line per decision
  metricsPort         serve kvroute_planner_* on this port (default 0: none)`;

export async function runPlanner(argv: string[]): Promise<number> {
  let config;
  try {
    const { values } = parseCommandArgs(argv, { config: { type: "string" }, help: { type: "boolean", short: "h" } });
    if (values.help) {
      console.log(HELP);
      return 0;
    }
    if (values.config === undefined) throw new UsageError("--config FILE is required");
    config = readPlannerConfig(values.config);
    if (config.gatewayMetricsUrl === undefined) throw new UsageError(`${values.config}: "gateway" (the gateway's URL) is required`);
    if (config.connector === "local") throw new UsageError(`${values.config}: the local connector runs inside the deployment: use 'kvroute up <preset> --planner ${config.planner}'`);
  } catch (err) {
    if (err instanceof UsageError || err instanceof KvrouteError) {
      console.error(`kvroute planner: ${err.message}`);
      return 2;
    }
    throw err;
  }
  const url = config.gatewayMetricsUrl!;
  const metrics = new PlannerMetrics();
  const server = config.metricsPort > 0 ? createServer((req, res) => void metrics.text().then((t) => res.writeHead(200, { "content-type": metrics.registry.contentType }).end(t))) : null;
  if (server) await new Promise<void>((r) => server.listen(config.metricsPort, "127.0.0.1", r));
  const initial = config.mode === "aggregated" ? { aggregated: config.minWorkers } : { prefill: config.minWorkers, decode: config.minWorkers };
  let connector: WorkerConnector;
  try {
    connector = config.connector.startsWith("k8s://")
      ? await KubernetesWorkerConnector.start({ ...parseK8sConnectorUrl(config.connector), log: (m) => console.error(`kvroute planner: ${m}`) })
      : new DryRunConnector(initial);
  } catch (err) {
    console.error(`kvroute planner: ${err instanceof Error ? err.message : String(err)}`);
    server?.close();
    return 1;
  }
  const loop = await startPlanner(config, {
    connector,
    gatewayMetrics: async () => {
      const res = await fetch(url, { signal: AbortSignal.timeout(5000) });
      if (!res.ok) throw new Error(`${url} answered ${res.status}`);
      return res.text();
    },
    metrics,
  }).catch((err: unknown) => {
    console.error(`kvroute planner: ${err instanceof Error ? err.message : String(err)}`);
    return null;
  });
  if (!loop) {
    server?.close();
    return 1;
  }
  console.log(`kvroute planner: running ${JSON.stringify({ planner: config.planner, mode: config.mode, gateway: url, intervalS: config.adjustmentIntervalS, metricsPort: config.metricsPort })}`);
  await waitForSignal();
  await loop.stop();
  await connector.close();
  server?.close();
  return 0;
}
