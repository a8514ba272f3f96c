//! The fast lane: a completions or chat request of a model the front routes, from its bytes to
//! the worker's answer without JavaScript (a stream's events relayed by relay.rs). Its steps are exchange.ts's for the same
//! request: read the fields and tokenize (the tokenizer crate's `read_request`, as the gateway's
//! fast path), exclude what admission and the suspects exclude, route and book, forward the
//! client's bytes unchanged, read the whole answer, count usage, finish the booking, answer with
//! the worker's headers and kvroute's own.
//!
//! Whatever the lane does not cover goes to JS before anything is booked: streams when migration
//! is on (JS continues them on another worker), bodies the fast reader leaves to the general
//! path, a model without a tokenizer for text or chat, a prompt the tokenizer refuses, a model
//! not handed over, a full fleet. A stream the parity check samples goes to JS too, its booking
//! undone, with `x-kvroute-front-check` (JS checks it: the ids have to be asked for and stripped
//! from every event). A failed attempt goes to JS after its booking is closed, with the failure,
//! and JS retries or migrates it; once a stream's headers are out, a failure ends it with an
//! error event, as JS does without migration.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderMap, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Request, Response};
use kvroute_core::extra_keys::ExtraKeys;
use kvroute_core::scheduler::{Decision, RouteRequest};
use kvroute_tokenizer::openai_fields::{self, Prompt, RequestFields};

use crate::booking::Booking;
use crate::fleet::{lock_scheduler, Target};
use crate::relay;
use crate::reply::{self, Body};
use crate::upstream::{Failure, FailureKind};
use crate::Shared;

pub enum Outcome {
    Answered(Response<Body>),
    /// To JS, with the front's failed attempt if there was one, or asking for the parity check.
    HandOff {
        failed: Option<(Arc<str>, u32, Failure)>,
        check: bool,
    },
}

/// Completions (0) or chat (1), as the request metric's route label.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Completions,
    Chat,
}

impl Route {
    pub fn code(self) -> u8 {
        self as u8
    }
    fn path(self) -> &'static str {
        match self {
            Route::Completions => "/v1/completions",
            Route::Chat => "/v1/chat/completions",
        }
    }
}

thread_local! {
    /// The front's runtime is one thread: one decision buffer serves every request.
    static DECISION: RefCell<Decision> = RefCell::new(Decision::default());
}

const HAND_OFF: Outcome = Outcome::HandOff {
    failed: None,
    check: false,
};

/// Reads the fields and, with a tokenizer, the prompt's ids (None: JS's general path).
fn read(shared: &Shared, body: &[u8], chat: bool) -> Option<(RequestFields, Option<Vec<u32>>)> {
    let guess = shared.fleet.any_tokenizer();
    let (fields, tokens) = match &guess {
        Some(t) => t.read_request(body, chat)?,
        None => {
            let top = openai_fields::top_level(body, chat)?;
            let fields = openai_fields::read_fields(&top, chat)?;
            if chat
                && !openai_fields::message_list(&top)?
                    .iter()
                    .all(|m| openai_fields::valid_message(m))
            {
                return None;
            }
            (fields, None)
        }
    };
    let model = shared.fleet.model(fields.model.as_deref()?)?;
    if matches!(fields.prompt, Prompt::Ids(_)) {
        return Some((fields, None));
    }
    let tokenizer = model.tokenizer.as_ref()?;
    let tokens = match &guess {
        Some(g) if Arc::ptr_eq(g, tokenizer) => tokens,
        _ => tokenizer.read_request(body, chat)?.1,
    };
    // A refused prompt goes to JS, which counts and logs it.
    Some((fields, Some(tokens?.ok()?)))
}

pub async fn serve(shared: &Arc<Shared>, route: Route, parts: &Parts, body: &Bytes) -> Outcome {
    let arrived = Instant::now();
    let chat = route == Route::Chat;
    let Some((fields, tokenized)) = read(shared, body, chat) else {
        return HAND_OFF;
    };
    if fields.stream && shared.cfg.migration_limit > 0 {
        return HAND_OFF;
    }
    let Some(plan) = fields.model.as_deref().and_then(|m| shared.fleet.plan(m)) else {
        return HAND_OFF;
    };
    let by_tokenizer = tokenized.is_some();
    let tokens = match (&fields.prompt, tokenized) {
        (Prompt::Ids(ids), _) => ids.clone(),
        (_, Some(t)) => t,
        _ => return HAND_OFF,
    };
    let max_tokens = match fields.max_tokens {
        None => None,
        Some(m) => match u32::try_from(m) {
            Ok(m) => Some(m),
            Err(_) => return HAND_OFF,
        },
    };
    let model = plan.model.clone();
    let request_id = shared.ids.engine_id();
    let extra = ExtraKeys {
        cache_salt: fields.cache_salt.clone(),
        ..ExtraKeys::default()
    };
    let decided = DECISION.with(|d| {
        let d = &mut *d.borrow_mut();
        let req = RouteRequest {
            tokens: &tokens,
            extra: &extra,
            request_id: &request_id,
            max_tokens,
            mode: model.mode,
            explain: false,
            dry_run: false,
            roles: 0,
            exclude: &plan.exclude,
        };
        let mut s = lock_scheduler(&model.sched);
        if !s.route(&req, shared.now_ms(), d) {
            return None;
        }
        s.start(
            &request_id,
            d.target,
            d.prompt_blocks,
            d.overlap_blocks,
            max_tokens,
        );
        Some((d.target, d.overlap_blocks, d.best_overlap_blocks, d.blind))
    });
    let Some((tid, overlap, best, blind)) = decided else {
        return HAND_OFF;
    };
    let check = by_tokenizer
        && !fields.echo
        && model
            .target(tid)
            .is_some_and(|t| shared.sample_check(&t.worker));
    let target = match model.target(tid) {
        // A sampled stream is JS's to check; a target the table lags behind (a worker just
        // joined) is JS's to route. Either way this decision is undone.
        Some(t) if !(check && fields.stream) => t.clone(),
        _ => {
            lock_scheduler(&model.sched).finish(&request_id, shared.now_ms());
            return Outcome::HandOff {
                failed: None,
                check,
            };
        }
    };
    shared.stats.decision(
        &model.name,
        overlap,
        best,
        tokens.len() as u32,
        model.block_size,
        blind,
    );
    let mut booking = Booking::new(shared.clone(), model, target, request_id, route);
    let out = if check && !fields.return_token_ids {
        with_return_token_ids(body)
    } else {
        body.clone()
    };
    let res = match shared
        .upstream
        .send(worker_request(
            &booking.target,
            route,
            &booking.request_id,
            out,
        ))
        .await
    {
        Ok(r) => r,
        Err(f) => return failed(&mut booking, f),
    };
    let headers = Headers::of(&booking, overlap, parts, shared);
    if fields.stream && res.status() == 200 {
        return Outcome::Answered(relay::stream(booking, res, headers, arrived));
    }
    let answer = match shared.upstream.read_whole(res).await {
        Ok(a) => a,
        Err(f) => return failed(&mut booking, f),
    };
    let status = answer.parts.status.as_u16();
    if status == 502 || status == 503 {
        return failed(
            &mut booking,
            Failure::new(FailureKind::NotStarted, format!("HTTP {status}")),
        );
    }
    let mut answer_body = answer.body;
    if status == 200 && is_aborted(&answer_body) {
        let f = Failure::new(
            FailureKind::Aborted,
            "the engine aborted the request (finish_reason \"abort\")",
        );
        return failed(&mut booking, f);
    }
    if status == 200 {
        if check {
            answer_body = checked(&booking, &tokens, answer_body, fields.return_token_ids);
        }
        if let Some(n) = completion_tokens(&answer_body) {
            lock_scheduler(&booking.model.sched).tokens(&booking.request_id, n);
        }
    }
    booking.close();
    let mut res = Response::new(reply::full(answer_body.clone()));
    *res.status_mut() = answer.parts.status;
    let h = res.headers_mut();
    reply::copy_headers(&answer.parts.headers, h);
    h.insert("content-length", HeaderValue::from(answer_body.len()));
    headers.apply(h);
    shared.stats.request(route.code(), status);
    Outcome::Answered(res)
}

/// kvroute's headers on a routed answer (exchange.ts `kvrouteHeaders`).
pub struct Headers {
    worker: Arc<str>,
    dp_rank: u32,
    overlap: u32,
    client_id: String,
    request_id: String,
}

impl Headers {
    fn of(b: &Booking, overlap: u32, parts: &Parts, shared: &Shared) -> Headers {
        // The client's x-request-id is echoed (never sent to the engine), or a fresh UUID.
        let given = parts
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 128);
        Headers {
            worker: b.target.worker.clone(),
            dp_rank: b.target.dp_rank,
            overlap,
            client_id: given.map_or_else(|| shared.ids.uuid(), str::to_string),
            request_id: b.request_id.clone(),
        }
    }

    pub fn apply(&self, h: &mut HeaderMap) {
        reply::set(h, "x-kvroute-worker", &self.worker);
        reply::set(h, "x-kvroute-dp-rank", &self.dp_rank.to_string());
        reply::set(h, "x-kvroute-overlap-blocks", &self.overlap.to_string());
        reply::set(h, "x-request-id", &self.client_id);
        reply::set(h, "x-kvroute-request-id", &self.request_id);
    }
}

/// A failed attempt before anything was sent: a timeout is answered (504, not retried, as JS
/// does); anything else goes to JS with the failure.
fn failed(booking: &mut Booking, f: Failure) -> Outcome {
    booking.fail(&f);
    let worker = booking.target.worker.clone();
    if f.kind == FailureKind::Timeout {
        booking.shared.stats.request(booking.route.code(), 504);
        let ms = booking.shared.cfg.upstream_timeout_ms;
        return Outcome::Answered(reply::error(
            504,
            "KVR_UPSTREAM_TIMEOUT",
            &format!("Worker {worker} did not answer within {ms} ms"),
            false,
        ));
    }
    Outcome::HandOff {
        failed: Some((worker, booking.target.dp_rank, f)),
        check: false,
    }
}

fn worker_request(
    target: &Target,
    route: Route,
    request_id: &str,
    body: Bytes,
) -> Request<Full<Bytes>> {
    let uri = format!(
        "http://{}{}{}",
        target.origin.authority,
        target.origin.prefix,
        route.path()
    );
    let mut b = Request::post(uri)
        .header("content-type", "application/json")
        .header("content-length", body.len())
        .header("x-request-id", request_id);
    if target.rank_header {
        b = b.header("x-data-parallel-rank", target.dp_rank);
    }
    b.body(Full::new(body)).expect("valid request parts")
}

/// The body with `"return_token_ids": true` appended before its closing brace (exchange.ts
/// `withFields`: the later key wins in the engine's JSON parser).
fn with_return_token_ids(body: &Bytes) -> Bytes {
    let trimmed = body.trim_ascii_end();
    let Some(inner) = trimmed.strip_suffix(b"}") else {
        return body.clone();
    };
    let empty = inner.trim_ascii_end().ends_with(b"{");
    let mut out = Vec::with_capacity(body.len() + 26);
    out.extend_from_slice(inner);
    out.extend_from_slice(if empty { b"" } else { b"," });
    out.extend_from_slice(b"\"return_token_ids\":true}");
    Bytes::from(out)
}

/// A whole answer some choice of which the engine aborted (attempt.ts `isAbortedResponse`).
fn is_aborted(body: &[u8]) -> bool {
    const MARK: &[u8] = b"\"finish_reason\":\"abort\"";
    if !body.windows(MARK.len()).any(|w| w == MARK) {
        return false;
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return false;
    };
    v.get("choices")
        .and_then(|c| c.as_array())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c.get("finish_reason").and_then(|f| f.as_str()) == Some("abort"))
        })
}

/// `usage.completion_tokens`, read from the answer's tail (exchange.ts `usageCompletionTokens`).
fn completion_tokens(body: &[u8]) -> Option<u32> {
    const KEY: &[u8] = b"\"completion_tokens\":";
    let tail = &body[body.len().saturating_sub(512)..];
    let at = tail.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let digits = tail[at..].trim_ascii_start();
    let n = digits.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&digits[..n]).ok()?.parse().ok()
}

/// The parity check of a whole answer (exchange.ts `checkWholeResponse`): its prompt ids are
/// compared with ours, and dropped again (set to null) unless the client asked for them.
fn checked(b: &Booking, ours: &[u32], body: Bytes, keep_ids: bool) -> Bytes {
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return body;
    };
    let ids = v
        .get("prompt_token_ids")
        .filter(|x| x.is_array())
        .or_else(|| {
            v.pointer("/choices/0/prompt_token_ids")
                .filter(|x| x.is_array())
        });
    if let Some(serde_json::Value::Array(ids)) = ids {
        let engine = ids
            .iter()
            .map(|x| x.as_u64().unwrap_or(u64::MAX).min(u32::MAX as u64) as u32)
            .collect();
        b.shared
            .stats
            .check(&b.model.name, &b.target.worker, ours, engine);
    }
    if keep_ids {
        return body;
    }
    if let Some(x) = v.get_mut("prompt_token_ids") {
        *x = serde_json::Value::Null;
    }
    if let Some(choices) = v.get_mut("choices").and_then(|c| c.as_array_mut()) {
        for c in choices {
            for key in ["prompt_token_ids", "token_ids"] {
                if let Some(x) = c.get_mut(key) {
                    *x = serde_json::Value::Null;
                }
            }
        }
    }
    serde_json::to_vec(&v).map_or(body, Bytes::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_return_token_ids() {
        let b = |s: &str| with_return_token_ids(&Bytes::from(s.to_string()));
        assert_eq!(&b("{\"a\":1}")[..], b"{\"a\":1,\"return_token_ids\":true}");
        assert_eq!(&b("{ }\n")[..], b"{ \"return_token_ids\":true}");
        assert_eq!(&b("[1]")[..], b"[1]");
    }

    #[test]
    fn reads_usage_and_aborts() {
        let body = br#"{"choices":[{"finish_reason":"length"}],"usage":{"prompt_tokens":5,"completion_tokens": 16}}"#;
        assert_eq!(completion_tokens(body), Some(16));
        assert_eq!(completion_tokens(b"{}"), None);
        assert!(!is_aborted(body));
        assert!(is_aborted(br#"{"choices":[{"finish_reason":"abort"}]}"#));
        assert!(!is_aborted(
            br#"{"choices":[{"text":"\"finish_reason\":\"abort\""}]}"#
        ));
    }
}
