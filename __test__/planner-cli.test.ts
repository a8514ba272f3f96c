/**
 * The planner's command lines, run as a user runs them (`node dist/cli.mjs`): `kvroute profile
 * --engine mock`, `kvroute replay --planner` (a short run, and its refusals: a zero or negative
 * target, a target the profile cannot meet, a bad profile), `kvroute planner --config` refusing a
 * bad config, and `kvroute up --planner sla` starting its fleet through the local connector and
 * exporting kvroute_planner_* decisions.
 */
import { execFile } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterEach, describe, expect, it } from "vitest";
import { CLI, kvroute, stopCliProcesses } from "./helpers/cli-process.js";

const run = promisify(execFile);
const dir = mkdtempSync(join(tmpdir(), "kvr-planner-cli-"));
/** A small Mooncake-format trace: 150 requests over 60 s, conversations sharing prefixes. */
const TRACE = join(dir, "trace.jsonl");
writeFileSync(
  TRACE,
  Array.from({ length: 150 }, (_, i) => {
    const conv = i % 10;
    const turn = Math.floor(i / 10);
    const hashIds = [0, ...Array.from({ length: 2 + turn }, (_, k) => 1000 * conv + k + 1)];
    return JSON.stringify({ timestamp: i * 400, input_length: hashIds.length * 512 - 100, output_length: 50 + (i % 7) * 20, hash_ids: hashIds });
  }).join("\n") + "\n",
);

afterEach(() => stopCliProcesses());

async function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const r = await run(process.execPath, [CLI, ...args], { maxBuffer: 1 << 24 });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

describe("kvroute profile / replay --planner / planner", () => {
  it("profile --engine mock writes Dynamo's fields", async () => {
    const out = join(dir, "p.json");
    const r = await cli(["profile", "--engine", "mock", "--profile", "llama-3.1-8b-h200", "--isl", "1024,4096", "--contexts", "2048", "--out", out]);
    expect(r.code).toBe(0);
    const p = JSON.parse(readFileSync(out, "utf8"));
    for (const k of ["prefill_isl", "prefill_ttft", "prefill_thpt_per_gpu", "x_kv_usage", "y_context_length", "z_itl", "z_thpt_per_gpu", "max_kv_tokens"]) expect(p).toHaveProperty(k);
    expect(p.prefill_isl).toEqual([1024, 4096]);
    expect(p.max_kv_tokens).toBe(53_688 * 16);
  });

  it("replay --planner sla: a short run reports attainment and worker-seconds", async () => {
    const json = join(dir, "r.json");
    const r = await cli(["replay", "--trace", TRACE, "--limit", "150", "--planner", "sla", "--ttft-target", "3000", "--itl-target", "60", "--profile", "llama-3.1-8b-h200", "--adjustment-interval", "10", "--cold-start", "5", "--quiet", "--json", json]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/planner sla \(agg\): 150\/150 requests completed, 0 failed/);
    expect(r.stdout).toMatch(/within target: [\d.]+% of requests, [\d.]+% of intervals/);
    const res = JSON.parse(readFileSync(json, "utf8"));
    expect(res.workerSeconds).toBeGreaterThan(0);
    expect(res.decisions).toBeGreaterThan(0);
  });

  it("replay --planner dynamo --topology disagg: prefill and decode workers both sized, none lost", async () => {
    const json = join(dir, "d.json");
    const r = await cli(["replay", "--trace", TRACE, "--limit", "150", "--planner", "dynamo", "--topology", "disagg", "--ttft-target", "3000", "--itl-target", "60", "--profile", "llama-3.1-8b-h200", "--adjustment-interval", "10", "--cold-start", "5", "--quiet", "--json", json]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/planner dynamo \(disagg\): 150\/150 requests completed, 0 failed/);
    const res = JSON.parse(readFileSync(json, "utf8"));
    expect(res.workerSecondsByKind.prefill).toBeGreaterThan(0);
    expect(res.workerSecondsByKind.decode).toBeGreaterThan(0);
    expect(res.workerSecondsByKind.aggregated).toBe(0);
  });

  it.each([
    [["--ttft-target", "2000", "--itl-target", "40", "--miss-budget", "1.5"], /--miss-budget must be a share between 0 and 1/],
    [["--ttft-target", "2000", "--itl-target", "40", "--topology", "ring"], /--topology must be one of agg, disagg/],
    [["--ttft-target", "2000", "--itl-target", "40", "--down-step", "0"], /--down-step must be a share in \(0, 1\]/],
    [["--ttft-target", "2000", "--itl-target", "40", "--burst-window=-3"], /--burst-window must be a number >= 0/],
    [["--ttft-target", "2000", "--itl-target", "40", "--min-prefill-workers", "0"], /min-prefill-workers/],
    [["--ttft-target", "0", "--itl-target", "40"], /--ttft-target must be a number of milliseconds > 0/],
    [["--ttft-target=-5", "--itl-target", "40"], /--ttft-target must be a number of milliseconds > 0/],
    [["--ttft-target", "2000", "--itl-target", "0"], /--itl-target must be a number of milliseconds > 0/],
    [["--ttft-target", "5", "--itl-target", "40"], /TTFT target 5 ms is out of reach: the fastest prefill/],
    [["--ttft-target", "2000", "--itl-target", "1"], /ITL target 1 ms is out of reach: the fastest decode step/],
  ])("replay --planner refuses %j at start", async (flags, message) => {
    const r = await cli(["replay", "--trace", TRACE, "--limit", "10", "--planner", "sla", "--profile", "llama-3.1-8b-h200", ...flags]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(message);
  });

  it("replay --planner refuses a bad profile at start", async () => {
    const bad = join(dir, "bad.json");
    writeFileSync(bad, JSON.stringify({ prefill_isl: [1000], prefill_ttft: [-1], prefill_thpt_per_gpu: [5] }));
    const r = await cli(["replay", "--trace", TRACE, "--limit", "10", "--planner", "sla", "--ttft-target", "500", "--itl-target", "40", "--planner-profile", bad]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/prefill_ttft\[0\] must be > 0 ms/);
  });

  it("planner --config refuses a zero target and an unknown field", async () => {
    const f = join(dir, "c.json");
    writeFileSync(f, JSON.stringify({ planner: "sla", ttftTargetMs: 0, itlTargetMs: 40, profile: "fixtures/golden/planner", gateway: "http://127.0.0.1:1" }));
    let r = await cli(["planner", "--config", f]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/ttftTargetMs must be a number of milliseconds > 0/);
    writeFileSync(f, JSON.stringify({ planner: "sla", ttftTargetMs: 500, itlTargetMs: 40, profile: "fixtures/golden/planner", gateway: "http://127.0.0.1:1", replicas: 3 }));
    r = await cli(["planner", "--config", f]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/unknown field 'replicas'/);
  });

  it("up agg-router --planner sla starts its fleet through the local connector and exports decisions", async () => {
    const cfg = join(dir, "up.json");
    writeFileSync(cfg, JSON.stringify({ adjustmentIntervalS: 0.5, minWorkers: 1, maxWorkers: 3 }));
    const p = kvroute(["up", "agg-router", "--port", "0", "--workers", "1", "--speedup", "20", "--planner", "sla", "--ttft-target", "400", "--itl-target", "20", "--planner-config", cfg, "--quiet"]);
    // SIGTERM even when an expectation fails, so `up` stops the workers it started.
    try {
      const ready = await p.readyPromise;
      expect(ready.planner).toBe("sla");
      expect(ready.workers).toHaveLength(1);
      // Decisions arrive every half second; with no traffic the planner holds its minimum.
      let text = "";
      const decided = /kvroute_planner_decisions_total\{kind="aggregated",action="hold"\} [1-9]/;
      for (let i = 0; i < 200 && !decided.test(text); i++) {
        await new Promise((r) => setTimeout(r, 100));
        text = await (await fetch(`${ready.url}/metrics`)).text();
      }
      expect(text).toMatch(decided);
      expect(text).toMatch(/kvroute_planner_last_decision_info\{kind="aggregated",action="hold",reason="[^"]*"\} 1/);
    } finally {
      p.child.kill("SIGTERM");
    }
    expect(await p.exit).toBe(0);
  }, 60_000);
});
