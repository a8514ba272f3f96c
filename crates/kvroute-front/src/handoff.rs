//! The hand-off: a request the front does not answer itself goes, headers and body as the client
//! sent them, to the JS gateway on its private Unix socket, and JS's answer (a stream included)
//! comes back as it is written. When the front's own attempt failed first, the failure travels
//! in `x-kvroute-front-failure` so JS retries or migrates exactly as if its own attempt had
//! failed (and `x-kvroute-front-check` asks JS to run the parity check on a stream the front
//! sampled); a client's copy of either header is dropped (only the front may send it, and only on the
//! socket, which nobody else can reach).

use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Request, Response};

use crate::reply::{self, Body};
use crate::upstream::{Failure, Upstream};
use http_body_util::BodyExt;

pub const FAILURE_HEADER: &str = "x-kvroute-front-failure";
/// JS runs the parity check on this request (the front sampled it).
pub const CHECK_HEADER: &str = "x-kvroute-front-check";

/// Hop-by-hop request headers, not forwarded.
fn is_hop_request_header(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "upgrade"
            | "transfer-encoding"
    ) || name.as_str() == FAILURE_HEADER
        || name.as_str() == CHECK_HEADER
}

/// The failed first attempt, as JS reads it: percent-encoded JSON.
pub struct FailedAttempt<'a> {
    pub worker: &'a str,
    pub dp_rank: u32,
    pub failure: &'a Failure,
}

fn failure_value(f: &FailedAttempt<'_>) -> Option<HeaderValue> {
    let json = serde_json::json!({
        "worker": f.worker,
        "dpRank": f.dp_rank,
        "kind": f.failure.kind.label(),
        "detail": f.failure.detail,
    })
    .to_string();
    let mut out = String::with_capacity(json.len() * 3 / 2);
    for b in json.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    HeaderValue::from_str(&out).ok()
}

/// Sends the request to JS and returns its answer, or a 502 when JS cannot be reached.
pub async fn hand_off(
    upstream: &Upstream,
    parts: &Parts,
    body: Body,
    failed: Option<FailedAttempt<'_>>,
    check: bool,
) -> Response<Body> {
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let uri = format!("http://kvroute-gateway{path}");
    let mut req = match Request::builder()
        .method(parts.method.clone())
        .uri(uri)
        .body(body)
    {
        Ok(r) => r,
        Err(_) => {
            return reply::error(
                400,
                "KVR_BAD_REQUEST",
                "The request target is not valid",
                true,
            )
        }
    };
    let headers = req.headers_mut();
    for (k, v) in &parts.headers {
        if !is_hop_request_header(k) {
            headers.append(k.clone(), v.clone());
        }
    }
    if let Some(v) = failed.as_ref().and_then(failure_value) {
        headers.insert(HeaderName::from_static(FAILURE_HEADER), v);
    }
    if check {
        headers.insert(
            HeaderName::from_static(CHECK_HEADER),
            HeaderValue::from_static("1"),
        );
    }
    match upstream.to_js(req).await {
        Ok(res) => {
            let (p, body) = res.into_parts();
            let mut out = Response::new(body.boxed_unsync());
            *out.status_mut() = p.status;
            copy_answer_headers(&p.headers, out.headers_mut());
            out
        }
        Err(e) => reply::error(
            502,
            "KVR_INTERNAL",
            &format!("The gateway's request handler could not be reached: {e}"),
            false,
        ),
    }
}

/// JS's answer headers, minus hop-by-hop ones (a `connection: close` is kept: JS closes the
/// connection of a client it refused, and so does the front).
fn copy_answer_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (k, v) in from {
        let keep = match k.as_str() {
            "keep-alive" | "transfer-encoding" | "proxy-connection" | "te" | "trailer"
            | "upgrade" => false,
            "connection" => v.as_bytes().eq_ignore_ascii_case(b"close"),
            _ => true,
        };
        if keep {
            to.append(k.clone(), v.clone());
        }
    }
}
