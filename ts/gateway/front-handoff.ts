/**
 * Requests the native front handed to the JS gateway (crates/kvroute-front/src/handoff.rs). They
 * arrive on the gateway's private Unix socket, whose server marks them; only a marked request's
 * `x-kvroute-front-failure` header is read (the front drops a client's copy, and nobody else can
 * reach the socket, but the mark makes the trust explicit); so is `x-kvroute-front-check`.
 */
import type { IncomingMessage } from "node:http";

export const FRONT_FAILURE_HEADER = "x-kvroute-front-failure";
/** The front sampled this stream for the tokenization parity check (JS runs it). */
export const FRONT_CHECK_HEADER = "x-kvroute-front-check";

const handedOff = new WeakSet<IncomingMessage>();

/** Called by the private socket's server for each request. */
export function markHandedOff(req: IncomingMessage): void {
  handedOff.add(req);
}

/** The front's failed first attempt of a handed-off request. */
export interface FrontFailure {
  worker: string;
  dpRank: number;
  kind: "not_started" | "broken" | "aborted";
  detail: string;
}

const KINDS = new Set(["not_started", "broken", "aborted"]);

export function frontFailureOf(req: IncomingMessage): FrontFailure | null {
  if (!handedOff.has(req)) return null;
  const raw = req.headers[FRONT_FAILURE_HEADER];
  if (typeof raw !== "string") return null;
  try {
    const v = JSON.parse(decodeURIComponent(raw)) as Partial<FrontFailure>;
    if (typeof v.worker !== "string" || typeof v.dpRank !== "number" || typeof v.kind !== "string" || !KINDS.has(v.kind)) return null;
    return { worker: v.worker, dpRank: v.dpRank, kind: v.kind as FrontFailure["kind"], detail: typeof v.detail === "string" ? v.detail : "" };
  } catch {
    return null;
  }
}

/** Whether the front sampled this handed-off request for the parity check. */
export function frontCheckOf(req: IncomingMessage): boolean {
  return handedOff.has(req) && req.headers[FRONT_CHECK_HEADER] === "1";
}
