/**
 * Conditional disaggregation: whether a request's prefill runs on a prefill worker (remote, then
 * the decode worker pulls the KV over NIXL) or on its decode worker (local). Pure: the exchange
 * supplies the exact uncached tokens (from the indexer's overlap on the chosen decode worker) and
 * the loads (requests this gateway has in flight), and gets a path with the reason, which is
 * counted in `kvroute_disagg_decisions_total{path,reason}` and shown by explain.
 *
 * Policies (Dynamo 1.6's conditional disaggregation, and kvroute's earlier rule):
 * - `threshold` (default, kvroute's rule): remote when more than `localPrefillMaxTokens` prompt
 *   tokens are uncached on the decode worker.
 * - `always`: remote whenever a prefill worker exists.
 * - `isl`: remote only when the uncached prompt is at least `islMinTokens` tokens and at least
 *   `islMinFraction` of the prompt (Dynamo's defaults: 2,048 and 0.7).
 * - `prefill-load`: remote unless the chosen prefill worker already has `prefillBusyActive` or
 *   more requests in flight (then bypass: prefill locally).
 * - `isl-or-load`: local when either `isl` or `prefill-load` says local.
 * Then the decode-busy veto: a local choice on a decode worker with `decodeBusyActive` or more
 * requests in flight becomes remote (a long prefill there would stall its running decodes).
 */

export type DisaggPolicyName = "threshold" | "always" | "isl" | "prefill-load" | "isl-or-load";
export const DISAGG_POLICIES: readonly DisaggPolicyName[] = ["threshold", "always", "isl", "prefill-load", "isl-or-load"];

export interface DisaggPolicyConfig {
  policy: DisaggPolicyName;
  localPrefillMaxTokens: number;
  islMinTokens: number;
  islMinFraction: number;
  prefillBusyActive: number;
  /** 0: no veto. */
  decodeBusyActive: number;
}

export type DisaggReason =
  | "always"
  | "uncached_long"
  | "uncached_short"
  | "isl_long"
  | "isl_short"
  | "isl_cached"
  | "prefill_free"
  | "prefill_busy"
  | "decode_busy_veto"
  | "no_prefill_worker";

export interface DisaggInput {
  promptTokens: number;
  /** Prompt tokens the decode worker does not hold (exact from the indexer, when tokenized). */
  uncachedTokens: number;
  /** In-flight requests on the best prefill worker; null when there is none. */
  prefillActive: number | null;
  decodeActive: number;
}

export interface DisaggChoice {
  path: "remote" | "local";
  reason: DisaggReason;
}

function isl(cfg: DisaggPolicyConfig, input: DisaggInput): DisaggChoice {
  if (input.uncachedTokens < cfg.islMinTokens) return { path: "local", reason: "isl_short" };
  if (input.uncachedTokens < cfg.islMinFraction * input.promptTokens) return { path: "local", reason: "isl_cached" };
  return { path: "remote", reason: "isl_long" };
}

function load(cfg: DisaggPolicyConfig, input: DisaggInput): DisaggChoice {
  return (input.prefillActive ?? 0) >= cfg.prefillBusyActive ? { path: "local", reason: "prefill_busy" } : { path: "remote", reason: "prefill_free" };
}

/** The policy's choice, before the decode-busy veto. */
function byPolicy(cfg: DisaggPolicyConfig, input: DisaggInput): DisaggChoice {
  switch (cfg.policy) {
    case "always":
      return { path: "remote", reason: "always" };
    case "threshold":
      return input.uncachedTokens > cfg.localPrefillMaxTokens ? { path: "remote", reason: "uncached_long" } : { path: "local", reason: "uncached_short" };
    case "isl":
      return isl(cfg, input);
    case "prefill-load":
      return load(cfg, input);
    case "isl-or-load": {
      const byIsl = isl(cfg, input);
      return byIsl.path === "local" ? byIsl : load(cfg, input);
    }
  }
}

export function decideDisagg(cfg: DisaggPolicyConfig, input: DisaggInput): DisaggChoice {
  if (input.prefillActive === null) return { path: "local", reason: "no_prefill_worker" };
  const choice = byPolicy(cfg, input);
  if (choice.path === "local" && cfg.decodeBusyActive > 0 && input.decodeActive >= cfg.decodeBusyActive) {
    return { path: "remote", reason: "decode_busy_veto" };
  }
  return choice;
}

/** The policy settings from the gateway's `disagg` config. */
export function disaggPolicyConfig(c: {
  policy: DisaggPolicyName;
  localPrefillMaxTokens: number;
  islMinTokens: number;
  islMinPercent: number;
  prefillBusyActive: number;
  decodeBusyActive: number;
}): DisaggPolicyConfig {
  return {
    policy: c.policy,
    localPrefillMaxTokens: c.localPrefillMaxTokens,
    islMinTokens: c.islMinTokens,
    islMinFraction: c.islMinPercent / 100,
    prefillBusyActive: c.prefillBusyActive,
    decodeBusyActive: c.decodeBusyActive,
  };
}
