//! The block keys of recent long prompts, so a conversation's next turn (its history sent again,
//! one turn longer) hashes only its new blocks. A prompt is found by the key of its first block;
//! its tokens are then compared, not trusted, and the keys of the full blocks both prompts share
//! are reused: a block's key chains every token before it, so equal tokens up to a block's end
//! give an equal key. On a 60k-token chat this replaces ~3,750 block hashes per request with a
//! compare and a copy of the tokens.
//!
//! Only prompts without extra keys (LoRA, cache salt, media, embeddings) are kept, and only of
//! [`MIN_BLOCKS`] blocks or more. Bounded by bytes (tokens and keys held), least recently used
//! prompt out first.

use std::collections::{HashMap, VecDeque};

use crate::block_keys::RouterKeyer;
use crate::extra_keys::BlockExtraKeys;

/// Shorter prompts are hashed in full: a lookup and a copy would cost about what it saves.
pub(crate) const MIN_BLOCKS: usize = 64;

/// Bytes held by default per model (~60 conversations of 60k tokens).
pub(crate) const DEFAULT_BYTES: usize = 16 << 20;

struct Entry {
    tokens: Vec<u32>,
    keys: Vec<u64>,
    used: u64,
}

impl Entry {
    fn bytes(&self) -> usize {
        4 * self.tokens.capacity() + 8 * self.keys.capacity() + 64
    }
}

pub(crate) struct RecentKeys {
    capacity: usize,
    map: HashMap<u64, Entry>,
    /// (first key, `used` when pushed), oldest first; an entry used since is further back too.
    order: VecDeque<(u64, u64)>,
    bytes: usize,
    stamp: u64,
    pub(crate) hits: u64,
}

impl RecentKeys {
    pub(crate) fn new(capacity: usize) -> Self {
        RecentKeys {
            capacity,
            map: HashMap::new(),
            order: VecDeque::new(),
            bytes: 0,
            stamp: 0,
            hits: 0,
        }
    }

    /// Appends the keys of every full block of `tokens` (no extra keys) to `out`, as
    /// [`RouterKeyer::keys`] does, reusing those of a recent prompt that starts alike.
    pub(crate) fn keys(&mut self, keyer: &RouterKeyer, tokens: &[u32], out: &mut Vec<u64>) {
        let bs = keyer.block_size();
        if tokens.len() / bs < MIN_BLOCKS || self.capacity == 0 {
            keyer.extend(&[], tokens, out);
            return;
        }
        let first = keyer.block_key(None, &tokens[..bs], &BlockExtraKeys::NONE);
        let start = out.len();
        match self.map.get(&first) {
            Some(e) => {
                let shared = common_prefix(&e.tokens, tokens) / bs;
                let known = &e.keys[..shared.min(e.keys.len())];
                self.hits += (known.len() > 1) as u64;
                keyer.extend(known, tokens, out);
            }
            None => keyer.extend(&[], tokens, out),
        }
        self.store(first, tokens, &out[start..]);
    }

    /// Keeps `tokens` and `keys` as the prompt found by `first` (its buffers reused).
    fn store(&mut self, first: u64, tokens: &[u32], keys: &[u64]) {
        self.stamp += 1;
        let mut e = match self.map.remove(&first) {
            Some(old) => {
                self.bytes -= old.bytes();
                old
            }
            None => Entry {
                tokens: Vec::new(),
                keys: Vec::new(),
                used: 0,
            },
        };
        e.tokens.clear();
        e.tokens.extend_from_slice(tokens);
        e.keys.clear();
        e.keys.extend_from_slice(keys);
        e.used = self.stamp;
        let size = e.bytes();
        if size > self.capacity {
            return;
        }
        self.bytes += size;
        self.map.insert(first, e);
        self.order.push_back((first, self.stamp));
        while self.bytes > self.capacity {
            let Some((key, used)) = self.order.pop_front() else {
                break;
            };
            if self.map.get(&key).is_some_and(|e| e.used == used) {
                let old = self.map.remove(&key).expect("present");
                self.bytes -= old.bytes();
            }
        }
        // Stale order entries (prompts stored again since) are dropped once they dominate.
        if self.order.len() > 2 * self.map.len() + 64 {
            let map = &self.map;
            self.order
                .retain(|(k, used)| map.get(k).is_some_and(|e| e.used == *used));
        }
    }

    /// Bytes held (tokens and keys of the prompts kept).
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

/// How many leading tokens `a` and `b` share.
fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    const CHUNK: usize = 16;
    let n = a.len().min(b.len());
    let mut at = 0;
    while at + CHUNK <= n && a[at..at + CHUNK] == b[at..at + CHUNK] {
        at += CHUNK;
    }
    while at < n && a[at] == b[at] {
        at += 1;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extra_keys::ExtraKeys;

    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) % n
        }
    }

    fn full(keyer: &RouterKeyer, tokens: &[u32]) -> Vec<u64> {
        let mut out = Vec::new();
        keyer.keys(tokens, &ExtraKeys::default(), &mut out);
        out
    }

    #[test]
    fn growing_and_edited_conversations_get_the_keys_of_a_full_hash() {
        let keyer = RouterKeyer::new(16).unwrap();
        // Small enough that conversations are evicted while others grow.
        let mut cache = RecentKeys::new(96 << 10);
        let mut rng = Rng(7);
        let mut conversations: Vec<Vec<u32>> = (0..12)
            .map(|c| (0..16 * MIN_BLOCKS as u32).map(|t| t % 97 + c).collect())
            .collect();
        for step in 0..600 {
            let c = rng.below(conversations.len() as u64) as usize;
            let conv = &mut conversations[c];
            match rng.below(5) {
                // An edit somewhere in the history (same first block, different tokens after).
                0 => {
                    let at = 16 + rng.below(conv.len() as u64 - 16) as usize;
                    conv[at] = conv[at].wrapping_add(1);
                }
                // Cut back (a client that drops old turns keeps its first block here).
                1 => conv.truncate((conv.len() / 2).max(16 * MIN_BLOCKS)),
                _ => {}
            }
            let grow = rng.below(200) as usize;
            conv.extend((0..grow).map(|_| rng.below(50_000) as u32));
            let mut out = vec![42];
            cache.keys(&keyer, conv, &mut out);
            assert_eq!(out[0], 42, "appends");
            assert_eq!(&out[1..], &full(&keyer, conv)[..], "step {step}");
            assert!(cache.bytes() <= 96 << 10);
        }
        assert!(cache.hits > 100, "{} hits", cache.hits);
    }

    #[test]
    fn short_prompts_are_hashed_in_full_and_not_kept() {
        let keyer = RouterKeyer::new(16).unwrap();
        let mut cache = RecentKeys::new(1 << 20);
        let tokens: Vec<u32> = (0..16 * (MIN_BLOCKS as u32 - 1) + 5).collect();
        let mut out = Vec::new();
        cache.keys(&keyer, &tokens, &mut out);
        assert_eq!(out, full(&keyer, &tokens));
        assert_eq!(cache.bytes(), 0);
    }
}
