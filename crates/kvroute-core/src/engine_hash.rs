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
//! This module emits those exact bytes (CPython's C pickler: framing, memo, int opcodes; cbor2's
//! canonical encoding) into a reused per-thread buffer and hashes them. KV events carry the
//! digest's low 64 bits: `int.from_bytes(digest, "big") & (2**64 - 1)` ([`digest_to_u64`]).
//! `NONE_HASH = hash_fn(seed)` with `seed` a `str`: see [`EngineHasher::new`] and
//! docs/hashing.md for the seed rules. Golden vectors from vLLM's own code:
//! fixtures/golden/block_hashes.json.

use std::cell::RefCell;
use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};
use crate::extra_keys::{BlockExtraKeys, ExtraKeys};

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

/// Appends each token's encoding, given by `enc` as (little-endian word, length ≤ 8 and ≤
/// `max`): writes whole words into a zeroed tail and trims it, which beats per-token pushes.
#[inline(always)]
fn put_words(buf: &mut Vec<u8>, tokens: &[u32], max: usize, enc: impl Fn(u32) -> (u64, usize)) {
    let start = buf.len();
    buf.resize(start + tokens.len() * max + 8, 0);
    let mut pos = start;
    for &t in tokens {
        let (w, n) = enc(t);
        buf[pos..pos + 8].copy_from_slice(&w.to_le_bytes());
        pos += n;
    }
    buf.truncate(pos);
}

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(4096));
}

/// Runs `f` with this thread's serialization buffer (a fresh one if it is already in use).
fn with_scratch<R>(f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            let r = f(&mut buf);
            if buf.capacity() > 1 << 20 {
                *buf = Vec::with_capacity(4096); // don't keep a huge one-off buffer
            }
            r
        }
        Err(_) => f(&mut Vec::new()),
    })
}

/// Canonical CBOR as `cbor2.dumps(obj, canonical=True)` writes the block tuple: tuples are
/// arrays, `bytes` byte strings, `str` text strings, ints in their shortest head, `None` 0xf6.
pub(crate) mod cbor {
    use crate::extra_keys::BlockExtraKeys;

    #[inline(always)]
    pub fn head(buf: &mut Vec<u8>, major: u8, v: u64) {
        let m = major << 5;
        if v < 24 {
            buf.push(m | v as u8);
        } else if v <= 0xff {
            buf.extend_from_slice(&[m | 24, v as u8]);
        } else if v <= 0xffff {
            buf.push(m | 25);
            buf.extend_from_slice(&(v as u16).to_be_bytes());
        } else if v <= 0xffff_ffff {
            buf.push(m | 26);
            buf.extend_from_slice(&(v as u32).to_be_bytes());
        } else {
            buf.push(m | 27);
            buf.extend_from_slice(&v.to_be_bytes());
        }
    }

    pub fn int(buf: &mut Vec<u8>, v: i64) {
        if v >= 0 {
            head(buf, 0, v as u64);
        } else {
            head(buf, 1, !(v as u64)); // -1 - v
        }
    }

    pub fn text(buf: &mut Vec<u8>, s: &str) {
        head(buf, 3, s.len() as u64);
        buf.extend_from_slice(s.as_bytes());
    }

    pub fn bytes(buf: &mut Vec<u8>, b: &[u8]) {
        head(buf, 2, b.len() as u64);
        buf.extend_from_slice(b);
    }

    /// One unsigned int's head as a little-endian word and its length, without branches
    /// (token sizes are random, so branches would mispredict).
    #[inline(always)]
    fn token_word(t: u32) -> (u64, usize) {
        const HEAD: [u64; 4] = [0, 0x18, 0x19, 0x1a];
        const PAYLOAD: [u32; 4] = [0, 1, 2, 4];
        let class = (t >= 24) as usize + (t > 0xff) as usize + (t > 0xffff) as usize;
        let n = PAYLOAD[class];
        // The `n` low bytes of `t`, big-endian, in the low bytes of the word.
        let be = (t.swap_bytes() as u64) >> (32 - 8 * n);
        let head = if class == 0 { t as u64 } else { HEAD[class] };
        (head | be << 8, 1 + n as usize)
    }

    /// `(parent, tuple(tokens), extra_keys)`.
    pub fn block(buf: &mut Vec<u8>, parent: &[u8], tokens: &[u32], extra: &BlockExtraKeys<'_>) {
        buf.reserve(16 + parent.len() + tokens.len() * 5);
        buf.push(0x83);
        bytes(buf, parent);
        head(buf, 4, tokens.len() as u64);
        super::put_words(buf, tokens, 5, token_word);
        if extra.is_empty() {
            buf.push(0xf6);
            return;
        }
        head(buf, 4, extra.len() as u64);
        if let Some(l) = extra.lora {
            buf.push(0x83);
            text(buf, "lora");
            text(buf, l.name);
            text(buf, l.path);
        }
        for (id, off) in extra.mm_keys() {
            buf.push(0x83);
            text(buf, "mm");
            text(buf, id);
            int(buf, off);
        }
        if let Some(s) = extra.cache_salt {
            buf.push(0x82);
            text(buf, "cache_salt");
            text(buf, s);
        }
        if let Some(d) = extra.prompt_embeds {
            buf.push(0x82);
            text(buf, "prompt_embeds");
            bytes(buf, d);
        }
    }
}

/// The bytes of CPython's C pickler (`pickle.dumps(obj, protocol=5)`, Python 3.11) for the
/// block tuple, including its framing and memo.
///
/// Framing (protocol ≥ 4): after `PROTO 5` every opcode goes into a frame announced by
/// `FRAME <u64 len>`. When the pickler starts saving any object (an int, a string, a tuple, a
/// memo reference...) and the open frame already holds ≥ 64 KiB, it closes that frame; it also
/// closes it before a `str`/`bytes` payload of ≥ 64 KiB, which is written unframed. A closed
/// frame of fewer than 4 bytes gets no header. The last frame is closed after `STOP`.
///
/// Memo: every `bytes`, `str` and non-empty tuple is memoized (`MEMOIZE`) when first written;
/// writing the *same object* again emits `BINGET`. Within one block the only repeated objects
/// are the `"mm"` tag constant (one per multimodal key) and CPython's cached one-character
/// (Latin-1) and empty strings; other equal strings of a request are distinct objects.
pub(crate) mod pickle {
    use crate::extra_keys::BlockExtraKeys;

    const PROTO: u8 = 0x80;
    const FRAME: u8 = 0x95;
    const MEMOIZE: u8 = 0x94;
    const MARK: u8 = b'(';
    const TUPLE: u8 = b't';
    const TUPLE1: u8 = 0x85;
    const TUPLE2: u8 = 0x86;
    const TUPLE3: u8 = 0x87;
    const NONE: u8 = b'N';
    const STOP: u8 = b'.';
    const BININT: u8 = b'J';
    const BININT1: u8 = b'K';
    const BININT2: u8 = b'M';
    const LONG1: u8 = 0x8a;
    const BINGET: u8 = b'h';
    const LONG_BINGET: u8 = b'j';
    const SHORT_BINBYTES: u8 = b'C';
    const BINBYTES: u8 = b'B';
    const BINBYTES8: u8 = 0x8e;
    const SHORT_BINUNICODE: u8 = 0x8c;
    const BINUNICODE: u8 = b'X';
    const BINUNICODE8: u8 = 0x8d;

    const FRAME_HEADER: usize = 9;
    const FRAME_SIZE_MIN: usize = 4;
    const FRAME_SIZE_TARGET: usize = 64 * 1024;

    /// Largest encoding of one token (LONG1 of a u32 ≥ 2^31).
    const MAX_TOKEN_BYTES: usize = 7;

    /// A string object that may be written again in the same pickle.
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Shared {
        /// The `"mm"` constant of `_gen_mm_extra_hash_keys`.
        MmTag,
        /// CPython's empty-string singleton.
        Empty,
        /// CPython's singleton for this one Latin-1 character.
        Latin1(u8),
    }

    pub struct Pickler<'b> {
        buf: &'b mut Vec<u8>,
        /// Start of the open frame's header, if a frame is open.
        frame_start: Option<usize>,
        /// Memo entries written so far.
        memo_len: u32,
        /// Memo indices of the shared strings written so far: inline for the first few,
        /// then spilled (at most 258 distinct ones exist).
        shared: [(Shared, u32); 8],
        shared_len: usize,
        shared_spill: Vec<(Shared, u32)>,
    }

    impl<'b> Pickler<'b> {
        pub fn start(buf: &'b mut Vec<u8>) -> Self {
            buf.extend_from_slice(&[PROTO, 5]);
            Pickler {
                buf,
                frame_start: None,
                memo_len: 0,
                shared: [(Shared::Empty, 0); 8],
                shared_len: 0,
                shared_spill: Vec::new(),
            }
        }

        #[inline(always)]
        fn open(&mut self) {
            if self.frame_start.is_none() {
                self.frame_start = Some(self.buf.len());
                self.buf.extend_from_slice(&[0; FRAME_HEADER]);
            }
        }

        #[inline(always)]
        fn op(&mut self, b: &[u8]) {
            self.open();
            self.buf.extend_from_slice(b);
        }

        fn commit(&mut self) {
            if let Some(start) = self.frame_start.take() {
                let len = self.buf.len() - start - FRAME_HEADER;
                if len >= FRAME_SIZE_MIN {
                    self.buf[start] = FRAME;
                    self.buf[start + 1..start + FRAME_HEADER]
                        .copy_from_slice(&(len as u64).to_le_bytes());
                } else {
                    self.buf.drain(start..start + FRAME_HEADER);
                }
            }
        }

        /// Called as the pickler starts saving an object: closes a frame of ≥ 64 KiB.
        #[inline(always)]
        fn boundary(&mut self) {
            if let Some(start) = self.frame_start {
                if self.buf.len() - start - FRAME_HEADER >= FRAME_SIZE_TARGET {
                    self.commit();
                }
            }
        }

        #[inline(always)]
        fn frame_len(&self) -> usize {
            self.frame_start
                .map_or(0, |s| self.buf.len() - s - FRAME_HEADER)
        }

        fn memoize(&mut self) -> u32 {
            self.op(&[MEMOIZE]);
            self.memo_len += 1;
            self.memo_len - 1
        }

        /// Opcode header + payload; payloads of ≥ 64 KiB bypass the frame.
        fn payload(&mut self, header: &[u8], data: &[u8]) {
            if data.len() >= FRAME_SIZE_TARGET {
                self.commit();
                self.buf.extend_from_slice(header);
                self.buf.extend_from_slice(data);
            } else {
                self.op(header);
                self.op(data);
            }
        }

        pub fn bytes_value(&mut self, b: &[u8]) {
            self.boundary();
            let n = b.len();
            if n <= 0xff {
                self.payload(&[SHORT_BINBYTES, n as u8], b);
            } else if n as u64 <= 0xffff_ffff {
                let l = (n as u32).to_le_bytes();
                self.payload(&[BINBYTES, l[0], l[1], l[2], l[3]], b);
            } else {
                let l = (n as u64).to_le_bytes();
                let mut h = [BINBYTES8; 9];
                h[1..].copy_from_slice(&l);
                self.payload(&h, b);
            }
            self.memoize();
        }

        fn str_raw(&mut self, s: &str) {
            let n = s.len();
            if n <= 0xff {
                self.payload(&[SHORT_BINUNICODE, n as u8], s.as_bytes());
            } else if n as u64 <= 0xffff_ffff {
                let l = (n as u32).to_le_bytes();
                self.payload(&[BINUNICODE, l[0], l[1], l[2], l[3]], s.as_bytes());
            } else {
                let l = (n as u64).to_le_bytes();
                let mut h = [BINUNICODE8; 9];
                h[1..].copy_from_slice(&l);
                self.payload(&h, s.as_bytes());
            }
        }

        /// A `str` object never written before in this pickle.
        pub fn str_value(&mut self, s: &str) {
            self.boundary();
            self.str_raw(s);
            self.memoize();
        }

        /// A `str` that may be an object already written (see [`Shared`]).
        fn str_maybe_shared(&mut self, s: &str, shared: Option<Shared>) {
            if let Some(key) = shared {
                self.boundary();
                let known = self.shared[..self.shared_len]
                    .iter()
                    .chain(&self.shared_spill)
                    .find(|(k, _)| *k == key);
                if let Some(&(_, idx)) = known {
                    if idx <= 0xff {
                        self.op(&[BINGET, idx as u8]);
                    } else {
                        let l = idx.to_le_bytes();
                        self.op(&[LONG_BINGET, l[0], l[1], l[2], l[3]]);
                    }
                    return;
                }
                self.str_raw(s);
                let idx = self.memoize();
                if self.shared_len < self.shared.len() {
                    self.shared[self.shared_len] = (key, idx);
                    self.shared_len += 1;
                } else {
                    self.shared_spill.push((key, idx));
                }
            } else {
                self.str_value(s);
            }
        }

        /// A user string: shared only if CPython caches it (empty or one Latin-1 character).
        fn user_str(&mut self, s: &str) {
            let shared = if s.is_empty() {
                Some(Shared::Empty)
            } else {
                let mut chars = s.chars();
                match (chars.next(), chars.next()) {
                    (Some(c), None) if (c as u32) < 256 => Some(Shared::Latin1(c as u8)),
                    _ => None,
                }
            };
            self.str_maybe_shared(s, shared);
        }

        /// One token's opcode as a little-endian word and its length, without branches
        /// (token sizes are random, so branches would mispredict): BININT1, BININT2, BININT,
        /// or LONG1 with 5 bytes (4 + a zero sign byte) for u32 ≥ 2^31.
        #[inline(always)]
        fn token_word(t: u32) -> (u64, usize) {
            const HEAD: [u64; 4] = [
                BININT1 as u64,
                BININT2 as u64,
                BININT as u64,
                LONG1 as u64 | 5 << 8,
            ];
            const SHIFT: [u32; 4] = [8, 8, 8, 16];
            const LEN: [usize; 4] = [2, 3, 5, 7];
            let class = (t > 0xff) as usize + (t > 0xffff) as usize + (t > 0x7fff_ffff) as usize;
            (HEAD[class] | (t as u64) << SHIFT[class], LEN[class])
        }

        pub fn int(&mut self, v: i64) {
            self.boundary();
            self.open();
            if (0..=0xff).contains(&v) {
                self.buf.extend_from_slice(&[BININT1, v as u8]);
            } else if (0..=0xffff).contains(&v) {
                let b = (v as u16).to_le_bytes();
                self.buf.extend_from_slice(&[BININT2, b[0], b[1]]);
            } else if (i32::MIN as i64..=i32::MAX as i64).contains(&v) {
                self.buf.push(BININT);
                self.buf.extend_from_slice(&(v as i32).to_le_bytes());
            } else {
                // Shortest little-endian two's complement.
                let le = v.to_le_bytes();
                let mut n = 8;
                while n > 1 {
                    let top = le[n - 1];
                    let sign_next = le[n - 2] & 0x80;
                    if (top == 0 && sign_next == 0) || (top == 0xff && sign_next != 0) {
                        n -= 1;
                    } else {
                        break;
                    }
                }
                self.buf.extend_from_slice(&[LONG1, n as u8]);
                self.buf.extend_from_slice(&le[..n]);
            }
        }

        /// The tuple opcode for `n` elements after they were written (`MARK` was written
        /// before them when `n > 3`).
        fn end_tuple(&mut self, n: usize) {
            let op = match n {
                1 => TUPLE1,
                2 => TUPLE2,
                3 => TUPLE3,
                _ => TUPLE,
            };
            self.op(&[op]);
            self.memoize();
        }

        /// Starts saving a tuple of `n > 0` elements.
        fn begin_tuple(&mut self, n: usize) {
            self.boundary();
            if n > 3 {
                self.op(&[MARK]);
            }
        }

        fn tokens(&mut self, tokens: &[u32]) {
            if tokens.is_empty() {
                self.boundary();
                self.op(b")"); // EMPTY_TUPLE, not memoized
                return;
            }
            self.begin_tuple(tokens.len());
            self.open();
            if self.frame_len() + tokens.len() * MAX_TOKEN_BYTES < FRAME_SIZE_TARGET {
                // No frame can close inside this run.
                super::put_words(self.buf, tokens, MAX_TOKEN_BYTES, Self::token_word);
            } else {
                for &t in tokens {
                    self.boundary();
                    self.open();
                    let (w, n) = Self::token_word(t);
                    self.buf.extend_from_slice(&w.to_le_bytes()[..n]);
                }
            }
            self.end_tuple(tokens.len());
        }

        pub fn none(&mut self) {
            self.boundary();
            self.op(&[NONE]);
        }

        pub fn finish(mut self) {
            self.op(&[STOP]);
            self.commit();
        }
    }

    /// `(parent, tuple(tokens), extra_keys)`.
    pub fn block(buf: &mut Vec<u8>, parent: &[u8], tokens: &[u32], extra: &BlockExtraKeys<'_>) {
        buf.reserve(32 + parent.len() + tokens.len() * MAX_TOKEN_BYTES);
        let mut p = Pickler::start(buf);
        p.begin_tuple(3);
        p.bytes_value(parent);
        p.tokens(tokens);
        if extra.is_empty() {
            p.none();
        } else {
            let n = extra.len();
            p.begin_tuple(n);
            if let Some(l) = extra.lora {
                p.begin_tuple(3);
                p.str_value("lora");
                p.user_str(l.name);
                p.user_str(l.path);
                p.end_tuple(3);
            }
            for (id, off) in extra.mm_keys() {
                p.begin_tuple(3);
                p.str_maybe_shared("mm", Some(Shared::MmTag));
                p.user_str(id);
                p.int(off);
                p.end_tuple(3);
            }
            if let Some(s) = extra.cache_salt {
                p.begin_tuple(2);
                p.str_value("cache_salt");
                p.user_str(s);
                p.end_tuple(2);
            }
            if let Some(d) = extra.prompt_embeds {
                p.begin_tuple(2);
                p.str_value("prompt_embeds");
                p.bytes_value(d);
                p.end_tuple(2);
            }
            p.end_tuple(n);
        }
        p.end_tuple(3);
        p.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extra_keys::{LoraKey, MmBlockKey};

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    fn pickle_block(parent: &[u8], tokens: &[u32], extra: &BlockExtraKeys<'_>) -> String {
        let mut buf = Vec::new();
        pickle::block(&mut buf, parent, tokens, extra);
        hex(&buf)
    }

    fn cbor_block(parent: &[u8], tokens: &[u32], extra: &BlockExtraKeys<'_>) -> String {
        let mut buf = Vec::new();
        cbor::block(&mut buf, parent, tokens, extra);
        hex(&buf)
    }

    const P: [u8; 32] = [0x11; 32];
    const P_HEX: &str = "1111111111111111111111111111111111111111111111111111111111111111";

    // Expected bytes below are Python 3.11's `pickle.dumps(obj, protocol=5).hex()` and
    // `cbor2.dumps(obj, canonical=True).hex()` (cbor2 6.3.0), checked with pickletools.dis.

    #[test]
    fn pickle_sixteen_small_tokens() {
        let tokens: Vec<u32> = (0..16).collect();
        let want = format!(
            "8005954a000000000000004320{P_HEX}94284b004b014b024b034b044b054b064b074b084b094b0a\
             4b0b4b0c4b0d4b0e4b0f74944e87942e"
        );
        assert_eq!(pickle_block(&P, &tokens, &BlockExtraKeys::NONE), want);
    }

    #[test]
    fn pickle_int_opcodes_at_their_edges() {
        let tokens = [
            0,
            255,
            256,
            65535,
            65536,
            2_147_483_647,
            2_147_483_648,
            u32::MAX,
        ];
        let keys = [MmBlockKey {
            identifier: "xyz".into(),
            offset: -3,
        }];
        let extra = BlockExtraKeys {
            lora: Some(LoraKey {
                name: "ab",
                path: "cd",
            }),
            mm: crate::extra_keys::BlockMm::Keys(&keys),
            cache_salt: None,
            prompt_embeds: None,
        };
        let want = format!(
            "80059572000000000000004320{P_HEX}94284b004bff4d00014dffff4a000001004affffff7f8a05\
             00000080008a05ffffffff0074948c046c6f7261948c026162948c0263649487948c026d6d948c03\
             78797a944afdffffff8794869487942e"
        );
        assert_eq!(pickle_block(&P, &tokens, &extra), want);
    }

    #[test]
    fn pickle_short_tuples_and_16_byte_parent() {
        let p16 = [0x22u8; 16];
        let h16 = "22".repeat(16);
        assert_eq!(
            pickle_block(&p16, &[1], &BlockExtraKeys::NONE),
            format!("8005951b000000000000004310{h16}944b0185944e87942e")
        );
        assert_eq!(
            pickle_block(&P, &[1, 2], &BlockExtraKeys::NONE),
            format!("8005952d000000000000004320{P_HEX}944b014b0286944e87942e")
        );
        assert_eq!(
            pickle_block(&P, &[1, 2, 3], &BlockExtraKeys::NONE),
            format!("8005952f000000000000004320{P_HEX}944b014b024b0387944e87942e")
        );
        assert_eq!(
            pickle_block(&P, &[1, 2, 3, 4], &BlockExtraKeys::NONE),
            format!("80059532000000000000004320{P_HEX}94284b014b024b034b0474944e87942e")
        );
    }

    #[test]
    fn pickle_repeated_mm_tag_and_one_char_strings_use_binget() {
        // (P, (1,), (("mm","xyz",-3), ("mm","q",5), ("cache_salt","q")))
        let keys = [
            MmBlockKey {
                identifier: "xyz".into(),
                offset: -3,
            },
            MmBlockKey {
                identifier: "q".into(),
                offset: 5,
            },
        ];
        let extra = BlockExtraKeys {
            lora: None,
            mm: crate::extra_keys::BlockMm::Keys(&keys),
            cache_salt: Some("q"),
            prompt_embeds: None,
        };
        let want = format!(
            "80059559000000000000004320{P_HEX}944b0185948c026d6d948c0378797a944afdffffff8794\
             68028c0171944b0587948c0a63616368655f73616c749468058694879487942e"
        );
        assert_eq!(pickle_block(&P, &[1], &extra), want);
    }

    #[test]
    fn pickle_long1_shortest_twos_complement() {
        let enc = |v: i64| {
            let mut buf = Vec::new();
            let mut p = pickle::Pickler::start(&mut buf);
            p.int(v);
            p.finish();
            hex(&buf[11..buf.len() - 1])
        };
        assert_eq!(enc(-1), "4affffffff");
        assert_eq!(enc(i32::MIN as i64), "4a00000080");
        assert_eq!(enc(i32::MIN as i64 - 1), "8a05ffffff7fff");
        assert_eq!(enc(1 << 31), "8a050000008000");
        assert_eq!(enc(1 << 40), "8a06000000000001");
        assert_eq!(enc(-(1 << 39)), "8a050000000080");
        assert_eq!(enc(i64::MIN), "8a080000000000000080");
        assert_eq!(enc(i64::MAX), "8a08ffffffffffffff7f");
    }

    #[test]
    fn pickle_seed_string() {
        let mut buf = Vec::new();
        let mut p = pickle::Pickler::start(&mut buf);
        p.str_value("42");
        p.finish();
        assert_eq!(hex(&buf), "80059506000000000000008c023432942e");
        let mut buf = Vec::new();
        let mut p = pickle::Pickler::start(&mut buf);
        p.str_value("");
        p.finish();
        assert_eq!(hex(&buf), "80059504000000000000008c00942e");
    }

    #[test]
    fn pickle_huge_payload_is_written_outside_frames() {
        let salt = "y".repeat(70_000);
        let extra = BlockExtraKeys {
            cache_salt: Some(&salt),
            prompt_embeds: None,
            ..BlockExtraKeys::NONE
        };
        let mut buf = Vec::new();
        pickle::block(&mut buf, &P, &[1, 2], &extra);
        // FRAME 54 | ... 'cache_salt' MEMOIZE | BINUNICODE 70000 (unframed) | FRAME 8 | tail
        assert_eq!(hex(&buf[..11]), "8005953600000000000000");
        assert_eq!(buf[65], b'X');
        assert_eq!(&buf[66..70], &70_000u32.to_le_bytes());
        let tail = &buf[70 + 70_000..];
        assert_eq!(hex(tail), "950800000000000000948694859487942e");
    }

    #[test]
    fn cbor_block_shapes() {
        let tokens: Vec<u32> = (0..16).collect();
        assert_eq!(
            cbor_block(&P, &tokens, &BlockExtraKeys::NONE),
            format!("835820{P_HEX}90000102030405060708090a0b0c0d0e0ff6")
        );
        let tokens = [
            0,
            255,
            256,
            65535,
            65536,
            2_147_483_647,
            2_147_483_648,
            u32::MAX,
        ];
        let keys = [
            MmBlockKey {
                identifier: "xyz".into(),
                offset: -3,
            },
            MmBlockKey {
                identifier: "q".into(),
                offset: 5,
            },
        ];
        let extra = BlockExtraKeys {
            lora: Some(LoraKey {
                name: "ab",
                path: "cd",
            }),
            mm: crate::extra_keys::BlockMm::Keys(&keys),
            cache_salt: Some("q"),
            prompt_embeds: None,
        };
        assert_eq!(
            cbor_block(&P, &tokens, &extra),
            format!(
                "835820{P_HEX}880018ff19010019ffff1a000100001a7fffffff1a800000001affffffff84\
                 83646c6f726162616262636483626d6d6378797a2283626d6d617105826a63616368655f73616c\
                 746171"
            )
        );
        let mut buf = Vec::new();
        cbor::int(&mut buf, -(1 << 31) - 1);
        assert_eq!(hex(&buf), "3a80000000");
    }

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
