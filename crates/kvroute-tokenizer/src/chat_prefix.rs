//! Incremental encoding across a conversation's turns: the last rendered prompt of each
//! conversation is kept with its ids, and the next turn's prompt reuses the ids of the longest
//! stretch of text the two share, up to a safe cut; only the text past the cut is split and
//! looked up piece by piece (src/segments.rs).
//!
//! Why this is exact: the ids of a rendered prompt are the ids of its pieces, cut at the added
//! tokens by leftmost-longest matching (src/segments.rs). Whether a match starts at an offset, and
//! how long it is, depends only on the `longest` bytes from there (the longest added token). So if
//! two texts agree on their first `L` bytes, every match decision at offsets before
//! `L + 1 - longest` is the same in both; a cut at the end of an added token that ends at or before
//! `L - longest` has the same pieces, and so the same ids, before it in both texts, and the
//! matching after it starts afresh from the cut. The cache compares the texts themselves (a
//! conversation found by a hash of its opening still has every byte checked), so an edit anywhere
//! in an earlier turn only moves the cut back to before the edit.
//!
//! Memory: bounded by bytes (text + ids + cuts), least recently used conversation out first;
//! `evictions` counts what was dropped.

use std::collections::{HashMap, VecDeque};

/// A conversation's opening: the rendered text up to the end of its `OPENING_TOKENS`-th added
/// token (a system and a first user message in most templates), hashed. Conversations that open
/// alike share one slot (the latest wins), which costs hits, never exactness.
const OPENING_TOKENS: usize = 4;

/// One conversation's last prompt.
struct Entry {
    text: String,
    ids: Vec<u32>,
    /// (text offset just after an added token, ids up to and including it), increasing.
    cuts: Vec<(usize, usize)>,
    used: u64,
}

impl Entry {
    /// What it holds, allocations counted whole.
    fn bytes(&self) -> usize {
        self.text.capacity() + 4 * self.ids.capacity() + 16 * self.cuts.capacity() + 64
    }
}

/// Counters of the conversation cache.
#[derive(Debug, Clone, Copy, Default)]
pub struct PrefixStats {
    /// Prompts that reused ids of an earlier turn.
    pub hits: u64,
    pub misses: u64,
    /// Conversations dropped to stay within the byte budget.
    pub evictions: u64,
    pub conversations: usize,
    pub bytes: usize,
}

/// What a lookup found: the ids and cuts up to a safe cut, and where the rest of the text starts.
pub struct Reuse {
    pub ids: Vec<u32>,
    pub cuts: Vec<(usize, usize)>,
    pub from: usize,
}

pub struct ChatPrefixCache {
    map: HashMap<u128, Entry>,
    /// (key, stamp) per use; an entry is current while its stamp matches (as in SegmentCache).
    order: VecDeque<(u128, u64)>,
    stamp: u64,
    bytes: usize,
    capacity: usize,
    stats: PrefixStats,
}

impl ChatPrefixCache {
    /// `capacity`: bytes held at most.
    pub fn new(capacity: usize) -> Self {
        ChatPrefixCache {
            map: HashMap::new(),
            order: VecDeque::new(),
            stamp: 0,
            bytes: 0,
            capacity,
            stats: PrefixStats::default(),
        }
    }

    /// The key of a prompt: its opening, given the end offsets of its added tokens in order.
    pub fn key(text: &str, token_ends: impl Iterator<Item = usize>, salt: u64) -> u128 {
        let end = token_ends.take(OPENING_TOKENS).last().unwrap_or(text.len());
        xxhash_rust::xxh3::xxh3_128_with_seed(&text.as_bytes()[..end], salt)
    }

    /// The ids `text` shares with the conversation's last prompt, up to a cut where matching
    /// can restart (see the module comment); `longest` is the longest added token in bytes.
    pub fn reuse(&mut self, key: u128, text: &str, longest: usize) -> Option<Reuse> {
        let Some(entry) = self.map.get_mut(&key) else {
            self.stats.misses += 1;
            return None;
        };
        let shared = common_prefix(entry.text.as_bytes(), text.as_bytes());
        let found = if shared == text.len() && shared == entry.text.len() {
            // The same prompt again.
            Some((entry.cuts.len(), text.len(), entry.ids.len()))
        } else {
            let limit = shared.saturating_sub(longest);
            let n = entry.cuts.partition_point(|&(end, _)| end <= limit);
            n.checked_sub(1).map(|i| {
                let (end, ids) = entry.cuts[i];
                (n, end, ids)
            })
        };
        let Some((n_cuts, from, n_ids)) = found else {
            self.stats.misses += 1;
            return None;
        };
        self.stats.hits += 1;
        self.stamp += 1;
        entry.used = self.stamp;
        self.order.push_back((key, self.stamp));
        let mut ids = Vec::with_capacity(n_ids + (text.len() - from) / 3 + 16);
        ids.extend_from_slice(&entry.ids[..n_ids]);
        let mut cuts = Vec::with_capacity(n_cuts + 64);
        cuts.extend_from_slice(&entry.cuts[..n_cuts]);
        self.compact_if_needed();
        Some(Reuse { ids, cuts, from })
    }

    /// Keeps `text` as the conversation's last prompt (replacing the one before, whose id buffer
    /// is reused: its pages are already mapped, a fresh one of this size is not).
    pub fn store(&mut self, key: u128, text: String, ids: &[u32], cuts: Vec<(usize, usize)>) {
        self.stamp += 1;
        let mut buffer = match self.map.remove(&key) {
            Some(old) => {
                self.bytes -= old.bytes();
                old.ids
            }
            None => Vec::new(),
        };
        buffer.clear();
        buffer.reserve_exact(ids.len());
        buffer.extend_from_slice(ids);
        let mut text = text;
        // A rendered prompt's spare capacity can be as large as the prompt (large blocks shrink in
        // place, without a copy).
        text.shrink_to_fit();
        let entry = Entry {
            text,
            ids: buffer,
            cuts,
            used: self.stamp,
        };
        let size = entry.bytes();
        if size > self.capacity {
            self.stats.evictions += 1;
            return;
        }
        self.bytes += size;
        self.map.insert(key, entry);
        self.order.push_back((key, self.stamp));
        while self.bytes > self.capacity {
            let Some((key, stamp)) = self.order.pop_front() else {
                break;
            };
            if self.map.get(&key).is_some_and(|e| e.used == stamp) {
                if let Some(e) = self.map.remove(&key) {
                    self.bytes -= e.bytes();
                    self.stats.evictions += 1;
                }
            }
        }
        self.compact_if_needed();
    }

    pub fn stats(&self) -> PrefixStats {
        PrefixStats {
            conversations: self.map.len(),
            bytes: self.bytes,
            ..self.stats
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn compact_if_needed(&mut self) {
        if self.order.len() > 64 + 4 * self.map.len() {
            let map = &self.map;
            self.order
                .retain(|(key, stamp)| map.get(key).is_some_and(|e| e.used == *stamp));
        }
    }
}

/// How many leading bytes `a` and `b` share (compared a block at a time; text_prefix.rs too).
pub(crate) fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    const BLOCK: usize = 64;
    let n = a.len().min(b.len());
    let mut at = 0;
    while at + BLOCK <= n && a[at..at + BLOCK] == b[at..at + BLOCK] {
        at += BLOCK;
    }
    while at < n && a[at] == b[at] {
        at += 1;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_prefix_counts_shared_bytes() {
        let a = "x".repeat(200);
        let mut b = a.clone();
        b.replace_range(130..131, "y");
        assert_eq!(common_prefix(a.as_bytes(), b.as_bytes()), 130);
        assert_eq!(common_prefix(a.as_bytes(), &a.as_bytes()[..70]), 70);
        assert_eq!(common_prefix(b"", b"a"), 0);
    }

    #[test]
    fn reuses_up_to_a_cut_clear_of_the_difference() {
        let mut cache = ChatPrefixCache::new(1 << 20);
        // Cuts after each `<T>` (offsets 7, 13 and 19), with 2, 4 and 6 ids.
        cache.store(
            7,
            "aaaa<T>bbb<T>ccc<T>".into(),
            &[1, 9, 2, 9, 3, 9],
            vec![(7, 2), (13, 4), (19, 6)],
        );
        // Shares 17 bytes; with tokens up to 3 bytes long the cut must end by 14: the second.
        let r = cache.reuse(7, "aaaa<T>bbb<T>ccc<X", 3).unwrap();
        assert_eq!(
            (r.from, r.ids, r.cuts),
            (13, vec![1, 9, 2, 9], vec![(7, 2), (13, 4)])
        );
        // Identical text: everything.
        let r = cache.reuse(7, "aaaa<T>bbb<T>ccc<T>", 3).unwrap();
        assert_eq!((r.from, r.ids.len()), (19, 6));
        // An edit before the first cut: nothing reused.
        assert!(cache.reuse(7, "aXaa<T>bbb<T>ccc<T>", 3).is_none());
        assert!(cache.reuse(8, "aaaa", 3).is_none());
        let s = cache.stats();
        assert_eq!((s.hits, s.misses, s.conversations), (2, 2, 1));
    }

    #[test]
    fn evicts_least_recently_used_conversations_within_bytes() {
        let entry = |c: char| (c.to_string().repeat(100), vec![0u32; 10], vec![(100, 10)]);
        let one = {
            let (t, i, c) = entry('a');
            Entry {
                text: t,
                ids: i,
                cuts: c,
                used: 0,
            }
            .bytes()
        };
        let mut cache = ChatPrefixCache::new(3 * one);
        for (k, c) in [(1, 'a'), (2, 'b'), (3, 'c')] {
            let (t, i, cuts) = entry(c);
            cache.store(k, t, &i, cuts);
        }
        assert!(cache.reuse(1, &"a".repeat(100), 1).is_some());
        let (t, i, cuts) = entry('d');
        cache.store(4, t, &i, cuts);
        let s = cache.stats();
        assert_eq!((s.conversations, s.evictions), (3, 1));
        assert!(s.bytes <= cache.capacity());
        assert!(
            cache.reuse(2, &"b".repeat(100), 1).is_none(),
            "2 was least recent"
        );
        assert!(cache.reuse(1, &"a".repeat(100), 1).is_some());
    }
}
