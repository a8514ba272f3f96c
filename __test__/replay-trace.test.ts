/**
 * Trace reading for `kvroute replay`: Mooncake records and OpenAI request lines, the expansion of
 * Mooncake hash ids into tokens, and a malformed line stopping the replay with its line number and
 * the reason (library and CLI).
 */
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { toyTraceTokenizer as toyTokenizer } from "../ts/replay/trace.js";
import { FIRST_WORD_ID, WORD_END_ID } from "../ts/mocker/toy-tokenizer.js";
import { expandHashIds, expandHashIdsReference, parseTrace, promptTokens, TraceError } from "../ts/replay/trace.js";
import { kvrouteCliPath } from "../ts/workers/index.js";

const dir = mkdtempSync(join(tmpdir(), "kvroute-trace-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const mooncake = (o: Record<string, unknown>) => JSON.stringify({ timestamp: 0, input_length: 600, output_length: 10, hash_ids: [1, 2], ...o });

function traceError(text: string): TraceError {
  try {
    parseTrace(text, "t.jsonl");
  } catch (err) {
    if (err instanceof TraceError) return err;
    throw err;
  }
  throw new Error("no error");
}

describe("Mooncake traces", () => {
  it("reads records and expands hash ids into deterministic 512-token runs", () => {
    const text = [
      mooncake({ timestamp: 0, input_length: 1100, hash_ids: [7, 8, 9] }),
      "",
      mooncake({ timestamp: 5, input_length: 1300, hash_ids: [7, 8, 10] }),
      mooncake({ timestamp: 5, input_length: 200, hash_ids: [11] }),
    ].join("\n");
    const t = parseTrace(text, "t.jsonl");
    expect(t.format).toBe("mooncake");
    expect(t.requests.map((r) => [r.index, r.line, r.timestampMs, r.inputLength, r.maxTokens])).toEqual([
      [0, 1, 0, 1100, 10],
      [1, 3, 5, 1300, 10],
      [2, 4, 5, 200, 10],
    ]);
    const [a, b, c] = t.requests.map(promptTokens);
    expect(a!.length).toBe(1100);
    expect(b!.length).toBe(1300);
    expect(c!.length).toBe(200);
    // Shared ids, shared tokens; the last block is cut to input_length.
    expect(b!.subarray(0, 1024)).toEqual(a!.subarray(0, 1024));
    expect(b!.subarray(1024, 1100)).not.toEqual(a!.subarray(1024, 1100));
    expect(expandHashIds([9], 76)).toEqual(a!.subarray(1024, 1100));
    // Word ids only (no BOS/EOS), varied.
    for (const tok of b!) expect(tok >= FIRST_WORD_ID && tok < WORD_END_ID).toBe(true);
    expect(new Set(a!).size).toBeGreaterThan(1000);
    // Different ids differ in every 16-token block.
    const x = expandHashIds([100], 512);
    const y = expandHashIds([101], 512);
    for (let k = 0; k < 512; k += 16) expect(x.subarray(k, k + 16)).not.toEqual(y.subarray(k, k + 16));
  });

  it("expands hash ids natively exactly as the JS reference does (ids up to 2^53, cut blocks)", () => {
    let s = 12345;
    const rand = () => ((s = (Math.imul(s, 1103515245) + 12345) >>> 0) / 2 ** 32);
    for (let i = 0; i < 200; i++) {
      const ids = Array.from({ length: 1 + Math.floor(rand() * 5) }, () => (i % 3 === 0 ? Math.floor(rand() * 2 ** 53) : Math.floor(rand() * 100_000)));
      const len = 1 + Math.floor(rand() * ids.length * 512);
      expect(expandHashIds(ids, len)).toEqual(expandHashIdsReference(ids, len));
    }
    // A reused buffer longer than the prompt: only the prompt's part is written and returned.
    const buf = new Uint32Array(2000);
    expect(expandHashIds([3, 4], 700, buf)).toEqual(expandHashIdsReference([3, 4], 700));
  });

  it("applies --limit and --rate", () => {
    const text = [0, 1000, 3000, 4000].map((ts) => mooncake({ timestamp: ts })).join("\n") + "\nnot json";
    const t = parseTrace(text, "t.jsonl", { limit: 4, rate: 2 });
    // 4 requests at 2/s on average: 1.5 s from first to last, the shape kept.
    expect(t.requests.map((r) => r.timestampMs)).toEqual([0, 375, 1125, 1500]);
  });

  it.each([
    ["not JSON", '{"timestamp": 0,', 1, /not valid JSON/],
    ["an array", "[1, 2]", 1, /expected a JSON object, got an array/],
    ["unknown shape", '{"foo": 1}', 1, /expected a Mooncake record .* or an OpenAI request/],
    ["missing hash_ids", JSON.stringify({ timestamp: 0, input_length: 10, output_length: 5 }), 1, /missing 'hash_ids'/],
    ["missing timestamp", JSON.stringify({ input_length: 10, output_length: 5, hash_ids: [1] }), 1, /missing 'timestamp'/],
    ["negative length", mooncake({ input_length: -3 }), 1, /'input_length' must be an integer >= 1: got -3/],
    ["zero output", mooncake({ output_length: 0 }), 1, /'output_length' must be an integer >= 1: got 0/],
    ["string id", mooncake({ hash_ids: [1, "2"] }), 1, /hash_ids\[1\] must be an integer >= 0: got "2"/],
    ["wrong block count", mooncake({ input_length: 1100, hash_ids: [1, 2] }), 1, /input_length 1100 needs 3 hash_ids of 512 tokens: got 2/],
  ])("rejects %s", (_name, line, lineNo, reason) => {
    const err = traceError(line);
    expect(err.line).toBe(lineNo);
    expect(err.reason).toMatch(reason);
    expect(err.message).toMatch(new RegExp(`^t\\.jsonl:${lineNo}: `));
    expect(err.code).toBe("KVR_INVALID_INPUT");
  });

  it("names the line of a bad record deep in the file, and time going backwards", () => {
    const good = Array.from({ length: 6 }, (_, i) => mooncake({ timestamp: i * 10 }));
    const bad = [...good.slice(0, 4), "", mooncake({ hash_ids: [] }), ...good.slice(4)];
    const err = traceError(bad.join("\n"));
    expect(err.line).toBe(6);
    expect(err.reason).toBe("input_length 600 needs 2 hash_ids of 512 tokens: got 0");
    const backwards = [mooncake({ timestamp: 10 }), mooncake({ timestamp: 5 })].join("\n");
    expect(traceError(backwards)).toMatchObject({ line: 2, reason: "timestamp 5 goes back in time (previous: 10)" });
    expect(() => parseTrace("\n\n", "empty.jsonl")).toThrow(/empty\.jsonl: the trace has no requests/);
  });
});

describe("OpenAI request traces", () => {
  it("reads completion and chat bodies and tokenizes them as the gateway does", () => {
    const lines = [
      { timestamp: 100, model: "m", prompt: "hello world", max_tokens: 20 },
      { messages: [{ role: "system", content: "be brief" }, { role: "user", content: "hi" }], max_tokens: 5 },
      { timestamp: 250, prompt: [5000, 5001, 5002] },
    ];
    const t = parseTrace(lines.map((l) => JSON.stringify(l)).join("\n"), "o.jsonl");
    expect(t.format).toBe("openai");
    expect(t.requests.map((r) => [r.timestampMs, r.maxTokens, r.openai!.endpoint])).toEqual([
      [100, 20, "completions"],
      [100, 5, "chat"],
      [250, null, "completions"],
    ]);
    expect(Array.from(promptTokens(t.requests[0]!))).toEqual(toyTokenizer.encode("hello world"));
    expect(Array.from(promptTokens(t.requests[1]!))).toEqual(
      toyTokenizer.encodeChat([
        { role: "system", text: "be brief" },
        { role: "user", text: "hi" },
      ]),
    );
    expect(Array.from(promptTokens(t.requests[2]!))).toEqual([5000, 5001, 5002]);
    // The body forwarded live is the client's, without the trace's timestamp.
    expect(t.requests[0]!.openai!.body).toEqual({ model: "m", prompt: "hello world", max_tokens: 20 });
  });

  it("rejects what the gateway would reject, and mixed formats, with the line", () => {
    expect(traceError(['{"prompt": "a"}', '{"prompt": "b", "max_tokens": "many"}'].join("\n"))).toMatchObject({ line: 2, reason: expect.stringMatching(/max_tokens/) });
    expect(traceError(['{"prompt": "a"}', mooncake({})].join("\n"))).toMatchObject({ line: 2, reason: "a mooncake record in a openai trace (the first record decides the format)" });
    expect(traceError('{"prompt": "a", "timestamp": "soon"}')).toMatchObject({ line: 1, reason: expect.stringMatching(/'timestamp' must be a number/) });
    expect(traceError('{"prompt": ["a", "b"], "n": 2}').line).toBe(1);
  });
});

describe("kvroute replay with a malformed trace", () => {
  it("stops before replaying, naming the file, the line and the reason (exit 2)", () => {
    const file = join(dir, "bad.jsonl");
    writeFileSync(file, [mooncake({ timestamp: 0 }), mooncake({ timestamp: 1 }), '{"timestamp": 2, "input_length": 600, "output_length": 10, "hash_ids": [1, 2]', mooncake({ timestamp: 3 })].join("\n"));
    const run = spawnSync(process.execPath, [kvrouteCliPath(), "replay", "--trace", file, "--workers", "2"], { encoding: "utf8", timeout: 60_000 });
    expect(run.status).toBe(2);
    expect(run.stderr).toContain(`kvroute replay: ${file}:3: not valid JSON`);
    expect(run.stdout).toBe("");
  });

  it("rejects bad flags (exit 2)", () => {
    const file = join(dir, "ok.jsonl");
    writeFileSync(file, mooncake({}));
    const bad = (args: string[]) => spawnSync(process.execPath, [kvrouteCliPath(), "replay", "--trace", file, ...args], { encoding: "utf8", timeout: 60_000 });
    expect(bad(["--policy", "kv,fastest"]).stderr).toMatch(/unknown policy 'fastest'/);
    expect(bad(["--clock", "wall"]).stderr).toMatch(/--clock must be virtual or real/);
    expect(bad(["--workers", "0"]).status).toBe(2);
    expect(bad(["--event-drop-rate", "2"]).stderr).toMatch(/--event-drop-rate must be in \[0, 1\]/);
    const profile = bad(["--profile", "gpt-5-b200"]);
    expect(profile.status).toBe(2);
    expect(profile.stderr).toMatch(/unknown engine profile "gpt-5-b200" \(expected one of llama-3\.1-8b-h100, llama-3\.1-70b-h100-tp4, dynamo-polynomial, llama-3\.1-8b-h200\)/);
  });
});
