//! vLLM-exact prefix-cache block hashes (the `engine` keying).
//!
//! vLLM 0.33.0 (`vllm/v1/core/kv_cache_utils.py::hash_block_tokens`, `vllm/utils/hashing.py`)
//! hashes each full block as `hash_fn((parent_hash, tuple(block_token_ids), extra_keys))`, where
//! `parent_hash` is the previous block's digest (`NONE_HASH` for the first block) and `hash_fn`
//! is one of (`--prefix-caching-hash-algo`):
//!
//! | algorithm     | serialization                           | digest             |
//! |---------------|-----------------------------------------|--------------------|
//! | `sha256`      | `pickle.dumps(obj, protocol=5)`         | SHA-256, 32 bytes  |
//! | `sha256_cbor` | `cbor2.dumps(obj, canonical=True)`      | SHA-256, 32 bytes  |
//! | `xxhash`      | `pickle.dumps(obj, protocol=5)`         | XXH3-128, 16 bytes |
//! | `xxhash_cbor` | `cbor2.dumps(obj, canonical=True)`      | XXH3-128, 16 bytes |
//!
//! KV events carry the digest's low 64 bits: `int.from_bytes(digest, "big") & (2**64 - 1)`
//! ([`digest_to_u64`]). `NONE_HASH = hash_fn(seed)` with `seed` a `str`: see
//! [`EngineHasher::new`] and docs/hashing.md for the seed rules. Golden vectors from vLLM's own
//! code: fixtures/golden/block_hashes.json.
//!
//! # The parts, one file each
//!
//! - this file: the algorithms ([`HashAlgorithm`]), their digests ([`Digest`] and its 64-bit
//!   form, [`digest_to_u64`]), the seed and `NONE_HASH` ([`none_hash_for_seed`],
//!   [`UnsetSeedPolicy`]) and the [`EngineHasher`], which serializes each block
//!   ([`serialize_block`]) into the reused buffer and hashes the bytes;
//! - `pickle.rs`: the exact bytes of CPython's C pickler (protocol 5): framing, memo, int
//!   opcodes;
//! - `cbor.rs`: cbor2's canonical encoding;
//! - `scratch.rs`: the reused per-thread buffer both serialize into, and the word-at-a-time
//!   token writer they share.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};
use crate::extra_keys::{BlockExtraKeys, ExtraKeys};

pub(crate) mod cbor;
pub(crate) mod pickle;
mod scratch;
#[cfg(test)]
mod test_bytes;

use scratch::with_scratch;

/// The seed vLLM ≥ 0.33 derives `NONE_HASH` from when `PYTHONHASHSEED` is unset and the
/// algorithm is cryptographic (`DEFAULT_NONE_HASH_SEED` in kv_cache_utils.py).
pub const DEFAULT_NONE_HASH_SEED: &str = "vllm-none-hash";

/// vLLM's `--prefix-caching-hash-algo` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HashAlgorithm {
    /// SHA-256 over pickle protocol 5 (vLLM's default).
    Sha256,
    /// SHA-256 over canonical CBOR.
    Sha256Cbor,
    /// XXH3-128 over pickle protocol 5.
    Xxhash,
    /// XXH3-128 over canonical CBOR.
    XxhashCbor,
}

impl HashAlgorithm {
    pub const ALL: [HashAlgorithm; 4] = [
        HashAlgorithm::Sha256,
        HashAlgorithm::Sha256Cbor,
        HashAlgorithm::Xxhash,
        HashAlgorithm::XxhashCbor,
    ];

    /// The spelling of vLLM's flag.
    pub fn as_str(self) -> &'static str {
        match self {
            HashAlgorithm::Sha256 => "sha256",
            HashAlgorithm::Sha256Cbor => "sha256_cbor",
            HashAlgorithm::Xxhash => "xxhash",
            HashAlgorithm::XxhashCbor => "xxhash_cbor",
        }
    }

    /// Digest length in bytes (32 for SHA-256, 16 for XXH3-128).
    pub fn digest_len(self) -> usize {
        match self {
            HashAlgorithm::Sha256 | HashAlgorithm::Sha256Cbor => 32,
            HashAlgorithm::Xxhash | HashAlgorithm::XxhashCbor => 16,
        }
    }

    /// vLLM treats SHA-256 as collision resistant and the xxhash variants as not; that decides
    /// what an unset `PYTHONHASHSEED` means.
    pub fn is_cryptographic(self) -> bool {
        matches!(self, HashAlgorithm::Sha256 | HashAlgorithm::Sha256Cbor)
    }

    fn uses_cbor(self) -> bool {
        matches!(self, HashAlgorithm::Sha256Cbor | HashAlgorithm::XxhashCbor)
    }

    fn finish(self, bytes: &[u8]) -> Digest {
        match self {
            HashAlgorithm::Sha256 | HashAlgorithm::Sha256Cbor => {
                Digest::from_array32(Sha256::digest(bytes).into())
            }
            HashAlgorithm::Xxhash | HashAlgorithm::XxhashCbor => {
                let mut out = [0u8; 32];
                out[..16].copy_from_slice(&xxhash_rust::xxh3::xxh3_128(bytes).to_be_bytes());
                Digest {
                    len: 16,
                    bytes: out,
                }
            }
        }
    }
}

impl fmt::Display for HashAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for HashAlgorithm {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        HashAlgorithm::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| {
                Error::config(format!(
                    "unknown prefix caching hash algorithm {s:?} (expected sha256, sha256_cbor, \
                 xxhash or xxhash_cbor)"
                ))
            })
    }
}

/// A block digest as vLLM holds it (`BlockHash` bytes): 32 bytes for SHA-256, 16 for XXH3-128.
/// `Copy`, no heap.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    len: u8,
    bytes: [u8; 32],
}

impl Digest {
    /// A digest of 1..=32 bytes.
    pub fn from_bytes(b: &[u8]) -> Result<Self> {
        if b.is_empty() || b.len() > 32 {
            return Err(Error::input(format!(
                "digest must be 1..=32 bytes, got {}",
                b.len()
            )));
        }
        let mut bytes = [0u8; 32];
        bytes[..b.len()].copy_from_slice(b);
        Ok(Digest {
            len: b.len() as u8,
            bytes,
        })
    }

    /// Parses lowercase or uppercase hex.
    pub fn from_hex(s: &str) -> Result<Self> {
        let s = s.as_bytes();
        if !s.len().is_multiple_of(2) || s.len() > 64 {
            return Err(Error::input(
                "digest hex must have an even length of at most 64",
            ));
        }
        let nib = |c: u8| -> Result<u8> {
            match c {
                b'0'..=b'9' => Ok(c - b'0'),
                b'a'..=b'f' => Ok(c - b'a' + 10),
                b'A'..=b'F' => Ok(c - b'A' + 10),
                _ => Err(Error::input("digest hex has a non-hex character")),
            }
        };
        let mut buf = [0u8; 32];
        for (i, pair) in s.chunks_exact(2).enumerate() {
            buf[i] = nib(pair[0])? << 4 | nib(pair[1])?;
        }
        Digest::from_bytes(&buf[..s.len() / 2])
    }

    fn from_array32(bytes: [u8; 32]) -> Self {
        Digest { len: 32, bytes }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(self.len() * 2);
        for &b in self.as_bytes() {
            s.push(HEX[(b >> 4) as usize] as char);
            s.push(HEX[(b & 15) as usize] as char);
        }
        s
    }

    /// The 64-bit form vLLM puts in KV events; see [`digest_to_u64`].
    pub fn to_u64(&self) -> u64 {
        digest_to_u64(self)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.to_hex())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// The external 64-bit form of a digest, as in vLLM's KV events
/// (`maybe_convert_block_hash`: `int.from_bytes(digest, "big") & (2**64 - 1)`), i.e. the last
/// eight bytes read big-endian.
pub fn digest_to_u64(d: &Digest) -> u64 {
    let b = d.as_bytes();
    let mut v = 0u64;
    for &x in &b[b.len().saturating_sub(8)..] {
        v = v << 8 | x as u64;
    }
    v
}

/// `NONE_HASH` for an explicit seed string: `hash_fn(seed)`.
pub fn none_hash_for_seed(algorithm: HashAlgorithm, seed: &str) -> Digest {
    with_scratch(|buf| {
        buf.clear();
        if algorithm.uses_cbor() {
            cbor::text(buf, seed);
        } else {
            let mut p = pickle::Pickler::start(buf);
            p.str_value(seed);
            p.finish();
        }
        algorithm.finish(buf)
    })
}

/// What to do when the workers' `PYTHONHASHSEED` is unset (`seed: None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnsetSeedPolicy {
    /// vLLM ≥ 0.33: SHA-256 algorithms derive `NONE_HASH` from [`DEFAULT_NONE_HASH_SEED`];
    /// xxhash algorithms use random per-process bytes, which cannot be reproduced, so
    /// [`EngineHasher::with_policy`] fails for them.
    #[default]
    VllmDefault,
    /// Older vLLM (before the fixed default seed): every algorithm uses random bytes when
    /// `PYTHONHASHSEED` is unset, so an unset seed is always an error.
    Error,
}

/// How to hash like a given vLLM worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineHasherConfig {
    /// vLLM's hash block size (`--block-size`, or the hash block size of hybrid models).
    pub block_size: usize,
    /// `--prefix-caching-hash-algo`.
    pub algorithm: HashAlgorithm,
    /// The worker's `PYTHONHASHSEED` string exactly as set (`""` is a valid seed, distinct from
    /// unset); `None` when unset.
    pub seed: Option<String>,
}

/// Computes vLLM's block digests for one (block size, algorithm, NONE_HASH).
#[derive(Debug, Clone)]
pub struct EngineHasher {
    block_size: usize,
    algorithm: HashAlgorithm,
    none_hash: Digest,
}

impl EngineHasher {
    /// With [`UnsetSeedPolicy::VllmDefault`]: `seed: None` means vLLM 0.33's fixed default
    /// for sha256/sha256_cbor and an error for xxhash/xxhash_cbor.
    pub fn new(cfg: EngineHasherConfig) -> Result<Self> {
        Self::with_policy(cfg, UnsetSeedPolicy::VllmDefault)
    }

    pub fn with_policy(cfg: EngineHasherConfig, policy: UnsetSeedPolicy) -> Result<Self> {
        let seed = match (&cfg.seed, policy) {
            (Some(s), _) => s.as_str(),
            (None, UnsetSeedPolicy::VllmDefault) if cfg.algorithm.is_cryptographic() => {
                DEFAULT_NONE_HASH_SEED
            }
            (None, _) => {
                return Err(Error::config(format!(
                    "PYTHONHASHSEED is unset, so vLLM seeds {} block hashes with random bytes \
                     that cannot be reproduced; set PYTHONHASHSEED on the workers and here",
                    cfg.algorithm
                )))
            }
        };
        let none_hash = none_hash_for_seed(cfg.algorithm, seed);
        Self::with_none_hash(cfg.block_size, cfg.algorithm, none_hash)
    }

    /// With a `NONE_HASH` learned elsewhere (e.g. a worker that reports it).
    pub fn with_none_hash(
        block_size: usize,
        algorithm: HashAlgorithm,
        none_hash: Digest,
    ) -> Result<Self> {
        if block_size == 0 {
            return Err(Error::config("block_size must be > 0"));
        }
        Ok(EngineHasher {
            block_size,
            algorithm,
            none_hash,
        })
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn algorithm(&self) -> HashAlgorithm {
        self.algorithm
    }

    pub fn none_hash(&self) -> &Digest {
        &self.none_hash
    }

    /// The digest of one block (`hash_block_tokens`); `parent: None` chains from `NONE_HASH`.
    /// `block_tokens` is normally a full block, but any length is hashed as given.
    pub fn block_digest(
        &self,
        parent: Option<&Digest>,
        block_tokens: &[u32],
        block_extra: &BlockExtraKeys<'_>,
    ) -> Digest {
        let parent = parent.unwrap_or(&self.none_hash);
        with_scratch(|buf| self.encode_and_hash(buf, parent, block_tokens, block_extra))
    }

    /// Digests of every full block of `tokens`, chained from `NONE_HASH`, appended to `out`.
    /// A trailing partial block gets none (vLLM only hashes full blocks).
    pub fn digests(&self, tokens: &[u32], extra: &ExtraKeys, out: &mut Vec<Digest>) {
        out.reserve(tokens.len() / self.block_size);
        self.for_each_digest(tokens, extra, |d| out.push(*d));
    }

    /// Like [`digests`](Self::digests) but appends the 64-bit external forms.
    pub fn hashes(&self, tokens: &[u32], extra: &ExtraKeys, out: &mut Vec<u64>) {
        out.reserve(tokens.len() / self.block_size);
        self.for_each_digest(tokens, extra, |d| out.push(digest_to_u64(d)));
    }

    fn for_each_digest(&self, tokens: &[u32], extra: &ExtraKeys, mut f: impl FnMut(&Digest)) {
        with_scratch(|buf| {
            let mut parent = self.none_hash;
            let blocks = tokens.chunks_exact(self.block_size);
            if extra.is_empty() {
                for block in blocks {
                    parent = self.encode_and_hash(buf, &parent, block, &BlockExtraKeys::NONE);
                    f(&parent);
                }
            } else {
                for (block, keys) in blocks.zip(extra.blocks(self.block_size, tokens.len())) {
                    parent = self.encode_and_hash(buf, &parent, block, &keys);
                    f(&parent);
                }
            }
        })
    }

    fn encode_and_hash(
        &self,
        buf: &mut Vec<u8>,
        parent: &Digest,
        tokens: &[u32],
        extra: &BlockExtraKeys<'_>,
    ) -> Digest {
        buf.clear();
        serialize_block(self.algorithm, parent.as_bytes(), tokens, extra, buf);
        self.algorithm.finish(buf)
    }
}

/// Appends to `out` the exact bytes vLLM hashes for one block with `algorithm`: the pickle
/// (protocol 5) or canonical CBOR of `(parent, tuple(tokens), extra_keys)`.
pub fn serialize_block(
    algorithm: HashAlgorithm,
    parent: &[u8],
    tokens: &[u32],
    extra: &BlockExtraKeys<'_>,
    out: &mut Vec<u8>,
) {
    if algorithm.uses_cbor() {
        cbor::block(out, parent, tokens, extra);
    } else {
        pickle::block(out, parent, tokens, extra);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn algorithm_names_round_trip() {
        for a in HashAlgorithm::ALL {
            assert_eq!(a.as_str().parse::<HashAlgorithm>().unwrap(), a);
        }
        assert!("sha1".parse::<HashAlgorithm>().is_err());
        assert!("builtin".parse::<HashAlgorithm>().is_err());
    }

    #[test]
    fn digest_u64_is_low_eight_bytes_big_endian() {
        let d = Digest::from_hex("00112233445566778899aabbccddeeff").unwrap();
        assert_eq!(digest_to_u64(&d), 0x8899_aabb_ccdd_eeff);
        assert_eq!(Digest::from_hex(&d.to_hex()).unwrap(), d);
    }

    #[test]
    fn unset_seed_rules() {
        let cfg = |algorithm| EngineHasherConfig {
            block_size: 16,
            algorithm,
            seed: None,
        };
        let h = EngineHasher::new(cfg(HashAlgorithm::Sha256)).unwrap();
        assert_eq!(
            *h.none_hash(),
            none_hash_for_seed(HashAlgorithm::Sha256, DEFAULT_NONE_HASH_SEED)
        );
        assert!(EngineHasher::new(cfg(HashAlgorithm::Xxhash)).is_err());
        assert!(EngineHasher::new(cfg(HashAlgorithm::XxhashCbor)).is_err());
        assert!(
            EngineHasher::with_policy(cfg(HashAlgorithm::Sha256Cbor), UnsetSeedPolicy::Error)
                .is_err()
        );
        let zero = EngineHasherConfig {
            block_size: 0,
            ..cfg(HashAlgorithm::Sha256)
        };
        assert!(EngineHasher::new(zero).is_err());
    }

    #[test]
    fn partial_block_gets_no_digest_and_chain_matches_block_digest() {
        let h = EngineHasher::new(EngineHasherConfig {
            block_size: 4,
            algorithm: HashAlgorithm::Sha256Cbor,
            seed: Some("0".into()),
        })
        .unwrap();
        let tokens: Vec<u32> = (0..11).collect();
        let mut out = Vec::new();
        h.digests(&tokens, &ExtraKeys::default(), &mut out);
        assert_eq!(out.len(), 2);
        let d0 = h.block_digest(None, &tokens[..4], &BlockExtraKeys::NONE);
        let d1 = h.block_digest(Some(&d0), &tokens[4..8], &BlockExtraKeys::NONE);
        assert_eq!(out, vec![d0, d1]);
        let mut u = Vec::new();
        h.hashes(&tokens, &ExtraKeys::default(), &mut u);
        assert_eq!(u, vec![d0.to_u64(), d1.to_u64()]);
    }
}
