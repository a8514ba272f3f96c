/**
 * One ZMTP connection over one stream socket (TCP or Unix): greeting, NULL handshake, then
 * multipart messages and commands in both directions. A pipe knows nothing of routing; its owner
 * (a socket of some type) gets callbacks and decides.
 *
 * Invariants: `queued` counts messages handed to node:net and not yet flushed to the kernel; it
 * never exceeds `sndHwm` (send() refuses instead, so a slow peer costs at most sndHwm messages of
 * memory). The owner's onClose runs exactly once, after which the pipe neither calls back nor sends.
 */
import type { Socket } from "node:net";
import { ZmtpError } from "./errors.js";
import {
  decodeCommand,
  decodeProperties,
  encodeCommand,
  encodeGreeting,
  encodeProperties,
  FLAG_COMMAND,
  FLAG_MORE,
  FrameDecoder,
} from "./wire.js";

export type SocketType = "PUB" | "SUB" | "DEALER" | "ROUTER";

/** Which peer socket types each of ours accepts (ZMTP 3.1, section "Socket compatibility"). */
const COMPATIBLE: Record<SocketType, readonly string[]> = {
  PUB: ["SUB", "XSUB"],
  SUB: ["PUB", "XPUB"],
  DEALER: ["REP", "DEALER", "ROUTER"],
  ROUTER: ["REQ", "DEALER", "ROUTER"],
};

export interface PipeOptions {
  socketType: SocketType;
  /** Sent as the READY `Identity` property by DEALER and ROUTER sockets. */
  identity: Buffer;
  /** ZMTP minor version we announce: 1 (3.1, default) or 0 (3.0). */
  zmtpMinor: number;
  handshakeTimeoutMs: number;
  /** Bound of a message's bodies plus FRAME_OVERHEAD per frame; past it the pipe closes. */
  maxMessageSize: number;
  /** Bound of a message's frame count; past it the pipe closes. */
  maxFramesPerMessage: number;
  sndHwm: number;
  /** Send a PING this often once connected; 0 disables heartbeats. */
  heartbeatIvlMs: number;
  /** Close the pipe when nothing arrived for this long (with heartbeats on). */
  heartbeatTimeoutMs: number;
}

export interface PipeHandler {
  onReady(pipe: ZmtpPipe): void;
  onMessage(pipe: ZmtpPipe, frames: Buffer[]): void;
  /** SUBSCRIBE / CANCEL (ZMTP 3.1); heartbeats and READY are handled inside the pipe. */
  onCommand(pipe: ZmtpPipe, name: string, data: Buffer): void;
  onClose(pipe: ZmtpPipe, error: Error | undefined): void;
}

type State = "greeting" | "handshake" | "ready" | "closed";

/**
 * What a received frame costs beyond its body (the Buffer view and its slot in the message):
 * charged against maxMessageSize, so empty frames cannot grow a message for free.
 */
export const FRAME_OVERHEAD = 64;

export class ZmtpPipe {
  /** The endpoint this pipe was connected to, or bound at. */
  readonly endpoint: string;
  peerSocketType = "";
  /** The peer's READY `Identity` (empty when it sent none). */
  peerIdentity: Buffer = Buffer.alloc(0);
  /** The ZMTP minor version both sides speak: min(ours, peer's). */
  minor = 0;
  private queuedMessages = 0;
  private state: State = "greeting";
  private readonly decoder: FrameDecoder;
  private parts: Buffer[] = [];
  private partsSize = 0;
  private closeError: Error | undefined;
  private lastReceived = Date.now();
  /** The peer answered a PING: it does heartbeats, so its silence means it is gone. */
  private heardPong = false;
  private paused = false;
  private handshakeTimer: NodeJS.Timeout | undefined;
  private heartbeatTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly socket: Socket,
    endpoint: string,
    private readonly options: PipeOptions,
    private readonly handler: PipeHandler,
  ) {
    this.endpoint = endpoint;
    this.decoder = new FrameDecoder(options.maxMessageSize);
    socket.setNoDelay(true);
    socket.on("data", (chunk: Buffer) => this.onData(chunk));
    socket.on("error", (err) => {
      this.closeError ??= err;
    });
    socket.on("close", () => this.close(this.closeError));
    this.handshakeTimer = setTimeout(
      () => this.close(new ZmtpError("timeout", `ZMTP handshake with ${endpoint} timed out`)),
      options.handshakeTimeoutMs,
    );
    this.handshakeTimer.unref();
    socket.write(encodeGreeting(options.zmtpMinor));
  }

  /** Messages accepted by send() and not yet flushed to the kernel. */
  get queued(): number {
    return this.queuedMessages;
  }

  /** Bytes node:net holds for this peer. */
  get bufferedBytes(): number {
    return this.socket.writableLength;
  }

  /**
   * Queues one encoded message (see encodeMessage). Returns false, sending nothing, when the pipe
   * is not ready or holds `sndHwm` unflushed messages already.
   */
  send(chunks: readonly Buffer[]): boolean {
    if (this.state !== "ready" || this.queuedMessages >= this.options.sndHwm) return false;
    this.queuedMessages++;
    const last = chunks.length - 1;
    if (last > 0) this.socket.cork();
    chunks.forEach((c, i) => {
      if (i === last) this.socket.write(c, this.onFlushed);
      else this.socket.write(c);
    });
    if (last > 0) this.socket.uncork();
    return true;
  }

  /** Writes control traffic (e.g. a ZMTP 3.0 subscription message) regardless of the high-water mark. */
  sendControl(chunks: readonly Buffer[]): void {
    if (this.state === "ready") for (const c of chunks) this.socket.write(c);
  }

  /** Sends a command frame; commands bypass the high-water mark (they are few and small). */
  sendCommand(name: string, data?: Buffer): void {
    if (this.state === "ready") this.socket.write(encodeCommand(name, data));
  }

  /** Stops reading (backpressure); heartbeat timeouts are suspended meanwhile. */
  pause(): void {
    this.paused = true;
    this.socket.pause();
  }

  resume(): void {
    this.paused = false;
    this.lastReceived = Date.now();
    this.socket.resume();
  }

  /** Closes the connection now (unsent data is dropped); calls the owner's onClose once. */
  close(error?: Error): void {
    if (this.state === "closed") return;
    this.state = "closed";
    clearTimeout(this.handshakeTimer);
    clearInterval(this.heartbeatTimer);
    this.socket.destroy();
    this.parts = [];
    this.handler.onClose(this, error);
  }

  private readonly onFlushed = (): void => {
    this.queuedMessages--;
  };

  private onData(chunk: Buffer): void {
    if (this.state === "closed") return;
    this.lastReceived = Date.now();
    this.decoder.push(chunk);
    try {
      this.drain();
    } catch (err) {
      this.close(err instanceof Error ? err : new ZmtpError("protocol", String(err)));
    }
  }

  private drain(): void {
    if (this.state === "greeting") {
      const greeting = this.decoder.nextGreeting();
      if (!greeting) return;
      if (greeting.mechanism !== "NULL") {
        throw new ZmtpError("unsupported", `peer uses security mechanism ${greeting.mechanism}; only NULL is supported`);
      }
      this.minor = greeting.major > 3 ? this.options.zmtpMinor : Math.min(this.options.zmtpMinor, greeting.minor);
      this.state = "handshake";
      const props: Record<string, Buffer | string> = { "Socket-Type": this.options.socketType };
      if (this.options.socketType === "DEALER" || this.options.socketType === "ROUTER") {
        props.Identity = this.options.identity;
      }
      this.socket.write(encodeCommand("READY", encodeProperties(props)));
    }
    for (;;) {
      if ((this.state as State) === "closed") return;
      const frame = this.decoder.nextFrame();
      if (!frame) return;
      if (frame.flags & FLAG_COMMAND) this.onCommandFrame(frame.body);
      else this.onMessageFrame(frame.flags, frame.body);
    }
  }

  private onCommandFrame(body: Buffer): void {
    const { name, data } = decodeCommand(body);
    if (name === "ERROR") {
      const size = data[0] ?? 0;
      throw new ZmtpError("peer-error", `peer sent ERROR: ${data.toString("latin1", 1, 1 + size)}`);
    }
    if (this.state === "handshake") {
      if (name !== "READY") throw new ZmtpError("protocol", `expected READY, got ${name}`);
      this.onReady(decodeProperties(data));
      return;
    }
    if (this.parts.length > 0) throw new ZmtpError("protocol", "command frame inside a multipart message");
    if (name === "PING") {
      // PING: ttl (2 bytes) then up to 16 bytes of context, echoed back in PONG; a peer that
      // pings without reading gets no more PONGs once 1 MiB is waiting for it.
      if (this.socket.writableLength < 1 << 20) this.sendCommand("PONG", data.subarray(2, 18));
    } else if (name === "PONG") {
      this.heardPong = true;
    } else {
      this.handler.onCommand(this, name, data);
    }
  }

  private onReady(props: Map<string, Buffer>): void {
    const type = props.get("socket-type")?.toString("latin1") ?? "";
    if (!COMPATIBLE[this.options.socketType].includes(type)) {
      const reason = `socket type ${type || "(none)"} cannot talk to ${this.options.socketType}`;
      const text = Buffer.from(reason, "latin1").subarray(0, 255);
      this.socket.write(encodeCommand("ERROR", Buffer.concat([Buffer.from([text.length]), text])));
      throw new ZmtpError("incompatible", reason);
    }
    this.peerSocketType = type;
    this.peerIdentity = Buffer.from(props.get("identity") ?? Buffer.alloc(0));
    this.state = "ready";
    clearTimeout(this.handshakeTimer);
    this.startHeartbeats();
    this.handler.onReady(this);
  }

  private onMessageFrame(flags: number, body: Buffer): void {
    if (this.state !== "ready") throw new ZmtpError("protocol", "message frame before the handshake completed");
    this.partsSize += body.length + FRAME_OVERHEAD;
    if (this.partsSize > this.options.maxMessageSize) {
      throw new ZmtpError("too-large", `message exceeds maxMessageSize ${this.options.maxMessageSize} (bodies + ${FRAME_OVERHEAD} bytes a frame)`);
    }
    if (this.parts.length >= this.options.maxFramesPerMessage) {
      throw new ZmtpError("too-many-frames", `message exceeds maxFramesPerMessage ${this.options.maxFramesPerMessage}`);
    }
    this.parts.push(body);
    if (flags & FLAG_MORE) return;
    const frames = this.parts;
    this.parts = [];
    this.partsSize = 0;
    this.handler.onMessage(this, frames);
  }

  private startHeartbeats(): void {
    const { heartbeatIvlMs, heartbeatTimeoutMs } = this.options;
    if (heartbeatIvlMs <= 0) return;
    // PING's TTL (deciseconds) asks the peer to drop us too if we fall silent that long.
    const ping = Buffer.alloc(2);
    ping.writeUInt16BE(Math.min(0xffff, Math.ceil(heartbeatTimeoutMs / 100)));
    this.heartbeatTimer = setInterval(() => {
      // PING is ZMTP 3.1; a 3.0 peer is only held to the timeout once it has answered one.
      const enforce = (this.minor >= 1 || this.heardPong) && !this.paused;
      if (enforce && Date.now() - this.lastReceived > heartbeatTimeoutMs) {
        this.close(new ZmtpError("timeout", `no traffic from ${this.endpoint} for ${heartbeatTimeoutMs} ms`));
      } else {
        this.sendCommand("PING", ping);
      }
    }, heartbeatIvlMs);
    this.heartbeatTimer.unref();
  }
}
