/**
 * `npm run bench:core`: block hashing per algorithm beside the raw hash over the same bytes
 * (Rust, one thread), the same hashing through N-API, and the indexer (apply rate, findMatches
 * p50/p99 for 512-block queries on 1M blocks over 64 workers, bytes per pair) through N-API
 * against a pure-TypeScript indexer measured in the same run; then kvroute's indexer beside
 * Dynamo's two (dynamo-kv-router 1.6.1, `benchmarks/dynamo-indexer/`: a standalone Cargo project
 * built on first run into `.cache/`, never part of the workspace `npm test` builds) on the same
 * events, answers checked equal. `--no-dynamo` skips that part.
 */
import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { BlockHasher, ENGINE_HASH_ALGORITHMS, KvIndexer } from "../ts/index.js";
import { TsKvIndexer } from "./baseline/ts-indexer.js";
import { latencies, machine, percentile, printTable, rate, rng, type Row } from "./lib/table.js";

const root = fileURLToPath(new URL("..", import.meta.url));
console.log(`kvroute bench:core — ${machine()}`);

// 1. Rust core, one thread (cargo example prints JSON rows).
const rustRows = JSON.parse(
  execFileSync("cargo", ["run", "--release", "-q", "-p", "kvroute-core", "--example", "bench_core", "--", "--json"], {
    cwd: root,
    encoding: "utf8",
    stdio: ["ignore", "pipe", "inherit"],
  }),
) as Row[];
printTable("Rust core (one thread)", rustRows);

// 2. Hashing through N-API: 512-block prompts of 16-token blocks.
const rand = rng(1);
const BLOCK = 16;
const promptBlocks = 512;
const tokens = Uint32Array.from({ length: promptBlocks * BLOCK }, () => {
  const r = rand();
  return Math.floor(r < 0.6 ? rand() * 8000 : r < 0.95 ? rand() * 40_000 : rand() * 128_256);
});
const hashRows: Row[] = [];
for (const algorithm of ["router", ...ENGINE_HASH_ALGORITHMS] as const) {
  const hasher = new BlockHasher({ blockSize: BLOCK, algorithm, seed: "0" });
  hashRows.push({ name: `hash ${algorithm} (8,192-token prompt per call)`, value: rate(promptBlocks, 0.5, () => hasher.hash(tokens)), unit: "blocks/s" });
}
printTable("Hashing through N-API (one thread)", hashRows);

// 3. Indexer: 2,048 chains of 512 blocks (1M blocks), each stored on 10 of 64 workers.
const CHAINS = 2048;
const WORKERS = 64;
const PER_CHAIN = 10;
const chains: BigUint64Array[] = [];
for (let c = 0; c < CHAINS; c++) {
  const keys = new BigUint64Array(promptBlocks);
  crypto.getRandomValues(keys);
  chains.push(keys);
}
const placements = chains.map(() => Array.from({ length: PER_CHAIN }, () => `worker-${Math.floor(rand() * WORKERS)}`));

function buildNative(): { index: KvIndexer; perSec: number } {
  const index = new KvIndexer({ blockSize: BLOCK });
  const t = process.hrtime.bigint();
  chains.forEach((chain, c) => placements[c]!.forEach((w) => index.applyStored(w, null, chain)));
  const secs = Number(process.hrtime.bigint() - t) / 1e9;
  return { index, perSec: (CHAINS * PER_CHAIN * promptBlocks) / secs };
}
function buildTs(): { index: TsKvIndexer; perSec: number } {
  const index = new TsKvIndexer();
  const t = process.hrtime.bigint();
  chains.forEach((chain, c) => placements[c]!.forEach((w) => index.applyStored(w, chain)));
  const secs = Number(process.hrtime.bigint() - t) / 1e9;
  return { index, perSec: (CHAINS * PER_CHAIN * promptBlocks) / secs };
}

const native = buildNative();
const queries = Array.from({ length: 5000 }, () => chains[Math.floor(rand() * CHAINS)]!);
const nativeLat = latencies(queries.length, (i) => native.index.findMatches(queries[i]!));
const stats = native.index.stats();
const ts = buildTs();
const tsLat = latencies(1000, (i) => ts.index.findMatches(queries[i]!));

const p50 = percentile(nativeLat, 0.5);
const tsP50 = percentile(tsLat, 0.5);
printTable("Indexer through N-API vs pure TypeScript (1M blocks, 64 workers, 512-block queries)", [
  { name: "apply (512-block BlockStored batches)", value: native.perSec, unit: "blocks/s", baseline: `TS: ${(ts.perSec / 1e6).toFixed(2)}M blocks/s (${(native.perSec / ts.perSec).toFixed(1)}x)` },
  { name: "findMatches p50", value: p50, unit: "µs", baseline: `TS: ${tsP50.toFixed(1)} µs (${(tsP50 / p50).toFixed(1)}x)` },
  { name: "findMatches p99", value: percentile(nativeLat, 0.99), unit: "µs", baseline: `TS: ${percentile(tsLat, 0.99).toFixed(1)} µs` },
  { name: `memory (${(stats.pairs / 1e6).toFixed(1)}M pairs, ${(stats.blocks / 1e6).toFixed(2)}M blocks)`, value: stats.approxBytes / stats.pairs, unit: "bytes/pair" },
]);

// 4. Side by side with Dynamo's indexers (Rust, same events, answers compared).
if (!process.argv.includes("--no-dynamo")) {
  const manifest = `${root}benchmarks/dynamo-indexer/Cargo.toml`;
  const env = { ...process.env, CARGO_TARGET_DIR: `${root}.cache/dynamo-indexer-target` };
  console.log("\nbuilding benchmarks/dynamo-indexer (dynamo-kv-router 1.6.1; minutes on first run)...");
  execFileSync("cargo", ["build", "--release", "-q", "--manifest-path", manifest], { cwd: root, env, stdio: ["ignore", "inherit", "inherit"] });
  const trace = `${root}../shared/traces/mooncake_conversation.jsonl`;
  const args = existsSync(trace) ? ["--trace", trace] : [];
  if (args.length === 0) console.log(`(no Mooncake trace at ${trace}: the trace scenarios are skipped)`);
  execFileSync(`${root}.cache/dynamo-indexer-target/release/dynamo-indexer-bench`, args, { cwd: root, stdio: ["ignore", "inherit", "ignore"] });
}
