/**
 * ReplicaGovernor: turns a fractional "workers wanted" into the count to run, for one worker
 * type, so the fleet never flaps. Rules, in order:
 *
 * 1. Up at once: wanted > running → ceil(wanted), as soon as `upCooldownIntervals` have passed
 *    since the last change (default 0: a rising load is never made to wait).
 * 2. Down only with margin and patience: the smaller fleet must still have `downMargin` spare
 *    (ceil(wanted / (1 - downMargin)) < running), that must hold for `downStableIntervals`
 *    consecutive decisions, and `downCooldownIntervals` must have passed since the last change.
 *    It steps down to that margined count (never below it), so a load hovering at a boundary
 *    (1.9 ↔ 2.1 workers) neither adds and removes a worker each interval.
 *    One decision removes at most `downStepMax` of the running fleet (scale-down slower than
 *    scale-up: a load that dips for a minute inside a rise does not halve the fleet).
 * 3. Bounds: [min, max] last (a GPU budget arrives through `max`).
 *
 * Invariant: `running` is what the planner believes runs; `observe` resets it to what the
 * connector reports (a hand-made change), and the next decision starts from there.
 */
import { InvalidConfigError } from "../errors.js";

export interface GovernorOptions {
  min?: number;
  max?: number;
  /** Spare share the fleet keeps before shrinking, 0..0.9. Default 0.15. */
  downMargin?: number;
  /** Consecutive decisions that must agree on shrinking. Default 2. */
  downStableIntervals?: number;
  /** Decisions after any change before shrinking. Default 3. */
  downCooldownIntervals?: number;
  /** Decisions after any change before growing. Default 0. */
  upCooldownIntervals?: number;
  /** Share of the running fleet one decision may remove, (0, 1]. Default 1 (no cap). */
  downStepMax?: number;
}

export interface GovernorDecision {
  target: number;
  /** What changed and why, for the decision log. */
  reason: string;
}

export class ReplicaGovernor {
  readonly min: number;
  readonly max: number;
  private readonly margin: number;
  private readonly stable: number;
  private readonly downCooldown: number;
  private readonly upCooldown: number;
  private readonly downStep: number;
  private running: number;
  private sinceChange = Number.POSITIVE_INFINITY;
  private downVotes = 0;

  constructor(o: GovernorOptions = {}, initial?: number) {
    this.min = o.min ?? 1;
    this.max = o.max ?? Number.POSITIVE_INFINITY;
    this.margin = o.downMargin ?? 0.15;
    this.stable = o.downStableIntervals ?? 2;
    this.downCooldown = o.downCooldownIntervals ?? 3;
    this.upCooldown = o.upCooldownIntervals ?? 0;
    this.downStep = o.downStepMax ?? 1;
    if (!(this.downStep > 0 && this.downStep <= 1)) throw new InvalidConfigError(`downStepMax must be in (0, 1] (got ${o.downStepMax})`);
    if (!Number.isInteger(this.min) || this.min < 0) throw new InvalidConfigError(`minimum replicas must be an integer >= 0 (got ${this.min})`);
    if (!(this.max >= this.min) || (Number.isFinite(this.max) && !Number.isInteger(this.max))) throw new InvalidConfigError(`maximum replicas must be an integer >= the minimum ${this.min} (got ${this.max})`);
    if (!(this.margin >= 0 && this.margin <= 0.9)) throw new InvalidConfigError(`downMargin must be in [0, 0.9] (got ${this.margin})`);
    for (const [k, v] of [["downStableIntervals", this.stable], ["downCooldownIntervals", this.downCooldown], ["upCooldownIntervals", this.upCooldown]] as const) {
      if (!Number.isInteger(v) || v < 0) throw new InvalidConfigError(`${k} must be an integer >= 0 (got ${v})`);
    }
    this.running = initial ?? this.min;
  }

  get current(): number {
    return this.running;
  }

  /** What the connector says runs now; returns true when that is not what the planner set. */
  observe(actual: number): boolean {
    if (actual === this.running) return false;
    this.running = actual;
    this.sinceChange = 0;
    this.downVotes = 0;
    return true;
  }

  /** One adjustment interval: `wanted` workers (fractional) → the count to run. */
  decide(wanted: number): GovernorDecision {
    this.sinceChange++;
    const cur = this.running;
    const clamp = (n: number) => Math.min(this.max, Math.max(this.min, n));
    const up = clamp(Math.ceil(wanted - 1e-9));
    if (up > cur) {
      this.downVotes = 0;
      if (this.sinceChange <= this.upCooldown) return { target: cur, reason: `wants ${up} (${wanted.toFixed(2)}), up-cooldown (${this.sinceChange}/${this.upCooldown + 1} intervals)` };
      return this.change(up, `load needs ${wanted.toFixed(2)} workers: ${cur} -> ${up}`);
    }
    if (cur < this.min) return this.change(this.min, `below the minimum: ${cur} -> ${this.min}`);
    if (cur > this.max) return this.change(this.max, `above the maximum: ${cur} -> ${this.max}`);
    const margined = clamp(Math.ceil(wanted / (1 - this.margin) - 1e-9));
    if (margined >= cur) {
      this.downVotes = 0;
      return { target: cur, reason: `holding ${cur} (needs ${wanted.toFixed(2)})` };
    }
    this.downVotes++;
    if (this.downVotes < this.stable) return { target: cur, reason: `could shrink to ${margined} (needs ${wanted.toFixed(2)}), waiting for ${this.stable} intervals in a row (${this.downVotes})` };
    if (this.sinceChange <= this.downCooldown) return { target: cur, reason: `could shrink to ${margined}, cooldown after the last change (${this.sinceChange}/${this.downCooldown + 1} intervals)` };
    const lowest = cur - Math.max(1, Math.floor(cur * this.downStep));
    if (margined < lowest) return this.change(lowest, `load needs ${wanted.toFixed(2)} workers (${(this.margin * 100).toFixed(0)}% spare kept; at most ${(this.downStep * 100).toFixed(0)}% removed a decision): ${cur} -> ${lowest}`);
    return this.change(margined, `load needs ${wanted.toFixed(2)} workers (${(this.margin * 100).toFixed(0)}% spare kept): ${cur} -> ${margined}`);
  }

  /** Sets `target` (bounded) as it is, no hysteresis: Dynamo's planner, the baseline. */
  force(target: number): GovernorDecision {
    this.sinceChange++;
    const cur = this.running;
    const t = Math.min(this.max, Math.max(this.min, target));
    if (t === cur) return { target: cur, reason: `holding ${cur}` };
    return this.change(t, `formula says ${target}: ${cur} -> ${t}`);
  }

  private change(target: number, reason: string): GovernorDecision {
    this.running = target;
    this.sinceChange = 0;
    this.downVotes = 0;
    return { target, reason };
  }
}
