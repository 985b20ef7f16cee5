//! The replicated message log: one JetStream stream over a subject per room, a second over
//! one per direct conversation (whose cap is their own), and the bucket of the rooms that
//! exist.
//!
//! Every node appends to the same stream, so the stream's leader gives each message its
//! number. A node's clients see those numbers as their room's sequence numbers: increasing
//! in each room, never reused, with gaps where other rooms' messages went.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;
use chat_history::{Message, Stored};
use futures_util::{StreamExt, stream::BoxStream};
use tokio::sync::watch;

use crate::mirror::Mirror;
use crate::subjects::{
    self, DIRECT_WILDCARD, LIVE_DIRECT_WILDCARD, LIVE_ROOMS_WILDCARD, ROOMS_WILDCARD, room_subject,
};
use crate::{ClusterConfig, ClusterError};

/// The stream holding every room's messages.
pub const STREAM: &str = "CHAT";
/// The stream holding every direct conversation's messages.
pub const DIRECT_STREAM: &str = "CHAT_DIRECT";
/// Most messages asked of one direct batch get.
const BATCH: usize = 256;
/// Most subjects in one request for their newest messages (the server answers at most
/// 1,024 at a time).
const MULTI_LAST: usize = 1000;
/// How long the stream remembers a message's id, so that a publish carrying it again is
/// acknowledged with the first one's number instead of stored twice.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// The bucket naming the rooms that exist.
pub const ROOMS_BUCKET: &str = "chat_rooms";

pub struct Log {
    js: jetstream::Context,
    stream: stream::Stream,
    direct: stream::Stream,
    rooms: kv::Store,
    /// The rooms that exist (the rooms bucket's keys, as tokens).
    known: Mirror,
    /// Changes when the client connects again ([`Cluster::lapses`](crate::Cluster::lapses)).
    lapses: watch::Receiver<u64>,
}

/// Creates the stream `name` over `subjects`, or brings an existing one to this node's cap
/// and age. The stream republishes every message it stores on `live`, with its number and
/// the number of the message before it in its room: the live fan-out, which costs NATS no
/// consumer (see [`Log::live`]).
async fn open_stream(
    js: &jetstream::Context,
    config: &ClusterConfig,
    name: &str,
    (subjects, live): (&str, &str),
    cap: u64,
) -> Result<stream::Stream, ClusterError> {
    let what = format!("the message stream {name}");
    let stream_config = stream::Config {
        name: name.into(),
        description: Some(format!("chat messages, one subject per room ({subjects})")),
        subjects: vec![subjects.into()],
        storage: stream::StorageType::File,
        num_replicas: config.replicas,
        max_messages_per_subject: i64::try_from(cap).unwrap_or(i64::MAX),
        max_age: config.max_age.unwrap_or(Duration::ZERO),
        discard: stream::DiscardPolicy::Old,
        // Pages of history are direct batch gets, which any replica may answer.
        allow_direct: true,
        duplicate_window: DUPLICATE_WINDOW,
        republish: Some(stream::Republish {
            source: subjects.into(),
            destination: live.into(),
            headers_only: false,
        }),
        ..Default::default()
    };
    js.create_or_update_stream(stream_config).await.map_err(|e| ClusterError::setup(&what, e))?;
    js.get_stream(name).await.map_err(|e| ClusterError::setup(&what, e))
}

/// How long a publish waits for its ack before it is sent again: an ack takes milliseconds,
/// and one sent to a stream leader that died meanwhile never comes, while the new leader is
/// elected in a few seconds (the client's own timeout is 5 s).
const ACK_PATIENCE: Duration = Duration::from_secs(2);

/// The sequence number a publish was stored under; unavailable after [`ACK_PATIENCE`], or
/// once the client connects again before the ack came: a publish sent on the lost connection
/// may never be answered, and is better sent again at once (its id makes that safe).
async fn ack_unless_lapsed(
    ack: jetstream::context::PublishAckFuture,
    mut lapse: watch::Receiver<u64>,
) -> Result<u64, ClusterError> {
    let ack = async { ack.await.map(|ack| ack.sequence).map_err(ClusterError::unavailable) };
    tokio::select! {
        ack = crate::within(ACK_PATIENCE, ack) => ack,
        Ok(()) = lapse.changed() => {
            Err(ClusterError::Unavailable("the connection to NATS was made again".into()))
        }
    }
}

/// A watch of `lapses` that changes at the next lapse, not at one already past.
fn lapse_after_now(lapses: &watch::Receiver<u64>) -> watch::Receiver<u64> {
    let mut lapse = lapses.clone();
    lapse.borrow_and_update();
    lapse
}

impl Log {
    pub(crate) async fn open(
        js: &jetstream::Context,
        config: &ClusterConfig,
        lapses: watch::Receiver<u64>,
    ) -> Result<Self, ClusterError> {
        let rooms = (ROOMS_WILDCARD, LIVE_ROOMS_WILDCARD);
        let stream = open_stream(js, config, STREAM, rooms, config.history_cap).await?;
        let directs = (DIRECT_WILDCARD, LIVE_DIRECT_WILDCARD);
        let direct =
            open_stream(js, config, DIRECT_STREAM, directs, config.direct_history_cap).await?;
        let rooms = js
            .create_or_update_key_value(kv::Config {
                bucket: ROOMS_BUCKET.into(),
                description: "the chat's rooms".into(),
                history: 1,
                storage: stream::StorageType::File,
                num_replicas: config.replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| ClusterError::setup("the rooms bucket", e))?;
        let known = Mirror::start(rooms.clone());
        Ok(Self { js: js.clone(), stream, direct, rooms, known, lapses })
    }

    /// Sends a message for `room` to NATS and returns the wait for the stream's
    /// acknowledgement: its sequence number once a majority of the replicas has it. The
    /// sending is done when this returns, so messages published one after the other on one
    /// `Log` reach the stream, and are stored, in that order (the wait for each ack may
    /// then run alongside the others').
    ///
    /// A publish that fails (while the stream elects a new leader, say), or whose connection
    /// is made again before its ack came, is sent again until it is acknowledged (see
    /// [`patiently`](crate::patiently)); such a retry may land after
    /// messages sent later. Every attempt carries `id`, which the stream deduplicates on for
    /// [`DUPLICATE_WINDOW`]: a retry whose first attempt was stored after all is acknowledged
    /// with the first one's number, never stored twice, and so is a client's own resend of a
    /// message whose outcome it was not told, when it carries the same id.
    ///
    /// # Errors
    /// The message does not encode (outer); NATS did not acknowledge it in time (inner): it
    /// may have been stored all the same.
    pub async fn publish(
        &self,
        room: &str,
        message: &Message,
        id: &str,
    ) -> Result<impl Future<Output = Result<u64, ClusterError>> + Send + 'static, ClusterError>
    {
        let payload = Bytes::from(postcard::to_stdvec(message)?);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, id);
        let subject = room_subject(room);
        let js = self.js.clone();
        let lapses = self.lapses.clone();
        let first_lapse = lapse_after_now(&lapses);
        let first =
            js.publish_with_headers(subject.clone(), headers.clone(), payload.clone()).await;
        Ok(async move {
            if let Ok(ack) = first
                && let Ok(seq) = ack_unless_lapsed(ack, first_lapse).await
            {
                return Ok(seq);
            }
            let seq = crate::patiently(|| async {
                let lapse = lapse_after_now(&lapses);
                let ack = js
                    .publish_with_headers(subject.clone(), headers.clone(), payload.clone())
                    .await
                    .map_err(ClusterError::unavailable)?;
                ack_unless_lapsed(ack, lapse).await
            });
            seq.await
        })
    }

    /// The newest sequence number in `room`, 0 when it has no messages.
    ///
    /// # Errors
    /// NATS did not answer.
    pub async fn last_seq(&self, room: &str) -> Result<u64, ClusterError> {
        let subject = room_subject(room);
        crate::patiently(|| async {
            match self.stream_for(room).get_last_raw_message_by_subject(&subject).await {
                Ok(message) => Ok(message.sequence),
                Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(0),
                Err(e) => Err(ClusterError::unavailable(e)),
            }
        })
        .await
    }

    /// The retained messages of `room` numbered from `from` up to `below` (exclusive), at
    /// most `limit` of them, oldest first: JetStream's direct batch get by subject, which
    /// any replica answers and which leaves no consumer behind.
    ///
    /// # Errors
    /// NATS did not answer, or a message does not decode.
    pub async fn range(
        &self,
        room: &str,
        from: u64,
        below: u64,
        limit: usize,
    ) -> Result<Vec<Stored>, ClusterError> {
        let mut got = Vec::new();
        let mut next = from.max(1);
        while got.len() < limit && next < below {
            let want = (limit - got.len()).min(BATCH);
            let read = || crate::within(crate::READ_TIMEOUT, self.batch(room, next, want));
            let (batch, pending) = crate::patiently(read).await?;
            let full = batch.len() == want;
            for stored in batch {
                if stored.seq >= below {
                    return Ok(got);
                }
                next = stored.seq + 1;
                got.push(stored);
            }
            if !full || pending == 0 {
                break;
            }
        }
        Ok(got)
    }

    /// The newest `limit` retained messages of `room` numbered below `below`, oldest
    /// first. The stream numbers every room together, so where they start is found by
    /// reading back a span of numbers that grows until it holds enough (or reaches 1).
    ///
    /// # Errors
    /// As for [`range`](Self::range).
    pub async fn before(
        &self,
        room: &str,
        below: u64,
        limit: usize,
    ) -> Result<Vec<Stored>, ClusterError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut span = (2 * limit as u64).max(64);
        loop {
            let from = below.saturating_sub(span).max(1);
            let mut got = self.range(room, from, below, usize::MAX).await?;
            if got.len() >= limit || from == 1 {
                let extra = got.len().saturating_sub(limit);
                got.drain(..extra);
                return Ok(got);
            }
            span = span.saturating_mul(4);
        }
    }

    /// The oldest retained message's number in `room`, `None` when it has none.
    ///
    /// # Errors
    /// As for [`range`](Self::range).
    pub async fn first_seq(&self, room: &str) -> Result<Option<u64>, ClusterError> {
        Ok(self.range(room, 1, u64::MAX, 1).await?.first().map(|s| s.seq))
    }

    /// One direct batch get: up to `batch` messages of `room` from `from` on, and how many
    /// more the answering server holds after them.
    async fn batch(
        &self,
        room: &str,
        from: u64,
        batch: usize,
    ) -> Result<(Vec<Stored>, u64), ClusterError> {
        // Subjects hold no quote or backslash (see `subjects`): the request is written as is.
        let request =
            format!(r#"{{"seq":{from},"next_by_subj":"{}","batch":{batch}}}"#, room_subject(room));
        let (got, pending) = self.direct_get(self.stream_name(room), request, batch).await?;
        Ok((got.into_iter().map(|(_, stored)| stored).collect(), pending))
    }

    /// One direct get request to `stream`: the messages answered, each with its subject, and
    /// how many more the answering server holds after them.
    async fn direct_get(
        &self,
        stream: &str,
        request: String,
        expected: usize,
    ) -> Result<(Vec<(String, Stored)>, u64), ClusterError> {
        let client = self.js.client();
        let inbox = client.new_inbox();
        let mut replies =
            client.subscribe(inbox.clone()).await.map_err(ClusterError::unavailable)?;
        let api = format!("$JS.API.DIRECT.GET.{stream}");
        client
            .publish_with_reply(api, inbox, request.into())
            .await
            .map_err(ClusterError::unavailable)?;
        let mut got = Vec::with_capacity(expected);
        while let Some(reply) = replies.next().await {
            match reply.status.map(|s| s.as_u16()) {
                None | Some(200) => {
                    let seq = header(&reply, "Nats-Sequence").ok_or_else(|| {
                        ClusterError::Unavailable("a direct get answer without its sequence".into())
                    })?;
                    let subject = text_header(&reply, "Nats-Subject").unwrap_or_default();
                    let message = postcard::from_bytes(&reply.payload)?;
                    got.push((subject, Stored { seq, message }));
                    if header(&reply, "Nats-Num-Pending").is_none() {
                        // A server without batches answers with the one message.
                        return Ok((got, 1));
                    }
                }
                // The end of the batch, saying how many more there are.
                Some(204) => return Ok((got, header(&reply, "Nats-Num-Pending").unwrap_or(0))),
                Some(404) => return Ok((got, 0)),
                Some(code) => {
                    let detail = reply.description.unwrap_or_default();
                    return Err(ClusterError::Unavailable(format!("direct get: {code} {detail}")));
                }
            }
        }
        Err(ClusterError::Unavailable("the direct get's answers stopped".into()))
    }

    /// The newest sequence number of each of `rooms` that has a message, in requests of a
    /// thousand subjects each (JetStream's direct get of the last messages of many subjects,
    /// which any replica answers and which may be a moment behind the leader).
    ///
    /// # Errors
    /// NATS did not answer.
    pub async fn last_seqs(&self, rooms: &[&str]) -> Result<HashMap<String, u64>, ClusterError> {
        let mut lasts = HashMap::with_capacity(rooms.len());
        let (direct, shared): (Vec<&str>, Vec<&str>) =
            rooms.iter().partition(|room| subjects::is_direct(room));
        for (stream, rooms) in [(STREAM, shared), (DIRECT_STREAM, direct)] {
            for chunk in rooms.chunks(MULTI_LAST) {
                let subjects: Vec<String> = chunk.iter().map(|room| room_subject(room)).collect();
                let request = serde_json::json!({ "multi_last": subjects }).to_string();
                let read = || {
                    let request = request.clone();
                    crate::within(
                        crate::READ_TIMEOUT,
                        self.direct_get(stream, request, chunk.len()),
                    )
                };
                let (got, _) = crate::patiently(read).await?;
                for (subject, stored) in got {
                    if let Some(room) = subjects::room_of(&subject) {
                        lasts.insert(room, stored.seq);
                    }
                }
            }
        }
        Ok(lasts)
    }

    /// The messages the stream stores in `room` from now on, as it republishes them once
    /// stored: plain NATS, which keeps no state per room but the interest, and may lose a
    /// message (a server or connection lost, a leader that fails before republishing). Each
    /// names the message before it in the room, so the follower sees a loss at the next
    /// message and reads what it missed with [`range`](Self::range).
    ///
    /// # Errors
    /// NATS refused the subscription.
    pub async fn live(
        &self,
        room: &str,
    ) -> Result<BoxStream<'static, Result<Live, ClusterError>>, ClusterError> {
        let client = self.js.client();
        let live = client
            .subscribe(subjects::live_subject(room))
            .await
            .map_err(ClusterError::unavailable)?;
        // So that the server has the interest before the room's last number is read.
        client.flush().await.map_err(ClusterError::unavailable)?;
        Ok(live.map(|message| live_message(&message)).boxed())
    }

    /// The stream holding `room`'s messages.
    fn stream_for(&self, room: &str) -> &stream::Stream {
        if subjects::is_direct(room) { &self.direct } else { &self.stream }
    }

    fn stream_name(&self, room: &str) -> &'static str {
        if subjects::is_direct(room) { DIRECT_STREAM } else { STREAM }
    }

    /// Every room that exists.
    ///
    /// # Errors
    /// NATS did not answer.
    pub async fn rooms(&self) -> Result<Vec<String>, ClusterError> {
        self.known.read(|known| known.keys().map(|key| subjects::name(key)).collect()).await
    }

    /// Every room that exists, with its newest sequence number.
    ///
    /// # Errors
    /// NATS did not answer.
    pub async fn rooms_with_last_seq(&self) -> Result<Vec<(String, u64)>, ClusterError> {
        let rooms = self.rooms().await?;
        let names: Vec<&str> = rooms.iter().map(String::as_str).collect();
        let lasts = self.last_seqs(&names).await?;
        Ok(rooms
            .into_iter()
            .map(|room| {
                let last = lasts.get(&room).copied().unwrap_or(0);
                (room, last)
            })
            .collect())
    }

    /// Creates `room` unless it exists; returns whether it was created.
    ///
    /// # Errors
    /// NATS did not answer.
    pub async fn create_room(&self, room: &str) -> Result<bool, ClusterError> {
        match self.rooms.create(subjects::token(room), Bytes::new()).await {
            Ok(_) => {
                self.known.change(|known| drop(known.insert(subjects::token(room), Bytes::new())));
                Ok(true)
            }
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(ClusterError::unavailable(e)),
        }
    }

    /// Deletes `room` and its messages; returns whether it existed.
    ///
    /// # Errors
    /// NATS did not answer.
    pub async fn delete_room(&self, room: &str) -> Result<bool, ClusterError> {
        let existed = self.room_exists(room).await?;
        self.rooms.purge(subjects::token(room)).await.map_err(ClusterError::unavailable)?;
        self.known.change(|known| drop(known.remove(&subjects::token(room))));
        let purge = self.stream.purge().filter(subjects::room_subject(room));
        purge.await.map_err(ClusterError::unavailable)?;
        Ok(existed)
    }

    /// Whether `room` exists.
    ///
    /// # Errors
    /// NATS did not answer.
    pub async fn room_exists(&self, room: &str) -> Result<bool, ClusterError> {
        if self.knows(room) {
            return Ok(true);
        }
        // Perhaps made on another node a moment ago, before the watch told this one.
        let key = subjects::token(room);
        crate::patiently(|| async {
            let entry = self.rooms.get(key.as_str()).await;
            Ok(entry.map_err(ClusterError::unavailable)?.is_some())
        })
        .await
    }

    /// A check that the stream's leader answers (the stream's info comes from it alone),
    /// as often as it is called.
    pub(crate) fn stream_info_probe(
        &self,
    ) -> impl Fn() -> futures_util::future::BoxFuture<'static, Result<(), ClusterError>> + use<>
    {
        let stream = self.stream.clone();
        move || {
            let stream = stream.clone();
            Box::pin(
                async move { stream.get_info().await.map(drop).map_err(ClusterError::unavailable) },
            )
        }
    }

    /// A tick each time either message stream elects a leader (JetStream's advisory).
    ///
    /// # Errors
    /// NATS refused the subscription.
    pub async fn leader_changes(&self) -> Result<BoxStream<'static, ()>, ClusterError> {
        let client = self.js.client();
        let elected = "$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED";
        let rooms = client.subscribe(format!("{elected}.{STREAM}")).await;
        let direct = client.subscribe(format!("{elected}.{DIRECT_STREAM}")).await;
        let (rooms, direct) =
            (rooms.map_err(ClusterError::unavailable)?, direct.map_err(ClusterError::unavailable)?);
        Ok(futures_util::stream::select(rooms, direct).map(drop).boxed())
    }

    /// The name of the NATS server leading the stream, when it has a leader.
    ///
    /// # Errors
    /// NATS did not answer.
    pub async fn leader(&self) -> Result<Option<String>, ClusterError> {
        let info = self.stream.get_info().await.map_err(ClusterError::unavailable)?;
        Ok(info.cluster.and_then(|c| c.leader))
    }
}

impl Log {
    /// Whether the watch has seen `room` made.
    fn knows(&self, room: &str) -> bool {
        let key = subjects::token(room);
        self.known.peek(|known| known.contains_key(&key)).unwrap_or(false)
    }
}

/// A message as the stream republished it: its number in the stream, and the number of the
/// message before it in the same room (0 for none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Live {
    pub stored: Stored,
    pub previous: u64,
}

fn live_message(message: &async_nats::Message) -> Result<Live, ClusterError> {
    let missing = || ClusterError::Unavailable("a republished message without its numbers".into());
    let seq = header(message, "Nats-Sequence").ok_or_else(missing)?;
    let previous = header(message, "Nats-Last-Sequence").ok_or_else(missing)?;
    let stored = Stored { seq, message: postcard::from_bytes(&message.payload)? };
    Ok(Live { stored, previous })
}

/// A header's value as a number. The server appends its own headers after the publisher's,
/// so the last value is the server's.
fn header(message: &async_nats::Message, name: &str) -> Option<u64> {
    text_header(message, name)?.parse().ok()
}

fn text_header(message: &async_nats::Message, name: &str) -> Option<String> {
    let values = message.headers.as_ref()?.get_all(name);
    values.last().map(|value| value.as_str().to_owned())
}
