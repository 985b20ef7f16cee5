//! The node's tiny HTTP/1.1 listener, for `/metrics` and for the browser page: one `GET`
//! per connection, a bounded request head, a deadline, a few requests at once, and TLS
//! where the listener has it.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::debug;

/// Longest request head read.
const MAX_REQUEST: usize = 8 * 1024;
/// Requests answered at once; more wait in the listener's backlog.
const AT_ONCE: usize = 8;
/// How long one request may take, from its first byte to the last of its answer.
const DEADLINE: Duration = Duration::from_secs(5);

/// An answer: its status line's code and text, its content type and its body.
pub(crate) struct Response {
    pub status: &'static str,
    pub content_type: &'static str,
    pub body: bytes::Bytes,
    /// `Cache-Control`: the page's assets may be kept, its session details never.
    pub cache: &'static str,
}

impl Response {
    pub(crate) fn ok(content_type: &'static str, body: impl Into<bytes::Bytes>) -> Self {
        Self { status: "200 OK", content_type, body: body.into(), cache: "no-store" }
    }

    pub(crate) fn not_found(hint: &'static str) -> Self {
        Self {
            status: "404 Not Found",
            content_type: "text/plain; charset=utf-8",
            body: bytes::Bytes::from_static(hint.as_bytes()),
            cache: "no-store",
        }
    }
}

/// What answers a `GET` for a path (the query string cut off).
pub(crate) type Handler = Arc<dyn Fn(&str) -> Response + Send + Sync>;

/// Answers requests on `listener` until the task is dropped, over TLS when `tls` is given.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    handler: Handler,
) {
    let turns = Arc::new(Semaphore::new(AT_ONCE));
    loop {
        let Ok(turn) = Arc::clone(&turns).acquire_owned().await else { return };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                debug!(error = %e, "http accept failed");
                continue;
            }
        };
        let (tls, handler) = (tls.clone(), Arc::clone(&handler));
        tokio::spawn(async move {
            let answered = tokio::time::timeout(DEADLINE, async {
                match tls {
                    Some(tls) => answer(tls.accept(stream).await?, &handler).await,
                    None => answer(stream, &handler).await,
                }
            });
            match answered.await {
                Ok(Err(e)) => debug!(error = %e, "http request failed"),
                Err(_) => debug!("http request timed out"),
                Ok(Ok(())) => {}
            }
            drop(turn);
        });
    }
}

/// Reads one request head and answers it.
async fn answer<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    handler: &Handler,
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() + n > MAX_REQUEST {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let response = match (parts.next(), parts.next().map(String::from_utf8_lossy)) {
        (Some(b"GET"), Some(target)) => handler(target.split('?').next().unwrap_or_default()),
        _ => Response {
            status: "405 Method Not Allowed",
            content_type: "text/plain; charset=utf-8",
            body: bytes::Bytes::from_static(b"only GET\n"),
            cache: "no-store",
        },
    };
    let head = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: {}\r\n\
         X-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n",
        response.status,
        response.content_type,
        response.body.len(),
        response.cache,
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(&response.body).await?;
    stream.shutdown().await
}
