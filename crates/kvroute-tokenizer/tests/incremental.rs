//! Incremental chat encoding (the segment cache, src/segments.rs) equals a full encode of the
//! rendered prompt, over random multi-turn conversations that share and extend histories, with a
//! cache small enough to evict.

mod common;

use common::{random_text, tokenizer, tokenizer_dir, Rng};
use kvroute_tokenizer::ModelTokenizer;
use serde_json::{json, Value};

fn random_conversation(rng: &mut Rng, turns: usize) -> Vec<Value> {
    let mut messages = Vec::new();
    if rng.below(2) == 0 {
        let n = 1 + rng.below(30);
        messages.push(json!({"role": "system", "content": random_text(rng, n)}));
    }
    for t in 0..turns {
        let role = if t % 2 == 0 { "user" } else { "assistant" };
        let n = 1 + rng.below(25);
        messages.push(json!({"role": role, "content": random_text(rng, n)}));
    }
    messages
}

#[test]
fn incremental_equals_full_encode_on_random_conversations() {
    for name in ["qwen3", "llama3_1"] {
        let warm = tokenizer(name);
        assert!(
            warm.incremental(),
            "{name} should encode chats incrementally"
        );
        let small = ModelTokenizer::from_dir_with_cache(&tokenizer_dir(name), 512).unwrap();
        let mut rng = Rng(0xc0ffee + name.len() as u64);
        for case in 0..60 {
            let turns = 1 + rng.below(12);
            let conversation = random_conversation(&mut rng, turns);
            // Every prefix of the conversation, as a client re-sends it turn by turn.
            for end in 1..=conversation.len() {
                let request = json!({"messages": &conversation[..end], "add_generation_prompt": end % 2 == 1});
                let (rendered, _) = warm.render_chat(&request).unwrap();
                let full = warm.encode_general(&rendered, false).unwrap();
                assert_eq!(
                    warm.encode_chat(&request).unwrap(),
                    full,
                    "{name} case {case} turns {end}"
                );
                let bytes = serde_json::to_vec(&request).unwrap();
                assert_eq!(
                    warm.encode_chat_bytes(&bytes).unwrap(),
                    full,
                    "{name} case {case} turns {end} (bytes)"
                );
                assert_eq!(
                    small.encode_chat(&request).unwrap(),
                    full,
                    "{name} case {case} turns {end} (small cache)"
                );
            }
        }
        let stats = warm.cache_stats();
        assert!(
            stats.hits > stats.misses,
            "{name}: re-sent histories should hit the cache ({stats:?})"
        );
        assert!(small.cache_stats().tokens <= 512);
    }
}
