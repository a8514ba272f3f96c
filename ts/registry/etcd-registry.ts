/**
 * EtcdRegistry: the fleet-mode `Registry`. Worker records live in etcd (etcd-keys.ts for the
 * layout), each under a lease of its own with a TTL kept alive by the process that registered it,
 * so a worker whose process dies disappears within its TTL, and a deregister revokes just its key.
 *
 * Reading (`follow`, the gateway's side): list the prefix, then watch it from the listed
 * revision + 1, so no change between the two is missed; the watch resumes from its last revision
 * after a dropped stream (etcd3's WatchManager), and a watch etcd cancels (compaction) is
 * replaced by a fresh list + watch whose difference to the cache is reported as changes.
 * Values are validated (etcd-keys.ts): a bad one is counted, logged once per key and skipped.
 *
 * Writing (`register`, the worker's side): a put under a new lease. A lease etcd lost (etcd down
 * longer than the TTL, or restarted without it) is replaced and the record put again, with
 * back-off, until it holds: a worker that loses etcd registers again when etcd is back.
 *
 * Failures are sorted in two: authentication or permission errors are the operator's to fix and
 * fail `connect()` (EtcdRegistryError naming the server); an unreachable etcd is waited for
 * (connect() returns, the registry fills in once etcd answers), so a gateway may start first.
 */
import { readFileSync } from "node:fs";
import type { Etcd3, IKeyValue, IOptions, Lease, Watcher } from "etcd3";
import { InvalidConfigError, KvrouteError } from "../errors.js";
import type { Registry } from "../router/types.js";
import type { WorkerRecord } from "../workers/config.js";
import { DEFAULT_ETCD_PREFIX, DEFAULT_NAMESPACE, parseWorkerEntry, workerKey, workersPrefix, type ParsedRecord } from "./etcd-keys.js";
import { validateRecord, type RegistryChange } from "./memory-registry.js";

/** etcd refused the credentials or the permissions, or the options cannot work. */
export class EtcdRegistryError extends KvrouteError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("KVR_REGISTRY", message, options);
  }
}

export interface EtcdTlsOptions {
  /** CA certificate (PEM text or a file path) that signed the server's certificate. */
  ca?: string;
  /** Client certificate and key (PEM text or file paths), for `--client-cert-auth`. */
  cert?: string;
  key?: string;
}

export interface EtcdRegistryOptions {
  /** `etcd://host:port` (`etcds://` for TLS), `http(s)://host:port`, or several, comma-separated. */
  endpoints: string | readonly string[];
  /** Default "default". */
  namespace?: string;
  /** Default "/kvroute". */
  prefix?: string;
  /** Lease TTL of each record, seconds. Default 10. */
  ttlSeconds?: number;
  username?: string;
  password?: string;
  tls?: EtcdTlsOptions;
  /** List and watch the workers (a gateway). False: only register (a worker process). Default true. */
  follow?: boolean;
  /** Deadline of each etcd call. Default 5000 ms. */
  callTimeoutMs?: number;
  /** First retry delay after a failure (doubles up to `retryMaxMs`). Default 100 ms. */
  retryInitialMs?: number;
  /** Default 2000 ms. */
  retryMaxMs?: number;
  /** Default: stderr; null: nowhere. */
  log?: ((message: string) => void) | null;
}

export interface EtcdRegistryStats {
  /** etcd answered the last call or watch. */
  connected: boolean;
  /** Records read from etcd that failed validation, by reason (bad_key, bad_json, bad_record). */
  invalidRecords: Record<string, number>;
  /** Times a record of this process was put again under a new lease. */
  reRegistrations: number;
  /** Full list + watch cycles (1 after the first; more after a cancelled watch). */
  syncs: number;
  /** Records held (followed). */
  workers: number;
}

type Listener = (change: RegistryChange) => void;

interface Owned {
  record: WorkerRecord;
  lease: Lease | null;
  /** Bumped on each (re)registration, so callbacks of an older lease do nothing. */
  generation: number;
  timer: NodeJS.Timeout | null;
  failures: number;
}

type Etcd3Module = typeof import("etcd3");
/** etcd3 (and gRPC under it) is loaded when the first registry connects: the embedded default never loads it. */
let etcd3: Etcd3Module | undefined;

/** The etcd3 fault-handling policy that just calls through: this registry does its own retries. */
const CALL_THROUGH = { execute: async <T>(fn: (ctx: { signal: AbortSignal; attempt: number }) => T) => fn({ signal: new AbortController().signal, attempt: 0 }) };

export class EtcdRegistry implements Registry {
  readonly namespace: string;
  readonly prefix: string;
  readonly ttlSeconds: number;
  /** The endpoints as given, for messages. */
  readonly server: string;
  private readonly client: Etcd3;
  private readonly keyPrefix: string;
  private readonly follow: boolean;
  private readonly log: (m: string) => void;
  private readonly retryInitialMs: number;
  private readonly retryMaxMs: number;
  private readonly records = new Map<string, WorkerRecord>();
  /** Key -> worker id of the records held, to map deletes back. */
  private readonly keys = new Map<string, string>();
  private readonly owned = new Map<string, Owned>();
  private readonly listeners = new Set<Listener>();
  /** Keys whose bad value was logged (once per key until it is fixed or deleted). Bounded. */
  private readonly loggedBad = new Set<string>();
  private readonly invalid: Record<string, number> = {};
  private watcher: Watcher | null = null;
  private syncTimer: NodeJS.Timeout | null = null;
  private syncFailures = 0;
  private syncing = false;
  private closed = false;
  private connectedNow = false;
  private reRegistrations = 0;
  private syncs = 0;
  private readonly firstSyncWaiters: (() => void)[] = [];

  private constructor(options: EtcdRegistryOptions) {
    const endpoints = parseEtcdEndpoints(options.endpoints);
    this.server = endpoints.hosts.join(",");
    this.namespace = options.namespace ?? DEFAULT_NAMESPACE;
    this.prefix = options.prefix ?? DEFAULT_ETCD_PREFIX;
    this.keyPrefix = workersPrefix(this.prefix, this.namespace);
    this.ttlSeconds = options.ttlSeconds ?? 10;
    if (!Number.isInteger(this.ttlSeconds) || this.ttlSeconds < 1) throw new InvalidConfigError(`etcd lease TTL must be an integer ≥ 1 s, got ${options.ttlSeconds}`);
    this.follow = options.follow ?? true;
    this.retryInitialMs = options.retryInitialMs ?? 100;
    this.retryMaxMs = options.retryMaxMs ?? 2000;
    this.log = options.log === undefined ? (m) => process.stderr.write(`kvroute: ${m}\n`) : (options.log ?? (() => {}));
    if ((options.username === undefined) !== (options.password === undefined)) throw new InvalidConfigError("etcd username and password go together");
    const tls = options.tls;
    const secure = endpoints.tls || tls !== undefined;
    if (tls && (tls.cert === undefined) !== (tls.key === undefined)) throw new InvalidConfigError("etcd TLS client cert and key go together");
    const callTimeoutMs = options.callTimeoutMs ?? 5000;
    const clientOptions: IOptions = {
      hosts: endpoints.hosts.map((h) => `${secure ? "https" : "http"}://${h}`),
      dialTimeout: callTimeoutMs,
      // Unary calls get a deadline; streams (watch, keepalive) live until closed.
      defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + callTimeoutMs }),
      faultHandling: { host: () => CALL_THROUGH as never, global: CALL_THROUGH as never },
      grpcOptions: { "grpc.initial_reconnect_backoff_ms": 100, "grpc.max_reconnect_backoff_ms": 1000 },
    };
    if (options.username !== undefined) clientOptions.auth = { username: options.username, password: options.password! };
    if (secure) {
      const pem = (v: string | undefined) => (v === undefined ? undefined : Buffer.from(v.includes("-----BEGIN") ? v : readFileSync(v, "utf8")));
      clientOptions.credentials = { rootCertificate: pem(tls?.ca) ?? Buffer.alloc(0), ...(tls?.cert ? { certChain: pem(tls.cert)!, privateKey: pem(tls.key)! } : {}) };
      if (!tls?.ca) delete (clientOptions.credentials as { rootCertificate?: Buffer }).rootCertificate;
    }
    this.client = new etcd3!.Etcd3(clientOptions);
  }

  /**
   * Connects and, when following, lists the workers. Rejects with EtcdRegistryError when etcd
   * refuses the credentials (or the TLS handshake); an unreachable etcd is logged and waited for
   * in the background (`ready()` resolves once the first list has arrived).
   */
  static async connect(options: EtcdRegistryOptions): Promise<EtcdRegistry> {
    etcd3 ??= await import("etcd3");
    const registry = new EtcdRegistry(options);
    try {
      await registry.probe();
    } catch (err) {
      if (isFatal(err)) {
        registry.client.close();
        throw registry.fatalError(err);
      }
      registry.log(`etcd at ${registry.server} is not reachable (${describe(err)}); retrying in the background`);
    }
    if (registry.follow) registry.startSync();
    return registry;
  }

  /** Resolves once the first list of workers has been read (at once when not following). */
  ready(): Promise<void> {
    if (!this.follow || this.syncs > 0) return Promise.resolve();
    return new Promise((resolve) => this.firstSyncWaiters.push(resolve));
  }

  list(model?: string): WorkerRecord[] {
    const all = [...this.records.values()];
    return model === undefined ? all : all.filter((r) => r.model === model);
  }

  get(id: string): WorkerRecord | undefined {
    return this.records.get(id);
  }

  /**
   * Puts the record under a new lease. Rejects with InvalidInputError for a malformed record and
   * with EtcdRegistryError when etcd refuses the credentials; while etcd is unreachable it
   * resolves and keeps trying in the background (the worker is healthy; etcd will hear of it).
   */
  async register(record: WorkerRecord): Promise<void> {
    validateRecord(record);
    if (this.closed) throw new EtcdRegistryError(`etcd registry for ${this.server} is closed`);
    const previous = this.owned.get(record.id);
    if (previous) this.dropLease(previous, "revoke");
    const entry: Owned = { record, lease: null, generation: (previous?.generation ?? 0) + 1, timer: null, failures: 0 };
    this.owned.set(record.id, entry);
    if (this.follow) this.upsert(record); // routable at once in this process, like MemoryRegistry
    try {
      await this.putUnderLease(entry);
    } catch (err) {
      if (isFatal(err)) {
        this.owned.delete(record.id);
        throw this.fatalError(err);
      }
      this.log(`etcd at ${this.server}: could not register ${record.id} (${describe(err)}); retrying`);
      this.scheduleReRegister(entry);
    }
  }

  /** Revokes the worker's lease (its key goes with it). A record of another process is deleted. */
  async deregister(id: string): Promise<void> {
    const entry = this.owned.get(id);
    this.owned.delete(id);
    const record = this.records.get(id);
    if (record && this.follow) this.remove(id);
    try {
      if (entry) await this.dropLease(entry, "revoke");
      else if (record) await this.client.delete().key(workerKey(this.prefix, this.namespace, record.model, id)).exec();
    } catch (err) {
      // Unreachable: the lease is no longer kept alive, so the key expires within the TTL.
      this.log(`etcd at ${this.server}: deregister of ${id} failed (${describe(err)}); its lease expires within ${this.ttlSeconds} s`);
    }
  }

  watch(listener: Listener): () => void {
    this.listeners.add(listener);
    return () => {
      this.listeners.delete(listener);
    };
  }

  stats(): EtcdRegistryStats {
    return { connected: this.connectedNow, invalidRecords: { ...this.invalid }, reRegistrations: this.reRegistrations, syncs: this.syncs, workers: this.records.size };
  }

  /**
   * Stops watching. Records this process registered are revoked (`revoke`, the default: they leave
   * at once) or left to expire within their TTL (`release`, as a crash would).
   */
  async close(mode: "revoke" | "release" = "revoke"): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.syncTimer) clearTimeout(this.syncTimer);
    const watcher = this.watcher;
    this.watcher = null;
    await Promise.allSettled([...this.owned.values()].map((e) => this.dropLease(e, mode)));
    this.owned.clear();
    if (watcher) await watcher.cancel().catch(() => {});
    for (const w of this.firstSyncWaiters.splice(0)) w();
    this.client.close();
  }

  // --- writing ---

  private async putUnderLease(entry: Owned): Promise<void> {
    const generation = entry.generation;
    const lease = this.client.lease(this.ttlSeconds);
    entry.lease = lease;
    lease.on("lost", (err) => {
      if (this.owned.get(entry.record.id) !== entry || entry.generation !== generation || this.closed) return;
      this.log(`etcd at ${this.server}: lease of ${entry.record.id} lost (${describe(err)}); registering again`);
      entry.lease = null;
      this.scheduleReRegister(entry);
    });
    try {
      const r = entry.record;
      await lease.put(workerKey(this.prefix, this.namespace, r.model, r.id)).value(JSON.stringify(r)).exec();
      this.connectedNow = true;
    } catch (err) {
      lease.release();
      if (entry.lease === lease) entry.lease = null;
      throw err;
    }
  }

  private scheduleReRegister(entry: Owned): void {
    if (entry.timer || this.closed) return;
    entry.generation++;
    const delay = Math.min(this.retryMaxMs, this.retryInitialMs * 2 ** Math.min(entry.failures, 16));
    entry.timer = setTimeout(() => {
      entry.timer = null;
      if (this.owned.get(entry.record.id) !== entry || this.closed) return;
      this.putUnderLease(entry).then(
        () => {
          entry.failures = 0;
          this.reRegistrations++;
          this.log(`etcd at ${this.server}: ${entry.record.id} registered again`);
        },
        (err) => {
          entry.failures++;
          if (entry.failures === 1 || isFatal(err)) this.log(`etcd at ${this.server}: registering ${entry.record.id} again failed (${describe(err)}); retrying`);
          this.scheduleReRegister(entry);
        },
      );
    }, delay);
    entry.timer.unref();
  }

  private async dropLease(entry: Owned, mode: "revoke" | "release"): Promise<void> {
    entry.generation++;
    if (entry.timer) clearTimeout(entry.timer);
    entry.timer = null;
    const lease = entry.lease;
    entry.lease = null;
    if (!lease) return;
    if (mode === "release") lease.release();
    else await lease.revoke();
  }

  // --- reading ---

  private async probe(): Promise<void> {
    await this.client.getAll().prefix(this.keyPrefix).count();
    this.connectedNow = true;
  }

  private startSync(): void {
    if (this.syncing || this.closed) return;
    this.syncing = true;
    this.syncOnce().then(
      () => {
        this.syncing = false;
        this.syncFailures = 0;
      },
      (err) => {
        this.syncing = false;
        this.connectedNow = false;
        if (this.closed) return;
        this.syncFailures++;
        if (this.syncFailures === 1 || isFatal(err)) this.log(`etcd at ${this.server}: listing workers failed (${describe(err)}); retrying`);
        const delay = Math.min(this.retryMaxMs, this.retryInitialMs * 2 ** Math.min(this.syncFailures, 16));
        this.syncTimer = setTimeout(() => {
          this.syncTimer = null;
          this.startSync();
        }, delay);
        this.syncTimer.unref();
      },
    );
  }

  /** One list, the difference to the cache applied, then a watch from the next revision. */
  private async syncOnce(): Promise<void> {
    const old = this.watcher;
    this.watcher = null;
    if (old) await old.cancel().catch(() => {});
    const res = await this.client.getAll().prefix(this.keyPrefix).exec();
    if (this.closed) return;
    this.connectedNow = true;
    const seen = new Set<string>();
    for (const kv of res.kvs) {
      const key = kv.key.toString();
      seen.add(key);
      this.applyPut(key, kv.value.toString());
    }
    for (const key of [...this.keys.keys()]) if (!seen.has(key)) this.applyDelete(key);
    for (const key of [...this.loggedBad]) if (!seen.has(key)) this.loggedBad.delete(key);
    const revision = BigInt(res.header.revision);
    const watcher = await this.client.watch().prefix(this.keyPrefix).startRevision(String(revision + 1n)).create();
    if (this.closed) {
      await watcher.cancel().catch(() => {});
      return;
    }
    this.watcher = watcher;
    watcher.on("put", (kv: IKeyValue) => this.applyPut(kv.key.toString(), kv.value.toString()));
    watcher.on("delete", (kv: IKeyValue) => this.applyDelete(kv.key.toString()));
    watcher.on("connected", () => (this.connectedNow = true));
    watcher.on("disconnected", () => (this.connectedNow = false));
    watcher.on("error", (err: unknown) => {
      if (this.watcher !== watcher || this.closed) return;
      this.log(`etcd at ${this.server}: watch ended (${describe(err)}); listing again`);
      this.startSync();
    });
    this.syncs++;
    for (const w of this.firstSyncWaiters.splice(0)) w();
  }

  private applyPut(key: string, value: string): void {
    const parsed: ParsedRecord = parseWorkerEntry(this.keyPrefix, key, value);
    if (!parsed.ok) {
      this.invalid[parsed.reason] = (this.invalid[parsed.reason] ?? 0) + 1;
      if (!this.loggedBad.has(key) && this.loggedBad.size < 10_000) {
        this.loggedBad.add(key);
        this.log(`etcd at ${this.server}: skipping ${JSON.stringify(key)}: ${parsed.detail}`);
      }
      // A key that held a good record and now holds garbage: that worker is no longer known.
      if (this.keys.has(key)) this.applyDelete(key);
      return;
    }
    this.loggedBad.delete(key);
    const previousId = this.keys.get(key);
    if (previousId !== undefined && previousId !== parsed.record.id) this.remove(previousId);
    this.keys.set(key, parsed.record.id);
    this.upsert(parsed.record);
  }

  private applyDelete(key: string): void {
    this.loggedBad.delete(key);
    const id = this.keys.get(key);
    if (id === undefined) return;
    this.keys.delete(key);
    // A record this process registers right now (a restart racing its old key's delete) stays.
    const own = this.owned.get(id);
    if (own && workerKey(this.prefix, this.namespace, own.record.model, id) === key && own.lease !== null) return;
    this.remove(id);
  }

  private upsert(record: WorkerRecord): void {
    const current = this.records.get(record.id);
    if (current && JSON.stringify(current) === JSON.stringify(record)) return;
    this.records.delete(record.id);
    this.records.set(record.id, record);
    this.keys.set(workerKey(this.prefix, this.namespace, record.model, record.id), record.id);
    this.notify({ type: "added", record });
  }

  private remove(id: string): void {
    const record = this.records.get(id);
    if (!record) return;
    this.records.delete(id);
    this.notify({ type: "removed", record });
  }

  private notify(change: RegistryChange): void {
    for (const l of [...this.listeners]) {
      try {
        l(change);
      } catch (err) {
        this.log(`registry listener failed on ${change.type} ${change.record.id}: ${describe(err)}`);
      }
    }
  }

  private fatalError(err: unknown): EtcdRegistryError {
    return new EtcdRegistryError(`etcd at ${this.server} refused the connection: ${describe(err)}`, { cause: err });
  }
}

/** Errors retrying cannot fix: wrong credentials, missing permissions, a failed TLS handshake. */
function isFatal(err: unknown): boolean {
  const e = etcd3;
  if (e && (err instanceof e.EtcdAuthenticationFailedError || err instanceof e.EtcdPermissionDeniedError || err instanceof e.EtcdUserNotFoundError || err instanceof e.GRPCUnauthenticatedError)) return true;
  const m = err instanceof Error ? err.message : String(err);
  return /authentication failed|permission denied|user name is empty|certificate|handshake|SSL|TLS/i.test(m);
}

function describe(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** `etcd://a:2379,b:2379` / `etcds://...` / `http(s)://...` (or a list) -> host:port list and TLS. */
export function parseEtcdEndpoints(endpoints: string | readonly string[]): { hosts: string[]; tls: boolean } {
  const list = (typeof endpoints === "string" ? [endpoints] : [...endpoints]).flatMap((e) => e.split(",")).map((e) => e.trim()).filter((e) => e.length > 0);
  if (list.length === 0) throw new InvalidConfigError("etcd registry needs at least one endpoint (etcd://host:port)");
  let tls: boolean | null = null;
  let scheme = "";
  const hosts = list.map((e) => {
    const m = /^(?:(etcd|etcds|http|https):\/\/)?([^/\s]+?)\/?$/.exec(e);
    if (!m) throw new InvalidConfigError(`etcd endpoint must be etcd://host:port, got "${e}"`);
    scheme = m[1] ?? scheme;
    const secure = m[1] === "etcds" || m[1] === "https";
    if (m[1] !== undefined) {
      if (tls !== null && tls !== secure) throw new InvalidConfigError("etcd endpoints mix TLS and plain schemes");
      tls = secure;
    }
    return m[2]!.includes(":") ? m[2]! : `${m[2]}:2379`;
  });
  void scheme;
  return { hosts, tls: tls ?? false };
}
