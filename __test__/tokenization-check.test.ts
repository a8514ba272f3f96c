// The parity check's sampling: every worker's first requests are checked (a wrong folder shows at
// once), then one in N.
import { describe, expect, it } from "vitest";
import { GatewayMetrics } from "../ts/gateway/metrics.js";
import { CHECKS_PER_NEW_WORKER, TokenizationCheck } from "../ts/gateway/tokenization-check.js";

describe("TokenizationCheck.sample", () => {
  it("checks each worker's first requests, then one in N", () => {
    const check = new TokenizationCheck(4, new GatewayMetrics(), () => {});
    const a = Array.from({ length: CHECKS_PER_NEW_WORKER + 8 }, () => check.sample("a"));
    expect(a.slice(0, CHECKS_PER_NEW_WORKER).every(Boolean)).toBe(true);
    expect(a.slice(CHECKS_PER_NEW_WORKER).filter(Boolean)).toHaveLength(2);
    // A worker that joins later gets its own first checks.
    expect(Array.from({ length: CHECKS_PER_NEW_WORKER }, () => check.sample("b")).every(Boolean)).toBe(true);
  });

  it("every = 1 checks everything, 0 nothing", () => {
    const all = new TokenizationCheck(1, new GatewayMetrics(), () => {});
    const none = new TokenizationCheck(0, new GatewayMetrics(), () => {});
    expect(Array.from({ length: 50 }, () => all.sample("w")).every(Boolean)).toBe(true);
    expect(Array.from({ length: 50 }, () => none.sample("w")).some(Boolean)).toBe(false);
  });
});
