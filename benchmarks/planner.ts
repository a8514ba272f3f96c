/**
 * `npm run bench:planner`: the Mooncake conversation trace, its rate warped into a day-like curve,
 * replayed on the virtual clock (kvroute replay --planner) against:
 * - kvroute's SLA planner,
 * - the baseline: Dynamo's published replica formulas (and corrections) with the same predictor,
 * - fixed fleets (no planner) of several sizes, to find the smallest one sized for the peak that
 *   reaches the planner's attainment.
 * Prints one markdown table: SLA attainment (requests and intervals within both targets),
 * worker-seconds, mean and peak workers. Each row is one `kvroute replay` process; they run side
 * by side (BENCH_JOBS, default 3). Settings (env): BENCH_FIXED (sizes, default 12,14,16,18,20),
 * BENCH_RATE (default 6.8 req/s: twice the trace's own), BENCH_PREDICTOR (moving-average),
 * BENCH_LIMIT (requests, default all), BENCH_MIN_WORKERS (4), BENCH_TAIL (the SLA planner's
 * --tail-factor, 4).
 */
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { machine } from "./lib/table.js";

const root = fileURLToPath(new URL("..", import.meta.url));
const cli = join(root, "dist/cli.mjs");
const trace = process.env.BENCH_TRACE ?? "/work/shared/traces/mooncake_conversation.jsonl";
const fixed = (process.env.BENCH_FIXED ?? "12,14,16,18,20").split(",").map(Number);
const jobs = Number(process.env.BENCH_JOBS ?? 3);
const predictor = process.env.BENCH_PREDICTOR ?? "moving-average";
const common = [
  "replay", "--trace", trace, "--rate", process.env.BENCH_RATE ?? "6.8", "--day-curve", process.env.BENCH_CURVE ?? "1,0.1,1",
  "--profile", "llama-3.1-8b-h200", "--ttft-target", process.env.BENCH_TTFT ?? "2000", "--itl-target", process.env.BENCH_ITL ?? "40",
  "--adjustment-interval", "15", "--cold-start", "30", "--min-workers", process.env.BENCH_MIN_WORKERS ?? "4", "--quiet",
  ...(process.env.BENCH_LIMIT ? ["--limit", process.env.BENCH_LIMIT] : []),
];
const out = mkdtempSync(join(tmpdir(), "kvr-bench-planner-"));

interface Result { planner: string; requestAttainment: number; intervalAttainment: number; workerSeconds: number; meanWorkers: number; peakWorkers: number; failed: number; completed: number; scaleUps: number; scaleDowns: number; wallMs: number }
const runs: { name: string; args: string[] }[] = [
  { name: "kvroute SLA planner", args: ["--planner", "sla", "--predictor", predictor, "--tail-factor", process.env.BENCH_TAIL ?? "4"] },
  { name: `baseline: Dynamo's formulas (${predictor})`, args: ["--planner", "dynamo", "--predictor", predictor] },
  ...fixed.map((n) => ({ name: `fixed fleet of ${n}`, args: ["--planner", "fixed", "--workers", String(n)] })),
];

function runOne(r: { name: string; args: string[] }, i: number): Promise<Result> {
  const json = join(out, `${i}.json`);
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [cli, ...common, ...r.args, "--json", json], { stdio: ["ignore", "ignore", "inherit"] });
    child.once("exit", (code) => (code === 0 ? resolve(JSON.parse(readFileSync(json, "utf8")) as Result) : reject(new Error(`${r.name}: exit ${code}`))));
  });
}

async function main(): Promise<void> {
  console.log(`kvroute bench:planner — ${machine()}`);
  console.log(`kvroute ${common.join(" ")} ...`);
  const results: Result[] = new Array(runs.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(jobs, runs.length) }, async () => {
      while (next < runs.length) {
        const i = next++;
        results[i] = await runOne(runs[i]!, i);
        process.stderr.write(`done: ${runs[i]!.name} (${(results[i]!.wallMs / 1000).toFixed(0)} s wall)\n`);
      }
    }),
  );
  const pct = (x: number) => `${(x * 100).toFixed(1)}%`;
  console.log("\n| fleet | requests within target | intervals within target | worker-seconds | mean workers | peak | scale-ups / downs | failed |");
  console.log("|---|---|---|---|---|---|---|---|");
  for (const [i, r] of results.entries()) {
    console.log(`| ${runs[i]!.name} | ${pct(r.requestAttainment)} | ${pct(r.intervalAttainment)} | ${Math.round(r.workerSeconds).toLocaleString("en-US")} | ${r.meanWorkers.toFixed(1)} | ${r.peakWorkers} | ${r.scaleUps} / ${r.scaleDowns} | ${r.failed} |`);
  }
  const sla = results[0]!;
  const base = results[1]!;
  const peak = results.slice(2).find((r) => r.intervalAttainment >= sla.intervalAttainment && r.requestAttainment >= sla.requestAttainment);
  console.log("");
  if (peak) {
    const n = runs[results.indexOf(peak)]!.name;
    console.log(`smallest fixed fleet with at least the planner's attainment: ${n}; the planner uses ${pct(1 - sla.workerSeconds / peak.workerSeconds)} fewer worker-seconds`);
  } else console.log("no fixed fleet tried reached the planner's attainment (try larger BENCH_FIXED)");
  console.log(`against the baseline: ${pct(1 - sla.workerSeconds / base.workerSeconds)} fewer worker-seconds, attainment ${pct(sla.requestAttainment)} vs ${pct(base.requestAttainment)} of requests, ${pct(sla.intervalAttainment)} vs ${pct(base.intervalAttainment)} of intervals`);
}

void main();
