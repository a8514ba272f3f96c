/**
 * Loading the gateway configuration from its three sources, in increasing precedence:
 * the config file (JSON or YAML), the environment (`KVROUTE_*`, named by schema.ts's envName),
 * then command-line flags. Each layer is validated on its own so that a bad value is reported
 * with the place it came from (`KVROUTE_PORT`, `--router-mode`, `fleet.yaml`).
 */
import { readFileSync } from "node:fs";
import { extname } from "node:path";
import { parse as parseYaml, YAMLParseError } from "yaml";
import { InvalidConfigError } from "../errors.js";
import { envFields, GATEWAY_SCHEMA, validateGatewayConfig, type GatewayConfig } from "./schema.js";

/** The environment variable naming the config file. */
export const CONFIG_FILE_ENV = "KVROUTE_CONFIG";

export interface LoadConfigOptions {
  /** Path of a JSON or YAML file; default: `$KVROUTE_CONFIG`, else none. */
  file?: string;
  /** Default: process.env. */
  env?: NodeJS.ProcessEnv;
  /** Settings from flags, by schema path (`port`, `routerMode`, `queue.maxSize`, `apiKeys`...). */
  overrides?: Record<string, string | number | readonly string[] | undefined>;
  /** Label of the overrides in error messages, per path (default `--<path>`). */
  overrideSources?: Record<string, string>;
}

/** Parses a config file's text as JSON or YAML (by extension; otherwise JSON, then YAML). */
export function parseConfigText(text: string, name: string): unknown {
  const ext = extname(name).toLowerCase();
  const asJson = () => {
    try {
      return JSON.parse(text) as unknown;
    } catch (err) {
      throw new InvalidConfigError(`${name}: invalid JSON: ${err instanceof Error ? err.message : String(err)}`);
    }
  };
  const asYaml = () => {
    try {
      return parseYaml(text, { prettyErrors: true }) as unknown;
    } catch (err) {
      const detail = err instanceof YAMLParseError ? err.message.split("\n")[0] : err instanceof Error ? err.message : String(err);
      throw new InvalidConfigError(`${name}: invalid YAML: ${detail}`);
    }
  };
  if (ext === ".json") return asJson();
  if (ext === ".yaml" || ext === ".yml") return asYaml();
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return asYaml();
  }
}

export function readConfigFile(path: string): unknown {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new InvalidConfigError(`cannot read config file ${path}${code ? ` (${code})` : ""}`, { cause: err });
  }
  return parseConfigText(text, path);
}

function fieldAt(path: string) {
  let fields = GATEWAY_SCHEMA;
  const parts = path.split(".");
  for (let i = 0; i < parts.length; i++) {
    const f = fields[parts[i]!];
    if (!f) return undefined;
    if (i === parts.length - 1) return f;
    if (f.kind !== "object") return undefined;
    fields = f.fields;
  }
  return undefined;
}

function setAt(target: Record<string, unknown>, path: string, value: unknown): void {
  const parts = path.split(".");
  let obj = target;
  for (let i = 0; i < parts.length - 1; i++) {
    const key = parts[i]!;
    const next = obj[key];
    if (typeof next !== "object" || next === null) obj[key] = {};
    obj = obj[key] as Record<string, unknown>;
  }
  obj[parts[parts.length - 1]!] = value;
}

/** A string from env/flags to the field's type; integers must be written as integers. */
function coerce(path: string, raw: string | number | readonly string[], source: string): unknown {
  const field = fieldAt(path);
  if (!field) throw new InvalidConfigError(`${source}: '${path}' is not a known setting`);
  if (field.kind === "strings") return typeof raw === "object" ? [...raw] : [String(raw)];
  if (typeof raw === "object") throw new InvalidConfigError(`${source}: '${path}' takes one value`);
  if (field.kind === "int") {
    if (typeof raw === "number") return raw;
    const text = raw.trim();
    if (!/^-?\d+$/.test(text)) throw new InvalidConfigError(`${source}: '${path}' must be an integer: got ${JSON.stringify(raw)}`);
    return Number(text);
  }
  return String(raw);
}

/**
 * Loads, merges and validates the configuration. Throws InvalidConfigError naming the source and
 * the field of the first bad value.
 */
export function loadGatewayConfig(options: LoadConfigOptions = {}): GatewayConfig {
  const env = options.env ?? process.env;
  const file = options.file ?? env[CONFIG_FILE_ENV] ?? undefined;
  const base = file ? readConfigFile(file) : {};
  // The file alone must be valid (its own name in errors)...
  const fromFile = validateGatewayConfig(base ?? {}, file ?? "config");
  const merged = structuredClone(fromFile) as unknown as Record<string, unknown>;
  // ...then each env var and flag is checked as it is laid on top, with its own name in errors.
  const layered: { path: string; value: unknown; source: string }[] = [];
  for (const { path, env: name } of envFields()) {
    const raw = env[name];
    if (raw === undefined || raw === "") continue;
    layered.push({ path, value: coerce(path, raw, name), source: name });
  }
  for (const [path, raw] of Object.entries(options.overrides ?? {})) {
    if (raw === undefined) continue;
    const source = options.overrideSources?.[path] ?? `--${path}`;
    layered.push({ path, value: coerce(path, raw, source), source });
  }
  for (const { path, value, source } of layered) {
    setAt(merged, path, value);
    // Validate the one field in isolation so the message names its source.
    const probe: Record<string, unknown> = {};
    setAt(probe, path, value);
    validateGatewayConfig(probe, source);
  }
  return validateGatewayConfig(merged, file ?? "config");
}
