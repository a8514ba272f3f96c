//! The front's two HTTP clients, both keep-alive pools from hyper-util: one to the workers over
//! TCP (`TCP_NODELAY`, as the JS gateway's undici pool), one to the JS gateway over its private
//! Unix socket (the hand-off). A worker's whole answer is read with the gateway's limits: headers
//! within `upstreamTimeoutMs`, no silence inside the body longer than `upstreamIdleTimeoutMs`, at
//! most `MAX_RESPONSE_BYTES` (attempt.ts).

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::http::response::Parts;
use hyper::{Request, Response, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::UnixStream;

use crate::reply::Body;

/// Largest non-streamed answer accepted from a worker (attempt.ts `MAX_RESPONSE_BYTES`).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// Why a worker's answer did not come (attempt.ts's failure classes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The request never reached the worker (connection refused...).
    NotStarted,
    /// Reset, cut short, silent past the idle timeout, too large.
    Broken,
    /// The engine answered `finish_reason: "abort"`.
    Aborted,
    /// No headers within the upstream timeout.
    Timeout,
}

impl FailureKind {
    pub fn label(self) -> &'static str {
        match self {
            FailureKind::NotStarted => "not_started",
            FailureKind::Broken => "broken",
            FailureKind::Aborted => "aborted",
            FailureKind::Timeout => "timeout",
        }
    }
}

#[derive(Debug)]
pub struct Failure {
    pub kind: FailureKind,
    pub detail: String,
}

impl Failure {
    pub fn new(kind: FailureKind, detail: impl Into<String>) -> Failure {
        Failure {
            kind,
            detail: detail.into(),
        }
    }
}

/// Connects to the JS gateway's Unix socket, whatever the URI says.
#[derive(Clone)]
pub struct UnixConnector(Arc<PathBuf>);

impl tower_service::Service<Uri> for UnixConnector {
    type Response = TokioIo<UnixStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let path = self.0.clone();
        Box::pin(async move { Ok(TokioIo::new(UnixStream::connect(&*path).await?)) })
    }
}

pub struct Upstream {
    workers: Client<HttpConnector, Full<Bytes>>,
    js: Client<UnixConnector, Body>,
    headers_timeout: Duration,
    idle_timeout: Duration,
}

/// A worker's whole answer.
pub struct Answer {
    pub parts: Parts,
    pub body: Bytes,
}

impl Upstream {
    pub fn new(
        js_socket: PathBuf,
        per_worker: usize,
        headers_timeout: Duration,
        idle_timeout: Duration,
    ) -> Upstream {
        let mut tcp = HttpConnector::new();
        tcp.set_nodelay(true);
        let workers = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(per_worker)
            .pool_idle_timeout(Duration::from_secs(30))
            .build(tcp);
        let js = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(1024)
            .build(UnixConnector(Arc::new(js_socket)));
        Upstream {
            workers,
            js,
            headers_timeout,
            idle_timeout,
        }
    }

    /// Sends a request to a worker; its answer's headers, within the upstream timeout.
    pub async fn send(&self, req: Request<Full<Bytes>>) -> Result<Response<Incoming>, Failure> {
        match tokio::time::timeout(self.headers_timeout, self.workers.request(req)).await {
            Err(_) => Err(Failure::new(FailureKind::Timeout, "no headers in time")),
            Ok(Err(e)) => {
                // hyper-util says whether the connection was ever made.
                let kind = if e.is_connect() {
                    FailureKind::NotStarted
                } else {
                    FailureKind::Broken
                };
                Err(Failure::new(kind, error_chain(&e)))
            }
            Ok(Ok(res)) => Ok(res),
        }
    }

    /// Reads a worker's whole answer.
    pub async fn read_whole(&self, res: Response<Incoming>) -> Result<Answer, Failure> {
        let (parts, mut body) = res.into_parts();
        let mut buf = BytesMut::new();
        loop {
            match tokio::time::timeout(self.idle_timeout, body.frame()).await {
                Err(_) => return Err(silent()),
                Ok(None) => break,
                Ok(Some(Err(e))) => return Err(Failure::new(FailureKind::Broken, error_chain(&e))),
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        if buf.len() + data.len() > MAX_RESPONSE_BYTES {
                            return Err(Failure::new(
                                FailureKind::Broken,
                                format!("response larger than {MAX_RESPONSE_BYTES} bytes"),
                            ));
                        }
                        buf.extend_from_slice(&data);
                    }
                }
            }
        }
        Ok(Answer {
            parts,
            body: buf.freeze(),
        })
    }

    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// Sends a request to the JS gateway; its answer streams back as it comes.
    pub async fn to_js(&self, req: Request<Body>) -> Result<Response<Incoming>, String> {
        self.js.request(req).await.map_err(|e| error_chain(&e))
    }
}

/// A worker's answer silent past the idle timeout.
pub fn silent() -> Failure {
    Failure::new(
        FailureKind::Broken,
        "the answer went silent past the idle timeout",
    )
}

/// An error and its causes, one line.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
