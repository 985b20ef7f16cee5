//! The writing half of a room stream: the `Joined` frame, a page of the history up to the
//! point where the member joined and `HistoryEnd`, then the member's queue (live messages, acks and
//! errors) several frames per write, until the member leaves or is dropped as too slow.

use std::sync::Arc;
use std::task::Poll;

use chat_core::{Refusal, RoomName, Seq};
use chat_history::{Anchor, PageLimit};
use chat_proto::io;
use chat_proto::{ErrorCode, ErrorFrame, Gap, NodeFrame, PageEnds, codes};
use tokio::sync::{Notify, mpsc, watch};
use tracing::{debug, warn};
use web_transport_quinn::SendStream;

use crate::mailbox::{Ending, Outgoing};
use crate::reply::{encode, error_frame, message_frame};
use crate::{Conn, Shared};

/// How long a finished stream waits for the client to acknowledge its last bytes.
const FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// Frames taken from the member's queue at once.
const WRITE_BATCH: usize = 64;
/// The most bytes of frames copied together into one write: what a stream's write in
/// progress holds of its own, besides a page of history (whose room is counted in
/// `pages`) or a frame shared with the room.
const COPIED: usize = crate::pages::SHORT;

/// The writing half of a room stream.
pub(crate) struct Writer {
    shared: Arc<Shared>,
    conn: Arc<Conn>,
    room: RoomName,
    send: SendStream,
    /// Told whenever the writer has taken frames off the queue, and when it ends: the room
    /// reader waits on it while the queue is too full for the replies to its next send.
    drained: Arc<Notify>,
    /// The newest message this stream has written.
    last_written: Seq,
}

impl Writer {
    pub(crate) fn new(
        shared: Arc<Shared>,
        conn: Arc<Conn>,
        room: RoomName,
        send: SendStream,
        drained: Arc<Notify>,
    ) -> Self {
        Self { shared, conn, room, send, drained, last_written: 0 }
    }

    pub(crate) async fn run(
        mut self,
        after: Option<Seq>,
        limit: usize,
        history_until: Seq,
        queued: mpsc::Receiver<Outgoing>,
        eviction: watch::Receiver<Option<Ending>>,
    ) {
        let result = async {
            self.history(after, limit, history_until).await?;
            self.live(queued, eviction).await
        };
        let ended = result.await;
        self.drained.notify_one();
        match ended {
            Ok(()) => {
                // Wait for the client to have everything (the acks of a shutdown above all)
                // before the connection may be closed under it.
                if self.send.finish().is_ok() {
                    let _ = tokio::time::timeout(FLUSH_TIMEOUT, self.send.stopped()).await;
                }
            }
            Err(e) => debug!(room = %self.room, error = %e, "room stream ended"),
        }
    }

    /// Writes `Joined`, a page of history up to `until` (the first `limit` messages after
    /// `after`, or the newest `limit`) and `HistoryEnd`, in one write.
    async fn history(
        &mut self,
        after: Option<Seq>,
        limit: usize,
        until: Seq,
    ) -> anyhow::Result<()> {
        let anchor = match after {
            Some(after) => Anchor::After(after),
            None => Anchor::Before(until.saturating_add(1)),
        };
        let limit = PageLimit { messages: limit, bytes: chat_core::PAGE_BYTES };
        let mut page_room = self.shared.pages.reserve(&self.conn.pages).await;
        let (history, room) = (Arc::clone(&self.shared.history), self.room.clone());
        let page = tokio::task::spawn_blocking(move || history.page(&room, anchor, limit)).await?;
        let page = match page {
            Ok(page) => page,
            Err(e) => {
                warn!(room = %self.room, error = %e, "cannot read the history for a join");
                let refusal = Refusal::HistoryUnreadable(e.to_string());
                let frame = ErrorFrame { last_seq: after, ..error_frame(&refusal, None) };
                self.write(encode(&NodeFrame::Error(frame))).await?;
                self.send.finish()?;
                anyhow::bail!("history unavailable: {e}");
            }
        };
        let gap = page.gap.map(|(first, last)| Gap { first, last });
        let topic = self.shared.core().topic(&self.room);
        let joined = NodeFrame::Joined { room: self.room.to_string(), last_seq: until, gap, topic };
        let mut frames = Vec::with_capacity(page.messages.len() + 2);
        frames.push(encode(&joined));
        // Later messages come through the member's queue.
        for stored in page.messages.iter().take_while(|s| s.seq <= until) {
            self.last_written = stored.seq;
            frames.push(message_frame(self.room.as_str(), stored.seq, &stored.message));
        }
        // Where the history sent reaches: its newest message, or where the client was.
        let reached = self.last_written.max(after.unwrap_or(0));
        let ends = PageEnds {
            more_before: page.more_before,
            more_after: page.more_after && reached < until,
            first_seq: page.first_seq,
        };
        frames.push(encode(&NodeFrame::HistoryEnd(ends)));
        let written = io::concat(&mut frames);
        page_room.fit(written.len());
        self.write(written).await
    }

    /// Drains the member's queue until every sender is gone, or the member is dropped.
    async fn live(
        &mut self,
        mut queued: mpsc::Receiver<Outgoing>,
        mut eviction: watch::Receiver<Option<Ending>>,
    ) -> anyhow::Result<()> {
        // Grown on first use: an idle member costs no buffers.
        let mut batch = Vec::new();
        let mut chunks = Vec::new();
        // Made once, not once a batch: it registers with the watch when polled.
        let evicted = evicted(&mut eviction);
        tokio::pin!(evicted);
        loop {
            tokio::select! {
                biased;
                ending = &mut evicted => {
                    if let Ending::Removed(frame) = ending {
                        self.write(frame).await?;
                        self.send.finish()?;
                        let _ = tokio::time::timeout(FLUSH_TIMEOUT, self.send.stopped()).await;
                        anyhow::bail!("member removed by an operator");
                    }
                    self.shared.metrics.dropped_too_slow.inc();
                    self.shared.metrics.error_code(ErrorCode::TooSlow);
                    let dropped = Refusal::TooSlow { room: self.room.to_string(), last_seq: self.last_written };
                    let frame = ErrorFrame { last_seq: Some(self.last_written), ..error_frame(&dropped, None) };
                    self.write(encode(&NodeFrame::Error(frame))).await?;
                    self.send.finish()?;
                    let _ = tokio::time::timeout(FLUSH_TIMEOUT, self.send.stopped()).await;
                    let _ = self.send.reset(codes::reset::TOO_SLOW);
                    anyhow::bail!("member dropped as too slow");
                }
                n = queued.recv_many(&mut batch, WRITE_BATCH) => {
                    if n == 0 {
                        return Ok(());
                    }
                    let mut messages = 0;
                    // Given back once their pages are written.
                    let mut page_rooms = Vec::new();
                    let mut joined = 0;
                    for item in batch.drain(..) {
                        let frame = match item {
                            Outgoing::Message(seq, frame) => {
                                self.last_written = seq;
                                messages += 1;
                                frame
                            }
                            Outgoing::Frame(frame) => frame,
                            Outgoing::Page(page) => {
                                let (frame, room) = *page;
                                page_rooms.push(room);
                                frame
                            }
                        };
                        // Small frames are copied into one write, up to `COPIED`; a long
                        // one goes as it is.
                        if !chunks.is_empty() && joined + frame.len() > COPIED {
                            self.write(io::concat(&mut chunks)).await?;
                            joined = 0;
                        }
                        joined += frame.len();
                        chunks.push(frame);
                    }
                    self.drained.notify_one();
                    self.shared.metrics.deliveries.inc_by(messages);
                    self.write(io::concat(&mut chunks)).await?;
                    drop(page_rooms);
                }
            }
        }
    }
}

impl Writer {
    /// Writes `bytes`, or resets the stream if the client lets the write make no progress
    /// for `write_timeout` (it does not read): a stalled stream holds its buffers and task
    /// for that long at most.
    async fn write(&mut self, bytes: bytes::Bytes) -> anyhow::Result<()> {
        let timeout = self.shared.config.write_timeout;
        let stalled = {
            let mut write = std::pin::pin!(self.send.write_chunk(bytes));
            // Most writes find room at once: only one that waits arms the timer.
            let first = std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await;
            match first {
                Poll::Ready(written) => return Ok(written?),
                Poll::Pending => tokio::time::timeout(timeout, write).await,
            }
        };
        match stalled {
            Ok(written) => Ok(written?),
            Err(_) => {
                self.shared.metrics.error("write_timeout");
                let _ = self.send.reset(codes::reset::TOO_SLOW);
                anyhow::bail!("the client read nothing for {timeout:?}; the stream was reset")
            }
        }
    }
}

/// Completes once the core drops the member for falling behind or an operator removes it,
/// with why. The sender going away (the member left the room) is not an eviction, so then
/// this never completes.
pub(crate) async fn evicted(eviction: &mut watch::Receiver<Option<Ending>>) -> Ending {
    let ending = eviction.wait_for(Option::is_some).await.ok().and_then(|e| e.clone());
    match ending {
        Some(ending) => ending,
        None => std::future::pending().await,
    }
}
