/**
 * The mocker moves real KV bytes over NIXL in disaggregated mode (vLLM's NixlConnector, pull
 * mode): every engine core registers a KV pool (its blocks, `blockBytes` each: the profile's
 * block size scaled down so tests stay small) with a NIXL agent and serves the agent's metadata
 * on its side channel (`remote_host`:`remote_port` of the kv_transfer_params it returns). A
 * prefill core writes each finished prefill's blocks (a fingerprint of the block's tokens); a
 * decode core, given `kv_transfer_params` with `do_remote_prefill`, fetches the prefill core's
 * metadata once, READs the remote blocks into the blocks it allocated, checks every block's
 * fingerprint against its own prompt, and notifies the prefill side with the request id, as
 * NixlConnector does. The request waits for the real transfer. Without NIXL the engine keeps its
 * timing model (the caller says so once).
 *
 * The side channel is a plain TCP answer (4-byte length, then JSON), not vLLM's ZMQ/msgpack
 * handshake: only mockers talk to it.
 */
import { createServer, connect, type Server } from "node:net";
import { NixlAgent, type NixlRegistration } from "../nixl/index.js";
import type { KvTransferHooks } from "./engine-core.js";
import { Family, observe, type VllmMetrics } from "./metrics.js";

/** Llama-3.1-8B's 2 MiB per 16-token block (bf16, 32 layers, 8 KV heads of 128), scaled by 1/256. */
export const DEFAULT_NIXL_BLOCK_BYTES = 8192;
const MAX_SIDE_CHANNEL_BYTES = 1 << 20;
const PULL_TIMEOUT_MS = 30_000;

export interface NixlKvMetrics {
  xferTime: Family;
  bytes: Family;
  descriptors: Family;
  failed: Family;
  blocksPulled: Family;
  blocksVerified: Family;
  labels: string[];
}

/** vLLM's NixlConnector metric families (NixlPromMetrics) and kvroute's block counts, added to the mocker's registry. */
export function nixlKvFamilies(metrics: VllmMetrics): Omit<NixlKvMetrics, "labels"> {
  const L = ["model_name", "engine"];
  const add = (name: string, help: string, kind: "counter" | "histogram", buckets: number[] = []) => {
    const f = new Family(name, help, kind, L, buckets);
    metrics.families.push(f);
    return f;
  };
  return {
    xferTime: add("vllm:nixl_xfer_time_seconds", "Histogram of transfer duration for NIXL KV Cache transfers.", "histogram", [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5]),
    bytes: add("vllm:nixl_bytes_transferred", "Histogram of bytes transferred per NIXL KV Cache transfers.", "histogram", [2 ** 12, 2 ** 14, 2 ** 16, 2 ** 18, 2 ** 20, 2 ** 22, 2 ** 24, 2 ** 26, 2 ** 28]),
    descriptors: add("vllm:nixl_num_descriptors", "Histogram of number of descriptors per NIXL KV Cache transfers.", "histogram", [1, 4, 16, 64, 256, 1024, 4096]),
    failed: add("vllm:nixl_num_failed_transfers", "Number of failed NIXL KV Cache transfers.", "counter"),
    blocksPulled: add("kvroute_mock_nixl_blocks_pulled", "KV blocks this decode engine pulled over NIXL instead of computing them.", "counter"),
    blocksVerified: add("kvroute_mock_nixl_blocks_verified", "Pulled KV blocks whose bytes matched the prompt's KV.", "counter"),
  };
}

export interface NixlKvOptions {
  engineId: string;
  rank: number;
  numBlocks: number;
  blockBytes: number;
  sideChannelHost: string;
  sideChannelPort: number;
  libDir?: string;
  log: (message: string) => void;
  metrics: NixlKvMetrics;
}

interface Peer {
  agent: string;
  base: bigint;
  blockBytes: number;
  numBlocks: number;
}

/** FNV-1a of a block's tokens (and its index), as 4 bytes repeated over the block. */
export function blockFingerprint(tokens: Uint32Array, block: number, blockSize: number, promptLen: number): number {
  let h = (0x811c9dc5 ^ block) >>> 0;
  const end = Math.min((block + 1) * blockSize, promptLen);
  for (let i = block * blockSize; i < end; i++) {
    h ^= tokens[i]!;
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h;
}

export class NixlKv implements KvTransferHooks {
  private readonly pending = new Map<string, Promise<Peer>>();

  private constructor(
    private readonly options: NixlKvOptions,
    private readonly agent: NixlAgent,
    private readonly pool: Buffer,
    private readonly registration: NixlRegistration,
    private readonly server: Server,
  ) {}

  /** Registers the pool and opens the side channel; throws (typed) when NIXL is unavailable. */
  static async start(options: NixlKvOptions): Promise<NixlKv> {
    const agent = NixlAgent.create(`${options.engineId}-r${options.rank}-${process.pid}`, options.libDir ? { libDir: options.libDir } : {});
    try {
      // Not zeroed: pages are only touched by the blocks prefills write (a large pool costs address space, not memory).
      const pool = Buffer.allocUnsafeSlow(options.numBlocks * options.blockBytes);
      const registration = agent.registerBuffer(pool);
      const hello = JSON.stringify({
        engineId: options.engineId,
        agentMetadata: agent.localMetadata().toString("base64"),
        base: registration.addr.toString(),
        blockBytes: options.blockBytes,
        numBlocks: options.numBlocks,
      });
      const frame = Buffer.alloc(4 + Buffer.byteLength(hello));
      frame.writeUInt32BE(frame.length - 4, 0);
      frame.write(hello, 4);
      const server = createServer((socket) => {
        socket.on("error", () => {});
        socket.end(frame);
      });
      await new Promise<void>((resolve, reject) => {
        server.once("error", reject);
        server.listen(options.sideChannelPort + options.rank, options.sideChannelHost, () => resolve());
      });
      return new NixlKv(options, agent, pool, registration, server);
    } catch (err) {
      agent.close();
      throw err;
    }
  }

  /** Prefill side: the request's blocks now hold its KV. */
  produced(blocks: readonly number[], tokens: Uint32Array, promptLen: number, blockSize: number): void {
    const { blockBytes, numBlocks } = this.options;
    const pattern = Buffer.alloc(4);
    for (let i = 0; i < blocks.length && i * blockSize < promptLen; i++) {
      const b = blocks[i]!;
      if (b < 0 || b >= numBlocks) continue;
      pattern.writeUInt32LE(blockFingerprint(tokens, i, blockSize, promptLen));
      this.pool.fill(pattern, b * blockBytes, (b + 1) * blockBytes);
    }
  }

  /**
   * Decode side: pulls the prompt blocks from `firstBlock` on into `localBlocks`. Resolves true once
   * the bytes are in and checked; false (counted, logged) when the pull failed.
   */
  async pull(params: Record<string, unknown> | null, localBlocks: readonly number[], firstBlock: number, tokens: Uint32Array, promptLen: number, blockSize: number): Promise<boolean> {
    const m = this.options.metrics;
    try {
      if (params === null) throw new Error("no kv_transfer_params");
      const ids = params["remote_block_ids"];
      const remoteIds = (Array.isArray(ids) && Array.isArray(ids[0]) ? ids[0] : ids) as unknown;
      if (!Array.isArray(remoteIds) || !remoteIds.every((b) => Number.isInteger(b) && b >= 0)) throw new Error("remote_block_ids is not a list of block ids");
      const peer = await this.peer(String(params["remote_host"]), Number(params["remote_port"]));
      const { blockBytes } = this.options;
      if (peer.blockBytes !== blockBytes) throw new Error(`remote blocks are ${peer.blockBytes} bytes, local ${blockBytes}`);
      const count = Math.min(localBlocks.length, remoteIds.length, Math.ceil(promptLen / blockSize)) - firstBlock;
      if (count <= 0) return true;
      const local = [];
      const remote = [];
      for (let i = firstBlock; i < firstBlock + count; i++) {
        const r = remoteIds[i] as number;
        if (r >= peer.numBlocks) throw new Error(`remote block ${r} is outside the peer's ${peer.numBlocks} blocks`);
        local.push(this.registration.region(localBlocks[i]! * blockBytes, blockBytes));
        remote.push({ addr: peer.base + BigInt(r * blockBytes), length: blockBytes });
      }
      const requestId = String(params["remote_request_id"] ?? "");
      const result = await this.agent.read({ mem: "DRAM", regions: local }, { mem: "DRAM", regions: remote }, peer.agent, {
        notification: requestId,
        timeoutMs: PULL_TIMEOUT_MS,
      });
      let verified = 0;
      for (let i = firstBlock; i < firstBlock + count; i++) {
        if (this.pool.readUInt32LE(localBlocks[i]! * blockBytes) === blockFingerprint(tokens, i, blockSize, promptLen)) verified++;
      }
      observe(m.xferTime, m.xferTime.labels(...m.labels), result.seconds);
      observe(m.bytes, m.bytes.labels(...m.labels), result.bytes);
      observe(m.descriptors, m.descriptors.labels(...m.labels), count);
      m.blocksPulled.labels(...m.labels).value += count;
      m.blocksVerified.labels(...m.labels).value += verified;
      if (verified !== count) this.options.log(`NIXL pull of ${requestId}: ${count - verified} of ${count} blocks did not hold the prompt's KV`);
      return true;
    } catch (err) {
      m.failed.labels(...m.labels).value += 1;
      this.options.log(`NIXL pull failed (${err instanceof Error ? err.message : String(err)}); using the timing model for this request`);
      return false;
    }
  }

  /** A prefill core's metadata, fetched from its side channel once and loaded into the agent. */
  private peer(host: string, port: number): Promise<Peer> {
    const key = `${host}:${port}`;
    let p = this.pending.get(key);
    if (!p) {
      p = fetchSideChannel(host, port).then((hello) => ({
        agent: this.agent.loadRemoteMetadata(Buffer.from(String(hello["agentMetadata"]), "base64")),
        base: BigInt(String(hello["base"])),
        blockBytes: Number(hello["blockBytes"]),
        numBlocks: Number(hello["numBlocks"]),
      }));
      this.pending.set(key, p);
      p.catch(() => this.pending.delete(key));
    }
    return p;
  }

  async close(): Promise<void> {
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    this.agent.close();
  }
}

function fetchSideChannel(host: string, port: number): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host, port });
    const chunks: Buffer[] = [];
    let size = 0;
    socket.setTimeout(10_000, () => socket.destroy(new Error(`side channel ${host}:${port} timed out`)));
    socket.on("data", (d: Buffer) => {
      size += d.length;
      if (size > MAX_SIDE_CHANNEL_BYTES) socket.destroy(new Error("side channel answer too large"));
      else chunks.push(d);
    });
    socket.on("error", reject);
    socket.on("end", () => {
      try {
        const all = Buffer.concat(chunks);
        const len = all.readUInt32BE(0);
        if (len !== all.length - 4) throw new Error("side channel answer truncated");
        resolve(JSON.parse(all.subarray(4).toString("utf8")) as Record<string, unknown>);
      } catch (err) {
        reject(err);
      }
    });
  });
}
