/**
 * `prompt_embeds` on the mocker's `/v1/completions`, as vLLM 0.33 takes them
 * (`--enable-prompt-embeds`; vllm/renderers/embed_utils.py): each base64 `torch.save` tensor is
 * read and cast to the engine's `--dtype` (`loadPromptEmbeds`, Rust), its prompt is that many 0
 * tokens (vLLM's placeholder ids), and each full block is hashed with the sha256 of its rows as
 * its last extra key, in the blocks' hashes and in their KV events.
 */
import { decodeEmbedsBase64, DEFAULT_EMBEDS_DTYPE, DEFAULT_MAX_EMBEDS_BYTES, loadPromptEmbeds } from "../core/prompt-embeds.js";
import { InvalidInputError } from "../errors.js";
import { servingError, vllmValidationMessage, type HttpError } from "./openai-protocol.js";

export const PROMPT_EMBEDS_DISABLED = "You must set `--enable-prompt-embeds` to input `prompt_embeds`.";

export interface EmbedsPrompts {
  /** Per prompt: its placeholder tokens (0s, one per row). */
  prompts: Uint32Array[];
  /** Per prompt: its blocks' digests, concatenated. */
  digests: Buffer[];
}

/** A completion whose prompt is given as embeddings only. */
export function wantsPromptEmbeds(body: Record<string, unknown>): boolean {
  const p = body["prompt"];
  const e = body["prompt_embeds"];
  return (p === undefined || p === null || p === "") && e !== undefined && e !== null && !(Array.isArray(e) && e.length === 0);
}

/** vLLM's 400: a `VLLMValidationError` says its parameter; binascii's base64 error does not. */
function badRequest(message: string): HttpError {
  const full = message === "Only base64 data is allowed" ? message : vllmValidationMessage(message, "prompt_embeds");
  return servingError(400, "BadRequestError", full, "prompt_embeds");
}

/** Reads the request's embeddings; throws vLLM's 400 for what vLLM refuses. */
export function embedsPrompts(body: Record<string, unknown>, o: { enabled: boolean; dtype?: string; blockSize: number }): EmbedsPrompts {
  if (!o.enabled) throw badRequest(PROMPT_EMBEDS_DISABLED);
  const raw = body["prompt_embeds"];
  const list = Array.isArray(raw) ? raw : [raw];
  const out: EmbedsPrompts = { prompts: [], digests: [] };
  for (const text of list) {
    if (typeof text !== "string") throw badRequest("prompt_embeds must be base64-encoded torch.save bytes");
    try {
      const e = loadPromptEmbeds(decodeEmbedsBase64(text), { dtype: o.dtype ?? DEFAULT_EMBEDS_DTYPE, blockSize: o.blockSize, maxBytes: DEFAULT_MAX_EMBEDS_BYTES });
      out.prompts.push(new Uint32Array(e.rows));
      out.digests.push(e.digests);
    } catch (err) {
      if (err instanceof InvalidInputError) throw badRequest(err.message);
      throw err;
    }
  }
  return out;
}

/** sha256 of no bytes: vLLM's digest of the (empty) embeddings of a block past the prompt. */
const EMPTY_DIGEST = Buffer.from("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "hex");

/** Block `i`'s digest in an event's extra keys (see `loadPromptEmbeds`: full blocks, then the partial one). */
export function embedsDigest(digests: Buffer, i: number): Uint8Array {
  return 32 * (i + 1) <= digests.length ? digests.subarray(32 * i, 32 * (i + 1)) : EMPTY_DIGEST;
}
