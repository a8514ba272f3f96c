//! kvroute-core: the parts of kvroute that must be fast and exact, with no Node dependency.
//!
//! - [`block_keys`]: the router's own chained XXH3-64 keys over token blocks (the default keying).
//! - [`engine_hash`]: vLLM-exact prefix-cache block hashes (sha256, sha256_cbor, xxhash variants).
//! - [`extra_keys`]: per-request extra keys (LoRA name, cache salt, multimodal features) and how
//!   they attach to blocks, shared by both keyings.
//! - [`indexer`]: which worker holds which block, on which tier; prefix-overlap queries.
//! - [`event_applier`]: vLLM KV event batches applied to an indexer (both keyings, engine-hash
//!   map, hash parity check).
//! - [`scheduler`]: one model's routing decisions (cost model, load bookkeeping, speculative
//!   entries, busy threshold, modes).
//! - [`mooncake`]: the prompt tokens of Mooncake trace records (the replay's trace expansion).
//! - [`prompt_embeds`]: `torch.save` prompt embeddings read, cast and keyed per block as vLLM does.
//! - [`sim_engine`]: a simulated vLLM engine (scheduler step, block pool, timing) for the
//!   virtual-time replay.
//! - [`tiers`]: the `medium` of KV events mapped to the GPU, CPU and disk tiers.

pub mod block_keys;
pub mod engine_hash;
pub mod error;
pub mod event_applier;
pub mod events;
pub mod extra_keys;
pub mod indexer;
pub mod mooncake;
pub mod prompt_embeds;
pub mod scheduler;
pub mod sim_engine;
pub mod tiers;

pub use error::{Error, ErrorCode};
