// The streaming fast path must agree with a full parse on every event it accepts, and refuse
// (null) every event it cannot be sure of.
import { describe, expect, it } from "vitest";
import { scanTokenEvent } from "../ts/gateway/sse-scan.js";
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
