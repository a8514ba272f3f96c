//! The native front of kvroute's gateway (docs/gateway.md, "Native front"): the public HTTP
//! listener on a Rust thread of the gateway's own process. Node's HTTP stack alone costs about
//! what a Rust router spends on a whole request (benchmarks/RESULTS.md, the floors), so the
//! common request (a non-streamed completion or chat) is read, tokenized, routed, forwarded and
//! answered here (lane.rs) against the same scheduler and tokenizer objects the JS router uses;
//! every other request is handed, bytes unchanged, to the JS gateway on a private Unix socket
//! (handoff.rs), which keeps streams, migration, the admission queue, P/D, API keys and the
//! admin routes.
//!
//! The JS side tells the front what it routes (fleet.rs) and drains what it did (stats.rs) into
//! the gateway's metrics. One current-thread Tokio runtime: the front is one core's work, like
//! the JS thread beside it.

mod booking;
mod client_errors;
pub mod fleet;
mod handoff;
mod ids;
mod lane;
mod relay;
mod reply;
pub mod stats;
mod upstream;

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::oneshot;

use crate::client_errors::ShapedErrors;
use crate::fleet::Fleet;
use crate::lane::{Outcome, Route};
use crate::reply::Body;
use crate::stats::Stats;
use crate::upstream::Upstream;

/// The gateway's settings the front applies (config/schema.ts names them).
#[derive(Debug, Clone)]
pub struct FrontConfig {
    pub host: String,
    pub port: u16,
    /// The JS gateway's private socket.
    pub js_socket: PathBuf,
    /// Off (API keys configured): everything goes to JS.
    pub fast_lane: bool,
    pub max_body_bytes: usize,
    pub client_timeout_ms: u64,
    pub upstream_timeout_ms: u64,
    pub upstream_idle_timeout_ms: u64,
    /// Streams are JS's when migration is on (it continues them on another worker).
    pub migration_limit: u32,
    pub connections_per_worker: usize,
    pub failure_cooldown_ms: u64,
    pub max_active_per_worker: u32,
    /// The tokenization parity check's `every` (0: never).
    pub tokenization_check_every: u32,
    /// The JS router's clock (`performance.now()`) when the front starts: the scheduler's time
    /// base is shared.
    pub clock_ms: f64,
}

/// The request line and headers fit in this (node:http's `maxHeaderSize`); more gets 431.
const MAX_HEADER_BYTES: usize = 16 * 1024;

/// A worker's first parity checks, then one in `every` (tokenization-check.ts).
const CHECKS_PER_NEW_WORKER: u32 = 8;
const MAX_TRACKED_WORKERS: usize = 4096;

#[derive(Default)]
struct Sampler {
    seen: u64,
    first: HashMap<String, u32>,
}

pub struct Shared {
    cfg: FrontConfig,
    fleet: Arc<Fleet>,
    stats: Arc<Stats>,
    upstream: Upstream,
    ids: ids::Ids,
    started: Instant,
    sampler: Mutex<Sampler>,
}

impl Shared {
    /// Milliseconds on the JS router's clock.
    fn now_ms(&self) -> f64 {
        self.cfg.clock_ms + self.started.elapsed().as_secs_f64() * 1000.0
    }

    fn suspect(&self, worker: &str) {
        if self.cfg.failure_cooldown_ms > 0 {
            let until = Instant::now() + Duration::from_millis(self.cfg.failure_cooldown_ms);
            self.fleet.set_suspect(worker, until);
        }
    }

    fn sample_check(&self, worker: &str) -> bool {
        let every = self.cfg.tokenization_check_every;
        if every == 0 {
            return false;
        }
        let mut s = self.sampler.lock().unwrap_or_else(|e| e.into_inner());
        let done = s.first.get(worker).copied().unwrap_or(0);
        if done < CHECKS_PER_NEW_WORKER {
            if s.first.len() >= MAX_TRACKED_WORKERS && done == 0 {
                s.first.clear();
            }
            s.first.insert(worker.to_string(), done + 1);
            return true;
        }
        s.seen += 1;
        (s.seen - 1).is_multiple_of(every as u64)
    }
}

/// A running front; `close` (or drop) stops it.
pub struct Front {
    port: u16,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Front {
    /// Binds the public address (failing at once when it is taken) and starts serving.
    pub fn start(cfg: FrontConfig, fleet: Arc<Fleet>, stats: Arc<Stats>) -> std::io::Result<Front> {
        let listener = std::net::TcpListener::bind((cfg.host.as_str(), cfg.port))?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let upstream = Upstream::new(
            cfg.js_socket.clone(),
            cfg.connections_per_worker,
            Duration::from_millis(cfg.upstream_timeout_ms),
            Duration::from_millis(cfg.upstream_idle_timeout_ms),
        );
        let shared = Arc::new(Shared {
            cfg,
            fleet,
            stats,
            upstream,
            ids: ids::Ids::default(),
            started: Instant::now(),
            sampler: Mutex::new(Sampler::default()),
        });
        let (stop, stopped) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("kvroute-front".into())
            .spawn(move || runtime.block_on(accept_loop(listener, shared, stopped)))?;
        Ok(Front {
            port,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops listening and drops every connection (in-flight requests close their bookings as
    /// cancelled).
    pub fn close(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        self.close();
    }
}

async fn accept_loop(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    mut stopped: oneshot::Receiver<()>,
) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            accepted = listener.accept() => {
                let Ok((socket, _)) = accepted else { continue };
                let _ = socket.set_nodelay(true);
                let shared = shared.clone();
                let header_timeout = Duration::from_millis(shared.cfg.client_timeout_ms.min(60_000));
                connections.spawn(async move {
                    let service = service_fn(move |req| serve(shared.clone(), req));
                    let _ = http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(header_timeout)
                        .max_buf_size(MAX_HEADER_BYTES)
                        .serve_connection(TokioIo::new(ShapedErrors::new(socket)), service)
                        .await;
                });
            }
            // Reap finished connections so the set stays as large as the open ones.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.shutdown().await;
}

fn route_of(req: &Request<Incoming>) -> Option<Route> {
    match req.uri().path() {
        "/v1/completions" => Some(Route::Completions),
        "/v1/chat/completions" => Some(Route::Chat),
        _ => None,
    }
}

/// JSON or no content type (gateway.ts `checkJson`); anything else is JS's 415.
fn json_or_none(req: &Request<Incoming>) -> bool {
    let Some(v) = req.headers().get("content-type") else {
        return true;
    };
    let Ok(v) = v.to_str() else { return false };
    let base = v
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    base == "application/json" || base.ends_with("+json")
}

fn content_length(req: &Request<Incoming>) -> Option<usize> {
    if req.headers().contains_key("transfer-encoding") {
        return None;
    }
    req.headers()
        .get("content-length")?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

async fn serve(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let route = route_of(&req);
    let fast = shared.cfg.fast_lane
        && req.method() == Method::POST
        && json_or_none(&req)
        && content_length(&req).is_some_and(|n| n <= shared.cfg.max_body_bytes);
    let (parts, body) = req.into_parts();
    let (Some(route), true) = (route, fast) else {
        return Ok(
            handoff::hand_off(&shared.upstream, &parts, body.boxed_unsync(), None, false).await,
        );
    };
    let timeout = Duration::from_millis(shared.cfg.client_timeout_ms);
    let bytes: Bytes = match tokio::time::timeout(timeout, body.collect()).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(_)) => {
            return Ok(reply::error(
                400,
                "KVR_BAD_REQUEST",
                "The request body could not be read",
                true,
            ))
        }
        Err(_) => {
            shared.stats.request(route.code(), 408);
            let ms = shared.cfg.client_timeout_ms;
            let msg = format!("The request was not received within {ms} ms");
            return Ok(reply::error(408, "KVR_CLIENT_TIMEOUT", &msg, true));
        }
    };
    let res = match lane::serve(&shared, route, &parts, &bytes).await {
        Outcome::Answered(r) => r,
        Outcome::HandOff { failed, check } => {
            let failed = failed
                .as_ref()
                .map(|(worker, dp_rank, failure)| handoff::FailedAttempt {
                    worker,
                    dp_rank: *dp_rank,
                    failure,
                });
            handoff::hand_off(&shared.upstream, &parts, reply::full(bytes), failed, check).await
        }
    };
    Ok(res)
}
