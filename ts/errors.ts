/**
 * Typed errors with stable codes (`KVR_*`), in the manner of undici's `UND_ERR_*`.
 * Native errors arrive as `Error("KVR_CODE: message")` and are turned into these classes by
 * {@link fromNative}.
 */

/**
 * Every code starts with `KVR_`. The layers define their own (workers: `KVR_WORKER_START`,
 * router: `KVR_NO_WORKER`, gateway: `KVR_QUEUE_FULL`...) next to their error classes.
 */
export type KvrouteErrorCode = `KVR_${Uppercase<string>}`;

export class KvrouteError extends Error {
  readonly code: KvrouteErrorCode;
  constructor(code: KvrouteErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

/** A configuration value is missing, out of range or unknown. */
export class InvalidConfigError extends KvrouteError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("KVR_INVALID_CONFIG", message, options);
  }
}

/** An input value (tokens, hashes, a JSON line...) is malformed. */
export class InvalidInputError extends KvrouteError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("KVR_INVALID_INPUT", message, options);
  }
}

/** A tokenizer folder cannot be used: the message names the file and the cause. */
export class TokenizerLoadError extends KvrouteError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("KVR_TOKENIZER_LOAD", message, options);
  }
}

/** NIXL's library (libnixl_capi.so) or its backend cannot be loaded: the message says why. */
export class NixlUnavailableError extends KvrouteError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("KVR_NIXL_UNAVAILABLE", message, options);
  }
}

/** NIXL reported a failure (registration, transfer, notification). */
export class NixlTransferError extends KvrouteError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("KVR_NIXL_FAILED", message, options);
  }
}

const NATIVE_CODE = /^(KVR_[A-Z_]+): ([\s\S]*)$/;

/** Converts an error thrown by the native addon into the matching typed error. */
export function fromNative(err: unknown): KvrouteError {
  if (err instanceof KvrouteError) return err;
  const message = err instanceof Error ? err.message : String(err);
  const match = NATIVE_CODE.exec(message);
  if (match?.[1] === "KVR_INVALID_CONFIG") return new InvalidConfigError(match[2] ?? "", { cause: err });
  if (match?.[1] === "KVR_INVALID_INPUT") return new InvalidInputError(match[2] ?? "", { cause: err });
  if (match?.[1] === "KVR_NIXL_UNAVAILABLE") return new NixlUnavailableError(match[2] ?? "", { cause: err });
  if (match?.[1] === "KVR_NIXL_FAILED") return new NixlTransferError(match[2] ?? "", { cause: err });
  if (match?.[1] === "KVR_TOKENIZER_LOAD") return new TokenizerLoadError(match[2] ?? "", { cause: err });
  return new KvrouteError("KVR_INTERNAL", message, { cause: err });
}

/** Runs a native call, rethrowing its errors as typed errors. */
export function callNative<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    throw fromNative(err);
  }
}
