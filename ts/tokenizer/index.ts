export {
  Tokenizer,
  type ChatRequest,
  type ChatRequestMessage,
  type ChatTemplateOptions,
  type EncodeOptions,
  type TokenizerCacheStats,
  type TokenizerOptions,
} from "./tokenizer.js";
