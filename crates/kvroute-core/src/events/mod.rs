//! vLLM KV cache events: the typed model, a decoder that accepts every released wire form, and
//! an encoder that reproduces vLLM's bytes exactly for each form.
//!
//! The wire formats are specified in `docs/vllm-kv-events.md`; golden frames produced by vLLM's
//! own publisher code live in `fixtures/golden/kv_events/` (`tests/events_golden.rs` checks
//! both directions against them). In short, a ZMQ message is `[topic, seq (8 bytes, big-endian),
//! payload]` and the payload is a msgpack `KVEventBatch`:
//!
//! - batch: always an array `[ts: float64, events: array, data_parallel_rank: int | nil]`
//!   (vLLM 0.9.0: `[ts, events]` only);
//! - events up to vLLM 0.23: tagged arrays `["BlockStored", block_hashes, parent_block_hash, ...]`
//!   with *every* field present (msgspec ignores `omit_defaults` for `array_like` structs);
//! - events from vLLM 0.24: tagged maps `{"type": "BlockStored", "block_hashes": ..., ...}` where
//!   fields with a default (`extra_keys`, `group_idx`, ...) are omitted when they are None.
//!
//! Decoding is format-agnostic (arrays or maps, at batch and event level, any field order in
//! maps, unknown map keys and extra trailing array items ignored), so a single decoder serves every
//! release. Encoding needs the target [`WireFormat`].
//!
//! ## Failure policy
//! - **Whole batch fails** ([`DecodeError`]): bytes that are not one well-formed msgpack value,
//!   trailing bytes, a batch that is not an array/map of the right shape, a missing or non-numeric
//!   `ts`, `events` not an array, a non-integer `data_parallel_rank`. Also when an event is so
//!   broken that its extent cannot be found (truncated / bad lengths): `event_index` says which.
//! - **One event is skipped** (recorded in [`KvEventBatch::skipped`], the batch still decodes):
//!   an unknown event type (a future vLLM), or a known type whose fields are wrong (a missing
//!   required field, a block hash that is neither int nor bytes, a token id outside `u32`...).
//!   The rest of the batch is applied; a consumer that needs exactness should treat any skipped
//!   `BlockStored`/`BlockRemoved` as a reason to resync that worker.

mod direct;
pub mod msgpack;
mod wire;

pub use direct::{decode_direct, DirectError, DIRECT_CLEARED, DIRECT_REMOVED, DIRECT_STORED};
pub use wire::{decode_batch, encode_batch};

use std::fmt;

use msgpack::Value;

/// Inline storage for hash bytes up to 32 bytes (sha256); longer ones go to the heap.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct HashBytes(HashBytesRepr);

#[derive(Clone, PartialEq, Eq, Hash)]
enum HashBytesRepr {
    Inline { len: u8, buf: [u8; 32] },
    Heap(Box<[u8]>),
}

impl HashBytes {
    pub fn new(b: &[u8]) -> Self {
        if b.len() <= 32 {
            let mut buf = [0u8; 32];
            buf[..b.len()].copy_from_slice(b);
            HashBytes(HashBytesRepr::Inline {
                len: b.len() as u8,
                buf,
            })
        } else {
            HashBytes(HashBytesRepr::Heap(b.into()))
        }
    }

    pub fn as_slice(&self) -> &[u8] {
        match &self.0 {
            HashBytesRepr::Inline { len, buf } => &buf[..*len as usize],
            HashBytesRepr::Heap(b) => b,
        }
    }
}

impl fmt::Debug for HashBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("0x")?;
        for b in self.as_slice() {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// A block hash exactly as it was on the wire.
///
/// vLLM >= 0.10.2 sends either the 64-bit int form (default, `VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=1`:
/// the last 8 bytes of the digest, big-endian, so always in `[0, 2^64)`) or the raw digest bytes
/// (`VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=0`). vLLM 0.9.0-0.10.1 sent `hash_value` ints, which with
/// the default `builtin` hash are Python `hash()` values, i.e. signed 64-bit (often negative).
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum BlockHash {
    /// A non-negative msgpack integer.
    Int(u64),
    /// A negative msgpack integer (vLLM <= 0.10.1 with the `builtin` hash).
    NegInt(i64),
    /// Raw digest bytes (32 for sha256/sha256_cbor, 16 for xxhash; multiples when vLLM 0.12-0.23
    /// merged hashes for hybrid block sizes).
    Bytes(HashBytes),
}

impl BlockHash {
    /// The 64-bit key of this hash: ints modulo 2^64 (two's complement for negatives, i.e.
    /// Python's `h & (2**64 - 1)`); bytes as `int.from_bytes(b, "big") & (2**64 - 1)`, i.e. the
    /// last 8 bytes big-endian (shorter inputs are zero-extended on the left). This equals what
    /// vLLM itself sends in int mode for the same digest.
    #[inline]
    pub fn to_u64(&self) -> u64 {
        match self {
            BlockHash::Int(v) => *v,
            BlockHash::NegInt(v) => *v as u64,
            BlockHash::Bytes(b) => bytes_to_u64(b.as_slice()),
        }
    }

    pub fn from_bytes(b: &[u8]) -> Self {
        BlockHash::Bytes(HashBytes::new(b))
    }

    /// From a signed value, choosing the variant msgspec's encoding implies.
    pub fn from_i64(v: i64) -> Self {
        if v >= 0 {
            BlockHash::Int(v as u64)
        } else {
            BlockHash::NegInt(v)
        }
    }
}

impl fmt::Debug for BlockHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlockHash::Int(v) => write!(f, "{v}"),
            BlockHash::NegInt(v) => write!(f, "{v}"),
            BlockHash::Bytes(b) => write!(f, "{b:?}"),
        }
    }
}

/// `int.from_bytes(b, "big") & (2**64 - 1)`.
#[inline]
pub fn bytes_to_u64(b: &[u8]) -> u64 {
    let tail = &b[b.len().saturating_sub(8)..];
    let mut buf = [0u8; 8];
    buf[8 - tail.len()..].copy_from_slice(tail);
    u64::from_be_bytes(buf)
}

/// The block hashes of one event: the 64-bit keys always (what the indexer wants, decoded
/// straight into a `Vec<u64>` with no per-hash allocation), plus the original wire forms only
/// when they are not all non-negative ints (bytes, or negative ints), for exact re-encoding.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct BlockHashes {
    keys: Vec<u64>,
    forms: Option<Vec<BlockHash>>,
}

impl BlockHashes {
    /// Hashes that are all non-negative ints.
    pub fn from_keys(keys: Vec<u64>) -> Self {
        BlockHashes { keys, forms: None }
    }

    pub fn from_hashes(hashes: Vec<BlockHash>) -> Self {
        let keys = hashes.iter().map(BlockHash::to_u64).collect();
        if hashes.iter().all(|h| matches!(h, BlockHash::Int(_))) {
            BlockHashes { keys, forms: None }
        } else {
            BlockHashes {
                keys,
                forms: Some(hashes),
            }
        }
    }

    /// The 64-bit key of every hash ([`BlockHash::to_u64`]).
    #[inline]
    pub fn keys(&self) -> &[u64] {
        &self.keys
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// True when every hash was a non-negative int on the wire.
    #[inline]
    pub fn all_ints(&self) -> bool {
        self.forms.is_none()
    }

    /// The wire form of hash `i`.
    pub fn get(&self, i: usize) -> Option<BlockHash> {
        match &self.forms {
            Some(f) => f.get(i).cloned(),
            None => self.keys.get(i).map(|&k| BlockHash::Int(k)),
        }
    }

    /// The wire forms, in order.
    pub fn iter(&self) -> impl Iterator<Item = BlockHash> + '_ {
        (0..self.len()).filter_map(move |i| self.get(i))
    }

    pub(crate) fn push_int(&mut self, v: u64) {
        self.keys.push(v);
        if let Some(f) = &mut self.forms {
            f.push(BlockHash::Int(v));
        }
    }

    pub(crate) fn push_form(&mut self, h: BlockHash) {
        if let BlockHash::Int(v) = h {
            return self.push_int(v);
        }
        let forms = self
            .forms
            .get_or_insert_with(|| self.keys.iter().map(|&k| BlockHash::Int(k)).collect());
        self.keys.push(h.to_u64());
        forms.push(h);
    }

    pub(crate) fn with_capacity(n: usize) -> Self {
        BlockHashes {
            keys: Vec::with_capacity(n),
            forms: None,
        }
    }
}

impl fmt::Debug for BlockHashes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl From<Vec<u64>> for BlockHashes {
    fn from(keys: Vec<u64>) -> Self {
        BlockHashes::from_keys(keys)
    }
}

/// Where a block lives. vLLM sends "GPU" (its own cache), "CPU" (offloading connector,
/// 0.11.1+), "STORAGE" (0.27+; "FS"/"OBJ" in 0.26); connectors may send others (Mooncake
/// sends lower-case "cpu"). Kept verbatim: compare with [`Medium::as_str`] case-insensitively if
/// needed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Medium {
    Gpu,
    Cpu,
    Other(Box<str>),
}

impl Medium {
    pub fn parse(s: &str) -> Self {
        match s {
            "GPU" => Medium::Gpu,
            "CPU" => Medium::Cpu,
            _ => Medium::Other(s.into()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Medium::Gpu => "GPU",
            Medium::Cpu => "CPU",
            Medium::Other(s) => s,
        }
    }
}

/// Per-block extra keys as vLLM publishes them (>= 0.17): one entry per block hash, each `None`
/// or a tuple of free-form items (LoRA name, mm identifier or `[identifier, offset]`, cache salt,
/// prompt-embeds digest bytes). See docs/vllm-kv-events.md.
pub type ExtraKeys = Vec<Option<Vec<Value>>>;

/// `BlockStored`: blocks newly cached (or, from a connector, known to a tier).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BlockStored {
    pub block_hashes: BlockHashes,
    pub parent_block_hash: Option<BlockHash>,
    /// All tokens of the stored blocks, `block_size` per block (empty for offload placeholders).
    pub token_ids: Vec<u32>,
    pub block_size: u32,
    pub lora_id: Option<i64>,
    /// 0.10.2+.
    pub medium: Option<Medium>,
    /// 0.14+.
    pub lora_name: Option<String>,
    /// 0.17+.
    pub extra_keys: Option<ExtraKeys>,
    /// 0.20+: KV cache group.
    pub group_idx: Option<i64>,
    /// 0.22+.
    pub kv_cache_spec_kind: Option<String>,
    /// 0.22+.
    pub kv_cache_spec_sliding_window: Option<i64>,
    /// 0.26+: "LOCAL" / "REMOTE".
    pub locality: Option<String>,
    /// 0.29+.
    pub ownership: Option<String>,
    /// 0.30+.
    pub session_id: Option<String>,
    /// 0.33+: per block, the tokens past it that went into its hash.
    pub lookahead_token_ids: Option<Vec<Vec<u32>>>,
}

/// `BlockRemoved`: blocks evicted.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BlockRemoved {
    pub block_hashes: BlockHashes,
    /// 0.10.2+.
    pub medium: Option<Medium>,
    /// 0.20+.
    pub group_idx: Option<i64>,
    /// 0.26+.
    pub locality: Option<String>,
    /// 0.29+.
    pub ownership: Option<String>,
}

/// One KV cache event. `BlockStored` is much larger than the other variants; it is kept
/// unboxed on purpose: the decoder builds events in place in the batch's `Vec`, and boxing
/// would cost an allocation per event on the hot path.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum KvEvent {
    BlockStored(BlockStored),
    BlockRemoved(BlockRemoved),
    /// Every block of the publisher is gone (cache reset).
    AllBlocksCleared,
}

impl KvEvent {
    /// The msgspec tag.
    pub fn type_name(&self) -> &'static str {
        match self {
            KvEvent::BlockStored(_) => "BlockStored",
            KvEvent::BlockRemoved(_) => "BlockRemoved",
            KvEvent::AllBlocksCleared => "AllBlocksCleared",
        }
    }

    /// The 64-bit keys of the event's block hashes (empty for `AllBlocksCleared`).
    pub fn block_keys(&self) -> &[u64] {
        match self {
            KvEvent::BlockStored(e) => e.block_hashes.keys(),
            KvEvent::BlockRemoved(e) => e.block_hashes.keys(),
            KvEvent::AllBlocksCleared => &[],
        }
    }
}

/// An event the decoder left out of an otherwise good batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippedEvent {
    /// Position in the batch's `events` array.
    pub index: usize,
    pub reason: &'static str,
    /// The event's type tag, when it could be read.
    pub tag: Option<String>,
}

/// One `KVEventBatch` payload.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KvEventBatch {
    /// `time.time()` at the engine step that produced the events.
    pub ts: f64,
    pub events: Vec<KvEvent>,
    /// The publishing engine's DP rank (0.9.1+; vLLM's ZMQ publisher always fills it in).
    pub data_parallel_rank: Option<i64>,
    /// Events that were dropped while decoding (never written by the encoder).
    pub skipped: Vec<SkippedEvent>,
}

/// Why a payload could not be decoded at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError {
    pub reason: &'static str,
    /// The event whose bytes could not even be delimited, if the failure was inside one.
    pub event_index: Option<usize>,
    /// Byte offset in the payload.
    pub offset: usize,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.event_index {
            Some(i) => write!(
                f,
                "invalid KV event batch: {} (event {i}, byte {})",
                self.reason, self.offset
            ),
            None => write!(
                f,
                "invalid KV event batch: {} (byte {})",
                self.reason, self.offset
            ),
        }
    }
}

impl std::error::Error for DecodeError {}

impl From<DecodeError> for crate::Error {
    fn from(e: DecodeError) -> Self {
        crate::Error::input(e.to_string())
    }
}

/// The wire forms vLLM has released, named by the first release that used each. Encoding with
/// a form drops the fields it does not have.
///
/// | form | releases | batch | events | BlockStored fields after the tag |
/// |---|---|---|---|---|
/// | `V0_9_0` | 0.9.0, 0.9.0.1 | `[ts, events]` | arrays | hashes, parent, tokens, block_size, lora_id |
/// | `V0_9_1` | 0.9.1 - 0.10.1.1 | `[ts, events, dp]` | arrays | same |
/// | `V0_10_2` | 0.10.2 - 0.13.0 | same | arrays | + medium (BlockRemoved too) |
/// | `V0_14` | 0.14.0 - 0.16.0 | same | arrays | + lora_name |
/// | `V0_17` | 0.17.0 - 0.19.1 | same | arrays | + extra_keys |
/// | `V0_20` | 0.20.0 - 0.21.0 | same | arrays | + group_idx (BlockRemoved too) |
/// | `V0_22` | 0.22.0 - 0.23.0 | same | arrays | + kv_cache_spec_kind, kv_cache_spec_sliding_window |
/// | `V0_24` | 0.24.0 - 0.25.1 | same | **maps**, defaults omitted | same fields |
/// | `V0_26` | 0.26.0 - 0.28.0 | same | maps | + locality (BlockRemoved too) |
/// | `V0_29` | 0.29.0 | same | maps | + ownership (BlockRemoved too) |
/// | `V0_30` | 0.30.0 - 0.32.0 | same | maps | + session_id |
/// | `V0_33` | 0.33.0 | same | maps | + lookahead_token_ids |
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WireFormat {
    V0_9_0,
    V0_9_1,
    V0_10_2,
    V0_14,
    V0_17,
    V0_20,
    V0_22,
    V0_24,
    V0_26,
    V0_29,
    V0_30,
    V0_33,
}

impl WireFormat {
    /// The oldest form (vLLM 0.9.0).
    pub const LEGACY: WireFormat = WireFormat::V0_9_0;
    /// The newest released form.
    pub const CURRENT: WireFormat = WireFormat::V0_33;
    /// The newest array-like form (events as arrays).
    pub const LAST_ARRAY_LIKE: WireFormat = WireFormat::V0_22;

    pub const ALL: [WireFormat; 12] = [
        WireFormat::V0_9_0,
        WireFormat::V0_9_1,
        WireFormat::V0_10_2,
        WireFormat::V0_14,
        WireFormat::V0_17,
        WireFormat::V0_20,
        WireFormat::V0_22,
        WireFormat::V0_24,
        WireFormat::V0_26,
        WireFormat::V0_29,
        WireFormat::V0_30,
        WireFormat::V0_33,
    ];

    /// The first vLLM release that used this form.
    pub fn first_release(self) -> &'static str {
        match self {
            WireFormat::V0_9_0 => "0.9.0",
            WireFormat::V0_9_1 => "0.9.1",
            WireFormat::V0_10_2 => "0.10.2",
            WireFormat::V0_14 => "0.14.0",
            WireFormat::V0_17 => "0.17.0",
            WireFormat::V0_20 => "0.20.0",
            WireFormat::V0_22 => "0.22.0",
            WireFormat::V0_24 => "0.24.0",
            WireFormat::V0_26 => "0.26.0",
            WireFormat::V0_29 => "0.29.0",
            WireFormat::V0_30 => "0.30.0",
            WireFormat::V0_33 => "0.33.0",
        }
    }

    /// The form a vLLM release uses ("0.27.1" -> `V0_26`). `None` before 0.9.0 (no ZMQ
    /// events) or for an unparsable version; releases newer than the newest known map to
    /// [`WireFormat::CURRENT`].
    pub fn for_vllm_version(version: &str) -> Option<WireFormat> {
        let v = parse_version(version)?;
        if v < (0, 9, 0) {
            return None;
        }
        WireFormat::ALL
            .iter()
            .rev()
            .copied()
            .find(|f| parse_version(f.first_release()).is_some_and(|first| v >= first))
    }

    /// Events are msgpack maps (0.24+) rather than arrays.
    #[inline]
    pub fn events_as_maps(self) -> bool {
        self >= WireFormat::V0_24
    }

    /// The batch carries `data_parallel_rank` (0.9.1+).
    #[inline]
    pub fn has_dp_rank(self) -> bool {
        self >= WireFormat::V0_9_1
    }

    /// How many `BlockStored` fields (in declaration order, after the tag) this form has.
    pub fn stored_field_count(self) -> usize {
        match self {
            WireFormat::V0_9_0 | WireFormat::V0_9_1 => 5,
            WireFormat::V0_10_2 => 6,
            WireFormat::V0_14 => 7,
            WireFormat::V0_17 => 8,
            WireFormat::V0_20 => 9,
            WireFormat::V0_22 | WireFormat::V0_24 => 11,
            WireFormat::V0_26 => 12,
            WireFormat::V0_29 => 13,
            WireFormat::V0_30 => 14,
            WireFormat::V0_33 => 15,
        }
    }

    /// How many `BlockRemoved` fields (after the tag) this form has.
    pub fn removed_field_count(self) -> usize {
        match self {
            WireFormat::V0_9_0 | WireFormat::V0_9_1 => 1,
            WireFormat::V0_10_2 | WireFormat::V0_14 | WireFormat::V0_17 => 2,
            WireFormat::V0_20 | WireFormat::V0_22 | WireFormat::V0_24 => 3,
            WireFormat::V0_26 => 4,
            WireFormat::V0_29 | WireFormat::V0_30 | WireFormat::V0_33 => 5,
        }
    }
}

fn parse_version(v: &str) -> Option<(u32, u32, u32)> {
    let v = v.trim().trim_start_matches('v');
    let core = v
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .next()?;
    let mut it = core.split('.').filter(|s| !s.is_empty());
    let major = it.next()?.parse().ok()?;
    let minor = it.next().map_or(Some(0), |s| s.parse().ok())?;
    let patch = it.next().map_or(Some(0), |s| s.parse().ok())?;
    Some((major, minor, patch))
}

/// `BlockStored` field names in declaration order (the array-like positions after the tag).
pub const BLOCK_STORED_FIELDS: [&str; 15] = [
    "block_hashes",
    "parent_block_hash",
    "token_ids",
    "block_size",
    "lora_id",
    "medium",
    "lora_name",
    "extra_keys",
    "group_idx",
    "kv_cache_spec_kind",
    "kv_cache_spec_sliding_window",
    "locality",
    "ownership",
    "session_id",
    "lookahead_token_ids",
];

/// How many leading `BlockStored` fields have no default (always written, even when None).
pub const BLOCK_STORED_REQUIRED: usize = 7;

/// `BlockRemoved` field names in declaration order.
pub const BLOCK_REMOVED_FIELDS: [&str; 5] = [
    "block_hashes",
    "medium",
    "group_idx",
    "locality",
    "ownership",
];

/// How many leading `BlockRemoved` fields have no default.
pub const BLOCK_REMOVED_REQUIRED: usize = 2;

/// The 8-byte big-endian sequence frame vLLM sends as the second part of each message.
#[inline]
pub fn seq_to_frame(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

/// Read a sequence frame (vLLM reads any length as an unsigned big-endian integer; we accept
/// 1..=8 bytes). `None` for an empty or longer frame.
#[inline]
pub fn seq_from_frame(frame: &[u8]) -> Option<u64> {
    if frame.is_empty() || frame.len() > 8 {
        return None;
    }
    Some(bytes_to_u64(frame))
}

/// The seq frame of the replay end marker: -1 as 8 signed big-endian bytes.
pub const REPLAY_END_SEQ: [u8; 8] = [0xff; 8];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_to_u64_is_last_8_bytes_big_endian() {
        let d: Vec<u8> = (1..=32).collect();
        assert_eq!(
            bytes_to_u64(&d),
            u64::from_be_bytes([25, 26, 27, 28, 29, 30, 31, 32])
        );
        assert_eq!(bytes_to_u64(&[1, 2]), 0x0102);
        assert_eq!(bytes_to_u64(&[]), 0);
        assert_eq!(BlockHash::NegInt(-1).to_u64(), u64::MAX);
        assert_eq!(BlockHash::from_i64(-2).to_u64(), u64::MAX - 1);
        assert_eq!(BlockHash::from_i64(5), BlockHash::Int(5));
    }

    #[test]
    fn hash_bytes_inline_and_heap() {
        let small = HashBytes::new(&[7; 16]);
        let big = HashBytes::new(&[9; 64]);
        assert_eq!(small.as_slice(), &[7; 16]);
        assert_eq!(big.as_slice(), &[9; 64][..]);
        assert_eq!(format!("{:?}", HashBytes::new(&[0xab, 1])), "0xab01");
    }

    #[test]
    fn block_hashes_keep_forms_only_when_needed() {
        let mut h = BlockHashes::with_capacity(3);
        h.push_int(1);
        assert!(h.all_ints());
        h.push_form(BlockHash::NegInt(-5));
        h.push_int(2);
        assert!(!h.all_ints());
        assert_eq!(h.keys(), &[1, (-5i64) as u64, 2]);
        assert_eq!(
            h.iter().collect::<Vec<_>>(),
            vec![BlockHash::Int(1), BlockHash::NegInt(-5), BlockHash::Int(2)]
        );
        let h2 = BlockHashes::from_hashes(h.iter().collect());
        assert_eq!(h, h2);
        assert!(BlockHashes::from_hashes(vec![BlockHash::Int(3)]).all_ints());
    }

    #[test]
    fn versions_map_to_forms() {
        let f = WireFormat::for_vllm_version;
        assert_eq!(f("0.8.5"), None);
        assert_eq!(f("0.9.0"), Some(WireFormat::V0_9_0));
        assert_eq!(f("0.9.0.1"), Some(WireFormat::V0_9_0));
        assert_eq!(f("0.9.1"), Some(WireFormat::V0_9_1));
        assert_eq!(f("0.10.1.1"), Some(WireFormat::V0_9_1));
        assert_eq!(f("0.10.2"), Some(WireFormat::V0_10_2));
        assert_eq!(f("0.13.0"), Some(WireFormat::V0_10_2));
        assert_eq!(f("0.16.0"), Some(WireFormat::V0_14));
        assert_eq!(f("0.19.1"), Some(WireFormat::V0_17));
        assert_eq!(f("0.21.0"), Some(WireFormat::V0_20));
        assert_eq!(f("0.23.0"), Some(WireFormat::V0_22));
        assert_eq!(f("0.25.1"), Some(WireFormat::V0_24));
        assert_eq!(f("0.28.0"), Some(WireFormat::V0_26));
        assert_eq!(f("0.29.0"), Some(WireFormat::V0_29));
        assert_eq!(f("0.32.0"), Some(WireFormat::V0_30));
        assert_eq!(f("v0.33.0"), Some(WireFormat::V0_33));
        assert_eq!(f("0.34.0rc1"), Some(WireFormat::CURRENT));
        assert_eq!(f("0.20.1-1"), Some(WireFormat::V0_20));
        assert_eq!(f("junk"), None);
    }

    #[test]
    fn seq_frames() {
        assert_eq!(seq_to_frame(258), [0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(
            seq_from_frame(&seq_to_frame(u64::MAX - 1)),
            Some(u64::MAX - 1)
        );
        assert_eq!(seq_from_frame(&[]), None);
        assert_eq!(seq_from_frame(&[1; 9]), None);
        assert_eq!(seq_from_frame(&REPLAY_END_SEQ), Some(u64::MAX));
    }
}
