/**
 * The prefill fleet as one pooled queue (M/G/c): a KV-aware router sends each request to a worker
 * with room, so c workers share one stream of prefills rather than each running its own queue.
 * Pooling is why a large fleet runs busier than a small one at the same TTFT tail (square-root
 * staffing), and why sizing each worker as its own queue over-provisions the peak and, once a
 * correction factor has absorbed the mix of prompt sizes, the trough as well.
 *
 * Model (Erlang C with the Allen-Cunneen correction for general arrivals and service):
 * - offered load a = rate x E[S] (in workers), S a request's prefill time on an idle worker;
 * - the mean wait is Allen-Cunneen's g x C(c, a) x E[S] / (c - a), C the Erlang C probability of
 *   waiting and g = (ca^2 + cs^2) / 2 (ca^2: arrivals' squared coefficient of variation, 1 for
 *   Poisson, ~9 for a trace whose requests arrive in clumps; cs^2: the prompt mix's). Clumps make
 *   more requests wait rather than each wait longer, so g raises the probability of waiting,
 *   min(1, g C), and the wait, given that it waits, is exponential with the rest of that mean;
 * - a request of prefill time s misses a TTFT target T when its wait exceeds T - s (always, when
 *   s > T: no fleet size helps it).
 * Non-integer c (a worker's time partly taken by decoding) is interpolated between integers.
 */

/** Erlang C: the probability an arrival waits, c servers (integer >= 1) offered a < c. */
export function erlangC(c: number, a: number): number {
  if (a <= 0) return 0;
  if (a >= c) return 1;
  // Erlang B by its recurrence (stable for large c), then C from B.
  let b = 1;
  for (let k = 1; k <= c; k++) b = (a * b) / (k + a * b);
  return (c * b) / (c - a * (1 - b));
}

export interface ServiceMix {
  /** Prefill times (ms) on an idle worker, one per sampled request. */
  timesMs: number[];
  meanMs: number;
  /** Squared coefficient of variation of the times. */
  cs2: number;
}

export function serviceMix(timesMs: readonly number[]): ServiceMix {
  const n = timesMs.length;
  if (n === 0) return { timesMs: [], meanMs: 0, cs2: 1 };
  let sum = 0;
  for (const t of timesMs) sum += t;
  const mean = sum / n;
  let v = 0;
  for (const t of timesMs) v += (t - mean) * (t - mean);
  // One sample says nothing about the spread: assume exponential-like (cs^2 = 1).
  const cs2 = n > 1 && mean > 0 ? v / n / (mean * mean) : 1;
  return { timesMs: [...timesMs], meanMs: mean, cs2 };
}

export interface PooledQueue {
  /** Servers (may be fractional: interpolated). */
  servers: number;
  /** Requests per ms. */
  ratePerMs: number;
  mix: ServiceMix;
  /** Arrivals' squared coefficient of variation (1: Poisson). */
  ca2: number;
  /** Service-time stretch (decode steps sharing the worker, a correction factor). */
  stretch: number;
}

/** Share of requests missing `targetMs` on an integer number of servers. */
function missAt(c: number, q: PooledQueue, targetMs: number): number {
  const s = q.mix.meanMs * q.stretch;
  const a = q.ratePerMs * s;
  const times = q.mix.timesMs;
  if (a >= c) return 1;
  const g = Math.max(0.05, (q.ca2 + q.mix.cs2) / 2);
  const meanWait = (g * erlangC(c, a) * s) / (c - a);
  const wait = Math.min(1, g * erlangC(c, a));
  if (wait <= 0) return unreachableAt(times, q.stretch, targetMs);
  const decay = wait / meanWait;
  let miss = 0;
  for (const t of times) {
    const slack = targetMs - t * q.stretch;
    miss += slack < 0 ? 1 : wait * Math.exp(-decay * slack);
  }
  return miss / times.length;
}

function unreachableAt(times: readonly number[], stretch: number, targetMs: number): number {
  let n = 0;
  for (const t of times) if (t * stretch > targetMs) n++;
  return n / times.length;
}

/** Share of requests whose TTFT (wait + own prefill) exceeds `targetMs`. */
export function missShare(q: PooledQueue, targetMs: number): number {
  if (q.mix.timesMs.length === 0) return 0;
  return interpolate(q.servers, (c) => missAt(c, q, targetMs));
}

/** Share of requests no fleet can serve within `targetMs` (their own prefill is longer). */
export function unreachableShare(mix: ServiceMix, targetMs: number, stretch = 1): number {
  if (mix.timesMs.length === 0) return 0;
  let n = 0;
  for (const s of mix.timesMs) if (s * stretch > targetMs) n++;
  return n / mix.timesMs.length;
}

/** The TTFT quantile `q` (0..1) of the mix on `queue` (bisection on missShare). */
export function ttftQuantile(queue: PooledQueue, q: number): number {
  let lo = 0;
  let hi = Math.max(1, ...queue.mix.timesMs.map((s) => s * queue.stretch));
  while (missShare(queue, hi) > 1 - q && hi < 1e9) hi *= 2;
  for (let k = 0; k < 50; k++) {
    const mid = (lo + hi) / 2;
    if (missShare(queue, mid) > 1 - q) lo = mid;
    else hi = mid;
  }
  return hi;
}

/**
 * The fewest servers (fractional) above `floor` whose miss share is at most `budget`; `build` makes
 * the queue for a server count (the stretch may depend on it). Infinity when none up to `max`.
 */
export function serversForMiss(build: (servers: number) => PooledQueue, targetMs: number, budget: number, floor: number, max = 4096): number {
  let prevC = -1;
  let prevMiss = 1;
  // From the integer at or below the floor (it cannot hold: miss 1), so float noise in the floor
  // never changes where the interpolation starts.
  for (let c = Math.max(1, Math.floor(floor)); c <= max; c++) {
    const miss = missShare(build(c), targetMs);
    if (miss <= budget) {
      if (prevC < 0 || prevMiss <= miss) return Math.max(floor, c);
      // Linear between the last integer that missed and this one.
      return Math.max(floor, prevC + (prevMiss - budget) / (prevMiss - miss));
    }
    prevC = c;
    prevMiss = miss;
  }
  return Number.POSITIVE_INFINITY;
}

function interpolate(c: number, at: (c: number) => number): number {
  const lo = Math.floor(c);
  if (lo === c) return lo >= 1 ? at(lo) : 1;
  const hi = lo + 1;
  const fHi = at(hi);
  const fLo = lo >= 1 ? at(lo) : 1;
  return fLo + (fHi - fLo) * (c - lo);
}
