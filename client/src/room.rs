//! [`Room`]: one joined room on its own stream.
//!
//! A task reads the room stream: messages become [`RoomEvent`]s on a bounded channel, acks
//! and per-send errors resolve the matching send. If the program stops reading events the
//! channel fills, the task stops reading the stream, and the node eventually drops the
//! member as too slow; nothing grows without bound.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use chat_proto::io::{FrameReader, write_frame};
use chat_proto::{
    ChatMessage, ClientFrame, ErrorCode, ErrorFrame, Gap, Limits, NodeFrame, Seq, codec,
};
use quinn::{RecvStream, SendStream};
use tokio::sync::{mpsc, oneshot};

use crate::{Client, ClientError, ConnectOptions, Pace};

/// Events buffered for a room before the reader pauses.
const EVENT_BUFFER: usize = 1024;

/// How often [`RoomSender::send`] sends a message again that the node found too fast.
pub const SLOW_DOWN_RETRIES: usize = 3;

/// What happens in a joined room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomEvent {
    /// A message. `history` is true for those that were in the room before the join.
    Message { message: ChatMessage, history: bool },
    /// The node ended the membership with this error (for example [`ErrorCode::TooSlow`],
    /// whose `last_seq` says where to rejoin).
    Error(ErrorFrame),
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Seq, ClientError>>>>>;

/// A joined room: its events, and a sender for posting to it.
pub struct Room {
    name: String,
    history_until: Seq,
    gap: Option<Gap>,
    events: mpsc::Receiver<RoomEvent>,
    sender: RoomSender,
    last_seen: Arc<AtomicU64>,
}

/// Posts messages to a room. Cheap to clone; sends from several tasks may be in flight at
/// once.
#[derive(Clone)]
pub struct RoomSender {
    room: String,
    stream: Arc<tokio::sync::Mutex<SendStream>>,
    pending: Pending,
    next_id: Arc<AtomicU64>,
    limits: Limits,
    pace: Pace,
    connection: quinn::Connection,
    options: Arc<ConnectOptions>,
}

impl Room {
    pub(crate) async fn open(
        client: &Client,
        room: &str,
        after: Option<Seq>,
        mut send: SendStream,
        recv: RecvStream,
    ) -> Result<Self, ClientError> {
        let (connection, options) = (&client.connection, &client.options);
        let join = ClientFrame::Join { room: room.to_owned(), after };
        write_frame(&mut send, &join, codec::MAX_NODE_FRAME_LEN)
            .await
            .map_err(|e| ClientError::lost(connection, e, options))?;
        let mut reader = FrameReader::new(recv, codec::MAX_NODE_FRAME_LEN);
        let (name, history_until, gap) = match reader.read::<NodeFrame>().await {
            Ok(Some(NodeFrame::Joined { room, last_seq, gap })) => (room, last_seq, gap),
            Ok(Some(NodeFrame::Error(error))) => return Err(ClientError::from_frame(error)),
            Ok(Some(other)) => {
                return Err(ClientError::Protocol(format!("expected joined, got {other:?}")));
            }
            Ok(None) => {
                return Err(ClientError::lost(connection, "the room stream ended", options));
            }
            Err(e) => return Err(ClientError::lost(connection, e, options)),
        };
        let (events_tx, events) = mpsc::channel(EVENT_BUFFER);
        let pending = Pending::default();
        // A node whose history ends before `after` lost messages it had relayed but not yet
        // synced (a power cut) and numbers new ones from its end again: follow it.
        let last_seen = Arc::new(AtomicU64::new(after.unwrap_or(0).min(history_until)));
        let options = Arc::new(options.clone());
        tokio::spawn(read_room(
            reader,
            history_until,
            events_tx,
            Arc::clone(&pending),
            Arc::clone(&last_seen),
            name.clone(),
            connection.clone(),
            Arc::clone(&options),
        ));
        let sender = RoomSender {
            room: name.clone(),
            stream: Arc::new(tokio::sync::Mutex::new(send)),
            pending,
            next_id: Arc::new(AtomicU64::new(1)),
            limits: client.limits,
            pace: client.pace.clone(),
            connection: connection.clone(),
            options,
        };
        Ok(Self { name, history_until, gap, events, sender, last_seen })
    }

    /// The room's name as the node spells it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Messages up to this sequence number were history at the join.
    pub fn history_until(&self) -> Seq {
        self.history_until
    }

    /// Messages asked for at the join that the history no longer holds.
    pub fn gap(&self) -> Option<Gap> {
        self.gap
    }

    /// The newest sequence number received in this room (or the join's `after`, if the
    /// node's history reaches it).
    pub fn last_seen(&self) -> Seq {
        self.last_seen.load(Ordering::Relaxed)
    }

    /// The next event; `None` once the room stream has ended.
    pub async fn next(&mut self) -> Option<RoomEvent> {
        self.events.recv().await
    }

    pub fn sender(&self) -> RoomSender {
        self.sender.clone()
    }

    /// Leaves the room: finishes this side of the stream; the node ends the other.
    pub async fn leave(self) {
        let _ = self.sender.stream.lock().await.finish();
    }
}

impl RoomSender {
    /// Posts `body` and waits for the node's ack: the sequence number it was stored under.
    /// Keeps to the node's send rate: when sends come faster, this waits for its turn. The
    /// network can still bunch two sends together on their way, so that the node finds the
    /// second too fast: that one is sent again at its next turn (up to
    /// [`SLOW_DOWN_RETRIES`] times; the node stored nothing of it).
    ///
    /// # Errors
    /// A body over the node's limit or empty (checked before sending), a refusal from the
    /// node, or a lost connection.
    pub async fn send(&self, body: impl Into<String>) -> Result<Seq, ClientError> {
        let body = body.into();
        let max = self.limits.max_message_len as usize;
        if body.len() > max {
            let len = body.len();
            return Err(ClientError::MessageTooLong(format!(
                "the message is {len} bytes long; this node accepts at most {max} bytes"
            )));
        }
        let Some(pace) = &self.pace else { return self.send_unchecked(body).await?.await };
        let mut retries = 0;
        loop {
            loop {
                let turn = pace.lock().unwrap_or_else(PoisonError::into_inner).take(Instant::now());
                match turn {
                    Ok(()) => break,
                    Err(wait) => tokio::time::sleep(wait).await,
                }
            }
            match self.send_unchecked(body.clone()).await?.await {
                Err(ClientError::SlowDown(_)) if retries < SLOW_DOWN_RETRIES => retries += 1,
                result => return result,
            }
        }
    }

    /// Posts `body` without checking it here, returning once it is written; the returned
    /// future resolves with the ack. The node still checks everything: tools use this to
    /// keep many sends in flight, tests to see the node's own checks.
    ///
    /// # Errors
    /// The stream or connection is gone.
    pub async fn send_unchecked(
        &self,
        body: String,
    ) -> Result<impl Future<Output = Result<Seq, ClientError>> + use<>, ClientError> {
        let client_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap_or_else(PoisonError::into_inner).insert(client_id, tx);
        let frame = ClientFrame::Send { client_id, body };
        let written = write_frame(&mut *self.stream.lock().await, &frame, usize::MAX).await;
        if let Err(e) = written {
            self.pending.lock().unwrap_or_else(PoisonError::into_inner).remove(&client_id);
            return Err(ClientError::lost(&self.connection, e, &self.options));
        }
        let (connection, options) = (self.connection.clone(), Arc::clone(&self.options));
        Ok(async move {
            rx.await.unwrap_or_else(|_| {
                Err(ClientError::lost(
                    &connection,
                    "the room stream ended before the ack",
                    &options,
                ))
            })
        })
    }

    /// The room this sender posts to.
    pub fn room(&self) -> &str {
        &self.room
    }
}

#[allow(clippy::too_many_arguments)]
async fn read_room(
    mut reader: FrameReader<RecvStream>,
    history_until: Seq,
    events: mpsc::Sender<RoomEvent>,
    pending: Pending,
    last_seen: Arc<AtomicU64>,
    room: String,
    connection: quinn::Connection,
    options: Arc<ConnectOptions>,
) {
    let resolve = |client_id: u64, result: Result<Seq, ClientError>| {
        if let Some(tx) = pending.lock().unwrap_or_else(PoisonError::into_inner).remove(&client_id)
        {
            let _ = tx.send(result);
        }
    };
    // Set when the node drops this member for reading too slowly: where to rejoin.
    let mut too_slow = None;
    loop {
        match reader.read::<NodeFrame>().await {
            Ok(Some(NodeFrame::Message(message))) => {
                last_seen.fetch_max(message.seq, Ordering::Relaxed);
                let history = message.seq <= history_until;
                // A program may keep only the sender; then the messages go unread but the
                // acks still arrive.
                let _ = events.send(RoomEvent::Message { message, history }).await;
            }
            Ok(Some(NodeFrame::Ack { client_id, seq })) => resolve(client_id, Ok(seq)),
            Ok(Some(NodeFrame::Error(error))) => match error.client_id {
                Some(client_id) => resolve(client_id, Err(ClientError::from_frame(error))),
                // About the stream itself; if it is fatal the node ends the stream next.
                None => {
                    if error.code == ErrorCode::TooSlow {
                        too_slow = error.last_seq;
                    }
                    let _ = events.send(RoomEvent::Error(error)).await;
                }
            },
            Ok(Some(other)) => {
                tracing::warn!(?other, "unexpected frame on a room stream; leaving it");
                break;
            }
            Ok(None) | Err(_) => break,
        }
    }
    let unacked: Vec<_> = pending.lock().unwrap_or_else(PoisonError::into_inner).drain().collect();
    for (_, tx) in unacked {
        let error = match too_slow {
            Some(last_seq) => ClientError::TooSlow { room: room.clone(), last_seq },
            None => {
                ClientError::lost(&connection, "the room stream ended before the ack", &options)
            }
        };
        let _ = tx.send(Err(error));
    }
}
