//! Completions text prompts that share a prefix (a few-shot header, a shared document, a system
//! preamble) reuse the shared part's ids. Texts of at least [`MIN_TEXT_BYTES`] are kept with their
//! ids and cuts (see "What is kept"); a later text takes the ids up to the last cut inside the
//! prefix it shares with a kept text, and only the rest is encoded.
//!
//! Why this is exact. A *cut* is an offset `c` with `t[c] == b' '` and `t[c - 1]` a graphic
//! ASCII byte (`!`..=`~`), or the end of the text `t`. Let `enc` be `encode` without the
//! `add_special_tokens` affixes (entries hold ids without them; the caller adds the tokenizer's
//! fixed prefix and suffix, so both values of the flag share entries). For the tokenizers the
//! caller accepts (the fast path's exact shape, src/fast_encoder.rs, and [`cuts_are_safe`]: no
//! added token holds a graphic ASCII byte followed by a space), `enc(t) == enc(t[..c]) ++
//! enc(t[c..])` at every cut:
//! 1. Added tokens: an occurrence that crossed `c` would contain `t[c - 1..=c]`, which none does.
//!    Leftmost-longest matching reads forward only, so it picks the same tokens before `c` as in
//!    `t[..c]`, and from `c` on the same as in `t[c..]` (src/segments.rs); the plain text piece
//!    around `c`, if any, is cut in two, each half free of added tokens.
//! 2. NFC (Qwen): every ASCII character has a normalization boundary before it (combining class
//!    0, NFC_Quick_Check Yes) and a space composes with nothing after it, so the normalized text is
//!    the halves normalized, with the same graphic byte and space around the join.
//! 3. Pre-tokenizer (the regex in src/pretokenize.rs, on the normalized text): the match covering
//!    `t[c - 1]` ends at `c`, since no alternative that matches a graphic ASCII character goes on
//!    into a space (letter, digit and `[^\s\p{L}\p{N}]+[\r\n]*` runs, the fixed contractions), and
//!    wherever a match starting before `c` looks at `t[c]` (a contraction's next letter, the letter
//!    after `[^\r\n\p{L}\p{N}]?`, the end of a run) a space decides as the end of the text does. So
//!    the matches before `c` are those of `t[..c]`, and, the regex having no lookbehind, the ones
//!    from `c` on are those of `t[c..]`. Byte-level mapping and BPE work per pre-token.
//!
//! Whether `c` is a cut reads `t[c - 1]` and `t[c]` only, so a cut of a kept text before the first
//! byte where it differs from a new text is a cut of the new text too, with the same ids before it:
//! the new text's ids are `kept.ids[..n] ++ enc(new[c..])`. A cut at that first differing byte or
//! at the kept text's end is used only where it is a cut of the new text as well. Lookups go by
//! hashes of prefixes, but the bytes are compared before anything is reused. The ids before each
//! cut are known because a kept text was encoded chunk by chunk between its cuts (the same
//! identity). tests/text_prefix.rs holds the result to the `tokenizers` crate's own encode.
//!
//! What is kept: a text is kept once the part of it beyond what the cache already holds has been
//! seen before (its first prefix key past the reused ones, remembered in a small table). So a
//! shared document is kept from its second prompt on, while texts that share nothing, and the
//! unique tails of prompts that hit, cost a lookup and no copy, and do not push kept texts out.
//!
//! Memory: bounded by bytes (text, ids, cuts and prefix keys, allocations counted whole, plus an
//! estimate of each entry's share of the maps, and the table of seen keys), least recently used
//! text out first.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use crate::chat_prefix::common_prefix;

/// Shorter texts are encoded without a lookup (it would cost more than it could save).
pub const MIN_TEXT_BYTES: usize = 1024;

/// A plan keeps the first cut at or after every multiple of this: a hit re-encodes about half of
/// it past the shared part, and a kept text costs one more encoder call per cut.
const CUT_EVERY: usize = 128;

/// A prefix key is kept at the first cut at or after every multiple of this.
const KEY_EVERY: usize = 256;

/// Estimated bytes of the maps and queues per entry and per prefix key (a hash map slot with its
/// control byte at the lowest load factor after growth, the LRU queue's entries).
const ENTRY_OVERHEAD: usize = 256;
const KEY_OVERHEAD: usize = 48;

/// `t[c]` is a space after a graphic ASCII byte (see the module comment).
#[inline]
fn is_cut(t: &[u8], c: usize) -> bool {
    c > 0 && c < t.len() && t[c] == b' ' && (b'!'..=b'~').contains(&t[c - 1])
}

/// Whether the cut rule is exact given a tokenizer's added tokens: none may contain a graphic
/// ASCII byte followed by a space (the caller also requires the fast path's shape).
pub fn cuts_are_safe<'a>(added_tokens: impl IntoIterator<Item = &'a str>) -> bool {
    added_tokens.into_iter().all(|token| {
        !token
            .as_bytes()
            .windows(2)
            .any(|w| w[1] == b' ' && (b'!'..=b'~').contains(&w[0]))
    })
}

/// A text's cuts and prefix keys, computed before the cache is locked.
pub struct Plan {
    /// Increasing cut offsets (the end of the text is not one of them).
    pub cuts: Vec<u32>,
    /// Hashes of the text up to its key cuts, each chained from the one before, in order.
    keys: Vec<u64>,
}

impl Plan {
    /// The cuts of `text`: the first at or after every multiple of [`CUT_EVERY`]. The k-th cut
    /// depends on the bytes up to and including it only, so two texts that share those bytes
    /// have the same first k cuts and keys.
    pub fn of(text: &str) -> Plan {
        let t = text.as_bytes();
        let mut cuts = Vec::with_capacity(t.len() / CUT_EVERY + 1);
        let mut keys = Vec::with_capacity(t.len() / KEY_EVERY + 1);
        let mut hash = 0u64;
        let mut last_key = 0;
        let mut at = CUT_EVERY;
        while at < t.len() {
            let Some(space) = t[at..].iter().position(|&b| b == b' ') else {
                break;
            };
            let c = at + space;
            if !is_cut(t, c) {
                at = c + 1;
                continue;
            }
            cuts.push(c as u32);
            if c / KEY_EVERY > last_key / KEY_EVERY {
                // Chained: the chunk's hash folded into the key before (a seeded xxh3 derives a
                // secret per call). A collision costs a hit at most: bytes are compared.
                let chunk = xxhash_rust::xxh3::xxh3_64(&t[last_key..c]);
                hash = (hash.rotate_left(29) ^ chunk).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                keys.push(hash);
                last_key = c;
            }
            at = (c / CUT_EVERY + 1) * CUT_EVERY;
        }
        Plan { cuts, keys }
    }

    /// Whether the text can be found again (it has a prefix key).
    pub fn keyed(&self) -> bool {
        !self.keys.is_empty()
    }
}

/// A kept text. Immutable once made: a lookup takes it out of the lock behind an `Arc`.
pub struct Entry {
    text: Box<str>,
    /// `enc(text)`, without affixes.
    ids: Box<[u32]>,
    /// (cut offset, ids before it), increasing; the last is the end of the text with all ids.
    cuts: Box<[(u32, u32)]>,
    keys: Box<[u64]>,
}

/// What a new text can take from a kept one: `ids` ids and `cuts` cuts, then encode from `from`.
pub struct Reuse {
    pub from: usize,
    pub ids: usize,
    pub cuts: usize,
}

impl Entry {
    fn bytes(&self) -> usize {
        self.text.len()
            + 4 * self.ids.len()
            + 8 * self.cuts.len()
            + (8 + KEY_OVERHEAD) * self.keys.len()
            + ENTRY_OVERHEAD
    }

    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    pub fn cuts(&self) -> &[(u32, u32)] {
        &self.cuts
    }

    /// The last of this entry's cuts that lies within the prefix `text` shares with it (bytes
    /// compared) and is a cut of `text` too; None if there is none.
    pub fn reuse(&self, text: &str) -> Option<Reuse> {
        let shared = common_prefix(self.text.as_bytes(), text.as_bytes());
        let t = text.as_bytes();
        let mut n = self.cuts.partition_point(|&(c, _)| c as usize <= shared);
        while n > 0 {
            let (c, ids) = self.cuts[n - 1];
            let c = c as usize;
            // Below `shared` the check repeats the kept text's own; at `shared` it is what decides.
            if c == t.len() || is_cut(t, c) {
                return Some(Reuse {
                    from: c,
                    ids: ids as usize,
                    cuts: n,
                });
            }
            n -= 1;
        }
        None
    }
}

/// Counters of the text prefix cache.
#[derive(Debug, Clone, Copy, Default)]
pub struct TextPrefixStats {
    /// Texts that reused a kept text's ids, and those (of at least [`MIN_TEXT_BYTES`]) that did not.
    pub hits: u64,
    pub misses: u64,
    /// Ids taken from kept texts instead of encoded.
    pub reused_tokens: u64,
    /// Texts dropped to stay within the byte budget.
    pub evictions: u64,
    pub entries: usize,
    pub bytes: usize,
}

struct Slot {
    entry: Arc<Entry>,
    used: u64,
    /// Prefix keys that still lead here (a newer text with the same prefixes takes them over;
    /// at zero the entry cannot be found and is dropped).
    live: usize,
}

/// What a lookup found: the kept text reached by the longest run of prefix keys, and whether the
/// new text should be kept too (encoded between its cuts and stored).
pub struct Lookup {
    pub entry: Option<Arc<Entry>>,
    pub keep: bool,
}

pub struct TextPrefixCache {
    /// Prefix keys seen once, direct-mapped (a collision only delays keeping a text).
    seen: Box<[u64]>,
    /// Prefix key -> entry id.
    keys: HashMap<u64, u64, BuildHasherDefault<Mix>>,
    entries: HashMap<u64, Slot, BuildHasherDefault<Mix>>,
    /// (entry id, stamp) per use; an entry is current while its stamp matches (as in SegmentCache).
    order: VecDeque<(u64, u64)>,
    next_id: u64,
    stamp: u64,
    bytes: usize,
    capacity: usize,
    stats: TextPrefixStats,
}

impl TextPrefixCache {
    /// `capacity`: bytes held at most (0 turns the cache off).
    pub fn new(capacity: usize) -> Self {
        let slots = seen_slots(capacity);
        TextPrefixCache {
            seen: vec![0; slots].into_boxed_slice(),
            keys: HashMap::default(),
            entries: HashMap::default(),
            order: VecDeque::new(),
            next_id: 0,
            stamp: 0,
            bytes: 8 * slots,
            capacity,
            stats: TextPrefixStats::default(),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The kept text reached by the longest run of `plan`'s prefix keys (then marked used), and
    /// whether to keep the new text: its first key past that run was seen before.
    pub fn find(&mut self, plan: &Plan) -> Lookup {
        let mut deepest = None;
        let mut depth = 0;
        for key in &plan.keys {
            match self.keys.get(key) {
                Some(&id) => deepest = Some(id),
                None => break,
            }
            depth += 1;
        }
        let keep = plan
            .keys
            .get(depth)
            .is_some_and(|&key| self.seen_before(key));
        let entry = deepest.and_then(|id| {
            self.stamp += 1;
            let slot = self.entries.get_mut(&id)?;
            slot.used = self.stamp;
            self.order.push_back((id, self.stamp));
            Some(slot.entry.clone())
        });
        self.compact_if_needed();
        Lookup { entry, keep }
    }

    /// Whether `key` is in the table of seen keys; puts it there if not.
    fn seen_before(&mut self, key: u64) -> bool {
        if self.seen.is_empty() {
            return false;
        }
        let slot = (key as usize) & (self.seen.len() - 1);
        let seen = self.seen[slot] == key;
        self.seen[slot] = key;
        seen
    }

    /// Counts one text's lookup: `reused` ids taken from a kept text (0: a miss).
    pub fn record(&mut self, reused: usize) {
        if reused > 0 {
            self.stats.hits += 1;
            self.stats.reused_tokens += reused as u64;
        } else {
            self.stats.misses += 1;
        }
    }

    /// Keeps `text` with `ids` (`enc(text)`) and `cuts` (see [`Entry`]), under `plan`'s keys.
    pub fn store(&mut self, text: &str, ids: &[u32], cuts: Vec<(u32, u32)>, plan: Plan) {
        if !plan.keyed() {
            return;
        }
        let entry = Entry {
            text: text.into(),
            ids: ids.into(),
            cuts: cuts.into_boxed_slice(),
            keys: plan.keys.into_boxed_slice(),
        };
        let size = entry.bytes();
        if size + 8 * self.seen.len() > self.capacity {
            self.stats.evictions += 1;
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.stamp += 1;
        let mut live = 0;
        for &key in entry.keys.iter() {
            match self.keys.insert(key, id) {
                Some(old) if old == id => {}
                Some(old) => {
                    live += 1;
                    self.release(old);
                }
                None => live += 1,
            }
        }
        self.bytes += size;
        self.entries.insert(
            id,
            Slot {
                entry: Arc::new(entry),
                used: self.stamp,
                live,
            },
        );
        self.order.push_back((id, self.stamp));
        while self.bytes > self.capacity {
            let Some((old, stamp)) = self.order.pop_front() else {
                break;
            };
            if self.entries.get(&old).is_some_and(|s| s.used == stamp) {
                self.remove(old);
                self.stats.evictions += 1;
            }
        }
        self.compact_if_needed();
    }

    pub fn stats(&self) -> TextPrefixStats {
        TextPrefixStats {
            entries: self.entries.len(),
            bytes: self.bytes,
            ..self.stats
        }
    }

    /// One of `id`'s keys now leads to a newer entry.
    fn release(&mut self, id: u64) {
        if let Some(slot) = self.entries.get_mut(&id) {
            slot.live -= 1;
            if slot.live == 0 {
                self.remove(id);
            }
        }
    }

    fn remove(&mut self, id: u64) {
        if let Some(slot) = self.entries.remove(&id) {
            for key in slot.entry.keys.iter() {
                if self.keys.get(key) == Some(&id) {
                    self.keys.remove(key);
                }
            }
            self.bytes -= slot.entry.bytes();
        }
    }

    fn compact_if_needed(&mut self) {
        if self.order.len() > 64 + 4 * self.entries.len() {
            let entries = &self.entries;
            self.order
                .retain(|(id, stamp)| entries.get(id).is_some_and(|s| s.used == *stamp));
        }
    }
}

/// Slots of the table of seen keys: a power of two, at most 1/16 of the budget and 128 KiB.
fn seen_slots(capacity: usize) -> usize {
    match capacity / 128 {
        0 => 0,
        n => (1 << n.ilog2()).min(16384),
    }
}

/// Hasher for keys that are already hashes (prefix keys) or counters (entry ids): one multiply.
#[derive(Default)]
struct Mix(u64);

impl Hasher for Mix {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ b as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Words of 4 letters and a space: a cut at the first space after each multiple of 128.
    fn prose(words: usize, seed: u8) -> String {
        (0..words)
            .map(|i| {
                let c = (b'a' + (i as u8).wrapping_mul(7).wrapping_add(seed) % 26) as char;
                format!("{c}{c}{c}{c} ")
            })
            .collect()
    }

    /// Stores `text` with made-up ids (one per byte) at its plan's cuts.
    fn keep(cache: &mut TextPrefixCache, text: &str) {
        let plan = Plan::of(text);
        let mut cuts: Vec<(u32, u32)> = plan.cuts.iter().map(|&c| (c, c)).collect();
        cuts.push((text.len() as u32, text.len() as u32));
        let ids: Vec<u32> = (0..text.len() as u32).collect();
        cache.store(text, &ids, cuts, plan);
    }

    #[test]
    fn cuts_are_spaces_after_graphic_ascii() {
        let t = b"ab  c\n d.e f";
        let cuts: Vec<usize> = (0..=t.len()).filter(|&c| is_cut(t, c)).collect();
        assert_eq!(cuts, [2, 10]);
        assert!(cuts_are_safe(["<|im_start|>", "<think>", "a\nb"]));
        assert!(!cuts_are_safe(["<|im_start|>", "two words"]));
    }

    #[test]
    fn plans_of_texts_sharing_a_prefix_agree_up_to_it() {
        let a = prose(400, 1);
        let mut b = a[..1000].to_string();
        b.push_str(&prose(300, 9));
        let (pa, pb) = (Plan::of(&a), Plan::of(&b));
        let n = pa.cuts.iter().take_while(|&&c| (c as usize) < 1000).count();
        assert!(n >= 6);
        assert_eq!(pa.cuts[..n], pb.cuts[..n]);
        // Key cuts just after 256, 512 and 768 lie in the shared bytes; the one after 1024 not.
        assert_eq!(pa.keys[..3], pb.keys[..3]);
        assert_ne!(pa.keys[3], pb.keys[3]);
    }

    #[test]
    fn reuses_the_last_cut_within_the_shared_bytes() {
        let mut cache = TextPrefixCache::new(1 << 20);
        let a = prose(400, 1).trim_end().to_string();
        keep(&mut cache, &a);
        // Differs from byte 1001 on: the last cut before it (a space, so a cut in both).
        let b = format!("{}X{}", &a[..1001], &a[1002..]);
        let entry = cache
            .find(&Plan::of(&b))
            .entry
            .expect("found by its prefix keys");
        let r = entry.reuse(&b).unwrap();
        let last = Plan::of(&a)
            .cuts
            .into_iter()
            .rfind(|&c| c as usize <= 1001)
            .unwrap();
        assert_eq!((r.from, r.ids, r.cuts), (last as usize, last as usize, 7));
        // The same text: everything; the text and more after a space: everything too.
        assert_eq!(entry.reuse(&a).unwrap().from, a.len());
        assert_eq!(entry.reuse(&format!("{a} more")).unwrap().from, a.len());
        // More without a space at the join: the end is not a cut of the longer text.
        assert!(entry.reuse(&format!("{a}x more")).unwrap().from < a.len());
        assert!(cache.find(&Plan::of(&prose(400, 5))).entry.is_none());
    }

    #[test]
    fn evicts_least_recently_used_within_bytes() {
        let texts: Vec<String> = (0..4).map(|i| prose(300, 3 * i)).collect();
        let one = {
            let mut c = TextPrefixCache::new(1 << 20);
            keep(&mut c, &texts[0]);
            c.stats().bytes - 8 * seen_slots(1 << 20)
        };
        let mut capacity = 3 * one + one / 2;
        capacity += 8 * seen_slots(capacity);
        let table = 8 * seen_slots(capacity);
        assert!(table > 0 && 3 * one + table <= capacity && 4 * one + table > capacity);
        let mut cache = TextPrefixCache::new(capacity);
        for t in &texts[..3] {
            keep(&mut cache, t);
        }
        assert!(cache.find(&Plan::of(&texts[0])).entry.is_some());
        keep(&mut cache, &texts[3]);
        let s = cache.stats();
        assert_eq!((s.entries, s.evictions), (3, 1));
        assert_eq!(s.bytes, 3 * one + table);
        assert!(s.bytes <= cache.capacity());
        let gone = cache.find(&Plan::of(&texts[1])).entry.is_none();
        assert!(gone, "1 was least recent");
        assert!(cache.find(&Plan::of(&texts[0])).entry.is_some());
        // Larger than the whole budget: not kept, counted.
        let mut tiny = TextPrefixCache::new(one / 2);
        keep(&mut tiny, &texts[0]);
        let s = tiny.stats();
        assert_eq!(
            (s.entries, s.bytes, s.evictions),
            (0, 8 * seen_slots(one / 2), 1)
        );
    }

    #[test]
    fn keeps_a_text_once_its_next_key_was_seen_before() {
        let mut cache = TextPrefixCache::new(1 << 20);
        let doc = prose(300, 4);
        let with_tail = |seed| format!("{doc}{}", prose(200, seed));
        // The document's first key: unseen, then seen.
        assert!(!cache.find(&Plan::of(&with_tail(1))).keep);
        let lookup = cache.find(&Plan::of(&with_tail(2)));
        assert!(lookup.keep && lookup.entry.is_none());
        keep(&mut cache, &with_tail(2));
        // Now the document is found, and a new tail's first key is unseen.
        let lookup = cache.find(&Plan::of(&with_tail(3)));
        assert!(lookup.entry.is_some() && !lookup.keep);
        // A text whose keys are all found adds nothing.
        assert!(!cache.find(&Plan::of(&with_tail(2))).keep);
        // Off: nothing is ever kept.
        let mut off = TextPrefixCache::new(0);
        assert!(!off.find(&Plan::of(&doc)).keep && !off.find(&Plan::of(&doc)).keep);
    }

    #[test]
    fn a_text_whose_keys_are_all_taken_over_is_dropped() {
        let mut cache = TextPrefixCache::new(1 << 20);
        let a = prose(300, 2);
        keep(&mut cache, &a);
        keep(&mut cache, &format!("{a}and more words here"));
        let s = cache.stats();
        assert_eq!((s.entries, s.evictions), (1, 0));
        assert_eq!(cache.keys.len(), Plan::of(&a).keys.len());
    }
}
