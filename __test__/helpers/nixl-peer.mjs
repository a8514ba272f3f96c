// A second process holding a NIXL agent, for the two-process tests: it registers `size` bytes
// filled with pattern(seed), prints its metadata (base64) and region, then answers JSON-line
// commands on stdin: load (peer metadata), verify (buffer equals pattern(seed)), notification
// (wait for one), notify (send one). Uses the built package (dist/).
import { createInterface } from "node:readline";
import { NixlAgent } from "../../dist/index.mjs";
import { pattern } from "./nixl-pattern.mjs";

const [name, sizeArg, seedArg] = process.argv.slice(2);
const size = Number(sizeArg);
const send = (msg) => process.stdout.write(JSON.stringify(msg) + "\n");

let agent;
try {
  agent = NixlAgent.create(name);
} catch (err) {
  send({ error: { code: err.code, message: err.message } });
  process.exit(0);
}
const buffer = pattern(size, Number(seedArg));
const registration = agent.registerBuffer(buffer);
send({
  ready: true,
  name: agent.name,
  metadata: agent.localMetadata().toString("base64"),
  addr: registration.addr.toString(),
  length: registration.length,
});

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  const cmd = JSON.parse(line);
  try {
    if (cmd.cmd === "load") {
      send({ loaded: agent.loadRemoteMetadata(Buffer.from(cmd.metadata, "base64")) });
    } else if (cmd.cmd === "verify") {
      const expected = pattern(size, cmd.seed);
      send({ verified: expected.equals(buffer) });
    } else if (cmd.cmd === "notification") {
      const { notification } = await agent.waitForNotification((n) => n.message.toString() === cmd.message, { timeoutMs: 30_000 });
      send({ notification: { agent: notification.agent, message: notification.message.toString() } });
    } else if (cmd.cmd === "notify") {
      agent.sendNotification(cmd.to, cmd.message);
      send({ notified: true });
    } else if (cmd.cmd === "exit") {
      agent.close();
      process.exit(0);
    }
  } catch (err) {
    send({ error: { code: err.code, message: err.message } });
  }
}
