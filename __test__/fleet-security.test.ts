/**
 * Secure fleet connections against real servers: etcd with a user (auth enabled through the
 * client API) and with TLS client certificates; nats-server with a token, with a user and
 * password, and with TLS. The right credentials serve; wrong ones make `kvroute serve` and
 * `kvroute worker` exit at start with an error naming the server, never hang.
 */
import { Etcd3, Range } from "etcd3";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { EtcdServer } from "./helpers/etcd-server.js";
import { runToExit, startServeProcess, startWorkerProcess, stopFleetProcesses } from "./helpers/fleet-processes.js";
import { MODEL, post } from "./helpers/gateway-fleet.js";
import { NatsServer } from "./helpers/nats-server.js";
import { makeTlsMaterial, type TlsMaterial } from "./helpers/tls-certs.js";

let tls: TlsMaterial;
const servers: { dispose(): Promise<void> }[] = [];

beforeAll(() => {
  tls = makeTlsMaterial();
});
afterEach(async () => {
  await stopFleetProcesses();
});
afterAll(async () => {
  await Promise.all(servers.map((s) => s.dispose()));
  tls?.dispose();
});

/** etcd with auth on: root, and a `kvroute` user allowed to read and write /kvroute/ only. */
async function etcdWithUser(): Promise<EtcdServer> {
  const etcd = await EtcdServer.start();
  servers.push(etcd);
  const admin = new Etcd3({ hosts: `http://127.0.0.1:${etcd.port}` });
  await admin.role("root").create().catch(() => {});
  await admin.user("root").create("root-pw");
  await admin.user("root").addRole("root");
  await admin.role("kvroute").create();
  await admin.role("kvroute").grant({ permission: "Readwrite", range: Range.prefix("/kvroute/") });
  await admin.user("kvroute").create("right-pw");
  await admin.user("kvroute").addRole("kvroute");
  await admin.auth.authEnable({});
  admin.close();
  return etcd;
}

const completes = async (url: string) => (await post(url, "/v1/completions", { model: MODEL, prompt: [5, 6, 7, 8], max_tokens: 2 })).status;

describe("etcd credentials", () => {
  it("etcd with a user: the right password serves (gateway and worker), a wrong one fails at start naming the server", async () => {
    const etcd = await etcdWithUser();
    const right = { KVROUTE_FLEET_ETCD_USERNAME: "kvroute", KVROUTE_FLEET_ETCD_PASSWORD: "right-pw", KVROUTE_FLEET_NAMESPACE: "auth" };
    const wrong = { ...right, KVROUTE_FLEET_ETCD_PASSWORD: "wrong-pw" };
    const gw = await startServeProcess(["--registry", etcd.url], right);
    await startWorkerProcess({ id: "authed", registry: etcd.url, env: right });
    await expect.poll(() => completes(gw.url), { timeout: 5000, interval: 50 }).toBe(200);

    const serve = await runToExit(["serve", "--host", "127.0.0.1", "--port", "0", "--registry", etcd.url], wrong);
    expect(serve.code).toBe(1);
    expect(serve.stderr).toContain(`etcd at 127.0.0.1:${etcd.port} refused the connection`);
    expect(serve.stderr).toMatch(/authentication failed/i);
    const worker = await runToExit(["worker", "--engine", "mock", "--model", MODEL, "--port", "1", "--registry", etcd.url, "--quiet"], wrong);
    expect(worker.code).toBe(1);
    expect(worker.stderr).toContain(`etcd at 127.0.0.1:${etcd.port} refused the connection`);
    // No user at all, on an etcd with auth on: refused too, not a hang.
    const anonymous = await runToExit(["serve", "--host", "127.0.0.1", "--port", "0", "--registry", etcd.url], { KVROUTE_FLEET_NAMESPACE: "auth" });
    expect(anonymous.code).toBe(1);
    expect(anonymous.stderr).toContain(`etcd at 127.0.0.1:${etcd.port}`);
  });

  it("etcd over TLS with client certificates: the client cert serves, none fails at start", async () => {
    const etcd = await EtcdServer.start({ tls: { ca: tls.ca, cert: tls.serverCert, key: tls.serverKey, clientCertAuth: true } });
    servers.push(etcd);
    const env = { KVROUTE_FLEET_ETCD_CA: tls.ca, KVROUTE_FLEET_ETCD_CERT: tls.clientCert, KVROUTE_FLEET_ETCD_KEY: tls.clientKey, KVROUTE_FLEET_NAMESPACE: "tls" };
    expect(etcd.url).toMatch(/^etcds:/);
    const gw = await startServeProcess(["--registry", etcd.url], env);
    await startWorkerProcess({ id: "tls-worker", registry: etcd.url, env });
    await expect.poll(() => completes(gw.url), { timeout: 5000, interval: 50 }).toBe(200);
    const noCert = await runToExit(["serve", "--host", "127.0.0.1", "--port", "0", "--registry", etcd.url], { KVROUTE_FLEET_ETCD_CA: tls.ca });
    expect(noCert.code).toBe(1);
    expect(noCert.stderr).toContain(`etcd at 127.0.0.1:${etcd.port}`);
  });
});

describe("NATS credentials", () => {
  it("NATS with a token: the right token serves, a wrong one fails at start naming the server", async () => {
    const nats = await NatsServer.start({ extraArgs: ["--auth", "s3cret-token"] });
    servers.push(nats);
    const gw = await startServeProcess(["--bus", nats.url], { KVROUTE_FLEET_NATS_TOKEN: "s3cret-token" });
    expect(gw.url).toMatch(/^http:/);
    const wrong = await runToExit(["serve", "--host", "127.0.0.1", "--port", "0", "--bus", nats.url], { KVROUTE_FLEET_NATS_TOKEN: "wrong" });
    expect(wrong.code).toBe(1);
    expect(wrong.stderr).toContain(`NATS at ${nats.url} refused the connection`);
    expect(wrong.stderr).toMatch(/authoriz/i);
    const none = await runToExit(["serve", "--host", "127.0.0.1", "--port", "0", "--bus", nats.url]);
    expect(none.code).toBe(1);
    expect(none.stderr).toContain(`NATS at ${nats.url}`);
  });

  it("NATS with a user and password: right ones serve, a wrong password fails at start", async () => {
    const nats = await NatsServer.start({ extraArgs: ["--user", "router", "--pass", "right-pw"] });
    servers.push(nats);
    await startServeProcess(["--bus", nats.url], { KVROUTE_FLEET_NATS_USER: "router", KVROUTE_FLEET_NATS_PASSWORD: "right-pw" });
    const wrong = await runToExit(["serve", "--host", "127.0.0.1", "--port", "0", "--bus", nats.url], { KVROUTE_FLEET_NATS_USER: "router", KVROUTE_FLEET_NATS_PASSWORD: "nope" });
    expect(wrong.code).toBe(1);
    expect(wrong.stderr).toContain(`NATS at ${nats.url} refused the connection`);
  });

  it("NATS over TLS: the CA serves; a client without it fails at start", async () => {
    const nats = await NatsServer.start({ extraArgs: ["--tls", "--tlscert", tls.serverCert, "--tlskey", tls.serverKey] });
    servers.push(nats);
    const url = `tls://127.0.0.1:${nats.port}`;
    await startServeProcess(["--bus", url], { KVROUTE_FLEET_NATS_CA: tls.ca });
    const untrusted = await runToExit(["serve", "--host", "127.0.0.1", "--port", "0", "--bus", url]);
    expect(untrusted.code).toBe(1);
    expect(untrusted.stderr).toContain(`NATS at ${url} refused the connection`);
  });
});
