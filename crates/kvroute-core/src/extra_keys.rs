//! Per-request extra keys (LoRA adapter, cache salt, multimodal features) and the per-block extra
//! keys derived from them, with the rules of vLLM's `generate_block_hash_extra_keys`
//! (`vllm/v1/core/kv_cache_utils.py`, vLLM 0.33.0; see docs/hashing.md):
//!
//! - the LoRA adapter (name and path) goes on every block of a LoRA request;
//! - each multimodal feature goes on every block its placeholder range `[offset, offset + length)`
//!   overlaps, with its offset relative to the block start (negative when it began earlier);
//!   features are visited in order with vLLM's cursor, which assumes them sorted by offset;
//! - the cache salt goes on the first block only, and an empty salt counts as none;
//! - prompt embeddings put the sha256 of each full block's embedding rows on that block;
//! - order within a block: LoRA, then multimodal features, then the salt, then the embeddings
//!   digest; a block with none of them has no extra keys (vLLM hashes `None`).
//!
//! Both keyings use [`BlockExtraKeys`]: the engine keying serializes it exactly as vLLM does, the
//! router keying length-prefixes it. The common no-extras path allocates nothing.

/// sha256 of no bytes: vLLM's prompt-embeds key of a block past the embeddings.
pub const EMPTY_EMBEDS_DIGEST: [u8; 32] = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

/// A multimodal input placeholder: its content hash and where it sits in the token sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MmFeature {
    /// vLLM's `MultiModalFeatureSpec.identifier` (the content hash, with LoRA prefix if any).
    pub hash: String,
    /// First token of the placeholder range.
    pub offset: usize,
    /// Number of placeholder tokens.
    pub length: usize,
}

impl MmFeature {
    pub fn new(hash: impl Into<String>, offset: usize, length: usize) -> Self {
        MmFeature {
            hash: hash.into(),
            offset,
            length,
        }
    }

    fn end(&self) -> usize {
        self.offset.saturating_add(self.length)
    }
}

/// Extra keys of a whole request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtraKeys {
    /// `LoRARequest.lora_name`; `Some` means the request uses an adapter.
    pub lora_name: Option<String>,
    /// `LoRARequest.lora_path`. vLLM ≥ 0.33 hashes it next to the name; `None` is hashed as an
    /// empty path (which no real vLLM request has), so set it for engine-exact LoRA hashes.
    /// Router keys ignore it (KV events carry only the name).
    pub lora_path: Option<String>,
    /// `cache_salt` of the request; hashed into the first block only, empty means none.
    pub cache_salt: Option<String>,
    /// Multimodal placeholders, sorted by offset and non-overlapping (vLLM's assumption).
    pub mm: Vec<MmFeature>,
    /// Prompt embeddings: per block, the sha256 of its embedding rows (full blocks, then the
    /// partial last one: [`crate::prompt_embeds::PromptEmbeds::block_digests`]); blocks past
    /// them get the sha256 of no bytes, as in vLLM. The request's tokens are 0s.
    pub prompt_embeds: Vec<[u8; 32]>,
}

impl ExtraKeys {
    /// No LoRA, no salt, no multimodal features: every block hashes `None` as its extra keys.
    pub fn is_empty(&self) -> bool {
        self.lora_name.is_none()
            && self.salt().is_none()
            && self.mm.is_empty()
            && self.prompt_embeds.is_empty()
    }

    fn salt(&self) -> Option<&str> {
        self.cache_salt.as_deref().filter(|s| !s.is_empty())
    }

    fn lora(&self) -> Option<LoraKey<'_>> {
        self.lora_name.as_deref().map(|name| LoraKey {
            name,
            path: self.lora_path.as_deref().unwrap_or(""),
        })
    }

    /// The extra keys of the block `[start, end)`, given vLLM's multimodal cursor `mm_first`
    /// (0 for the first block; then the cursor returned for the previous block). Returns the
    /// keys and the cursor for the next block.
    pub fn block(&self, start: usize, end: usize, mm_first: usize) -> (BlockExtraKeys<'_>, usize) {
        let window = MmWindow {
            features: &self.mm,
            first: mm_first,
            start,
            end,
        };
        let next = window.next_cursor();
        let keys = BlockExtraKeys {
            lora: self.lora(),
            mm: if self.mm.is_empty() {
                BlockMm::None
            } else {
                BlockMm::Window(window)
            },
            cache_salt: if start == 0 { self.salt() } else { None },
            // vLLM hashes `prompt_embeds[start:end]` on every block once a request has them:
            // past the rows that is an empty slice.
            prompt_embeds: match (self.prompt_embeds.is_empty(), end > start) {
                (false, true) => Some(
                    self.prompt_embeds
                        .get(start / (end - start))
                        .unwrap_or(&EMPTY_EMBEDS_DIGEST),
                ),
                _ => None,
            },
        };
        (keys, next)
    }

    /// The extra keys of block number `index` of size `block_size`, without walking the blocks
    /// before it (the cursor is found by binary search, as vLLM does when it resumes hashing).
    pub fn block_at(&self, index: usize, block_size: usize) -> BlockExtraKeys<'_> {
        let start = index * block_size;
        let first = self.mm.partition_point(|f| f.end() <= start);
        self.block(start, start + block_size, first).0
    }

    /// Per-block extra keys of the full blocks of a `num_tokens`-token sequence, in order.
    pub fn blocks(&self, block_size: usize, num_tokens: usize) -> BlockExtraIter<'_> {
        let num_blocks = num_tokens.checked_div(block_size).unwrap_or(0);
        BlockExtraIter {
            keys: self,
            block_size,
            index: 0,
            num_blocks,
            mm_cursor: 0,
        }
    }
}

/// Iterator over the extra keys of consecutive full blocks; see [`ExtraKeys::blocks`].
#[derive(Debug, Clone)]
pub struct BlockExtraIter<'a> {
    keys: &'a ExtraKeys,
    block_size: usize,
    index: usize,
    num_blocks: usize,
    mm_cursor: usize,
}

impl<'a> Iterator for BlockExtraIter<'a> {
    type Item = BlockExtraKeys<'a>;

    fn next(&mut self) -> Option<BlockExtraKeys<'a>> {
        if self.index >= self.num_blocks {
            return None;
        }
        let start = self.index * self.block_size;
        let (keys, next) = self
            .keys
            .block(start, start + self.block_size, self.mm_cursor);
        self.mm_cursor = next;
        self.index += 1;
        Some(keys)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.num_blocks - self.index;
        (n, Some(n))
    }
}

impl ExactSizeIterator for BlockExtraIter<'_> {}

/// A LoRA adapter as hashed on each block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoraKey<'a> {
    pub name: &'a str,
    /// Empty when unknown (see [`ExtraKeys::lora_path`]).
    pub path: &'a str,
}

/// A multimodal feature as it appears in one block's extra keys: its identifier and its offset
/// relative to the block start (as in the `(mm_identifier, offset)` pairs of KV events).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MmBlockKey {
    pub identifier: String,
    pub offset: i64,
}

/// The multimodal part of one block's extra keys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BlockMm<'a> {
    /// No multimodal features.
    #[default]
    None,
    /// Derived from a request's features with vLLM's selection rule.
    Window(MmWindow<'a>),
    /// Already selected, e.g. decoded from a KV event.
    Keys(&'a [MmBlockKey]),
}

/// A request's features seen from one block `[start, end)`, with vLLM's cursor `first`.
/// Iterating yields what `_gen_mm_extra_hash_keys` appends, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmWindow<'a> {
    pub features: &'a [MmFeature],
    pub first: usize,
    pub start: usize,
    pub end: usize,
}

impl<'a> MmWindow<'a> {
    /// The cursor vLLM carries to the next block.
    fn next_cursor(&self) -> usize {
        let mut it = self.iter();
        for _ in it.by_ref() {}
        it.cursor
    }

    pub fn iter(&self) -> MmWindowIter<'a> {
        // vLLM returns early, cursor unchanged, when the last feature ends before the block.
        let done = match self.features.last() {
            None => true,
            Some(last) => last.end() <= self.start,
        };
        MmWindowIter {
            window: *self,
            cursor: self.first,
            done,
        }
    }
}

/// Iterator of `(identifier, relative offset)` for one block; see [`MmWindow`].
#[derive(Debug, Clone)]
pub struct MmWindowIter<'a> {
    window: MmWindow<'a>,
    cursor: usize,
    done: bool,
}

impl<'a> Iterator for MmWindowIter<'a> {
    type Item = (&'a str, i64);

    fn next(&mut self) -> Option<(&'a str, i64)> {
        let w = self.window;
        while !self.done && self.cursor < w.features.len() {
            let f = &w.features[self.cursor];
            if w.end <= f.offset {
                // The block has not reached this feature.
                self.done = true;
                break;
            }
            if w.start >= f.end() {
                // The block is past this feature.
                self.cursor += 1;
                continue;
            }
            if w.end >= f.end() {
                // The feature ends in this block; the next one may start in it too.
                self.cursor += 1;
            } else {
                self.done = true;
            }
            return Some((f.hash.as_str(), f.offset as i64 - w.start as i64));
        }
        None
    }
}

/// Iterator over the `(identifier, relative offset)` pairs of one block.
#[derive(Debug, Clone)]
pub enum MmKeys<'a> {
    None,
    Window(MmWindowIter<'a>),
    Keys(std::slice::Iter<'a, MmBlockKey>),
}

impl<'a> Iterator for MmKeys<'a> {
    type Item = (&'a str, i64);

    fn next(&mut self) -> Option<(&'a str, i64)> {
        match self {
            MmKeys::None => None,
            MmKeys::Window(it) => it.next(),
            MmKeys::Keys(it) => it.next().map(|k| (k.identifier.as_str(), k.offset)),
        }
    }
}

/// The extra keys of one block, in vLLM's order: LoRA, multimodal features, cache salt.
/// Borrowed and `Copy`: building it allocates nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlockExtraKeys<'a> {
    pub lora: Option<LoraKey<'a>>,
    pub mm: BlockMm<'a>,
    /// Only ever `Some` on the first block; an empty salt must be `None` (vLLM drops it).
    pub cache_salt: Option<&'a str>,
    /// The block's prompt-embeddings digest (last in vLLM's tuple).
    pub prompt_embeds: Option<&'a [u8; 32]>,
}

impl<'a> BlockExtraKeys<'a> {
    /// A block without extra keys.
    pub const NONE: BlockExtraKeys<'static> = BlockExtraKeys {
        lora: None,
        mm: BlockMm::None,
        cache_salt: None,
        prompt_embeds: None,
    };

    /// The multimodal `(identifier, relative offset)` pairs of this block, in order.
    pub fn mm_keys(&self) -> MmKeys<'a> {
        match self.mm {
            BlockMm::None => MmKeys::None,
            BlockMm::Window(w) => MmKeys::Window(w.iter()),
            BlockMm::Keys(k) => MmKeys::Keys(k.iter()),
        }
    }

    /// True when vLLM would hash `None` for this block.
    pub fn is_empty(&self) -> bool {
        self.lora.is_none()
            && self.cache_salt.is_none()
            && self.prompt_embeds.is_none()
            && self.mm_keys().next().is_none()
    }

    /// Number of entries in vLLM's extra-keys tuple for this block.
    pub fn len(&self) -> usize {
        self.lora.is_some() as usize
            + self.mm_keys().count()
            + self.cache_salt.is_some() as usize
            + self.prompt_embeds.is_some() as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mm_of(k: &BlockExtraKeys<'_>) -> Vec<(String, i64)> {
        k.mm_keys().map(|(s, o)| (s.to_string(), o)).collect()
    }

    #[test]
    fn empty_request_has_no_block_keys() {
        let e = ExtraKeys::default();
        assert!(e.is_empty());
        let blocks: Vec<_> = e.blocks(16, 50).collect();
        assert_eq!(blocks.len(), 3); // the trailing 2 tokens are no block
        assert!(blocks
            .iter()
            .all(|b| b.is_empty() && *b == BlockExtraKeys::NONE));
    }

    #[test]
    fn lora_on_every_block_salt_on_first_only() {
        let e = ExtraKeys {
            prompt_embeds: Vec::new(),
            lora_name: Some("l".into()),
            lora_path: Some("/p".into()),
            cache_salt: Some("salt".into()),
            mm: vec![],
        };
        let blocks: Vec<_> = e.blocks(4, 12).collect();
        assert_eq!(blocks[0].cache_salt, Some("salt"));
        assert_eq!(blocks[0].len(), 2);
        for b in &blocks[1..] {
            assert_eq!(b.cache_salt, None);
            assert_eq!(
                b.lora,
                Some(LoraKey {
                    name: "l",
                    path: "/p"
                })
            );
            assert_eq!(b.len(), 1);
        }
    }

    #[test]
    fn empty_salt_is_no_salt() {
        let e = ExtraKeys {
            prompt_embeds: Vec::new(),
            cache_salt: Some(String::new()),
            ..Default::default()
        };
        assert!(e.is_empty());
        assert!(e.blocks(4, 8).all(|b| b.is_empty()));
    }

    #[test]
    fn lora_without_path_hashes_empty_path() {
        let e = ExtraKeys {
            prompt_embeds: Vec::new(),
            lora_name: Some("n".into()),
            ..Default::default()
        };
        assert_eq!(
            e.block(0, 4, 0).0.lora,
            Some(LoraKey {
                name: "n",
                path: ""
            })
        );
    }

    #[test]
    fn mm_features_follow_overlap_with_relative_offsets() {
        let e = ExtraKeys {
            prompt_embeds: Vec::new(),
            mm: vec![
                MmFeature::new("a", 1, 3),  // inside block 0
                MmFeature::new("b", 6, 6),  // blocks 1 and 2 (starts mid block 1)
                MmFeature::new("c", 12, 4), // exactly block 3
                MmFeature::new("d", 16, 1), // block 4
                MmFeature::new("e", 17, 0), // zero length inside block 4
            ],
            ..Default::default()
        };
        let blocks: Vec<_> = e.blocks(4, 24).map(|b| mm_of(&b)).collect();
        let s = |v: &[(&str, i64)]| {
            v.iter()
                .map(|(a, b)| (a.to_string(), *b))
                .collect::<Vec<_>>()
        };
        assert_eq!(blocks[0], s(&[("a", 1)]));
        assert_eq!(blocks[1], s(&[("b", 2)]));
        assert_eq!(blocks[2], s(&[("b", -2)]));
        assert_eq!(blocks[3], s(&[("c", 0)]));
        assert_eq!(blocks[4], s(&[("d", 0), ("e", 1)]));
        assert_eq!(blocks[5], s(&[]));
        // Resuming at any block gives the same keys as walking from the start.
        for (i, want) in blocks.iter().enumerate() {
            assert_eq!(&mm_of(&e.block_at(i, 4)), want, "block {i}");
        }
    }

    #[test]
    fn two_features_in_one_block_keep_order() {
        let e = ExtraKeys {
            prompt_embeds: Vec::new(),
            lora_name: Some("l".into()),
            cache_salt: Some("s".into()),
            mm: vec![MmFeature::new("x", 0, 1), MmFeature::new("y", 1, 1)],
            ..Default::default()
        };
        let b = e.block(0, 4, 0).0;
        assert_eq!(mm_of(&b), vec![("x".to_string(), 0), ("y".to_string(), 1)]);
        assert_eq!(b.len(), 4);
    }

    #[test]
    fn explicit_keys_from_events() {
        let keys = [MmBlockKey {
            identifier: "img".into(),
            offset: -3,
        }];
        let b = BlockExtraKeys {
            mm: BlockMm::Keys(&keys),
            ..BlockExtraKeys::NONE
        };
        assert_eq!(mm_of(&b), vec![("img".to_string(), -3)]);
        assert!(!b.is_empty());
    }
}
