/**
 * The burst floor: the fleet an interval's own arrivals needed, replayed.
 *
 * The pooled queue (pooled-queue.ts) sizes for a rate and a burstiness summary (ca^2). At a
 * trough that summary fails: a handful of workers meets a clump of 10-28 requests arriving on the
 * same tick, or a minute-scale burst, and a long prompt holds a worker for seconds. What such an
 * interval needed is read off its arrivals directly: each request (its arrival time and the
 * prefill time of its uncached tokens) goes to the worker free first, as the load-aware router
 * sends it to an idle worker; the count is the fewest workers on which at most `budget` of the
 * servable requests (own prefill within the target) miss the TTFT target. The planner keeps the
 * largest such count over its last intervals as a floor: it sizes for the bursts it has seen
 * recently (the tail of an interval's arrivals), not for their mean.
 */

export interface BurstArrival {
  /** Arrival time (ms; any origin). */
  atMs: number;
  /** Prefill time on an idle worker (ms). */
  serviceMs: number;
}

/**
 * Share of servable requests (service within `targetMs`) whose TTFT exceeds `targetMs` when
 * `arrivals` (sorted by time) meet `workers` idle workers, each request on the worker free first;
 * `stretch` slows every prefill (a worker's time shared with decoding).
 */
export function burstMissShare(arrivals: readonly BurstArrival[], workers: number, targetMs: number, stretch = 1): number {
  if (workers < 1) return 1;
  const free = new Array<number>(workers).fill(Number.NEGATIVE_INFINITY);
  let servable = 0;
  let missed = 0;
  for (const a of arrivals) {
    const s = a.serviceMs * stretch;
    let k = 0;
    for (let j = 1; j < workers; j++) if (free[j]! < free[k]!) k = j;
    const start = Math.max(a.atMs, free[k]!);
    free[k] = start + s;
    if (s > targetMs) continue;
    servable++;
    if (start + s - a.atMs > targetMs) missed++;
  }
  return servable > 0 ? missed / servable : 0;
}

/**
 * The fewest workers (integer, 1..`max`) on which at most `budget` of the servable arrivals miss;
 * `stretchAt(c)` the prefill slowdown on c workers (Infinity: c cannot hold the load at all).
 */
export function burstWorkers(arrivals: readonly BurstArrival[], targetMs: number, budget: number, stretchAt: (workers: number) => number = () => 1, max = 256): number {
  if (arrivals.length === 0) return 0;
  const sorted = [...arrivals].sort((a, b) => a.atMs - b.atMs);
  for (let c = 1; c <= max; c++) {
    const stretch = stretchAt(c);
    if (!Number.isFinite(stretch)) continue;
    // As many workers as requests: each has its own; more would only shrink the stretch.
    if (c >= sorted.length || burstMissShare(sorted, c, targetMs, stretch) <= budget) return c;
  }
  return max;
}

/** The largest of the last `window` values: the floor the planner keeps. */
export class RecentMax {
  private readonly values: number[] = [];
  constructor(private readonly window: number) {}

  add(v: number): void {
    this.values.push(v);
    if (this.values.length > this.window) this.values.shift();
  }

  get value(): number {
    return this.values.length === 0 ? 0 : Math.max(...this.values);
  }
}
