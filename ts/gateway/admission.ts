/**
 * Admission control (DESIGN.md, "Request life"): a request is admitted when some worker target
 * (worker, DP rank) serving its model has fewer than `maxActivePerWorker` requests in flight from
 * this gateway; the router then chooses among those targets only (the full ones are excluded).
 * When every target is full the request waits in a bounded FIFO queue per model, and is admitted
 * as soon as a target frees up; it is refused (503) only when the queue is full, its deadline
 * passes, or no worker serves the model at all.
 *
 * Invariants: `inflight` counts exactly the requests between `take` and `release` per target (no
 * entry is kept at 0); a waiter is in its model's queue iff its timer is armed and it has not been
 * settled; waiters of a model are admitted in arrival order, and a new arrival never overtakes a
 * waiter of the same model.
 */
import type { WorkerTarget } from "../router/types.js";
import { NoHealthyWorkerError, QueueFullError, QueueTimeoutError } from "./errors.js";
import type { GatewayMetrics } from "./metrics.js";

export interface AdmissionOptions {
  maxActivePerWorker: number;
  maxQueue: number;
  timeoutMs: number;
}

/** A try at admission: returns the result when admitted, or undefined to keep waiting. */
export type AdmitAttempt<T> = (exclude: readonly WorkerTarget[]) => T;

interface Waiter {
  model: string;
  attempt: AdmitAttempt<unknown>;
  targets: () => readonly WorkerTarget[];
  resolve: (value: unknown) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout;
  since: number;
  settled: boolean;
}

const NONE: readonly WorkerTarget[] = Object.freeze([]);

/**
 * Another lane sending requests to the same targets (the native front, native-front.ts): its
 * in-flight requests count toward `maxActivePerWorker` here, and it is told this gateway's counts
 * and queue lengths, so both lanes hold one bound and a queued request is not overtaken.
 */
export interface AdmissionPeer {
  inflight(workerId: string, dpRank: number): number;
  counted(workerId: string, dpRank: number, n: number): void;
  queued(model: string, n: number): void;
}

export function targetKey(workerId: string, dpRank: number): string {
  return `${workerId}#${dpRank}`;
}

export class Admission {
  private readonly inflight = new Map<string, number>();
  private readonly queues = new Map<string, Waiter[]>();
  private waitingTotal = 0;
  private peer: AdmissionPeer | null = null;

  constructor(
    private readonly options: AdmissionOptions,
    private readonly metrics: GatewayMetrics,
  ) {}

  /** Shares the bound with another lane (null: this gateway alone). */
  setPeer(peer: AdmissionPeer | null): void {
    this.peer = peer;
  }

  /** Requests in flight on a target, this gateway's and its peer's. */
  active(workerId: string, dpRank: number): number {
    return (this.inflight.get(targetKey(workerId, dpRank)) ?? 0) + (this.peer?.inflight(workerId, dpRank) ?? 0);
  }

  /** Targets of `targets` that are full. */
  full(targets: readonly WorkerTarget[]): readonly WorkerTarget[] {
    const max = this.options.maxActivePerWorker;
    let out: WorkerTarget[] | null = null;
    for (const t of targets) if (this.active(t.workerId, t.dpRank) >= max) (out ??= []).push(t);
    return out ?? NONE;
  }

  /** Counts a request as in flight on a target (call when it is sent). */
  take(workerId: string, dpRank: number): void {
    const key = targetKey(workerId, dpRank);
    const n = (this.inflight.get(key) ?? 0) + 1;
    this.inflight.set(key, n);
    this.counted(workerId, dpRank, n);
  }

  /** The request left the target (finished, failed, cancelled); admits waiters if any. */
  release(workerId: string, dpRank: number): void {
    const key = targetKey(workerId, dpRank);
    const n = (this.inflight.get(key) ?? 0) - 1;
    if (n <= 0) this.inflight.delete(key);
    else this.inflight.set(key, n);
    this.counted(workerId, dpRank, Math.max(0, n));
    if (this.waitingTotal > 0) this.pump();
  }

  /** Sets a target's gauge to both lanes' count (also at scrape time, for the peer's changes). */
  refreshGauge(workerId: string, dpRank: number): void {
    this.metrics.active(workerId, dpRank).set(this.active(workerId, dpRank));
  }

  private counted(workerId: string, dpRank: number, n: number): void {
    this.peer?.counted(workerId, dpRank, n);
    this.metrics.active(workerId, dpRank).set(n + (this.peer?.inflight(workerId, dpRank) ?? 0));
  }

  private depth(model: string, n: number): void {
    this.metrics.queueDepth.set({ model }, n);
    this.peer?.queued(model, n);
  }

  /**
   * Admits a request for `model` now or once a target frees up. `targets()` lists the model's
   * current targets; `attempt(exclude)` routes (synchronously) among the others and takes a slot.
   * Rejects with NoHealthyWorkerError, QueueFullError or QueueTimeoutError; `signal` aborts a wait.
   */
  admit<T>(model: string, targets: () => readonly WorkerTarget[], attempt: AdmitAttempt<T>, signal?: () => AbortSignal): Promise<T> | T {
    const list = targets();
    if (list.length === 0) {
      this.metrics.rejections.inc({ reason: "no_worker" });
      throw new NoHealthyWorkerError(model);
    }
    const queue = this.queues.get(model);
    if (!queue || queue.length === 0) {
      const full = this.full(list);
      if (full.length < list.length) {
        this.metrics.admitted("immediate");
        return attempt(full);
      }
    }
    if (this.waitingTotal >= this.options.maxQueue) {
      this.metrics.rejections.inc({ reason: "queue_full" });
      throw new QueueFullError(model, this.waitingTotal);
    }
    return new Promise<T>((resolve, reject) => {
      const waiter: Waiter = {
        model,
        attempt,
        targets,
        resolve: resolve as (v: unknown) => void,
        reject,
        since: Date.now(),
        settled: false,
        timer: setTimeout(() => {
          if (waiter.settled) return;
          this.drop(waiter);
          this.metrics.rejections.inc({ reason: "queue_timeout" });
          reject(new QueueTimeoutError(model, Date.now() - waiter.since));
        }, this.options.timeoutMs),
      };
      let q = this.queues.get(model);
      if (!q) this.queues.set(model, (q = []));
      q.push(waiter);
      this.waitingTotal++;
      this.depth(model, q.length);
      const s = signal?.();
      s?.addEventListener(
        "abort",
        () => {
          if (waiter.settled) return;
          this.drop(waiter);
          reject(s.reason instanceof Error ? s.reason : new Error("aborted"));
        },
        { once: true },
      );
    });
  }

  /** Tries to admit waiting requests (after a release, or when workers were added or removed). */
  pump(): void {
    for (const [model, q] of this.queues) {
      while (q.length > 0) {
        const head = q[0]!;
        const list = head.targets();
        if (list.length === 0) {
          // Every worker of the model left: nobody can serve the waiters.
          for (const w of q.splice(0)) {
            this.settle(w);
            this.metrics.rejections.inc({ reason: "no_worker" });
            w.reject(new NoHealthyWorkerError(model));
          }
          break;
        }
        const full = this.full(list);
        if (full.length >= list.length) break;
        q.shift();
        this.settle(head);
        this.metrics.admitted("queued");
        try {
          head.resolve(head.attempt(full));
        } catch (err) {
          head.reject(err as Error);
        }
      }
      this.depth(model, q.length);
    }
  }

  /** Requests waiting, over all models. */
  get waiting(): number {
    return this.waitingTotal;
  }

  /** Rejects every waiter (gateway shutdown). */
  close(err: Error): void {
    for (const q of this.queues.values()) {
      for (const w of q.splice(0)) {
        this.settle(w);
        w.reject(err);
      }
    }
  }

  private settle(w: Waiter): void {
    w.settled = true;
    clearTimeout(w.timer);
    this.waitingTotal--;
  }

  private drop(w: Waiter): void {
    const q = this.queues.get(w.model);
    const i = q ? q.indexOf(w) : -1;
    if (i >= 0) q!.splice(i, 1);
    this.settle(w);
    this.depth(w.model, q?.length ?? 0);
  }
}
