//! A hand-written scanner for the pre-tokenizer regexes of byte-level BPE models in the GPT-4
//! family (Llama 3.x, Qwen 2/2.5/3, DeepSeek-V3 style):
//!
//! ```text
//! (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,K}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
//! ```
//!
//! with K = 1 (Qwen) or 3 (Llama 3). It yields exactly the regex's matches (leftmost-first
//! alternation, greedy, with the backtracking of `\s*[\r\n]+` and `\s+(?!\S)` written out), several
//! times faster than a backtracking regex engine. Character classes come from regex-syntax's
//! Unicode tables, the ones fancy-regex (and so the `tokenizers` crate) matches with. The
//! property test in tests/fast_encoder.rs holds it to the regex on random text.

use std::sync::OnceLock;

use regex_syntax::hir::{Class, HirKind};

/// Which pattern a tokenizer.json names, if it is one this scanner implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pattern {
    /// K in `\p{N}{1,K}`.
    pub max_digits: usize,
}

const HEAD: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|";
const TAIL: &str = r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

impl Pattern {
    pub fn recognize(regex: &str) -> Option<Pattern> {
        let middle = regex.strip_prefix(HEAD)?.strip_suffix(TAIL)?;
        match middle {
            r"\p{N}" => Some(Pattern { max_digits: 1 }),
            r"\p{N}{1,3}" => Some(Pattern { max_digits: 3 }),
            _ => None,
        }
    }

    /// Calls `emit` with every match, in order; together they cover `text` exactly.
    pub fn split<'a>(&self, text: &'a str, mut emit: impl FnMut(&'a str)) {
        let classes = classes();
        let bytes = text.as_bytes();
        let mut p = 0;
        while p < text.len() {
            let end = self.match_at(text, bytes, p, classes);
            emit(&text[p..end]);
            p = end;
        }
    }

    /// End of the match that starts at `p` (always > p).
    fn match_at(&self, text: &str, bytes: &[u8], p: usize, cl: &Classes) -> usize {
        let (c0, n0) = char_at(text, p);
        let k0 = cl.of(c0);
        // 1. (?i:'s|'t|'re|'ve|'m|'ll|'d)
        if c0 == '\'' {
            if let Some(end) = contraction(text, p + 1) {
                return end;
            }
        }
        // 2. [^\r\n\p{L}\p{N}]?\p{L}+
        if k0 & LETTER != 0 {
            return self.letters(text, p + n0, cl);
        }
        if c0 != '\r' && c0 != '\n' && k0 & NUMBER == 0 && p + n0 < text.len() {
            let (c1, _) = char_at(text, p + n0);
            if cl.of(c1) & LETTER != 0 {
                return self.letters(text, p + n0, cl);
            }
        }
        // 3. \p{N}{1,K}
        if k0 & NUMBER != 0 {
            let mut end = p + n0;
            for _ in 1..self.max_digits {
                if end >= text.len() {
                    break;
                }
                let (c, n) = char_at(text, end);
                if cl.of(c) & NUMBER == 0 {
                    break;
                }
                end += n;
            }
            return end;
        }
        // 4.  ?[^\s\p{L}\p{N}]+[\r\n]*
        let other = |c: char| cl.of(c) & (LETTER | NUMBER | SPACE) == 0;
        let mut start = None;
        if other(c0) {
            start = Some(p);
        } else if c0 == ' ' && p + 1 < text.len() && other(char_at(text, p + 1).0) {
            start = Some(p + 1);
        }
        if let Some(mut end) = start {
            while end < text.len() {
                let (c, n) = char_at(text, end);
                if !other(c) {
                    break;
                }
                end += n;
            }
            while end < text.len() && (bytes[end] == b'\r' || bytes[end] == b'\n') {
                end += 1;
            }
            return end;
        }
        // c0 is whitespace from here on.
        let mut run_end = p;
        let mut last_newline_end = None;
        while run_end < text.len() {
            let (c, n) = char_at(text, run_end);
            if cl.of(c) & SPACE == 0 {
                break;
            }
            run_end += n;
            if c == '\r' || c == '\n' {
                last_newline_end = Some(run_end);
            }
        }
        // 5. \s*[\r\n]+ : up to the run's last newline.
        if let Some(end) = last_newline_end {
            return end;
        }
        // 6. \s+(?!\S) : the whole run at the end of the text, else all of it but its last char.
        if run_end == text.len() {
            return run_end;
        }
        let last_start = prev_char_start(text, run_end);
        if last_start > p {
            return last_start;
        }
        // 7. \s+
        run_end
    }

    fn letters(&self, text: &str, mut end: usize, cl: &Classes) -> usize {
        while end < text.len() {
            let (c, n) = char_at(text, end);
            if cl.of(c) & LETTER == 0 {
                break;
            }
            end += n;
        }
        end
    }
}

/// `'s|'t|'re|'ve|'m|'ll|'d`, case-insensitively (Unicode simple folding: `ſ` is an `s`), right
/// after the apostrophe at `at - 1`.
fn contraction(text: &str, at: usize) -> Option<usize> {
    let rest = &text[at..];
    let mut chars = rest.chars();
    let first = chars.next()?;
    let one = first.len_utf8();
    match first {
        's' | 'S' | 'ſ' | 't' | 'T' | 'm' | 'M' | 'd' | 'D' => Some(at + one),
        'r' | 'R' | 'v' | 'V' => match chars.next() {
            Some('e' | 'E') => Some(at + one + 1),
            _ => None,
        },
        'l' | 'L' => match chars.next() {
            Some('l' | 'L') => Some(at + one + 1),
            _ => None,
        },
        _ => None,
    }
}

#[inline]
fn char_at(text: &str, p: usize) -> (char, usize) {
    let b = text.as_bytes()[p];
    if b < 0x80 {
        return (b as char, 1);
    }
    let c = text[p..].chars().next().unwrap_or('\u{FFFD}');
    (c, c.len_utf8())
}

fn prev_char_start(text: &str, mut i: usize) -> usize {
    i -= 1;
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

const LETTER: u8 = 1;
const NUMBER: u8 = 2;
const SPACE: u8 = 4;

/// `\p{L}`, `\p{N}` and `\s` for every code point: a table for the first planes, binary search
/// over ranges above.
struct Classes {
    table: Vec<u8>,
    astral: Vec<(u32, u32, u8)>,
}

const TABLE_LIMIT: u32 = 0x30000;

impl Classes {
    #[inline]
    fn of(&self, c: char) -> u8 {
        let cp = c as u32;
        if cp < TABLE_LIMIT {
            return self.table[cp as usize];
        }
        match self.astral.binary_search_by(|&(lo, hi, _)| {
            if hi < cp {
                std::cmp::Ordering::Less
            } else if lo > cp {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        }) {
            Ok(i) => self.astral[i].2,
            Err(_) => 0,
        }
    }
}

fn classes() -> &'static Classes {
    static CLASSES: OnceLock<Classes> = OnceLock::new();
    CLASSES.get_or_init(|| {
        let mut table = vec![0u8; TABLE_LIMIT as usize];
        let mut astral = Vec::new();
        for (pattern, bit) in [(r"\p{L}", LETTER), (r"\p{N}", NUMBER), (r"\s", SPACE)] {
            for (lo, hi) in unicode_ranges(pattern) {
                for cp in lo..=hi.min(TABLE_LIMIT - 1) {
                    table[cp as usize] |= bit;
                }
                if hi >= TABLE_LIMIT {
                    astral.push((lo.max(TABLE_LIMIT), hi, bit));
                }
            }
        }
        astral.sort_unstable();
        Classes { table, astral }
    })
}

/// The code point ranges of a Unicode class, as regex-syntax defines it.
fn unicode_ranges(pattern: &str) -> Vec<(u32, u32)> {
    let hir = regex_syntax::ParserBuilder::new()
        .build()
        .parse(pattern)
        .expect("a valid Unicode class");
    match hir.kind() {
        HirKind::Class(Class::Unicode(class)) => class
            .ranges()
            .iter()
            .map(|r| (r.start() as u32, r.end() as u32))
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(p: &Pattern, text: &str) -> Vec<String> {
        let mut out = Vec::new();
        p.split(text, |s| out.push(s.to_string()));
        out
    }

    #[test]
    fn recognizes_the_two_patterns() {
        let qwen = format!(r"{HEAD}\p{{N}}{TAIL}");
        let llama = format!(r"{HEAD}\p{{N}}{{1,3}}{TAIL}");
        assert_eq!(Pattern::recognize(&qwen), Some(Pattern { max_digits: 1 }));
        assert_eq!(Pattern::recognize(&llama), Some(Pattern { max_digits: 3 }));
        assert_eq!(Pattern::recognize(r"\w+"), None);
    }

    #[test]
    fn splits_like_the_regex() {
        let p = Pattern { max_digits: 3 };
        assert_eq!(
            split(&p, "Hello world's  12345 (x)\n\n  y  "),
            ["Hello", " world", "'s", " ", " ", "123", "45", " (", "x", ")\n\n", " ", " y", "  "]
        );
        assert_eq!(split(&p, "a \n b"), ["a", " \n", " b"]);
        assert_eq!(split(&p, "I'M"), ["I", "'M"]);
    }
}
