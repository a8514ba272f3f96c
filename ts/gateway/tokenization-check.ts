/**
 * The request-side tokenization parity check. Workers report the prompt token ids they computed
 * (vLLM's `return_token_ids`); they must equal the ids the router keyed the request with, or the
 * router's blocks never match the worker's. Each compared response is counted per (model, worker);
 * a difference is counted too, and logged once per worker with the first differing position, both
 * ids with their text, and the likely cause.
 */
import type { GatewayMetrics } from "./metrics.js";
import type { PromptTokenizer } from "./context.js";

export interface Mismatch {
  /** Index of the first differing token. */
  position: number;
  ours: number | undefined;
  engine: number | undefined;
  cause: string;
}

/**
 * Each worker's first tokenized requests are all checked, so a worker with the wrong folder or
 * template shows at once; after them one in `every`. Checking costs the worker too: it sends the
 * whole prompt's ids back (60k ids for a 60k-token chat), and the gateway parses them.
 */
export const CHECKS_PER_NEW_WORKER = 8;

/** Bound on the workers remembered for their first checks (a churning fleet must not grow it). */
const MAX_TRACKED_WORKERS = 4096;

export class TokenizationCheck {
  private seen = 0;
  private readonly logged = new Set<string>();
  private readonly firstChecks = new Map<string, number>();

  constructor(
    /** After a worker's first CHECKS_PER_NEW_WORKER, one request in `every` is checked; 0: none. */
    private readonly every: number,
    private readonly metrics: GatewayMetrics,
    private readonly log: (message: string) => void,
  ) {}

  /** Whether the next tokenized request, going to `worker`, is checked. */
  sample(worker: string): boolean {
    if (this.every <= 0) return false;
    const done = this.firstChecks.get(worker) ?? 0;
    if (done < CHECKS_PER_NEW_WORKER) {
      if (this.firstChecks.size >= MAX_TRACKED_WORKERS && done === 0) this.firstChecks.clear();
      this.firstChecks.set(worker, done + 1);
      return true;
    }
    return this.seen++ % this.every === 0;
  }

  /** Compares a worker's prompt ids with the router's; true when they are equal. */
  compare(model: string, worker: string, ours: ArrayLike<number>, engine: readonly number[], tokenizer: PromptTokenizer | null): boolean {
    const mismatch = findMismatch(ours, engine);
    this.metrics.tokenizationChecked(model, worker, mismatch !== null);
    if (!mismatch) return true;
    if (!this.logged.has(worker)) {
      this.logged.add(worker);
      const text = (id: number | undefined) => (id === undefined ? "(end)" : `${id}${tokenizer?.decode ? ` ${JSON.stringify(tokenizer.decode([id]))}` : ""}`);
      this.log(
        `tokenization mismatch on worker ${worker} (model ${model}): prompt ids first differ at token ${mismatch.position} ` +
          `(router ${ours.length} tokens, worker ${engine.length}): router ${text(mismatch.ours)} vs worker ${text(mismatch.engine)}; ` +
          `likely cause: ${mismatch.cause}. Routing for this worker's requests finds no cached prefix until the tokenizers agree ` +
          `(logged once per worker; kvroute_tokenization_mismatch_total counts every one).`,
      );
    }
    return false;
  }
}

/** The first difference between two id sequences and what most likely caused it; null if equal. */
export function findMismatch(ours: ArrayLike<number>, engine: readonly number[]): Mismatch | null {
  const p = commonPrefix(ours, engine, Math.min(ours.length, engine.length));
  if (p === ours.length && p === engine.length) return null;
  return { position: p, ours: p < ours.length ? ours[p] : undefined, engine: p < engine.length ? engine[p] : undefined, cause: likelyCause(ours, engine, p) };
}

/**
 * Length of the common prefix of the first `n` ids. A loop of its own: a 60k-id loop inside
 * findMismatch was compiled on the stack (OSR) on every checked request, then thrown away at the
 * first line after it, which had run too rarely to have type feedback (12 deoptimizations and
 * recompilations in 10 s of 60k-token chats).
 */
function commonPrefix(ours: ArrayLike<number>, engine: readonly number[], n: number): number {
  let p = 0;
  while (p < n && ours[p] === engine[p]) p++;
  return p;
}

function endsWithShifted(longer: ArrayLike<number>, shorter: ArrayLike<number>): boolean {
  const k = longer.length - shorter.length;
  if (k <= 0 || k > 4) return false;
  for (let i = 0; i < shorter.length; i++) if (longer[i + k] !== shorter[i]) return false;
  return true;
}

function likelyCause(ours: ArrayLike<number>, engine: readonly number[], p: number): string {
  if (endsWithShifted(engine, ours)) {
    return `special-token flags: the worker adds ${engine.length - ours.length} token(s) at the start (such as BOS) that the router does not (add_special_tokens, or a template that writes BOS)`;
  }
  if (endsWithShifted(ours, engine)) {
    return `special-token flags: the router adds ${ours.length - engine.length} token(s) at the start (such as BOS) that the worker does not (add_special_tokens, or a template that writes BOS)`;
  }
  if (p === 0) return "a different tokenizer folder: the ids differ from the first token on (another vocabulary or model)";
  if (p === ours.length || p === engine.length) {
    return "the chat template: one prompt is the other's prefix (a generation prompt or thinking markers rendered differently)";
  }
  return `the chat template or tokenizer version: the prompts agree for ${p} tokens, then diverge`;
}
