/**
 * `--api-key` (repeatable, as vLLM's) and `--admin-api-key`, shared by `kvroute serve` and
 * `kvroute up`. Flags win over `KVROUTE_API_KEY` / `KVROUTE_ADMIN_API_KEY` and the file.
 */
import { validateGatewayConfig, type GatewayConfig } from "../config/index.js";
import { InvalidConfigError } from "../errors.js";

export const ACCESS_OPTIONS = {
  "api-key": { type: "string", multiple: true },
  "admin-api-key": { type: "string" },
} as const;

/** Help lines for the two flags, descriptions starting at column `width`. */
export function accessHelp(width: number): string {
  const line = (flag: string, text: string[]) => text.map((t, i) => (i === 0 ? `  ${flag}`.padEnd(width) : " ".repeat(width)) + t).join("\n");
  return [
    line("--api-key KEY", ["clients must send 'Authorization: Bearer KEY' (repeat for", "several keys; default: $KVROUTE_API_KEY, or the config's apiKeys)"]),
    line("--admin-api-key KEY", ["key of /metrics and /v1/kvroute/route (off while API keys", "are on and this is unset; default: $KVROUTE_ADMIN_API_KEY)"]),
  ].join("\n");
}

/** The config with the access flags laid on top, each checked under its flag's name. */
export function withAccessFlags(config: GatewayConfig, values: { "api-key"?: string[] | undefined; "admin-api-key"?: string | undefined }): GatewayConfig {
  const out = { ...config };
  const keys = values["api-key"];
  if (keys !== undefined) out.apiKeys = validateGatewayConfig({ apiKeys: keys }, "--api-key").apiKeys;
  const admin = values["admin-api-key"];
  if (admin !== undefined) {
    if (admin.length === 0) throw new InvalidConfigError("--admin-api-key: 'adminApiKey' must not be empty");
    out.adminApiKey = admin;
  }
  return out;
}
