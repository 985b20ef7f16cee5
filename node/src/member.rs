//! The writing half of a room stream: the `Joined` frame, the history up to the point where
//! the member joined (read in pages), then the member's queue (live messages, acks and
//! errors) several frames per write, until the member leaves or is dropped as too slow.

use std::sync::Arc;

use chat_core::{Refusal, RoomName, Seq};
use chat_proto::io;
use chat_proto::{ErrorCode, ErrorFrame, Gap, NodeFrame, codes};
use quinn::SendStream;
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use crate::Shared;
use crate::mailbox::Outgoing;
use crate::reply::{encode, error_frame, message_frame};

/// History messages read from the store per batch when replaying.
const HISTORY_PAGE: usize = 512;
/// How long a finished stream waits for the client to acknowledge its last bytes.
const FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// Frames written to the stream in one call.
const WRITE_BATCH: usize = 64;

/// The writing half of a room stream.
pub(crate) struct Writer {
    shared: Arc<Shared>,
    room: RoomName,
    send: SendStream,
    /// The newest message this stream has written.
    last_written: Seq,
}

impl Writer {
    pub(crate) fn new(shared: Arc<Shared>, room: RoomName, send: SendStream) -> Self {
        Self { shared, room, send, last_written: 0 }
    }

    pub(crate) async fn run(
        mut self,
        after: Option<Seq>,
        history_until: Seq,
        queued: mpsc::Receiver<Outgoing>,
        eviction: watch::Receiver<Option<Seq>>,
    ) {
        let result = async {
            self.history(after, history_until).await?;
            self.live(queued, eviction).await
        };
        match result.await {
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

    /// Writes `Joined`, then the retained messages after `after` up to `until`.
    async fn history(&mut self, after: Option<Seq>, until: Seq) -> anyhow::Result<()> {
        if after.unwrap_or(0) >= until {
            // Nothing to replay: an empty room, a sender-only join, or a rejoin that missed
            // nothing.
            let joined =
                NodeFrame::Joined { room: self.room.to_string(), last_seq: until, gap: None };
            self.send.write_all(&encode(&joined)).await?;
            return Ok(());
        }
        let mut cursor = after;
        let mut first = true;
        loop {
            let (history, room) = (Arc::clone(&self.shared.history), self.room.clone());
            let page =
                tokio::task::spawn_blocking(move || history.read(&room, cursor, HISTORY_PAGE))
                    .await?;
            let page = match page {
                Ok(page) => page,
                Err(e) => {
                    warn!(room = %self.room, error = %e, "cannot read the history for a join");
                    let refusal = Refusal::HistoryUnreadable(e.to_string());
                    let frame = ErrorFrame { last_seq: cursor, ..error_frame(&refusal, None) };
                    self.send.write_all(&encode(&NodeFrame::Error(frame))).await?;
                    self.send.finish()?;
                    anyhow::bail!("history unavailable: {e}");
                }
            };
            let mut frames = Vec::with_capacity(page.messages.len() + 1);
            if first {
                let gap = page.gap.map(|(first, last)| Gap { first, last });
                frames.push(encode(&NodeFrame::Joined {
                    room: self.room.to_string(),
                    last_seq: until,
                    gap,
                }));
                first = false;
            }
            let full_page = page.messages.len() == HISTORY_PAGE;
            for stored in page.messages.into_iter().take_while(|s| s.seq <= until) {
                cursor = Some(stored.seq);
                self.last_written = stored.seq;
                frames.push(message_frame(self.room.as_str(), stored.seq, &stored.message));
            }
            self.send.write_chunk(io::concat(&mut frames)).await?;
            if !full_page || cursor.unwrap_or(0) >= until {
                return Ok(());
            }
        }
    }

    /// Drains the member's queue until every sender is gone, or the member is dropped.
    async fn live(
        &mut self,
        mut queued: mpsc::Receiver<Outgoing>,
        mut eviction: watch::Receiver<Option<Seq>>,
    ) -> anyhow::Result<()> {
        // Grown on first use: an idle member costs no buffers.
        let mut batch = Vec::new();
        let mut chunks = Vec::new();
        loop {
            tokio::select! {
                biased;
                _ = evicted(&mut eviction) => {
                    self.shared.metrics.dropped_too_slow.inc();
                    self.shared.metrics.error_code(ErrorCode::TooSlow);
                    let dropped = Refusal::TooSlow { room: self.room.to_string(), last_seq: self.last_written };
                    let frame = ErrorFrame { last_seq: Some(self.last_written), ..error_frame(&dropped, None) };
                    self.send.write_all(&encode(&NodeFrame::Error(frame))).await?;
                    self.send.finish()?;
                    let _ = self.send.stopped().await;
                    let _ = self.send.reset(codes::reset::TOO_SLOW.into());
                    anyhow::bail!("member dropped as too slow");
                }
                n = queued.recv_many(&mut batch, WRITE_BATCH) => {
                    if n == 0 {
                        return Ok(());
                    }
                    let mut messages = 0;
                    for item in batch.drain(..) {
                        chunks.push(match item {
                            Outgoing::Message(seq, frame) => {
                                self.last_written = seq;
                                messages += 1;
                                frame
                            }
                            Outgoing::Frame(frame) => frame,
                        });
                    }
                    self.shared.metrics.deliveries.inc_by(messages);
                    self.send.write_chunk(io::concat(&mut chunks)).await?;
                }
            }
        }
    }
}

/// Completes once the core drops the member for falling behind. The sender going away
/// (the member left the room) is not an eviction, so then this never completes.
pub(crate) async fn evicted(eviction: &mut watch::Receiver<Option<Seq>>) {
    let dropped = eviction.wait_for(Option::is_some).await.is_ok();
    if !dropped {
        std::future::pending::<()>().await;
    }
}
