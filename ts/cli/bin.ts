/**
 * The `kvroute` executable. A `serve` that starts itself again under the gateway's V8 heap flags
 * (heap-respawn.ts) does so before anything else is loaded, so the relaying process stays small:
 * neither the native addon nor the gateway's code is in it. Every other command, and the gateway
 * itself, runs main.ts (a chunk of its own in dist/).
 */
import { respawnWithGatewayHeap } from "./heap-respawn.js";

const relayed = process.argv[2] === "serve" ? respawnWithGatewayHeap() : null;
if (relayed) {
  process.exitCode = await relayed;
} else {
  await import("./main.js");
}
