/**
 * PlannerLoop: runs the planners beside a gateway. Every adjustment interval: observe (the
 * gateway's metrics; each worker's vLLM metrics for the load planner), read what runs (the
 * connector), decide (SLA planner, load planner, or both: the load planner only raises above the
 * SLA floor), apply (the connector), and record (metrics, one JSON line per decision in the
 * decision log). A failing step is logged and the next interval tries again: the loop never dies
 * and never stalls on missing data.
 */
import type { WorkerConnector } from "./connector.js";
import type { GatewayMetricsSource } from "./gateway-source.js";
import type { LoadPlanner, WorkerLoadSample } from "./load-planner.js";
import type { PlannerMetrics } from "./planner-metrics.js";
import type { PlannerDecision, Replicas, SlaPlanner, WorkerKind } from "./sla-planner.js";

export interface DecisionRecord {
  at: string;
  planner: string;
  decision: PlannerDecision;
  applied: Replicas;
}

export interface PlannerLoopOptions {
  kinds: WorkerKind[];
  intervalMs: number;
  source: GatewayMetricsSource;
  connector: WorkerConnector;
  sla?: SlaPlanner;
  /** Per kind, a load planner and how to read its workers' load. */
  load?: Partial<Record<WorkerKind, { planner: LoadPlanner; workers: () => Promise<WorkerLoadSample[]> }>>;
  metrics?: PlannerMetrics;
  /** One JSON line per decision. */
  decisionLog?: (record: DecisionRecord) => void;
  log?: (line: string) => void;
}

export class PlannerLoop {
  private timer: NodeJS.Timeout | null = null;
  private ticking: Promise<unknown> | null = null;
  private readonly log: (line: string) => void;
  readonly decisions: DecisionRecord[] = [];

  constructor(private readonly o: PlannerLoopOptions) {
    if (!o.sla && !o.load) throw new Error("a planner loop needs the SLA planner, a load planner, or both");
    this.log = o.log ?? ((l) => console.error(`kvroute planner: ${l}`));
  }

  async start(): Promise<void> {
    await this.o.source.prime();
    this.timer = setInterval(() => {
      if (this.ticking) return; // the last decision is still being applied
      this.ticking = this.tick()
        .catch((err: unknown) => this.log(`decision failed (next interval tries again): ${err instanceof Error ? err.message : String(err)}`))
        .finally(() => (this.ticking = null));
    }, this.o.intervalMs);
  }

  /** One decision now (the timer calls it; tests may too). */
  async tick(): Promise<DecisionRecord> {
    const obs = await this.o.source.observe();
    const running: Replicas = Object.fromEntries(this.o.kinds.map((k) => [k, this.o.connector.running(k)]));
    let decision: PlannerDecision;
    if (this.o.sla) decision = this.o.sla.decide(obs, running);
    else {
      decision = { atS: 0, observed: null, predicted: null, wanted: {}, target: { ...running }, running, estimated: { ttftMs: null, itlMs: null }, corrections: { prefill: 1, decode: 1 }, reasons: [] };
    }
    const reasons: Partial<Record<WorkerKind, string>> = {};
    for (const line of decision.reasons) {
      const k = this.o.kinds.find((kind) => line.startsWith(`${kind}:`));
      if (k) reasons[k] = line;
    }
    const handChanged = this.o.kinds.filter((k) => decision.reasons.some((r) => r.startsWith(`${k}:`) && r.includes("changed by hand")));
    for (const kind of this.o.kinds) {
      const lp = this.o.load?.[kind];
      if (!lp) continue;
      const d = lp.planner.decide({ workers: await lp.workers(), ttftMs: obs.ttftMs, itlMs: obs.itlMs }, running[kind] ?? 0, this.o.sla ? (decision.target[kind] ?? 0) : 0);
      decision.target[kind] = Math.max(this.o.sla ? (decision.target[kind] ?? 0) : 0, d.target);
      const line = `${kind} (load): ${d.reasons.join("; ")}`;
      decision.reasons.push(line);
      reasons[kind] = this.o.sla ? `${reasons[kind] ?? ""}; ${line}` : line;
    }
    for (const kind of this.o.kinds) {
      const target = decision.target[kind];
      if (target === undefined || target === running[kind]) continue;
      await this.o.connector.scale(kind, target, reasons[kind] ?? "");
    }
    for (const r of decision.reasons) this.log(r);
    this.o.metrics?.record(decision, reasons, handChanged);
    const record: DecisionRecord = { at: new Date().toISOString(), planner: this.o.sla ? (this.o.load ? "sla+load" : "sla") : "load", decision, applied: { ...decision.target } };
    this.decisions.push(record);
    if (this.decisions.length > 1000) this.decisions.shift();
    this.o.decisionLog?.(record);
    return record;
  }

  /** Stops deciding (workers keep running: close the connector to stop them). */
  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    await this.ticking;
  }
}
