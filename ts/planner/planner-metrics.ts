/**
 * The planner's Prometheus metrics (`kvroute_planner_*`), in a registry of their own or the
 * gateway's: observed and predicted load, replicas wanted / set / running per worker kind,
 * estimated TTFT and ITL, correction factors, and each decision with its reason (a counter by
 * action, and an info gauge holding the latest reason per kind).
 */
import { Counter, Gauge, Registry } from "prom-client";
import type { PlannerDecision, WorkerKind } from "./sla-planner.js";

export type DecisionAction = "up" | "down" | "hold";

export class PlannerMetrics {
  readonly registry: Registry;
  private readonly observed: Gauge<"quantity">;
  private readonly predicted: Gauge<"quantity">;
  private readonly wanted: Gauge<"kind">;
  private readonly target: Gauge<"kind">;
  private readonly running: Gauge<"kind">;
  private readonly estimated: Gauge<"quantity">;
  private readonly correction: Gauge<"phase">;
  private readonly decisions: Counter<"kind" | "action">;
  private readonly lastDecision: Gauge<"kind" | "action" | "reason">;
  private readonly handChanges: Counter<"kind">;

  constructor(registry = new Registry()) {
    this.registry = registry;
    const r = [registry];
    this.observed = new Gauge({ name: "kvroute_planner_observed", help: "Load seen over the last interval: request_rate (req/s), isl, osl (tokens), hit_rate (0..1), ttft_ms (p90), itl_ms (mean)", labelNames: ["quantity"], registers: r });
    this.predicted = new Gauge({ name: "kvroute_planner_predicted", help: "Load predicted for the next interval: request_rate, isl, osl, hit_rate", labelNames: ["quantity"], registers: r });
    this.wanted = new Gauge({ name: "kvroute_planner_replicas_wanted", help: "Workers the load needs (fractional, before bounds and hysteresis)", labelNames: ["kind"], registers: r });
    this.target = new Gauge({ name: "kvroute_planner_replicas_target", help: "Workers the planner set", labelNames: ["kind"], registers: r });
    this.running = new Gauge({ name: "kvroute_planner_replicas_running", help: "Workers serving or starting, as the connector reports them", labelNames: ["kind"], registers: r });
    this.estimated = new Gauge({ name: "kvroute_planner_estimated", help: "Latency the profile expects at the predicted load on the target fleet: ttft_ms (p90), itl_ms", labelNames: ["quantity"], registers: r });
    this.correction = new Gauge({ name: "kvroute_planner_correction_factor", help: "Observed / profiled latency (prefill: TTFT, decode: ITL)", labelNames: ["phase"], registers: r });
    this.decisions = new Counter({ name: "kvroute_planner_decisions_total", help: "Decisions by worker kind and action (up, down, hold)", labelNames: ["kind", "action"], registers: r });
    this.lastDecision = new Gauge({ name: "kvroute_planner_last_decision_info", help: "The latest decision per worker kind, its action and reason (value 1)", labelNames: ["kind", "action", "reason"], registers: r });
    this.handChanges = new Counter({ name: "kvroute_planner_hand_changes_total", help: "Times the fleet was found changed by someone else (respected until the next decision)", labelNames: ["kind"], registers: r });
  }

  record(d: PlannerDecision, reasons: Partial<Record<WorkerKind, string>>, handChanged: WorkerKind[]): void {
    const o = d.observed;
    if (o) {
      this.observed.set({ quantity: "request_rate" }, o.requestsPerS);
      this.observed.set({ quantity: "isl" }, o.isl);
      this.observed.set({ quantity: "osl" }, o.osl);
      this.observed.set({ quantity: "hit_rate" }, o.hitRate);
      if (o.ttftMs !== null) this.observed.set({ quantity: "ttft_ms" }, o.ttftMs);
      if (o.itlMs !== null) this.observed.set({ quantity: "itl_ms" }, o.itlMs);
    }
    const p = d.predicted;
    if (p) {
      this.predicted.set({ quantity: "request_rate" }, p.requestsPerS);
      this.predicted.set({ quantity: "isl" }, p.isl);
      this.predicted.set({ quantity: "osl" }, p.osl);
      this.predicted.set({ quantity: "hit_rate" }, p.hitRate);
    }
    if (d.estimated.ttftMs !== null) this.estimated.set({ quantity: "ttft_ms" }, d.estimated.ttftMs);
    if (d.estimated.itlMs !== null) this.estimated.set({ quantity: "itl_ms" }, d.estimated.itlMs);
    this.correction.set({ phase: "prefill" }, d.corrections.prefill);
    this.correction.set({ phase: "decode" }, d.corrections.decode);
    for (const [kind, target] of Object.entries(d.target) as [WorkerKind, number][]) {
      const running = d.running[kind] ?? 0;
      const action: DecisionAction = target > running ? "up" : target < running ? "down" : "hold";
      if (d.wanted[kind] !== undefined) this.wanted.set({ kind }, d.wanted[kind]!);
      this.target.set({ kind }, target);
      this.running.set({ kind }, running);
      this.decisions.inc({ kind, action });
      this.lastDecision.reset();
      this.lastDecision.set({ kind, action, reason: (reasons[kind] ?? "").slice(0, 200) }, 1);
    }
    for (const kind of handChanged) this.handChanges.inc({ kind });
  }

  text(): Promise<string> {
    return this.registry.metrics();
  }
}
