/**
 * Prompt embeddings (`prompt_embeds` on `/v1/completions`: base64 of the `torch.save` bytes of a
 * 2-D tensor) read and keyed as vLLM does, in Rust: checked without Python (zip + pickle enough
 * for dtype, shape and storage), cast to the model's dtype, and each full block of rows keyed by
 * the sha256 of its bytes (the extra key vLLM hashes that block with; its tokens are all 0).
 * docs/router.md, "Prompt embeddings".
 */
import { callNative, InvalidInputError } from "../errors.js";
import { native } from "../native.js";

/** vLLM's `VLLM_MAX_EMBED_DECODE_BYTES` default. */
export const DEFAULT_MAX_EMBEDS_BYTES = 2 ** 31;
/** The dtype vLLM runs most models in when `--dtype` is auto. */
export const DEFAULT_EMBEDS_DTYPE = "bfloat16";

export interface PromptEmbedsOptions {
  /** The model's dtype (float32, float16, bfloat16). Default bfloat16. */
  dtype?: string;
  blockSize: number;
  /** Most bytes of the tensor as sent. Default 2 GiB (vLLM's). */
  maxBytes?: number;
  /** The model's hidden size, when known. */
  hiddenSize?: number;
}

export interface PromptEmbeds {
  rows: number;
  hidden: number;
  /** torch's name of the dtype it was sent in. */
  sentDtype: string;
  /** Per full block the 32-byte digest vLLM keys it with, concatenated. */
  digests: Buffer;
}

/**
 * Decodes the base64 text a client sent. Throws InvalidInputError with Python's binascii text
 * (what vLLM answers) when it is not base64. Node's decoder skips what is not base64, so the
 * bytes are encoded back and compared (native, faster than a regular expression over megabytes).
 */
export function decodeEmbedsBase64(text: string): Buffer {
  const out = text.length % 4 === 0 ? Buffer.from(text, "base64") : null;
  if (out === null || out.toString("base64") !== text) throw new InvalidInputError("Only base64 data is allowed");
  return out;
}

/** Reads `torch.save` bytes; throws InvalidInputError with vLLM's text for what vLLM refuses. */
export function loadPromptEmbeds(payload: Uint8Array, options: PromptEmbedsOptions): PromptEmbeds {
  return callNative(() =>
    native.loadPromptEmbeds(payload, options.dtype ?? DEFAULT_EMBEDS_DTYPE, options.blockSize, options.maxBytes ?? DEFAULT_MAX_EMBEDS_BYTES, options.hiddenSize ?? null),
  );
}
