//! Answers the front writes itself: the gateway's OpenAI-shaped errors (errors.ts: `{"error":
//! {"message", "type", "param", "code"}}` with the same types and `KVR_*` codes), and the headers
//! that come with a routed answer (exchange.ts `kvrouteHeaders`).

use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::Response;

/// Every body the front answers with.
pub type Body = UnsyncBoxBody<Bytes, hyper::Error>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn error_type(status: u16) -> &'static str {
    match status {
        400 => "BadRequestError",
        408 => "RequestTimeoutError",
        502 => "BadGatewayError",
        503 => "ServiceUnavailableError",
        504 => "GatewayTimeoutError",
        _ => "InternalServerError",
    }
}

/// An error answer as exchange.ts `sendJsonError` writes it.
pub fn error(status: u16, code: &str, message: &str, close: bool) -> Response<Body> {
    let body = serde_json::json!({
        "error": { "message": message, "type": error_type(status), "param": null, "code": code }
    })
    .to_string();
    let mut r = Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("content-length", body.len());
    if close {
        r = r.header("connection", "close");
    }
    if status == 503 {
        r = r.header("retry-after", "1");
    }
    r.body(full(body)).expect("valid response parts")
}

/// Headers not copied from a worker's (or the JS gateway's) answer.
pub fn is_hop_header(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "transfer-encoding"
            | "content-length"
            | "date"
            | "server"
            | "upgrade"
            | "proxy-connection"
            | "te"
            | "trailer"
    )
}

/// The worker's headers without hop-by-hop ones.
pub fn copy_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (k, v) in from {
        if !is_hop_header(k) {
            to.append(k.clone(), v.clone());
        }
    }
}

pub fn set(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(HeaderName::from_static(name), v);
    }
}
