/** The OpenAI gateway: createGateway() (a request handler) and startGateway() (a node:http server). */
export { Admission, type AdmissionOptions } from "./admission.js";
export { type GatewayRouter, type PromptTokenizer } from "./context.js";
export { ModelTokenizers } from "./tokenizers.js";
export { findMismatch, TokenizationCheck, type Mismatch } from "./tokenization-check.js";
export {
  BadRequestError,
  BodyTooLargeError,
  ClientTimeoutError,
  GatewayError,
  MethodNotAllowedError,
  ModelNotFoundError,
  NoHealthyWorkerError,
  QueueFullError,
  QueueTimeoutError,
  RouteNotFoundError,
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
