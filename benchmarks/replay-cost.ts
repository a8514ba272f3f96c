/**
 * `npx tsup && npx tsx benchmarks/replay-cost.ts [--limit N] [--policy kv|round-robin]
 * [--engine rust|ts|both]`: kvroute's side of `bench:vs-dynamo` alone (the same matched engines,
 * the shipped bundle), for profiling a replay's cost per request (`node --cpu-prof --import tsx
 * benchmarks/replay-cost.ts --engine rust`). `--engine both` (the default) replays with the Rust
 * engines, then with the mocker's TS engine core, in the same process: the baseline in the same run.
 */
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { readTrace, runVirtualReplay } from "../dist/index.mjs";

const root = fileURLToPath(new URL("..", import.meta.url));
const { values } = parseArgs({ options: { trace: { type: "string" }, limit: { type: "string" }, policy: { type: "string" }, engine: { type: "string" } } });

async function main(): Promise<void> {
  const t = readTrace(values.trace ?? join(root, "..", "shared", "traces", "mooncake_conversation.jsonl"));
  if (values.limit !== undefined) t.requests.length = Math.min(t.requests.length, Number(values.limit));
  const policy = (values.policy ?? "kv") as "kv" | "round-robin";
  const engine = values.engine ?? "both";
  if (!["rust", "ts", "both"].includes(engine)) throw new Error("--engine must be rust, ts or both");
  for (const engineImpl of engine === "both" ? (["rust", "ts"] as const) : [engine as "rust" | "ts"]) {
    const cpu0 = process.cpuUsage();
    const r = await runVirtualReplay({
      trace: t,
      policy,
      workers: 8,
      blockSize: 16,
      profile: "dynamo-polynomial",
      numGpuBlocks: 26_000,
      engine: { maxNumSeqs: 1024, maxNumBatchedTokens: 8192 },
      eventDelayMs: 5,
      engineImpl,
    });
    const cpu = process.cpuUsage(cpu0);
    const s = (cpu.user + cpu.system) / 1e6;
    console.log(
      `${policy} (${engineImpl} engine): ${r.completed} requests, hit ${(100 * r.hitRate).toFixed(2)}%, TTFT p50 ${r.ttftMs.p50.toFixed(1)} p90 ${r.ttftMs.p90.toFixed(1)} p99 ${r.ttftMs.p99.toFixed(1)} E2E p50 ${r.e2eMs.p50.toFixed(1)}; ${s.toFixed(2)} CPU-s, ${(r.completed / s).toFixed(0)} req/CPU-s`,
    );
  }
}

void main();
