export {
  BlockHasher,
  ENGINE_HASH_ALGORITHMS,
  toTokenArray,
  type BlockHasherOptions,
  type EngineHashAlgorithm,
  type ExtraKeys,
  type HashAlgorithm,
  type MmFeature,
  type TokenIds,
} from "./core/block-hasher.js";
export {
  KvIndexer,
  type KvIndexerOptions,
  type KvIndexerStats,
  type WorkerMatch,
  type WorkerRef,
} from "./core/kv-indexer.js";
export {
  fromNative,
  InvalidConfigError,
  InvalidInputError,
  KvrouteError,
  type KvrouteErrorCode,
} from "./errors.js";
export { native } from "./native.js";
