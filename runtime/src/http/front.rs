//! JSON bodies for the errors actix-http's HTTP/1 dispatcher answers by itself (finding 14).
//!
//! A request the dispatcher cannot parse never reaches the application: a bad request line or
//! a bad `Content-Length` gets `400` with an empty body, more than 96 headers or a head over
//! 128 KiB gets `431` (and then the socket is closed with the rest of the request unread, so
//! the kernel resets the connection and the client usually never sees the 431), and a head that
//! does not arrive within 5 s gets `408`. actix-http offers no hook for these responses
//! (`h1::Dispatcher` builds them inline), so instead of forking it the server wraps every
//! connection in [`JsonErrors`]: if the first bytes the server writes on a connection are a
//! response head that the application cannot have produced — status 400, 408, 431 or 500
//! with `content-length: 0` (every error the API itself answers carries a JSON body) — it
//! replaces that head with the same status, a JSON error body and `connection: close`. Only
//! the first write is examined: later writes may be response bodies (a stored value could
//! look like an error head), and telling heads from bodies would mean re-parsing every
//! response. A connection that carried such a
//! response is closed gracefully when the dispatcher drops it: the replacement is written, the
//! write side shut down, and what the client still sends is read and discarded for up to
//! [`LINGER`] (at most [`LINGER_BYTES`]), so the client reads the answer instead of a reset.
//!
//! What remains: a malformed request that arrives on a keep-alive connection after complete
//! ones keeps actix's empty-bodied error (the status is right; only the JSON body is missing).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// How long a connection closed after a protocol error keeps draining what the client sends.
pub const LINGER: Duration = Duration::from_secs(1);
/// The most bytes drained in that time.
pub const LINGER_BYTES: usize = 1024 * 1024;

/// A connection whose protocol-level error responses are rewritten as JSON.
pub struct JsonErrors<T: AsyncRead + AsyncWrite + Unpin + 'static> {
    /// `None` once handed to the lingering close.
    inner: Option<T>,
    /// Replacement bytes not yet written.
    pending: Vec<u8>,
    written: usize,
    /// Whether a protocol error was answered (the connection then closes gracefully on drop).
    rewrote: bool,
    /// Nothing has been written yet: the next write starts the first response head.
    fresh: bool,
}

impl<T: AsyncRead + AsyncWrite + Unpin + 'static> JsonErrors<T> {
    /// Wraps a fresh connection.
    pub fn new(inner: T) -> Self {
        JsonErrors {
            inner: Some(inner),
            pending: Vec::new(),
            written: 0,
            rewrote: false,
            fresh: true,
        }
    }
}

/// The JSON `(code, message)` of a protocol-level error status.
fn describe(status: &[u8]) -> Option<(&'static str, &'static str, &'static str)> {
    Some(match status {
        b"400" => (
            "Bad Request",
            "bad_request",
            "the request is not valid HTTP/1.1 (request line, header syntax or Content-Length)",
        ),
        b"408" => (
            "Request Timeout",
            "request_timeout",
            "the request head did not arrive in time",
        ),
        b"431" => (
            "Request Header Fields Too Large",
            "headers_too_large",
            "the request head is too large (at most 96 headers and 128 KiB)",
        ),
        b"500" => (
            "Internal Server Error",
            "internal",
            "the server failed to handle the connection",
        ),
        _ => return None,
    })
}

/// If `buf` starts with a dispatcher-made error head (see the module doc), its length and the
/// JSON response that replaces it.
pub(crate) fn rewrite(buf: &[u8]) -> Option<(usize, Vec<u8>)> {
    if buf.len() < 12 || !(buf.starts_with(b"HTTP/1.1 ") || buf.starts_with(b"HTTP/1.0 ")) {
        return None;
    }
    let (reason, code, message) = describe(&buf[9..12])?;
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = &buf[..end];
    let mut empty = false;
    let mut date = None;
    for line in head.split(|b| *b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let name = line[..colon].to_ascii_lowercase();
        let value = line[colon + 1..].trim_ascii();
        if name == b"content-length" {
            empty = value == b"0";
        } else if name == b"date" {
            date = Some(value.to_vec());
        }
    }
    if !empty {
        return None;
    }
    let body = serde_json::json!({ "error": { "code": code, "message": message } }).to_string();
    let mut out = Vec::with_capacity(200 + body.len());
    out.extend_from_slice(&buf[..9]);
    out.extend_from_slice(&buf[9..12]);
    out.extend_from_slice(format!(" {reason}\r\ncontent-type: application/json\r\n").as_bytes());
    out.extend_from_slice(
        format!("content-length: {}\r\nconnection: close\r\n", body.len()).as_bytes(),
    );
    if let Some(d) = date {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(&d);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
    Some((end, out))
}

impl<T: AsyncRead + AsyncWrite + Unpin + 'static> JsonErrors<T> {
    /// Writes what is left of a replacement.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        while self.written < self.pending.len() {
            let n = std::task::ready!(
                Pin::new(&mut *inner).poll_write(cx, &self.pending[self.written..])
            )?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.pending.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin + 'static> AsyncRead for JsonErrors<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut().inner.as_mut() {
            Some(inner) => Pin::new(inner).poll_read(cx, buf),
            None => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin + 'static> AsyncWrite for JsonErrors<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_pending(cx))?;
        let first = std::mem::replace(&mut this.fresh, false);
        if let Some((consumed, replacement)) = rewrite(buf).filter(|_| first) {
            this.pending = replacement;
            this.written = 0;
            this.rewrote = true;
            // Start writing now; the rest goes out on the next write, flush or shutdown.
            if let Poll::Ready(Err(e)) = this.poll_pending(cx) {
                return Poll::Ready(Err(e));
            }
            return Poll::Ready(Ok(consumed));
        }
        match this.inner.as_mut() {
            Some(inner) => Pin::new(inner).poll_write(cx, buf),
            None => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_pending(cx))?;
        match this.inner.as_mut() {
            Some(inner) => Pin::new(inner).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_pending(cx))?;
        match this.inner.as_mut() {
            Some(inner) => Pin::new(inner).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

impl<T> Drop for JsonErrors<T>
where
    T: AsyncRead + AsyncWrite + Unpin + 'static,
{
    fn drop(&mut self) {
        if !self.rewrote {
            return;
        }
        let Some(mut inner) = self.inner.take() else {
            return;
        };
        let pending = std::mem::take(&mut self.pending).split_off(self.written);
        // Dropped outside a runtime (never in the server): close at once.
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        actix_web::rt::spawn(async move {
            let _ = actix_web::rt::time::timeout(LINGER, async {
                if !pending.is_empty() && inner.write_all(&pending).await.is_err() {
                    return;
                }
                if inner.shutdown().await.is_err() {
                    return;
                }
                let mut scratch = vec![0u8; 16 * 1024];
                let mut drained = 0;
                while drained < LINGER_BYTES {
                    match inner.read(&mut scratch).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => drained += n,
                    }
                }
            })
            .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finding14_dispatcher_error_heads_become_json() {
        let head = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Sun, 06 Dec 2026 10:00:00 GMT\r\n\r\n";
        let (n, out) = rewrite(head).unwrap();
        assert_eq!(n, head.len());
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{text}"
        );
        assert!(text.contains("connection: close\r\n"), "{text}");
        assert!(
            text.contains("date: Sun, 06 Dec 2026 10:00:00 GMT\r\n"),
            "{text}"
        );
        let body = text.split("\r\n\r\n").nth(1).unwrap();
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "headers_too_large");
        assert!(text.contains(&format!("content-length: {}\r\n", body.len())));
        // Followed by more bytes: only the head is consumed.
        let mut more = head.to_vec();
        more.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        assert_eq!(rewrite(&more).unwrap().0, head.len());
        assert_eq!(
            rewrite(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n").map(|(n, _)| n),
            Some(47)
        );
    }

    #[test]
    fn application_responses_are_left_alone() {
        for head in [
            // The API's own errors have JSON bodies.
            &b"HTTP/1.1 400 Bad Request\r\ncontent-length: 52\r\n\r\n{}"[..],
            // Other statuses, even empty.
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
            // An incomplete head.
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n",
            b"HTTP/1.1 400",
        ] {
            assert!(rewrite(head).is_none(), "{}", String::from_utf8_lossy(head));
        }
    }
}
