import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { loadGolden, type GoldenCase } from "./helpers/golden.js";

const CLI = fileURLToPath(new URL("../dist/cli.mjs", import.meta.url));
const golden = loadGolden();
const inputs = new Map(golden.inputs.map((i) => [i.id, i]));

function kvroute(args: string[], stdin: string, env: NodeJS.ProcessEnv = {}) {
  const { PYTHONHASHSEED: _unset, ...base } = process.env;
  return spawnSync(process.execPath, [CLI, ...args], { input: stdin, encoding: "utf8", env: { ...base, ...env } });
}

describe("kvroute hash", () => {
  it("prints vLLM's hashes for every golden case without multimodal inputs, all in one process", () => {
    // One process for every line (each names its algorithm, seed and block size): process starts
    // are what a loaded machine makes slow.
    const cases = golden.cases.filter((c) => {
      const input = inputs.get(c.input)!;
      const plainStrings = [input.lora_name, input.lora_path, input.cache_salt].every((s) => s === null || typeof s === "string");
      return input.mm.length === 0 && plainStrings;
    });
    const lines = cases.map((c) => {
      const i = inputs.get(c.input)!;
      // An unset seed is the line's null (the environment is unset too); a set one its string.
      return JSON.stringify({ tokens: i.tokens, lora_name: i.lora_name, lora_path: i.lora_path, cache_salt: i.cache_salt, algorithm: c.algorithm, block_size: c.block_size, seed: c.seed });
    });
    const run = kvroute(["hash", "--digest"], lines.join("\n") + "\n");
    expect(run.stderr).toBe("");
    expect(run.status).toBe(0);
    const out = run.stdout.trimEnd().split("\n").map((l) => JSON.parse(l) as { hashes: string[]; digests: string[] });
    expect(out.length).toBe(cases.length);
    cases.forEach((c, k) => {
      expect(out[k]!.hashes, c.input).toEqual(c.hashes);
      expect(out[k]!.digests, c.input).toEqual(c.digests);
    });
    expect(cases.length).toBeGreaterThan(400);
    expect(new Set(cases.map((c) => `${c.algorithm} ${c.seed} ${c.block_size}`)).size).toBeGreaterThan(10);
  });

  it("per-line settings override the options; a bad one names its line", () => {
    const tokens = Array.from({ length: 32 }, (_, i) => i);
    const byFlags = kvroute(["hash", "--algorithm", "sha256_cbor", "--seed", "7", "--block-size", "8"], JSON.stringify({ tokens }) + "\n");
    const byLine = kvroute(["hash"], JSON.stringify({ tokens, algorithm: "sha256_cbor", seed: "7", block_size: 8 }) + "\n");
    expect(byLine.status).toBe(0);
    expect(byLine.stdout).toBe(byFlags.stdout);
    const bad = kvroute(["hash", "--seed", "0"], `${JSON.stringify({ tokens })}\n${JSON.stringify({ tokens, block_size: 0 })}\n`);
    expect(bad.status).toBe(2);
    expect(bad.stderr).toMatch(/line 2: 'block_size' must be a positive integer/);
  });

  it("takes the seed from PYTHONHASHSEED like vLLM when --seed is absent", () => {
    const c = golden.cases.find((x) => x.seed === "42" && x.algorithm === "sha256" && x.hashes.length > 2)!;
    const tokens = inputs.get(c.input)!.tokens;
    const run = kvroute(["hash", "--block-size", String(c.block_size)], JSON.stringify({ tokens }), { PYTHONHASHSEED: "42" });
    expect(run.status).toBe(0);
    expect(JSON.parse(run.stdout).hashes).toEqual(c.hashes);
  });

  it("names the bad line, exits 2 and writes nothing on bad input", () => {
    const good = JSON.stringify({ tokens: Array.from({ length: 32 }, (_, i) => i) });
    for (const [bad, reason] of [
      ['{"tokens": [1, 2,', /invalid JSON/],
      ['{"tokens": "abc"}', /'tokens' must be an array/],
      ['{"tokens": [1, -1]}', /tokens\[1\]/],
      ['{"tokens": [1], "lora_name": 5}', /'lora_name' must be a string/],
      ['{"tokens": [1], "bogus": 1}', /unknown field 'bogus'/],
      ["[1,2,3]", /expected a JSON object/],
    ] as const) {
      const run = kvroute(["hash", "--seed", "0"], `${good}\n${good}\n${bad}\n${good}\n`);
      expect(run.status, bad).toBe(2);
      expect(run.stdout, bad).toBe("");
      expect(run.stderr, bad).toMatch(/line 3/);
      expect(run.stderr, bad).toMatch(reason);
    }
  });

  it("rejects bad options with exit code 2", () => {
    expect(kvroute(["hash", "--algorithm", "md5"], "").status).toBe(2);
    expect(kvroute(["hash", "--block-size", "0"], "").status).toBe(2);
    expect(kvroute(["hash", "--nope"], "").status).toBe(2);
    expect(kvroute(["hash", "--algorithm", "xxhash"], '{"tokens":[]}').stderr).toMatch(/PYTHONHASHSEED/);
  });
});
