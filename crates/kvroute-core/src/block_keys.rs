//! Router keys (the default `tokens` keying): the router's own chained XXH3-64 over
//! (parent key, block tokens, block extra keys), independent of the workers' hash algorithm,
//! seed and vLLM version, and computed alike for requests and for `BlockStored` events.
//!
//! `key_i = XXH3_64(parent_i LE64 ‖ tokens_i as LE32 each ‖ extras_i)` (unseeded), where
//! `parent_0 = ROOT_KEY` and `parent_i = key_{i-1}`. `extras_i` is empty for a block without
//! extra keys; otherwise it is a sequence of records, in vLLM's order:
//!
//! | record       | bytes                                                        |
//! |--------------|--------------------------------------------------------------|
//! | LoRA name    | `0x01`, len as LE32, UTF-8 bytes                             |
//! | multimodal   | `0x02`, len as LE32, identifier bytes, relative offset LE64 (i64) |
//! | cache salt   | `0x03`, len as LE32, UTF-8 bytes                             |
//!
//! Every block of one keyer has the same token count and the parent is fixed-size, so the
//! records are the whole tail and each is self-delimiting: distinct inputs give distinct byte
//! strings. The LoRA path is left out on purpose: KV events carry only the LoRA name.

use std::cell::RefCell;

use xxhash_rust::xxh3::xxh3_64;

use crate::error::{Error, Result};
use crate::extra_keys::{BlockExtraKeys, ExtraKeys};

/// Parent key of every first block: the ASCII bytes "kvroute0" read big-endian.
pub const ROOT_KEY: u64 = 0x6b76_726f_7574_6530;

const REC_LORA: u8 = 0x01;
const REC_MM: u8 = 0x02;
const REC_SALT: u8 = 0x03;
const REC_EMBEDS: u8 = 0x04;

/// Computes router keys for one block size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouterKeyer {
    block_size: usize,
}

impl RouterKeyer {
    pub fn new(block_size: usize) -> Result<Self> {
        if block_size == 0 {
            return Err(Error::config("block_size must be > 0"));
        }
        Ok(RouterKeyer { block_size })
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// The key of one block; `parent: None` means the first block (parent [`ROOT_KEY`]).
    pub fn block_key(
        &self,
        parent: Option<u64>,
        block_tokens: &[u32],
        block_extra: &BlockExtraKeys<'_>,
    ) -> u64 {
        with_scratch(|buf| key(buf, parent.unwrap_or(ROOT_KEY), block_tokens, block_extra))
    }

    /// `keys(tokens)` (no extra keys) when `known` holds the keys of the first `known.len()`
    /// blocks already: those are copied, the rest chained on from the last of them, so a
    /// sequence that grows is never hashed from its start again. Appended to `out`.
    pub fn extend(&self, known: &[u64], tokens: &[u32], out: &mut Vec<u64>) {
        let blocks = tokens.len() / self.block_size;
        let n = known.len().min(blocks);
        out.reserve(blocks);
        out.extend_from_slice(&known[..n]);
        with_scratch(|buf| {
            let mut parent = if n == 0 { ROOT_KEY } else { known[n - 1] };
            for block in tokens[n * self.block_size..].chunks_exact(self.block_size) {
                parent = key(buf, parent, block, &BlockExtraKeys::NONE);
                out.push(parent);
            }
        })
    }

    /// Keys of every full block of `tokens`, chained from [`ROOT_KEY`], appended to `out`.
    /// A trailing partial block gets none.
    pub fn keys(&self, tokens: &[u32], extra: &ExtraKeys, out: &mut Vec<u64>) {
        let blocks = tokens.chunks_exact(self.block_size);
        out.reserve(blocks.len());
        with_scratch(|buf| {
            let mut parent = ROOT_KEY;
            if extra.is_empty() {
                for block in blocks {
                    parent = key(buf, parent, block, &BlockExtraKeys::NONE);
                    out.push(parent);
                }
            } else {
                for (block, keys) in blocks.zip(extra.blocks(self.block_size, tokens.len())) {
                    parent = key(buf, parent, block, &keys);
                    out.push(parent);
                }
            }
        })
    }
}

/// Blocks of up to this many tokens without extra keys are keyed from a stack buffer.
const STACK_TOKENS: usize = 64;

/// The key of a block without extra keys: its bytes laid out in a fixed array (no growth check
/// per token, so the copy vectorizes), the same bytes [`key`] would hash.
#[inline(always)]
fn plain_key(parent: u64, tokens: &[u32]) -> u64 {
    let mut a = [0u8; 8 + 4 * STACK_TOKENS];
    let n = 8 + 4 * tokens.len();
    a[..8].copy_from_slice(&parent.to_le_bytes());
    for (c, &t) in a[8..n].chunks_exact_mut(4).zip(tokens) {
        c.copy_from_slice(&t.to_le_bytes());
    }
    xxh3_64(&a[..n])
}

#[inline]
fn key(buf: &mut Vec<u8>, parent: u64, tokens: &[u32], extra: &BlockExtraKeys<'_>) -> u64 {
    if extra.is_empty() && tokens.len() <= STACK_TOKENS {
        return plain_key(parent, tokens);
    }
    buf.clear();
    buf.extend_from_slice(&parent.to_le_bytes());
    for &t in tokens {
        buf.extend_from_slice(&t.to_le_bytes());
    }
    if !extra.is_empty() {
        if let Some(l) = extra.lora {
            record(buf, REC_LORA, l.name);
        }
        for (id, off) in extra.mm_keys() {
            record(buf, REC_MM, id);
            buf.extend_from_slice(&off.to_le_bytes());
        }
        if let Some(s) = extra.cache_salt {
            record(buf, REC_SALT, s);
        }
        if let Some(d) = extra.prompt_embeds {
            buf.push(REC_EMBEDS);
            buf.extend_from_slice(d);
        }
    }
    xxh3_64(buf)
}

fn record(buf: &mut Vec<u8>, tag: u8, s: &str) {
    buf.push(tag);
    buf.extend_from_slice(&(s.len() as u32).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(1024));
}

fn with_scratch<R>(f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            let r = f(&mut buf);
            if buf.capacity() > 1 << 20 {
                *buf = Vec::with_capacity(1024);
            }
            r
        }
        Err(_) => f(&mut Vec::new()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extra_keys::MmFeature;

    #[test]
    fn extend_continues_from_known_keys() {
        let k = RouterKeyer::new(4).unwrap();
        let tokens: Vec<u32> = (0..37).collect();
        let mut all = Vec::new();
        k.keys(&tokens, &ExtraKeys::default(), &mut all);
        for n in 0..=all.len() {
            let mut out = Vec::new();
            k.extend(&all[..n], &tokens, &mut out);
            assert_eq!(out, all, "{n} known");
        }
        let mut out = Vec::new();
        k.extend(&all, &tokens[..8], &mut out);
        assert_eq!(out, all[..2]);
    }

    #[test]
    fn first_key_is_xxh3_of_root_and_tokens() {
        let k = RouterKeyer::new(2).unwrap();
        let mut bytes = ROOT_KEY.to_le_bytes().to_vec();
        bytes.extend_from_slice(&7u32.to_le_bytes());
        bytes.extend_from_slice(&70_000u32.to_le_bytes());
        assert_eq!(
            k.block_key(None, &[7, 70_000], &BlockExtraKeys::NONE),
            xxh3_64(&bytes)
        );
    }

    #[test]
    fn stack_and_buffer_paths_hash_the_same_bytes() {
        // Block sizes on both sides of STACK_TOKENS: every key is XXH3 of the documented bytes.
        for bs in [1, 16, STACK_TOKENS - 1, STACK_TOKENS, STACK_TOKENS + 1, 128] {
            let k = RouterKeyer::new(bs).unwrap();
            let tokens: Vec<u32> = (0..3 * bs as u32)
                .map(|t| t.wrapping_mul(0x9E37_79B9))
                .collect();
            let mut out = Vec::new();
            k.keys(&tokens, &ExtraKeys::default(), &mut out);
            let mut parent = ROOT_KEY;
            for (i, block) in tokens.chunks_exact(bs).enumerate() {
                let mut bytes = parent.to_le_bytes().to_vec();
                for t in block {
                    bytes.extend_from_slice(&t.to_le_bytes());
                }
                parent = xxh3_64(&bytes);
                assert_eq!(out[i], parent, "block size {bs}, block {i}");
            }
        }
    }

    #[test]
    fn chain_and_partial_block() {
        let k = RouterKeyer::new(4).unwrap();
        let tokens: Vec<u32> = (100..111).collect();
        let mut out = Vec::new();
        k.keys(&tokens, &ExtraKeys::default(), &mut out);
        assert_eq!(out.len(), 2);
        let k0 = k.block_key(None, &tokens[..4], &BlockExtraKeys::NONE);
        assert_eq!(
            out,
            vec![
                k0,
                k.block_key(Some(k0), &tokens[4..8], &BlockExtraKeys::NONE)
            ]
        );
        assert!(RouterKeyer::new(0).is_err());
    }

    #[test]
    fn extras_are_unambiguous() {
        let k = RouterKeyer::new(2).unwrap();
        let a = ExtraKeys {
            prompt_embeds: Vec::new(),
            lora_name: Some("ab".into()),
            ..Default::default()
        };
        let b = ExtraKeys {
            prompt_embeds: Vec::new(),
            cache_salt: Some("ab".into()),
            ..Default::default()
        };
        let c = ExtraKeys {
            prompt_embeds: Vec::new(),
            lora_name: Some("a".into()),
            cache_salt: Some("b".into()),
            ..Default::default()
        };
        let d = ExtraKeys {
            prompt_embeds: Vec::new(),
            mm: vec![MmFeature::new("ab", 0, 1)],
            ..Default::default()
        };
        let mut keys = Vec::new();
        for e in [ExtraKeys::default(), a, b, c, d] {
            let mut out = Vec::new();
            k.keys(&[1, 2], &e, &mut out);
            keys.push(out[0]);
        }
        let mut dedup = keys.clone();
        dedup.sort_unstable();
        dedup.dedup();
        assert_eq!(dedup.len(), keys.len());
    }
}
