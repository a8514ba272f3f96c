/**
 * Which tokenizer keys a model's text and chat requests. In order: one given in code for that
 * model (or for every model), the model's configured folder (`models[].tokenizer`), a folder a
 * worker record of the model names. Each folder is loaded once. A configured folder that does not
 * load fails the gateway's start; one named by a worker record is logged once and leaves the
 * model untokenized. There is no fallback tokenizer: a model without one has its text and chat
 * requests routed by load (gateway.ts counts them).
 */
import type { TokenizerCacheStats } from "../../index.js";
import { Tokenizer } from "../tokenizer/tokenizer.js";
import type { FleetView, PromptTokenizer } from "./context.js";

export interface ModelTokenizersOptions {
  /** Per model, given in code. */
  byModel?: Readonly<Record<string, PromptTokenizer>>;
  /** For every model without one of its own (library callers, tests). */
  all?: PromptTokenizer;
  /** Model name -> tokenizer folder, from the config. */
  configured: ReadonlyMap<string, string>;
  fleet: FleetView;
  log: (message: string) => void;
}

export class ModelTokenizers {
  private readonly resolved = new Map<string, PromptTokenizer | null>();
  private readonly loaded = new Map<string, Tokenizer | null>();
  private readonly refusalsLogged = new Set<string>();
  /** The tokenizer the last lookup found: the fast path's guess before it knows the model. */
  private last: PromptTokenizer | null = null;

  constructor(private readonly options: ModelTokenizersOptions) {
    // Configured folders load now: a bad one is a configuration error, reported at start.
    for (const dir of options.configured.values()) this.loadDir(dir, true);
  }

  /** The tokenizer of `model`, or null when it has none. */
  for(model: string): PromptTokenizer | null {
    let t = this.resolved.get(model);
    if (t === undefined) {
      t = this.resolve(model);
      this.resolved.set(model, t);
    }
    if (t !== null) this.last = t;
    return t;
  }

  /**
   * The tokenizer most likely to be a request's before its body says the model: the last one
   * found (a gateway with one tokenizer always guesses right; callers check).
   */
  guess(): PromptTokenizer | null {
    return this.last;
  }

  /** Drops resolutions that came from worker records (call on every registry change). */
  invalidate(): void {
    this.resolved.clear();
    this.last = null;
  }

  /** A prompt of `model` its tokenizer refused (routed by load): logged once per model. */
  refused(model: string, err: Error): void {
    if (this.refusalsLogged.has(model)) return;
    this.refusalsLogged.add(model);
    this.options.log(`model ${model}: the tokenizer refused a prompt (${err.message}); such requests are routed by load and the worker answers them (logged once per model)`);
  }

  /** The cache counters of every tokenizer in use that keeps them (for /metrics). */
  cacheStats(): TokenizerCacheStats[] {
    const all = new Set<unknown>([...this.loaded.values(), ...Object.values(this.options.byModel ?? {}), this.options.all]);
    const out: TokenizerCacheStats[] = [];
    for (const t of all) if (t instanceof Tokenizer) out.push(t.cacheStats());
    return out;
  }

  /** Models among `models` that have no tokenizer. */
  missing(models: Iterable<string>): string[] {
    return [...models].filter((m) => this.for(m) === null);
  }

  private resolve(model: string): PromptTokenizer | null {
    const given = this.options.byModel?.[model];
    if (given) return given;
    const configured = this.options.configured.get(model);
    if (configured !== undefined) return this.loadDir(configured, true);
    for (const r of this.options.fleet.of(model).records) {
      if (r.tokenizer) {
        const t = this.loadDir(r.tokenizer, false);
        if (t) return t;
      }
    }
    return this.options.all ?? null;
  }

  private loadDir(dir: string, strict: boolean): Tokenizer | null {
    const known = this.loaded.get(dir);
    if (known !== undefined) return known;
    try {
      const t = Tokenizer.fromDir(dir);
      this.loaded.set(dir, t);
      return t;
    } catch (err) {
      if (strict) throw err;
      this.options.log(`tokenizer folder ${dir} named by a worker record does not load (${(err as Error).message}); its model's text and chat requests are routed by load`);
      this.loaded.set(dir, null);
      return null;
    }
  }
}
