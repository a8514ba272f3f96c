//! vLLM KV event payloads: golden frames from vLLM's own publisher (fixtures/golden/kv_events,
//! made by scripts/golden/make-kv-events.sh), plus a fuzz-style robustness test and a quick
//! throughput probe (`cargo test --release -p kvroute-core --test events_golden -- --ignored
//! --nocapture`).

use std::path::PathBuf;
use std::time::Instant;

use kvroute_core::events::msgpack::Value as Mp;
use kvroute_core::events::{
    decode_batch, encode_batch, seq_from_frame, BlockHash, BlockHashes, BlockRemoved, BlockStored,
    KvEvent, KvEventBatch, Medium, WireFormat, BLOCK_REMOVED_FIELDS, BLOCK_REMOVED_REQUIRED,
    BLOCK_STORED_FIELDS, BLOCK_STORED_REQUIRED, REPLAY_END_SEQ,
};
use serde_json::{json, Value};

mod common;
use common::Rng;

fn fixtures() -> Vec<(String, Value)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/golden/kv_events");
    let mut out: Vec<(String, Value)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| {
            let p = e.ok()?.path();
            (p.extension()? == "json").then_some(p)
        })
        .map(|p| {
            let v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
            (v["vllm_version"].as_str().unwrap().to_owned(), v)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(
        out.len() >= 2,
        "expected golden fixtures in {}",
        dir.display()
    );
    out
}

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2));
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn neutral_hash(h: &BlockHash) -> Value {
    match h {
        BlockHash::Int(v) => json!(v.to_string()),
        BlockHash::NegInt(v) => json!(v.to_string()),
        BlockHash::Bytes(b) => json!(format!("0x{}", hex(b.as_slice()))),
    }
}

fn neutral_value(v: &Mp) -> Value {
    match v {
        Mp::Nil => Value::Null,
        Mp::Bool(b) => json!({ "bool": b }),
        Mp::UInt(x) => json!({ "int": x.to_string() }),
        Mp::Int(x) => json!({ "int": x.to_string() }),
        Mp::F32(x) => json!({ "float": *x as f64 }),
        Mp::F64(x) => json!({ "float": x }),
        Mp::Str(s) => json!({ "str": s }),
        Mp::Bin(b) => json!({ "bin": hex(b) }),
        Mp::Array(a) => json!({ "array": a.iter().map(neutral_value).collect::<Vec<_>>() }),
        other => panic!("unexpected value in golden data: {other:?}"),
    }
}

fn opt_json<T: Into<Value> + Clone>(v: &Option<T>) -> Value {
    v.clone().map_or(Value::Null, Into::into)
}

fn hashes_json(h: &BlockHashes) -> (Value, Value) {
    (
        Value::Array(h.iter().map(|x| neutral_hash(&x)).collect()),
        Value::Array(h.keys().iter().map(|k| json!(k.to_string())).collect()),
    )
}

/// The neutral form of a decoded event restricted to the fields `fields` (the release's).
fn neutral_event(ev: &KvEvent, fields: &[String]) -> Value {
    let mut m = serde_json::Map::new();
    m.insert("type".into(), json!(ev.type_name()));
    let medium = |x: &Option<Medium>| opt_json(&x.as_ref().map(|m| m.as_str().to_owned()));
    for f in fields {
        let v = match (ev, f.as_str()) {
            (KvEvent::BlockStored(e), name) => match name {
                "block_hashes" => {
                    let (h, k) = hashes_json(&e.block_hashes);
                    m.insert("block_keys_u64".into(), k);
                    h
                }
                "parent_block_hash" => {
                    m.insert(
                        "parent_key_u64".into(),
                        opt_json(&e.parent_block_hash.as_ref().map(|h| h.to_u64().to_string())),
                    );
                    e.parent_block_hash
                        .as_ref()
                        .map_or(Value::Null, neutral_hash)
                }
                "token_ids" => json!(e.token_ids),
                "block_size" => json!(e.block_size),
                "lora_id" => opt_json(&e.lora_id),
                "medium" => medium(&e.medium),
                "lora_name" => opt_json(&e.lora_name),
                "extra_keys" => match &e.extra_keys {
                    None => Value::Null,
                    Some(k) => Value::Array(
                        k.iter()
                            .map(|x| match x {
                                None => Value::Null,
                                Some(items) => json!({
                                    "array": items.iter().map(neutral_value).collect::<Vec<_>>()
                                }),
                            })
                            .collect(),
                    ),
                },
                "group_idx" => opt_json(&e.group_idx),
                "kv_cache_spec_kind" => opt_json(&e.kv_cache_spec_kind),
                "kv_cache_spec_sliding_window" => opt_json(&e.kv_cache_spec_sliding_window),
                "locality" => opt_json(&e.locality),
                "ownership" => opt_json(&e.ownership),
                "session_id" => opt_json(&e.session_id),
                "lookahead_token_ids" => opt_json(&e.lookahead_token_ids),
                other => panic!("BlockStored field {other} unknown to the decoder"),
            },
            (KvEvent::BlockRemoved(e), name) => match name {
                "block_hashes" => {
                    let (h, k) = hashes_json(&e.block_hashes);
                    m.insert("block_keys_u64".into(), k);
                    h
                }
                "medium" => medium(&e.medium),
                "group_idx" => opt_json(&e.group_idx),
                "locality" => opt_json(&e.locality),
                "ownership" => opt_json(&e.ownership),
                other => panic!("BlockRemoved field {other} unknown to the decoder"),
            },
            (KvEvent::AllBlocksCleared, other) => panic!("AllBlocksCleared has field {other}?"),
        };
        m.insert(f.clone(), v);
    }
    Value::Object(m)
}

/// Fields a release lacks must decode as None/empty.
fn assert_absent_fields_unset(ev: &KvEvent, fields: &[String], ctx: &str) {
    let has = |f: &str| fields.iter().any(|x| x == f);
    match ev {
        KvEvent::BlockStored(e) => {
            let unset = [
                ("medium", e.medium.is_none()),
                ("lora_name", e.lora_name.is_none()),
                ("extra_keys", e.extra_keys.is_none()),
                ("group_idx", e.group_idx.is_none()),
                ("kv_cache_spec_kind", e.kv_cache_spec_kind.is_none()),
                (
                    "kv_cache_spec_sliding_window",
                    e.kv_cache_spec_sliding_window.is_none(),
                ),
                ("locality", e.locality.is_none()),
                ("ownership", e.ownership.is_none()),
                ("session_id", e.session_id.is_none()),
                ("lookahead_token_ids", e.lookahead_token_ids.is_none()),
            ];
            for (f, ok) in unset {
                assert!(
                    has(f) || ok,
                    "{ctx}: {f} set but the release has no such field"
                );
            }
        }
        KvEvent::BlockRemoved(e) => {
            for (f, ok) in [
                ("medium", e.medium.is_none()),
                ("group_idx", e.group_idx.is_none()),
                ("locality", e.locality.is_none()),
                ("ownership", e.ownership.is_none()),
            ] {
                assert!(
                    has(f) || ok,
                    "{ctx}: {f} set but the release has no such field"
                );
            }
        }
        KvEvent::AllBlocksCleared => {}
    }
}

fn field_names(layout: &Value) -> Vec<String> {
    layout["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn struct_layouts_match_wire_format_tables() {
    for (version, fx) in fixtures() {
        let format = WireFormat::for_vllm_version(&version).unwrap();
        assert_eq!(format.first_release(), version, "fixtures are one per form");
        let s = &fx["structs"];
        assert_eq!(s["KVEventBatch"]["array_like"], json!(true), "{version}");
        let batch_fields = field_names(&s["KVEventBatch"]);
        assert_eq!(
            batch_fields.len(),
            if format.has_dp_rank() { 3 } else { 2 },
            "{version}"
        );
        for (name, table, required, count) in [
            (
                "BlockStored",
                &BLOCK_STORED_FIELDS[..],
                BLOCK_STORED_REQUIRED,
                format.stored_field_count(),
            ),
            (
                "BlockRemoved",
                &BLOCK_REMOVED_FIELDS[..],
                BLOCK_REMOVED_REQUIRED,
                format.removed_field_count(),
            ),
        ] {
            let l = &s[name];
            assert_eq!(l["tag"], json!(name), "{version}");
            assert_eq!(l["tag_field"], json!("type"), "{version}");
            assert_eq!(l["omit_defaults"], json!(true), "{version}");
            assert_eq!(
                l["array_like"],
                json!(!format.events_as_maps()),
                "{version} {name}"
            );
            let names = field_names(l);
            assert_eq!(
                names,
                table[..count].to_vec(),
                "{version} {name} field order"
            );
            for (i, f) in l["fields"].as_array().unwrap().iter().enumerate() {
                // Formats before 0.14 have fewer required fields than the table; all present
                // fields below `required` must be required and the rest defaulted.
                assert_eq!(
                    f["required"],
                    json!(i < required),
                    "{version} {name}.{}",
                    names[i]
                );
            }
        }
        assert_eq!(s["AllBlocksCleared"]["fields"], json!([]), "{version}");
    }
}

#[test]
fn golden_payloads_decode_to_the_expected_events() {
    let mut n = 0;
    for (version, fx) in fixtures() {
        let stored_fields = field_names(&fx["structs"]["BlockStored"]);
        let removed_fields = field_names(&fx["structs"]["BlockRemoved"]);
        for case in fx["cases"].as_array().unwrap() {
            let name = format!("{version}/{}", case["name"].as_str().unwrap());
            let payload = unhex(case["payload_hex"].as_str().unwrap());
            let batch = decode_batch(&payload).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(batch.skipped.is_empty(), "{name}: {:?}", batch.skipped);
            let exp = &case["expected"];
            let bits = u64::from_str_radix(&exp["ts_bits"].as_str().unwrap()[2..], 16).unwrap();
            assert_eq!(batch.ts.to_bits(), bits, "{name}: ts");
            assert_eq!(
                batch.data_parallel_rank,
                exp["data_parallel_rank"].as_i64(),
                "{name}"
            );
            let exp_events = exp["events"].as_array().unwrap();
            assert_eq!(batch.events.len(), exp_events.len(), "{name}");
            for (ev, want) in batch.events.iter().zip(exp_events) {
                let fields = match ev {
                    KvEvent::BlockStored(_) => &stored_fields,
                    KvEvent::BlockRemoved(_) => &removed_fields,
                    KvEvent::AllBlocksCleared => &Vec::new(),
                };
                assert_eq!(&neutral_event(ev, fields), want, "{name}");
                assert_absent_fields_unset(ev, fields, &name);
            }
            n += 1;
        }
    }
    assert!(n >= 100, "only {n} golden cases");
}

#[test]
fn golden_payloads_reencode_byte_for_byte() {
    for (version, fx) in fixtures() {
        let format = WireFormat::for_vllm_version(&version).unwrap();
        for case in fx["cases"].as_array().unwrap() {
            let name = format!("{version}/{}", case["name"].as_str().unwrap());
            let payload = unhex(case["payload_hex"].as_str().unwrap());
            let batch = decode_batch(&payload).unwrap();
            let again = encode_batch(&batch, format);
            assert_eq!(hex(&again), hex(&payload), "{name}: encode(decode(x)) != x");
        }
    }
}

#[test]
fn golden_frames_and_replay() {
    for (version, fx) in fixtures() {
        let topic = fx["topic"].as_str().unwrap();
        let mut last_seq: Option<u64> = None;
        for case in fx["cases"].as_array().unwrap() {
            if case["via"] != "publisher" {
                continue;
            }
            let name = format!("{version}/{}", case["name"].as_str().unwrap());
            assert_eq!(
                unhex(case["topic_hex"].as_str().unwrap()),
                topic.as_bytes(),
                "{name}"
            );
            let seq_frame = unhex(case["seq_hex"].as_str().unwrap());
            assert_eq!(seq_frame.len(), 8, "{name}: seq is 8 bytes");
            let seq = seq_from_frame(&seq_frame).unwrap();
            assert_eq!(seq, case["seq"].as_u64().unwrap(), "{name}");
            // DP-0 publisher counts 0,1,2,...; the DP-3 publisher is a separate counter.
            if case["expected"]["data_parallel_rank"] == json!(0) || version == "0.9.0" {
                assert_eq!(
                    seq,
                    last_seq.map_or(0, |s| s + 1),
                    "{name}: seq increments by 1"
                );
                last_seq = Some(seq);
            }
        }
        let replay = &fx["replay"];
        let start = replay["start_seq"].as_u64().unwrap();
        let frames = replay["reply_frames_at_router_hex"].as_array().unwrap();
        let with_topic = WireFormat::for_vllm_version(&version).unwrap() >= WireFormat::V0_26;
        let (last, data) = frames.split_last().unwrap();
        assert_eq!(
            data.len() as u64,
            replay["published_count"].as_u64().unwrap() - start
        );
        for (i, f) in data.iter().enumerate() {
            let f: Vec<Vec<u8>> = f
                .as_array()
                .unwrap()
                .iter()
                .map(|x| unhex(x.as_str().unwrap()))
                .collect();
            assert!(f[1].is_empty(), "{version}: empty delimiter");
            let rest = &f[2..];
            let (seq, payload) = if with_topic {
                assert_eq!(rest.len(), 3, "{version}: [topic, seq, payload]");
                assert_eq!(rest[0], topic.as_bytes());
                (&rest[1], &rest[2])
            } else {
                assert_eq!(rest.len(), 2, "{version}: [seq, payload]");
                (&rest[0], &rest[1])
            };
            assert_eq!(seq_from_frame(seq), Some(start + i as u64));
            decode_batch(payload).unwrap();
        }
        let last: Vec<Vec<u8>> = last
            .as_array()
            .unwrap()
            .iter()
            .map(|x| unhex(x.as_str().unwrap()))
            .collect();
        let marker = if with_topic {
            assert!(
                last[2].is_empty(),
                "{version}: end marker topic frame is empty"
            );
            &last[3..]
        } else {
            &last[2..]
        };
        assert_eq!(marker[0], REPLAY_END_SEQ, "{version}: end marker seq");
        assert!(marker[1].is_empty(), "{version}: end marker payload");
        assert_eq!(replay["bad_request_reply_count"], json!(0));
    }
}

// ---------------------------------------------------------------------------------------------
// Fuzz-style robustness
// ---------------------------------------------------------------------------------------------

const INTERESTING: [u8; 24] = [
    0x00, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0, 0xc1, 0xc4, 0xc6, 0xca, 0xcb, 0xcf, 0xd3,
    0xd9, 0xdb, 0xdc, 0xdd, 0xde, 0xdf, 0xe0, 0xff,
];

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>], input: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(4) {
        let len = input.len();
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                input[i] = rng.next() as u8;
            }
            2 if len > 0 => {
                let i = rng.below(len);
                input[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            3 => input.truncate(rng.below(len + 1)),
            4 => {
                let i = rng.below(len + 1);
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                input.splice(i..i, bytes);
            }
            5 if len > 1 => {
                let a = rng.below(len);
                let b = a + rng.below(len - a);
                input.drain(a..b);
            }
            6 if len > 1 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(64)).min(len);
                let chunk = input[a..b].to_vec();
                let at = rng.below(len + 1);
                input.splice(at..at, chunk);
            }
            7 => {
                let other = &seeds[rng.below(seeds.len())];
                let cut = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                input.truncate(cut);
                input.extend_from_slice(&other[from..]);
            }
            _ if len >= 4 => {
                // a huge length right after a container/str/bin marker
                let i = rng.below(len - 3);
                input[i] = [0xdd, 0xdf, 0xdb, 0xc6, 0xdc, 0xde][rng.below(6)];
                input[i + 1] = 0xff;
                input[i + 2] = 0xff;
            }
            _ => input.push(rng.next() as u8),
        }
    }
}

#[test]
fn fuzz_mutated_frames_never_panic() {
    let seeds: Vec<Vec<u8>> = fixtures()
        .iter()
        .flat_map(|(_, fx)| {
            fx["cases"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| unhex(c["payload_hex"].as_str().unwrap()))
                .collect::<Vec<_>>()
        })
        .collect();
    let mut rng = Rng(0x5eed_cafe_f00d_0001);
    let iterations = 100_000;
    let (mut ok, mut err, mut skipped) = (0usize, 0usize, 0usize);
    for it in 0..iterations {
        let mut input = if it % 10 == 9 {
            // pure noise
            (0..rng.below(256)).map(|_| rng.next() as u8).collect()
        } else {
            seeds[rng.below(seeds.len())].clone()
        };
        mutate(&mut rng, &seeds, &mut input);
        match decode_batch(&input) {
            Ok(batch) => {
                ok += 1;
                skipped += batch.skipped.len();
                // Whatever decoded must re-encode and decode again to the same bytes.
                for f in [
                    WireFormat::CURRENT,
                    WireFormat::LAST_ARRAY_LIKE,
                    WireFormat::LEGACY,
                ] {
                    let a = encode_batch(&batch, f);
                    let back = decode_batch(&a).expect("re-encoded batch decodes");
                    assert!(back.skipped.is_empty());
                    assert_eq!(encode_batch(&back, f), a);
                }
            }
            Err(e) => {
                err += 1;
                assert!(e.offset <= input.len());
                assert!(!e.reason.is_empty());
            }
        }
    }
    assert_eq!(ok + err, iterations);
    assert!(ok > 0 && err > 0, "ok={ok} err={err}");
    eprintln!("fuzz: {ok} decoded ({skipped} events skipped), {err} rejected");
}

#[test]
fn truncations_of_every_golden_payload_fail_cleanly() {
    for (version, fx) in fixtures() {
        for case in fx["cases"].as_array().unwrap() {
            let payload = unhex(case["payload_hex"].as_str().unwrap());
            for cut in 0..payload.len() {
                let r = decode_batch(&payload[..cut]);
                assert!(
                    r.is_err(),
                    "{version}/{}: prefix {cut} decoded",
                    case["name"]
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Throughput probe
// ---------------------------------------------------------------------------------------------

fn bench_batch(kind: &str, n: usize) -> KvEventBatch {
    let events = (0..n as u64)
        .map(|i| {
            let h = 0x9e37_79b9_7f4a_7c15u64.wrapping_mul(i + 1);
            if kind == "removed" {
                KvEvent::BlockRemoved(BlockRemoved {
                    block_hashes: BlockHashes::from_keys(vec![h]),
                    medium: Some(Medium::Gpu),
                    group_idx: Some(0),
                    ..Default::default()
                })
            } else {
                KvEvent::BlockStored(BlockStored {
                    block_hashes: BlockHashes::from_keys(vec![h]),
                    parent_block_hash: Some(BlockHash::Int(h ^ 0xffff)),
                    token_ids: (0..16).map(|t| 1000 + t * 997 + i as u32).collect(),
                    block_size: 16,
                    medium: Some(Medium::Gpu),
                    group_idx: Some(0),
                    kv_cache_spec_kind: Some("full_attention".into()),
                    ..Default::default()
                })
            }
        })
        .collect();
    KvEventBatch {
        ts: 1.0,
        events,
        data_parallel_rank: Some(0),
        skipped: vec![],
    }
}

#[test]
#[ignore = "timing probe; run with --release -- --ignored --nocapture"]
fn decode_throughput() {
    for kind in ["stored", "removed"] {
        for format in [WireFormat::LAST_ARRAY_LIKE, WireFormat::CURRENT] {
            let payload = encode_batch(&bench_batch(kind, 256), format);
            let rounds = 20_000;
            let start = Instant::now();
            let mut keys = 0u64;
            for _ in 0..rounds {
                let b = decode_batch(std::hint::black_box(&payload)).unwrap();
                keys = keys.wrapping_add(b.events.iter().map(|e| e.block_keys()[0]).sum::<u64>());
            }
            let secs = start.elapsed().as_secs_f64();
            let events = (rounds * 256) as f64;
            eprintln!(
                "{kind:>7} {format:?}: {:.1} M events/s, {:.0} MB/s ({} B/batch) [{keys:x}]",
                events / secs / 1e6,
                (payload.len() * rounds) as f64 / secs / 1e6,
                payload.len()
            );
        }
    }
}
