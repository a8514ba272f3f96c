//! `BlockHasher`: router keys or vLLM-exact block hashes for a token sequence, one call per
//! sequence.

use kvroute_core::block_keys::RouterKeyer;
use kvroute_core::engine_hash::{EngineHasher, EngineHasherConfig, HashAlgorithm};
use napi::bindgen_prelude::{BigUint64Array, BigUint64ArraySlice, Buffer, Uint32ArraySlice};
use napi_derive::napi;

use crate::convert::{extra_keys, invalid_config, to_napi, ExtraKeysInput};

#[napi(object)]
pub struct BlockHasherOptions {
    pub block_size: u32,
    /// `"router"` (default) or a vLLM `--prefix-caching-hash-algo` value.
    pub algorithm: Option<String>,
    /// The engine's PYTHONHASHSEED; unset when absent.
    pub seed: Option<String>,
}

enum Keying {
    Router(RouterKeyer),
    Engine(EngineHasher),
}

#[napi]
pub struct BlockHasher {
    keying: Keying,
}

#[napi]
impl BlockHasher {
    #[napi(constructor)]
    pub fn new(options: BlockHasherOptions) -> napi::Result<Self> {
        let block_size = options.block_size as usize;
        let keying = match options.algorithm.as_deref().unwrap_or("router") {
            "router" => Keying::Router(RouterKeyer::new(block_size).map_err(to_napi)?),
            name => {
                let algorithm: HashAlgorithm = name.parse().map_err(|_| {
                    invalid_config(format!(
                        "unknown hash algorithm '{name}': expected router, sha256, sha256_cbor, \
                         xxhash or xxhash_cbor"
                    ))
                })?;
                let config = EngineHasherConfig {
                    block_size,
                    algorithm,
                    seed: options.seed,
                };
                Keying::Engine(EngineHasher::new(config).map_err(to_napi)?)
            }
        };
        Ok(BlockHasher { keying })
    }

    /// Bytes per digest: 8 (router), 32 (sha256*), 16 (xxhash*).
    #[napi(getter)]
    pub fn digest_length(&self) -> u32 {
        match &self.keying {
            Keying::Router(_) => 8,
            Keying::Engine(h) => h.algorithm().digest_len() as u32,
        }
    }

    /// 64-bit keys of every full block (the Vec's buffer becomes the typed array's, no copy).
    #[napi]
    pub fn hash(
        &self,
        tokens: Uint32ArraySlice,
        extra: Option<ExtraKeysInput>,
    ) -> napi::Result<BigUint64Array> {
        Ok(BigUint64Array::new(
            self.keys_of(&tokens, &extra_keys(extra)?),
        ))
    }

    /// `hash(tokens)` for a sequence whose first `known.length` block keys are known (router
    /// keys, no extra keys): only the blocks after them are hashed.
    #[napi]
    pub fn extend(
        &self,
        known: BigUint64ArraySlice,
        tokens: Uint32ArraySlice,
    ) -> napi::Result<BigUint64Array> {
        let Keying::Router(k) = &self.keying else {
            return Err(invalid_config(
                "extend needs router keys (algorithm \"router\")",
            ));
        };
        let mut keys = Vec::new();
        k.extend(&known, &tokens, &mut keys);
        Ok(BigUint64Array::new(keys))
    }

    /// The full digests of every full block, concatenated (`digestLength` bytes each).
    #[napi]
    pub fn digests(
        &self,
        tokens: Uint32ArraySlice,
        extra: Option<ExtraKeysInput>,
    ) -> napi::Result<Buffer> {
        let extra = extra_keys(extra)?;
        let mut out = Vec::new();
        match &self.keying {
            Keying::Router(_) => {
                for key in self.keys_of(&tokens, &extra) {
                    out.extend_from_slice(&key.to_be_bytes());
                }
            }
            Keying::Engine(h) => {
                let mut digests = Vec::new();
                h.digests(&tokens, &extra, &mut digests);
                for d in &digests {
                    out.extend_from_slice(d.as_bytes());
                }
            }
        }
        Ok(out.into())
    }

    fn keys_of(&self, tokens: &[u32], extra: &kvroute_core::extra_keys::ExtraKeys) -> Vec<u64> {
        let mut keys = Vec::new();
        match &self.keying {
            Keying::Router(k) => k.keys(tokens, extra, &mut keys),
            Keying::Engine(h) => h.hashes(tokens, extra, &mut keys),
        }
        keys
    }
}
