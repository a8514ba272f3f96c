export {
  NixlAgent,
  NixlRegistration,
  type NixlAgentOptions,
  type NixlAvailability,
  type NixlDescList,
  type NixlMemType,
  type NixlNotification,
  type NixlRegion,
  type NixlTransferOptions,
  type NixlTransferResult,
} from "./agent.js";
