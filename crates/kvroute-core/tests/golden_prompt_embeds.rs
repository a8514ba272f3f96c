//! Prompt embeddings against golden vectors made by vLLM's own code and torch
//! (fixtures/golden/prompt_embeds.json, from scripts/golden/make-prompt-embeds.sh): the
//! `torch.save` payloads read, cast and digested per block as vLLM does, the block hashes of such
//! requests in every algorithm (with and without a cache salt), vLLM's error texts for malformed
//! payloads, and the router keys of a request equal those of the KV events vLLM publishes for it.

use kvroute_core::block_keys::RouterKeyer;
use kvroute_core::engine_hash::{EngineHasher, EngineHasherConfig, HashAlgorithm};
use kvroute_core::extra_keys::{BlockExtraKeys, ExtraKeys};
use kvroute_core::prompt_embeds::{load, EmbedsDtype, EmbedsLimits};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn fixture() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/golden/prompt_embeds.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn b64(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("bad base64"),
        }
    };
    let s: Vec<u8> = s.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::new();
    for chunk in s.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= val(c) << (18 - 6 * i);
        }
        for i in 0..chunk.len() - 1 {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

const LIMITS: EmbedsLimits = EmbedsLimits {
    max_bytes: 2 << 30,
    hidden_size: Some(64),
};

fn algorithm(name: &str) -> HashAlgorithm {
    name.parse().unwrap()
}

#[test]
fn payloads_load_and_digest_as_vllm() {
    let doc = fixture();
    let cases = doc["cases"].as_array().unwrap();
    assert!(cases.len() >= 15);
    for c in cases {
        let name = c["name"].as_str().unwrap();
        let model = EmbedsDtype::parse(c["model_dtype"].as_str().unwrap()).unwrap();
        let e = load(&b64(c["prompt_embeds"].as_str().unwrap()), model, LIMITS)
            .unwrap_or_else(|err| panic!("{name}: {err}"));
        let shape = [e.rows as u64, e.hidden as u64];
        let want: Vec<u64> = c["loaded_shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(shape.to_vec(), want, "{name}");
        assert_eq!(e.sent_dtype, c["sent_dtype"].as_str().unwrap(), "{name}");
        assert_eq!(
            hex(&Sha256::digest(&e.data)),
            c["loaded_sha256"].as_str().unwrap(),
            "{name}: loaded bytes"
        );
        let bs = c["block_size"].as_u64().unwrap() as usize;
        let digests: Vec<String> = e.block_digests(bs).iter().map(|d| hex(d)).collect();
        let want: Vec<String> = c["block_digests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
        // Full blocks, then the partial one when the rows do not fill the last block.
        assert_eq!(digests.len(), e.rows.div_ceil(bs), "{name}");
        assert_eq!(digests[..want.len()], want[..], "{name}: block digests");
    }
}

fn extra_of(c: &Value, salt: Option<&str>) -> (Vec<u32>, ExtraKeys) {
    let model = EmbedsDtype::parse(c["model_dtype"].as_str().unwrap()).unwrap();
    let e = load(&b64(c["prompt_embeds"].as_str().unwrap()), model, LIMITS).unwrap();
    let bs = c["block_size"].as_u64().unwrap() as usize;
    let extra = ExtraKeys {
        prompt_embeds: e.block_digests(bs),
        cache_salt: salt.map(str::to_owned),
        ..ExtraKeys::default()
    };
    (vec![0; e.rows], extra)
}

#[test]
fn block_hashes_match_vllm_in_every_algorithm() {
    let doc = fixture();
    let seed = doc["seed"].as_str().unwrap();
    let mut checked = 0;
    for c in doc["cases"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        for (key, want) in c["hashes"].as_object().unwrap() {
            let (algo, salt) = match key.split_once('+') {
                Some((a, _)) => (a, c["cache_salt"].as_str()),
                None => (key.as_str(), None),
            };
            let (tokens, extra) = extra_of(c, salt);
            let h = EngineHasher::new(EngineHasherConfig {
                block_size: c["block_size"].as_u64().unwrap() as usize,
                algorithm: algorithm(algo),
                seed: Some(seed.to_owned()),
            })
            .unwrap();
            let mut got = vec![];
            h.hashes(&tokens, &extra, &mut got);
            let want: Vec<u64> = want
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().parse().unwrap())
                .collect();
            assert_eq!(got, want, "{name} {key}");
            checked += 1;
        }
    }
    assert!(checked >= 60);
}

#[test]
fn vllm_error_texts() {
    let doc = fixture();
    for e in doc["errors"].as_array().unwrap() {
        let name = e["name"].as_str().unwrap();
        if matches!(name, "not-enabled" | "bad-base64") {
            continue; // the gateway's checks, before a payload is read
        }
        let model = EmbedsDtype::parse(e["model_dtype"].as_str().unwrap()).unwrap();
        let err = load(&b64(e["prompt_embeds"].as_str().unwrap()), model, LIMITS).unwrap_err();
        let want = e["message"].as_str().unwrap();
        const UNREADABLE: &str = "`prompt_embeds` could not be deserialized as a torch tensor: ";
        if want.starts_with(UNREADABLE) {
            // torch's own reason is not reproduced; the prefix and a reason are.
            assert!(
                err.starts_with(UNREADABLE) && err.len() > UNREADABLE.len(),
                "{name}: {err}"
            );
        } else {
            assert_eq!(err, want, "{name}");
        }
    }
}

#[test]
fn router_keys_of_requests_equal_those_of_vllm_events() {
    // The event carries the block's tokens (all 0) and, per block, the digest as its last extra key.
    let doc = fixture();
    for c in doc["cases"].as_array().unwrap() {
        let salt = c["cache_salt"].as_str();
        let (tokens, extra) = extra_of(c, salt);
        let bs = c["block_size"].as_u64().unwrap() as usize;
        let keyer = RouterKeyer::new(bs).unwrap();
        let mut from_request = vec![];
        keyer.keys(&tokens, &extra, &mut from_request);
        let events = c[if salt.is_some() {
            "event_extra_keys+salt"
        } else {
            "event_extra_keys"
        }]
        .as_array()
        .unwrap();
        let mut prev = None;
        for (i, ev) in events.iter().enumerate() {
            let items = ev.as_array().unwrap();
            let digest: [u8; 32] = b16(items.last().unwrap().as_str().unwrap())
                .try_into()
                .unwrap();
            let s = (items.len() == 2).then(|| items[0].as_str().unwrap());
            let k = keyer.block_key(
                prev,
                &tokens[i * bs..(i + 1) * bs],
                &BlockExtraKeys {
                    cache_salt: s,
                    prompt_embeds: Some(&digest),
                    ..BlockExtraKeys::NONE
                },
            );
            assert_eq!(k, from_request[i], "{} block {i}", c["name"]);
            prev = Some(k);
        }
    }
}

fn b16(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn event_applier_indexes_prompt_embeds_blocks_under_request_keys() {
    use kvroute_core::event_applier::{EventApplier, EventApplierConfig};
    use kvroute_core::events::msgpack::Value as Mp;
    use kvroute_core::events::{
        encode_batch, BlockHashes, BlockStored, KvEvent, KvEventBatch, Medium, WireFormat,
    };
    use kvroute_core::indexer::Matches;

    let doc = fixture();
    let c = doc["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "shared-a")
        .unwrap();
    let salt = c["cache_salt"].as_str();
    let (tokens, extra) = extra_of(c, salt);
    let bs = c["block_size"].as_u64().unwrap() as usize;
    let mut q = vec![];
    RouterKeyer::new(bs).unwrap().keys(&tokens, &extra, &mut q);
    let events = c["event_extra_keys+salt"].as_array().unwrap();
    let extra_keys = events
        .iter()
        .map(|ev| {
            let items = ev.as_array().unwrap();
            Some(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        let s = v.as_str().unwrap();
                        if i + 1 == items.len() {
                            Mp::Bin(b16(s))
                        } else {
                            Mp::Str(s.to_owned())
                        }
                    })
                    .collect(),
            )
        })
        .collect();
    let mut ap = EventApplier::new(EventApplierConfig::new(bs as u32)).unwrap();
    let payload = encode_batch(
        &KvEventBatch {
            ts: 0.0,
            events: vec![KvEvent::BlockStored(BlockStored {
                block_hashes: BlockHashes::from_keys((1..=events.len() as u64).collect()),
                token_ids: tokens[..events.len() * bs].to_vec(),
                block_size: bs as u32,
                medium: Some(Medium::Gpu),
                extra_keys: Some(extra_keys),
                ..Default::default()
            })],
            data_parallel_rank: None,
            skipped: vec![],
        },
        WireFormat::CURRENT,
    );
    let out = ap.apply_payload("w", &payload).unwrap();
    assert_eq!(out.skipped, 0, "{:?}", ap.stats().skipped_reasons);
    let mut m = Matches::new();
    ap.indexer().find_matches(&q, &mut m);
    assert_eq!(m.entries()[0].blocks as usize, events.len());
}
