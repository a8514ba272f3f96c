//! Incremental encoding: a rendered chat prompt is cut where the tokenizer itself cuts it (at its
//! added tokens: `<|im_start|>`, `<|eot_id|>`...), and the pieces between are encoded once and
//! kept in a bounded LRU. A conversation re-sends its whole history every turn, so only the new
//! turn's pieces are encoded.
//!
//! Why this is exact: Hugging Face tokenizers first split the input at its added tokens and then
//! normalize, pre-tokenize and run the model on each piece on its own; the post-processor only
//! adds special tokens at the ends (none for chat, which vLLM encodes without them). So the ids of
//! the whole are the pieces' ids with the added tokens' ids between them. That holds when every
//! added token matches its plain text (not normalized, no `lstrip`/`rstrip`/`single_word`) and the
//! pre-tokenizer does not depend on where a piece starts (Metaspace's `prepend_scheme: first`);
//! [`Splitter::for_tokenizer`] returns None otherwise and callers encode the whole.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use aho_corasick::{AhoCorasick, MatchKind};
use tokenizers::Tokenizer;

/// Finds the added tokens in rendered text, with the tokenizer's own matching rule
/// (leftmost-longest).
pub struct Splitter {
    matcher: AhoCorasick,
    /// Pattern index -> the added token's id.
    ids: Vec<u32>,
    /// The longest added token, in bytes.
    longest: usize,
}

/// One piece of rendered text: plain text to encode, or an added token's id.
pub enum Piece<'a> {
    Text(&'a str),
    Added(u32),
}

impl Splitter {
    pub fn for_tokenizer(tokenizer: &Tokenizer) -> Option<Splitter> {
        let serialized = serde_json::to_value(tokenizer.get_pre_tokenizer()).ok();
        if serialized.as_ref().is_some_and(position_dependent) {
            return None;
        }
        if let Some(normalizer) = tokenizer.get_normalizer() {
            if serde_json::to_value(normalizer)
                .ok()
                .as_ref()
                .is_some_and(position_dependent)
            {
                return None;
            }
        }
        let mut contents = Vec::new();
        let mut ids = Vec::new();
        for (id, token) in tokenizer.get_added_tokens_decoder() {
            if token.normalized || token.lstrip || token.rstrip || token.single_word {
                return None;
            }
            contents.push(token.content.clone());
            ids.push(id);
        }
        let matcher = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&contents)
            .ok()?;
        let longest = contents.iter().map(String::len).max().unwrap_or(0);
        Some(Splitter {
            matcher,
            ids,
            longest,
        })
    }

    /// The pieces of `text` in order; empty text between two added tokens is skipped.
    pub fn split<'a>(&self, text: &'a str) -> Vec<Piece<'a>> {
        let mut out = Vec::new();
        self.each_piece(text, |piece, _| {
            out.push(piece);
            Ok::<(), ()>(())
        })
        .ok();
        out
    }

    /// Calls `f` with each piece of `text` in order and the offset just past it.
    pub fn each_piece<'a, E>(
        &self,
        text: &'a str,
        mut f: impl FnMut(Piece<'a>, usize) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut at = 0;
        for m in self.matcher.find_iter(text) {
            if m.start() > at {
                f(Piece::Text(&text[at..m.start()]), m.start())?;
            }
            f(Piece::Added(self.ids[m.pattern().as_usize()]), m.end())?;
            at = m.end();
        }
        if at < text.len() {
            f(Piece::Text(&text[at..]), text.len())?;
        }
        Ok(())
    }

    /// The end offsets of the added tokens in `text`, in order.
    pub fn token_ends<'a>(&'a self, text: &'a str) -> impl Iterator<Item = usize> + 'a {
        self.matcher.find_iter(text).map(|m| m.end())
    }

    /// The longest added token, in bytes (how far ahead a match decision looks).
    pub fn longest(&self) -> usize {
        self.longest
    }
}

/// Serialized pre-tokenizers or normalizers whose output depends on the piece's offset in the
/// whole input.
fn position_dependent(json: &serde_json::Value) -> bool {
    match json {
        serde_json::Value::Object(o) => {
            let metaspace_first = o.get("type").and_then(|t| t.as_str()) == Some("Metaspace")
                && o.get("prepend_scheme").and_then(|p| p.as_str()) == Some("first");
            metaspace_first || o.values().any(position_dependent)
        }
        serde_json::Value::Array(a) => a.iter().any(position_dependent),
        _ => false,
    }
}

/// Piece text -> its ids, least recently used out first, bounded by the total number of ids held.
///
/// Invariants: `held` is the sum of the lengths of `map`'s values and stays ≤ `capacity` after
/// every insert; `order` holds one (key, stamp) entry per use, and an entry is current only while
/// its stamp equals the map's (older ones are skipped on eviction and dropped on compaction, which
/// keeps `order` within a constant factor of `map`).
pub struct SegmentCache {
    map: HashMap<u128, (Arc<[u32]>, u64)>,
    order: VecDeque<(u128, u64)>,
    stamp: u64,
    held: usize,
    capacity: usize,
    pub hits: u64,
    pub misses: u64,
    /// Pieces dropped to stay within capacity (or too large to keep).
    pub evictions: u64,
}

impl SegmentCache {
    /// `capacity`: token ids held at most (4 bytes each, plus ~48 bytes per piece).
    pub fn new(capacity: usize) -> Self {
        SegmentCache {
            map: HashMap::new(),
            order: VecDeque::new(),
            stamp: 0,
            held: 0,
            capacity,
            hits: 0,
            misses: 0,
            evictions: 0,
        }
    }

    pub fn key(text: &str) -> u128 {
        xxhash_rust::xxh3::xxh3_128(text.as_bytes())
    }

    pub fn get(&mut self, key: u128) -> Option<Arc<[u32]>> {
        self.stamp += 1;
        let stamp = self.stamp;
        let (ids, used) = self.map.get_mut(&key)?;
        *used = stamp;
        let ids = ids.clone();
        self.order.push_back((key, stamp));
        self.hits += 1;
        self.compact_if_needed();
        Some(ids)
    }

    pub fn insert(&mut self, key: u128, ids: Arc<[u32]>) {
        self.misses += 1;
        if ids.len() > self.capacity {
            self.evictions += 1;
            return;
        }
        self.stamp += 1;
        self.held += ids.len();
        if let Some((old, _)) = self.map.insert(key, (ids, self.stamp)) {
            self.held -= old.len();
        }
        self.order.push_back((key, self.stamp));
        while self.held > self.capacity {
            let Some((key, stamp)) = self.order.pop_front() else {
                break;
            };
            if self.map.get(&key).is_some_and(|(_, used)| *used == stamp) {
                if let Some((ids, _)) = self.map.remove(&key) {
                    self.held -= ids.len();
                    self.evictions += 1;
                }
            }
        }
        self.compact_if_needed();
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Token ids held now.
    pub fn held(&self) -> usize {
        self.held
    }

    fn compact_if_needed(&mut self) {
        if self.order.len() > 64 + 4 * self.map.len() {
            let map = &self.map;
            self.order
                .retain(|(key, stamp)| map.get(key).is_some_and(|(_, used)| used == stamp));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[u32]) -> Arc<[u32]> {
        Arc::from(v)
    }

    #[test]
    fn evicts_least_recently_used_within_capacity() {
        let mut cache = SegmentCache::new(6);
        cache.insert(1, ids(&[1, 2]));
        cache.insert(2, ids(&[3, 4]));
        cache.insert(3, ids(&[5, 6]));
        assert!(cache.get(1).is_some()); // 1 is now the most recent
        cache.insert(4, ids(&[7, 8]));
        assert!(cache.get(2).is_none(), "2 was the least recently used");
        assert!(cache.get(1).is_some() && cache.get(3).is_some() && cache.get(4).is_some());
        assert_eq!(cache.held(), 6);
    }

    #[test]
    fn a_piece_larger_than_the_cache_is_not_kept() {
        let mut cache = SegmentCache::new(2);
        cache.insert(1, ids(&[1, 2, 3]));
        assert!(cache.is_empty());
        assert_eq!(cache.held(), 0);
    }

    #[test]
    fn order_stays_bounded_under_repeated_hits() {
        let mut cache = SegmentCache::new(100);
        cache.insert(1, ids(&[1]));
        for _ in 0..10_000 {
            cache.get(1);
        }
        assert!(cache.order.len() <= 64 + 4 * cache.len() + 1);
    }
}
