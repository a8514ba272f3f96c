/**
 * `NixlAgent`: NIXL's transfer agent (crates/kvroute-nixl) for Node. Memory is registered,
 * metadata leaves and arrives as bytes (so it can travel over etcd, NATS or HTTP), and READ/WRITE
 * transfers are Promises posted and polled on the libuv thread pool, never on the event loop.
 * The library is loaded at run time: without it, creating an agent throws NixlUnavailableError
 * (`KVR_NIXL_UNAVAILABLE`) and nothing else changes.
 */
import { callNative, fromNative, InvalidInputError } from "../errors.js";
import { native } from "../native.js";
import type { NativeNixlAgent } from "../../index.js";

export type NixlMemType = "DRAM" | "VRAM";

/** A span of registered memory: host address (DRAM) or device pointer (VRAM). */
export interface NixlRegion {
  addr: bigint;
  length: number;
  devId?: number;
}

/** Memory on one side of a transfer: regions of one memory type on one device. */
export interface NixlDescList {
  mem: NixlMemType;
  regions: readonly NixlRegion[];
}

export interface NixlAgentOptions {
  /** Backend plugin; default "UCX". */
  backend?: string;
  /** Folder with libnixl_capi.so or an unpacked nixl wheel; default KVROUTE_NIXL_LIB_DIR, then the system path. */
  libDir?: string;
}

export interface NixlTransferOptions {
  /** Delivered to the remote agent once the transfer completes. */
  notification?: Uint8Array | string;
  /** Reject (and release the transfer) after this long. */
  timeoutMs?: number;
  /** Abort releases the transfer and rejects. */
  signal?: AbortSignal;
}

export interface NixlTransferResult {
  bytes: number;
  seconds: number;
}

export interface NixlNotification {
  agent: string;
  message: Buffer;
}

/** A registration: its id and the region it covers (hand `region` to the peer for its transfers). */
export class NixlRegistration {
  constructor(
    readonly id: number,
    readonly mem: NixlMemType,
    readonly addr: bigint,
    readonly length: number,
    readonly devId: number,
  ) {}

  /** A sub-span of the registration (e.g. one KV block). */
  region(offset = 0, length = this.length - offset): NixlRegion {
    if (!Number.isInteger(offset) || !Number.isInteger(length) || offset < 0 || length < 1 || offset + length > this.length) {
      throw new InvalidInputError(`region [${offset}, ${offset + length}) is outside the registration of ${this.length} bytes`);
    }
    return { addr: this.addr + BigInt(offset), length, devId: this.devId };
  }

  /** The whole registration as one side of a transfer. */
  descList(offset = 0, length = this.length - offset): NixlDescList {
    return { mem: this.mem, regions: [this.region(offset, length)] };
  }
}

export interface NixlAvailability {
  available: boolean;
  library?: string;
  reason?: string;
}

const MAX_REGION = 0xffff_ffff;

function encode(list: NixlDescList, side: string): { addrs: BigUint64Array; lengths: Uint32Array; devId: number } {
  if (list.mem !== "DRAM" && list.mem !== "VRAM") throw new InvalidInputError(`${side}: memory type must be DRAM or VRAM`);
  const devIds = new Set(list.regions.map((r) => r.devId ?? 0));
  if (devIds.size > 1) throw new InvalidInputError(`${side}: regions of one transfer side share one device`);
  const addrs = new BigUint64Array(list.regions.length);
  const lengths = new Uint32Array(list.regions.length);
  list.regions.forEach((r, i) => {
    if (!Number.isInteger(r.length) || r.length < 1 || r.length > MAX_REGION) {
      throw new InvalidInputError(`${side}: region ${i} length must be an integer in [1, ${MAX_REGION}]`);
    }
    addrs[i] = r.addr;
    lengths[i] = r.length;
  });
  return { addrs, lengths, devId: [...devIds][0] ?? 0 };
}

function toBuffer(bytes: Uint8Array | ArrayBuffer | string): Buffer {
  if (typeof bytes === "string") return Buffer.from(bytes, "utf8");
  if (bytes instanceof ArrayBuffer) return Buffer.from(bytes);
  return Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

export class NixlAgent {
  readonly #native: NativeNixlAgent;
  #closed = false;

  private constructor(agent: NativeNixlAgent) {
    this.#native = agent;
  }

  /** Creates an agent; throws NixlUnavailableError when NIXL cannot be loaded. */
  static create(name: string, options: NixlAgentOptions = {}): NixlAgent {
    return new NixlAgent(callNative(() => native.NativeNixlAgent.create(name, options)));
  }

  /** Whether NIXL loads (from `libDir`, KVROUTE_NIXL_LIB_DIR or the system path), and why not. */
  static availability(libDir?: string): NixlAvailability {
    const a = native.nixlAvailability(libDir);
    return { available: a.available, ...(a.library ? { library: a.library } : {}), ...(a.reason ? { reason: a.reason } : {}) };
  }

  get name(): string {
    return callNative(() => this.#native.name);
  }

  /** The libnixl_capi.so this agent uses. */
  get library(): string {
    return callNative(() => this.#native.library);
  }

  /**
   * Registers host memory. The memory is shared, not copied: NIXL reads and writes it in place,
   * and it stays pinned (not collected) until deregistered or the agent is closed.
   */
  registerBuffer(bytes: Uint8Array | ArrayBuffer): NixlRegistration {
    const buf = toBuffer(bytes);
    if (buf.byteLength === 0) throw new InvalidInputError("cannot register an empty buffer");
    const r = callNative(() => this.#native.registerBuffer(buf));
    return new NixlRegistration(r.id, "DRAM", BigInt(r.addr), r.length, r.devId);
  }

  /** Registers device memory the caller owns (e.g. a CUDA pointer): it must outlive the registration. */
  registerVram(pointer: bigint, length: number, devId = 0): NixlRegistration {
    const r = callNative(() => this.#native.registerMemory("VRAM", pointer, length, devId));
    return new NixlRegistration(r.id, "VRAM", BigInt(r.addr), r.length, r.devId);
  }

  deregister(registration: NixlRegistration | number): void {
    const id = typeof registration === "number" ? registration : registration.id;
    callNative(() => this.#native.deregister(id));
  }

  /** This agent's metadata (connection info and registrations) for peers. */
  localMetadata(): Buffer {
    return callNative(() => this.#native.localMetadata());
  }

  /** Loads a peer's metadata; returns its agent name (the `remoteAgent` of transfers). */
  loadRemoteMetadata(metadata: Uint8Array | ArrayBuffer): string {
    const buf = toBuffer(metadata);
    return callNative(() => this.#native.loadRemoteMetadata(buf));
  }

  forgetRemote(remoteAgent: string): void {
    callNative(() => this.#native.forgetRemote(remoteAgent));
  }

  /** Pulls remote memory into local memory. */
  read(local: NixlDescList, remote: NixlDescList, remoteAgent: string, options?: NixlTransferOptions): Promise<NixlTransferResult> {
    return this.transfer("READ", local, remote, remoteAgent, options);
  }

  /** Pushes local memory into remote memory. */
  write(local: NixlDescList, remote: NixlDescList, remoteAgent: string, options?: NixlTransferOptions): Promise<NixlTransferResult> {
    return this.transfer("WRITE", local, remote, remoteAgent, options);
  }

  async transfer(
    op: "READ" | "WRITE",
    local: NixlDescList,
    remote: NixlDescList,
    remoteAgent: string,
    options: NixlTransferOptions = {},
  ): Promise<NixlTransferResult> {
    options.signal?.throwIfAborted();
    const l = encode(local, "local");
    const r = encode(remote, "remote");
    const notification = options.notification === undefined ? undefined : toBuffer(options.notification);
    const started = process.hrtime.bigint();
    const id = callNative(() =>
      this.#native.createTransfer(op, local.mem, l.addrs, l.lengths, l.devId, remote.mem, r.addrs, r.lengths, r.devId, remoteAgent, notification),
    );
    const onAbort = (): void => {
      try {
        this.#native.abortTransfer(id);
      } catch {
        // Already finished: the wait below resolves or rejects on its own.
      }
    };
    options.signal?.addEventListener("abort", onAbort, { once: true });
    try {
      await this.#native.runTransfer(id, options.timeoutMs);
    } catch (err) {
      if (options.signal?.aborted) throw options.signal.reason;
      throw fromNative(err);
    } finally {
      options.signal?.removeEventListener("abort", onAbort);
    }
    const bytes = l.lengths.reduce((sum, n) => sum + n, 0);
    return { bytes, seconds: Number(process.hrtime.bigint() - started) / 1e9 };
  }

  /** Notifications received since the last call (drained). */
  notifications(): NixlNotification[] {
    return callNative(() => this.#native.notifications());
  }

  sendNotification(remoteAgent: string, message: Uint8Array | string): void {
    const buf = toBuffer(message);
    callNative(() => this.#native.sendNotification(remoteAgent, buf));
  }

  /**
   * Resolves with the first notification `match` accepts (others received meanwhile are
   * returned too, in `seen`), polling on timers so the event loop stays free.
   */
  async waitForNotification(
    match: (n: NixlNotification) => boolean,
    options: { timeoutMs?: number; pollMs?: number; signal?: AbortSignal } = {},
  ): Promise<{ notification: NixlNotification; seen: NixlNotification[] }> {
    const deadline = options.timeoutMs === undefined ? Infinity : Date.now() + options.timeoutMs;
    const seen: NixlNotification[] = [];
    for (;;) {
      options.signal?.throwIfAborted();
      for (const n of this.notifications()) {
        seen.push(n);
        if (match(n)) return { notification: n, seen };
      }
      if (Date.now() >= deadline) throw new InvalidInputError(`no matching NIXL notification within ${options.timeoutMs} ms`);
      await new Promise((resolve) => setTimeout(resolve, options.pollMs ?? 2));
    }
  }

  /** Releases the agent; registered memory is deregistered once no transfer wait is in flight. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#native.close();
  }
}
