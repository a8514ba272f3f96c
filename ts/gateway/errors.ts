/**
 * Errors the gateway answers with: typed classes with stable `KVR_*` codes and an HTTP status,
 * rendered as OpenAI-shaped JSON (`{"error": {"message", "type", "param", "code"}}`, the shape
 * vLLM and OpenAI use), so clients' SDKs surface the message.
 */
import { KvrouteError } from "../errors.js";
import { NoWorkerError } from "../router/errors.js";

export type GatewayErrorCode =
  /** 400: the body is not JSON, or a field is missing or has the wrong type; `param` names it. */
  | "KVR_BAD_REQUEST"
  /** 401: no API key, or not one of the configured ones. */
  | "KVR_UNAUTHORIZED"
  /** 403: an admin route while API keys are on and no admin key is configured. */
  | "KVR_FORBIDDEN"
  /** 404: no route at this path, or no such model. */
  | "KVR_NOT_FOUND"
  | "KVR_MODEL_NOT_FOUND"
  /** 405 */
  | "KVR_METHOD_NOT_ALLOWED"
  /** 408: the client did not send its request in time. */
  | "KVR_CLIENT_TIMEOUT"
  /** 413: the body is larger than maxBodyBytes. */
  | "KVR_BODY_TOO_LARGE"
  /** 415 */
  | "KVR_UNSUPPORTED_MEDIA_TYPE"
  /** 431: the request's headers are larger than node:http's limit (maxHeaderSize). */
  | "KVR_HEADERS_TOO_LARGE"
  /** 503: no healthy worker serves the model. */
  | "KVR_NO_HEALTHY_WORKER"
  /** 503: every worker is busy and the admission queue is full. */
  | "KVR_QUEUE_FULL"
  /** 503: every worker stayed busy past the queue deadline. */
  | "KVR_QUEUE_TIMEOUT"
  /** 502: the worker failed (connection refused or reset, broken response) and no retry was left. */
  | "KVR_UPSTREAM_FAILED"
  /** 504: the worker did not answer in time. */
  | "KVR_UPSTREAM_TIMEOUT"
  /** 500: a bug; the message says what failed. */
  | "KVR_INTERNAL";


const TYPES: Record<number, string> = {
  400: "BadRequestError",
  401: "AuthenticationError",
  403: "PermissionDeniedError",
  404: "NotFoundError",
  405: "MethodNotAllowedError",
  408: "RequestTimeoutError",
  413: "RequestEntityTooLargeError",
  415: "UnsupportedMediaTypeError",
  431: "RequestHeaderFieldsTooLargeError",
  500: "InternalServerError",
  502: "BadGatewayError",
  503: "ServiceUnavailableError",
  504: "GatewayTimeoutError",
};

/** Longest piece of client input echoed in an error message. */
export const MAX_ECHOED_CHARS = 256;

/** Client input as quoted in error messages: at most MAX_ECHOED_CHARS characters. */
export function clip(text: string, max = MAX_ECHOED_CHARS): string {
  return text.length <= max ? text : `${text.slice(0, max)}... (${text.length} characters)`;
}

export class GatewayError extends KvrouteError {
  readonly status: number;
  /** The request field at fault, when there is one (OpenAI's `param`). */
  readonly param: string | null;
  readonly gatewayCode: GatewayErrorCode;
  constructor(code: GatewayErrorCode, status: number, message: string, options: { param?: string | null; cause?: unknown } = {}) {
    super(code, message, { cause: options.cause });
    this.gatewayCode = code;
    this.status = status;
    this.param = options.param ?? null;
  }

  /** The OpenAI-shaped body. */
  toJSON(): { error: { message: string; type: string; param: string | null; code: string } } {
    return { error: { message: this.message, type: TYPES[this.status] ?? "Error", param: this.param, code: this.gatewayCode } };
  }
}

export class BadRequestError extends GatewayError {
  constructor(message: string, param: string | null = null) {
    super("KVR_BAD_REQUEST", 400, message, { param });
  }
}

export class ModelNotFoundError extends GatewayError {
  readonly model: string;
  constructor(model: string) {
    super("KVR_MODEL_NOT_FOUND", 404, `The model \`${clip(model)}\` does not exist.`, { param: "model" });
    this.model = model;
  }
}

export class RouteNotFoundError extends GatewayError {
  constructor(method: string, path: string) {
    super("KVR_NOT_FOUND", 404, `No route for ${clip(method)} ${clip(path)}`);
  }
}

export class MethodNotAllowedError extends GatewayError {
  readonly allow: string;
  constructor(method: string, path: string, allow: string) {
    super("KVR_METHOD_NOT_ALLOWED", 405, `${clip(method)} is not allowed on ${clip(path)} (allowed: ${allow})`);
    this.allow = allow;
  }
}

export class ClientTimeoutError extends GatewayError {
  constructor(timeoutMs: number) {
    super("KVR_CLIENT_TIMEOUT", 408, `The request was not received within ${timeoutMs} ms`);
  }
}

export class BodyTooLargeError extends GatewayError {
  readonly limit: number;
  constructor(limit: number) {
    super("KVR_BODY_TOO_LARGE", 413, `The request body exceeds the limit of ${limit} bytes`);
    this.limit = limit;
  }
}

export class UnsupportedMediaTypeError extends GatewayError {
  constructor(contentType: string) {
    super("KVR_UNSUPPORTED_MEDIA_TYPE", 415, `Unsupported Content-Type ${JSON.stringify(clip(contentType))}: send application/json`);
  }
}

export class UnauthorizedError extends GatewayError {
  constructor(message = "Missing or invalid API key: send 'Authorization: Bearer <key>'") {
    super("KVR_UNAUTHORIZED", 401, message);
  }
}

export class ForbiddenError extends GatewayError {
  constructor(message: string) {
    super("KVR_FORBIDDEN", 403, message);
  }
}

export class HeadersTooLargeError extends GatewayError {
  constructor() {
    super("KVR_HEADERS_TOO_LARGE", 431, "The request's headers are too large");
  }
}

export type UnavailableReason = "no_worker" | "queue_full" | "queue_timeout";

export class NoHealthyWorkerError extends GatewayError {
  readonly model: string;
  constructor(model: string, detail?: string) {
    super("KVR_NO_HEALTHY_WORKER", 503, `No healthy worker serves the model \`${model}\`${detail ? ` (${detail})` : ""}`);
    this.model = model;
  }
}

export class QueueFullError extends GatewayError {
  constructor(model: string, size: number) {
    super("KVR_QUEUE_FULL", 503, `Every worker of \`${model}\` is busy and ${size} requests are already waiting; retry later`);
  }
}

export class QueueTimeoutError extends GatewayError {
  constructor(model: string, waitedMs: number) {
    super("KVR_QUEUE_TIMEOUT", 503, `Every worker of \`${model}\` stayed busy for ${waitedMs} ms; retry later`);
  }
}

export class UpstreamFailedError extends GatewayError {
  readonly workerId: string;
  constructor(workerId: string, detail: string, cause?: unknown) {
    super("KVR_UPSTREAM_FAILED", 502, `Worker ${workerId} failed: ${detail}`, { cause });
    this.workerId = workerId;
  }
}

export class UpstreamTimeoutError extends GatewayError {
  readonly workerId: string;
  constructor(workerId: string, timeoutMs: number) {
    super("KVR_UPSTREAM_TIMEOUT", 504, `Worker ${workerId} did not answer within ${timeoutMs} ms`);
    this.workerId = workerId;
  }
}

/** Any error as a GatewayError (unexpected ones become a 500 with KVR_INTERNAL). */
export function toGatewayError(err: unknown): GatewayError {
  if (err instanceof GatewayError) return err;
  if (err instanceof NoWorkerError) {
    return err.reason === "unknown_model" ? new ModelNotFoundError(err.model) : new NoHealthyWorkerError(err.model, err.reason === "all_excluded" ? "every worker is excluded" : undefined);
  }
  if (err instanceof KvrouteError && (err.code === "KVR_INVALID_INPUT" || err.code === "KVR_INVALID_CONFIG")) {
    return new BadRequestError(err.message);
  }
  const e = new GatewayError("KVR_INTERNAL", 500, err instanceof Error ? err.message : String(err), { cause: err });
  return e;
}
