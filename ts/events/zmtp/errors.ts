/**
 * The one error class of the ZMTP layer. Its code is `KVR_INTERNAL` (ts/errors.ts is shared and has
 * no transport code); `reason` says what went wrong, for programs that need to tell cases apart.
 */
import { KvrouteError } from "../../errors.js";

export type ZmtpErrorReason =
  /** The socket was closed while the operation waited. */
  | "closed"
  /** The peer broke the protocol: bad greeting, bad frame, bad command. */
  | "protocol"
  /** The peer speaks a ZMTP version or security mechanism we do not. */
  | "unsupported"
  /** The peer's socket type cannot talk to ours (e.g. SUB to SUB). */
  | "incompatible"
  /** A message exceeded `maxMessageSize`. */
  | "too-large"
  /** A message had more than `maxFramesPerMessage` frames. */
  | "too-many-frames"
  /** The handshake or a heartbeat did not complete in time. */
  | "timeout"
  /** The peer sent an ERROR command. */
  | "peer-error";

export class ZmtpError extends KvrouteError {
  readonly reason: ZmtpErrorReason;
  constructor(reason: ZmtpErrorReason, message: string, options?: { cause?: unknown }) {
    super("KVR_INTERNAL", message, options);
    this.reason = reason;
  }
}
