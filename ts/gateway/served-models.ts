/**
 * Which models this gateway serves, to tell "no worker right now" (503 with retry-after, which
 * SDKs retry) from "no such model" (404, which they do not). A model is served when it is
 * configured or launched by `kvroute up` (for good), has a worker in the registry, or had one
 * within the last `graceMs` (workers restarting, a rolling update).
 *
 * Invariant: `left` holds only models whose workers all left, each with the time the last one
 * left; an entry is dropped when a worker of the model registers again or the grace passes.
 */
import type { FleetView } from "./context.js";
import type { Registry } from "../router/types.js";

export type ModelStatus = "serving" | "unavailable" | "unknown";

export class ServedModels {
  private readonly permanent: ReadonlySet<string>;
  private readonly left = new Map<string, number>();
  private readonly unwatch: () => void;

  constructor(
    registry: Registry,
    private readonly fleet: FleetView,
    permanent: Iterable<string>,
    private readonly graceMs: number,
  ) {
    this.permanent = new Set(permanent);
    this.unwatch = registry.watch((change) => {
      const model = change.record.model;
      if (change.type === "added") this.left.delete(model);
      else if (registry.list(model).length === 0) this.left.set(model, performance.now());
    });
  }

  /** `serving`: some worker is registered; `unavailable`: served but none is; `unknown`: never served. */
  status(model: string): ModelStatus {
    if (this.fleet.of(model).records.length > 0) return "serving";
    if (this.permanent.has(model)) return "unavailable";
    const since = this.left.get(model);
    if (since === undefined) return "unknown";
    if (performance.now() - since <= this.graceMs) return "unavailable";
    this.left.delete(model);
    return "unknown";
  }

  /** Every model served now or within the grace period. */
  names(): Set<string> {
    const out = new Set([...this.permanent, ...this.fleet.list().map((r) => r.model)]);
    for (const m of [...this.left.keys()]) if (this.status(m) !== "unknown") out.add(m);
    return out;
  }

  close(): void {
    this.unwatch();
  }
}
