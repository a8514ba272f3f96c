/**
 * API keys as vLLM checks them: `Authorization: Bearer <key>`. Keys are compared as SHA-256
 * digests with crypto.timingSafeEqual, against every configured key without stopping at a match,
 * so the time taken says nothing about how much of a key was right, nor which key matched.
 */
import { createHash, timingSafeEqual } from "node:crypto";
import type { IncomingMessage } from "node:http";

export class ApiKeys {
  private readonly digests: Buffer[];

  constructor(keys: readonly string[]) {
    this.digests = keys.map(digest);
  }

  /** Whether any key is configured (none: every request passes). */
  get enabled(): boolean {
    return this.digests.length > 0;
  }

  /** Whether the request carries one of the keys. */
  allows(req: IncomingMessage): boolean {
    const key = bearer(req.headers.authorization);
    if (key === null) return false;
    const d = digest(key);
    let ok = false;
    for (const k of this.digests) ok = timingSafeEqual(k, d) || ok;
    return ok;
  }
}

function digest(key: string): Buffer {
  return createHash("sha256").update(key, "utf8").digest();
}

/** The token of `Bearer <token>` (the scheme's case does not matter), or null. */
function bearer(header: string | undefined): string | null {
  if (header === undefined) return null;
  const m = /^\s*bearer\s+(\S+)\s*$/i.exec(header);
  return m ? m[1]! : null;
}
