/** The gateway's configuration: schema (validation, defaults, env names) and loading. */
export {
  defaultGatewayConfig,
  describeSchema,
  envName,
  GATEWAY_SCHEMA,
  ROUTER_MODES,
  validateGatewayConfig,
  WORKER_ROLES,
  type DisaggConfig,
  type GatewayConfig,
  type GatewayConfigInput,
  type ModelEntryInput,
  type WorkerEntryInput,
  type ModelEntry,
  type QueueConfig,
  type WorkerEntry,
} from "./schema.js";
export { CONFIG_FILE_ENV, loadGatewayConfig, parseConfigText, readConfigFile, type LoadConfigOptions } from "./load.js";
