//! Frames over any tokio byte stream (a QUIC stream in the node and the client).

use bytes::BytesMut;
use serde::{Serialize, de::DeserializeOwned};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::codec::{self, FrameError};

/// Reads frames from one stream, keeping the bytes that arrived past the last frame.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    max_len: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R, max_len: usize) -> Self {
        Self {
            inner,
            buf: BytesMut::with_capacity(256),
            max_len,
        }
    }

    /// The next frame; `Ok(None)` when the peer finished the stream cleanly between frames.
    ///
    /// Cancel-safe: bytes read before a cancellation stay in the buffer.
    ///
    /// # Errors
    /// A frame over the limit, an undecodable one, a stream that ends inside a frame, or the
    /// transport's error.
    pub async fn read<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        loop {
            if let Some(frame) = codec::decode(&mut self.buf, self.max_len)? {
                return Ok(Some(frame));
            }
            if let Some(len) = codec::peek_len(&self.buf, self.max_len)? {
                // The prefix passed the limit check: reserving the whole body is now safe.
                self.buf.reserve(codec::PREFIX_LEN + len - self.buf.len());
            }
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(FrameError::Truncated)
                };
            }
        }
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }
}

/// Encodes and writes one frame.
///
/// # Errors
/// A frame over `max_len`, or the transport's error.
pub async fn write_frame<W: AsyncWrite + Unpin, T: Serialize>(
    out: &mut W,
    frame: &T,
    max_len: usize,
) -> Result<(), FrameError> {
    let bytes = codec::encode(frame, max_len)?;
    out.write_all(&bytes).await?;
    Ok(())
}
