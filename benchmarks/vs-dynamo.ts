/**
 * `npm run bench:vs-dynamo`: the same Mooncake-format trace replayed by Dynamo 1.6.1's virtual-time
 * replay (its mocker engines and its KV router in one process) and by kvroute's virtual replay,
 * at matched engines: block size, KV capacity, max_num_seqs, batched-token budget, KV event lag,
 * and Dynamo's default timing (kvroute's mocker with the `dynamo-polynomial` profile). Dynamo's kv
 * router breaks ties at random, so it runs several times and the table shows the spread.
 *
 * The peer is installed on first run into `.cache/dynamo-venv` (`pip install --no-deps ai-dynamo
 * ai-dynamo-runtime` 1.6.1 plus their pure-Python needs: the full install pulls `aisimulate` from
 * a private index). Options: `--trace FILE` (default ../shared/traces/mooncake_conversation.jsonl),
 * `--limit N` (first N requests), `--runs N` (Dynamo kv runs, default 3).
 */
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
// kvroute's side runs the shipped bundle (`kvroute replay` runs it too; `tsup` builds it first):
// under tsx, every imported binding is read through a CJS-interop getter, ~8% of the replay's CPU.
import { readTrace, runVirtualReplay } from "../dist/index.mjs";
import { machine } from "./lib/table.js";
import { ttftFloors } from "./lib/ttft-floor.js";

const root = fileURLToPath(new URL("..", import.meta.url));
const { values } = parseArgs({
  options: { trace: { type: "string" }, limit: { type: "string" }, runs: { type: "string" } },
});
const traceFile = values.trace ?? join(root, "..", "shared", "traces", "mooncake_conversation.jsonl");
const runs = Number(values.runs ?? 3);
const limit = values.limit === undefined ? undefined : Number(values.limit);

// Matched engines (both sides).
const M = { workers: 8, blockSize: 16, numGpuBlocks: 26_000, maxNumSeqs: 1024, maxNumBatchedTokens: 8192, kvEventLagMs: 5 };

const venv = join(root, ".cache", "dynamo-venv");
const python = join(venv, "bin", "python");
function ensurePeer(): void {
  if (existsSync(join(venv, "lib")) && existsSync(python)) {
    try {
      execFileSync(python, ["-c", "import dynamo.replay"], { stdio: "ignore" });
      return;
    } catch {
      /* (re)install below */
    }
  }
  console.log("installing ai-dynamo 1.6.1 into .cache/dynamo-venv (first run)...");
  execFileSync("python3", ["-m", "venv", venv], { stdio: "inherit" });
  const pip = join(venv, "bin", "pip");
  execFileSync(pip, ["install", "-q", "--no-deps", "ai-dynamo==1.6.1", "ai-dynamo-runtime==1.6.1"], { stdio: "inherit" });
  execFileSync(pip, ["install", "-q", "aiohttp", "msgspec", "prometheus-client", "pyzmq", "tqdm", "typing-extensions", "zstandard", "pydantic", "uvloop"], { stdio: "inherit" });
}

interface Row {
  hitRate: number;
  ttftP50: number;
  ttftP90: number;
  ttftP99: number;
  e2eP50: number;
  requests: number;
  cpuSeconds: number;
}

function dynamo(trace: string, mode: "kv_router" | "round_robin"): Row {
  const settings = {
    trace,
    workers: M.workers,
    router_mode: mode,
    block_size: M.blockSize,
    num_gpu_blocks: M.numGpuBlocks,
    max_num_seqs: M.maxNumSeqs,
    max_num_batched_tokens: M.maxNumBatchedTokens,
    kv_event_lag_ms: M.kvEventLagMs,
  };
  const out = execFileSync(python, [join(root, "benchmarks", "lib", "dynamo_replay.py"), JSON.stringify(settings)], {
    encoding: "utf8",
    env: { ...process.env, DYN_LOG: "warn" },
    stdio: ["ignore", "pipe", "inherit"],
    maxBuffer: 64 << 20,
  });
  return JSON.parse(out.trim().split("\n").pop()!) as Row;
}

async function kvroute(trace: string, policy: "kv" | "round-robin"): Promise<Row> {
  const t = readTrace(trace);
  const cpu0 = process.cpuUsage();
  const r = await runVirtualReplay({
    trace: t,
    policy,
    workers: M.workers,
    blockSize: M.blockSize,
    profile: "dynamo-polynomial",
    numGpuBlocks: M.numGpuBlocks,
    engine: { maxNumSeqs: M.maxNumSeqs, maxNumBatchedTokens: M.maxNumBatchedTokens },
    eventDelayMs: M.kvEventLagMs,
  });
  const cpu = process.cpuUsage(cpu0);
  return {
    hitRate: r.hitRate,
    ttftP50: r.ttftMs.p50,
    ttftP90: r.ttftMs.p90,
    ttftP99: r.ttftMs.p99,
    e2eP50: r.e2eMs.p50,
    requests: r.completed,
    cpuSeconds: (cpu.user + cpu.system) / 1e6,
  };
}

async function main(): Promise<void> {
  ensurePeer();
  let trace = traceFile;
  if (limit !== undefined) {
    const dir = mkdtempSync(join(tmpdir(), "kvr-vs-dynamo-"));
    trace = join(dir, "trace.jsonl");
    writeFileSync(trace, readFileSync(traceFile, "utf8").split("\n").filter(Boolean).slice(0, limit).join("\n") + "\n");
  }
  console.log(`kvroute bench:vs-dynamo — ${machine()}`);
  console.log(`trace ${traceFile}${limit === undefined ? "" : ` (first ${limit})`}; matched engines: ${JSON.stringify(M)}, Dynamo's polynomial timing`);

  const rows: [string, Row][] = [];
  for (let i = 0; i < runs; i++) rows.push([`Dynamo kv (run ${i + 1})`, dynamo(trace, "kv_router")]);
  rows.push(["Dynamo round-robin", dynamo(trace, "round_robin")]);
  rows.push(["kvroute kv", await kvroute(trace, "kv")]);
  rows.push(["kvroute round-robin", await kvroute(trace, "round-robin")]);

  const ms = (x: number) => (x >= 10_000 ? `${(x / 1000).toFixed(1)} s` : `${Math.round(x)} ms`);
  console.log(`\n${"system / policy".padEnd(24)}  hit rate  TTFT p50  TTFT p90  TTFT p99   E2E p50  req/CPU-s`);
  console.log("-".repeat(24 + 62));
  for (const [name, r] of rows) {
    console.log(
      `${name.padEnd(24)}  ${(100 * r.hitRate).toFixed(1).padStart(7)}%  ${ms(r.ttftP50).padStart(8)}  ${ms(r.ttftP90).padStart(8)}  ${ms(r.ttftP99).padStart(8)}  ${ms(r.e2eP50).padStart(8)}  ${(r.requests / r.cpuSeconds).toFixed(0).padStart(9)}`,
    );
  }
  const dk = rows.filter(([n]) => n.startsWith("Dynamo kv")).map(([, r]) => r);
  const kk = rows.find(([n]) => n === "kvroute kv")![1];
  const spread = (f: (r: Row) => number) => `${ms(Math.min(...dk.map(f)))}–${ms(Math.max(...dk.map(f)))}`;
  console.log(`\nDynamo kv over ${dk.length} runs: TTFT p50 ${spread((r) => r.ttftP50)}, p90 ${spread((r) => r.ttftP90)}`);
  const best = Math.min(...dk.map((r) => r.ttftP90));
  console.log(`kvroute kv TTFT p90 vs Dynamo kv's best: ${(100 * (1 - kk.ttftP90 / best)).toFixed(0)}% lower`);

  // How low any router's TTFT can go on these engines (benchmarks/lib/ttft-floor.ts).
  const t = readTrace(trace);
  if (t.requests.some((r) => r.hashIds)) {
    console.log("\nfloor: every request alone on an idle worker, hits from a cache model (no queue, no shared step)");
    console.log(`${"cache model".padEnd(24)}  hit rate  TTFT p50  TTFT p90  TTFT p99`);
    const floors = ttftFloors(t, { blockSize: M.blockSize, maxNumBatchedTokens: M.maxNumBatchedTokens, fleetBlocks: M.workers * M.numGpuBlocks });
    for (const f of floors) {
      console.log(`${f.model.padEnd(24)}  ${(100 * f.hitRate).toFixed(1).padStart(7)}%  ${ms(f.p50).padStart(8)}  ${ms(f.p90).padStart(8)}  ${ms(f.p99).padStart(8)}`);
    }
    console.log(`15% below Dynamo kv's best p90: ${ms(0.85 * best)}`);
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
