/**
 * Answers to requests node:http cannot parse, in the gateway's OpenAI error shape instead of
 * node's empty bodies: 431 for headers over `maxHeaderSize` (node's default 16 KiB), 408 for a
 * request not received within `requestTimeout`/`headersTimeout`, 400 for anything else malformed.
 * Install with `server.on("clientError", answerClientError)` (startGateway does).
 *
 * Like node's own handler, it writes only when no response is under way on the socket. The socket
 * is half-closed after the answer; except after a timeout, the client's remaining bytes are read
 * and dropped (at most 1 MiB, 2 s) before it is destroyed, so that the answer is not lost to a
 * connection reset.
 */
import type { Socket } from "node:net";
import { BadRequestError, ClientTimeoutError, HeadersTooLargeError, type GatewayError } from "./errors.js";

/** Bytes of the rest of a refused request read and dropped before the socket is destroyed. */
const DRAIN_BYTES = 1024 * 1024;
/** Time the socket stays open for them. */
const DRAIN_MS = 2000;

const answered = new WeakSet<Socket>();

export function answerClientError(err: Error & { code?: string }, socket: Socket, timeoutMs = 0): void {
  // node:http may report more errors for the same socket while it is being drained.
  if (answered.has(socket)) return;
  answered.add(socket);
  const busy = (socket as Socket & { _httpMessage?: { headersSent?: boolean } })._httpMessage?.headersSent === true;
  if (err.code === "ECONNRESET" || !socket.writable || busy) {
    socket.destroy();
    return;
  }
  const ge = classify(err, timeoutMs);
  const body = JSON.stringify(ge.toJSON());
  socket.end(
    `HTTP/1.1 ${ge.status} ${REASONS[ge.status] ?? "Error"}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`,
  );
  // A client too slow to send its request has nothing more worth waiting for.
  if (ge.status === 408) {
    socket.once("finish", () => socket.destroy());
    return;
  }
  let drained = 0;
  const timer = setTimeout(() => socket.destroy(), DRAIN_MS);
  timer.unref();
  socket.on("data", (chunk: Buffer) => {
    drained += chunk.length;
    if (drained > DRAIN_BYTES) socket.destroy();
  });
  socket.once("end", () => socket.destroy());
  socket.once("close", () => clearTimeout(timer));
  socket.on("error", () => {});
  socket.resume();
}

function classify(err: Error & { code?: string }, timeoutMs: number): GatewayError {
  switch (err.code) {
    case "HPE_HEADER_OVERFLOW":
      return new HeadersTooLargeError();
    case "ERR_HTTP_REQUEST_TIMEOUT":
      return new ClientTimeoutError(timeoutMs);
    default:
      return new BadRequestError(`Malformed HTTP request${err.code ? ` (${err.code})` : ""}`);
  }
}

const REASONS: Record<number, string> = { 400: "Bad Request", 408: "Request Timeout", 431: "Request Header Fields Too Large" };
