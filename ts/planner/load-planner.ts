/**
 * LoadPlanner: scales one worker type on what the workers report now — `vllm:num_requests_waiting`,
 * KV cache usage — and the TTFT and ITL the gateway measured over the interval, with no profile
 * and no prediction. It decides every interval from whatever it has (never waits for a learning
 * window: Dynamo's load scaler can sit in `insufficient_data` and never scale).
 *
 * Pressure = the largest of: observed TTFT / target, observed ITL / target, mean KV usage / kvHigh,
 * and, with requests waiting, 1 + waiting per worker / waitingHigh. Workers wanted = running x
 * pressure, through the same ReplicaGovernor as the SLA planner (up at once, down only with margin,
 * patience and cooldown), so it never flaps. Beside the SLA planner it only raises: the SLA
 * planner's count is its floor (`floor`).
 */
import { InvalidConfigError } from "../errors.js";
import { ReplicaGovernor, type GovernorOptions } from "./governor.js";
import type { Targets } from "./replicas.js";
import { UnreachableTargetError } from "./errors.js";

export interface WorkerLoadSample {
  waiting: number;
  running: number;
  /** 0..1 */
  kvUsage: number;
}

export interface LoadObservation {
  workers: readonly WorkerLoadSample[];
  ttftMs: number | null;
  itlMs: number | null;
}

export interface LoadPlannerOptions {
  targets: Targets;
  /** KV usage at which a worker counts as full. Default 0.85. */
  kvHigh?: number;
  /** Waiting requests per worker that count as one more worker's worth. Default 2. */
  waitingHigh?: number;
  governor?: GovernorOptions;
}

export interface LoadDecision {
  pressure: number;
  wanted: number;
  target: number;
  reasons: string[];
}

export class LoadPlanner {
  private readonly gov: ReplicaGovernor;
  private readonly kvHigh: number;
  private readonly waitingHigh: number;

  constructor(private readonly o: LoadPlannerOptions) {
    for (const [k, v] of [["TTFT", o.targets.ttftMs], ["ITL", o.targets.itlMs]] as const) {
      if (typeof v !== "number" || !Number.isFinite(v) || v <= 0) throw new UnreachableTargetError(`the ${k} target must be a number of milliseconds > 0 (got ${String(v)})`);
    }
    this.kvHigh = o.kvHigh ?? 0.85;
    this.waitingHigh = o.waitingHigh ?? 2;
    if (!(this.kvHigh > 0 && this.kvHigh <= 1)) throw new InvalidConfigError(`kvHigh must be in (0, 1] (got ${this.kvHigh})`);
    if (!(this.waitingHigh > 0)) throw new InvalidConfigError(`waitingHigh must be > 0 (got ${this.waitingHigh})`);
    this.gov = new ReplicaGovernor(o.governor);
  }

  get current(): number {
    return this.gov.current;
  }

  /** One interval: `running` workers now, what they report; `floor` from the SLA planner if any. */
  decide(obs: LoadObservation, running: number, floor = 0): LoadDecision {
    const reasons: string[] = [];
    const planned = this.gov.current;
    if (this.gov.observe(running)) reasons.push(`${running} running where the planner had set ${planned} (changed by hand?): respected until this decision says otherwise`);
    const n = Math.max(1, obs.workers.length);
    const kv = obs.workers.reduce((a, w) => a + w.kvUsage, 0) / n;
    const waiting = obs.workers.reduce((a, w) => a + w.waiting, 0);
    const parts: [string, number][] = [["kv", kv / this.kvHigh]];
    if (obs.ttftMs !== null) parts.push(["ttft", obs.ttftMs / this.o.targets.ttftMs]);
    if (obs.itlMs !== null) parts.push(["itl", obs.itlMs / this.o.targets.itlMs]);
    if (waiting > 0) parts.push(["waiting", 1 + waiting / n / this.waitingHigh]);
    const [why, pressure] = parts.reduce((a, b) => (b[1] > a[1] ? b : a));
    const wanted = Math.max(floor, Math.max(running, this.gov.min) * pressure);
    const d = this.gov.decide(wanted);
    reasons.push(`pressure ${pressure.toFixed(2)} (${why}; kv ${(kv * 100).toFixed(0)}%, waiting ${waiting}, ttft ${fmt(obs.ttftMs)}, itl ${fmt(obs.itlMs)}${floor > 0 ? `, SLA floor ${floor}` : ""}): ${d.reason}`);
    return { pressure, wanted, target: d.target, reasons };
  }
}

function fmt(ms: number | null): string {
  return ms === null ? "n/a" : `${ms.toFixed(1)} ms`;
}
