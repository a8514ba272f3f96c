//! The virtual replay's engines alone, without Node and without the router: the Mooncake
//! conversation trace on 8 simulated engines (`SimFleet`) with the settings of
//! `bench:vs-dynamo` (16-token blocks, 26,000 blocks, `max_num_seqs` 1024, 8192 batched tokens,
//! Dynamo's polynomial timing, KV events 5 ms late). Requests go to the engine their second hash id
//! names (the first is mostly a shared system prompt) (a stand-in for routing that keeps prefixes together); KV event batches are counted, not
//! applied. Prompt keys are computed before the clock starts, as the router hands them over in a
//! replay. Prints the engines' time per request, for profiling the block pool and the step.
//! Run: `cargo run --release -p kvroute-core --example bench_sim_engine [-- TRACE [ROUNDS]]`.

use std::time::Instant;

use kvroute_core::block_keys::RouterKeyer;
use kvroute_core::extra_keys::ExtraKeys;
use kvroute_core::mooncake::expand_hash_ids;
use kvroute_core::sim_engine::engine::NewRequest;
use kvroute_core::sim_engine::{Notice, SimConfig, SimEngine, SimFleet, StepTiming, Stop};

const BLOCK: u32 = 16;
const ENGINES: u32 = 8;

struct Req {
    t: f64,
    input: usize,
    output: u32,
    ids: Vec<f64>,
    keys: Vec<u64>,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let path = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "../shared/traces/mooncake_conversation.jsonl".into());
    let rounds: usize = args.get(2).map_or(3, |s| s.parse().expect("rounds"));
    let text = std::fs::read_to_string(&path).expect("the trace");
    let keyer = RouterKeyer::new(BLOCK as usize).expect("keyer");
    let mut tokens = Vec::new();
    let reqs: Vec<Req> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json");
            let input = v["input_length"].as_u64().expect("input_length") as usize;
            let ids: Vec<f64> = v["hash_ids"]
                .as_array()
                .expect("hash_ids")
                .iter()
                .map(|h| h.as_f64().expect("id"))
                .collect();
            tokens.resize(input, 0);
            expand_hash_ids(&ids, &mut tokens);
            let mut keys = Vec::new();
            keyer.keys(&tokens, &ExtraKeys::default(), &mut keys);
            Req {
                t: v["timestamp"].as_f64().expect("timestamp"),
                input,
                output: v["output_length"].as_u64().expect("output_length") as u32,
                ids,
                keys,
            }
        })
        .collect();
    let cfg = SimConfig {
        block_size: BLOCK,
        num_gpu_blocks: 26_000,
        max_model_len: 131_072,
        max_num_seqs: 1024,
        max_num_batched_tokens: 8192,
        eos_after_tokens: 1024,
        timing: StepTiming::Polynomial {
            prefill: [16.50142, 0.01518344, 4.209989e-7],
            decode: [5.74, 54.01, -25.74],
            decode_floor_ms: 1.0,
        },
    };
    for _ in 0..rounds {
        let engines = (0..ENGINES)
            .map(|_| SimEngine::new(cfg).expect("engine"))
            .collect();
        let mut fleet = SimFleet::new(engines, BLOCK, 5.0);
        let (mut batches, mut keys_out, mut finished) = (0u64, 0u64, 0usize);
        let t0 = Instant::now();
        let mut next = 0;
        loop {
            let until = reqs.get(next).map_or(f64::INFINITY, |r| r.t);
            let stop = fleet.run(until, &mut |n| {
                if let Notice::Batch { keys, .. } = n {
                    batches += 1;
                    keys_out += keys.len() as u64;
                }
            });
            match stop {
                Stop::Until if next < reqs.len() => {
                    let r = &reqs[next];
                    tokens.resize(r.input, 0);
                    expand_hash_ids(&r.ids, &mut tokens);
                    let w = (*r.ids.get(1).unwrap_or(&r.ids[0]) as u64 % u64::from(ENGINES)) as u32;
                    fleet
                        .engine_mut(w as usize)
                        .expect("engine")
                        .add(NewRequest {
                            handle: next as u32,
                            prompt: &tokens,
                            prompt_keys: Some(&r.keys),
                            max_tokens: r.output.max(1),
                            min_tokens: 0,
                            ignore_eos: true,
                            seed: 0,
                            stop_token_ids: &[],
                        });
                    fleet.kick(w, r.t);
                    next += 1;
                }
                Stop::Until => break,
                Stop::Outputs => {
                    finished += fleet.outputs.iter().filter(|(_, o)| o.finished).count();
                }
                Stop::Event(_) => {}
            }
        }
        let s = t0.elapsed().as_secs_f64();
        println!(
            "{} requests ({} finished), {} KV batches, {} keys: {:.3} s, {:.1} us/request",
            reqs.len(),
            finished,
            batches,
            keys_out,
            s,
            s * 1e6 / reqs.len() as f64
        );
    }
}
