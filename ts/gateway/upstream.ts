/**
 * Connections to the workers: one undici Pool per worker origin (keep-alive, a bounded number of
 * connections, no pipelining since responses stream for seconds), created on first use and closed
 * when the worker leaves the registry.
 *
 * `send` dispatches one request with a controller-based handler: the response body arrives in
 * `onData` chunks, and the caller pauses/resumes the socket through the controller, so a slow
 * client stops reads from the worker instead of filling the gateway's memory.
 */
import { Pool, type Dispatcher } from "undici";

export interface UpstreamOptions {
  connectionsPerWorker: number;
  /** Time to the response headers (then `UND_ERR_HEADERS_TIMEOUT`). */
  headersTimeoutMs: number;
  /** Longest silence between body chunks (then `UND_ERR_BODY_TIMEOUT`). */
  bodyTimeoutMs: number;
}

export interface UpstreamHandler {
  /** Called once, synchronously or soon after dispatch, with the controller (abort, pause, resume). */
  onStart?(controller: Dispatcher.DispatchController): void;
  onHeaders(status: number, headers: Record<string, string | string[] | undefined>): void;
  onData(chunk: Buffer): void;
  onEnd(): void;
  /** Connect errors, resets, timeouts, aborts: exactly one of onEnd / onError is called. */
  onError(err: Error): void;
}

export class UpstreamPool {
  private readonly pools = new Map<string, Pool>();
  private closed = false;

  constructor(private readonly options: UpstreamOptions) {}

  private pool(origin: string): Pool {
    let pool = this.pools.get(origin);
    if (!pool) {
      pool = new Pool(origin, {
        connections: this.options.connectionsPerWorker,
        pipelining: 1,
        keepAliveTimeout: 30_000,
        headersTimeout: this.options.headersTimeoutMs,
        bodyTimeout: this.options.bodyTimeoutMs,
        connect: { noDelay: true },
      });
      this.pools.set(origin, pool);
    }
    return pool;
  }

  /** POST `body` (JSON bytes) to `url + path`. */
  send(url: string, path: string, body: Buffer, handler: UpstreamHandler, extraHeaders?: Record<string, string>): void {
    if (this.closed) {
      handler.onError(new Error("gateway is closing"));
      return;
    }
    const origin = originOf(url);
    const prefix = url.length > origin.length ? url.slice(origin.length).replace(/\/+$/, "") : "";
    const headers: Record<string, string> = {
      "content-type": "application/json",
      "content-length": String(body.length),
      ...extraHeaders,
    };
    let finished = false;
    this.pool(origin).dispatch(
      { method: "POST", path: prefix + path, headers, body },
      {
        // A handler that throws aborts its request (never undici's parser, nor the process).
        onRequestStart(controller) {
          try {
            handler.onStart?.(controller);
          } catch (err) {
            controller.abort(err as Error);
          }
        },
        onResponseStart(controller, statusCode, headers) {
          try {
            handler.onHeaders(statusCode, headers as Record<string, string | string[] | undefined>);
          } catch (err) {
            controller.abort(err as Error);
          }
        },
        onResponseData(controller, chunk) {
          try {
            handler.onData(chunk);
          } catch (err) {
            controller.abort(err as Error);
          }
        },
        onResponseEnd() {
          if (finished) return;
          finished = true;
          guard(() => handler.onEnd());
        },
        onResponseError(_controller, err) {
          if (finished) return;
          finished = true;
          guard(() => handler.onError(err));
        },
      },
    );
  }

  /** A small GET (metrics scraping, health): resolves with status and text, bounded in size. */
  async get(url: string, path: string, timeoutMs: number, maxBytes = 8 * 1024 * 1024): Promise<{ status: number; text: string }> {
    const origin = originOf(url);
    const prefix = url.length > origin.length ? url.slice(origin.length).replace(/\/+$/, "") : "";
    const res = await this.pool(origin).request({
      method: "GET",
      path: prefix + path,
      headersTimeout: timeoutMs,
      bodyTimeout: timeoutMs,
      signal: AbortSignal.timeout(timeoutMs),
    });
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const chunk of res.body) {
      size += (chunk as Buffer).length;
      if (size > maxBytes) {
        res.body.destroy();
        throw new Error(`GET ${url}${path}: response larger than ${maxBytes} bytes`);
      }
      chunks.push(chunk as Buffer);
    }
    return { status: res.statusCode, text: Buffer.concat(chunks).toString("utf8") };
  }

  /**
   * Closes the pool of a worker that left the registry once its in-flight requests are done (a
   * draining worker finishes them; a dead one fails them, which is what migration handles).
   */
  forget(url: string): void {
    const origin = originOf(url);
    const pool = this.pools.get(origin);
    if (!pool) return;
    this.pools.delete(origin);
    void pool.close().catch(() => {});
  }

  async close(): Promise<void> {
    this.closed = true;
    const pools = [...this.pools.values()];
    this.pools.clear();
    await Promise.all(pools.map((p) => p.destroy().catch(() => {})));
  }
}

/** Runs a final callback; an error there is a bug, reported without taking the process down. */
function guard(fn: () => void): void {
  try {
    fn();
  } catch (err) {
    process.emitWarning(`kvroute gateway: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
  }
}

const origins = new Map<string, string>();

function originOf(url: string): string {
  let origin = origins.get(url);
  if (origin === undefined) {
    origin = new URL(url).origin;
    if (origins.size > 10_000) origins.clear();
    origins.set(url, origin);
  }
  return origin;
}
