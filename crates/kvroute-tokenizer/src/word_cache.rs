//! The fast encoder's word cache: a pre-tokenized word's text -> its ids.
//!
//! Most words are short and encode to one to three ids, so they live in a table whose key is the
//! word's bytes packed into a `u128` (up to 15 bytes, the length in the 16th) and whose value holds
//! the ids inline: a lookup hashes two words and compares one integer, with no pointer to follow
//! and no `memcmp` call. Longer words, or words of more than three ids, go to a map of boxed
//! strings. Both are emptied together when they hold `limit` words in all (a crude bound, but the
//! cache refills from the next requests' words).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Longest word kept in the short table, in bytes (the 16th byte of the key is the length).
const SHORT_BYTES: usize = 15;
/// Most ids a short table entry holds inline.
const SHORT_IDS: usize = 3;

#[derive(Clone, Copy)]
struct ShortIds {
    ids: [u32; SHORT_IDS],
    len: u8,
}

pub struct WordCache {
    short: HashMap<u128, ShortIds, BuildHasherDefault<PackedKeyHasher>>,
    long: HashMap<Box<str>, Box<[u32]>, BuildHasherDefault<Xxh3Hasher>>,
    limit: usize,
}

impl WordCache {
    pub fn new(limit: usize) -> WordCache {
        WordCache {
            short: HashMap::default(),
            long: HashMap::default(),
            limit,
        }
    }

    /// Appends the ids of `text[start..end]` (a word) to `out` when the cache holds them. The
    /// whole text is passed so that a short word's key can be one load (see `packed_key`).
    #[inline]
    pub fn extend_if_cached(
        &self,
        text: &str,
        start: usize,
        end: usize,
        out: &mut Vec<u32>,
    ) -> bool {
        let word = &text[start..end];
        if let Some(key) = packed_key(text.as_bytes(), start, end) {
            if let Some(entry) = self.short.get(&key) {
                out.extend_from_slice(&entry.ids[..entry.len as usize]);
                return true;
            }
            // A short word of more than SHORT_IDS ids is in `long`.
        }
        match self.long.get(word) {
            Some(ids) => {
                out.extend_from_slice(ids);
                true
            }
            None => false,
        }
    }

    pub fn insert(&mut self, word: &str, ids: &[u32]) {
        if self.len() >= self.limit {
            self.short.clear();
            self.long.clear();
        }
        match packed_key(word.as_bytes(), 0, word.len()) {
            Some(key) if ids.len() <= SHORT_IDS => {
                let mut entry = ShortIds {
                    ids: [0; SHORT_IDS],
                    len: ids.len() as u8,
                };
                entry.ids[..ids.len()].copy_from_slice(ids);
                self.short.insert(key, entry);
            }
            _ => {
                self.long.insert(word.into(), ids.into());
            }
        }
    }

    pub fn len(&self) -> usize {
        self.short.len() + self.long.len()
    }
}

/// The bytes of `bytes[start..end]` (a word) and their length as one integer, for words of at most
/// SHORT_BYTES bytes. Two different words never share a key: the length byte tells apart words
/// that differ only by trailing NUL bytes. When `bytes` holds 16 bytes from `start`, the key is one
/// load and a mask; copying the word into a stack array and reading that back as one integer is a
/// store-forwarding stall that cost more than the lookup.
#[inline]
fn packed_key(bytes: &[u8], start: usize, end: usize) -> Option<u128> {
    let len = end - start;
    if len > SHORT_BYTES {
        return None;
    }
    let word = match bytes.get(start..start + 16) {
        Some(window) => u128::from_le_bytes(window.try_into().ok()?) & ((1u128 << (8 * len)) - 1),
        None => {
            let mut packed = [0u8; 16];
            packed[..len].copy_from_slice(&bytes[start..end]);
            u128::from_le_bytes(packed)
        }
    };
    Some(word | ((len as u128) << 120))
}

/// Hashes a packed key with one folded multiply (its low and high halves mixed together), which
/// spreads the bits hashbrown's table reads from both ends of the hash.
#[derive(Default)]
pub struct PackedKeyHasher(u64);

impl Hasher for PackedKeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u128 keys are hashed here; anything else still hashes correctly, just slower.
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = fold(self.0 ^ u64::from_le_bytes(word), 0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u128(&mut self, v: u128) {
        let lo = v as u64;
        let hi = (v >> 64) as u64;
        self.0 = fold(lo ^ 0x243F_6A88_85A3_08D3, hi ^ 0x1319_8A2E_0370_7344);
    }
}

#[inline]
fn fold(a: u64, b: u64) -> u64 {
    let product = (a as u128).wrapping_mul(b as u128);
    (product as u64) ^ ((product >> 64) as u64)
}

/// XXH3 for the long words' string keys (SipHash would cost more than the lookup saves).
#[derive(Default)]
pub struct Xxh3Hasher(u64);

impl Hasher for Xxh3Hasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0 = xxhash_rust::xxh3::xxh3_64_with_seed(bytes, self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Looks `word` up alone and inside a longer text (where its key is read with one load).
    fn cached(cache: &WordCache, word: &str) -> Option<Vec<u32>> {
        let mut alone = vec![7];
        let found = cache.extend_if_cached(word, 0, word.len(), &mut alone);
        let padded = format!("xy{word}{}", "z".repeat(20));
        let mut inside = vec![7];
        let found_inside = cache.extend_if_cached(&padded, 2, 2 + word.len(), &mut inside);
        assert_eq!((found, &alone), (found_inside, &inside), "{word:?}");
        found.then(|| alone[1..].to_vec())
    }

    #[test]
    fn short_and_long_words_round_trip() {
        let mut cache = WordCache::new(100);
        let cases: Vec<(String, Vec<u32>)> = vec![
            ("".into(), vec![]),
            ("a".into(), vec![1]),
            ("a\0".into(), vec![2]),
            ("a\0\0".into(), vec![3, 4]),
            ("fifteen bytes!!".into(), vec![5, 6, 7]),
            ("sixteen bytes!!!".into(), vec![8]),
            ("four ids".into(), vec![9, 10, 11, 12]),
            ("ünïcödé".into(), vec![13, 14]),
            (
                "a much longer word than fifteen bytes".into(),
                vec![15, 16, 17, 18, 19],
            ),
        ];
        for (word, ids) in &cases {
            assert_eq!(cached(&cache, word), None);
            cache.insert(word, ids);
        }
        for (word, ids) in &cases {
            assert_eq!(cached(&cache, word).as_ref(), Some(ids), "{word:?}");
        }
        assert_eq!(cached(&cache, "b"), None);
        assert_eq!(cached(&cache, "a\0\0\0"), None);
        assert_eq!(cache.len(), cases.len());
    }

    #[test]
    fn empties_at_its_limit() {
        let mut cache = WordCache::new(4);
        for (i, word) in ["w0", "w1", "w2", "a word longer than fifteen"]
            .iter()
            .enumerate()
        {
            cache.insert(word, &[i as u32]);
        }
        assert_eq!(cache.len(), 4);
        cache.insert("w4", &[4]);
        assert_eq!(cache.len(), 1);
        assert_eq!(cached(&cache, "w0"), None);
        assert_eq!(cached(&cache, "w4"), Some(vec![4]));
    }
}
