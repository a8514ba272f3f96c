//! A stream's events from the worker to the client, as exchange.ts relays a stream without
//! migration: whole events only (a chunk's partial event waits for its end), tokens counted into
//! the booking (first token, tokens so far) and the stream metrics (time to first token, gap per
//! token), `[DONE]` closes the booking. An engine abort (`finish_reason: "abort"`; its event and
//! what follows are not the client's), a cut, silence past the idle timeout or an event over 16 MiB
//! end the stream with the gateway's error event and `[DONE]`. The client's pace is the relay's:
//! hyper asks for the next frame only when the last one is written.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, Incoming};
use hyper::header::HeaderValue;
use hyper::Response;
use tokio::time::Sleep;

use crate::booking::Booking;
use crate::fleet::lock_scheduler;
use crate::lane::Headers;
use crate::reply::{self, Body};
use crate::upstream::{Failure, FailureKind};

/// Largest single event accepted from a worker (exchange.ts `MAX_EVENT_BYTES`).
const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

/// The client's streamed answer to a worker's 200 stream.
pub fn stream(
    booking: Booking,
    res: Response<Incoming>,
    headers: Headers,
    arrived: Instant,
) -> Response<Body> {
    let (parts, inner) = res.into_parts();
    let idle_for = booking.shared.upstream.idle_timeout();
    let mut booking = booking;
    booking.headers_sent = true;
    let relay = Relay {
        inner,
        booking,
        pending: BytesMut::new(),
        idle: Box::pin(tokio::time::sleep(idle_for)),
        idle_for,
        arrived,
        last_token: arrived,
        tokens: 0,
        saw_done: false,
        error_event: false,
        tail: None,
        ended: false,
        counted: false,
    };
    let mut out = Response::new(relay.boxed_unsync());
    let h = out.headers_mut();
    reply::copy_headers(&parts.headers, h);
    if !h.contains_key("content-type") {
        h.insert(
            "content-type",
            HeaderValue::from_static("text/event-stream; charset=utf-8"),
        );
    }
    h.insert("cache-control", HeaderValue::from_static("no-cache"));
    headers.apply(h);
    out
}

struct Relay {
    inner: Incoming,
    booking: Booking,
    /// Bytes after the last whole event.
    pending: BytesMut,
    idle: Pin<Box<Sleep>>,
    idle_for: Duration,
    arrived: Instant,
    last_token: Instant,
    tokens: u32,
    saw_done: bool,
    error_event: bool,
    /// The last bytes to send (a failure's error event), then the end.
    tail: Option<Bytes>,
    ended: bool,
    counted: bool,
}

/// What an event's data says.
enum Event {
    Done,
    Error,
    Abort,
    Tokens(u32),
}

fn inspect(data: &[u8]) -> Event {
    if data == b"[DONE]" {
        return Event::Done;
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
        return Event::Tokens(0);
    };
    if v.get("error").is_some() {
        return Event::Error;
    }
    let Some(choices) = v.get("choices").and_then(|c| c.as_array()) else {
        return Event::Tokens(0);
    };
    let mut tokens = 0;
    for c in choices {
        if c.get("finish_reason").and_then(|f| f.as_str()) == Some("abort") {
            return Event::Abort;
        }
        let non_empty = |s: Option<&serde_json::Value>| {
            s.and_then(|s| s.as_str()).is_some_and(|s| !s.is_empty())
        };
        if let Some(ids) = c.get("token_ids").and_then(|t| t.as_array()) {
            tokens += ids.len() as u32;
        } else if non_empty(c.get("text")) || non_empty(c.pointer("/delta/content")) {
            tokens += 1;
        }
    }
    Event::Tokens(tokens)
}

/// The data payloads of one event (`data: ` or `data:` lines).
fn data_lines(event: &[u8]) -> impl Iterator<Item = &[u8]> {
    event.split(|b| *b == b'\n').filter_map(|line| {
        line.strip_prefix(b"data: ")
            .or_else(|| line.strip_prefix(b"data:"))
    })
}

fn find(hay: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

impl Relay {
    /// Takes a chunk; returns the whole events to send now.
    fn take(&mut self, chunk: &[u8]) -> Option<Bytes> {
        let from = self.pending.len().saturating_sub(1);
        self.pending.extend_from_slice(chunk);
        let mut end = None;
        let mut at = from;
        while let Some(i) = find(&self.pending, at, b"\n\n") {
            end = Some(i + 2);
            at = i + 2;
        }
        let Some(end) = end else {
            if self.pending.len() > MAX_EVENT_BYTES {
                self.fail(Failure::new(
                    FailureKind::Broken,
                    format!("an event larger than {MAX_EVENT_BYTES} bytes"),
                ));
            }
            return None;
        };
        let whole = self.pending.split_to(end).freeze();
        let mut tokens = 0;
        let mut start = 0;
        while start < whole.len() {
            let stop = find(&whole, start, b"\n\n").map_or(whole.len(), |i| i + 2);
            for data in data_lines(&whole[start..stop]) {
                match inspect(data) {
                    Event::Done => self.saw_done = true,
                    Event::Error => self.error_event = true,
                    Event::Tokens(n) => tokens += n,
                    Event::Abort => {
                        // The events before the abort are the client's; the rest is not.
                        self.note_tokens(tokens);
                        self.fail(Failure::new(
                            FailureKind::Aborted,
                            "the engine aborted the request (finish_reason \"abort\")",
                        ));
                        return (start > 0).then(|| whole.slice(..start));
                    }
                }
            }
            start = stop;
        }
        self.note_tokens(tokens);
        if self.saw_done {
            self.finish();
        }
        Some(whole)
    }

    /// exchange.ts `onTokens`: the booking's first token and count, the stream metrics.
    fn note_tokens(&mut self, n: u32) {
        if n == 0 {
            return;
        }
        let now = Instant::now();
        let b = &mut self.booking;
        let model = &b.model.name;
        let mut sched = lock_scheduler(&b.model.sched);
        if !b.first_token {
            b.first_token = true;
            sched.first_token(&b.request_id);
            b.shared
                .stats
                .first_token(model, (now - self.arrived).as_secs_f64());
        } else {
            let gap = (now - self.last_token).as_secs_f64();
            b.shared.stats.inter_token(model, gap / n as f64);
        }
        self.last_token = now;
        self.tokens += n;
        sched.tokens(&b.request_id, self.tokens);
    }

    /// The stream is complete.
    fn finish(&mut self) {
        self.booking.close();
        self.ended = true;
        self.count();
    }

    /// The stream failed after its headers: closed, and ended with an error event and [DONE].
    fn fail(&mut self, f: Failure) {
        self.booking.fail(&f);
        let worker = &self.booking.target.worker;
        let error = serde_json::json!({
            "error": {
                "message": format!("Worker {worker} failed: {}", f.detail),
                "type": "BadGatewayError",
                "param": null,
                "code": "KVR_UPSTREAM_FAILED",
            }
        });
        self.tail = Some(Bytes::from(format!("data: {error}\n\ndata: [DONE]\n\n")));
        self.ended = true;
        self.count();
    }

    fn count(&mut self) {
        if !self.counted {
            self.counted = true;
            self.booking
                .shared
                .stats
                .request(self.booking.route.code(), 200);
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // The client went away mid-stream: the booking closes as cancelled; the answer had its
        // 200 (node:http counts a response by the status it sent).
        self.count();
    }
}

impl HttpBody for Relay {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        loop {
            if let Some(t) = self.tail.take() {
                return Poll::Ready(Some(Ok(Frame::data(t))));
            }
            if self.ended {
                return Poll::Ready(None);
            }
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending => {
                    if self.idle.as_mut().poll(cx).is_ready() {
                        self.fail(crate::upstream::silent());
                        continue;
                    }
                    return Poll::Pending;
                }
                Poll::Ready(None) => {
                    let f = Failure::new(FailureKind::Broken, "the stream ended without [DONE]");
                    self.fail(f);
                }
                Poll::Ready(Some(Err(e))) => {
                    let f = Failure::new(FailureKind::Broken, crate::upstream::error_chain(&e));
                    self.fail(f);
                }
                Poll::Ready(Some(Ok(frame))) => {
                    let deadline = tokio::time::Instant::now() + self.idle_for;
                    self.idle.as_mut().reset(deadline);
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    if let Some(out) = self.take(&data) {
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(data: &str) -> Option<u32> {
        match inspect(data.as_bytes()) {
            Event::Tokens(n) => Some(n),
            _ => None,
        }
    }

    #[test]
    fn reads_events_as_the_gateway_does() {
        assert_eq!(
            tokens(r#"{"choices":[{"index":0,"text":"hi","finish_reason":null}]}"#),
            Some(1)
        );
        assert_eq!(
            tokens(r#"{"choices":[{"index":0,"text":"","finish_reason":"length"}]}"#),
            Some(0)
        );
        assert_eq!(
            tokens(r#"{"choices":[{"index":0,"delta":{"content":"x"}}]}"#),
            Some(1)
        );
        assert_eq!(
            tokens(r#"{"choices":[{"index":0,"delta":{"role":"assistant"}}]}"#),
            Some(0)
        );
        assert_eq!(
            tokens(r#"{"choices":[{"index":0,"text":"ab","token_ids":[1,2]}]}"#),
            Some(2)
        );
        assert!(matches!(inspect(b"[DONE]"), Event::Done));
        assert!(matches!(
            inspect(br#"{"error":{"message":"x"}}"#),
            Event::Error
        ));
        assert!(matches!(
            inspect(br#"{"choices":[{"index":0,"text":"","finish_reason":"abort"}]}"#),
            Event::Abort
        ));
        let lines: Vec<&[u8]> = data_lines(b"event: x\ndata: {}\ndata:[DONE]\n\n").collect();
        assert_eq!(lines, vec![&b"{}"[..], &b"[DONE]"[..]]);
    }
}
