/**
 * LocalConnector: worker processes on this host, started, drained and stopped through VllmWorker,
 * registered in the gateway's registry (any `Registry`: MemoryRegistry, EtcdRegistry...).
 *
 * - Up: a new VllmWorker from `workerConfig(kind, n)` starts in the background; it registers
 *   itself once healthy (VllmWorker's registry hook), so the router never sees a cold worker.
 * - Down: workers still starting are stopped first; then the ones with the fewest requests in
 *   flight. A removed worker is drained — deregistered (no new request reaches it), then waited
 *   on until vLLM's /metrics says nothing runs or waits — after `settleMs` for requests routed
 *   just before the deregistration to land, and twice in a row — then `kvHoldMs` more for a prefill
 *   worker (its finished prefills' KV blocks stay until the decode worker has pulled them), and
 *   `inFlight(id)` (the gateway's own count, when given) must be 0 too — and only then stopped.
 * - running(kind): workers of that role in the registry (whoever started them: a hand-started
 *   `kvroute worker` counts) plus ours still starting; draining ones do not count.
 */
import type { Registry } from "../router/types.js";
import type { VllmWorkerConfig } from "../workers/config.js";
import { VllmWorker, type SupervisionOptions } from "../workers/vllm-worker.js";
import type { WorkerConnector } from "./connector.js";
import type { WorkerKind } from "./sla-planner.js";

export interface LocalConnectorOptions {
  registry: Registry;
  /** The config of the n-th worker of a kind this connector starts (a free port each). */
  workerConfig: (kind: WorkerKind, n: number) => VllmWorkerConfig | Promise<VllmWorkerConfig>;
  supervision?: Omit<SupervisionOptions, "registry">;
  /** Longest a drain waits for in-flight requests before stopping anyway. Default 120 s. */
  drainDeadlineMs?: number;
  /** After a prefill worker drains: time its KV stays readable for decode workers. Default 2 s. */
  kvHoldMs?: number;
  /** After deregistering, time for requests already routed there to arrive. Default 1 s. */
  settleMs?: number;
  /** The gateway's in-flight count for a worker (requests it still routes there), if known. */
  inFlight?: (workerId: string) => number | Promise<number>;
  log?: (line: string) => void;
}

export class LocalConnector implements WorkerConnector {
  readonly name = "local";
  private readonly workers = new Map<WorkerKind, VllmWorker[]>();
  private readonly draining = new Set<Promise<void>>();
  private serial = 0;
  private readonly log: (line: string) => void;

  constructor(private readonly o: LocalConnectorOptions) {
    this.log = o.log ?? ((l) => console.error(`kvroute planner: ${l}`));
  }

  private mine(kind: WorkerKind): VllmWorker[] {
    let list = this.workers.get(kind);
    if (!list) this.workers.set(kind, (list = []));
    return list;
  }

  running(kind: WorkerKind): number {
    const role = kind;
    const registered = new Set(this.o.registry.list().filter((r) => r.role === role).map((r) => r.id));
    let starting = 0;
    for (const w of this.mine(kind)) if ((w.state === "starting" || w.state === "idle") && !registered.has(w.id)) starting++;
    return registered.size + starting;
  }

  async scale(kind: WorkerKind, count: number, reason: string): Promise<void> {
    const list = this.mine(kind);
    const now = this.running(kind);
    if (count > now) {
      for (let k = now; k < count; k++) {
        const config = await this.o.workerConfig(kind, this.serial++);
        const w = new VllmWorker({ ...config, role: kind }, { ...this.o.supervision, registry: this.o.registry });
        list.push(w);
        this.log(`starting ${w.id} (${kind}): ${reason}`);
        w.start().catch((err: unknown) => {
          this.log(`${w.id} did not start: ${err instanceof Error ? err.message : String(err)}`);
          this.forget(kind, w);
        });
      }
      return;
    }
    if (count >= now) return;
    let excess = now - count;
    // Cheapest first: ours still starting, then ours with the fewest requests in flight.
    const starting = list.filter((w) => w.state === "starting" || w.state === "idle");
    for (const w of starting) {
      if (excess === 0) break;
      excess--;
      this.log(`cancelling ${w.id} (${kind}, still starting): ${reason}`);
      this.forget(kind, w);
      this.track(w.stop());
    }
    if (excess === 0) return;
    const serving = list.filter((w) => w.state === "healthy");
    const loads = await Promise.all(serving.map(async (w) => ({ w, n: (await w.inFlight().catch(() => null)) ?? Number.MAX_SAFE_INTEGER })));
    loads.sort((a, b) => a.n - b.n);
    for (const { w } of loads.slice(0, excess)) {
      this.forget(kind, w);
      this.log(`draining ${w.id} (${kind}): ${reason}`);
      this.track(this.drainAndStop(kind, w));
      excess--;
    }
    if (excess > 0) this.log(`${excess} more ${kind} worker(s) would go, but they were not started by this planner: left running`);
  }

  private async drainAndStop(kind: WorkerKind, w: VllmWorker): Promise<void> {
    const deadlineMs = this.o.drainDeadlineMs ?? 120_000;
    const t0 = Date.now();
    const r = await w.drain({ deadlineMs });
    // A request routed just before the deregistration may still be on its way to the worker:
    // let it land, then wait until the engine and the gateway both count nothing, twice in a row.
    await sleep(this.o.settleMs ?? 1000);
    let zeros = 0;
    let inFlight: number | null = null;
    while (Date.now() - t0 < deadlineMs) {
      inFlight = await w.inFlight().catch(() => null);
      const gateway = this.o.inFlight ? await this.o.inFlight(w.id) : 0;
      if ((inFlight ?? 0) === 0 && gateway === 0) {
        if (++zeros >= 2) break;
      } else zeros = 0;
      await sleep(100);
    }
    if (kind === "prefill") await sleep(this.o.kvHoldMs ?? 2000);
    this.log(`${w.id} drained (${zeros >= 2 ? "nothing in flight" : `${inFlight ?? "?"} still in flight at the deadline`}, ${Date.now() - t0} ms; engine idle after ${r.waitedMs} ms): stopping`);
    await w.stop();
  }

  private forget(kind: WorkerKind, w: VllmWorker): void {
    const list = this.mine(kind);
    const i = list.indexOf(w);
    if (i >= 0) list.splice(i, 1);
  }

  private track(p: Promise<void>): void {
    const q = p.catch((err: unknown) => this.log(`stop failed: ${err instanceof Error ? err.message : String(err)}`)).finally(() => this.draining.delete(q));
    this.draining.add(q);
  }

  /** Resolves when every drain under way has stopped its worker. */
  async settled(): Promise<void> {
    while (this.draining.size > 0) await Promise.all([...this.draining]);
  }

  /** Workers this connector started and still owns. */
  owned(kind: WorkerKind): readonly VllmWorker[] {
    return this.mine(kind);
  }

  async close(): Promise<void> {
    await this.settled();
    const all = [...this.workers.values()].flat();
    this.workers.clear();
    await Promise.all(all.map((w) => w.stop()));
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
