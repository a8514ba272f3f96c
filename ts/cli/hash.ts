/**
 * `kvroute hash`: block hashes of token sequences. Reads JSON lines
 * `{"tokens":[...],"lora_name"?:...,"cache_salt"?:...}` on stdin and writes one JSON line per
 * input: `{"hashes":["<u64 decimal>",...]}` plus `"digests":["<hex>",...]` with --digest.
 * All input is validated before anything is written, so a bad line leaves stdout empty.
 */
import { BlockHasher, ENGINE_HASH_ALGORITHMS, type ExtraKeys, type HashAlgorithm } from "../core/block-hasher.js";
import { KvrouteError } from "../errors.js";
import { parseCommandArgs, positiveInt, UsageError } from "./args.js";
import { mapStdinLines, parseObjectLine } from "./json-lines.js";

const HELP = `Usage: kvroute hash [--algorithm A] [--seed S] [--block-size N] [--digest]

Reads JSON lines {"tokens":[...],"lora_name"?:"...","lora_path"?:"...","cache_salt"?:"..."} on
stdin (vLLM >= 0.33 hashes a LoRA's path with its name) and writes one JSON line per input with the 64-bit block hashes as decimal strings (and hex digests with --digest).
A line may also set "algorithm", "block_size" and "seed" (a string, or null for unset) for itself,
overriding the options: many settings in one run.

  --algorithm A   router | ${ENGINE_HASH_ALGORITHMS.join(" | ")}   (default sha256, vLLM's default)
  --seed S        the engine's PYTHONHASHSEED (default: $PYTHONHASHSEED, else unset)
  --block-size N  tokens per block (default 16, vLLM's default)
  --digest        also print the full digests in hex

Exit codes: 0 ok, 2 bad usage or bad input (the message names the line).`;

const ALGORITHMS: readonly string[] = ["router", ...ENGINE_HASH_ALGORITHMS];

interface HashRequest {
  tokens: number[];
  extra: ExtraKeys;
  /** Per-line settings (absent: the options'). */
  algorithm?: string;
  blockSize?: number;
  seed?: string | null;
}

const FIELDS = ["tokens", "lora_name", "lora_path", "cache_salt", "algorithm", "block_size", "seed"];

/** Parses and validates one input line; throws with a message that names what is wrong. */
function parseLine(text: string): HashRequest {
  const obj = parseObjectLine(text, "a JSON object with a 'tokens' array");
  const tokens = obj["tokens"];
  if (!Array.isArray(tokens)) throw new Error("'tokens' must be an array of token ids");
  tokens.forEach((t, i) => {
    if (typeof t !== "number" || !Number.isInteger(t) || t < 0 || t > 0xffff_ffff) {
      throw new Error(`'tokens[${i}]' must be an integer in [0, 2^32): got ${JSON.stringify(t)}`);
    }
  });
  const extra: ExtraKeys = {};
  for (const [field, key] of [
    ["lora_name", "loraName"],
    ["lora_path", "loraPath"],
    ["cache_salt", "cacheSalt"],
  ] as const) {
    const v = obj[field];
    if (v === undefined || v === null) continue;
    if (typeof v !== "string") throw new Error(`'${field}' must be a string`);
    extra[key] = v;
  }
  for (const field of Object.keys(obj)) {
    if (!FIELDS.includes(field)) throw new Error(`unknown field '${field}'`);
  }
  const request: HashRequest = { tokens: tokens as number[], extra };
  const { algorithm, block_size: blockSize, seed } = obj;
  if (algorithm !== undefined) {
    if (typeof algorithm !== "string" || !ALGORITHMS.includes(algorithm)) throw new Error(`'algorithm' must be one of ${ALGORITHMS.join(", ")}`);
    request.algorithm = algorithm;
  }
  if (blockSize !== undefined) {
    if (typeof blockSize !== "number" || !Number.isInteger(blockSize) || blockSize < 1) throw new Error("'block_size' must be a positive integer");
    request.blockSize = blockSize;
  }
  if (seed !== undefined) {
    if (seed !== null && typeof seed !== "string") throw new Error("'seed' must be a string or null (unset)");
    request.seed = seed;
  }
  return request;
}

export async function runHash(argv: string[]): Promise<number> {
  try {
    const { values } = parseCommandArgs(argv, {
      algorithm: { type: "string" },
      seed: { type: "string" },
      "block-size": { type: "string" },
      digest: { type: "boolean" },
      help: { type: "boolean", short: "h" },
    });
    if (values.help) {
      console.log(HELP);
      return 0;
    }
    const algorithm = values.algorithm ?? "sha256";
    if (!ALGORITHMS.includes(algorithm)) {
      throw new UsageError(`--algorithm must be one of ${ALGORITHMS.join(", ")}: got '${algorithm}'`);
    }
    const defaults = {
      blockSize: positiveInt("block-size", values["block-size"], 16),
      algorithm,
      seed: values.seed ?? process.env["PYTHONHASHSEED"] ?? null,
    };
    // One hasher per setting seen (lines may choose their own).
    const hashers = new Map<string, BlockHasher>();
    const hasherFor = (r: HashRequest): BlockHasher => {
      const blockSize = r.blockSize ?? defaults.blockSize;
      const algo = (r.algorithm ?? defaults.algorithm) as HashAlgorithm;
      const seed = r.seed === undefined ? defaults.seed : r.seed;
      const key = JSON.stringify([blockSize, algo, seed]);
      let h = hashers.get(key);
      if (!h) hashers.set(key, (h = new BlockHasher({ blockSize, algorithm: algo, seed: seed ?? undefined })));
      return h;
    };

    return await mapStdinLines("kvroute hash", (text) => {
      const request = parseLine(text);
      const hasher = hasherFor(request);
      const record: { hashes: string[]; digests?: string[] } = {
        hashes: Array.from(hasher.hash(request.tokens, request.extra), (h) => h.toString()),
      };
      if (values.digest) record.digests = hasher.digests(request.tokens, request.extra).map((d) => d.toString("hex"));
      return JSON.stringify(record);
    });
  } catch (err) {
    if (err instanceof UsageError || err instanceof KvrouteError) {
      console.error(`kvroute hash: ${err.message}\n\n${HELP}`);
      return 2;
    }
    throw err;
  }
}
