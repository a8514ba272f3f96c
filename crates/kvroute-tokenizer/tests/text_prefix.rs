//! The text prefix cache (src/text_prefix.rs) against the `tokenizers` crate's own encode: texts
//! built to share prefixes with earlier ones (shared documents with different tails, prefixes of
//! each other, the same text again, one-byte edits anywhere and right at a kept text's cuts),
//! where the shared part ends at spaces, newlines, runs of spaces, digits, punctuation,
//! apostrophes, added-token text split across the boundary, combining marks, non-ASCII letters;
//! Qwen3 and Llama 3.1, with and without special tokens, with the default budget and with one
//! small enough to evict.

mod common;

use std::time::Instant;

use common::{random_text, tokenizer, Rng};
use kvroute_tokenizer::text_prefix::Plan;
use kvroute_tokenizer::ModelTokenizer;

/// What may follow the shared part of two texts (each is tried at many offsets).
const JUNCTIONS: &[&str] = &[
    " ",
    "  ",
    "   ",
    " \n",
    "\n",
    "\n\n",
    "\r\n",
    "\t",
    "1",
    "12345",
    " 2024",
    ".",
    "...",
    "!",
    "?!",
    "'s",
    "'S",
    "'ll",
    "'re",
    "'",
    "\u{301}",
    "\u{301} ",
    "e\u{301}",
    " \u{301}",
    "é",
    "你好",
    "Привет",
    "ſ",
    "'ſ",
    "\u{a0}",
    "\u{3000}",
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<|begin_of_text|>",
    "<|eot_id|>",
    "<|im_st",
    "art|>",
    "<|endof",
    "text|>",
    "<|",
    "|>",
    "x",
    "A",
    "",
];

const WORDS: &str = concat!(
    "the of and to in is that it for on with as was be by this are or at from have an not ",
    "which but all they you we can more has one will their there been would if about when ",
    "what some other into time only new also system data model request cache server latency ",
    "throughput memory worker token prompt response value result user service network queue ",
    "update change version release config error retry timeout budget cluster node thread ",
    "batch stream event message record index block prefix table query schema route policy ",
    "load metric report"
);
const SYLLABLES: &str = "ka ro vin tel mu sha dor qui plex zan bri lo nex ter";

fn pick_word(rng: &mut Rng, list: &'static str) -> &'static str {
    let words: Vec<&str> = list.split(' ').collect();
    words[rng.below(words.len())]
}

/// English-like prose: words, numbers, the odd made-up word, punctuation (cuts at most spaces).
fn prose(rng: &mut Rng, bytes: usize) -> String {
    let mut s = String::new();
    while s.len() < bytes {
        let n = 6 + rng.below(14);
        for i in 0..n {
            let word = match rng.below(20) {
                0 => (10 + rng.below(99_990)).to_string(),
                1 => (0..2 + rng.below(3))
                    .map(|_| pick_word(rng, SYLLABLES))
                    .collect(),
                _ => pick_word(rng, WORDS).to_string(),
            };
            if i == 0 {
                let mut c = word.chars();
                let first = c.next().unwrap().to_uppercase().to_string();
                s.push_str(&first);
                s.push_str(c.as_str());
            } else {
                s.push_str(&word);
            }
            if i + 1 < n {
                s.push_str(if rng.below(15) == 0 { ", " } else { " " });
            }
        }
        s.push_str(rng.pick(&[". ", ". ", "? ", "! ", ".\n\n", ": "]));
    }
    s
}

/// A document: prose with the crate's tricky pieces mixed in, sometimes ending in a long run
/// without spaces (so that a cut lands exactly where the document ends).
fn document(rng: &mut Rng) -> String {
    let mut d = String::new();
    let target = 1100 + rng.below(3000);
    while d.len() < target {
        if rng.below(3) == 0 {
            let n = 1 + rng.below(12);
            d.push_str(&random_text(rng, n));
        } else {
            let n = 40 + rng.below(300);
            d.push_str(&prose(rng, n));
        }
    }
    if rng.below(3) == 0 {
        let run = rng.pick(&["y", "7", "-", "ab", "x.y"]);
        d.push_str(&run.repeat(150 / run.len() + rng.below(200)));
    }
    d
}

fn char_floor(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// A text that shares a prefix with `docs` or with earlier texts.
fn shared_text(rng: &mut Rng, docs: &[String], earlier: &[String]) -> String {
    let tail = |rng: &mut Rng| {
        let mut t = rng.pick(JUNCTIONS).to_string();
        if rng.below(2) == 0 {
            let n = 1 + rng.below(20);
            t.push_str(&random_text(rng, n));
        }
        let n = rng.below(1500);
        t.push_str(&prose(rng, n));
        t
    };
    let doc = &docs[rng.below(docs.len())];
    let pick = |rng: &mut Rng| &earlier[earlier.len() - 1 - rng.below(earlier.len().min(40))];
    match rng.below(10) {
        // A whole shared document, then a junction and a tail.
        0..=2 => format!("{doc}{}", tail(rng)),
        // The document cut anywhere (mid-word, mid-character run), then a junction and a tail.
        3 | 4 => {
            let at = char_floor(doc, rng.below(doc.len() + 1));
            format!("{}{}", &doc[..at], tail(rng))
        }
        // An earlier text again, a prefix of one, or one extended.
        5 if !earlier.is_empty() => pick(rng).clone(),
        6 if !earlier.is_empty() => {
            let e = pick(rng);
            e[..char_floor(e, rng.below(e.len() + 1))].to_string()
        }
        7 if !earlier.is_empty() => format!("{}{}", pick(rng), tail(rng)),
        // An earlier text with a junction put in at some byte.
        8 if !earlier.is_empty() => {
            let e = pick(rng);
            let at = char_floor(e, rng.below(e.len() + 1));
            let skip = char_floor(e, (at + rng.below(3)).min(e.len()));
            format!("{}{}{}", &e[..at], rng.pick(JUNCTIONS), &e[skip..])
        }
        // An earlier text edited right at one of its cuts (where the kept ids end).
        9 if !earlier.is_empty() && rng.below(2) == 0 => {
            let e = pick(rng);
            let cuts = Plan::of(e).cuts;
            if cuts.is_empty() {
                return e.clone();
            }
            let c = cuts[rng.below(cuts.len())] as usize;
            let at = char_floor(e, c + 1 - rng.below(3));
            let skip = char_floor(e, (at + rng.below(3)).min(e.len()));
            let put = match rng.below(3) {
                0 => rng.pick(JUNCTIONS).to_string(),
                _ => ((b'!' + rng.below(94) as u8) as char).to_string(),
            };
            format!("{}{put}{}", &e[..at], &e[skip..])
        }
        _ => format!("{}{}", document(rng), tail(rng)),
    }
}

#[test]
fn text_prefix_cache_equals_the_tokenizers_crate() {
    for name in ["qwen3", "llama3_1"] {
        let tk = tokenizer(name);
        assert!(
            tk.text_prefix_cache(),
            "{name} should use the text prefix cache"
        );
        let small = tokenizer(name).with_text_prefix_cache(96 << 10);
        let mut rng = Rng(0x7e47 + name.len() as u64);
        let docs: Vec<String> = (0..8).map(|_| document(&mut rng)).collect();
        let mut earlier: Vec<String> = Vec::new();
        let cases = 2500;
        for case in 0..cases {
            let text = shared_text(&mut rng, &docs, &earlier);
            let first = rng.below(2) == 0;
            for special in [first, !first] {
                let expected = tk.encode_general(&text, special).unwrap();
                assert_eq!(
                    tk.encode(&text, special).unwrap(),
                    expected,
                    "{name} case {case} special={special}: {text:?}"
                );
                if case % 2 == 0 {
                    assert_eq!(
                        small.encode(&text, special).unwrap(),
                        expected,
                        "{name} case {case} special={special} (small cache): {text:?}"
                    );
                }
            }
            earlier.push(text);
        }
        let s = tk.cache_stats();
        let long = earlier.iter().filter(|t| t.len() >= 1024).count() as u64;
        println!("{name}: {s:?} ({long} texts of 1 KiB or more)");
        assert_eq!(
            s.text_prefix_hits + s.text_prefix_misses,
            2 * long,
            "every long text looked up, once per flag"
        );
        // Most texts share a kept prefix (the second flag's encode is the same text again).
        assert!(
            s.text_prefix_hits >= long + long / 2,
            "{name}: shared prefixes should be found ({s:?})"
        );
        assert!(s.text_prefix_reused_tokens > 1000 * long, "{s:?}");
        assert!(s.text_prefix_bytes <= kvroute_tokenizer::DEFAULT_TEXT_PREFIX_CACHE_BYTES);
        let t = small.cache_stats();
        assert!(
            t.text_prefix_hits > 0 && t.text_prefix_evictions > 0,
            "{t:?}"
        );
        assert!(t.text_prefix_bytes <= 96 << 10, "{t:?}");
    }
}

/// A kept text with a cut exactly where the next text stops sharing it (after a run without
/// spaces: letters, digits or punctuation), the next going on with each junction (most of which
/// make that offset no cut of the next text).
#[test]
fn shared_part_ending_exactly_at_a_kept_cut() {
    for name in ["qwen3", "llama3_1"] {
        let tk = tokenizer(name);
        let mut rng = Rng(0x51 + name.len() as u64);
        for case in 0..300 {
            let n = 1200 + rng.below(600);
            let mut doc = prose(&mut rng, n);
            // A run without spaces across a cut mark: the kept text's cut is where `doc` ends.
            let run = rng.pick(&["z", "7", "-", ".", "x.y", "'", ")"]);
            doc.push_str(&run.repeat(140 / run.len()));
            let kept = format!("{doc} {}", prose(&mut rng, 200));
            let next = format!("{doc}{}{}", rng.pick(JUNCTIONS), prose(&mut rng, 200));
            for text in [&kept, &next, &doc] {
                for special in [false, true] {
                    assert_eq!(
                        tk.encode(text, special).unwrap(),
                        tk.encode_general(text, special).unwrap(),
                        "{name} case {case} special={special}: {text:?}"
                    );
                }
            }
        }
        assert!(tk.cache_stats().text_prefix_hits >= 600);
    }
}

#[test]
fn off_when_the_budget_is_zero() {
    let tk = tokenizer("qwen3").with_text_prefix_cache(0);
    assert!(!tk.text_prefix_cache());
    let mut rng = Rng(3);
    let text = prose(&mut rng, 3000);
    for _ in 0..2 {
        assert_eq!(
            tk.encode(&text, true).unwrap(),
            tk.encode_general(&text, true).unwrap()
        );
    }
    let s = tk.cache_stats();
    assert_eq!((s.text_prefix_hits, s.text_prefix_misses), (0, 0));
}

/// Threads encoding texts that share documents at once through one tokenizer (the cache's lock is
/// held for lookups and inserts only) get the ids the crate computes.
#[test]
fn threads_share_the_cache() {
    let tk = tokenizer("llama3_1");
    let mut rng = Rng(99);
    let docs: Vec<String> = (0..4).map(|_| document(&mut rng)).collect();
    let texts: Vec<Vec<String>> = (0..4)
        .map(|_| {
            (0..60)
                .map(|i| format!("{} {}", docs[i % 4], prose(&mut rng, 600)))
                .collect()
        })
        .collect();
    std::thread::scope(|scope| {
        for batch in &texts {
            let tk = &tk;
            scope.spawn(move || {
                for text in batch {
                    let expected = tk.encode_general(text, true).unwrap();
                    assert_eq!(tk.encode(text, true).unwrap(), expected, "{text:?}");
                }
            });
        }
    });
    assert!(tk.cache_stats().text_prefix_hits > 100);
}

/// This thread's CPU time in µs (Linux), else wall time: other processes on a busy machine do
/// not count.
fn cpu_us(start: Instant) -> f64 {
    #[cfg(all(target_os = "linux", target_pointer_width = "64"))]
    {
        #[repr(C)]
        struct Timespec {
            sec: i64,
            nsec: i64,
        }
        extern "C" {
            fn clock_gettime(clock: i32, t: *mut Timespec) -> i32;
        }
        const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
        let mut t = Timespec { sec: 0, nsec: 0 };
        // SAFETY: clock_gettime writes one timespec (two i64 on 64-bit Linux) into `t`.
        if unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut t) } == 0 {
            return t.sec as f64 * 1e6 + t.nsec as f64 / 1e3;
        }
    }
    start.elapsed().as_secs_f64() * 1e6
}

/// µs per prompt of a shared ~500-token document + " " + a unique ~500-token tail, as in the
/// gateway benchmark (16 documents, 256 prompts a round), with the cache and without it (the same
/// prompts through both, alternating which goes first), and the unique tails alone through a third
/// tokenizer (the floor: what is left to encode); then prompts that share nothing (what the lookup
/// costs on a miss). CPU time, printed, not asserted:
/// `cargo test -p kvroute-tokenizer --release --test text_prefix -- --ignored --nocapture`.
#[test]
#[ignore]
fn shared_document_timing() {
    let start = Instant::now();
    for name in ["qwen3", "llama3_1"] {
        let on = tokenizer(name);
        let off = tokenizer(name).with_text_prefix_cache(0);
        let tails = tokenizer(name).with_text_prefix_cache(0);
        let mut rng = Rng(11);
        let warmup = prose(&mut rng, 60_000);
        let ids = on.encode(&warmup, false).unwrap();
        let half = 500 * warmup.len() / ids.len();
        off.encode(&warmup, false).unwrap();
        tails.encode(&warmup, false).unwrap();
        let docs: Vec<String> = (0..16).map(|_| prose(&mut rng, half)).collect();
        for shared in [true, false] {
            let (mut us, mut tokens, mut prompts) = ([0.0; 3], 0, 0);
            let s0 = on.cache_stats();
            for round in 0..8 {
                // (prompt, where its unique part starts)
                let batch: Vec<(String, usize)> = (0..256)
                    .map(|i| match shared {
                        true => {
                            let d = &docs[i % 16];
                            (format!("{d} {}", prose(&mut rng, half)), d.len())
                        }
                        false => (prose(&mut rng, 2 * half), 0),
                    })
                    .collect();
                let time = |tk: &ModelTokenizer, unique_part: bool| {
                    let t = cpu_us(start);
                    let ids: Vec<Vec<u32>> = batch
                        .iter()
                        .map(|(p, at)| tk.encode(&p[if unique_part { *at } else { 0 }..], true))
                        .collect::<Result<_, _>>()
                        .unwrap();
                    (cpu_us(start) - t, ids)
                };
                let ((a, x), (b, y)) = match round % 2 {
                    0 => (time(&off, false), time(&on, false)),
                    _ => {
                        let b = time(&on, false);
                        (time(&off, false), b)
                    }
                };
                assert_eq!(x, y);
                us[0] += a;
                us[1] += b;
                us[2] += time(&tails, true).0;
                tokens += x.iter().map(Vec::len).sum::<usize>();
                prompts += batch.len();
            }
            let s1 = on.cache_stats();
            let per = |us: f64| {
                format!(
                    "{:.1} µs ({:.1} per 1k tokens)",
                    us / prompts as f64,
                    us / tokens as f64 * 1000.0
                )
            };
            println!(
                "{name}, {}, ~{} tokens per prompt: without the cache {}, with it {}; the unique \
                 part alone {:.1} µs; {} hits, {:.0} ids reused per prompt",
                if shared {
                    "shared document + unique tail"
                } else {
                    "nothing shared"
                },
                tokens / prompts,
                per(us[0]),
                per(us[1]),
                us[2] / prompts as f64,
                s1.text_prefix_hits - s0.text_prefix_hits,
                (s1.text_prefix_reused_tokens - s0.text_prefix_reused_tokens) as f64
                    / prompts as f64,
            );
        }
    }
}
