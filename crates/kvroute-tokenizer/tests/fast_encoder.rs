//! The fast path (hand-written pre-tokenizer + word cache, src/fast_encoder.rs) against the
//! `tokenizers` crate's own encode on random text that mixes every character class, special-token
//! strings, NFD sequences and whitespace runs: equal ids, with and without special tokens.

mod common;

use common::{random_text, tokenizer, Rng};

#[test]
fn fast_path_equals_the_tokenizers_crate_on_random_text() {
    for name in ["qwen3", "llama3_1"] {
        let tk = tokenizer(name);
        assert!(tk.fast_path(), "{name} should take the fast path");
        let mut rng = Rng(0x5eed ^ name.len() as u64);
        for case in 0..600 {
            let n = 1 + rng.below(40);
            let text = random_text(&mut rng, n);
            for special in [true, false] {
                let fast = tk.encode(&text, special).unwrap();
                let general = tk.encode_general(&text, special).unwrap();
                assert_eq!(
                    fast, general,
                    "{name} case {case} special={special}: {text:?}"
                );
            }
        }
    }
}

#[test]
fn empty_and_whitespace_only_text() {
    for name in ["qwen3", "llama3_1"] {
        let tk = tokenizer(name);
        for text in ["", " ", "\n", " \n\n ", "\t\t", "\r\n\r\n"] {
            for special in [true, false] {
                assert_eq!(
                    tk.encode(text, special).unwrap(),
                    tk.encode_general(text, special).unwrap(),
                    "{name} {text:?}"
                );
            }
        }
    }
}
