/**
 * `kvroute replay --topology`: the same trace on the same GPUs as aggregated workers, P prefill +
 * D decode workers, and conditional disaggregation, on the virtual clock (real engine cores and
 * router, the profile's KV transfer cost).
 */
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { chatWorkload } from "../ts/replay/workload.js";
import { readTrace } from "../ts/replay/trace.js";
import { runTopologyReplay } from "../ts/replay/topology-replay.js";
import { kvrouteCliPath } from "../ts/workers/index.js";

const dir = mkdtempSync(join(tmpdir(), "kvroute-topology-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function traceFile(conversations: number, horizonS: number): string {
  const file = join(dir, `chat-${conversations}.jsonl`);
  const t = chatWorkload({ conversations, horizonS, thinkS: [2, 6] });
  writeFileSync(file, t.requests.map((r) => JSON.stringify({ timestamp: r.timestampMs, input_length: r.inputLength, output_length: r.maxTokens, hash_ids: r.hashIds })).join("\n") + "\n");
  return file;
}

describe("kvroute replay --topology", () => {
  it("agg vs disagg vs conditional: every request completes; the paths are the topology's", () => {
    const trace = traceFile(20, 60);
    const json = join(dir, "topo.json");
    const run = spawnSync(process.execPath, [kvrouteCliPath(), "replay", "--trace", trace, "--topology", "agg,disagg,conditional", "--prefill-workers", "2", "--decode-workers", "2", "--json", json, "--quiet"], {
      encoding: "utf8",
    });
    expect(run.status, run.stderr).toBe(0);
    expect(run.stdout).toContain("| topology | workers | remote / local prefills | TTFT p50 |");
    const out = JSON.parse(readFileSync(json, "utf8"));
    expect(out.command).toContain("--topology agg,disagg,conditional");
    const [agg, disagg, conditional] = out.results;
    const n = readTrace(trace).requests.length;
    for (const r of out.results) {
      expect(r.completed).toBe(n);
      expect(r.failed).toBe(0);
      expect(r.ttftMs.p50).toBeGreaterThan(0);
      expect(r.itlMs.p50).toBeGreaterThan(0);
    }
    expect(agg).toMatchObject({ topology: "agg", aggregatedWorkers: 4, remotePrefills: 0 });
    expect(disagg).toMatchObject({ topology: "disagg", prefillWorkers: 2, decodeWorkers: 2, remotePrefills: n, localPrefills: 0 });
    // Conditional (isl: 2,048 uncached tokens and 70%): follow-up turns, mostly cached on their
    // decode worker, prefill there; long fresh prompts go to the prefill workers.
    expect(conditional.remotePrefills + conditional.localPrefills).toBe(n);
    expect(conditional.localPrefills).toBeGreaterThan(0);
  });

  it("the conditional policy switches paths: always is disagg, isl with a huge threshold is all local", async () => {
    const trace = readTrace(traceFile(8, 30));
    const n = trace.requests.length;
    const always = await runTopologyReplay({ trace, topology: "conditional", prefillWorkers: 1, decodeWorkers: 1, disagg: { policy: "always" } });
    expect(always).toMatchObject({ remotePrefills: n, localPrefills: 0, completed: n });
    const never = await runTopologyReplay({ trace, topology: "conditional", prefillWorkers: 1, decodeWorkers: 1, disagg: { policy: "isl", islMinTokens: 10_000_000 } });
    expect(never).toMatchObject({ remotePrefills: 0, localPrefills: n, completed: n });
  });

  it("refuses an unknown topology or policy with exit code 2", () => {
    const trace = traceFile(2, 10);
    const bad = spawnSync(process.execPath, [kvrouteCliPath(), "replay", "--trace", trace, "--topology", "agg,mesh"], { encoding: "utf8" });
    expect(bad.status).toBe(2);
    expect(bad.stderr).toContain("unknown topology 'mesh' (expected agg, disagg, conditional)");
    const policy = spawnSync(process.execPath, [kvrouteCliPath(), "replay", "--trace", trace, "--topology", "conditional", "--disagg-policy", "sometimes"], { encoding: "utf8" });
    expect(policy.status).toBe(2);
    expect(policy.stderr).toContain("--disagg-policy must be one of");
  });
});
