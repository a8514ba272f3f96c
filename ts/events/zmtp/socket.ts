/**
 * What every ZMTP socket shares, whatever its type: binding (a listener accepting pipes) and
 * connecting (one pipe per endpoint, redialled with exponential backoff when it drops), the set
 * of ready pipes, and closing. Socket types (pub-socket.ts, sub-socket.ts, ...) only route
 * messages between the application and these pipes, as libzmq's socket types do.
 */
import { EventEmitter } from "node:events";
import { unlinkSync } from "node:fs";
import net from "node:net";
import { InvalidConfigError } from "../../errors.js";
import { formatTcpEndpoint, listenHost, parseEndpoint, type Endpoint } from "./endpoint.js";
import { ZmtpError } from "./errors.js";
import { Inbox, type ReceiveOptions } from "./inbox.js";
import { ZmtpPipe, type PipeHandler, type PipeOptions, type SocketType } from "./pipe.js";

export interface ZmtpSocketOptions {
  /** Outgoing messages held per peer before further ones are dropped (PUB, ROUTER) or refused. Default 1000. */
  sndHwm?: number;
  /** Incoming messages held before the socket stops reading from the network. Default 1000. */
  rcvHwm?: number;
  /**
   * Largest message accepted from a peer, in bytes: its bodies plus FRAME_OVERHEAD (64) a frame.
   * A larger one is dropped and closes the pipe (a connecting socket redials). Default 64 MiB.
   */
  maxMessageSize?: number;
  /** Most frames in one message from a peer; more drops it and closes the pipe. Default 1024. */
  maxFramesPerMessage?: number;
  /** PUB: most distinct subscriptions one peer may hold (their bytes count against maxMessageSize too). Default 10000. */
  maxSubscriptions?: number;
  /** Default 10 s. */
  handshakeTimeoutMs?: number;
  /** First redial delay after a connection fails or drops. Default 100 ms. */
  reconnectIvlMs?: number;
  /** Redial delays double up to this. Default 5 s. */
  reconnectIvlMaxMs?: number;
  /** Send ZMTP PINGs this often; 0 (default) disables heartbeats. */
  heartbeatIvlMs?: number;
  /** Drop a pipe that has been silent this long. Default 3 x heartbeatIvlMs. */
  heartbeatTimeoutMs?: number;
  /** ZMTP version announced: 3.1 (default) or 3.0. */
  zmtpMinor?: 0 | 1;
  /** DEALER/ROUTER identity sent to peers (1-255 bytes, not starting with a zero byte). */
  identity?: Buffer | string;
}

export interface PeerInfo {
  endpoint: string;
  socketType: string;
  identity: Buffer;
  /** ZMTP minor version in use with this peer (3.0 peers get 3.0-style subscriptions). */
  zmtpMinor: number;
}

export interface DisconnectInfo {
  endpoint: string;
  error: Error | undefined;
}

export interface ZmtpSocketEvents {
  /** A pipe finished its handshake. */
  connected: [PeerInfo];
  /** A pipe that had finished its handshake went away (a connecting socket redials it). */
  disconnected: [DisconnectInfo];
}

interface Dialer {
  endpoint: Endpoint;
  attempt: number;
  timer?: NodeJS.Timeout;
  pipe?: ZmtpPipe;
}

function nonNegative(name: string, value: number | undefined, fallback: number): number {
  const v = value ?? fallback;
  if (!Number.isFinite(v) || v < 0) throw new InvalidConfigError(`${name} must be a non-negative number, got ${value}`);
  return v;
}

/** High-water marks: at least 1 (libzmq's 0 = unlimited is deliberately not offered). */
function atLeastOne(name: string, value: number | undefined, fallback: number): number {
  const v = value ?? fallback;
  if (!Number.isInteger(v) || v < 1) throw new InvalidConfigError(`${name} must be an integer >= 1, got ${value}`);
  return v;
}

export abstract class ZmtpSocket extends EventEmitter<ZmtpSocketEvents> {
  /** Pipes that completed their handshake and were accepted by the socket type. */
  protected readonly pipes = new Set<ZmtpPipe>();
  protected readonly pipeOptions: PipeOptions;
  private readonly everyPipe = new Set<ZmtpPipe>();
  private readonly servers: { server: net.Server; endpoint: Endpoint }[] = [];
  private readonly dialers: Dialer[] = [];
  private readonly reconnectIvlMs: number;
  private readonly reconnectIvlMaxMs: number;
  private receivePaused = false;
  private isClosed = false;
  /** Pipes closed on a ZmtpError (limit, protocol, timeout), by its reason. */
  private readonly peerErrors = new Map<string, number>();

  protected constructor(
    readonly type: SocketType,
    options: ZmtpSocketOptions = {},
  ) {
    super();
    const identity = Buffer.from(options.identity ?? "");
    if (identity.length > 255 || identity[0] === 0) {
      throw new InvalidConfigError("identity must be 1-255 bytes and must not start with a zero byte");
    }
    const heartbeatIvlMs = nonNegative("heartbeatIvlMs", options.heartbeatIvlMs, 0);
    this.pipeOptions = {
      socketType: type,
      identity,
      zmtpMinor: options.zmtpMinor ?? 1,
      handshakeTimeoutMs: nonNegative("handshakeTimeoutMs", options.handshakeTimeoutMs, 10_000),
      maxMessageSize: nonNegative("maxMessageSize", options.maxMessageSize, 64 * 1024 * 1024),
      maxFramesPerMessage: atLeastOne("maxFramesPerMessage", options.maxFramesPerMessage, 1024),
      sndHwm: atLeastOne("sndHwm", options.sndHwm, 1000),
      heartbeatIvlMs,
      heartbeatTimeoutMs: nonNegative("heartbeatTimeoutMs", options.heartbeatTimeoutMs, 3 * heartbeatIvlMs),
    };
    this.reconnectIvlMs = nonNegative("reconnectIvlMs", options.reconnectIvlMs, 100);
    this.reconnectIvlMaxMs = Math.max(this.reconnectIvlMs, nonNegative("reconnectIvlMaxMs", options.reconnectIvlMaxMs, 5000));
  }

  get closed(): boolean {
    return this.isClosed;
  }

  /** Peers with a completed handshake. */
  get peerCount(): number {
    return this.pipes.size;
  }

  /**
   * Connections closed because of the peer, by ZmtpError reason (`too-large`, `too-many-frames`,
   * `protocol`, `timeout`, ...): what it sent was dropped and it was disconnected.
   */
  peerErrorCounts(): Record<string, number> {
    return Object.fromEntries(this.peerErrors);
  }

  /**
   * Listens at `endpoint` and accepts any number of peers. Resolves with the endpoint actually
   * bound (with the port chosen by the system for `:0` or `:*`).
   */
  async bind(endpoint: string): Promise<string> {
    this.assertOpen();
    const ep = parseEndpoint(endpoint);
    let bound = endpoint;
    const server = net.createServer((sock) => {
      if (this.isClosed) sock.destroy();
      else this.addPipe(sock, bound, undefined);
    });
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      if (ep.transport === "tcp") {
        server.listen({ host: listenHost(ep.host), port: ep.port, exclusive: true }, resolve);
      } else {
        // libzmq removes a stale socket file before binding an ipc endpoint.
        if (!ep.path.startsWith("\0")) {
          try {
            unlinkSync(ep.path);
          } catch {
            // nothing to remove
          }
        }
        server.listen({ path: ep.path, exclusive: true }, resolve);
      }
    });
    server.on("error", () => {
      // Accept errors (e.g. EMFILE) leave the listener running; the peer retries.
    });
    const address = server.address();
    if (ep.transport === "tcp" && address && typeof address === "object") {
      bound = formatTcpEndpoint(address.address, address.port);
    }
    this.servers.push({ server, endpoint: ep });
    if (this.isClosed) server.close();
    return bound;
  }

  /** Connects to `endpoint` in the background, redialling with backoff whenever the pipe drops. */
  connect(endpoint: string): void {
    this.assertOpen();
    const dialer: Dialer = { endpoint: parseEndpoint(endpoint), attempt: 0 };
    this.dialers.push(dialer);
    this.dial(dialer);
  }

  /** Closes every pipe and listener now; messages not yet sent are dropped. */
  async close(): Promise<void> {
    if (this.isClosed) return;
    this.isClosed = true;
    for (const d of this.dialers) clearTimeout(d.timer);
    for (const p of [...this.everyPipe]) p.close();
    await Promise.all(
      this.servers.map(
        ({ server, endpoint }) =>
          new Promise<void>((resolve) => {
            server.close(() => resolve());
            if (endpoint.transport === "ipc" && !endpoint.path.startsWith("\0")) {
              try {
                unlinkSync(endpoint.path);
              } catch {
                // already gone
              }
            }
          }),
      ),
    );
  }

  /** Accept (true) or refuse (false: the pipe is closed) a pipe that completed its handshake. */
  protected abstract attach(pipe: ZmtpPipe): boolean;
  protected abstract detach(pipe: ZmtpPipe): void;
  protected abstract onMessage(pipe: ZmtpPipe, frames: Buffer[]): void;
  protected onCommand(_pipe: ZmtpPipe, _name: string, _data: Buffer): void {
    // Most socket types have no use for SUBSCRIBE / CANCEL.
  }

  /** Stops (or resumes) reading from every pipe: the receive side's backpressure. */
  protected setReceivePaused(paused: boolean): void {
    this.receivePaused = paused;
    for (const p of this.pipes) {
      if (paused) p.pause();
      else p.resume();
    }
  }

  protected assertOpen(): void {
    if (this.isClosed) throw new ZmtpError("closed", `${this.type} socket is closed`);
  }

  private dial(dialer: Dialer): void {
    dialer.timer = undefined;
    if (this.isClosed) return;
    const ep = dialer.endpoint;
    const sock = ep.transport === "tcp" ? net.connect({ host: ep.host, port: ep.port }) : net.connect({ path: ep.path });
    dialer.pipe = this.addPipe(sock, ep.endpoint, dialer);
  }

  private redial(dialer: Dialer): void {
    dialer.pipe = undefined;
    if (this.isClosed) return;
    const base = Math.min(this.reconnectIvlMaxMs, this.reconnectIvlMs * 2 ** Math.min(dialer.attempt, 30));
    dialer.attempt++;
    dialer.timer = setTimeout(() => this.dial(dialer), base * (0.75 + Math.random() * 0.5));
  }

  private addPipe(sock: net.Socket, endpoint: string, dialer: Dialer | undefined): ZmtpPipe {
    const handler: PipeHandler = {
      onReady: (pipe) => {
        if (!this.attach(pipe)) {
          pipe.close(new ZmtpError("protocol", `${this.type} refused a peer from ${endpoint}`));
          return;
        }
        if (dialer) dialer.attempt = 0;
        this.pipes.add(pipe);
        if (this.receivePaused) pipe.pause();
        this.emit("connected", {
          endpoint,
          socketType: pipe.peerSocketType,
          identity: pipe.peerIdentity,
          zmtpMinor: pipe.minor,
        });
      },
      onMessage: (pipe, frames) => this.onMessage(pipe, frames),
      onCommand: (pipe, name, data) => this.onCommand(pipe, name, data),
      onClose: (pipe, error) => {
        this.everyPipe.delete(pipe);
        if (error instanceof ZmtpError && error.reason !== "closed") {
          this.peerErrors.set(error.reason, (this.peerErrors.get(error.reason) ?? 0) + 1);
        }
        if (this.pipes.delete(pipe)) {
          this.detach(pipe);
          this.emit("disconnected", { endpoint, error });
        }
        if (dialer) this.redial(dialer);
      },
    };
    const pipe = new ZmtpPipe(sock, endpoint, this.pipeOptions, handler);
    this.everyPipe.add(pipe);
    return pipe;
  }
}

/** A socket the application reads from: a bounded inbox, read with receive() or `for await`. */
export abstract class ZmtpReceivingSocket extends ZmtpSocket implements AsyncIterable<Buffer[]> {
  protected readonly inbox: Inbox<Buffer[]>;

  protected constructor(type: SocketType, options: ZmtpSocketOptions = {}) {
    super(type, options);
    this.inbox = new Inbox<Buffer[]>(atLeastOne("rcvHwm", options.rcvHwm, 1000), (p) => this.setReceivePaused(p));
  }

  /** The next message (all its frames); null after `timeoutMs`; rejects with reason "closed" once closed. */
  receive(options?: ReceiveOptions): Promise<Buffer[] | null> {
    return this.inbox.receive(options);
  }

  /** Messages until the socket is closed. */
  [Symbol.asyncIterator](): AsyncIterator<Buffer[]> {
    return this.inbox[Symbol.asyncIterator]();
  }

  override async close(): Promise<void> {
    this.inbox.close();
    await super.close();
  }
}
