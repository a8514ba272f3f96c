import { spawn, spawnSync } from "node:child_process";
import { cpSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, describe, expect, it } from "vitest";
import { loadTokenizationGolden, tokenizerDir } from "./helpers/tokenization-golden.js";

const CLI = fileURLToPath(new URL("../dist/cli.mjs", import.meta.url));
const golden = loadTokenizationGolden();

function kvroute(args: string[], stdin: string) {
  return spawnSync(process.execPath, [CLI, ...args], { input: stdin, encoding: "utf8", maxBuffer: 64 * 2 ** 20 });
}

/** The same, without blocking: independent runs overlap (each loads the tokenizer, ~1 s). */
function kvrouteAsync(args: string[], stdin: string): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { stdio: ["pipe", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    child.once("error", reject);
    child.once("close", (status) => resolve({ status, stdout, stderr }));
    child.stdin.end(stdin);
  });
}

describe("kvroute tokenize", () => {
  for (const name of Object.keys(golden.tokenizers)) {
    it(`prints vLLM ${golden.generator.vllm}'s ids for every golden case of ${name}, text and chat, in one run`, () => {
      const cases = golden.cases.filter((c) => c.tokenizer === name);
      const lines = cases.map((c) =>
        JSON.stringify(c.kind === "text" ? { prompt: c.prompt, add_special_tokens: c.add_special_tokens } : c.request),
      );
      // A blank line in the middle is skipped, as `kvroute hash` skips it.
      lines.splice(1, 0, "");
      const run = kvroute(["tokenize", "--tokenizer", tokenizerDir(golden, name)], lines.join("\n") + "\n");
      expect(run.stderr).toBe("");
      expect(run.status).toBe(0);
      const out = run.stdout.trimEnd().split("\n").map((l) => JSON.parse(l) as { ids: number[] });
      expect(out.length).toBe(cases.length);
      cases.forEach((c, k) => expect(out[k]!.ids, `${c.name} (${name})`).toEqual(c.ids));
      expect(cases.filter((c) => c.kind === "chat").length).toBeGreaterThan(20);
    });
  }

  it("adds special tokens to text unless the line says add_special_tokens: false", () => {
    const run = kvroute(
      ["tokenize", "--tokenizer", tokenizerDir(golden, "llama3_1")],
      ['{"prompt":"Hello"}', '{"prompt":"Hello","add_special_tokens":false}'].join("\n"),
    );
    expect(run.status).toBe(0);
    const [withBos, without] = run.stdout.trimEnd().split("\n").map((l) => (JSON.parse(l) as { ids: number[] }).ids);
    expect(withBos).toEqual([128000, ...without!]);
  });

  it("names the bad line, exits 2 and writes nothing on bad input", async () => {
    const good = JSON.stringify({ prompt: "Hello, world" });
    const chat = JSON.stringify({ messages: [{ role: "user", content: "hi" }] });
    const runs: [string, RegExp, ReturnType<typeof kvrouteAsync>][] = [];
    for (const [bad, reason] of [
      ['{"prompt": "abc', /invalid JSON/],
      ['{"tokens": [1, 2]}', /'prompt' \(text\) or 'messages'/],
      ["[1,2,3]", /expected a JSON object/],
      ['{"prompt": [1, 2]}', /'prompt' must be a string/],
      ['{"prompt": ""}', /empty/],
      ['{"prompt": "x", "add_special_tokens": "yes"}', /'add_special_tokens' must be a boolean/],
      ['{"prompt": "x", "messages": []}', /not both/],
      ['{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}', /image_url/],
      ['{"messages": [{"role": "user", "content": "x"}], "add_generation_prompt": true, "continue_final_message": true}', /continue_final_message/],
    ] as const) {
      runs.push([bad, reason, kvrouteAsync(["tokenize", "--tokenizer", tokenizerDir(golden, "qwen3")], `${good}\n${chat}\n${bad}\n${good}\n`)]);
    }
    for (const [bad, reason, pending] of runs) {
      const run = await pending;
      expect(run.status, bad).toBe(2);
      expect(run.stdout, bad).toBe("");
      expect(run.stderr, bad).toMatch(/line 3/);
      expect(run.stderr, bad).toMatch(reason);
    }
  });

  describe("with a bad tokenizer folder", () => {
    const scratch = mkdtempSync(join(tmpdir(), "kvroute-cli-tok-"));
    afterAll(() => rmSync(scratch, { recursive: true, force: true }));

    it("exits 2 naming the file, before reading any input", () => {
      const dir = join(scratch, "bad-config");
      cpSync(tokenizerDir(golden, "qwen3"), dir, { recursive: true });
      writeFileSync(join(dir, "tokenizer_config.json"), "{ oops");
      const run = kvroute(["tokenize", "--tokenizer", dir], '{"prompt":"hi"}\n');
      expect(run.status).toBe(2);
      expect(run.stdout).toBe("");
      expect(run.stderr).toMatch(/tokenizer_config\.json: not valid JSON/);
      const missing = kvroute(["tokenize", "--tokenizer", join(scratch, "nope")], "");
      expect(missing.status).toBe(2);
      expect(missing.stderr).toMatch(/nope: not a directory/);
    });
  });

  it("rejects bad options with exit code 2 and lists the command in --help", () => {
    expect(kvroute(["tokenize"], "").status).toBe(2);
    expect(kvroute(["tokenize"], "").stderr).toMatch(/--tokenizer is required/);
    expect(kvroute(["tokenize", "--nope"], "").status).toBe(2);
    const help = kvroute(["tokenize", "--help"], "");
    expect(help.status).toBe(0);
    expect(help.stdout).toMatch(/Usage: kvroute tokenize --tokenizer DIR/);
    expect(kvroute(["--help"], "").stdout).toMatch(/^\s+tokenize\s/m);
  });
});
