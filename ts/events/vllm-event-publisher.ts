/**
 * vLLM's KV-event publisher (vllm/distributed/kv_events.py, ZmqEventPublisher), byte for byte on
 * the wire, for the mocker engine and for tests (docs/vllm-kv-events.md, sections 5, 6 and 8):
 *
 * - a PUB socket sending `[topic, seq (u64 BE), payload]`, seq 0, 1, 2... per publisher; a
 *   subscriber past the high-water mark loses messages (and sees a seq gap), as with vLLM;
 * - a ring of the last `bufferSteps` (seq, payload) pairs, served by a ROUTER replay socket:
 *   request `[id, "", start_seq]` (exactly 3 frames, else ignored), reply one message per buffered
 *   batch with seq >= start_seq, then the end marker, in the layout of the chosen release;
 * - the data-parallel port offset (endpointForRank) and bind-or-connect rule of vLLM.
 *
 * Payload encoding is the caller's (ts/events/codec.ts).
 */
import { InvalidConfigError } from "../errors.js";
import { PubSocket, type PubSocketStats } from "./zmtp/pub-socket.js";
import { RouterSocket } from "./zmtp/router-socket.js";
import type { ZmtpSocketOptions } from "./zmtp/socket.js";

/** The seq of the replay end marker: `(-1).to_bytes(8, "big", signed=True)`. */
export const REPLAY_END_SEQ: Buffer = Buffer.alloc(8, 0xff);

/**
 * Replay reply layout: "v0.26" (vLLM 0.26.0+) `["", topic, seq, payload]` and end marker
 * `["", "", END, ""]`; "v0.9" (0.9.0 - 0.25.1) `["", seq, payload]` and `["", END, ""]`
 * (as a DEALER sees them, after the ROUTER consumed the identity frame).
 */
export type ReplayLayout = "v0.26" | "v0.9";

export function encodeSeq(seq: bigint): Buffer {
  const b = Buffer.allocUnsafe(8);
  b.writeBigUInt64BE(seq);
  return b;
}

/**
 * vLLM's `offset_endpoint_port` (0.31+): rank 0 unchanged; an endpoint containing "inproc" gets
 * `_dp<rank>`; one containing "tcp" gets port + rank (port 0 stays 0); anything else throws.
 */
export function endpointForRank(endpoint: string, dpRank: number): string {
  if (!Number.isInteger(dpRank) || dpRank < 0) throw new InvalidConfigError(`invalid data-parallel rank ${dpRank}`);
  if (!endpoint || dpRank === 0) return endpoint;
  if (endpoint.includes("inproc")) return `${endpoint}_dp${dpRank}`;
  if (endpoint.includes("tcp")) {
    const colon = endpoint.lastIndexOf(":");
    const portText = endpoint.slice(colon + 1).trim();
    const port = Number(portText);
    if (colon < 0 || !/^\d+$/.test(portText)) throw new InvalidConfigError(`invalid port in endpoint ${endpoint}`);
    return port === 0 ? endpoint : `${endpoint.slice(0, colon)}:${port + dpRank}`;
  }
  throw new InvalidConfigError(`Invalid endpoint: must contain 'inproc' or 'tcp' (${endpoint}, rank ${dpRank})`);
}

/** vLLM binds its PUB when the endpoint has `*` or `::` or is ipc/inproc, and connects otherwise. */
export function isBindEndpoint(endpoint: string): boolean {
  return (
    endpoint.includes("*") ||
    endpoint.includes("::") ||
    endpoint.startsWith("ipc://") ||
    endpoint.startsWith("inproc://")
  );
}

export interface VllmEventPublisherOptions {
  /** PUB endpoint before the rank offset. Default "tcp://*:5557". */
  endpoint?: string;
  /** ROUTER replay endpoint before the rank offset (always bound); none by default. */
  replayEndpoint?: string | null;
  /** Frame-0 topic. Default "". */
  topic?: string;
  /** Batches kept for replay. Default 10000. */
  bufferSteps?: number;
  /** PUB send high-water mark per subscriber. Default 100000. */
  hwm?: number;
  /** Offsets both endpoints (endpointForRank). Default 0. */
  dataParallelRank?: number;
  /** Default "v0.26" (the newest). */
  replayLayout?: ReplayLayout;
  /** Bind (true) or connect (false) the PUB; default vLLM's rule, isBindEndpoint(endpoint). */
  bind?: boolean;
  /** Transport tuning for both sockets (the high-water marks above take precedence). */
  socket?: ZmtpSocketOptions;
}

export interface VllmEventPublisherStats {
  /** Sequence numbers taken (published, dropped on purpose or skipped). */
  published: bigint;
  buffered: number;
  replayRequests: number;
  /** Requests without exactly 3 frames, ignored as vLLM does. */
  invalidReplayRequests: number;
  pub: PubSocketStats;
}

/** The last `capacity` (seq, payload) pairs, oldest first. */
class ReplayRing {
  private readonly seqs: bigint[] = [];
  private readonly payloads: Buffer[] = [];
  private start = 0;

  constructor(private readonly capacity: number) {}

  get size(): number {
    return this.seqs.length;
  }

  push(seq: bigint, payload: Buffer): void {
    if (this.capacity === 0) return;
    if (this.seqs.length < this.capacity) {
      this.seqs.push(seq);
      this.payloads.push(payload);
      return;
    }
    this.seqs[this.start] = seq;
    this.payloads[this.start] = payload;
    this.start = (this.start + 1) % this.capacity;
  }

  *entries(): Generator<[bigint, Buffer]> {
    for (let i = 0; i < this.seqs.length; i++) {
      const at = (this.start + i) % this.seqs.length;
      yield [this.seqs[at] as bigint, this.payloads[at] as Buffer];
    }
  }
}

const EMPTY = Buffer.alloc(0);

export class VllmEventPublisher {
  /** The PUB endpoint, as bound (actual port) or connected. */
  readonly endpoint: string;
  /** The replay endpoint as bound, or null. */
  readonly replayEndpoint: string | null;
  readonly topic: string;
  private readonly topicBytes: Buffer;
  private readonly ring: ReplayRing;
  private seq = 0n;
  private replayRequests = 0;
  private invalidReplayRequests = 0;
  private serving: Promise<void> = Promise.resolve();

  private constructor(
    private readonly pub: PubSocket,
    private readonly router: RouterSocket | null,
    endpoint: string,
    replayEndpoint: string | null,
    options: VllmEventPublisherOptions,
    private readonly layout: ReplayLayout,
  ) {
    this.endpoint = endpoint;
    this.replayEndpoint = replayEndpoint;
    this.topic = options.topic ?? "";
    this.topicBytes = Buffer.from(this.topic, "utf8");
    this.ring = new ReplayRing(options.bufferSteps ?? 10_000);
    if (router) this.serving = this.serveReplays(router);
  }

  /** Opens the sockets (binding or connecting as vLLM would) and returns a ready publisher. */
  static async start(options: VllmEventPublisherOptions = {}): Promise<VllmEventPublisher> {
    const rank = options.dataParallelRank ?? 0;
    const bufferSteps = options.bufferSteps ?? 10_000;
    if (!Number.isInteger(bufferSteps) || bufferSteps < 0) {
      throw new InvalidConfigError("bufferSteps must be an integer >= 0");
    }
    const layout = options.replayLayout ?? "v0.26";
    if (layout !== "v0.26" && layout !== "v0.9") throw new InvalidConfigError(`unknown replayLayout ${String(layout)}`);
    const endpoint = endpointForRank(options.endpoint ?? "tcp://*:5557", rank);
    const replayEndpoint = options.replayEndpoint ? endpointForRank(options.replayEndpoint, rank) : null;

    const pub = new PubSocket({ ...options.socket, sndHwm: options.hwm ?? 100_000 });
    let router: RouterSocket | null = null;
    try {
      let pubEndpoint = endpoint;
      if (options.bind ?? isBindEndpoint(endpoint)) pubEndpoint = await pub.bind(endpoint);
      else pub.connect(endpoint);
      let boundReplay: string | null = null;
      if (replayEndpoint) {
        // vLLM 0.33: room for a full replay plus its end marker.
        router = new RouterSocket({ ...options.socket, sndHwm: 2 * (bufferSteps + 1) });
        boundReplay = await router.bind(replayEndpoint);
      }
      return new VllmEventPublisher(pub, router, pubEndpoint, boundReplay, options, layout);
    } catch (err) {
      await pub.close();
      await router?.close();
      throw err;
    }
  }

  /** The seq the next publish() will use. */
  get nextSeq(): bigint {
    return this.seq;
  }

  /**
   * Publishes one encoded KVEventBatch and keeps it for replay; returns its seq.
   * `sendLive: false` only buffers it, as if every subscriber's high-water mark had dropped it
   * (a recoverable gap, for tests and the mocker).
   */
  publish(payload: Buffer, options: { sendLive?: boolean } = {}): bigint {
    const seq = this.seq++;
    if (options.sendLive ?? true) this.pub.send([this.topicBytes, encodeSeq(seq), payload]);
    this.ring.push(seq, payload);
    return seq;
  }

  /**
   * Takes a seq and neither sends nor buffers it, as vLLM does when a batch fails to encode: an
   * unrecoverable gap for subscribers.
   */
  skipSequence(): bigint {
    return this.seq++;
  }

  stats(): VllmEventPublisherStats {
    return {
      published: this.seq,
      buffered: this.ring.size,
      replayRequests: this.replayRequests,
      invalidReplayRequests: this.invalidReplayRequests,
      pub: this.pub.stats(),
    };
  }

  async close(): Promise<void> {
    await Promise.all([this.pub.close(), this.router?.close()]);
    await this.serving;
  }

  private async serveReplays(router: RouterSocket): Promise<void> {
    for await (const frames of router) {
      // vLLM: exactly [client_id, b"", start_seq]; anything else is logged and ignored.
      if (frames.length !== 3) {
        this.invalidReplayRequests++;
        continue;
      }
      this.replayRequests++;
      const [id, , startBytes] = frames as [Buffer, Buffer, Buffer];
      // int.from_bytes(frame, "big"): unsigned, any length.
      const start = startBytes.length === 0 ? 0n : BigInt(`0x${startBytes.toString("hex")}`);
      for (const [seq, payload] of this.ring.entries()) {
        if (seq < start) continue;
        const body = [encodeSeq(seq), payload];
        if (this.layout === "v0.26") body.unshift(this.topicBytes);
        router.send([id, EMPTY, ...body]);
      }
      router.send(this.layout === "v0.26" ? [id, EMPTY, EMPTY, REPLAY_END_SEQ, EMPTY] : [id, EMPTY, REPLAY_END_SEQ, EMPTY]);
    }
  }
}
