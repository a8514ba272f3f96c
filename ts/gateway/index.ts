/** The OpenAI gateway: createGateway() (a request handler) and startGateway() (a node:http server). */
export { Admission, type AdmissionOptions } from "./admission.js";
export { ApiKeys } from "./api-keys.js";
export { answerClientError } from "./client-errors.js";
export { MAX_JSON_DEPTH } from "./json-depth.js";
export { type GatewayRouter, type PromptTokenizer } from "./context.js";
export { ModelTokenizers } from "./tokenizers.js";
export { findMismatch, TokenizationCheck, type Mismatch } from "./tokenization-check.js";
export {
  BadRequestError,
  BodyTooLargeError,
  ClientTimeoutError,
  ForbiddenError,
  GatewayError,
  HeadersTooLargeError,
  MAX_ECHOED_CHARS,
  MethodNotAllowedError,
  ModelNotFoundError,
  NoHealthyWorkerError,
  QueueFullError,
  QueueTimeoutError,
  RouteNotFoundError,
  UnauthorizedError,
  UnsupportedMediaTypeError,
  UpstreamFailedError,
  UpstreamTimeoutError,
  type GatewayErrorCode,
} from "./errors.js";
export { createGateway, type CreateGatewayOptions, type Gateway } from "./gateway.js";
export { GatewayMetrics } from "./metrics.js";
export type { ChatMessage } from "./openai-request.js";
export { routerOptionsFromConfig, startGateway, workerRecordFromConfig, type RunningGateway, type StartGatewayOptions } from "./server.js";
export { WorkerFeeds, type WorkerFeedsOptions } from "./worker-feeds.js";
