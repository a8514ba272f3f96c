/**
 * Connectors: how a planner's decision reaches the fleet. A connector answers two questions —
 * how many workers of a kind run now, and "make it n" — and owns the how: processes on this host
 * (LocalConnector), nothing at all (DryRunConnector), or, later, a Kubernetes deployment.
 *
 * Contract for any connector (a Kubernetes one included):
 * - `running(kind)` counts workers serving or starting, as the fleet really is — hand-made
 *   changes included (the planner compares it with what it set and respects the difference
 *   until its next decision says otherwise). Workers draining are not counted.
 * - `scale(kind, n, reason)` converges towards n and returns once the change is under way, not
 *   when it is done (a cold start can take minutes; the planner keeps deciding meanwhile). New
 *   workers join the registry only when healthy. A removed worker must leave the registry first,
 *   finish what it holds (prefills whose KV a decode worker still has to pull included), and only
 *   then stop: no request is lost. Calling `scale` again with another n while a change is under
 *   way must be safe.
 * - `close()` stops what the connector started (or leaves it, for a connector that does not own
 *   workers) and resolves when done.
 * A Kubernetes connector would map kinds to Deployments (or Dynamo's DGD services), `running` to
 * ready replicas, `scale` to a replica patch with a preStop hook that drains (deregister, wait
 * for /metrics running+waiting = 0) before SIGTERM.
 */
import type { WorkerKind } from "./sla-planner.js";

export interface WorkerConnector {
  readonly name: string;
  running(kind: WorkerKind): number;
  scale(kind: WorkerKind, count: number, reason: string): Promise<void>;
  close(): Promise<void>;
}

/** Decisions only: records what it was told; `running` is what it was last told (or `initial`). */
export class DryRunConnector implements WorkerConnector {
  readonly name = "dry-run";
  readonly calls: { kind: WorkerKind; count: number; reason: string }[] = [];
  private readonly counts = new Map<WorkerKind, number>();
  constructor(initial: Partial<Record<WorkerKind, number>> = {}) {
    for (const [k, v] of Object.entries(initial)) this.counts.set(k as WorkerKind, v);
  }
  running(kind: WorkerKind): number {
    return this.counts.get(kind) ?? 0;
  }
  scale(kind: WorkerKind, count: number, reason: string): Promise<void> {
    this.calls.push({ kind, count, reason });
    this.counts.set(kind, count);
    return Promise.resolve();
  }
  close(): Promise<void> {
    return Promise.resolve();
  }
}
