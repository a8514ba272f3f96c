//! Golden ids from vLLM 0.33's own code (fixtures/golden/tokenization.json, made by
//! scripts/golden/make-tokenization.sh): every text case encodes, and every chat case renders
//! and encodes, exactly as vLLM did, through the fast path and the general path alike.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use kvroute_tokenizer::ModelTokenizer;
use serde_json::Value;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixture() -> Value {
    let path = repo_root().join("fixtures/golden/tokenization.json");
    serde_json::from_slice(&std::fs::read(&path).expect("fixture present"))
        .expect("fixture is JSON")
}

fn tokenizers(fixture: &Value) -> HashMap<String, ModelTokenizer> {
    let mut out = HashMap::new();
    for (name, dir) in fixture["tokenizers"].as_object().expect("tokenizers map") {
        let dir = repo_root().join(dir.as_str().expect("a path"));
        assert!(
            dir.is_dir(),
            "{} is missing: run `npm ci` first (the folders come from devDependencies)",
            dir.display()
        );
        out.insert(
            name.clone(),
            ModelTokenizer::from_dir(&dir).expect("tokenizer loads"),
        );
    }
    out
}

fn ids(case: &Value) -> Vec<u32> {
    case["ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|v| v.as_u64().expect("id") as u32)
        .collect()
}

#[test]
fn every_case_matches_vllm() {
    let fixture = fixture();
    let tokenizers = tokenizers(&fixture);
    let mut failures = Vec::new();
    let cases = fixture["cases"].as_array().expect("cases");
    for case in cases {
        let name = format!(
            "{} ({})",
            case["name"].as_str().unwrap_or("?"),
            case["tokenizer"].as_str().unwrap_or("?")
        );
        let tk = &tokenizers[case["tokenizer"].as_str().expect("tokenizer")];
        let expected = ids(case);
        match case["kind"].as_str() {
            Some("text") => {
                let prompt = case["prompt"].as_str().expect("prompt");
                let special = case["add_special_tokens"].as_bool().expect("flag");
                let fast = tk.encode(prompt, special).expect("encodes");
                let general = tk.encode_general(prompt, special).expect("encodes");
                if fast != expected || general != expected {
                    failures.push(format!(
                        "{name}: text ids differ (fast equal: {}, general equal: {})",
                        fast == expected,
                        general == expected
                    ));
                }
            }
            Some("chat") => {
                let request = &case["request"];
                match tk.render_chat(request) {
                    Ok((rendered, _))
                        if rendered != case["rendered"].as_str().unwrap_or_default() =>
                    {
                        failures.push(format!(
                            "{name}: rendered\n  ours:   {rendered:?}\n  vllm's: {:?}",
                            case["rendered"].as_str().unwrap_or_default()
                        ));
                        continue;
                    }
                    Err(e) => {
                        failures.push(format!("{name}: {e}"));
                        continue;
                    }
                    Ok(_) => {}
                }
                // Twice: cold, then through the segment and message caches; from the value and from
                // the body's bytes (the gateway's path).
                let bytes = serde_json::to_vec(request).expect("serializes");
                for round in 0..2 {
                    if tk.encode_chat(request).expect("encodes") != expected {
                        failures.push(format!("{name}: chat ids differ (round {round})"));
                    }
                    if tk.encode_chat_bytes(&bytes).expect("encodes") != expected {
                        failures.push(format!(
                            "{name}: chat ids from bytes differ (round {round})"
                        ));
                    }
                }
            }
            other => panic!("unknown case kind {other:?}"),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// Random chat requests rendered by vLLM's own code (fixtures/golden/tokenization-random.json):
/// the same prompt text and ids, and a refusal wherever vLLM refused.
#[test]
fn random_chat_requests_match_vllm() {
    let path = repo_root().join("fixtures/golden/tokenization-random.json");
    let random: Value = serde_json::from_slice(&std::fs::read(&path).expect("fixture present"))
        .expect("fixture is JSON");
    let tokenizers = tokenizers(&fixture());
    let cases = random["cases"].as_array().expect("cases");
    let mut failures = Vec::new();
    for case in cases {
        let name = case["name"].as_str().unwrap_or("?");
        let tk = &tokenizers[case["tokenizer"].as_str().expect("tokenizer")];
        let request = &case["request"];
        let from_bytes = tk.encode_chat_bytes(&serde_json::to_vec(request).expect("serializes"));
        match (&from_bytes, case.get("rejected")) {
            (Ok(got), None) if *got != ids(case) => {
                failures.push(format!("{name}: ids from bytes differ"))
            }
            (Ok(_), Some(_)) => {
                failures.push(format!("{name}: vLLM refused it, the bytes path did not"))
            }
            (Err(e), None) => failures.push(format!("{name}: the bytes path refused it: {e}")),
            _ => {}
        }
        match (tk.render_chat(request), case.get("rejected")) {
            (Err(_), Some(_)) => {}
            (Ok((rendered, _)), None) => {
                if rendered != case["rendered"].as_str().unwrap_or_default() {
                    failures.push(format!("{name}: rendered differs"));
                } else if tk.encode_chat(request).expect("encodes") != ids(case) {
                    failures.push(format!("{name}: ids differ"));
                }
            }
            (Ok(_), Some(reason)) => {
                failures.push(format!("{name}: vLLM refused it ({reason}), we did not"))
            }
            (Err(e), None) => failures.push(format!("{name}: we refused it: {e}")),
        }
    }
    assert!(cases.len() >= 400, "{} cases", cases.len());
    assert!(
        failures.is_empty(),
        "{} of {} differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
