import { describe, expect, it } from "vitest";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { endpointForRank, isBindEndpoint, parseEndpoint, ZmtpError } from "../ts/events/index.js";
import {
  decodeCommand,
  decodeGreeting,
  decodeProperties,
  encodeCommand,
  encodeGreeting,
  encodeMessage,
  encodeProperties,
  FLAG_COMMAND,
  FLAG_LONG,
  FLAG_MORE,
  FrameDecoder,
  GREETING_SIZE,
} from "../ts/events/zmtp/wire.js";
import { InvalidConfigError } from "../ts/errors.js";

function bytes(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed) & 0xff;
  return b;
}

/** Decodes `wire` fed in chunks of the given sizes, returning messages (frames grouped by MORE). */
function decodeAll(wire: Buffer, chunkSizes: number[]): Buffer[][] {
  const dec = new FrameDecoder(1 << 24);
  const messages: Buffer[][] = [];
  let parts: Buffer[] = [];
  let at = 0;
  let i = 0;
  while (at < wire.length) {
    const n = chunkSizes[i++ % chunkSizes.length] as number;
    dec.push(wire.subarray(at, at + n));
    at += n;
    for (let f = dec.nextFrame(); f; f = dec.nextFrame()) {
      parts.push(Buffer.from(f.body));
      if (!(f.flags & FLAG_MORE)) {
        messages.push(parts);
        parts = [];
      }
    }
  }
  expect(dec.buffered).toBe(0);
  return messages;
}

describe("ZMTP framing", () => {
  it("writes short frames up to 255 bytes and long frames above, with MORE on all but the last", () => {
    const [small] = encodeMessage([Buffer.from("ab"), Buffer.alloc(0)]);
    expect(small?.toString("hex")).toBe("01026162" + "0000");
    const big = Buffer.concat(encodeMessage([bytes(255, 1), bytes(256, 2)]));
    expect(big[0]).toBe(FLAG_MORE);
    expect(big[1]).toBe(255);
    expect(big[2 + 255]).toBe(FLAG_LONG);
    expect(big.readBigUInt64BE(2 + 255 + 1)).toBe(256n);
  });

  it("round-trips multipart messages of every size class through any chunking", () => {
    const messages = [
      [Buffer.alloc(0)],
      [Buffer.from("topic"), bytes(8, 3), bytes(255, 4)],
      [bytes(256, 5)],
      [Buffer.from("t"), bytes(70_000, 6), Buffer.alloc(0), bytes(300, 7)],
    ];
    const wire = Buffer.concat(messages.flatMap((m) => encodeMessage(m)));
    const hex = (ms: Buffer[][]) => ms.map((m) => m.map((b) => b.toString("hex")));
    for (const chunks of [[1], [2, 7], [9], [4096], [wire.length]]) {
      expect(hex(decodeAll(wire, chunks))).toEqual(hex(messages));
    }
  });

  it("refuses a long frame above the size limit before buffering it", () => {
    const dec = new FrameDecoder(1000);
    const header = Buffer.alloc(9);
    header[0] = FLAG_LONG;
    header.writeBigUInt64BE(1001n, 1);
    dec.push(header);
    expect(() => dec.nextFrame()).toThrow(ZmtpError);
  });

  it("encodes commands and READY metadata (names case-insensitive)", () => {
    const props = encodeProperties({ "Socket-Type": "DEALER", Identity: Buffer.from([1, 2]) });
    const cmd = encodeCommand("READY", props);
    expect(cmd[0]).toBe(FLAG_COMMAND);
    const dec = new FrameDecoder(1 << 20);
    dec.push(cmd);
    const frame = dec.nextFrame();
    const { name, data } = decodeCommand(frame!.body);
    expect(name).toBe("READY");
    const parsed = decodeProperties(data);
    expect(parsed.get("socket-type")?.toString()).toBe("DEALER");
    expect(parsed.get("identity")).toEqual(Buffer.from([1, 2]));
    expect(() => decodeProperties(data.subarray(0, data.length - 1))).toThrow(ZmtpError);
  });

  it("greets as ZMTP 3.x NULL and rejects what is not", () => {
    const g = encodeGreeting(1);
    expect(g.length).toBe(GREETING_SIZE);
    expect(decodeGreeting(g)).toEqual({ major: 3, minor: 1, mechanism: "NULL", asServer: false });
    const old = Buffer.from(g);
    old[10] = 2;
    expect(() => decodeGreeting(old)).toThrow(/only 3.x/);
    expect(() => decodeGreeting(Buffer.alloc(64, 0x41))).toThrow(/greeting/);
  });
});

describe("endpoints", () => {
  it("parses tcp and ipc endpoints as libzmq does", () => {
    expect(parseEndpoint("tcp://127.0.0.1:5557")).toMatchObject({ host: "127.0.0.1", port: 5557 });
    expect(parseEndpoint("tcp://*:*")).toMatchObject({ host: "*", port: 0 });
    expect(parseEndpoint("tcp://[::1]:5557")).toMatchObject({ host: "::1", port: 5557 });
    expect(parseEndpoint("ipc:///tmp/kv.sock")).toMatchObject({ transport: "ipc", path: "/tmp/kv.sock" });
    expect(parseEndpoint("ipc://@kv")).toMatchObject({ transport: "ipc", path: "\0kv" });
    for (const bad of ["127.0.0.1:5557", "tcp://host", "tcp://host:99999", "inproc://x", "udp://h:1"]) {
      expect(() => parseEndpoint(bad), bad).toThrow(InvalidConfigError);
    }
  });

  it("offsets per data-parallel rank exactly as vLLM 0.33's offset_endpoint_port (golden)", () => {
    const path = fileURLToPath(new URL("../fixtures/golden/kv_events/0.33.0.json", import.meta.url));
    const golden = JSON.parse(readFileSync(path, "utf8")) as {
      endpoint_offsets: { endpoint: string; dp_rank: number; result: string }[];
    };
    expect(golden.endpoint_offsets.length).toBeGreaterThan(10);
    for (const { endpoint, dp_rank, result } of golden.endpoint_offsets) {
      if (result.startsWith("error:")) expect(() => endpointForRank(endpoint, dp_rank)).toThrow(InvalidConfigError);
      else expect(endpointForRank(endpoint, dp_rank), `${endpoint} rank ${dp_rank}`).toBe(result);
    }
  });

  it("binds where vLLM binds", () => {
    expect(isBindEndpoint("tcp://*:5557")).toBe(true);
    expect(isBindEndpoint("tcp://[::]:5557")).toBe(true);
    expect(isBindEndpoint("ipc:///tmp/x")).toBe(true);
    expect(isBindEndpoint("tcp://10.0.0.5:5557")).toBe(false);
  });
});
