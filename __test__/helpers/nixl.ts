/**
 * NIXL test helpers: where the real library is (KVROUTE_NIXL_LIB_DIR, else what
 * scripts/nixl/fetch.sh unpacked), and a peer process (nixl-peer.mjs) driven over JSON lines.
 * CI (`.ci/run`) fetches the library and sets KVROUTE_REQUIRE_NIXL=1, so there the tests
 * run for real; elsewhere they are skipped only when the library is absent.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";
import { NixlAgent } from "../../ts/index.js";

const cached = fileURLToPath(new URL("../../.cache/nixl/nixl-cu12-1.5.1", import.meta.url));

export function nixlLibDir(): string | undefined {
  const fromEnv = process.env.KVROUTE_NIXL_LIB_DIR;
  if (fromEnv) return fromEnv;
  return existsSync(cached) ? cached : undefined;
}

/** Whether the NIXL tests run here; throws when CI requires them and the library is missing. */
export function nixlTestsRun(): boolean {
  const dir = nixlLibDir();
  const available = dir !== undefined && NixlAgent.availability(dir).available;
  if (!available && process.env.KVROUTE_REQUIRE_NIXL === "1") {
    throw new Error(`KVROUTE_REQUIRE_NIXL=1 but NIXL does not load from ${dir ?? "(none)"}: run scripts/nixl/fetch.sh`);
  }
  return available;
}

export interface NixlPeer {
  name: string;
  metadata: Buffer;
  addr: bigint;
  length: number;
  child: ChildProcess;
  /** Sends a command and resolves with its one-line answer. */
  ask(cmd: Record<string, unknown>): Promise<any>;
  stop(): Promise<void>;
}

const peerScript = fileURLToPath(new URL("./nixl-peer.mjs", import.meta.url));

export function startNixlPeer(name: string, size: number, seed: number, env: Record<string, string> = {}): Promise<NixlPeer | { error: { code: string; message: string } }> {
  const child = spawn(process.execPath, [peerScript, name, String(size), String(seed)], {
    env: { ...process.env, ...env },
    stdio: ["pipe", "pipe", "pipe"],
  });
  let stderr = "";
  child.stderr!.on("data", (d: Buffer) => (stderr += d.toString()));
  const lines = createInterface({ input: child.stdout! });
  const waiting: ((msg: any) => void)[] = [];
  let first: ((msg: any) => void) | undefined;
  lines.on("line", (line) => {
    const msg = JSON.parse(line);
    if (first) {
      const f = first;
      first = undefined;
      f(msg);
    } else waiting.shift()?.(msg);
  });
  const exited = new Promise<void>((r) => child.once("exit", () => r()));
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.stdin!.end(JSON.stringify({ cmd: "exit" }) + "\n");
      await exited;
    }
  };
  return new Promise((resolve, reject) => {
    child.once("exit", (code, signal) => reject(new Error(`nixl peer exited (${code ?? signal}) before ready: ${stderr}`)));
    first = (msg) => {
      if (msg.error) {
        resolve(msg);
        return;
      }
      resolve({
        name: msg.name,
        metadata: Buffer.from(msg.metadata, "base64"),
        addr: BigInt(msg.addr),
        length: msg.length,
        child,
        stop,
        ask: (cmd) =>
          new Promise((res, rej) => {
            if (child.exitCode !== null) return rej(new Error(`nixl peer has exited: ${stderr}`));
            waiting.push(res);
            child.stdin!.write(JSON.stringify(cmd) + "\n");
          }),
      });
    };
  });
}
