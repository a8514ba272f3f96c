import { describe, expect, it } from "vitest";
import { InvalidInputError, MemoryRegistry, type WorkerRecord } from "../ts/index.js";

function record(id: string, over: Partial<WorkerRecord> = {}): WorkerRecord {
  return {
    id,
    model: "m",
    role: "aggregated",
    url: "http://127.0.0.1:8000",
    kvEvents: null,
    blockSize: 16,
    hashAlgorithm: "sha256",
    hashSeed: null,
    numGpuBlocks: null,
    dataParallelSize: 1,
    dpRanks: [0],
    ...over,
  };
}

describe("MemoryRegistry", () => {
  it("lists, gets, replaces and removes records, notifying synchronously", async () => {
    const reg = new MemoryRegistry([record("a")]);
    const seen: string[] = [];
    const off = reg.watch((c) => seen.push(`${c.type}:${c.record.id}:${c.record.model}`));
    const p = reg.register(record("b", { model: "n" }));
    expect(seen).toEqual(["added:b:n"]); // before the promise settles
    await p;
    expect(reg.list().map((r) => r.id)).toEqual(["a", "b"]);
    expect(reg.list("n").map((r) => r.id)).toEqual(["b"]);
    await reg.register(record("a", { url: "http://127.0.0.1:9000" }));
    expect(reg.get("a")?.url).toBe("http://127.0.0.1:9000");
    expect(reg.list().map((r) => r.id)).toEqual(["b", "a"]);
    await reg.deregister("a");
    await reg.deregister("nope");
    expect(reg.get("a")).toBeUndefined();
    off();
    await reg.register(record("c"));
    expect(seen).toEqual(["added:b:n", "added:a:m", "removed:a:m"]);
  });

  it("rejects malformed records naming the field, and changes nothing", async () => {
    const reg = new MemoryRegistry();
    const cases: [Partial<WorkerRecord>, RegExp][] = [
      [{ id: "" }, /id must be/],
      [{ url: "not a url" }, /url must be an absolute URL/],
      [{ blockSize: 0 }, /blockSize/],
      [{ role: "boss" as never }, /role/],
      [{ hashAlgorithm: "md5" as never }, /hashAlgorithm/],
      [{ dpRanks: [] }, /dpRanks must be a non-empty/],
      [{ dpRanks: [0, 0], dataParallelSize: 2 }, /twice/],
      [{ dpRanks: [2], dataParallelSize: 2 }, /\[0, 2\)/],
      [{ kvEvents: { endpoints: [], replayEndpoints: null, topic: "" } }, /one endpoint per/],
    ];
    for (const [over, msg] of cases) {
      const err = await reg.register(record("x", over)).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(InvalidInputError);
      expect((err as Error).message).toMatch(msg);
    }
    expect(reg.list()).toEqual([]);
  });

  it("runs every listener even when one throws, then rejects with its error", async () => {
    const reg = new MemoryRegistry();
    const calls: number[] = [];
    reg.watch(() => {
      calls.push(1);
      throw new Error("boom");
    });
    reg.watch(() => calls.push(2));
    await expect(reg.register(record("a"))).rejects.toThrow("boom");
    expect(calls).toEqual([1, 2]);
    expect(reg.get("a")).toBeDefined();
  });
});
