//! Frames over any tokio byte stream (a QUIC stream in the node and the client).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use serde::{Serialize, de::DeserializeOwned};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Duration, Instant};

use crate::codec::{self, FrameError};

/// Reads frames from one stream, keeping the bytes that arrived past the last frame.
///
/// A frame over the limit is reported as [`FrameError::TooLong`] and then skipped without
/// being buffered, so the stream stays usable; one so large that skipping it would take more
/// than [`MAX_SKIP`] bytes is reported and the stream should be abandoned.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    max_len: usize,
    /// Bytes of an oversized frame still to be discarded.
    skip: usize,
    /// The first bytes of the last oversized frame, for a caller that wants to say which
    /// request it refused.
    oversized_head: Vec<u8>,
    /// How long a frame may take from its first byte to its last, if that is bounded.
    deadline: Option<Duration>,
    /// When the frame in progress (the bytes buffered, or being skipped) began arriving.
    started: Option<Instant>,
    /// Budgets, in bytes, that a frame longer than [`UNBUDGETED`] takes its announced length
    /// from before it is read further (a connection's, the node's): see
    /// [`FrameReader::with_budgets`].
    budgets: Vec<Arc<Semaphore>>,
    /// What the frame in progress took from them.
    taken: Vec<OwnedSemaphorePermit>,
}

/// Frames up to this long are read without a budget: the common case pays nothing.
pub const UNBUDGETED: usize = 8 << 10;

/// How much of an oversized frame is kept in [`FrameReader::oversized_head`].
pub const HEAD_LEN: usize = 16;

/// Most bytes of one oversized frame a reader discards to stay in step.
pub const MAX_SKIP: usize = 16 << 20;

/// The least a reader grows its buffer by for a frame still arriving.
const GROWTH: usize = 8 << 10;

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R, max_len: usize) -> Self {
        Self {
            inner,
            buf: BytesMut::with_capacity(256),
            max_len,
            skip: 0,
            oversized_head: Vec::new(),
            deadline: None,
            started: None,
            budgets: Vec::new(),
            taken: Vec::new(),
        }
    }

    /// This reader, taking the announced length of each frame longer than [`UNBUDGETED`]
    /// from every one of `budgets` (semaphores counting bytes) before it reads on, and giving
    /// it back once the frame is whole. A frame waits for its budget (its bytes stay in the
    /// transport, whose flow control stops the peer), within the frame deadline. So frames
    /// in progress of all the streams sharing a budget hold at most that many bytes. A whole
    /// frame is taken at once, so that two half-taken frames never wait on each other.
    ///
    /// Each budget must hold at least the reader's `max_len`.
    #[must_use]
    pub fn with_budgets(self, budgets: Vec<Arc<Semaphore>>) -> Self {
        Self { budgets, ..self }
    }

    /// This reader, failing with [`FrameError::Stalled`] a frame that has not arrived whole
    /// within `deadline` of its first byte: a peer that starts frames and never ends them
    /// holds its buffer and task that long at most. Between frames it waits as long as the
    /// stream lasts.
    #[must_use]
    pub fn with_frame_deadline(self, deadline: Duration) -> Self {
        Self { deadline: Some(deadline), ..self }
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
            let skipped = self.skip.min(self.buf.len());
            let _ = self.buf.split_to(skipped);
            self.skip -= skipped;
            if self.skip == 0 {
                match codec::decode(&mut self.buf, self.max_len) {
                    Ok(Some(frame)) => {
                        self.taken.clear();
                        // What is left (if anything) is the next frame's start, just arrived.
                        self.started = (!self.buf.is_empty()).then(Instant::now);
                        return Ok(Some(frame));
                    }
                    Ok(None) => {}
                    Err(FrameError::TooLong { len, max }) if len <= MAX_SKIP => {
                        let head = len.min(HEAD_LEN);
                        if self.buf.len() >= codec::PREFIX_LEN + head {
                            let _ = self.buf.split_to(codec::PREFIX_LEN);
                            self.oversized_head = self.buf[..head].to_vec();
                            self.skip = len;
                            return Err(FrameError::TooLong { len, max });
                        }
                    }
                    Err(e) => return Err(e),
                }
                if let Ok(Some(len)) = codec::peek_len(&self.buf, self.max_len) {
                    if len > UNBUDGETED && self.taken.len() < self.budgets.len() {
                        self.take_budget(len).await?;
                    }
                    // Room for the rest of the frame, grown with what arrives (at most
                    // doubling what is buffered): a peer that announces a long frame and
                    // sends little of it makes the reader hold little.
                    let rest = codec::PREFIX_LEN + len - self.buf.len();
                    self.buf.reserve(rest.min(self.buf.len().max(GROWTH)));
                }
            }
            let in_progress = !self.buf.is_empty() || self.skip > 0;
            let read = match (self.deadline, in_progress) {
                (Some(deadline), true) => {
                    let started = *self.started.get_or_insert_with(Instant::now);
                    tokio::time::timeout_at(started + deadline, self.inner.read_buf(&mut self.buf))
                        .await
                        .map_err(|_| FrameError::Stalled(deadline))??
                }
                _ => {
                    let read = self.inner.read_buf(&mut self.buf).await?;
                    self.started = Some(Instant::now());
                    read
                }
            };
            if read == 0 {
                return if self.buf.is_empty() && self.skip == 0 {
                    Ok(None)
                } else {
                    Err(FrameError::Truncated)
                };
            }
        }
    }

    /// Takes `len` bytes from each budget not taken from yet, within the frame deadline.
    async fn take_budget(&mut self, len: usize) -> Result<(), FrameError> {
        let permits = u32::try_from(len).unwrap_or(u32::MAX);
        while let Some(budget) = self.budgets.get(self.taken.len()) {
            let take = Arc::clone(budget).acquire_many_owned(permits);
            let permit = match self.deadline {
                Some(deadline) => {
                    let started = *self.started.get_or_insert_with(Instant::now);
                    tokio::time::timeout_at(started + deadline, take)
                        .await
                        .map_err(|_| FrameError::Stalled(deadline))?
                }
                None => take.await,
            };
            // A budget is never closed; one that were would read on unbudgeted.
            match permit {
                Ok(permit) => self.taken.push(permit),
                Err(_) => return Ok(()),
            }
        }
        Ok(())
    }

    /// The stream it reads, for what a frame reader does not do (a QUIC stream's reset).
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// The first bytes (up to [`HEAD_LEN`]) of the last frame refused as too long.
    pub fn oversized_head(&self) -> &[u8] {
        &self.oversized_head
    }

    /// Whether the reader can go on after `error`, at the start of the next frame: after an
    /// undecodable frame (which was taken off whole) or an oversized one it is skipping.
    pub fn in_step(&self, error: &FrameError) -> bool {
        match error {
            FrameError::Malformed(_) => true,
            FrameError::TooLong { len, .. } => *len <= MAX_SKIP,
            FrameError::Truncated | FrameError::Stalled(_) | FrameError::Io(_) => false,
        }
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

/// The frames of `batch`, drained, as one buffer: a single frame as it is, several copied
/// together. A QUIC stream (quinn's send buffer) finds data by walking its unacknowledged
/// chunks, so thousands of small frames in flight cost far more than copying them once.
pub fn concat(batch: &mut Vec<Bytes>) -> Bytes {
    if batch.len() == 1 {
        return batch.pop().unwrap_or_default();
    }
    let mut joined = BytesMut::with_capacity(batch.iter().map(Bytes::len).sum());
    for frame in batch.drain(..) {
        joined.extend_from_slice(&frame);
    }
    joined.freeze()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::ClientFrame;

    /// Two streams sharing a budget of one long frame: the second long frame waits, unread,
    /// until the first is whole; short frames never wait.
    #[tokio::test]
    async fn long_frames_in_progress_share_their_budget_and_short_ones_pass() {
        let max = 64 << 10;
        let budget = Arc::new(Semaphore::new(max + codec::PREFIX_LEN));
        let long =
            codec::encode(&ClientFrame::Who { room: "x".repeat(40 << 10) }, max).expect("ok");
        let short = codec::encode(&ClientFrame::ListRooms, max).expect("encodes");
        let (mut peer_a, a) = tokio::io::duplex(1 << 20);
        let (mut peer_b, b) = tokio::io::duplex(1 << 20);
        let mut a = FrameReader::new(a, max).with_budgets(vec![Arc::clone(&budget)]);
        let mut b = FrameReader::new(b, max).with_budgets(vec![Arc::clone(&budget)]);
        peer_a.write_all(&long[..long.len() / 2]).await.expect("half of a's");
        peer_b.write_all(&long).await.expect("all of b's");
        let a_read = tokio::time::timeout(Duration::from_millis(50), a.read::<ClientFrame>()).await;
        assert!(a_read.is_err(), "a's frame is not whole");
        let b_read = tokio::time::timeout(Duration::from_millis(50), b.read::<ClientFrame>()).await;
        assert!(b_read.is_err(), "b's waits for the budget a holds");
        peer_a.write_all(&long[long.len() / 2..]).await.expect("the rest of a's");
        peer_a.write_all(&short).await.expect("a short one");
        assert!(matches!(a.read::<ClientFrame>().await, Ok(Some(ClientFrame::Who { .. }))));
        assert_eq!(a.read::<ClientFrame>().await.expect("reads"), Some(ClientFrame::ListRooms));
        assert!(matches!(b.read::<ClientFrame>().await, Ok(Some(ClientFrame::Who { .. }))));
        assert_eq!(budget.available_permits(), max + codec::PREFIX_LEN, "all given back");
    }

    /// With a frame deadline, a stream quiet between frames waits on, and a frame begun and
    /// not finished in time is given up.
    #[tokio::test]
    async fn a_frame_that_stops_arriving_misses_its_deadline_and_a_quiet_stream_does_not() {
        let (mut peer, ours) = tokio::io::duplex(1024);
        let deadline = Duration::from_millis(50);
        let mut reader = FrameReader::new(ours, 1024).with_frame_deadline(deadline);
        let quiet = tokio::time::timeout(deadline * 4, reader.read::<ClientFrame>()).await;
        assert!(quiet.is_err(), "no frame begun: nothing to give up");
        let frame = codec::encode(&ClientFrame::ListRooms, 1024).expect("encodes");
        let who = codec::encode(&ClientFrame::Who { room: "general".into() }, 1024).expect("ok");
        let mut bytes = frame.to_vec();
        bytes.extend_from_slice(&who[..3]);
        peer.write_all(&bytes).await.expect("written");
        assert_eq!(
            reader.read::<ClientFrame>().await.expect("reads"),
            Some(ClientFrame::ListRooms)
        );
        let stalled = reader.read::<ClientFrame>().await;
        assert!(matches!(stalled, Err(FrameError::Stalled(d)) if d == deadline), "{stalled:?}");
    }

    /// A frame announced at the 1 MiB limit of which 10 bytes arrive: the reader holds
    /// kilobytes, not the megabyte; the whole frame, once it comes, is read.
    #[tokio::test]
    async fn a_frame_still_arriving_is_buffered_as_it_arrives() {
        let (mut peer, ours) = tokio::io::duplex(64 << 10);
        let mut reader = FrameReader::new(ours, 1 << 20);
        let body = "x".repeat((1 << 20) - 64);
        let frame = codec::encode(&ClientFrame::Send { client_id: 1, body: body.clone() }, 1 << 20)
            .expect("encodes");
        peer.write_all(&frame[..14]).await.expect("written");
        let pending =
            tokio::time::timeout(Duration::from_millis(20), reader.read::<ClientFrame>()).await;
        assert!(pending.is_err(), "the frame is not all there");
        assert!(reader.buf.capacity() <= 64 << 10, "holds {} bytes", reader.buf.capacity());

        let writing = tokio::spawn(async move { peer.write_all(&frame[14..]).await });
        let read = reader.read::<ClientFrame>().await.expect("reads");
        assert_eq!(read, Some(ClientFrame::Send { client_id: 1, body }));
        writing.await.expect("task").expect("written");
    }

    #[test]
    fn concat_joins_a_batch_in_order_and_leaves_it_empty() {
        let mut batch = vec![Bytes::from_static(b"ab"), Bytes::from_static(b"c")];
        assert_eq!(concat(&mut batch), Bytes::from_static(b"abc"));
        assert!(batch.is_empty());
        let one = Bytes::from_static(b"xyz");
        let mut batch = vec![one.clone()];
        assert_eq!(concat(&mut batch).as_ptr(), one.as_ptr(), "a lone frame is not copied");
        assert!(concat(&mut batch).is_empty());
    }

    #[tokio::test]
    async fn an_oversized_frame_is_reported_then_skipped() {
        let big = ClientFrame::Send { client_id: 1, body: "x".repeat(5000) };
        let small = ClientFrame::Send { client_id: 2, body: "ok".into() };
        let mut wire = Vec::new();
        wire.extend_from_slice(&codec::encode(&big, 1 << 20).expect("encodes"));
        wire.extend_from_slice(&codec::encode(&small, 1 << 20).expect("encodes"));
        let mut reader = FrameReader::new(&wire[..], 100);
        let err = reader.read::<ClientFrame>().await.expect_err("too long");
        assert!(reader.in_step(&err));
        assert_eq!(reader.read::<ClientFrame>().await.expect("decodes"), Some(small));
        assert_eq!(reader.read::<ClientFrame>().await.expect("clean end"), None);
    }

    #[tokio::test]
    async fn an_undecodable_frame_is_reported_and_the_next_one_read() {
        let mut wire = vec![0, 0, 0, 2, 0xff, 0xff];
        wire.extend_from_slice(&codec::encode(&ClientFrame::ListRooms, 100).expect("encodes"));
        let mut reader = FrameReader::new(&wire[..], 100);
        let err = reader.read::<ClientFrame>().await.expect_err("garbage");
        assert!(matches!(err, FrameError::Malformed(_)) && reader.in_step(&err));
        assert_eq!(
            reader.read::<ClientFrame>().await.expect("decodes"),
            Some(ClientFrame::ListRooms)
        );
    }

    #[tokio::test]
    async fn a_stream_cut_inside_a_frame_is_truncated() {
        let frame = codec::encode(&ClientFrame::ListRooms, 100).expect("encodes");
        let mut wire = frame.to_vec();
        wire.extend_from_slice(&[0, 0, 0, 9, 1]);
        let mut reader = FrameReader::new(&wire[..], 100);
        assert_eq!(
            reader.read::<ClientFrame>().await.expect("first"),
            Some(ClientFrame::ListRooms)
        );
        assert!(matches!(reader.read::<ClientFrame>().await, Err(FrameError::Truncated)));
    }
}
