// Worker records of a simulated fleet for the in-process benchmarks (no processes behind them).
import type { WorkerRecord } from "../../ts/index.js";

export function benchWorkerRecords(count: number, model: string, blockSize: number): WorkerRecord[] {
  return Array.from({ length: count }, (_, i) => ({
    id: `worker-${i}`,
    model,
    role: "aggregated",
    url: `http://10.0.0.${i}:8000`,
    kvEvents: null,
    blockSize,
    hashAlgorithm: "sha256_cbor",
    hashSeed: "0",
    numGpuBlocks: null,
    dataParallelSize: 1,
    dpRanks: [0],
  }));
}
