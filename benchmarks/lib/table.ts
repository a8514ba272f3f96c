/** Tiny helpers shared by the benchmarks: timing, percentiles, a deterministic PRNG, tables. */
import os from "node:os";
export { mulberry32 as rng } from "../../ts/util/prng.js";

export function percentile(sorted: number[], p: number): number {
  return sorted[Math.round((sorted.length - 1) * p)] ?? NaN;
}

/** Calls `fn` (processing `units` items per call) for ~`seconds`; returns items per second. */
export function rate(units: number, seconds: number, fn: () => void): number {
  fn();
  const start = process.hrtime.bigint();
  let n = 0;
  let elapsed = 0;
  while (elapsed < seconds) {
    fn();
    n += units;
    elapsed = Number(process.hrtime.bigint() - start) / 1e9;
  }
  return n / elapsed;
}

/** Latencies of `fn` in microseconds, sorted ascending. */
export function latencies(iterations: number, fn: (i: number) => void): number[] {
  const out = new Array<number>(iterations);
  for (let i = 0; i < Math.min(100, iterations); i++) fn(i); // warm-up
  for (let i = 0; i < iterations; i++) {
    const t = process.hrtime.bigint();
    fn(i);
    out[i] = Number(process.hrtime.bigint() - t) / 1000;
  }
  return out.sort((a, b) => a - b);
}

export interface Row {
  name: string;
  value: number;
  unit: string;
  baseline?: string;
}

export function fmt(v: number): string {
  if (!Number.isFinite(v)) return String(v);
  if (v >= 1e6) return `${(v / 1e6).toFixed(2)}M`;
  if (v >= 1e4) return `${(v / 1e3).toFixed(1)}k`;
  return v >= 100 ? v.toFixed(0) : v.toFixed(2);
}

export function printTable(title: string, rows: Row[]): void {
  const w = Math.max(...rows.map((r) => r.name.length), title.length);
  console.log(`\n${title.padEnd(w)}  ${"value".padStart(10)}  ${"unit".padEnd(11)}  baseline / note`);
  console.log(`${"-".repeat(w)}  ${"-".repeat(10)}  ${"-".repeat(11)}  ${"-".repeat(30)}`);
  for (const r of rows) console.log(`${r.name.padEnd(w)}  ${fmt(r.value).padStart(10)}  ${r.unit.padEnd(11)}  ${r.baseline ?? ""}`);
}

export function machine(): string {
  const cpu = os.cpus()[0]?.model ?? "unknown CPU";
  return `${cpu}, ${os.cpus().length} cores, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version}, ${os.platform()} ${os.release()}`;
}
