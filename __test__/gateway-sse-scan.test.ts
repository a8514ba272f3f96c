// The streaming fast path must agree with a full parse on every event it accepts, and refuse
// (null) every event it cannot be sure of.
import { describe, expect, it } from "vitest";
import { scanTextEvent, scanTokenEvent } from "../ts/gateway/sse-scan.js";
import { mulberry32 } from "../ts/util/prng.js";

type Chunk = { choices: { index: number; text?: string; delta?: { content?: string }; token_ids?: number[] | null }[] } & Record<string, unknown>;

/** What the full parse path sends for a chunk: ids nulled unless kept. */
function slow(data: string, strip: boolean): { data: string; ids: number[] } {
  const obj = JSON.parse(data) as Chunk;
  const ids = obj.choices[0]!.token_ids ?? [];
  if (strip) for (const c of obj.choices) if (c.token_ids !== undefined) c.token_ids = null;
  return { data: JSON.stringify(obj), ids };
}

describe("scanTokenEvent", () => {
  it("agrees with a full parse on token events, whatever their text holds", () => {
    const rand = mulberry32(3);
    const nasty = ['"token_ids":[1,2]', '\\"', "}", ',"token_ids":[9]', "\\", "data: ", "\n", "é🙂", '"error"x'];
    for (let i = 0; i < 2000; i++) {
      const text = Array.from({ length: 1 + Math.floor(rand() * 3) }, () => nasty[Math.floor(rand() * nasty.length)]!).join("");
      const ids = Array.from({ length: 1 + Math.floor(rand() * 3) }, () => Math.floor(rand() * 150_000));
      const chat = rand() < 0.5;
      const choice = chat ? { index: 0, delta: { content: text }, logprobs: null, finish_reason: null, token_ids: ids } : { index: 0, text, logprobs: null, finish_reason: null, stop_reason: null, token_ids: ids, prompt_token_ids: null };
      const data = JSON.stringify({ id: "cmpl-1", object: chat ? "chat.completion.chunk" : "text_completion", created: 1, model: "m", choices: [choice] });
      for (const strip of [true, false]) {
        const fast = scanTokenEvent(data, strip);
        if (fast === null) {
          // Only an event whose text looks like a marker may be refused.
          expect(text).toMatch(/"error"|token_ids/);
          continue;
        }
        const want = slow(data, strip);
        expect(fast.tokenIds).toEqual(want.ids);
        expect(JSON.parse(fast.data)).toEqual(JSON.parse(want.data));
      }
    }
  });

  it("refuses what needs the full parse", () => {
    expect(scanTokenEvent("[DONE]", true)).toBeNull();
    expect(scanTokenEvent('{"error":{"message":"x"}}', true)).toBeNull();
    expect(scanTokenEvent('{"choices":[{"index":0,"delta":{"role":"assistant","content":""},"token_ids":[]}]}', true)).toBeNull();
    expect(scanTokenEvent('{"choices":[{"index":0,"text":"","finish_reason":"abort","token_ids":[1]}]}', true)).toBeNull();
    expect(scanTokenEvent('{"choices":[{"index":0,"text":"a","prompt_token_ids":[1,2],"token_ids":[3]}]}', true)).toBeNull();
    expect(scanTokenEvent('{"choices":[{"index":0,"text":"a","token_ids":[3]},{"index":1,"text":"b","token_ids":[4]}]}', true)).toBeNull();
    expect(scanTokenEvent('{"choices":[{"index":0,"text":"a","token_ids":null}]}', true)).toBeNull();
    expect(scanTokenEvent('{"choices":[],"usage":{"prompt_tokens":3}}', true)).toBeNull();
  });
});

/** Tokens the full parse counts for an event without ids (stream-continuation.ts's noteChunk). */
function slowCount(data: string): number {
  const obj = JSON.parse(data) as Chunk;
  let n = 0;
  for (const c of obj.choices) {
    if (Array.isArray(c.token_ids)) n += c.token_ids.length;
    else if ((typeof c.text === "string" && c.text.length > 0) || (typeof c.delta?.content === "string" && c.delta.content.length > 0)) n += 1;
  }
  return n;
}

describe("scanTextEvent", () => {
  it("counts what a full parse counts on events without ids, whatever their text holds", () => {
    const rand = mulberry32(5);
    const nasty = ['"text":"x"', ',"index":1', '\\"', "}", '{"content":', "\\", "", "é🙂", '"error"x', ',"text":""'];
    let accepted = 0;
    for (let i = 0; i < 4000; i++) {
      const text = Array.from({ length: Math.floor(rand() * 3) }, () => nasty[Math.floor(rand() * nasty.length)]!).join("");
      const chat = rand() < 0.5;
      const shape = Math.floor(rand() * 6);
      let choice: Record<string, unknown>;
      if (chat) {
        const delta: Record<string, unknown> = shape === 0 ? { content: null } : shape === 1 ? { reasoning_content: text } : shape === 2 ? { tool_calls: [{ index: 0, function: { arguments: text } }] } : { content: text };
        choice = { index: 0, delta, logprobs: shape === 3 ? { content: [{ token: text, logprob: -1 }] } : null, finish_reason: shape === 4 ? "stop" : null };
      } else {
        choice = { index: 0, text, logprobs: shape === 3 ? { tokens: [text], text_offset: [0] } : null, finish_reason: shape === 4 ? "length" : null, stop_reason: null };
      }
      // vLLM 0.33 spells out the ids it was not asked for as nulls.
      if (rand() < 0.5) Object.assign(choice, { prompt_token_ids: null, token_ids: null });
      const choices = shape === 5 ? [choice, { ...choice, index: 1 }] : [choice];
      const data = JSON.stringify({ id: "cmpl-1", object: chat ? "chat.completion.chunk" : "text_completion", created: 1, model: "m", choices });
      const fast = scanTextEvent(data);
      if (fast === null) continue; // the full parse takes it: only time is lost
      accepted++;
      expect(fast, data).toBe(slowCount(data));
    }
    expect(accepted).toBeGreaterThan(1000); // the fast path does take the plain token events
  });

  it("refuses what needs the full parse", () => {
    expect(scanTextEvent("[DONE]")).toBeNull();
    expect(scanTextEvent('{"error":{"message":"x"}}')).toBeNull();
    expect(scanTextEvent('{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}')).toBeNull();
    expect(scanTextEvent('{"choices":[{"index":0,"text":"","finish_reason":"abort"}]}')).toBeNull();
    expect(scanTextEvent('{"choices":[{"index":0,"text":"a","token_ids":[3]}]}')).toBeNull();
    expect(scanTextEvent('{"choices":[{"index":0,"text":"a"},{"index":1,"text":"b"}]}')).toBeNull();
    expect(scanTextEvent('{"choices":[{"index":0,"text":"a","logprobs":{"tokens":["a"]}}]}')).toBeNull();
    expect(scanTextEvent('{"choices":[],"usage":{"prompt_tokens":3}}')).toBeNull();
    expect(scanTextEvent('{"choices":[{"index":0,"text":"a"}]}')).toBe(1);
    expect(scanTextEvent('{"choices":[{"index":0,"text":" tadohu","logprobs":null,"finish_reason":null,"stop_reason":null,"prompt_token_ids":null,"token_ids":null,"weight_versions":null}],"kv_transfer_params":null}')).toBe(1);
    expect(scanTextEvent('{"choices":[{"index":0,"delta":{"content":" gatiko"},"logprobs":null,"finish_reason":null,"token_ids":null}],"kv_transfer_params":null}')).toBe(1);
    expect(scanTextEvent('{"choices":[{"index":0,"text":"","finish_reason":"stop"}]}')).toBe(0);
  });
});
