/**
 * `prompt_embeds` on `/v1/completions` (vLLM's: base64 of the `torch.save` bytes of a 2-D tensor):
 * validated here without Python (`loadPromptEmbeds`), sent only to workers started with
 * `--enable-prompt-embeds` (their records say so), and routed KV-aware by the blocks' embedding
 * digests, the extra keys vLLM hashes them with. Every refusal is a 400 before any worker sees
 * the request (docs/gateway.md, "Prompt embeddings").
 */
import { decodeEmbedsBase64, DEFAULT_EMBEDS_DTYPE, loadPromptEmbeds } from "../core/prompt-embeds.js";
import { KvrouteError } from "../errors.js";
import type { WorkerTarget } from "../router/types.js";
import type { GatewayContext } from "./context.js";
import { BadRequestError } from "./errors.js";
import type { PromptKey } from "./gateway.js";

/** vLLM's answer when the engine was started without the flag. */
export const PROMPT_EMBEDS_DISABLED = "You must set `--enable-prompt-embeds` to input `prompt_embeds`. (parameter=prompt_embeds)";

/** A completion whose prompt is its embeddings (no text or token prompt). */
export function hasPromptEmbeds(body: Record<string, unknown>): boolean {
  const p = body["prompt"];
  const e = body["prompt_embeds"];
  return (p === undefined || p === null || p === "" || (Array.isArray(p) && p.length === 0)) && e !== undefined && e !== null;
}

/**
 * The request's routing key: 0s as its tokens (one per row, as vLLM), the per-block digests, and
 * the serving workers that cannot take embeddings (excluded). Throws BadRequestError (400).
 */
export function embedsKey(ctx: GatewayContext, model: string, body: Record<string, unknown>): PromptKey {
  const raw = body["prompt_embeds"];
  const list = Array.isArray(raw) ? raw : [raw];
  if (list.length === 0 || list.some((x) => typeof x !== "string")) {
    throw new BadRequestError("`prompt_embeds` must be a base64 string (or a list of them) of torch.save bytes", "prompt_embeds");
  }
  const fleet = ctx.fleet.of(model);
  const able = fleet.records.filter((r) => r.enablePromptEmbeds === true);
  const ableIds = new Set(able.map((r) => r.id));
  if (!fleet.serving.some((t) => ableIds.has(t.workerId))) throw new BadRequestError(PROMPT_EMBEDS_DISABLED, "prompt_embeds");
  const exclude: WorkerTarget[] = fleet.serving.filter((t) => !ableIds.has(t.workerId));
  const first = able[0]!;
  const limit = ctx.config.promptEmbedsMaxBytes;
  let rows = 0;
  let digests: Buffer | null = null;
  for (const text of list as string[]) {
    // base64 is 4/3 of the bytes: refuse before decoding what cannot fit.
    if (Math.floor((text.length * 3) / 4) > limit + 2) {
      throw new BadRequestError(`\`prompt_embeds\` is about ${Math.floor((text.length * 3) / 4)} bytes, over this gateway's limit of ${limit} bytes (promptEmbedsMaxBytes).`, "prompt_embeds");
    }
    try {
      const e = loadPromptEmbeds(decodeEmbedsBase64(text), { dtype: first.dtype ?? DEFAULT_EMBEDS_DTYPE, blockSize: first.blockSize, maxBytes: limit });
      // The first prompt keys the request (a batch is routed by its first prompt).
      if (digests === null) {
        rows = e.rows;
        digests = e.digests;
      }
    } catch (err) {
      if (err instanceof KvrouteError && err.code === "KVR_INVALID_INPUT") {
        // As vLLM words it: a VLLMValidationError names its parameter; binascii's error does not.
        throw new BadRequestError(err.message === "Only base64 data is allowed" ? err.message : `${err.message} (parameter=prompt_embeds)`, "prompt_embeds");
      }
      throw err;
    }
  }
  return { tokens: new Uint32Array(rows), tokenizer: null, untokenized: false, promptEmbeds: digests!, exclude };
}
