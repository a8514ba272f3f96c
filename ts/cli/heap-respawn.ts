/**
 * `kvroute serve` runs under a V8 heap setting that suits a long-running gateway.
 *
 * V8 sets the old generation's limit from the live heap. A gateway's live heap is small (~15 MB),
 * but it allocates fast: request bodies, token arrays, responses. So the limit sits a few MB
 * above the heap, and V8 starts a full mark-compact every 200–350 ms. At 60 long-chat requests/s,
 * that was about a fifth of the gateway's CPU (benchmarks/RESULTS.md, issue 15's fifth pass).
 *
 * `--initial-old-space-size` gives the old generation a starting limit of its own, and the
 * mark-compacts all but stop. The heap does not grow for it: it stays near its live size, and
 * scavenges still free the young garbage. The flag is only read when a process starts; NODE_OPTIONS
 * refuses it, and `v8.setFlagsFromString` is too late. So `serve` starts itself once more with it.
 *
 * How the two processes behave:
 * - The first process only relays: signals to the gateway, and the gateway's exit code or signal back.
 * - The gateway runs in its own process group, so a terminal's Ctrl-C (sent to the group) is relayed
 *   once, not seen twice.
 * - The gateway never outlives the relay: it holds an IPC channel to it and kills itself with SIGKILL
 *   when the channel closes, even when the relay is SIGKILLed.
 * - No second start when the node command line already sets the old space's size, with
 *   KVROUTE_NO_RESPAWN=1, or on Windows (no process groups or POSIX signals to relay).
 */
import { spawn } from "node:child_process";

/** The gateway's V8 setting (MB): measured at 48, 64 and 128 (RESULTS.md); 128 stopped them. */
export const GATEWAY_V8_FLAGS: readonly string[] = ["--initial-old-space-size=128"];

const RESPAWNED_ENV = "KVROUTE_HEAP_RESPAWNED";
const RELAYED_SIGNALS: readonly NodeJS.Signals[] = ["SIGINT", "SIGTERM", "SIGHUP", "SIGUSR2"];

/**
 * In the relayed gateway: ties its life to the relay's. In a first `serve` process: starts the
 * gateway again with GATEWAY_V8_FLAGS and relays until it exits, returning its exit code (a
 * signal it died of is raised again here). Null when this process should run the gateway itself.
 */
export function respawnWithGatewayHeap(): Promise<number> | null {
  if (process.env[RESPAWNED_ENV] === "1") {
    delete process.env[RESPAWNED_ENV];
    if (process.channel) {
      process.channel.unref();
      process.once("disconnect", () => process.kill(process.pid, "SIGKILL"));
    }
    return null;
  }
  if (process.platform === "win32" || process.env["KVROUTE_NO_RESPAWN"] === "1") return null;
  if (process.execArgv.some((a) => /^--initial[-_](old[-_]space|heap)[-_]size\b/.test(a))) return null;
  const script = process.argv[1];
  if (script === undefined) return null;
  const child = spawn(process.execPath, [...process.execArgv, ...GATEWAY_V8_FLAGS, script, ...process.argv.slice(2)], {
    stdio: ["inherit", "inherit", "inherit", "ipc"],
    env: { ...process.env, [RESPAWNED_ENV]: "1" },
    detached: true,
  });
  const relay = (signal: NodeJS.Signals) => {
    if (child.exitCode === null && child.signalCode === null) child.kill(signal);
  };
  for (const s of RELAYED_SIGNALS) process.on(s, relay);
  return new Promise<number>((resolve) => {
    child.once("error", (err) => {
      console.error(`kvroute serve: could not start the gateway process: ${err.message}`);
      resolve(1);
    });
    child.once("exit", (code, signal) => {
      for (const s of RELAYED_SIGNALS) process.off(s, relay);
      if (signal) process.kill(process.pid, signal);
      resolve(code ?? 1);
    });
  });
}
