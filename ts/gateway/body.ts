/**
 * Reading a request body under a size limit and a deadline: a body announced (Content-Length)
 * or found (while reading) to be larger than the limit is refused with 413 before it is buffered;
 * a client that does not finish sending in time gets 408. Either way the connection is closed
 * afterwards, since the rest of the body is not read.
 *
 * Embedding: when a framework already read the body (`req.body` is a Buffer, a string or a parsed
 * object, as Express's and Fastify's parsers leave it), that is used instead of the stream.
 */
import type { IncomingMessage } from "node:http";
import { BodyTooLargeError, ClientTimeoutError } from "./errors.js";

export type ReadBody = { kind: "raw"; bytes: Buffer } | { kind: "parsed"; value: unknown };

export function readBody(req: IncomingMessage, limit: number, timeoutMs: number): Promise<ReadBody> {
  const preRead = (req as IncomingMessage & { body?: unknown }).body;
  if (preRead !== undefined) {
    if (Buffer.isBuffer(preRead)) {
      if (preRead.length > limit) return Promise.reject(new BodyTooLargeError(limit));
      return Promise.resolve({ kind: "raw", bytes: preRead });
    }
    if (typeof preRead === "string") {
      if (Buffer.byteLength(preRead) > limit) return Promise.reject(new BodyTooLargeError(limit));
      return Promise.resolve({ kind: "raw", bytes: Buffer.from(preRead) });
    }
    return Promise.resolve({ kind: "parsed", value: preRead });
  }
  const declared = req.headers["content-length"];
  if (declared !== undefined && Number(declared) > limit) return Promise.reject(new BodyTooLargeError(limit));
  if (req.readableEnded) return Promise.resolve({ kind: "raw", bytes: Buffer.alloc(0) });

  return new Promise<ReadBody>((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let done = false;
    const timer = setTimeout(() => finish(new ClientTimeoutError(timeoutMs)), timeoutMs);
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) return finish(new BodyTooLargeError(limit));
      chunks.push(chunk);
    };
    const onEnd = () => finish(null);
    const onError = (err: Error) => finish(err);
    const onClose = () => finish(new Error("client closed the connection while sending its request"));
    function finish(err: Error | null) {
      if (done) return;
      done = true;
      clearTimeout(timer);
      req.off("data", onData);
      req.off("end", onEnd);
      req.off("error", onError);
      req.off("close", onClose);
      if (err) {
        // Stop reading: what is left of the body is not wanted (the connection will be closed).
        req.pause();
        reject(err);
      } else {
        resolve({ kind: "raw", bytes: chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, size) });
      }
    }
    req.on("data", onData);
    req.on("end", onEnd);
    req.on("error", onError);
    req.on("close", onClose);
  });
}
