/**
 * `npm run bench:nixl`: DRAM transfers over NIXL (UCX) between this process and a peer process,
 * 16 KiB to 64 MiB, READ and WRITE: GB/s and latency (median, p90) of one awaited transfer,
 * against a plain memcpy (Buffer.copy) of the same size in the same run. Fetches NIXL's wheel
 * into .cache/nixl/ when KVROUTE_NIXL_LIB_DIR is not set.
 */
import { execFileSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { NixlAgent } from "../ts/index.js";
import { nixlLibDir, startNixlPeer } from "../__test__/helpers/nixl.js";
import { machine, percentile } from "./lib/table.js";

const MAX = 64 << 20;
const SIZES = [16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20];
const SECONDS_PER_CASE = Number(process.env.BENCH_SECONDS ?? 0.5);

const libDir =
  nixlLibDir() ??
  execFileSync(fileURLToPath(new URL("../scripts/nixl/fetch.sh", import.meta.url)), ["nixl-cu12", "1.5.1"], { encoding: "utf8" }).trim();

console.log(`kvroute bench:nixl — ${machine()}`);
console.log(`NIXL: ${NixlAgent.availability(libDir).library} (UCX backend, defaults; two processes on this machine)`);

/** Runs `fn` for about SECONDS_PER_CASE (at least 5 times, after 2 warm-ups); latencies in µs, sorted. */
async function timed(fn: () => Promise<unknown> | void): Promise<number[]> {
  for (let i = 0; i < 2; i++) await fn();
  const out: number[] = [];
  const end = performance.now() + SECONDS_PER_CASE * 1000;
  while (out.length < 5 || performance.now() < end) {
    const t = process.hrtime.bigint();
    await fn();
    out.push(Number(process.hrtime.bigint() - t) / 1000);
  }
  return out.sort((a, b) => a - b);
}

async function main(): Promise<void> {
  const agent = NixlAgent.create(`bench-${process.pid}`, { libDir });
  const peer = await startNixlPeer(`bench-peer-${process.pid}`, MAX, 1, { KVROUTE_NIXL_LIB_DIR: libDir });
  if ("error" in peer) throw new Error(peer.error.message);
  const remoteName = agent.loadRemoteMetadata(peer.metadata);
  const local = Buffer.alloc(MAX);
  const registration = agent.registerBuffer(local);
  const src = Buffer.alloc(MAX, 7);

  const pad = (s: string, n: number) => s.padStart(n);
  const gbs = (bytes: number, us: number) => (bytes / (us / 1e6) / 1e9).toFixed(2);
  const size = (n: number) => (n >= 1 << 20 ? `${n >> 20} MiB` : `${n >> 10} KiB`);
  console.log(`\n${"size".padEnd(8)} ${pad("READ GB/s", 10)} ${pad("p50 µs", 9)} ${pad("p90 µs", 9)} ${pad("WRITE GB/s", 11)} ${pad("p50 µs", 9)} ${pad("p90 µs", 9)} | ${pad("memcpy GB/s", 12)} ${pad("p50 µs", 9)}`);
  for (const n of SIZES) {
    const remote = { mem: "DRAM" as const, regions: [{ addr: peer.addr, length: n }] };
    const read = await timed(() => agent.read(registration.descList(0, n), remote, remoteName));
    const write = await timed(() => agent.write(registration.descList(0, n), remote, remoteName));
    const copy = await timed(() => {
      src.copy(local, 0, 0, n);
    });
    const [r50, w50, c50] = [read, write, copy].map((l) => percentile(l, 0.5));
    console.log(
      `${size(n).padEnd(8)} ${pad(gbs(n, r50!), 10)} ${pad(r50!.toFixed(0), 9)} ${pad(percentile(read, 0.9).toFixed(0), 9)} ${pad(gbs(n, w50!), 11)} ${pad(w50!.toFixed(0), 9)} ${pad(percentile(write, 0.9).toFixed(0), 9)} | ${pad(gbs(n, c50!), 12)} ${pad(c50!.toFixed(1), 9)}`,
    );
  }
  console.log("\nGB/s from the median latency of one awaited transfer (created, then posted and polled to completion on the libuv pool).");
  await peer.stop();
  agent.close();
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
