/**
 * Refusing a request whose body is still arriving (413, 415) without resetting the connection
 * under the client. Closing a socket with unread bytes in it makes the kernel send a reset, which
 * destroys the answer in the client's receive buffer before it is read: a client that writes its
 * whole body before reading (most do) saw a broken pipe instead of the 413. So the answer goes out
 * whole at once, then the rest of the body is read and dropped, up to `maxBytes` and `maxMs`, and
 * only then is the connection closed, cleanly when the body ended within those bounds.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import type { GatewayError } from "./errors.js";
import { sendJsonError } from "./exchange.js";

export interface LingerLimits {
  /** Body bytes read and dropped after the answer, at most. */
  maxBytes: number;
  /** Time the connection is kept open for them, at most. */
  maxMs: number;
}

export function refuseBody(req: IncomingMessage, res: ServerResponse, err: GatewayError, limits: LingerLimits, alreadyRead = 0): void {
  if (res.writableEnded || res.destroyed) return;
  // The whole request is in (a bodiless GET, a body a framework read): nothing is on the wire.
  if (req.complete) {
    req.resume(); // drops what is buffered, so the connection can serve its next request
    return sendJsonError(res, err);
  }
  const declared = Number(req.headers["content-length"]);
  const left = Number.isFinite(declared) ? declared - alreadyRead : 0;
  // Nothing left to read, or more than we would wait for: answer and close at once.
  if (req.readableEnded || req.destroyed || left > limits.maxBytes) {
    sendJsonError(res, err, true);
    res.once("finish", () => req.socket?.destroySoon?.());
    return;
  }
  const body = JSON.stringify(err.toJSON());
  res.writeHead(err.status, { "content-type": "application/json", "content-length": String(Buffer.byteLength(body)), connection: "close" });
  // The whole answer now; the response ends (and node:http closes the socket) once the body is drained.
  res.write(body);
  let drained = 0;
  const onData = (chunk: Buffer) => {
    drained += chunk.length;
    if (drained > limits.maxBytes) done();
  };
  const timer = setTimeout(() => done(), limits.maxMs);
  timer.unref();
  function done(): void {
    clearTimeout(timer);
    req.off("data", onData);
    req.off("end", done);
    req.off("close", done);
    if (!res.writableEnded) res.end();
  }
  req.on("data", onData);
  req.once("end", done);
  req.once("close", done);
  req.resume();
}
