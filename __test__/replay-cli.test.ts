/**
 * `kvroute replay` and `kvroute demo` as processes: the table and reports, and Ctrl-C (SIGINT)
 * stopping the worker processes cleanly and still writing the partial report.
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import type { PolicyResult } from "../ts/replay/result.js";
import { chatWorkload } from "../ts/replay/workload.js";
import { kvrouteCliPath } from "../ts/workers/index.js";

const dir = mkdtempSync(join(tmpdir(), "kvroute-replay-cli-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A generated chat workload written as a Mooncake trace file. */
function chatTraceFile(name: string, conversations: number, horizonS: number): string {
  const file = join(dir, name);
  const t = chatWorkload({ conversations, horizonS, thinkS: [2, 6] });
  writeFileSync(file, t.requests.map((r) => JSON.stringify({ timestamp: r.timestampMs, input_length: r.inputLength, output_length: r.maxTokens, hash_ids: r.hashIds })).join("\n") + "\n");
  return file;
}

/** Pids of the processes whose parent is `pid`. */
function children(pid: number): number[] {
  const out: number[] = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      if (ppid === pid) out.push(Number(entry));
    } catch {
      // gone meanwhile
    }
  }
  return out;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

function collect(child: ChildProcess): { out: () => string; err: () => string; exit: Promise<number | null> } {
  let out = "";
  let err = "";
  child.stdout!.on("data", (d: Buffer) => (out += d.toString()));
  child.stderr!.on("data", (d: Buffer) => (err += d.toString()));
  return { out: () => out, err: () => err, exit: new Promise((resolve) => child.on("exit", (code) => resolve(code))) };
}

/** Polls `cond` every 50 ms (a poll interval: the wait is for the condition, the test timeout bounds it). */
async function waitFor(cond: () => boolean): Promise<void> {
  while (!cond()) await new Promise((r) => setTimeout(r, 50));
}

/** The plain progress lines (stderr is not a terminal) once some request completed. */
function progressLines(err: string): string[] {
  return err.split("\n").filter((l) => /: [1-9][\d,]*\/[\d,]+ done/.test(l));
}

describe("kvroute replay (process)", () => {
  it("prints the table and writes the JSON contract and the HTML report", () => {
    const trace = chatTraceFile("chat.jsonl", 40, 60);
    const json = join(dir, "out.json");
    const html = join(dir, "out.html");
    const run = spawnSync(process.execPath, [kvrouteCliPath(), "replay", "--trace", trace, "--workers", "3", "--policy", "kv,round-robin,least-loaded", "--json", json, "--html", html], {
      encoding: "utf8",
      timeout: 120_000,
    });
    expect(run.status, run.stderr).toBe(0);
    const lines = run.stdout.split("\n");
    // The fleet first: the default profile, its KV cache and the trace's load on it.
    expect(lines.shift()).toMatch(/^fleet: 3 x llama-3\.1-70b-h100-tp4 \(Llama-3\.1-70B, .*\), 26,000 KV blocks of 16 tokens each; the prompts' prefill without cache hits takes \d+% of the fleet's time$/);
    expect(lines[0]).toMatch(/^policy\s+hit rate\s+TTFT p50\s+TTFT p90\s+TTFT p99\s+E2E p50\s+E2E p99\s+output tok\/s\s+imbalance\s+router µs\/req$/);
    expect(lines.filter((l) => /^(kv|round-robin|least-loaded)\s+\d+\.\d%/.test(l))).toHaveLength(3);
    expect(run.stdout).toContain(`Report: ${html}`);
    const results = JSON.parse(readFileSync(json, "utf8")) as PolicyResult[];
    expect(results.map((r) => r.policy)).toEqual(["kv", "round-robin", "least-loaded"]);
    for (const r of results) {
      expect(r).toMatchObject({ clock: "virtual", workers: 3, partial: false, failed: 0 });
      for (const k of ["hitRate", "throughput", "imbalance", "routerCpuUsPerRequest"] as const) expect(typeof r[k]).toBe("number");
      for (const k of ["p50", "p90", "p99"] as const) {
        expect(r.ttftMs[k]).toBeGreaterThan(0);
        expect(r.e2eMs[k]).toBeGreaterThan(0);
      }
    }
    expect(readFileSync(html, "utf8")).toContain('data-chart="ttft-cdf"');
  }, 150_000);

  it("--engine rust and --engine ts replay a trace alike; a bad or impossible choice exits 2 with the reason", () => {
    const trace = chatTraceFile("engines.jsonl", 20, 30);
    const results: Record<string, PolicyResult[]> = {};
    for (const engine of ["rust", "ts"]) {
      const json = join(dir, `engine-${engine}.json`);
      const run = spawnSync(process.execPath, [kvrouteCliPath(), "replay", "--trace", trace, "--workers", "2", "--policy", "kv", "--engine", engine, "--jobs", "1", "--json", json], { encoding: "utf8", timeout: 120_000 });
      expect(run.status, run.stderr).toBe(0);
      results[engine] = JSON.parse(readFileSync(json, "utf8")) as PolicyResult[];
    }
    const simulated = (r: PolicyResult) => ({ hitRate: r.hitRate, ttft: r.ttftMs, e2e: r.e2eMs, failed: r.failed });
    expect(simulated(results.rust![0]!)).toEqual(simulated(results.ts![0]!));
    const bad = spawnSync(process.execPath, [kvrouteCliPath(), "replay", "--trace", trace, "--engine", "gpu"], { encoding: "utf8", timeout: 60_000 });
    expect(bad.status).toBe(2);
    expect(bad.stderr).toContain("--engine must be rust or ts: got 'gpu'");
    const impossible = spawnSync(process.execPath, [kvrouteCliPath(), "replay", "--trace", trace, "--policy", "kv", "--jobs", "1", "--engine", "rust", "--cpu-blocks", "100"], { encoding: "utf8", timeout: 60_000 });
    expect(impossible.status, impossible.stderr).toBe(2);
    expect(impossible.stderr).toContain("engineImpl rust cannot replay this configuration: the direct event path");
    // Policies side by side: each child says why; the parent ends with the same exit code, not a stack.
    const side = spawnSync(process.execPath, [kvrouteCliPath(), "replay", "--trace", trace, "--policy", "kv,round-robin", "--jobs", "2", "--engine", "rust", "--cpu-blocks", "100", "--quiet"], { encoding: "utf8", timeout: 60_000 });
    expect(side.status, side.stderr).toBe(2);
    expect(side.stderr).toContain("engineImpl rust cannot replay this configuration");
    expect(side.stderr).toContain("kv: the replay process exited (code 2) without a result");
    expect(side.stderr).not.toMatch(/\n\s+at /);
  }, 150_000);

  it("Ctrl-C on the real clock stops every worker and writes the partial report (exit 130)", async () => {
    // ~150 s of trace at 2x: far longer than the test lets it run.
    const trace = chatTraceFile("long.jsonl", 200, 300);
    const json = join(dir, "partial.json");
    const html = join(dir, "partial.html");
    const child = spawn(process.execPath, [kvrouteCliPath(), "replay", "--trace", trace, "--clock", "real", "--workers", "2", "--speedup", "2", "--policy", "kv,round-robin", "--json", json, "--html", html], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    const io = collect(child);
    // Wait until some request completed (the first progress line), with both mockers running.
    await waitFor(() => progressLines(io.err()).length > 0 || child.exitCode !== null);
    const workers = children(child.pid!);
    expect(workers.length, io.err()).toBe(2);
    child.kill("SIGINT");
    const code = await io.exit;
    expect(code, io.err()).toBe(130);
    expect(io.err()).toContain("interrupted, stopping the workers");
    for (const pid of workers) expect(alive(pid), `worker ${pid}`).toBe(false);
    const results = JSON.parse(readFileSync(json, "utf8")) as PolicyResult[];
    // Only the policy that was running, marked partial, with what completed.
    expect(results.map((r) => [r.policy, r.clock, r.partial])).toEqual([["kv", "real", true]]);
    expect(results[0]!.completed).toBeGreaterThan(0);
    expect(existsSync(html)).toBe(true);
    expect(readFileSync(html, "utf8")).toContain("Stopped early");
    expect(io.out()).toMatch(/^kv \(partial\)/m);
  }, 120_000);

  it("Ctrl-C on the virtual clock writes the partial report too", async () => {
    const trace = chatTraceFile("big.jsonl", 8000, 7200);
    const json = join(dir, "vpartial.json");
    const child = spawn(process.execPath, [kvrouteCliPath(), "replay", "--trace", trace, "--workers", "4", "--json", json], { stdio: ["ignore", "pipe", "pipe"] });
    const io = collect(child);
    // Wait for progress on every policy running: side by side the line lists each one's percentage.
    await waitFor(
      () =>
        child.exitCode !== null ||
        progressLines(io.err()).some((l) => [...l.matchAll(/(\S+) (\d+)%/g)].every((m) => Number(m[2]) >= 1)),
    );
    child.kill("SIGINT");
    expect(await io.exit, io.err()).toBe(130);
    const results = JSON.parse(readFileSync(json, "utf8")) as PolicyResult[];
    // Side by side (one process per policy) or one after the other: what ran is partial.
    expect(results.length).toBeGreaterThanOrEqual(1);
    expect(results[0]!.policy).toBe("kv");
    for (const r of results) {
      expect(r.partial).toBe(true);
      expect(r.completed).toBeGreaterThan(0);
    }
  }, 60_000);
});

describe("kvroute demo", () => {
  it("compares kv with round-robin and points at the report", () => {
    const html = join(dir, "demo.html");
    const run = spawnSync(process.execPath, [kvrouteCliPath(), "demo", "--conversations", "60", "--html", html], { encoding: "utf8", timeout: 120_000 });
    expect(run.status, run.stderr).toBe(0);
    expect(run.stdout).toMatch(/^kvroute demo: \d+ chat requests/);
    expect(run.stdout).toMatch(/^kv\s+\d+\.\d%/m);
    expect(run.stdout).toMatch(/^round-robin\s+\d+\.\d%/m);
    expect(run.stdout).toMatch(/^kv vs round-robin: \d+\.\dx the hit rate, \d+% lower TTFT p50$/m);
    expect(run.stdout).toContain(`Report: ${html}`);
    expect(existsSync(html)).toBe(true);
  }, 150_000);
});
