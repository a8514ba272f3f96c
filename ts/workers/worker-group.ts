/**
 * WorkerGroup: workers that start together (all healthy, or all stopped again) and stop together.
 * A topology (topology.ts) is launched as one group.
 */
import { EventEmitter } from "node:events";
import { InvalidConfigError } from "../errors.js";
import type { VllmWorkerConfig, WorkerRecord } from "./config.js";
import type { WorkerFailedError, WorkerStartError } from "./errors.js";
import { VllmWorker, type DrainOptions, type DrainResult, type StopOptions, type SupervisionOptions } from "./vllm-worker.js";

export interface WorkerGroupEvents {
  /** A member gave up after the group had started (too many restarts). */
  workerFailed: [{ worker: VllmWorker; error: WorkerStartError | WorkerFailedError }];
  /** A member became healthy again after a restart. */
  workerRestarted: [{ worker: VllmWorker; record: WorkerRecord }];
}

export interface WorkerGroupOptions extends SupervisionOptions {
  /** Stop every member when one fails after the start. Default false. */
  stopOnFailure?: boolean;
}

export class WorkerGroup extends EventEmitter<WorkerGroupEvents> {
  readonly workers: readonly VllmWorker[];
  private readonly stopOnFailure: boolean;
  private started = false;
  private stopping: Promise<void> | null = null;

  constructor(configs: readonly VllmWorkerConfig[], options: WorkerGroupOptions = {}) {
    super();
    const { stopOnFailure, ...supervision } = options;
    this.stopOnFailure = stopOnFailure ?? false;
    this.workers = configs.map((c) => new VllmWorker(c, supervision));
    const ids = new Set<string>();
    const ports = new Set<string>();
    for (const w of this.workers) {
      if (ids.has(w.id)) throw new InvalidConfigError(`worker group: duplicate worker id '${w.id}'`);
      ids.add(w.id);
      const hostPort = `${w.config.advertiseHost}:${w.config.port}`;
      if (ports.has(hostPort)) throw new InvalidConfigError(`worker group: two workers on ${hostPort}`);
      ports.add(hostPort);
    }
    for (const worker of this.workers) {
      worker.on("failed", (error) => {
        if (!this.started) return;
        this.emit("workerFailed", { worker, error });
        if (this.stopOnFailure) void this.stop();
      });
      worker.on("healthy", (record) => {
        if (this.started && worker.restarts > 0) this.emit("workerRestarted", { worker, record });
      });
    }
  }

  /**
   * Starts every worker at once and resolves with their records when all are healthy. If one
   * fails, the others are stopped at once (not left to reach their own timeouts) and the first
   * failure is rethrown (a WorkerStartError naming the worker).
   */
  async start(): Promise<WorkerRecord[]> {
    let firstError: unknown = null;
    const results = await Promise.allSettled(
      this.workers.map((w) =>
        w.start().catch((err: unknown) => {
          if (firstError === null) {
            firstError = err;
            for (const other of this.workers) if (other !== w) void other.stop({ graceMs: 2000 });
          }
          throw err;
        }),
      ),
    );
    if (firstError !== null) {
      await Promise.all(this.workers.map((w) => w.stop({ graceMs: 2000 })));
      throw firstError;
    }
    this.started = true;
    return results.map((r) => (r as PromiseFulfilledResult<WorkerRecord>).value);
  }

  /** Records of the members that are healthy now, in group order. */
  get records(): WorkerRecord[] {
    return this.workers.filter((w) => w.state === "healthy" && w.record).map((w) => w.record!);
  }

  worker(id: string): VllmWorker | undefined {
    return this.workers.find((w) => w.id === id);
  }

  drain(options?: DrainOptions): Promise<DrainResult[]> {
    return Promise.all(this.workers.map((w) => w.drain(options)));
  }

  /** Stops every member (in parallel); idempotent. */
  stop(options?: StopOptions): Promise<void> {
    this.stopping ??= Promise.all(this.workers.map((w) => w.stop(options))).then(() => {
      this.stopping = null;
    });
    return this.stopping;
  }
}
