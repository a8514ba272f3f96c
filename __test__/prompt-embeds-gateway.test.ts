/**
 * `prompt_embeds` through a real gateway and real mocker processes (started through VllmWorker,
 * KV events over ZMQ): only workers started with `--enable-prompt-embeds` get such requests, and
 * when none can the client gets vLLM's own error as a 400; requests are routed by their embedding
 * blocks (a second request sharing the first blocks lands on the same worker, whose cache holds
 * vLLM's golden block hashes); malformed tensors, wrong dtypes, oversize tensors and bodies get
 * the documented 400 (413 for a body over maxBodyBytes), and the gateway keeps serving.
 */
import { readFileSync } from "node:fs";
import { afterEach, describe, expect, it } from "vitest";
import { startGateway } from "../ts/gateway/index.js";
import { decodeEmbedsBase64, loadPromptEmbeds } from "../ts/index.js";
import { get, MODEL, post, startMockWorker } from "./helpers/gateway-fleet.js";

const golden = JSON.parse(readFileSync(new URL("../fixtures/golden/prompt_embeds.json", import.meta.url), "utf8")) as {
  cases: { name: string; prompt_embeds: string; hashes: Record<string, string[]> }[];
  errors: { name: string; prompt_embeds: string; message: string; str?: string }[];
};
const embeds = (name: string) => golden.cases.find((c) => c.name === name)!;
const error = (name: string) => golden.errors.find((c) => c.name === name)!;

const cleanups: (() => Promise<unknown> | unknown)[] = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

async function until(cond: () => boolean | Promise<boolean>): Promise<void> {
  while (!(await cond())) await new Promise((r) => setTimeout(r, 50));
}

describe("prompt_embeds through the gateway", () => {
  it("routes embeddings to capable workers by their blocks, and refuses bad ones with 400s", async () => {
    const gateway = await startGateway({ host: "127.0.0.1", port: 0, metricsScrapeIntervalMs: 200, promptEmbedsMaxBytes: 16_000, maxBodyBytes: 64 * 1024 }, { log: null });
    cleanups.push(() => gateway.close());
    const plain = await startMockWorker({ id: "plain", numGpuBlocks: 256 }, gateway.registry);
    cleanups.push(() => plain.stop({ graceMs: 1000 }));
    const a = embeds("shared-a");
    const body = (c: { prompt_embeds: string }) => ({ model: MODEL, prompt_embeds: c.prompt_embeds, max_tokens: 2 });

    // No worker was started with --enable-prompt-embeds: vLLM's own error, before any forwarding.
    const none = await post(gateway.url, "/v1/completions", body(a));
    expect(none.status).toBe(400);
    expect(none.json.error.message).toBe(error("not-enabled").str);
    expect(none.json.error.param).toBe("prompt_embeds");
    const plainMetrics = (await get(plain.url, "/metrics")).text;
    expect(plainMetrics).not.toMatch(/vllm:request_success_total\{[^}]*\} [1-9]/);

    const able = await Promise.all(
      ["e0", "e1"].map((id) => startMockWorker({ id, numGpuBlocks: 256, extraArgs: ["--enable-prompt-embeds"] }, gateway.registry)),
    );
    cleanups.push(...able.map((w) => () => w.stop({ graceMs: 1000 })));
    await until(() => gateway.registry.list(MODEL).filter((r) => r.enablePromptEmbeds).length === 2);

    const first = await post(gateway.url, "/v1/completions", body(a));
    expect(first.status).toBe(200);
    const w = first.headers["x-kvroute-worker"] as string;
    expect(["e0", "e1"]).toContain(w);
    // The worker cached vLLM's golden block hashes (sha256, PYTHONHASHSEED=0).
    const url = able.find((x) => x.id === w)!.url;
    const cached = new Set(((await get(url, "/debug/kv-cache")).json.cachedBlocks as string[]).map(String));
    for (const h of a.hashes["sha256"]!) expect(cached.has(h)).toBe(true);
    // Once the worker's events are in, a request sharing the first two blocks goes there too.
    const b = embeds("shared-b");
    const key = loadPromptEmbeds(decodeEmbedsBase64(b.prompt_embeds), { blockSize: 16 });
    await until(() => gateway.router.route({ model: MODEL, tokens: new Uint32Array(key.rows), promptEmbeds: key.digests, dryRun: true }).bestOverlapBlocks >= 2);
    for (let k = 0; k < 3; k++) {
      const second = await post(gateway.url, "/v1/completions", body(b));
      expect(second.status).toBe(200);
      expect(second.headers["x-kvroute-worker"]).toBe(w);
      expect(second.headers["x-kvroute-overlap-blocks"]).not.toBe("0");
    }

    // Bad payloads: 400 with vLLM's text (or this gateway's limits), nothing forwarded.
    for (const name of ["int64", "bool", "one-dim", "not-a-tensor"]) {
      const r = await post(gateway.url, "/v1/completions", body(error(name)));
      expect(r.status, name).toBe(400);
      expect(r.json.error.message, name).toBe(error(name).str);
    }
    for (const name of ["garbage", "truncated", "empty"]) {
      const r = await post(gateway.url, "/v1/completions", body(error(name)));
      expect(r.status, name).toBe(400);
      expect(r.json.error.message, name).toMatch(/^`prompt_embeds` could not be deserialized as a torch tensor: /);
    }
    const b64 = await post(gateway.url, "/v1/completions", body(error("bad-base64")));
    expect([b64.status, b64.json.error.message]).toEqual([400, "Only base64 data is allowed"]);
    const oversize = await post(gateway.url, "/v1/completions", body(embeds("f32-slice-as-bf16")));
    expect(oversize.status).toBe(400);
    expect(oversize.json.error.message).toMatch(/16000 byte/);
    const notString = await post(gateway.url, "/v1/completions", { model: MODEL, prompt_embeds: 42 });
    expect(notString.status).toBe(400);
    const body413 = await post(gateway.url, "/v1/completions", { model: MODEL, prompt_embeds: "A".repeat(70 * 1024) });
    expect(body413.status).toBe(413);

    // Still serving, both kinds of request.
    expect((await post(gateway.url, "/v1/completions", body(a))).status).toBe(200);
    expect((await post(gateway.url, "/v1/completions", { model: MODEL, prompt: [1, 2, 3], max_tokens: 2 })).status).toBe(200);
  }, 90_000);
});
