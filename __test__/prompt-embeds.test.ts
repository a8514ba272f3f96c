/**
 * Prompt embeddings through N-API and the mocker, against fixtures/golden/prompt_embeds.json
 * (vLLM's own `safe_load_prompt_embeds` and block hashing over `torch.save` payloads): the
 * payloads read and digested per block, block hashes in every algorithm, vLLM's error texts, and
 * a mocker started with `--enable-prompt-embeds` caching such a prompt under vLLM's hashes, with
 * the digests in its KV events.
 */
import { readFileSync } from "node:fs";
import { afterEach, describe, expect, it } from "vitest";
import { BlockHasher, decodeEmbedsBase64, loadPromptEmbeds } from "../ts/index.js";
import { decodeKvEventBatch, type DecodedKvEventBatch } from "../ts/events/codec.js";
import { MockEngine } from "../ts/mocker/index.js";

interface Case {
  name: string;
  prompt_embeds: string;
  model_dtype: string;
  block_size: number;
  loaded_shape: [number, number];
  block_digests: string[];
  hashes: Record<string, string[]>;
  cache_salt: string | null;
  event_extra_keys: string[][];
}
interface ErrorCase {
  name: string;
  prompt_embeds: string;
  model_dtype: string;
  message: string;
}
const golden = JSON.parse(readFileSync(new URL("../fixtures/golden/prompt_embeds.json", import.meta.url), "utf8")) as {
  vllm_version: string;
  cases: Case[];
  errors: ErrorCase[];
};

const engines: MockEngine[] = [];
afterEach(async () => {
  await Promise.all(engines.splice(0).map((e) => e.close()));
});

describe("prompt embeddings (N-API) equal vLLM's", () => {
  it("reads every payload and digests its blocks as vLLM", () => {
    expect(golden.cases.length).toBeGreaterThanOrEqual(15);
    for (const c of golden.cases) {
      const e = loadPromptEmbeds(decodeEmbedsBase64(c.prompt_embeds), { dtype: c.model_dtype, blockSize: c.block_size, hiddenSize: 64 });
      expect([e.rows, e.hidden], c.name).toEqual(c.loaded_shape);
      const full = c.block_digests.map((d) => d);
      expect(e.digests.subarray(0, 32 * full.length).toString("hex"), c.name).toBe(full.join(""));
    }
  });

  it("hashes blocks of 0-token prompts with the digests as vLLM in every algorithm", () => {
    let checked = 0;
    for (const c of golden.cases) {
      const e = loadPromptEmbeds(decodeEmbedsBase64(c.prompt_embeds), { dtype: c.model_dtype, blockSize: c.block_size });
      for (const [key, want] of Object.entries(c.hashes)) {
        const [algorithm, salted] = key.split("+");
        const h = new BlockHasher({ blockSize: c.block_size, algorithm: algorithm as never, seed: "0" });
        const extra = { promptEmbeds: e.digests, ...(salted ? { cacheSalt: c.cache_salt! } : {}) };
        expect(Array.from(h.hash(new Uint32Array(e.rows), extra), String), `${c.name} ${key}`).toEqual(want);
        checked++;
      }
    }
    expect(checked).toBeGreaterThanOrEqual(60);
  });

  it("refuses what vLLM refuses, with vLLM's text", () => {
    for (const e of golden.errors) {
      if (e.name === "not-enabled") continue;
      const run = () => loadPromptEmbeds(decodeEmbedsBase64(e.prompt_embeds), { dtype: e.model_dtype, blockSize: 16, hiddenSize: 64 });
      if (e.message.startsWith("`prompt_embeds` could not be deserialized as a torch tensor: ")) {
        expect(run, e.name).toThrow(/^`prompt_embeds` could not be deserialized as a torch tensor: ./);
      } else expect(run, e.name).toThrow(e.message);
    }
    // A size limit below the tensor: refused before it is read.
    const big = golden.cases.find((c) => c.name === "f32-40-as-bf16")!;
    expect(() => loadPromptEmbeds(decodeEmbedsBase64(big.prompt_embeds), { blockSize: 16, maxBytes: 1000 })).toThrow(/exceeding the 1000 byte limit/);
  });
});

describe("mocker with --enable-prompt-embeds", () => {
  async function engine(enablePromptEmbeds: boolean) {
    const batches: DecodedKvEventBatch[] = [];
    const e = await MockEngine.start({
      model: "mock-8b",
      numGpuBlocks: 256,
      zeroTime: true,
      hashSeed: "0",
      enablePromptEmbeds,
      kvEventsConfig: { enableKvCacheEvents: true },
      eventPublisherFactory: () => ({ publish: (p: Buffer) => BigInt(batches.push(decodeKvEventBatch(p)) - 1), close: () => {} }),
    });
    engines.push(e);
    return { e, batches };
  }

  it("caches the prompt under vLLM's block hashes, with the digests as the blocks' last extra keys", async () => {
    const { e, batches } = await engine(true);
    const c = golden.cases.find((x) => x.name === "shared-a")!;
    const p = loadPromptEmbeds(decodeEmbedsBase64(c.prompt_embeds), { dtype: "bfloat16", blockSize: 16 });
    await e.generate({ promptTokenIds: new Uint32Array(p.rows), promptEmbeds: p.digests, maxTokens: 1 }).result;
    const stored = batches.flatMap((b) => b.events).filter((ev) => ev.type === "BlockStored");
    const hashes = stored.flatMap((ev) => (ev.type === "BlockStored" ? ev.blockHashes.map(String) : []));
    expect(hashes.slice(0, 3)).toEqual(c.hashes["sha256"]);
    const keys = stored.flatMap((ev) => (ev.type === "BlockStored" ? (ev.extraKeys ?? []) : []));
    expect(keys.slice(0, 3).map((k) => Buffer.from(k![0] as Uint8Array).toString("hex"))).toEqual(c.event_extra_keys.map((k) => k[0]));
    // A second request sharing the first two blocks hits them.
    const b = golden.cases.find((x) => x.name === "shared-b")!;
    const q = loadPromptEmbeds(decodeEmbedsBase64(b.prompt_embeds), { dtype: "bfloat16", blockSize: 16 });
    const r = await e.generate({ promptTokenIds: new Uint32Array(q.rows), promptEmbeds: q.digests, maxTokens: 1 }).result;
    expect(r.numCachedTokens).toBe(32);
  });
});
