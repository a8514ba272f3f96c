//! `NativeFront`: the gateway's native front (crates/kvroute-front) behind N-API. The JS gateway
//! starts it, tells it the models it may route itself (their `KvRouterCore` and `NativeTokenizer`
//! objects are shared, not copied), the suspects, admission's counts and queue, and drains what
//! it did into its metrics.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvroute_core::scheduler::Mode;
use kvroute_front::fleet::{Fleet, Model, Origin, Target};
use kvroute_front::stats::Stats;
use kvroute_front::{Front, FrontConfig};
use napi::bindgen_prelude::Uint32Array;
use napi_derive::napi;

use crate::convert::invalid_config;
use crate::router::KvRouterCore;
use crate::tokenizer::NativeTokenizer;

#[napi(object)]
pub struct NativeFrontOptions {
    pub host: String,
    pub port: u32,
    /// The JS gateway's private Unix socket (the hand-off).
    pub js_socket: String,
    /// False: every request goes to JS (API keys on).
    pub fast_lane: bool,
    pub max_body_bytes: f64,
    pub client_timeout_ms: f64,
    pub upstream_timeout_ms: f64,
    pub upstream_idle_timeout_ms: f64,
    pub migration_limit: u32,
    pub connections_per_worker: u32,
    pub failure_cooldown_ms: f64,
    pub max_active_per_worker: u32,
    pub tokenization_check_every: u32,
    /// `performance.now()` of the JS router's clock, now.
    pub clock_ms: f64,
}

#[napi(object)]
pub struct NativeFrontTarget {
    /// The model's `KvRouterCore` target id.
    pub tid: u32,
    pub worker_id: String,
    pub dp_rank: u32,
    pub url: String,
    /// Send `X-data-parallel-rank` (the worker process hosts several ranks).
    pub rank_header: bool,
    pub serving: bool,
}

#[napi(object)]
pub struct FrontRequestCount {
    #[napi(ts_type = "'completions' | 'chat'")]
    pub route: String,
    pub status: u32,
    pub count: f64,
}

#[napi(object)]
pub struct FrontModelCounts {
    pub model: String,
    pub decisions: f64,
    pub blind: f64,
    pub prefill_tokens: f64,
    pub saved_tokens: f64,
    pub avoidable_tokens: f64,
    /// Pairs: overlap blocks, decisions with it.
    pub overlaps: Vec<f64>,
    pub cancelled_prefill: f64,
    pub cancelled_decode: f64,
    /// Pairs: seconds, streams with that time to first token (to 0.1%).
    pub ttft: Vec<f64>,
    /// Pairs: seconds per token between token events, events with it.
    pub itl: Vec<f64>,
}

#[napi(object)]
pub struct FrontWorkerCount {
    pub model: String,
    pub worker: String,
    /// Upstream errors: the failure kind.
    pub kind: String,
    pub count: f64,
}

#[napi(object)]
pub struct FrontMismatch {
    pub model: String,
    pub worker: String,
    pub ours: Uint32Array,
    pub engine: Uint32Array,
}

#[napi(object)]
pub struct FrontDrained {
    pub requests: Vec<FrontRequestCount>,
    pub models: Vec<FrontModelCounts>,
    pub upstream_errors: Vec<FrontWorkerCount>,
    /// Parity checks whose ids were equal (kind empty).
    pub checks_equal: Vec<FrontWorkerCount>,
    pub mismatches: Vec<FrontMismatch>,
    /// Mismatches beyond those described (kind empty).
    pub mismatches_uncounted: Vec<FrontWorkerCount>,
    pub released: f64,
}

#[napi]
pub struct NativeFront {
    front: Option<Front>,
    fleet: Arc<Fleet>,
    stats: Arc<Stats>,
}

fn mode_of(label: &str) -> napi::Result<Mode> {
    Ok(match label {
        "kv" => Mode::Kv,
        "round-robin" => Mode::RoundRobin,
        "random" => Mode::Random,
        "least-loaded" => Mode::LeastLoaded,
        _ => return Err(invalid_config(format!("unknown router mode {label:?}"))),
    })
}

fn latency_pairs(m: std::collections::HashMap<u32, u64>) -> Vec<f64> {
    m.into_iter()
        .flat_map(|(k, n)| [kvroute_front::stats::latency_seconds(k), n as f64])
        .collect()
}

fn ms(v: f64) -> u64 {
    if v.is_finite() && v > 0.0 {
        v as u64
    } else {
        0
    }
}

#[napi]
impl NativeFront {
    /// Binds `host:port` and starts serving; throws when the address is taken.
    #[napi(constructor)]
    pub fn new(o: NativeFrontOptions) -> napi::Result<Self> {
        let port = u16::try_from(o.port)
            .map_err(|_| invalid_config(format!("port {} out of range", o.port)))?;
        let cfg = FrontConfig {
            host: o.host,
            port,
            js_socket: PathBuf::from(o.js_socket),
            fast_lane: o.fast_lane,
            max_body_bytes: ms(o.max_body_bytes) as usize,
            client_timeout_ms: ms(o.client_timeout_ms).max(1),
            upstream_timeout_ms: ms(o.upstream_timeout_ms).max(1),
            upstream_idle_timeout_ms: ms(o.upstream_idle_timeout_ms).max(1),
            migration_limit: o.migration_limit,
            connections_per_worker: o.connections_per_worker.max(1) as usize,
            failure_cooldown_ms: ms(o.failure_cooldown_ms),
            max_active_per_worker: o.max_active_per_worker.max(1),
            tokenization_check_every: o.tokenization_check_every,
            clock_ms: o.clock_ms,
        };
        let fleet = Arc::new(Fleet::new(cfg.max_active_per_worker));
        let stats = Arc::new(Stats::default());
        let front = Front::start(cfg, fleet.clone(), stats.clone())
            .map_err(|e| napi::Error::from_reason(e.to_string()))?;
        Ok(NativeFront {
            front: Some(front),
            fleet,
            stats,
        })
    }

    #[napi(getter)]
    pub fn port(&self) -> u32 {
        self.front.as_ref().map_or(0, |f| f.port() as u32)
    }

    /// The front routes `name` itself from now on, with these targets (replacing what it had).
    /// A target whose URL is not plain `http://` keeps the whole model in JS.
    #[napi]
    pub fn set_model(
        &self,
        name: String,
        core: &KvRouterCore,
        tokenizer: Option<&NativeTokenizer>,
        #[napi(ts_arg_type = "'kv' | 'round-robin' | 'random' | 'least-loaded'")] mode: String,
        targets: Vec<NativeFrontTarget>,
    ) -> napi::Result<bool> {
        let mut out = Vec::with_capacity(targets.len());
        for t in targets {
            let Some(origin) = Origin::parse(&t.url) else {
                self.fleet.remove_model(&name);
                return Ok(false);
            };
            out.push(Target {
                tid: t.tid,
                worker: Arc::from(t.worker_id.as_str()),
                dp_rank: t.dp_rank,
                origin: Arc::new(origin),
                rank_header: t.rank_header,
                serving: t.serving,
            });
        }
        let sched = core.shared();
        let block_size = kvroute_front::fleet::lock_scheduler(&sched).block_size();
        self.fleet.set_model(Model {
            name,
            sched,
            tokenizer: tokenizer.map(|t| t.shared()),
            block_size,
            mode: mode_of(&mode)?,
            targets: out,
        });
        Ok(true)
    }

    /// `name`'s requests go to JS.
    #[napi]
    pub fn remove_model(&self, name: String) {
        self.fleet.remove_model(&name);
    }

    /// The worker failed a request: avoided for `cooldownMs`.
    #[napi]
    pub fn set_suspect(&self, worker_id: String, cooldown_ms: f64) {
        self.fleet.set_suspect(
            &worker_id,
            Instant::now() + Duration::from_millis(ms(cooldown_ms)),
        );
    }

    /// Requests JS has in flight on a target (admission's count).
    #[napi]
    pub fn set_js_inflight(&self, worker_id: String, dp_rank: u32, n: u32) {
        self.fleet.set_js_inflight(&worker_id, dp_rank, n);
    }

    /// Requests waiting in JS's queue for a model (while any wait, the model's requests queue in
    /// JS too, in arrival order).
    #[napi]
    pub fn set_queued(&self, model: String, n: u32) {
        self.fleet.set_queued(&model, n);
    }

    /// Requests the front has in flight on a target.
    #[napi]
    pub fn front_inflight(&self, worker_id: String, dp_rank: u32) -> u32 {
        self.fleet.front_inflight(&worker_id, dp_rank)
    }

    /// What the front did since the last drain.
    #[napi]
    pub fn drain(&self) -> FrontDrained {
        let d = self.stats.drain();
        let route = |r: u8| if r == 0 { "completions" } else { "chat" }.to_string();
        let pair = |(model, worker): (String, String), count: u64| FrontWorkerCount {
            model,
            worker,
            kind: String::new(),
            count: count as f64,
        };
        FrontDrained {
            requests: d
                .requests
                .into_iter()
                .map(|((r, status), count)| FrontRequestCount {
                    route: route(r),
                    status: status as u32,
                    count: count as f64,
                })
                .collect(),
            models: d
                .models
                .into_iter()
                .map(|(model, m)| FrontModelCounts {
                    model,
                    decisions: m.decisions as f64,
                    blind: m.blind as f64,
                    prefill_tokens: m.prefill_tokens as f64,
                    saved_tokens: m.saved_tokens as f64,
                    avoidable_tokens: m.avoidable_tokens as f64,
                    overlaps: m
                        .overlaps
                        .into_iter()
                        .flat_map(|(o, n)| [o as f64, n as f64])
                        .collect(),
                    cancelled_prefill: m.cancelled_prefill as f64,
                    cancelled_decode: m.cancelled_decode as f64,
                    ttft: latency_pairs(m.ttft),
                    itl: latency_pairs(m.itl),
                })
                .collect(),
            upstream_errors: d
                .upstream_errors
                .into_iter()
                .map(|((worker, kind), count)| FrontWorkerCount {
                    model: String::new(),
                    worker,
                    kind: kind.to_string(),
                    count: count as f64,
                })
                .collect(),
            checks_equal: d
                .checks_equal
                .into_iter()
                .map(|(k, n)| pair(k, n))
                .collect(),
            mismatches: d
                .mismatches
                .into_iter()
                .map(|m| FrontMismatch {
                    model: m.model,
                    worker: m.worker,
                    ours: Uint32Array::new(m.ours),
                    engine: Uint32Array::new(m.engine),
                })
                .collect(),
            mismatches_uncounted: d
                .mismatches_uncounted
                .into_iter()
                .map(|(k, n)| pair(k, n))
                .collect(),
            released: d.released as f64,
        }
    }

    /// Stops listening and drops its connections.
    #[napi]
    pub fn close(&mut self) {
        if let Some(mut f) = self.front.take() {
            f.close();
        }
    }
}
