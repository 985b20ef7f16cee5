//! [`Room`]: one joined room on its own stream.
//!
//! A task reads the room stream: messages become [`RoomEvent`]s on a bounded channel, acks
//! and per-send errors resolve the matching send. If the program stops reading events the
//! channel fills, the task stops reading the stream, and the node eventually drops the
//! member as too slow; nothing grows without bound.
//!
//! Sends go through one queue per room, in the order they were posted, to a task that
//! keeps to the node's rate and writes them to the stream in that order, several per write
//! when they queue up. The node stores a stream's sends in the order it reads them, so what
//! one program posts is stored as it posted it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use chat_proto::io::{FrameReader, concat, write_frame};
use chat_proto::{
    Anchor, ChatMessage, ClientFrame, ErrorCode, ErrorFrame, Gap, LeftReason, Limits, NodeFrame,
    PageEnds, Seq, codec,
};
use quinn::{RecvStream, SendStream};
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};

use crate::{Client, ClientError, ConnectOptions, Pace, RequestPace};

/// Events buffered for a room before the reader pauses.
const EVENT_BUFFER: usize = 1024;
/// Sends posted to a room and not yet written before [`RoomSender::post`] waits.
const POST_QUEUE: usize = 256;
/// Sends written to the stream in one call, at most.
const WRITE_BATCH: usize = 64;

/// How often a send that the node found too fast is sent again.
pub const SLOW_DOWN_RETRIES: usize = 3;

/// The history messages a fresh join asks for: a screenful.
pub const JOIN_PAGE: u32 = 50;

/// Live messages held back while a resume catches up on what it missed, before the client
/// gives the stream up (and rejoins after what it has).
const HELD_WHILE_CATCHING_UP: usize = 4096;

/// What happens in a joined room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomEvent {
    /// A message. `history` is true for those that were in the room before the join.
    Message { message: ChatMessage, history: bool },
    /// The join's history is all there: live messages follow. It says whether older
    /// messages are retained ([`RoomSender::history`] pages back) and where they start.
    HistoryEnd(PageEnds),
    /// Someone else joined the room (the node tells in rooms of at most
    /// [`Limits::presence_limit`](chat_proto::Limits) members).
    Arrived { name: String },
    /// Someone left the room, and why.
    Left { name: String, reason: LeftReason },
    /// An operator, `by`, moderated the room (a kick, a ban, a new topic, ...).
    Moderation { by: String, action: chat_proto::Moderation },
    /// The node ended the membership with this error (for example [`ErrorCode::TooSlow`],
    /// whose `last_seq` says where to rejoin).
    Error(ErrorFrame),
}

/// A page of history, the answer to [`RoomSender::history`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// Oldest first.
    pub messages: Vec<ChatMessage>,
    pub ends: PageEnds,
}

type PageReply = oneshot::Sender<Result<Page, ClientError>>;

/// History requests waiting for their page, by request id.
#[derive(Clone, Default)]
struct PendingPages(Arc<Mutex<HashMap<u64, PageReply>>>);

impl PendingPages {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, PageReply>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

type Reply = oneshot::Sender<Result<Seq, ClientError>>;

/// A send written to the stream and waiting for its answer.
struct Waiting {
    reply: Reply,
    /// Its place among the connection's unacknowledged sends, given back with the answer.
    _in_flight: Option<OwnedSemaphorePermit>,
}

/// Makes the error for the sends of a stream that is done.
type Closed = Arc<dyn Fn() -> ClientError + Send + Sync>;

/// The sends of one room stream that wait for their answer, by client id.
#[derive(Default)]
struct PendingSends {
    waiting: HashMap<u64, Waiting>,
    /// Set once the stream is done: later sends get its error at once.
    closed: Option<Closed>,
}

#[derive(Clone, Default)]
struct Pending(Arc<Mutex<PendingSends>>);

impl Pending {
    fn lock(&self) -> std::sync::MutexGuard<'_, PendingSends> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a send that is about to be written; answers it at once if the stream is done.
    fn insert(&self, client_id: u64, waiting: Waiting) {
        let mut pending = self.lock();
        match &pending.closed {
            Some(error) => {
                let _ = waiting.reply.send(Err(error()));
            }
            None => {
                pending.waiting.insert(client_id, waiting);
            }
        }
    }

    fn resolve(&self, client_id: u64, result: Result<Seq, ClientError>) {
        if let Some(waiting) = self.lock().waiting.remove(&client_id) {
            let _ = waiting.reply.send(result);
        }
    }

    /// Answers every waiting send with `error`, and every later one too.
    fn close(&self, error: impl Fn() -> ClientError + Send + Sync + 'static) {
        let error: Closed = Arc::new(error);
        let waiting: Vec<Waiting> = {
            let mut pending = self.lock();
            pending.closed.get_or_insert_with(|| Arc::clone(&error));
            pending.waiting.drain().map(|(_, waiting)| waiting).collect()
        };
        for waiting in waiting {
            let _ = waiting.reply.send(Err(error()));
        }
    }
}

/// A joined room: its events, and a sender for posting to it.
pub struct Room {
    name: String,
    history_until: Seq,
    gap: Option<Gap>,
    topic: String,
    events: mpsc::Receiver<RoomEvent>,
    sender: RoomSender,
    last_seen: Arc<AtomicU64>,
}

/// Posts messages to a room, in the order they are posted. Cheap to clone; sends from
/// several tasks may be in flight at once.
#[derive(Clone)]
pub struct RoomSender {
    room: String,
    posts: mpsc::Sender<Post>,
    stream: Arc<tokio::sync::Mutex<SendStream>>,
    pending: Pending,
    pages: PendingPages,
    next_id: Arc<AtomicU64>,
    limits: Limits,
    pace: Pace,
    requests: RequestPace,
    connection: quinn::Connection,
    options: Arc<ConnectOptions>,
}

/// A send on its way to the room's writer task.
struct Post {
    client_id: u64,
    body: String,
    reply: Reply,
}

/// A posted send: resolves to the sequence number the node stored it under.
#[must_use = "a posted message is only known to be stored once it is acknowledged"]
pub struct Posted {
    reply: oneshot::Receiver<Result<Seq, ClientError>>,
    sender: RoomSender,
    /// The body, kept to send it again if the node finds it too fast or cannot confirm it.
    body: String,
    client_id: u64,
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
        // A fresh join shows a screenful; a resume asks for everything it missed, which
        // the reader fetches page by page if it is more than the node's page.
        let limit = match after {
            None => JOIN_PAGE.min(client.limits.max_history_page),
            Some(_) => client.limits.max_history_page,
        };
        let join = ClientFrame::Join { room: room.to_owned(), after, limit };
        write_frame(&mut send, &join, codec::MAX_NODE_FRAME_LEN)
            .await
            .map_err(|e| ClientError::lost(connection, e, options))?;
        let mut reader = FrameReader::new(recv, codec::MAX_NODE_FRAME_LEN);
        let (name, history_until, gap, topic) = match reader.read::<NodeFrame>().await {
            Ok(Some(NodeFrame::Joined { room, last_seq, gap, topic })) => {
                (room, last_seq, gap, topic)
            }
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
        let stream = Arc::new(tokio::sync::Mutex::new(send));
        let (posts, queued) = mpsc::channel(POST_QUEUE);
        let sender = RoomSender {
            room: name.clone(),
            posts,
            stream,
            pending,
            pages: PendingPages::default(),
            next_id: Arc::new(AtomicU64::new(first_client_id())),
            limits: client.limits,
            pace: client.pace.clone(),
            requests: client.requests.clone(),
            connection: connection.clone(),
            options,
        };
        // The reader holds the stream weakly: dropping the room and its senders still
        // finishes the stream (and so leaves the room).
        let room_reader = RoomReader {
            history_until,
            events: events_tx,
            last_seen: Arc::clone(&last_seen),
            pending: sender.pending.clone(),
            pages: sender.pages.clone(),
            stream: Arc::downgrade(&sender.stream),
            next_id: Arc::clone(&sender.next_id),
            requests: sender.requests.clone(),
            max_page: client.limits.max_history_page,
            room: name.clone(),
            connection: connection.clone(),
            options: Arc::clone(&sender.options),
            catching_up: None,
            held: VecDeque::new(),
        };
        tokio::spawn(room_reader.run(reader));
        tokio::spawn(sender.clone().write_posts(queued));
        Ok(Self { name, history_until, gap, topic, events, sender, last_seen })
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

    /// The room's topic when it was joined (empty for none); changes come as
    /// [`RoomEvent::Moderation`].
    pub fn topic(&self) -> &str {
        &self.topic
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

    /// Leaves the room: finishes this side of the stream and waits until the node has ended
    /// the other (so the room has heard of it), or the connection is gone. Events not yet
    /// read are dropped.
    pub async fn leave(mut self) {
        let _ = self.sender.stream.lock().await.finish();
        while self.events.recv().await.is_some() {}
    }
}

impl RoomSender {
    /// Posts `body` and waits for the node's ack: the sequence number it was stored under.
    /// Sends of one room are written in the order they are posted, at the node's rate
    /// (see [`post`](Self::post)).
    ///
    /// # Errors
    /// As for [`post`](Self::post) and [`Posted::acked`].
    pub async fn send(&self, body: impl Into<String>) -> Result<Seq, ClientError> {
        self.post(body).await?.acked().await
    }

    /// Queues `body` behind the room's earlier posts and returns once it is queued (waiting
    /// while the queue is full); the [`Posted`] resolves with the ack. The queue keeps to
    /// the node's send rate, so a long run of posts waits for its turns instead of being
    /// refused, and keeps their order on the stream.
    ///
    /// # Errors
    /// A body over the node's limit (checked before sending; the node checks the rest), or
    /// the room stream is gone.
    pub async fn post(&self, body: impl Into<String>) -> Result<Posted, ClientError> {
        self.post_as(body.into(), None).await
    }

    /// Posts `body` again under the client id of an earlier post of it whose outcome was not
    /// known (see [`Posted::client_id`]): a node that stored the first one (a cluster, within
    /// two minutes) answers with its number instead of storing it twice.
    ///
    /// # Errors
    /// As for [`post`](Self::post).
    pub async fn post_again(&self, body: String, client_id: u64) -> Result<Posted, ClientError> {
        self.post_as(body, Some(client_id)).await
    }

    async fn post_as(&self, body: String, client_id: Option<u64>) -> Result<Posted, ClientError> {
        let max = self.limits.max_message_len as usize;
        if body.len() > max {
            let len = body.len();
            return Err(ClientError::MessageTooLong(format!(
                "the message is {len} bytes long; this node accepts at most {max} bytes"
            )));
        }
        let client_id = client_id.unwrap_or_else(|| self.next_id.fetch_add(1, Ordering::Relaxed));
        let reply = self.enqueue(body.clone(), client_id).await?;
        Ok(Posted { reply, sender: self.clone(), body, client_id })
    }

    async fn enqueue(
        &self,
        body: String,
        client_id: u64,
    ) -> Result<oneshot::Receiver<Result<Seq, ClientError>>, ClientError> {
        let (reply, answer) = oneshot::channel();
        self.posts
            .send(Post { client_id, body, reply })
            .await
            .map_err(|_| self.lost("the room stream has ended"))?;
        Ok(answer)
    }

    /// Posts `body` without checking it here, returning once it is written; the returned
    /// future resolves with the ack. It skips the room's queue and pacing: the node still
    /// checks everything, tools use this to keep many sends in flight, tests to see the
    /// node's own checks.
    ///
    /// # Errors
    /// The stream or connection is gone.
    pub async fn send_unchecked(
        &self,
        body: String,
    ) -> Result<impl Future<Output = Result<Seq, ClientError>> + use<>, ClientError> {
        let client_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply, answer) = oneshot::channel();
        self.pending.insert(client_id, Waiting { reply, _in_flight: None });
        let frame = ClientFrame::Send { client_id, body };
        let written = write_frame(&mut *self.stream.lock().await, &frame, usize::MAX).await;
        if let Err(e) = written {
            self.pending.lock().waiting.remove(&client_id);
            return Err(self.lost(e));
        }
        let sender = self.clone();
        Ok(
            async move { answer.await.unwrap_or_else(|_| Err(sender.lost("the room stream ended"))) },
        )
    }

    /// A page of the room's history at `anchor`, at most `limit` messages (the node caps
    /// it at its page size and in bytes).
    ///
    /// # Errors
    /// The history cannot be read now, or the stream or connection is gone.
    pub async fn history(&self, anchor: Anchor, limit: u32) -> Result<Page, ClientError> {
        let (reply, answer) = oneshot::channel();
        self.requests.turn().await;
        let request_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.pages.lock().insert(request_id, reply);
        let written = write_history_request(&self.stream, request_id, anchor, limit).await;
        let page = match written {
            Ok(()) => answer.await.unwrap_or_else(|_| Err(self.lost("the room stream ended"))),
            Err(e) => Err(self.lost(e)),
        };
        self.pages.lock().remove(&request_id);
        page
    }

    /// The room this sender posts to.
    pub fn room(&self) -> &str {
        &self.room
    }

    fn lost(&self, detail: impl std::fmt::Display) -> ClientError {
        ClientError::lost(&self.connection, detail, &self.options)
    }

    /// The room's writer task: takes posts in order, waits for each one's turn under the
    /// node's rate and for a place among the unacknowledged sends, and writes them, as many
    /// as are ready in one write.
    async fn write_posts(mut self, mut queued: mpsc::Receiver<Post>) {
        // Not a sender of its own queue: once the program drops the room and every sender,
        // the queue ends, and with it this task and the stream, which leaves the room.
        self.posts = mpsc::channel(1).0;
        let mut posts = Vec::with_capacity(WRITE_BATCH);
        let mut frames: Vec<Bytes> = Vec::with_capacity(WRITE_BATCH);
        while queued.recv_many(&mut posts, WRITE_BATCH).await > 0 {
            for Post { client_id, body, reply } in posts.drain(..) {
                let in_flight = match Arc::clone(&self.pace.in_flight).try_acquire_owned() {
                    Ok(permit) => permit,
                    Err(_) => {
                        // Write what is ready before waiting for answers to come back.
                        if self.flush(&mut frames).await.is_err() {
                            return;
                        }
                        match Arc::clone(&self.pace.in_flight).acquire_owned().await {
                            Ok(permit) => permit,
                            Err(_) => return,
                        }
                    }
                };
                while let Err(wait) = self.pace.try_turn() {
                    if self.flush(&mut frames).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(wait).await;
                }
                let frame = ClientFrame::Send { client_id, body };
                match codec::encode(&frame, usize::MAX) {
                    Ok(bytes) => frames.push(bytes),
                    Err(e) => {
                        let _ = reply.send(Err(ClientError::Protocol(e.to_string())));
                        continue;
                    }
                }
                self.pending.insert(client_id, Waiting { reply, _in_flight: Some(in_flight) });
            }
            if self.flush(&mut frames).await.is_err() {
                return;
            }
        }
    }

    /// Writes the frames gathered so far in one piece. A failed write fails every send
    /// waiting on this stream.
    async fn flush(&self, frames: &mut Vec<Bytes>) -> Result<(), ()> {
        if frames.is_empty() {
            return Ok(());
        }
        let bytes = concat(frames);
        let written = self.stream.lock().await.write_all(&bytes).await;
        written.map_err(|e| {
            let (sender, detail) = (self.clone(), e.to_string());
            self.pending.close(move || sender.lost(&detail));
        })
    }
}

impl Posted {
    /// Waits for the node's answer: the sequence number the message was stored under.
    ///
    /// A send the node still finds too fast (the network bunched two paced sends together)
    /// is posted again, up to [`SLOW_DOWN_RETRIES`] times; the node stored nothing of it.
    ///
    /// # Errors
    /// A refusal from the node, or the connection was lost before the answer (then the
    /// message may or may not have been stored).
    ///
    /// One the node could not confirm ([`ClientError::MaybeStored`]) is sent again under its
    /// own client id, up to [`MAYBE_STORED_RETRIES`] times, which stores it once.
    pub async fn acked(mut self) -> Result<Seq, ClientError> {
        let (mut too_fast, mut unconfirmed) = (0, 0);
        loop {
            let result = (&mut self.reply)
                .await
                .unwrap_or_else(|_| Err(self.sender.lost("the room stream ended before the ack")));
            let body = self.body.clone();
            match result {
                Err(ClientError::SlowDown(_))
                    if self.sender.pace.paced() && too_fast < SLOW_DOWN_RETRIES =>
                {
                    too_fast += 1;
                    let client_id = self.sender.next_id.fetch_add(1, Ordering::Relaxed);
                    self.reply = self.sender.enqueue(body, client_id).await?;
                }
                Err(ClientError::MaybeStored(_)) if unconfirmed < MAYBE_STORED_RETRIES => {
                    unconfirmed += 1;
                    self.reply = self.sender.enqueue(body, self.client_id).await?;
                }
                result => return result,
            }
        }
    }

    /// The client id the message was sent under, for [`RoomSender::post_again`].
    pub fn client_id(&self) -> u64 {
        self.client_id
    }
}

/// Where a room's client ids start: a random number, so that the ids of one name's sends
/// never repeat within the window in which a cluster takes a repeated id for a resend (two
/// `chat`s of one user, or one restarted, would otherwise both start at 1).
fn first_client_id() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now()) >> 2
}

/// How many times a send the node could not confirm is sent again under its own id.
const MAYBE_STORED_RETRIES: usize = 2;

/// Writes a history request for `request_id` on the room stream.
async fn write_history_request(
    stream: &tokio::sync::Mutex<SendStream>,
    request_id: u64,
    anchor: Anchor,
    limit: u32,
) -> Result<(), chat_proto::FrameError> {
    let frame = ClientFrame::History { request_id, anchor, limit };
    write_frame(&mut *stream.lock().await, &frame, usize::MAX).await
}

/// The task that reads a room stream.
struct RoomReader {
    history_until: Seq,
    events: mpsc::Sender<RoomEvent>,
    last_seen: Arc<AtomicU64>,
    pending: Pending,
    pages: PendingPages,
    stream: std::sync::Weak<tokio::sync::Mutex<SendStream>>,
    next_id: Arc<AtomicU64>,
    requests: RequestPace,
    max_page: u32,
    room: String,
    connection: quinn::Connection,
    options: Arc<ConnectOptions>,
    /// While a resume fetches what it missed past the join's page: the request in flight,
    /// and the join's `HistoryEnd` to hand on once it is done.
    catching_up: Option<(u64, PageEnds)>,
    /// Live messages, arrivals and departures that came meanwhile.
    held: VecDeque<RoomEvent>,
}

impl RoomReader {
    async fn run(mut self, mut reader: FrameReader<RecvStream>) {
        // Set when the node drops this member for reading too slowly: where to rejoin.
        let mut too_slow = None;
        loop {
            let frame = match reader.read::<NodeFrame>().await {
                Ok(Some(frame)) => frame,
                Ok(None) | Err(_) => break,
            };
            match frame {
                NodeFrame::Message(message) if self.catching_up.is_some() => {
                    if !self.hold(RoomEvent::Message { message, history: false }) {
                        break;
                    }
                }
                NodeFrame::Message(message) => self.deliver(message).await,
                NodeFrame::Arrived { name } => {
                    if !self.tell(RoomEvent::Arrived { name }).await {
                        break;
                    }
                }
                NodeFrame::Left { name, reason } => {
                    if !self.tell(RoomEvent::Left { name, reason }).await {
                        break;
                    }
                }
                NodeFrame::RoomEvent { by, action } => {
                    if !self.tell(RoomEvent::Moderation { by, action }).await {
                        break;
                    }
                }
                NodeFrame::HistoryEnd(ends) if ends.more_after => {
                    if self.catch_up(ends).await.is_err() {
                        break;
                    }
                }
                NodeFrame::HistoryEnd(ends) => {
                    let _ = self.events.send(RoomEvent::HistoryEnd(ends)).await;
                }
                NodeFrame::Page { request_id, messages, ends }
                    if self.catching_up.is_some_and(|(id, _)| id == request_id) =>
                {
                    let had = self.last_seen.load(Ordering::Relaxed);
                    for message in messages.into_iter().take_while(|m| m.seq <= self.history_until)
                    {
                        self.deliver(message).await;
                    }
                    let (_, join_ends) = self.catching_up.take().unwrap_or((0, ends));
                    let got = self.last_seen.load(Ordering::Relaxed);
                    if ends.more_after && got > had && got < self.history_until {
                        if self.catch_up(join_ends).await.is_err() {
                            break;
                        }
                        continue;
                    }
                    let ends = PageEnds { more_after: false, ..join_ends };
                    let _ = self.events.send(RoomEvent::HistoryEnd(ends)).await;
                    self.release_held().await;
                }
                NodeFrame::Page { request_id, messages, ends } => {
                    if let Some(reply) = self.pages.lock().remove(&request_id) {
                        let _ = reply.send(Ok(Page { messages, ends }));
                    }
                }
                NodeFrame::Ack { client_id, seq } => self.pending.resolve(client_id, Ok(seq)),
                NodeFrame::Error(error) => match error.client_id {
                    Some(id) if self.catching_up.is_some_and(|(catching, _)| catching == id) => {
                        // What was missed cannot be fetched now: say so, and go on live.
                        let Some((_, join_ends)) = self.catching_up.take() else { continue };
                        let _ = self.events.send(RoomEvent::Error(error)).await;
                        let _ = self.events.send(RoomEvent::HistoryEnd(join_ends)).await;
                        self.release_held().await;
                    }
                    Some(id) => match self.pages.lock().remove(&id) {
                        Some(reply) => drop(reply.send(Err(ClientError::from_frame(error)))),
                        None => self.pending.resolve(id, Err(ClientError::from_frame(error))),
                    },
                    // About the stream itself; if it is fatal the node ends the stream next.
                    None => {
                        if error.code == ErrorCode::TooSlow {
                            too_slow = error.last_seq;
                        }
                        let _ = self.events.send(RoomEvent::Error(error)).await;
                    }
                },
                other => {
                    tracing::warn!(?other, "unexpected frame on a room stream; leaving it");
                    break;
                }
            }
        }
        let (room, connection, options) = (self.room, self.connection, self.options);
        self.pages.lock().clear();
        self.pending.close(move || match too_slow {
            Some(last_seq) => ClientError::TooSlow { room: room.clone(), last_seq },
            None => {
                ClientError::lost(&connection, "the room stream ended before the ack", &options)
            }
        });
    }

    /// Hands a message on, once: the stream brings a room's messages in order, so one at or
    /// below the newest seen is one a catching-up page brought again.
    async fn deliver(&self, message: ChatMessage) {
        if message.seq <= self.last_seen.load(Ordering::Relaxed) {
            return;
        }
        self.last_seen.store(message.seq, Ordering::Relaxed);
        let history = message.seq <= self.history_until;
        // A program may keep only the sender; then the messages go unread but the acks
        // still arrive.
        let _ = self.events.send(RoomEvent::Message { message, history }).await;
    }

    /// Hands on an arrival or departure, or holds it while catching up; false if too many
    /// are held.
    async fn tell(&mut self, event: RoomEvent) -> bool {
        if self.catching_up.is_some() {
            return self.hold(event);
        }
        let _ = self.events.send(event).await;
        true
    }

    /// Keeps a live event until catching up is done; false if too many are held already.
    fn hold(&mut self, event: RoomEvent) -> bool {
        if self.held.len() == HELD_WHILE_CATCHING_UP {
            tracing::warn!("too many live messages while catching up; leaving");
            return false;
        }
        self.held.push_back(event);
        true
    }

    /// Hands on, in order, what came while catching up.
    async fn release_held(&mut self) {
        while let Some(event) = self.held.pop_front() {
            match event {
                RoomEvent::Message { message, .. } => self.deliver(message).await,
                other => drop(self.events.send(other).await),
            }
        }
    }

    /// Asks for the next page of what a resume missed, after the newest message it has.
    async fn catch_up(&mut self, join_ends: PageEnds) -> Result<(), ()> {
        let after = self.last_seen.load(Ordering::Relaxed);
        self.requests.turn().await;
        let request_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let stream = self.stream.upgrade().ok_or(())?;
        write_history_request(&stream, request_id, Anchor::After(after), self.max_page)
            .await
            .map_err(drop)?;
        self.catching_up = Some((request_id, join_ends));
        Ok(())
    }
}
