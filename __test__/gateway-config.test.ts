import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { describeSchema, envName, loadGatewayConfig, validateGatewayConfig } from "../ts/config/index.js";
import { InvalidConfigError } from "../ts/errors.js";

const dir = mkdtempSync(join(tmpdir(), "kvroute-config-"));
function file(name: string, text: string): string {
  const path = join(dir, name);
  writeFileSync(path, text);
  return path;
}

const yaml = `
port: 9000
routerMode: round-robin
migrationLimit: 2
queue:
  maxSize: 10
models:
  - name: llama
    blockSize: 32
    hashAlgorithm: sha256_cbor
    hashSeed: 0
    workers:
      - id: w0
        url: http://127.0.0.1:8100/
        kvEvents: tcp://127.0.0.1:5557
        dpRanks: 2
      - id: p0
        url: http://127.0.0.1:8101
        role: prefill
        dpRanks: [3]
        dataParallelSize: 4
`;

describe("gateway config", () => {
  it("loads YAML with defaults filled in", () => {
    const c = loadGatewayConfig({ file: file("a.yaml", yaml), env: {} });
    expect(c.port).toBe(9000);
    expect(c.routerMode).toBe("round-robin");
    expect(c.migrationLimit).toBe(2);
    expect(c.queue).toEqual({ maxSize: 10, timeoutMs: 30_000, maxActivePerWorker: 256 });
    const m = c.models[0]!;
    expect(m).toMatchObject({ name: "llama", blockSize: 32, hashAlgorithm: "sha256_cbor", hashSeed: "0" });
    expect(m.workers[0]).toMatchObject({ id: "w0", url: "http://127.0.0.1:8100", dpRanks: [0, 1], dataParallelSize: 2, role: "aggregated", kvEvents: "tcp://127.0.0.1:5557" });
    expect(m.workers[1]).toMatchObject({ id: "p0", role: "prefill", dpRanks: [3], dataParallelSize: 4, kvEvents: null });
  });

  it("loads JSON; env beats the file and flags beat env", () => {
    const path = file("b.json", JSON.stringify({ port: 1000, routerMode: "kv", models: [] }));
    const c = loadGatewayConfig({
      file: path,
      env: { KVROUTE_PORT: "2000", KVROUTE_ROUTER_MODE: "random", KVROUTE_QUEUE_TIMEOUT_MS: "5" },
      overrides: { routerMode: "least-loaded" },
    });
    expect(c.port).toBe(2000);
    expect(c.routerMode).toBe("least-loaded");
    expect(c.queue.timeoutMs).toBe(5);
  });

  it("finds the file through KVROUTE_CONFIG", () => {
    const path = file("c.yml", "port: 1234\n");
    expect(loadGatewayConfig({ env: { KVROUTE_CONFIG: path } }).port).toBe(1234);
  });

  it("names the source and the field of a bad value", () => {
    const bad = (f: () => unknown) => {
      try {
        f();
      } catch (err) {
        expect(err).toBeInstanceOf(InvalidConfigError);
        return (err as Error).message;
      }
      throw new Error("no error");
    };
    expect(bad(() => loadGatewayConfig({ env: { KVROUTE_PORT: "eighty" } }))).toBe("KVROUTE_PORT: 'port' must be an integer: got \"eighty\"");
    expect(bad(() => loadGatewayConfig({ env: {}, overrides: { routerMode: "fastest" } }))).toBe(
      "--routerMode: 'routerMode' must be one of kv, round-robin, random, least-loaded: got \"fastest\"",
    );
    const p = file("d.yaml", "models:\n  - name: m\n    workers:\n      - id: a\n        url: ftp://x\n");
    expect(bad(() => loadGatewayConfig({ file: p, env: {} }))).toBe(`${p}: 'models[0].workers[0].url' must be an http(s) URL: got "ftp://x"`);
    expect(bad(() => validateGatewayConfig({ prot: 1 }))).toContain("'prot' is not a known setting (did you mean 'port'?)");
    expect(bad(() => validateGatewayConfig({ models: [{ name: "m", workers: [{ id: "a", url: "http://x" }, { id: "a", url: "http://y" }] }] }))).toContain(
      "'models[0].workers[1].id' repeats the worker id \"a\"",
    );
    expect(bad(() => validateGatewayConfig({ models: [{ name: "m", workers: [{ id: "a", url: "http://x", kvEvents: "tcp://*:5557" }] }] }))).toContain(
      "must name the host to connect to",
    );
    expect(bad(() => validateGatewayConfig({ migrationLimit: -1 }))).toContain("'migrationLimit' must be in [0, 100]: got -1");
    expect(bad(() => loadGatewayConfig({ file: file("e.yaml", "port: [1,\n"), env: {} }))).toContain("invalid YAML");
    expect(bad(() => loadGatewayConfig({ file: join(dir, "missing.json"), env: {} }))).toContain("cannot read config file");
  });

  it("derives env names from the schema", () => {
    expect(envName("queue.maxActivePerWorker")).toBe("KVROUTE_QUEUE_MAX_ACTIVE_PER_WORKER");
    const names = describeSchema().map((d) => d.env);
    expect(names).toContain("KVROUTE_MIGRATION_LIMIT");
    expect(names).toContain("KVROUTE_ROUTER_MODE");
  });
});

describe("docs/gateway.md", () => {
  it("documents every setting and its environment variable", async () => {
    const { readFileSync } = await import("node:fs");
    const doc = readFileSync(new URL("../docs/gateway.md", import.meta.url), "utf8");
    for (const d of describeSchema()) {
      expect(doc, d.env).toContain(`| \`${d.path}\` | \`${d.env}\` | ${d.default === "" ? "" : `\`${d.default}\``} | ${d.doc} |`);
    }
  });
});

describe("models[].tokenizer", () => {
  it("is an optional non-empty path; null or absent means no tokenizer", () => {
    const c = validateGatewayConfig({ models: [{ name: "a", tokenizer: "/models/a" }, { name: "b" }, { name: "c", tokenizer: null }] });
    expect(c.models.map((m) => m.tokenizer)).toEqual(["/models/a", null, null]);
    expect(() => validateGatewayConfig({ models: [{ name: "a", tokenizer: 3 }] }, "f.yaml")).toThrow("f.yaml: 'models[0].tokenizer' must be a string: got 3");
    expect(() => validateGatewayConfig({ models: [{ name: "a", tokenizer: "" }] }, "f.yaml")).toThrow("'models[0].tokenizer' must not be empty");
  });

  it("a folder that does not load stops startGateway with an error naming the file, leaving nothing running", async () => {
    const { startGateway } = await import("../ts/gateway/index.js");
    const { TokenizerLoadError } = await import("../ts/errors.js");
    const bad = mkdtempSync(join(tmpdir(), "kvroute-badtok-"));
    writeFileSync(join(bad, "tokenizer.json"), "not json");
    const start = startGateway({ host: "127.0.0.1", port: 0, models: [{ name: "m", tokenizer: bad }] }, { log: null });
    await expect(start).rejects.toBeInstanceOf(TokenizerLoadError);
    await expect(start).rejects.toThrow(`${join(bad, "tokenizer.json")}: `);
  });
});
