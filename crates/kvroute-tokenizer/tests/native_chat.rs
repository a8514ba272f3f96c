//! The hand-written renderers (src/native_chat.rs) against minijinja rendering the same template:
//! random conversations built from the pieces each template treats specially (think tags, tool
//! response wrappers, newlines and Python whitespace at the edges, roles it renders and roles it
//! skips), with the variables it reads set and unset. Where a port declines, minijinja renders;
//! that it declines only where it must is checked too.

mod common;

use common::{random_text, tokenizer_dir, Rng};
use kvroute_tokenizer::native_chat::{NativeTemplate, PlainMessage};
use kvroute_tokenizer::template::ChatTemplate;
use minijinja::Value;
use serde_json::{json, Map, Value as Json};

fn template_source(name: &str) -> String {
    let config: Json = serde_json::from_slice(
        &std::fs::read(tokenizer_dir(name).join("tokenizer_config.json")).unwrap(),
    )
    .unwrap();
    config["chat_template"].as_str().unwrap().to_string()
}

/// Text with the pieces the templates look for, at the edges and inside.
fn content(rng: &mut Rng) -> String {
    const MARKS: &[&str] = &[
        "<think>",
        "</think>",
        "\n",
        "\n\n",
        " ",
        "\u{a0}",
        "\u{1f}",
        "<tool_response>",
        "</tool_response>",
        "",
    ];
    let mut s = String::new();
    for _ in 0..rng.below(6) {
        if rng.below(2) == 0 {
            s.push_str(rng.pick(MARKS));
        } else {
            let n = 1 + rng.below(6);
            s.push_str(&random_text(rng, n));
        }
    }
    s
}

fn conversation(rng: &mut Rng) -> Vec<Json> {
    const ROLES: &[&str] = &[
        "system",
        "user",
        "assistant",
        "tool",
        "user",
        "assistant",
        "critic",
    ];
    (0..1 + rng.below(8))
        .map(|_| json!({"role": rng.pick(ROLES), "content": content(rng)}))
        .collect()
}

fn kwargs(rng: &mut Rng) -> Map<String, Json> {
    let mut k = Map::new();
    k.insert(
        "add_generation_prompt".into(),
        Json::Bool(rng.below(2) == 0),
    );
    k.insert("tools".into(), Json::Null);
    k.insert("documents".into(), Json::Null);
    match rng.below(4) {
        0 => {}
        1 => drop(k.insert("enable_thinking".into(), Json::Bool(false))),
        2 => drop(k.insert("enable_thinking".into(), Json::Bool(true))),
        _ => drop(k.insert("enable_thinking".into(), json!(0))),
    }
    k
}

fn special_tokens() -> Map<String, Json> {
    let mut s = Map::new();
    s.insert("bos_token".into(), json!("<|begin_of_text|>"));
    s.insert("eos_token".into(), json!("<|eot_id|>"));
    s
}

/// What minijinja renders, the context assembled as the tokenizer assembles it.
fn minijinja(
    t: &ChatTemplate,
    messages: &[Json],
    kwargs: &Map<String, Json>,
) -> Result<String, String> {
    let mut context = special_tokens();
    context.extend(kwargs.clone());
    context.insert("messages".into(), Json::Array(messages.to_vec()));
    t.render(&Value::from_serialize(&context))
}

/// A port's rendering, messages made plain as the tokenizer's message cache makes them (None:
/// a message is not plain, or the port declines).
fn render(
    native: NativeTemplate,
    messages: &[Json],
    kwargs: &Map<String, Json>,
    special: &Map<String, Json>,
) -> Option<String> {
    let plain: Vec<PlainMessage> = messages
        .iter()
        .map(PlainMessage::of)
        .collect::<Option<_>>()?;
    let refs: Vec<&PlainMessage> = plain.iter().collect();
    native.render(&refs, kwargs, special)
}

#[test]
fn known_templates_are_recognized_and_others_are_not() {
    assert_eq!(
        NativeTemplate::recognize(&template_source("qwen3")),
        Some(NativeTemplate::Qwen3)
    );
    assert_eq!(
        NativeTemplate::recognize(&template_source("llama3_1")),
        Some(NativeTemplate::Llama3)
    );
    // One byte changed is another template.
    let mut edited = template_source("qwen3");
    edited.push(' ');
    assert_eq!(NativeTemplate::recognize(&edited), None);
}

#[test]
fn ports_render_what_minijinja_renders() {
    for (name, native) in [
        ("qwen3", NativeTemplate::Qwen3),
        ("llama3_1", NativeTemplate::Llama3),
    ] {
        let template = ChatTemplate::compile(&template_source(name)).unwrap();
        let mut rng = Rng(0x5eed_0000 + name.len() as u64);
        for case in 0..3000 {
            let messages = conversation(&mut rng);
            let kwargs = kwargs(&mut rng);
            let ours = render(native, &messages, &kwargs, &special_tokens()).unwrap_or_else(|| {
                panic!("{name} case {case}: the port declined plain messages {messages:?}")
            });
            let theirs = minijinja(&template, &messages, &kwargs);
            assert_eq!(
                Ok(ours),
                theirs,
                "{name} case {case}: {messages:?} {kwargs:?}"
            );
        }
    }
}

#[test]
fn ports_decline_what_they_do_not_render() {
    let s = special_tokens();
    let mut k = Map::new();
    k.insert("add_generation_prompt".into(), Json::Bool(true));
    let user = json!({"role": "user", "content": "hi"});
    let declined = |native: NativeTemplate, messages: &[Json], kwargs: &Map<String, Json>| {
        render(native, messages, kwargs, &s).is_none()
    };
    for native in [NativeTemplate::Qwen3, NativeTemplate::Llama3] {
        // Content that is not a string, a reasoning field, tool calls.
        assert!(declined(
            native,
            &[json!({"role": "user", "content": null})],
            &k
        ));
        assert!(declined(
            native,
            &[json!({"role": "user", "content": [{"type": "text", "text": "x"}]})],
            &k
        ));
        assert!(declined(
            native,
            &[
                user.clone(),
                json!({"role": "assistant", "content": "a", "reasoning_content": "r"})
            ],
            &k
        ));
        assert!(declined(
            native,
            &[
                user.clone(),
                json!({"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]})
            ],
            &k
        ));
        // Null reasoning and null tool calls are what the template treats as absent (an empty tool-call list is declined too: minijinja renders it).
        assert!(!declined(
            native,
            &[
                user.clone(),
                json!({"role": "assistant", "content": "a", "reasoning_content": null, "tool_calls": null})
            ],
            &k
        ));
    }
    // Qwen3 with tools; Llama 3 without a bos_token anywhere.
    let mut with_tools = k.clone();
    with_tools.insert(
        "tools".into(),
        json!([{"type": "function", "function": {"name": "f"}}]),
    );
    let one = [user.clone()];
    assert!(declined(NativeTemplate::Qwen3, &one, &with_tools));
    assert!(render(NativeTemplate::Llama3, &one, &k, &Map::new()).is_none());
    // A kwarg wins over the special token of the same name, as in the tokenizer's context.
    let mut own_bos = k.clone();
    own_bos.insert("bos_token".into(), json!("<B>"));
    let ours = render(NativeTemplate::Llama3, &one, &own_bos, &s).unwrap();
    assert!(ours.starts_with("<B>"), "{ours}");
}
