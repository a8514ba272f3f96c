import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { InvalidInputError, Tokenizer, TokenizerLoadError } from "../ts/index.js";
import { loadTokenizationGolden, repoRoot, tokenizerDir } from "./helpers/tokenization-golden.js";

const golden = loadTokenizationGolden();
const tokenizers = new Map(Object.keys(golden.tokenizers).map((name) => [name, Tokenizer.fromDir(tokenizerDir(golden, name))]));

describe("Tokenizer (vLLM-exact, via N-API)", () => {
  it(`equals vLLM ${golden.generator.vllm}'s ids on every golden case, text and chat, both tokenizers`, () => {
    let checked = 0;
    for (const c of golden.cases) {
      const tk = tokenizers.get(c.tokenizer)!;
      const where = `${c.name} (${c.tokenizer})`;
      if (c.kind === "text") {
        expect(Array.from(tk.encode(c.prompt, { addSpecialTokens: c.add_special_tokens })), where).toEqual(c.ids);
      } else {
        expect(tk.renderChat(c.request as never), where).toBe(c.rendered);
        expect(Array.from(tk.encodeChat(c.request as never)), where).toEqual(c.ids);
        // The body's bytes, as the gateway passes them, give the same ids.
        expect(Array.from(tk.encodeChat(Buffer.from(JSON.stringify(c.request)))), where).toEqual(c.ids);
      }
      checked++;
    }
    expect(checked).toBe(golden.cases.length);
    expect(tokenizers.get("qwen3")!.fastPath && tokenizers.get("llama3_1")!.fastPath).toBe(true);
    // The golden chat cases above went through the hand-written template renderers.
    expect([tokenizers.get("qwen3")!.nativeTemplate, tokenizers.get("llama3_1")!.nativeTemplate]).toEqual(["qwen3", "llama3"]);
  });

  it("equals vLLM on 400 random chat requests (fixtures/golden/tokenization-random.json), refusals included", () => {
    const random = JSON.parse(readFileSync(join(repoRoot, "fixtures/golden/tokenization-random.json"), "utf8")) as {
      cases: { name: string; tokenizer: string; request: Record<string, unknown>; rendered?: string; ids?: number[]; rejected?: string }[];
    };
    expect(random.cases.length).toBeGreaterThanOrEqual(400);
    for (const c of random.cases) {
      const tk = tokenizers.get(c.tokenizer)!;
      if (c.rejected !== undefined) {
        expect(() => tk.encodeChat(c.request as never), c.name).toThrow(InvalidInputError);
      } else {
        expect(Array.from(tk.encodeChat(Buffer.from(JSON.stringify(c.request)))), c.name).toEqual(c.ids);
      }
    }
  });

  it("applyChatTemplate(messages, opts) is encodeChat of the same request", () => {
    const tk = tokenizers.get("qwen3")!;
    const messages = [{ role: "user", content: "hi" }];
    const opts = { chat_template_kwargs: { enable_thinking: false } };
    expect(Array.from(tk.applyChatTemplate(messages, opts))).toEqual(Array.from(tk.encodeChat({ messages, ...opts })));
    expect(tk.decode(tk.applyChatTemplate(messages, opts))).toBe("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n");
  });

  it("a growing conversation hits the segment cache and stays equal to a cold encode", () => {
    const tk = Tokenizer.fromDir(tokenizerDir(golden, "qwen3"));
    const cold = tokenizers.get("qwen3")!;
    const messages: { role: string; content: string }[] = [{ role: "system", content: "You are terse." }];
    for (let turn = 0; turn < 12; turn++) {
      messages.push({ role: "user", content: `question ${turn}: ${"why ".repeat(turn + 1)}?` });
      const warm = Array.from(tk.encodeChat({ messages }));
      cold.clearCache();
      expect(warm).toEqual(Array.from(cold.encodeChat({ messages })));
      messages.push({ role: "assistant", content: `answer ${turn}` });
    }
    expect(tk.cacheStats().hits).toBeGreaterThan(tk.cacheStats().misses);
    // Each turn after the first reused the ids of the turn before (the conversation cache).
    expect(tk.cacheStats().conversationHits).toBe(11);
  });

  it("the conversation cache stays within its bytes, counts what it drops, and stays exact", () => {
    const tiny = Tokenizer.fromDir(tokenizerDir(golden, "qwen3"), { conversationCacheBytes: 600 });
    const off = Tokenizer.fromDir(tokenizerDir(golden, "qwen3"), { conversationCacheBytes: 0 });
    const conversations = [0, 1, 2].map((c) => [{ role: "system", content: `You are assistant ${c}.` }]);
    for (let turn = 0; turn < 6; turn++) {
      for (const [c, messages] of conversations.entries()) {
        messages.push({ role: "user", content: `conversation ${c}, question ${turn}` });
        expect(Array.from(tiny.encodeChat({ messages }))).toEqual(Array.from(off.encodeChat({ messages })));
        messages.push({ role: "assistant", content: `answer ${turn}` });
      }
    }
    const s = tiny.cacheStats();
    expect(s.conversationEvictions).toBeGreaterThan(0);
    expect(s.conversationBytes).toBeLessThanOrEqual(600);
    expect(off.cacheStats().conversationHits).toBe(0);
  });

  it("a request the template refuses, or malformed JSON, is a typed input error", () => {
    const tk = tokenizers.get("qwen3")!;
    expect(() => tk.encodeChat("{not json")).toThrow(InvalidInputError);
    expect(() => tk.encodeChat({ messages: [{ role: "user", content: [{ type: "image_url", image_url: { url: "x" } }] }] })).toThrow(
      /image_url/,
    );
    expect(() => tk.encodeChat({ messages: [{ role: "user", content: "x" }], add_generation_prompt: true, continue_final_message: true })).toThrow(
      InvalidInputError,
    );
  });
});

describe("Tokenizer.fromDir with a bad folder", () => {
  const scratch = mkdtempSync(join(tmpdir(), "kvroute-tok-"));
  afterAll(() => rmSync(scratch, { recursive: true, force: true }));

  function folder(name: string, edit: (dir: string) => void): string {
    const dir = join(scratch, name);
    cpSync(tokenizerDir(golden, "llama3_1"), dir, { recursive: true });
    edit(dir);
    return dir;
  }

  const loadError = (dir: string): TokenizerLoadError => {
    try {
      Tokenizer.fromDir(dir);
    } catch (err) {
      expect(err).toBeInstanceOf(TokenizerLoadError);
      expect((err as TokenizerLoadError).code).toBe("KVR_TOKENIZER_LOAD");
      return err as TokenizerLoadError;
    }
    throw new Error(`${dir} loaded`);
  };

  it("names the missing folder or tokenizer.json", () => {
    expect(loadError(join(scratch, "nope")).message).toMatch(/nope: not a directory/);
    const dir = folder("no-tokenizer-json", (d) => rmSync(join(d, "tokenizer.json")));
    expect(loadError(dir).message).toMatch(/tokenizer\.json: missing/);
  });

  it("names a file that is not JSON, or not a tokenizer", () => {
    const badConfig = folder("bad-config", (d) => writeFileSync(join(d, "tokenizer_config.json"), "{ oops"));
    expect(loadError(badConfig).message).toMatch(/tokenizer_config\.json: not valid JSON/);
    const badTok = folder("bad-tokenizer", (d) => writeFileSync(join(d, "tokenizer.json"), '{"model": {"type": "Nope"}}'));
    expect(loadError(badTok).message).toMatch(/tokenizer\.json: /);
  });

  it("names the template file and the line of a template that does not compile", () => {
    const dir = folder("bad-template", (d) => writeFileSync(join(d, "chat_template.jinja"), "{% for m in messages %}\n{{ m.content }\n"));
    expect(loadError(dir).message).toMatch(/chat_template\.jinja: chat template: .*line 2/);
    const badList = folder("bad-template-list", (d) =>
      writeFileSync(join(d, "tokenizer_config.json"), JSON.stringify({ chat_template: [{ nom: "default" }] })),
    );
    expect(loadError(badList).message).toMatch(/tokenizer_config\.json: chat_template entries/);
  });
});
