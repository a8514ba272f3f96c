/**
 * Installing kvroute as a user does, without a Rust toolchain: `npm pack` of the main package and of
 * the linux-x64-gnu platform package (npm/linux-x64-gnu plus the binary that `npm ci` built, as
 * `npm run artifacts` puts it there), `npm install` of both tarballs into an empty project with
 * cargo and rustc off the PATH and CARGO_HOME/RUSTUP_HOME pointing nowhere; then, in that project,
 * `npx kvroute demo`, an ESM and a CommonJS script that route a request. Without the platform
 * package, loading kvroute fails with one error naming the platform.
 *
 * No network: the project gets a package-lock.json cut from this repository's (kvroute's runtime
 * dependencies at the versions the suite runs with, whose tarballs `npm ci` left in the npm
 * cache), so `npm install --offline` resolves nothing from the registry. The other platforms'
 * optional packages are not in the cache; npm skips optional packages it cannot fetch.
 * Nothing here rebuilds Rust or the TypeScript: it packs what `npm ci` built.
 */
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { copyFileSync, cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, realpathSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { delimiter, join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const PLATFORM = "linux-x64-gnu";
const glibc = () => Boolean((process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined)?.header?.glibcVersionRuntime);
const onPlatform = process.platform === "linux" && process.arch === "x64" && glibc();
const rootPkg = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as {
  name: string;
  version: string;
  bin: Record<string, string>;
  engines: Record<string, string>;
  dependencies: Record<string, string>;
  optionalDependencies: Record<string, string>;
};
const platformPkg = JSON.parse(readFileSync(join(ROOT, "npm", PLATFORM, "package.json"), "utf8")) as Record<string, unknown> & {
  name: string;
  main: string;
};

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a process to its end (asynchronously, so the test's timeout can still fire). */
function run(cmd: string, args: string[], opts: { cwd: string; env: NodeJS.ProcessEnv }): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd: opts.cwd, env: opts.env, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d) => (stdout += d));
    child.stderr.on("data", (d) => (stderr += d));
    child.on("error", reject);
    child.on("close", (status) => resolve({ status, stdout, stderr }));
  });
}

function ok(r: Run, what: string): Run {
  if (r.status !== 0) throw new Error(`${what} exited ${r.status}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`);
  return r;
}

function which(name: string, path: string): string | undefined {
  for (const dir of path.split(delimiter)) if (dir && existsSync(join(dir, name))) return join(dir, name);
  return undefined;
}

const RUST_TOOLS = ["cargo", "rustc", "rustup"];

/**
 * The environment of a machine without Rust: PATH without any folder that holds cargo, rustc or
 * rustup (node, npm and npx stay reachable through links in `bin`), CARGO_HOME and RUSTUP_HOME
 * in a folder that does not exist, none of the npm_* variables of an enclosing `npm test` that
 * would point npm back at this repository (its cache, registry and user config stay), and no
 * NAPI_RS_* override of the binary the loader picks.
 */
function rustlessEnv(bin: string, nowhere: string): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    const key = k.toLowerCase();
    if (key === "init_cwd" || key.startsWith("napi_rs_") || (key.startsWith("npm_") && !["npm_config_cache", "npm_config_registry", "npm_config_userconfig"].includes(key))) continue;
    env[k] = v;
  }
  const path = process.env.PATH ?? "";
  mkdirSync(bin, { recursive: true });
  symlinkSync(process.execPath, join(bin, "node"));
  for (const tool of ["npm", "npx"]) {
    const found = which(tool, path);
    if (!found) throw new Error(`${tool} is not on the PATH`);
    symlinkSync(realpathSync(found), join(bin, tool));
  }
  const kept = path.split(delimiter).filter((dir) => dir && !RUST_TOOLS.some((t) => existsSync(join(dir, t))));
  return { ...env, PATH: [bin, ...kept].join(delimiter), CARGO_HOME: nowhere, RUSTUP_HOME: nowhere };
}

interface Packed {
  file: string;
  size: number;
  files: string[];
}

async function pack(dir: string, dest: string, env: NodeJS.ProcessEnv): Promise<Packed> {
  // --ignore-scripts: `npm pack` would run `prepare` (the build from source); this packs what is built.
  const r = ok(await run("npm", ["pack", "--json", "--ignore-scripts", "--pack-destination", dest], { cwd: dir, env }), `npm pack in ${dir}`);
  const [info] = JSON.parse(r.stdout) as { filename: string; size: number; files: { path: string }[] }[];
  return { file: join(dest, info!.filename), size: info!.size, files: info!.files.map((f) => f.path) };
}

const integrity = (file: string) => `sha512-${createHash("sha512").update(readFileSync(file)).digest("base64")}`;

/**
 * An empty project depending on the given tarballs, with a package-lock.json holding them and
 * kvroute's runtime dependencies as this repository's lock resolves them (same paths: kvroute's
 * dependencies sit at the top of node_modules in both).
 */
function makeProject(dir: string, main: string, platform: string | undefined): void {
  const repoLock = (JSON.parse(readFileSync(join(ROOT, "package-lock.json"), "utf8")) as { packages: Record<string, Record<string, unknown>> }).packages;
  const resolve = (from: string, name: string): string | undefined => {
    for (let at = from; ; ) {
      const path = `${at ? `${at}/` : ""}node_modules/${name}`;
      if (repoLock[path]) return path;
      if (!at) return undefined;
      const i = at.lastIndexOf("/node_modules/");
      at = i < 0 ? "" : at.slice(0, i);
    }
  };
  const packages: Record<string, Record<string, unknown>> = {};
  const queue: [string, string][] = Object.keys(rootPkg.dependencies).map((name) => ["", name]);
  for (let next = queue.shift(); next; next = queue.shift()) {
    const path = resolve(...next);
    if (!path) throw new Error(`${next[1]} is not in package-lock.json`);
    if (packages[path]) continue;
    const { dev: _dev, devOptional: _devOptional, peer: _peer, ...entry } = repoLock[path]!;
    packages[path] = entry;
    for (const dep of Object.keys((entry.dependencies as Record<string, string> | undefined) ?? {})) queue.push([path, dep]);
  }
  const dependencies: Record<string, string> = { [rootPkg.name]: `file:${main}` };
  packages[`node_modules/${rootPkg.name}`] = {
    version: rootPkg.version,
    resolved: `file:${main}`,
    integrity: integrity(main),
    dependencies: rootPkg.dependencies,
    optionalDependencies: rootPkg.optionalDependencies,
    bin: rootPkg.bin,
    engines: rootPkg.engines,
  };
  if (platform) {
    dependencies[platformPkg.name] = `file:${platform}`;
    const { name: _n, main: _m, files: _f, description: _d, ...fields } = platformPkg;
    packages[`node_modules/${platformPkg.name}`] = { ...fields, resolved: `file:${platform}`, integrity: integrity(platform) };
  }
  mkdirSync(dir, { recursive: true });
  const manifest = { name: "consumer", version: "0.0.0", private: true, dependencies };
  writeFileSync(join(dir, "package.json"), JSON.stringify(manifest, null, 2));
  const lock = { name: "consumer", version: "0.0.0", lockfileVersion: 3, requires: true, packages: { "": manifest, ...packages } };
  writeFileSync(join(dir, "package-lock.json"), JSON.stringify(lock, null, 2));
}

const install = (cwd: string, env: NodeJS.ProcessEnv) =>
  run("npm", ["install", "--offline", "--no-audit", "--no-fund", "--loglevel=warn"], { cwd, env });

/** Two workers, w1 holding the prompt's 4 blocks: the router must pick w1 (native hashing, index, scoring). */
const ROUTE_BODY = `
const record = (id) => ({ id, model: "m", role: "aggregated", url: "http://127.0.0.1:9000/" + id, kvEvents: null,
  blockSize: 16, hashAlgorithm: "sha256", hashSeed: null, numGpuBlocks: null, dataParallelSize: 1, dpRanks: [0] });
const registry = new MemoryRegistry([record("w0"), record("w1")]);
const router = new KvRouter({ registry, log: () => {} });
const tokens = Uint32Array.from({ length: 64 }, (_, i) => 1000 + i);
router.eventSink("m").applyEventBatch("w1", encodeKvEventBatch({ ts: 0, dataParallelRank: 0, events: [
  { type: "BlockStored", blockHashes: [1n, 2n, 3n, 4n], parentBlockHash: null, tokenIds: tokens, blockSize: 16, medium: "GPU" }] }));
const d = router.route({ model: "m", tokens });
console.log(JSON.stringify({ workerId: d.workerId, overlapBlocks: d.overlapBlocks, version: native.nativeVersion() }));
router.close();
`;
const ESM = `import { KvRouter, MemoryRegistry, encodeKvEventBatch, native } from "kvroute";\n${ROUTE_BODY}`;
const CJS = `const { KvRouter, MemoryRegistry, encodeKvEventBatch, native } = require("kvroute");\n${ROUTE_BODY}`;

describe.skipIf(!onPlatform)(`kvroute installed from tarballs on ${PLATFORM}, without Rust`, () => {
  let tmp: string;
  let env: NodeJS.ProcessEnv;
  let main: Packed;
  let platform: Packed;
  let withBinary: string;
  let withoutBinary: string;

  beforeAll(async () => {
    const binary = join(ROOT, platformPkg.main);
    if (!existsSync(binary) || !existsSync(join(ROOT, "dist", "cli.mjs")) || !existsSync(join(ROOT, "index.js"))) {
      throw new Error(`${platformPkg.main}, index.js and dist/ come from the build: run 'npm run build' (npm ci does)`);
    }
    tmp = mkdtempSync(join(tmpdir(), "kvroute-install-"));
    env = rustlessEnv(join(tmp, "bin"), join(tmp, "no-such-dir"));
    // The platform package as the release puts it together: npm/<platform> with its binary in it.
    const stage = join(tmp, "stage", PLATFORM);
    cpSync(join(ROOT, "npm", PLATFORM), stage, { recursive: true });
    copyFileSync(binary, join(stage, platformPkg.main));
    [main, platform] = await Promise.all([pack(ROOT, tmp, env), pack(stage, tmp, env)]);
    withBinary = join(tmp, "with-platform-package");
    withoutBinary = join(tmp, "without-platform-package");
    makeProject(withBinary, main.file, platform.file);
    makeProject(withoutBinary, main.file, undefined);
    const [a, b] = await Promise.all([install(withBinary, env), install(withoutBinary, env)]);
    ok(a, "npm install (with the platform package)");
    ok(b, "npm install (without the platform package)");
  }, 180_000);

  afterAll(() => {
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  });

  it("runs its commands without Rust on the PATH", async () => {
    const r = await run("sh", ["-c", "command -v cargo || command -v rustc || echo none"], { cwd: tmp, env });
    expect(r.stdout.trim()).toBe("none");
  });

  it("packs only what users need", () => {
    for (const f of main.files) expect(f, f).toMatch(/^(dist\/[^/]+|index\.js|index\.d\.ts|README\.md|package\.json)$/);
    expect(main.files).toEqual(expect.arrayContaining(["dist/index.js", "dist/index.mjs", "dist/cli.mjs", "index.js", "index.d.ts"]));
    expect(platform.files.sort()).toEqual(["README.md", platformPkg.main, "package.json"].sort());
    const installed = JSON.parse(readFileSync(join(withBinary, "node_modules", "kvroute", "package.json"), "utf8")) as { scripts?: Record<string, string> };
    // A consumer's install runs none of kvroute's scripts (prepare runs only for git and folder installs).
    for (const hook of ["preinstall", "install", "postinstall"]) expect(installed.scripts?.[hook], hook).toBeUndefined();
    expect(Object.keys(rootPkg.optionalDependencies)).toContain(platformPkg.name);
  });

  it("ships a binary that needs only the C runtime (no NIXL or other optional library)", async () => {
    const binary = join(withBinary, "node_modules", platformPkg.name, platformPkg.main);
    const r = ok(await run("ldd", [binary], { cwd: tmp, env }), "ldd");
    const libs = r.stdout.split("\n").map((l) => l.trim().split(/\s/)[0]!).filter(Boolean);
    expect(libs.length).toBeGreaterThan(0);
    for (const lib of libs) expect(lib, r.stdout).toMatch(/^(linux-vdso\.so|libc\.so|libm\.so|libgcc_s\.so|libpthread\.so|libdl\.so|librt\.so|\/lib(64)?\/ld-linux)/);
  });

  it("runs `npx kvroute demo`", async () => {
    const html = join(tmp, "demo.html");
    const r = ok(
      await run("npx", ["--offline", "kvroute", "demo", "--conversations", "30", "--workers", "4", "--html", html, "--quiet"], { cwd: withBinary, env }),
      "npx kvroute demo",
    );
    expect(r.stdout).toMatch(/kv vs round-robin: .*the hit rate/);
    expect(statSync(html).size).toBeGreaterThan(1000);
  });

  it("routes a request from an ES module and from a CommonJS script", async () => {
    writeFileSync(join(withBinary, "route.mjs"), ESM);
    writeFileSync(join(withBinary, "route.cjs"), CJS);
    for (const script of ["route.mjs", "route.cjs"]) {
      const r = ok(await run("node", [script], { cwd: withBinary, env }), script);
      expect(JSON.parse(r.stdout), script).toEqual({ workerId: "w1", overlapBlocks: 4, version: rootPkg.version });
    }
  });

  it("without the platform package, fails with one error naming the platform", async () => {
    expect(existsSync(join(withoutBinary, "node_modules", "kvroute", "package.json"))).toBe(true);
    expect(existsSync(join(withoutBinary, "node_modules", platformPkg.name))).toBe(false);
    writeFileSync(join(withoutBinary, "route.mjs"), ESM);
    writeFileSync(join(withoutBinary, "route.cjs"), CJS);
    const runs = await Promise.all([
      run("node", ["route.mjs"], { cwd: withoutBinary, env }),
      run("node", ["route.cjs"], { cwd: withoutBinary, env }),
      run("npx", ["--offline", "kvroute", "demo"], { cwd: withoutBinary, env }),
    ]);
    for (const r of runs) {
      expect(r.status).not.toBe(0);
      expect(r.stdout).toBe("");
      expect(r.stderr).toContain(`KvrouteError: kvroute: no native binary for ${PLATFORM}: the optional package ${platformPkg.name} is not installed.`);
      expect(r.stderr).toContain("code: 'KVR_NATIVE_LOAD'");
    }
  });

  it("with a platform package whose binary cannot load, says so with the loader's reason", async () => {
    const broken = join(tmp, "broken-platform-package");
    cpSync(withoutBinary, broken, { recursive: true, verbatimSymlinks: true });
    const dir = join(broken, "node_modules", platformPkg.name);
    mkdirSync(dir);
    writeFileSync(join(dir, "package.json"), JSON.stringify(platformPkg));
    writeFileSync(join(dir, platformPkg.main), "not an ELF file");
    const r = await run("node", ["route.cjs"], { cwd: broken, env });
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(new RegExp(`kvroute: the native binary for ${PLATFORM} \\(.*${platformPkg.main}\\) failed to load: .*(invalid ELF header|too short)`));
  });
});
