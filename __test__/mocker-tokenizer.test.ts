/**
 * The mocker with a real tokenizer (`kvroute mock --tokenizer DIR`): prompts tokenized exactly as
 * vLLM (the golden ids), KV blocks from those ids, generated ids of the real vocabulary whose text
 * is their decoding, the real EOS, vLLM's 400 for requests the tokenizer refuses; and the flag
 * reaching the mocker from a worker's command line.
 */
import { spawnSync } from "node:child_process";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BlockHasher } from "../ts/core/block-hasher.js";
import { MockEngine } from "../ts/mocker/mock-engine.js";
import { MockServer } from "../ts/mocker/http-server.js";
import { mockConfigFromArgs } from "../ts/cli/mock.js";
import { Tokenizer } from "../ts/tokenizer/tokenizer.js";
import { buildCommandLine, mockerCommand } from "../ts/workers/index.js";
import { kvrouteCli, startMocker, type MockerProcess } from "./helpers/mocker-process.js";
import { loadTokenizationGolden, tokenizerDir, type ChatCase, type TextCase } from "./helpers/tokenization-golden.js";

const golden = loadTokenizationGolden();
const QWEN3 = tokenizerDir(golden, "qwen3");
const LLAMA = tokenizerDir(golden, "llama3_1");
const qwen3 = Tokenizer.fromDir(QWEN3);
/** Qwen3's first added token: every sampled id is below it. */
const QWEN3_ADDED = 151_643;
const IM_END = 151_645;

const chatCase = golden.cases.find((c): c is ChatCase => c.tokenizer === "qwen3" && c.kind === "chat" && c.ids.length >= 48)!;
const textCase = golden.cases.find((c): c is TextCase => c.tokenizer === "qwen3" && c.kind === "text" && c.ids.length >= 32)!;

type Json = Record<string, any>;

async function post(url: string, path: string, body: unknown): Promise<{ status: number; body: Json }> {
  const res = await fetch(url + path, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
  return { status: res.status, body: (await res.json()) as Json };
}

describe("kvroute mock --tokenizer (a real mocker process, Qwen3)", () => {
  let m: MockerProcess;
  beforeAll(async () => {
    m = await startMocker(["Qwen/Qwen3-0.6B", "--port", "0", "--zero-time", "--tokenizer", QWEN3, "--eos-after-tokens", "12"], {
      PYTHONHASHSEED: "0",
    });
  });
  afterAll(() => m?.stop());

  it("reports the tokenizer on its ready line", async () => {
    const models = (await (await fetch(`${m.url}/v1/models`)).json()) as Json;
    expect(models.data[0].id).toBe("Qwen/Qwen3-0.6B");
    expect((m as unknown as Json).tokenizer).toBe(QWEN3);
  });

  it("a chat completion's prompt_token_ids are encodeChat(body), the golden ids; its output decodes to its text", async () => {
    const body = { ...chatCase.request, model: "Qwen/Qwen3-0.6B", max_tokens: 8, return_token_ids: true };
    const res = await post(m.url, "/v1/chat/completions", body);
    expect(res.status).toBe(200);
    expect(res.body.prompt_token_ids).toEqual(Array.from(qwen3.encodeChat(body as never)));
    expect(res.body.prompt_token_ids, chatCase.name).toEqual(chatCase.ids);
    expect(res.body.usage.prompt_tokens).toBe(chatCase.ids.length);
    const out = res.body.choices[0];
    expect(out.token_ids).toHaveLength(8);
    expect(out.token_ids.every((t: number) => Number.isInteger(t) && t >= 0 && t < QWEN3_ADDED)).toBe(true);
    expect(out.message.content).toBe(qwen3.decode(out.token_ids));
    expect(out.message.content).not.toMatch(/\uFFFD/);
  });

  it("a text completion's prompt_token_ids are encode(prompt), the golden ids, and the KV blocks are theirs", async () => {
    const body = { model: "Qwen/Qwen3-0.6B", prompt: textCase.prompt, add_special_tokens: textCase.add_special_tokens, max_tokens: 4, return_token_ids: true };
    const res = await post(m.url, "/v1/completions", body);
    expect(res.status).toBe(200);
    const ids = res.body.choices[0].prompt_token_ids as number[];
    expect(ids).toEqual(Array.from(qwen3.encode(textCase.prompt, { addSpecialTokens: textCase.add_special_tokens })));
    expect(ids, textCase.name).toEqual(textCase.ids);
    expect(res.body.choices[0].text).toBe(qwen3.decode(res.body.choices[0].token_ids));
    // The prompt's full blocks are cached under vLLM's hashes of the real ids.
    const hashes = Array.from(new BlockHasher({ blockSize: 16, algorithm: "sha256", seed: "0" }).hash(ids), (h) => h.toString());
    expect(hashes.length).toBeGreaterThan(0);
    const view = (await (await fetch(`${m.url}/debug/kv-cache`)).json()) as Json;
    for (const h of hashes) expect(view.cachedBlocks).toContain(h);
  });

  it("streams text that is the decoding of the streamed ids, ending with the real EOS (<|im_end|>, not in the text)", async () => {
    const res = await fetch(`${m.url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ messages: [{ role: "user", content: "Count to five." }], stream: true, return_token_ids: true }),
    });
    expect(res.status).toBe(200);
    let text = "";
    const ids: number[] = [];
    let finish: string | null = null;
    for (const frame of (await res.text()).split("\n\n")) {
      if (!frame.startsWith("data: ") || frame === "data: [DONE]") continue;
      const chunk = JSON.parse(frame.slice(6)) as Json;
      for (const c of chunk.choices) {
        text += c.delta?.content ?? "";
        ids.push(...(c.token_ids ?? []));
        finish = c.finish_reason ?? finish;
      }
    }
    expect(finish).toBe("stop");
    expect(ids).toHaveLength(12);
    expect(ids[11]).toBe(IM_END);
    expect(ids.slice(0, 11).every((t) => t < QWEN3_ADDED)).toBe(true);
    expect(text).toBe(qwen3.decode(ids.slice(0, 11)));
  });

  it("answers a request the tokenizer refuses (an image part for a text-only model) with vLLM's 400", async () => {
    const res = await post(m.url, "/v1/chat/completions", {
      messages: [{ role: "user", content: [{ type: "text", text: "what is this?" }, { type: "image_url", image_url: { url: "http://x/y.png" } }] }],
    });
    expect(res.status).toBe(400);
    expect(res.body).toEqual({ error: { message: expect.stringMatching(/image_url/), type: "BadRequestError", param: null, code: 400 } });
    const both = await post(m.url, "/v1/chat/completions", {
      messages: [{ role: "user", content: "x" }],
      add_generation_prompt: true,
      continue_final_message: true,
    });
    expect(both.status).toBe(400);
    expect(both.body.error.message).toMatch(/continue_final_message/);
  });
});

describe("MockServer with a Llama 3.1 tokenizer (in process)", () => {
  let engine: MockEngine;
  let server: MockServer;
  const llama = Tokenizer.fromDir(LLAMA);
  beforeAll(async () => {
    engine = await MockEngine.start({ model: "m", numGpuBlocks: 512, zeroTime: true, tokenizer: llama });
    server = await MockServer.start({ engine, port: 0 });
  });
  afterAll(async () => {
    await server?.close();
    await engine?.close();
  });

  it("adds BOS to text prompts unless add_special_tokens is false; token-id prompts pass unchanged", async () => {
    const prompt = "The quick brown fox";
    const ask = async (extra: Json) =>
      (await post(server.url, "/v1/completions", { model: "m", prompt, max_tokens: 2, return_token_ids: true, ...extra })).body.choices[0];
    expect((await ask({})).prompt_token_ids).toEqual(Array.from(llama.encode(prompt)));
    expect((await ask({})).prompt_token_ids[0]).toBe(128_000);
    expect((await ask({ add_special_tokens: false })).prompt_token_ids).toEqual(Array.from(llama.encode(prompt, { addSpecialTokens: false })));
    const ids = [791, 4062, 14198, 39935];
    const verbatim = await ask({ prompt: ids, echo: true });
    expect(verbatim.prompt_token_ids).toEqual(ids);
    expect(verbatim.text.startsWith(llama.decode(ids))).toBe(true);
    expect(verbatim.token_ids.slice(ids.length).every((t: number) => t < 128_000)).toBe(true);
  });

  it("ignore_eos never produces <|eot_id|> by accident", async () => {
    const res = await post(server.url, "/v1/completions", { model: "m", prompt: "go", max_tokens: 1500, ignore_eos: true, return_token_ids: true });
    const out = res.body.choices[0];
    expect(out.finish_reason).toBe("length");
    expect(out.token_ids.every((t: number) => t < 128_000)).toBe(true);
    expect(out.text).toBe(llama.decode(out.token_ids));
  });
});

describe("--tokenizer on the command line", () => {
  it("a worker's vLLM --tokenizer flag reaches the mocker's engine config", () => {
    const { args } = buildCommandLine({ model: "m", port: 8123, command: mockerCommand(), extraArgs: ["--tokenizer", QWEN3] });
    const parsed = mockConfigFromArgs(args.slice(args.indexOf("mock") + 1));
    expect(parsed.engine.tokenizer).toBe(QWEN3);
    expect(parsed.ignored).not.toContain("--tokenizer");
    expect(mockConfigFromArgs(["m"]).engine.tokenizer).toBeUndefined();
  });

  it("a bad folder: exit 2 with the file named", () => {
    const run = spawnSync(process.execPath, [kvrouteCli, "mock", "m", "--port", "0", "--tokenizer", "/nonexistent/tok"], { encoding: "utf8" });
    expect(run.status).toBe(2);
    expect(run.stderr).toMatch(/\/nonexistent\/tok: not a directory/);
  });
});
