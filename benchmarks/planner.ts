/**
 * `npm run bench:planner`: the Mooncake conversation trace, its rate warped into a day-like curve,
 * replayed on the virtual clock (kvroute replay --planner) against fixed fleets sized for the peak
 * and, on disaggregated workers (the fleet Dynamo's SLA planner is written for), against the
 * baseline: Dynamo's published replica formulas and corrections with the same predictor, bounds,
 * profile and cold start.
 *
 * Prints one markdown table per topology: SLA attainment (requests and intervals within both
 * targets), worker-seconds, mean and peak workers. Each row is one `kvroute replay` process; they
 * run side by side (BENCH_JOBS, default 2). Settings (env):
 * - BENCH_TOPOLOGY: agg, disagg or both (default both);
 * - BENCH_FIXED (agg sizes, default 12,13,14,16), BENCH_FIXED_DISAGG (P+D sizes, default
 *   9+3,10+3: the peak-sized fleets are 14 and 9P + 3D, RESULTS.md);
 * - the planners' predictor and minimum workers: BENCH_PREDICTOR_AGG (moving-average),
 *   BENCH_MIN_AGG (3), BENCH_PREDICTOR_DISAGG (holt), BENCH_MIN_DISAGG (2): the recorded rows';
 * - BENCH_RATE (default 6.8 req/s: twice the trace's own), BENCH_CURVE (default 1,0.1,1: one day
 *   from 10% of the peak to the peak and back), BENCH_SPREAD=1 (--spread-ticks),
 *   BENCH_COLD_START (30 s), BENCH_INTERVAL (15 s), BENCH_TTFT (2000 ms), BENCH_ITL (40 ms),
 *   BENCH_LIMIT (requests, default all), BENCH_TENANTS (K copies of the trace as separate user
 *   populations, `--tenants`: a K-times larger service over the same day; default 1);
 * - BENCH_START_AGG (aggregated planner's workers at the start, default 8: the fleet its burst
 *   floor holds at the trough, as a planner running all night would have; third pass);
 * - BENCH_SLA_FLAGS: more `kvroute replay` flags for the SLA planner rows (e.g. "--miss-budget
 *   0.05 --max-workers 64 --burst-window 120"); BENCH_START_DISAGG ("P+D" at the start);
 *   BENCH_BASELINE_FLOORS ("P+D": the baseline's own minimums, Dynamo's min_endpoint per kind).
 *
 * After each table it names the peak-sized fleet (the smallest fixed fleet tried with 90% of the
 * peak hours' requests within target) and says whether the planner matched its attainment on
 * both shares, and with how many fewer worker-seconds.
 */
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { curveAt } from "../ts/replay/rate-curve.js";
import { machine } from "./lib/table.js";

const env = process.env;
const root = fileURLToPath(new URL("..", import.meta.url));
const cli = join(root, "dist/cli.mjs");
const trace = env.BENCH_TRACE ?? "/work/shared/traces/mooncake_conversation.jsonl";
const topologies = (env.BENCH_TOPOLOGY ?? "both") === "both" ? ["agg", "disagg"] : [env.BENCH_TOPOLOGY!];
const fixedAgg = (env.BENCH_FIXED ?? "12,13,14,16").split(",").map(Number);
const fixedDisagg = (env.BENCH_FIXED_DISAGG ?? "9+3,10+3").split(",").map((x) => x.split("+").map(Number) as [number, number]);
const jobs = Number(env.BENCH_JOBS ?? 2);
const planners: Record<string, { predictor: string; min: string }> = {
  agg: { predictor: env.BENCH_PREDICTOR_AGG ?? "moving-average", min: env.BENCH_MIN_AGG ?? "3" },
  disagg: { predictor: env.BENCH_PREDICTOR_DISAGG ?? "holt", min: env.BENCH_MIN_DISAGG ?? "2" },
};
const curve = env.BENCH_CURVE ?? "1,0.1,1";
const common = [
  "replay", "--trace", trace, "--rate", env.BENCH_RATE ?? "6.8", "--day-curve", curve,
  "--profile", "llama-3.1-8b-h200", "--ttft-target", env.BENCH_TTFT ?? "2000", "--itl-target", env.BENCH_ITL ?? "40",
  "--adjustment-interval", env.BENCH_INTERVAL ?? "15", "--cold-start", env.BENCH_COLD_START ?? "30", "--quiet",
  ...(env.BENCH_SPREAD === "1" ? ["--spread-ticks"] : []),
  ...(env.BENCH_LIMIT ? ["--limit", env.BENCH_LIMIT] : []),
  ...(env.BENCH_TENANTS ? ["--tenants", env.BENCH_TENANTS] : []),
];
const out = mkdtempSync(join(tmpdir(), "kvr-bench-planner-"));

interface Interval { startS: number; requests: number; withinTarget: number }
interface Result { intervals: Interval[]; planner: string; topology: string; requestAttainment: number; intervalAttainment: number; workerSeconds: number; meanWorkers: number; peakWorkers: number; failed: number; completed: number; scaleUps: number; scaleDowns: number; wallMs: number }
interface Run { topology: string; name: string; kind: "sla" | "dynamo" | "fixed"; args: string[] }
const runs: Run[] = [];
for (const t of topologies) {
  const { predictor, min } = planners[t]!;
  const topo = ["--topology", t, "--min-workers", min];
  const startDisagg = env.BENCH_START_DISAGG?.split("+");
  const start = t === "agg" ? ["--workers", env.BENCH_START_AGG ?? "8"] : startDisagg ? ["--workers", startDisagg[0]!, "--decode-workers", startDisagg[1]!] : [];
  const slaFlags = env.BENCH_SLA_FLAGS ? env.BENCH_SLA_FLAGS.trim().split(/\s+/) : [];
  runs.push({ topology: t, kind: "sla", name: `kvroute SLA planner (${[predictor, `min ${min}`, ...(slaFlags.length ? [slaFlags.join(" ")] : [])].join(", ")})`, args: [...topo, "--planner", "sla", "--predictor", predictor, ...start, ...slaFlags] });
  const floors = env.BENCH_BASELINE_FLOORS?.split("+");
  const floorArgs = floors ? ["--min-prefill-workers", floors[0]!, "--min-decode-workers", floors[1]!] : [];
  if (t === "disagg") runs.push({ topology: t, kind: "dynamo", name: `baseline: Dynamo's formulas and corrections (${predictor}, min ${floors ? `${floors[0]}P / ${floors[1]}D` : min})`, args: [...topo, "--planner", "dynamo", "--predictor", predictor, ...floorArgs] });
  if (t === "agg") for (const n of fixedAgg) runs.push({ topology: t, kind: "fixed", name: `fixed fleet of ${n}`, args: [...topo, "--planner", "fixed", "--workers", String(n)] });
  else for (const [p, d] of fixedDisagg) runs.push({ topology: t, kind: "fixed", name: `fixed fleet of ${p}P + ${d}D`, args: [...topo, "--planner", "fixed", "--workers", String(p), "--decode-workers", String(d)] });
}

function runOne(r: Run, i: number): Promise<Result> {
  const json = join(out, `${i}.json`);
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [cli, ...common, ...r.args, "--json", json], { stdio: ["ignore", "ignore", "inherit"] });
    child.once("exit", (code) => (code === 0 ? resolve(JSON.parse(readFileSync(json, "utf8")) as Result) : reject(new Error(`${r.name}: exit ${code}`))));
  });
}

/**
 * Share within target of the requests arriving while the day curve is at >= 75% of its peak: a
 * fixed fleet is "sized for the peak" when this reaches 90% (the interval criterion applied to the
 * peak hours as a whole; RESULTS.md, third pass).
 */
function peakShare(x: Result): number {
  const [periods, low, high] = curve.split(",").map(Number);
  const step = Number(env.BENCH_INTERVAL ?? 15);
  const span = Math.max(...x.intervals.map((i) => i.startS)) + step;
  const peak = high ?? 1;
  let n = 0;
  let ok = 0;
  for (const i of x.intervals) {
    if (curveAt(i.startS + step / 2, span, { periods, low, high }) < 0.75 * peak) continue;
    n += i.requests;
    ok += i.withinTarget;
  }
  return n > 0 ? ok / n : 0;
}

async function main(): Promise<void> {
  console.log(`kvroute bench:planner — ${machine()}`);
  console.log(`kvroute ${common.join(" ")} --topology T --planner P ...`);
  const results: Result[] = new Array(runs.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(jobs, runs.length) }, async () => {
      while (next < runs.length) {
        const i = next++;
        results[i] = await runOne(runs[i]!, i);
        process.stderr.write(`done: ${runs[i]!.topology} ${runs[i]!.name} (${(results[i]!.wallMs / 1000).toFixed(0)} s wall)\n`);
      }
    }),
  );
  const pct = (x: number) => `${(x * 100).toFixed(1)}%`;
  for (const t of topologies) {
    const rows = runs.map((r, i) => ({ r, x: results[i]! })).filter(({ r }) => r.topology === t);
    console.log(`\n${t === "agg" ? "Aggregated workers" : "Disaggregated: prefill + decode workers"}\n`);
    console.log("| fleet | requests within target | intervals within target | peak-hours requests within target | worker-seconds | mean workers | peak | scale-ups / downs | failed |");
    console.log("|---|---|---|---|---|---|---|---|---|");
    for (const { r, x } of rows) {
      console.log(`| ${r.name} | ${pct(x.requestAttainment)} | ${pct(x.intervalAttainment)} | ${pct(peakShare(x))} | ${Math.round(x.workerSeconds).toLocaleString("en-US")} | ${x.meanWorkers.toFixed(1)} | ${x.peakWorkers} | ${x.scaleUps} / ${x.scaleDowns} | ${x.failed} |`);
    }
    const sla = rows.find(({ r }) => r.kind === "sla")!.x;
    const fixed = rows.filter(({ r }) => r.kind === "fixed");
    const peak = fixed.find(({ x }) => x.intervalAttainment <= sla.intervalAttainment && x.requestAttainment <= sla.requestAttainment + 1e-9);
    console.log("");
    for (const { r, x } of fixed) {
      const cmp = `${pct(sla.requestAttainment - x.requestAttainment)} / ${pct(sla.intervalAttainment - x.intervalAttainment)}`;
      console.log(`against ${r.name}: ${pct(1 - sla.workerSeconds / x.workerSeconds)} fewer worker-seconds; attainment difference (requests / intervals) ${cmp}`);
    }
    if (!peak) console.log("(every fixed fleet tried beats the planner's attainment on requests or intervals)");
    const sized = fixed.filter(({ x }) => peakShare(x) >= 0.9).sort((a, b) => a.x.workerSeconds - b.x.workerSeconds)[0];
    if (!sized) console.log("peak-sized fleet: none of the fixed fleets tried holds 90% of the peak hours' requests (try larger ones)");
    else {
      const equal = sla.requestAttainment >= sized.x.requestAttainment - 1e-9 && sla.intervalAttainment >= sized.x.intervalAttainment - 1e-9;
      console.log(`peak-sized fleet: ${sized.r.name} (${pct(peakShare(sized.x))} of the peak hours' requests within target); the planner: ${pct(1 - sla.workerSeconds / sized.x.workerSeconds)} fewer worker-seconds, attainment ${equal ? "equal or higher on both shares" : "LOWER on requests or intervals"}`);
    }
    const base = rows.find(({ r }) => r.kind === "dynamo")?.x;
    if (base) console.log(`against the baseline: ${pct(1 - sla.workerSeconds / base.workerSeconds)} fewer worker-seconds, attainment ${pct(sla.requestAttainment)} vs ${pct(base.requestAttainment)} of requests, ${pct(sla.intervalAttainment)} vs ${pct(base.intervalAttainment)} of intervals`);
  }
}

void main();
