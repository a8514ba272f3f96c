//! Answers to requests hyper cannot parse, in the gateway's OpenAI error shape (as
//! gateway/client-errors.ts does for node:http): hyper itself answers a malformed request with a
//! bare `400` and headers over the limit with a bare `431` (`content-length: 0`, no content type),
//! then closes. This socket wrapper recognises that answer among the bytes hyper writes and
//! writes the shaped one in its place. Every other answer the front writes has a content type
//! (its own JSON errors, the JS gateway's) or kvroute's headers (a worker's answer), so none is
//! mistaken for it.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub struct ShapedErrors<T> {
    inner: T,
    /// A shaped answer, and how much of it is written.
    pending: Option<(Vec<u8>, usize)>,
}

impl<T> ShapedErrors<T> {
    pub fn new(inner: T) -> Self {
        ShapedErrors {
            inner,
            pending: None,
        }
    }
}

/// The shaped replacement of hyper's own error answer, if `buf` is one.
fn replacement(buf: &[u8]) -> Option<Vec<u8>> {
    let (status, reason, code, message) = if buf.starts_with(b"HTTP/1.1 400 ") {
        (
            400,
            "Bad Request",
            "KVR_BAD_REQUEST",
            "Malformed HTTP request",
        )
    } else if buf.starts_with(b"HTTP/1.1 431 ") || buf.starts_with(b"HTTP/1.1 414 ") {
        (
            431,
            "Request Header Fields Too Large",
            "KVR_HEADERS_TOO_LARGE",
            "The request's headers are too large",
        )
    } else {
        return None;
    };
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = buf[..end].to_ascii_lowercase();
    let has = |needle: &[u8]| head.windows(needle.len()).any(|w| w == needle);
    let ours = has(b"\r\ncontent-type:") || has(b"\r\nx-kvroute-");
    if ours || !has(b"\r\ncontent-length: 0") || buf.len() != end + 4 {
        return None;
    }
    let kind = if status == 400 {
        "BadRequestError"
    } else {
        "RequestHeaderFieldsTooLargeError"
    };
    let body = serde_json::json!({
        "error": { "message": message, "type": kind, "param": null, "code": code }
    })
    .to_string();
    Some(
        format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

impl<T: AsyncWrite + Unpin> ShapedErrors<T> {
    /// Writes what is left of a shaped answer.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, at)) = &mut self.pending {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*at..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *at += n;
            if *at == bytes.len() {
                self.pending = None;
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ShapedErrors<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ShapedErrors<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_pending(cx))?;
        if let Some(shaped) = replacement(buf) {
            self.pending = Some((shaped, 0));
            // hyper's bytes count as written; the shaped ones go out in their place.
            let _ = self.poll_pending(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    // hyper then writes each answer through `poll_write` in one piece (head and body flattened),
    // which is what `replacement` needs to see.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_only_hypers_bare_answers() {
        let bare = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let shaped = String::from_utf8(replacement(bare).unwrap()).unwrap();
        assert!(shaped.starts_with("HTTP/1.1 400 Bad Request\r\ncontent-type: application/json"));
        assert!(shaped.contains("\"code\":\"KVR_BAD_REQUEST\""));
        let big = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n";
        assert!(String::from_utf8(replacement(big).unwrap())
            .unwrap()
            .contains("KVR_HEADERS_TOO_LARGE"));
        // Answers with a type or a body are someone's own.
        assert!(replacement(b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 0\r\n\r\n").is_none());
        assert!(replacement(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\n{}").is_none());
        assert!(replacement(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_none());
        assert!(replacement(
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nx-kvroute-worker: w\r\n\r\n"
        )
        .is_none());
    }
}
