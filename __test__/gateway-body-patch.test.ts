// withFields(): the gateway patches the client's body bytes instead of re-serialising them; the
// result must parse to exactly the merged object, whatever the client's spacing or keys.
import { describe, expect, it } from "vitest";
import { withFields } from "../ts/gateway/exchange.js";
import { mulberry32 } from "../ts/util/prng.js";

const parse = (b: Buffer) => JSON.parse(b.toString("utf8")) as unknown;

describe("withFields", () => {
  it("returns the same bytes when nothing is added", () => {
    const raw = Buffer.from('{"prompt": [1, 2]}');
    expect(withFields(raw, {})).toBe(raw);
  });

  it("adds to an empty object without a stray comma", () => {
    expect(parse(withFields(Buffer.from("{ }\n"), { model: "m" }))).toEqual({ model: "m" });
    expect(parse(withFields(Buffer.from("{}"), { a: 1, b: [2] }))).toEqual({ a: 1, b: [2] });
  });

  it("overrides a field the client sent (the later key wins)", () => {
    const raw = Buffer.from('{"model":null,"return_token_ids":false,"prompt":"x"}');
    expect(parse(withFields(raw, { model: "m", return_token_ids: true }))).toEqual({ model: "m", return_token_ids: true, prompt: "x" });
  });

  it("equals re-serialising the merged object on random bodies and spacing", () => {
    const rand = mulberry32(5);
    const space = () => [" ", "\n", "\t", "\r\n", ""][Math.floor(rand() * 5)]!;
    for (let i = 0; i < 500; i++) {
      const obj: Record<string, unknown> = {};
      const n = Math.floor(rand() * 5);
      for (let k = 0; k < n; k++) obj[`k${Math.floor(rand() * 6)}`] = rand() < 0.5 ? "}\\\"{" : [Math.floor(rand() * 9), { x: null }];
      const raw = Buffer.from(space() + JSON.stringify(obj, null, rand() < 0.5 ? 2 : undefined) + space());
      const fields: Record<string, unknown> = rand() < 0.5 ? { k1: true } : { return_token_ids: true, kv_transfer_params: { do_remote_decode: true } };
      expect(parse(withFields(raw, fields))).toEqual({ ...obj, ...fields });
    }
  });
});
