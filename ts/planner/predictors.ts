/**
 * Load predictors: given one value per adjustment interval (request rate, mean input length...),
 * the next interval's value. All are small online models with O(1) state (the moving average and
 * the seasonal one keep a bounded window), fed by `add` and read by `predict`, which is null until
 * the first value: the planner then holds its minimum and says so.
 *
 * - constant: the last value (Dynamo's default).
 * - moving-average: the mean of the last `window` values.
 * - holt: double exponential smoothing, level + trend (alpha, beta).
 * - kalman: a local-linear-trend Kalman filter (level and slope as state, process noise q,
 *   measurement noise r), the smoothing gain adapting to how noisy the series is.
 * - seasonal: additive Holt-Winters over `period` intervals (a day curve, say); Holt until one
 *   full period has been seen.
 * Forecasts are never negative.
 */
import { InvalidConfigError } from "../errors.js";

export interface Predictor {
  readonly name: string;
  add(value: number): void;
  /**
   * The value `steps` intervals ahead (default 1: the next interval); null before any data.
   * Level-only predictors (constant, moving average) give the same value at every step.
   */
  predict(steps?: number): number | null;
}

export class ConstantPredictor implements Predictor {
  readonly name = "constant";
  private last: number | null = null;
  add(v: number): void {
    this.last = v;
  }
  predict(_steps?: number): number | null {
    return this.last;
  }
}

export class MovingAveragePredictor implements Predictor {
  readonly name = "moving-average";
  private readonly values: number[] = [];
  constructor(private readonly window = 5) {
    if (!Number.isInteger(window) || window < 1) throw new InvalidConfigError(`moving-average window must be an integer >= 1 (got ${window})`);
  }
  add(v: number): void {
    this.values.push(v);
    if (this.values.length > this.window) this.values.shift();
  }
  predict(_steps?: number): number | null {
    if (this.values.length === 0) return null;
    return this.values.reduce((a, b) => a + b, 0) / this.values.length;
  }
}

export class HoltPredictor implements Predictor {
  readonly name = "holt";
  private level: number | null = null;
  private trend = 0;
  constructor(
    private readonly alpha = 0.5,
    private readonly beta = 0.3,
  ) {
    checkUnit("holt alpha", alpha);
    checkUnit("holt beta", beta);
  }
  add(v: number): void {
    if (this.level === null) {
      this.level = v;
      return;
    }
    const prev = this.level;
    this.level = this.alpha * v + (1 - this.alpha) * (prev + this.trend);
    this.trend = this.beta * (this.level - prev) + (1 - this.beta) * this.trend;
  }
  predict(steps = 1): number | null {
    return this.level === null ? null : Math.max(0, this.level + steps * this.trend);
  }
}

export class KalmanPredictor implements Predictor {
  readonly name = "kalman";
  // State [level, slope] and its covariance P (2x2, symmetric).
  private x: [number, number] | null = null;
  private p = [1, 0, 1];
  constructor(
    private readonly q = 0.01,
    private readonly r = 0.1,
  ) {
    if (!(q > 0) || !(r > 0)) throw new InvalidConfigError(`kalman q and r must be > 0 (got ${q}, ${r})`);
  }
  add(v: number): void {
    if (this.x === null) {
      this.x = [v, 0];
      // Noise relative to the series' scale, so q and r need no units.
      this.scale = Math.max(Math.abs(v), 1e-9);
      return;
    }
    const s2 = this.scale * this.scale;
    // Predict: x = F x, P = F P F' + Q, with F = [[1, 1], [0, 1]].
    const [l, b] = this.x;
    const [p00, p01, p11] = this.p as [number, number, number];
    const a00 = p00 + 2 * p01 + p11 + this.q * s2;
    const a01 = p01 + p11;
    const a11 = p11 + this.q * s2;
    const lp = l + b;
    // Update with the measurement of the level.
    const sInn = a00 + this.r * s2;
    const k0 = a00 / sInn;
    const k1 = a01 / sInn;
    const innov = v - lp;
    this.x = [lp + k0 * innov, b + k1 * innov];
    this.p = [(1 - k0) * a00, (1 - k0) * a01, a11 - k1 * a01];
    this.scale = Math.max(this.scale, Math.abs(v), 1e-9);
  }
  private scale = 1;
  predict(steps = 1): number | null {
    return this.x === null ? null : Math.max(0, this.x[0] + steps * this.x[1]);
  }
}

export class SeasonalPredictor implements Predictor {
  readonly name = "seasonal";
  private readonly history: number[] = [];
  private level = 0;
  private trend = 0;
  private season: number[] = [];
  private t = 0;
  private readonly warmup: HoltPredictor;
  constructor(
    private readonly period: number,
    private readonly alpha = 0.4,
    private readonly beta = 0.1,
    private readonly gamma = 0.3,
  ) {
    if (!Number.isInteger(period) || period < 2) throw new InvalidConfigError(`seasonal period must be an integer >= 2 intervals (got ${period})`);
    checkUnit("seasonal alpha", alpha);
    checkUnit("seasonal beta", beta);
    checkUnit("seasonal gamma", gamma);
    this.warmup = new HoltPredictor(alpha, beta);
  }
  add(v: number): void {
    this.warmup.add(v);
    const P = this.period;
    if (this.history.length < P) {
      this.history.push(v);
      if (this.history.length === P) {
        // One period seen: level = its mean, seasons = deviations from it, no trend yet.
        this.level = this.history.reduce((a, b) => a + b, 0) / P;
        this.season = this.history.map((x) => x - this.level);
        this.t = P;
      }
      return;
    }
    const s = this.season[this.t % P]!;
    const prev = this.level;
    this.level = this.alpha * (v - s) + (1 - this.alpha) * (prev + this.trend);
    this.trend = this.beta * (this.level - prev) + (1 - this.beta) * this.trend;
    this.season[this.t % P] = this.gamma * (v - this.level) + (1 - this.gamma) * s;
    this.t++;
  }
  predict(steps = 1): number | null {
    if (this.history.length < this.period) return this.warmup.predict(steps);
    return Math.max(0, this.level + steps * this.trend + this.season[(this.t + steps - 1) % this.period]!);
  }
}

export const PREDICTOR_NAMES = ["constant", "moving-average", "holt", "kalman", "seasonal"] as const;
export type PredictorName = (typeof PREDICTOR_NAMES)[number];

export interface PredictorOptions {
  /** moving-average: values averaged. Default 5. */
  window?: number;
  /** seasonal: intervals per season (e.g. a day). Required for "seasonal". */
  period?: number;
}

export function makePredictor(name: string, o: PredictorOptions = {}): Predictor {
  switch (name) {
    case "constant":
      return new ConstantPredictor();
    case "moving-average":
      return new MovingAveragePredictor(o.window);
    case "holt":
      return new HoltPredictor();
    case "kalman":
      return new KalmanPredictor();
    case "seasonal":
      if (o.period === undefined) throw new InvalidConfigError("the seasonal predictor needs a period (intervals per season)");
      return new SeasonalPredictor(o.period);
    default:
      throw new InvalidConfigError(`unknown predictor ${JSON.stringify(name)} (expected one of ${PREDICTOR_NAMES.join(", ")})`);
  }
}

function checkUnit(what: string, v: number): void {
  if (!(v > 0 && v <= 1)) throw new InvalidConfigError(`${what} must be in (0, 1] (got ${v})`);
}
