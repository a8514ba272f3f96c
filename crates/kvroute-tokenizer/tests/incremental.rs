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

/// A conversation turn as agents send them: text, reasoning in `<think>` tags, tool calls and
/// tool results (Qwen3's template renders an assistant turn differently once a later user turn
/// exists, so a later request may rewrite text of an earlier one).
fn random_turn(rng: &mut Rng, index: usize) -> Value {
    let n = 1 + rng.below(20);
    let text = random_text(rng, n);
    match (index % 2, rng.below(6)) {
        (0, 0) => json!({"role": "tool", "content": text, "tool_call_id": "c1"}),
        (0, _) => json!({"role": "user", "content": text}),
        (_, 0) => {
            json!({"role": "assistant", "content": format!("<think>\n{}\n</think>\n\n{text}", random_text(rng, 3))})
        }
        (_, 1) => {
            json!({"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"x\": 1}"}}]})
        }
        (_, 2) => {
            json!({"role": "assistant", "content": text, "reasoning_content": random_text(rng, 2)})
        }
        _ => json!({"role": "assistant", "content": text}),
    }
}

/// The conversation cache (src/chat_prefix.rs): a chat's ids with it equal the ids without it
/// and a full encode of the rendered prompt, as conversations grow turn by turn, are re-sent
/// unchanged, get an earlier turn edited (which must not reuse the edited text's ids), and are
/// evicted by a budget that holds only a few conversations.
#[test]
fn conversation_cache_equals_full_encode_with_edits_and_evictions() {
    for name in ["qwen3", "llama3_1"] {
        let plain = tokenizer(name).with_conversation_cache(0);
        let cached = tokenizer(name);
        let tight = tokenizer(name).with_conversation_cache(24 << 10);
        let mut rng = Rng(0xfeed + name.len() as u64);
        let mut conversations: Vec<Vec<Value>> = (0..6)
            .map(|_| {
                let n = 1 + rng.below(30);
                vec![json!({"role": "system", "content": random_text(&mut rng, n)})]
            })
            .collect();
        for step in 0..400 {
            let c = rng.below(conversations.len());
            let conversation = &mut conversations[c];
            match rng.below(8) {
                // An earlier turn edited: one character of its text replaced.
                0 if conversation.len() > 2 => {
                    let i = 1 + rng.below(conversation.len() - 1);
                    if let Some(Value::String(s)) = conversation[i].get_mut("content") {
                        let at = s
                            .char_indices()
                            .nth(rng.below(s.chars().count().max(1)))
                            .map_or(0, |(i, _)| i);
                        let end = s[at..].chars().next().map_or(at, |ch| at + ch.len_utf8());
                        s.replace_range(at..end, "§");
                    }
                }
                // Re-sent unchanged.
                1 => {}
                _ => {
                    let index = conversation.len();
                    conversation.push(random_turn(&mut rng, index));
                }
            }
            let request = json!({"messages": conversation, "max_tokens": 4});
            let (rendered, _) = plain.render_chat(&request).unwrap();
            let full = plain.encode_general(&rendered, false).unwrap();
            let bytes = serde_json::to_vec(&request).unwrap();
            assert_eq!(
                plain.encode_chat_bytes(&bytes).unwrap(),
                full,
                "{name} step {step} (no cache)"
            );
            for (which, t) in [("cached", &cached), ("tight", &tight)] {
                let (_, ids) = t.read_request(&bytes, true).unwrap();
                assert_eq!(ids.unwrap().unwrap(), full, "{name} step {step} ({which})");
            }
        }
        let s = cached.cache_stats();
        assert!(s.conversation_hits > s.conversation_misses, "{name}: {s:?}");
        let t = tight.cache_stats();
        assert!(
            t.conversation_evictions > 0 && t.conversation_bytes <= 24 << 10,
            "{name}: {t:?}"
        );
        assert_eq!(plain.cache_stats().conversation_hits, 0);
    }
}
