/**
 * `kvroute tokenize --tokenizer DIR`: token ids exactly as vLLM 0.33 computes them for a model
 * folder. Reads JSON lines on stdin, each a text prompt `{"prompt": "...", "add_special_tokens"?:
 * bool}` (as `/v1/completions`) or a chat request `{"messages": [...], ...}` (as
 * `/v1/chat/completions`), and writes one `{"ids": [...]}` line per input. Output is buffered and
 * written only when every line succeeded, so a bad line leaves stdout empty.
 */
import { KvrouteError, TokenizerLoadError } from "../errors.js";
import { Tokenizer } from "../tokenizer/tokenizer.js";
import { parseCommandArgs, UsageError } from "./args.js";
import { mapStdinLines, parseObjectLine } from "./json-lines.js";

const HELP = `Usage: kvroute tokenize --tokenizer DIR

Reads JSON lines on stdin and writes one JSON line {"ids":[...]} per input, the token ids vLLM 0.33
computes with the Hugging Face tokenizer folder DIR (tokenizer.json, tokenizer_config.json, ...):

  {"prompt":"...","add_special_tokens"?:bool}   text, as /v1/completions (special tokens added
                                                unless "add_special_tokens": false)
  {"messages":[...], ...}                       a chat request body, as /v1/chat/completions
                                                (add_generation_prompt, tools, documents,
                                                chat_template_kwargs, add_special_tokens, ...)

  --tokenizer DIR   the model's tokenizer folder (required)

Exit codes: 0 ok, 2 bad usage, a bad tokenizer folder or bad input (the message names the line).`;

/** Tokenizes one input line; throws with a message that says what is wrong with it. */
function tokenizeLine(tokenizer: Tokenizer, text: string): Uint32Array {
  const obj = parseObjectLine(text, "a JSON object with 'prompt' (text) or 'messages' (a chat request)");
  const hasPrompt = obj["prompt"] !== undefined;
  const hasMessages = obj["messages"] !== undefined;
  if (hasPrompt && hasMessages) throw new Error("a line has 'prompt' or 'messages', not both");
  if (hasMessages) {
    // The line is the request's JSON already: no second serialisation.
    return tokenizer.encodeChat(text);
  }
  if (!hasPrompt) throw new Error("expected 'prompt' (text) or 'messages' (a chat request)");
  const prompt = obj["prompt"];
  if (typeof prompt !== "string") throw new Error("'prompt' must be a string");
  // vLLM answers 400 for an empty prompt rather than tokenizing it.
  if (prompt === "") throw new Error("'prompt' is empty (vLLM rejects an empty prompt)");
  const special = obj["add_special_tokens"];
  if (special !== undefined && special !== null && typeof special !== "boolean") throw new Error("'add_special_tokens' must be a boolean");
  return tokenizer.encode(prompt, { addSpecialTokens: special ?? true });
}

export async function runTokenize(argv: string[]): Promise<number> {
  let tokenizer: Tokenizer;
  try {
    const { values } = parseCommandArgs(argv, {
      tokenizer: { type: "string" },
      help: { type: "boolean", short: "h" },
    });
    if (values.help) {
      console.log(HELP);
      return 0;
    }
    if (values.tokenizer === undefined) throw new UsageError("--tokenizer is required");
    tokenizer = Tokenizer.fromDir(values.tokenizer);
  } catch (err) {
    if (err instanceof TokenizerLoadError) {
      console.error(`kvroute tokenize: ${err.message}`);
      return 2;
    }
    if (err instanceof UsageError || err instanceof KvrouteError) {
      console.error(`kvroute tokenize: ${err.message}\n\n${HELP}`);
      return 2;
    }
    throw err;
  }

  return mapStdinLines("kvroute tokenize", (text) => `{"ids":[${tokenizeLine(tokenizer, text).join(",")}]}`);
}
