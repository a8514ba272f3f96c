/**
 * KubeClient: the few Kubernetes API calls kvroute makes (get, list, watch, create, patch, put,
 * delete), over plain HTTPS with undici and a bearer token — the service account's inside a pod.
 *
 * Why not @kubernetes/client-node: kvroute needs two resources watched and one subresource
 * written; the official client (2.0.1) brings the generated models of the whole API and 16
 * dependencies for that (ws, openid-client, tar-fs, socks, js-yaml, jsonpath-plus... and undici 8
 * beside the gateway's undici 7). What matters is kept: list pagination,
 * watches as newline-delimited JSON with a bound on each line, typed errors carrying the API's
 * status code and reason (409 Conflict, 410 Gone...), and a token file re-read as the kubelet
 * rotates it.
 */
import { readFileSync } from "node:fs";
import { Agent, request, type Dispatcher } from "undici";
import { InvalidConfigError, KvrouteError } from "../errors.js";

/** The files a pod's service account is mounted as. */
export const SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount";

/** A watch line (one event) longer than this ends the watch: it is never buffered whole. */
export const MAX_WATCH_LINE_BYTES = 16 * 1024 * 1024;

export interface KubeClientOptions {
  /** `https://host:port` of the API server. */
  server: string;
  /**
   * A bearer token, or a file holding one (re-read every `tokenRefreshMs`, as bound tokens rotate).
   * Neither: no Authorization header (`kubectl proxy` adds its own).
   */
  token?: string;
  tokenFile?: string;
  /** PEM of the CA that signed the server's certificate, or its file. */
  ca?: string;
  caFile?: string;
  /** Default 60 s. */
  tokenRefreshMs?: number;
  /** Per request (not watches). Default 30 s. */
  timeoutMs?: number;
}

/** A status the API server answered with (its `Status` object's reason and message). */
export class KubeApiError extends KvrouteError {
  constructor(
    readonly status: number,
    readonly reason: string,
    message: string,
  ) {
    super("KVR_KUBE_API", message);
  }
}

export type WatchEventType = "ADDED" | "MODIFIED" | "DELETED" | "BOOKMARK" | "ERROR";

export interface WatchEvent<T> {
  type: WatchEventType;
  object: T;
}

/** The metadata every object carries (what kvroute reads of it). */
export interface ObjectMeta {
  name: string;
  namespace?: string;
  uid?: string;
  resourceVersion?: string;
  creationTimestamp?: string;
  deletionTimestamp?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  ownerReferences?: { kind: string; name: string; uid: string; controller?: boolean }[];
}

export interface KubeObject {
  apiVersion?: string;
  kind?: string;
  metadata: ObjectMeta;
}

export interface KubeList<T> {
  metadata: { resourceVersion: string; continue?: string };
  items: T[];
}

type Query = Record<string, string | number | boolean | undefined>;

export class KubeClient {
  readonly server: string;
  private readonly dispatcher: Dispatcher;
  private readonly tokenFile: string | undefined;
  private token: string | undefined;
  private tokenReadAt = 0;
  private readonly tokenRefreshMs: number;
  private readonly timeoutMs: number;

  constructor(options: KubeClientOptions) {
    if (!URL.canParse(options.server) || !/^https?:$/.test(new URL(options.server).protocol)) {
      throw new InvalidConfigError(`kubernetes: server must be an https:// (or, through kubectl proxy, http://) URL: got ${JSON.stringify(options.server)}`);
    }
    this.server = options.server.replace(/\/+$/, "");
    const ca = options.ca ?? (options.caFile ? readConfigFile(options.caFile, "CA file") : undefined);
    this.dispatcher = new Agent({ connect: ca ? { ca } : {}, keepAliveTimeout: 30_000 });
    this.token = options.token;
    this.tokenFile = options.tokenFile;
    this.tokenRefreshMs = options.tokenRefreshMs ?? 60_000;
    this.timeoutMs = options.timeoutMs ?? 30_000;
    if (this.tokenFile) this.authorization(); // a missing token file fails here, at start
  }

  /**
   * Inside a pod: the API server of `KUBERNETES_SERVICE_HOST`/`_PORT` with the mounted service
   * account. Outside: `KVROUTE_K8S_SERVER` with `KVROUTE_K8S_TOKEN` or `KVROUTE_K8S_TOKEN_FILE`
   * and `KVROUTE_K8S_CA_FILE`.
   */
  static fromEnvironment(env: NodeJS.ProcessEnv = process.env): KubeClient {
    if (env["KVROUTE_K8S_SERVER"]) {
      return new KubeClient({
        server: env["KVROUTE_K8S_SERVER"],
        ...(env["KVROUTE_K8S_TOKEN"] ? { token: env["KVROUTE_K8S_TOKEN"] } : {}),
        ...(env["KVROUTE_K8S_TOKEN_FILE"] ? { tokenFile: env["KVROUTE_K8S_TOKEN_FILE"] } : {}),
        ...(env["KVROUTE_K8S_CA_FILE"] ? { caFile: env["KVROUTE_K8S_CA_FILE"] } : {}),
      });
    }
    const host = env["KUBERNETES_SERVICE_HOST"];
    const port = env["KUBERNETES_SERVICE_PORT"] ?? "443";
    if (!host) {
      throw new InvalidConfigError(
        "kubernetes: no API server: not inside a pod (KUBERNETES_SERVICE_HOST unset) and KVROUTE_K8S_SERVER not set",
      );
    }
    return new KubeClient({
      server: `https://${host.includes(":") ? `[${host}]` : host}:${port}`,
      tokenFile: `${SERVICE_ACCOUNT_DIR}/token`,
      caFile: `${SERVICE_ACCOUNT_DIR}/ca.crt`,
    });
  }

  async get<T>(path: string, query?: Query): Promise<T> {
    return (await this.call("GET", path, { query })) as T;
  }

  /** Every item of a collection, page by page, with the list's resourceVersion (to watch from). */
  async list<T>(path: string, query: Query = {}): Promise<KubeList<T>> {
    const items: T[] = [];
    let cont: string | undefined;
    let resourceVersion = "";
    do {
      const page = (await this.call("GET", path, { query: { ...query, limit: 500, ...(cont ? { continue: cont } : {}) } })) as KubeList<T>;
      items.push(...(page.items ?? []));
      resourceVersion = page.metadata.resourceVersion;
      cont = page.metadata.continue || undefined;
    } while (cont);
    return { metadata: { resourceVersion }, items };
  }

  create<T>(path: string, body: unknown): Promise<T> {
    return this.call("POST", path, { body }) as Promise<T>;
  }

  put<T>(path: string, body: unknown): Promise<T> {
    return this.call("PUT", path, { body }) as Promise<T>;
  }

  /** JSON merge patch (RFC 7386): objects merge, arrays and scalars replace. */
  mergePatch<T>(path: string, patch: unknown): Promise<T> {
    return this.call("PATCH", path, { body: patch, contentType: "application/merge-patch+json" }) as Promise<T>;
  }

  delete<T>(path: string, body?: unknown): Promise<T> {
    return this.call("DELETE", path, body === undefined ? {} : { body }) as Promise<T>;
  }

  /**
   * Watches a collection from `resourceVersion`, yielding events until the server ends the watch
   * (its timeout), `signal` aborts, or a line is longer than MAX_WATCH_LINE_BYTES (a KubeApiError).
   * A 410 Gone arrives as an ERROR event whose object is a Status with `code: 410`.
   */
  async *watch<T>(path: string, query: Query, signal: AbortSignal): AsyncGenerator<WatchEvent<T>> {
    const res = await request(this.url(path, { ...query, watch: true, allowWatchBookmarks: true }), {
      method: "GET",
      headers: { ...this.authorization(), accept: "application/json" },
      dispatcher: this.dispatcher,
      signal,
      // The server ends a watch after timeoutSeconds (bookmarks come in between): a connection
      // silent for longer than that is dead.
      bodyTimeout: typeof query["timeoutSeconds"] === "number" ? (query["timeoutSeconds"] + 60) * 1000 : 0,
      headersTimeout: this.timeoutMs,
    });
    if (res.statusCode !== 200) throw apiError("GET", path, res.statusCode, await res.body.text().catch(() => ""));
    let pending: Buffer[] = [];
    let pendingBytes = 0;
    try {
      for await (const chunk of res.body as AsyncIterable<Buffer>) {
        let start = 0;
        for (let nl = chunk.indexOf(10); nl >= 0; nl = chunk.indexOf(10, start)) {
          pending.push(chunk.subarray(start, nl));
          const line = Buffer.concat(pending).toString("utf8");
          pending = [];
          pendingBytes = 0;
          start = nl + 1;
          if (line.trim().length > 0) yield JSON.parse(line) as WatchEvent<T>;
        }
        if (start < chunk.length) {
          pending.push(chunk.subarray(start));
          pendingBytes += chunk.length - start;
          if (pendingBytes > MAX_WATCH_LINE_BYTES) {
            throw new KubeApiError(0, "WatchLineTooLong", `watch ${path}: an event longer than ${MAX_WATCH_LINE_BYTES} bytes`);
          }
        }
      }
    } finally {
      res.body.destroy();
    }
  }

  async close(): Promise<void> {
    await this.dispatcher.close().catch(() => {});
  }

  private async call(method: string, path: string, options: { query?: Query | undefined; body?: unknown; contentType?: string }): Promise<unknown> {
    const res = await request(this.url(path, options.query), {
      method: method as Dispatcher.HttpMethod,
      headers: {
        ...this.authorization(),
        accept: "application/json",
        ...(options.body !== undefined ? { "content-type": options.contentType ?? "application/json" } : {}),
      },
      body: options.body === undefined ? null : JSON.stringify(options.body),
      dispatcher: this.dispatcher,
      headersTimeout: this.timeoutMs,
      bodyTimeout: this.timeoutMs,
    });
    const text = await res.body.text();
    if (res.statusCode < 200 || res.statusCode >= 300) throw apiError(method, path, res.statusCode, text);
    if (text.length === 0) return null;
    return String(res.headers["content-type"] ?? "").includes("json") ? JSON.parse(text) : text;
  }

  private url(path: string, query: Query | undefined): string {
    const params = new URLSearchParams();
    for (const [k, v] of Object.entries(query ?? {})) if (v !== undefined) params.set(k, String(v));
    const qs = params.toString();
    return `${this.server}${path}${qs ? `?${qs}` : ""}`;
  }

  private authorization(): { authorization?: string } {
    if (this.tokenFile && (this.token === undefined || Date.now() - this.tokenReadAt > this.tokenRefreshMs)) {
      this.token = readConfigFile(this.tokenFile, "token file").trim();
      this.tokenReadAt = Date.now();
    }
    return this.token ? { authorization: `Bearer ${this.token}` } : {};
  }
}

function apiError(method: string, path: string, status: number, text: string): KubeApiError {
  let reason = "";
  let message = text.slice(0, 500);
  try {
    const s = JSON.parse(text) as { reason?: string; message?: string };
    reason = s.reason ?? "";
    message = s.message ?? message;
  } catch {
    // not a Status object
  }
  return new KubeApiError(status, reason, `kubernetes ${method} ${path}: ${status}${reason ? ` ${reason}` : ""}: ${message}`);
}

function readConfigFile(path: string, what: string): string {
  try {
    return readFileSync(path, "utf8");
  } catch (err) {
    throw new InvalidConfigError(`kubernetes: cannot read the ${what} ${path} (${(err as Error).message})`);
  }
}

/** `/api/v1/...` or `/apis/<group>/<version>/...` for a namespaced resource. */
export function resourcePath(apiVersion: string, namespace: string, resource: string, name?: string, sub?: string): string {
  const base = apiVersion.includes("/") ? `/apis/${apiVersion}` : `/api/${apiVersion}`;
  return `${base}/namespaces/${encodeURIComponent(namespace)}/${resource}${name ? `/${encodeURIComponent(name)}` : ""}${sub ? `/${sub}` : ""}`;
}
