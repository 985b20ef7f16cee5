//! The replicated message log: one JetStream stream over a subject per room, a second over
//! one per direct conversation (whose cap is their own), and the bucket of the rooms that
//! exist.
//!
//! Every node appends to the same stream, so the stream's leader gives each message its
//! number. A node's clients see those numbers as their room's sequence numbers: increasing
//! in each room, never reused, with gaps where other rooms' messages went.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, stream};
use bytes::Bytes;
use chat_history::{Message, Stored};
use futures_util::{StreamExt, TryStreamExt, stream::BoxStream};

use crate::subjects::{self, DIRECT_WILDCARD, ROOMS_WILDCARD, room_subject};
use crate::{ClusterConfig, ClusterError};

/// The stream holding every room's messages.
pub const STREAM: &str = "CHAT";
/// The stream holding every direct conversation's messages.
pub const DIRECT_STREAM: &str = "CHAT_DIRECT";
/// The bucket naming the rooms that exist.
pub const ROOMS_BUCKET: &str = "chat_rooms";

pub struct Log {
    js: jetstream::Context,
    /// This process's prefix for message ids, and how many it has appended.
    writer: u64,
    appended: AtomicU64,
    stream: stream::Stream,
    direct: stream::Stream,
    rooms: kv::Store,
}

/// Creates the stream `name` over `subjects`, or brings an existing one to this node's cap
/// and age.
async fn open_stream(
    js: &jetstream::Context,
    config: &ClusterConfig,
    name: &str,
    subjects: &str,
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
        ..Default::default()
    };
    js.create_or_update_stream(stream_config).await.map_err(|e| ClusterError::setup(&what, e))?;
    js.get_stream(name).await.map_err(|e| ClusterError::setup(&what, e))
}

impl Log {
    pub(crate) async fn open(
        js: &jetstream::Context,
        config: &ClusterConfig,
    ) -> Result<Self, ClusterError> {
        let stream = open_stream(js, config, STREAM, ROOMS_WILDCARD, config.history_cap).await?;
        let direct =
            open_stream(js, config, DIRECT_STREAM, DIRECT_WILDCARD, config.direct_history_cap)
                .await?;
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
        Ok(Self {
            js: js.clone(),
            writer: crate::random_id(),
            appended: AtomicU64::new(0),
            stream,
            direct,
            rooms,
        })
    }

    /// Appends a message to `room`; returns its sequence number once the stream has it on
    /// a majority of its replicas.
    ///
    /// While the stream elects a new leader (a NATS server died) publishes fail for a few
    /// seconds; they are retried (see [`patiently`](crate::patiently)). Every attempt carries
    /// the same message id, which the stream deduplicates on: a retry whose first attempt
    /// was stored after all is acknowledged with the first one's number, never stored twice.
    ///
    /// # Errors
    /// NATS did not acknowledge the message in time.
    pub async fn append(&self, room: &str, message: &Message) -> Result<u64, ClusterError> {
        let payload = Bytes::from(postcard::to_stdvec(message)?);
        let id = format!("{}-{}", self.writer, self.appended.fetch_add(1, Ordering::Relaxed));
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
        let subject = room_subject(room);
        let ack = crate::patiently(|| async {
            let ack = self
                .js
                .publish_with_headers(subject.clone(), headers.clone(), payload.clone())
                .await
                .map_err(ClusterError::unavailable)?;
            ack.await.map_err(ClusterError::unavailable)
        });
        Ok(ack.await?.sequence)
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

    /// Up to `limit` retained messages of `room` after `after` (from the first for `None`).
    ///
    /// # Errors
    /// NATS did not answer, or a message does not decode.
    pub async fn read(
        &self,
        room: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Stored>, ClusterError> {
        let read = || async {
            let consumer = self.consumer(room, after).await?;
            let pending = usize::try_from(consumer.cached_info().num_pending).unwrap_or(usize::MAX);
            if pending == 0 || limit == 0 {
                return Ok(Vec::new());
            }
            let messages = consumer.messages().await.map_err(ClusterError::unavailable)?;
            messages
                .take(pending.min(limit))
                .map_err(ClusterError::unavailable)
                .and_then(|message| async move { decode(&message) })
                .try_collect()
                .await
        };
        // A consumer whose server dies mid-read would wait for its heartbeat: start afresh.
        crate::patiently(|| async { crate::within(crate::READ_TIMEOUT, read()).await }).await
    }

    /// Every message of `room` after `after`, now and from now on, in order and without a
    /// gap. It is an ordered push consumer: it recreates itself after the last message it
    /// delivered when NATS loses track of it (a broken connection, a dead server, a new
    /// stream leader), which its idle heartbeat of 5 s reveals.
    ///
    /// # Errors
    /// NATS did not answer.
    pub async fn follow(
        &self,
        room: &str,
        after: u64,
    ) -> Result<BoxStream<'static, Result<Stored, ClusterError>>, ClusterError> {
        let messages = crate::patiently(|| async {
            let consumer = self
                .stream_for(room)
                .create_consumer(consumer::push::OrderedConfig {
                    deliver_subject: self.js.client().new_inbox(),
                    filter_subject: room_subject(room),
                    deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                        start_sequence: after.saturating_add(1),
                    },
                    ..Default::default()
                })
                .await
                .map_err(ClusterError::unavailable)?;
            consumer.messages().await.map_err(ClusterError::unavailable)
        })
        .await?;
        Ok(messages
            .map(|message| message.map_err(ClusterError::unavailable).and_then(|m| decode(&m)))
            .boxed())
    }

    async fn consumer(
        &self,
        room: &str,
        after: Option<u64>,
    ) -> Result<consumer::Consumer<consumer::pull::OrderedConfig>, ClusterError> {
        let deliver_policy = match after {
            Some(after) => {
                consumer::DeliverPolicy::ByStartSequence { start_sequence: after.saturating_add(1) }
            }
            None => consumer::DeliverPolicy::All,
        };
        self.stream_for(room)
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: room_subject(room),
                deliver_policy,
                ..Default::default()
            })
            .await
            .map_err(ClusterError::unavailable)
    }

    /// The stream holding `room`'s messages.
    fn stream_for(&self, room: &str) -> &stream::Stream {
        if room.starts_with('@') { &self.direct } else { &self.stream }
    }

    /// Every room that exists.
    ///
    /// # Errors
    /// NATS did not answer.
    pub async fn rooms(&self) -> Result<Vec<String>, ClusterError> {
        let keys: Vec<String> = crate::patiently(|| async {
            let keys = self.rooms.keys().await.map_err(ClusterError::unavailable)?;
            keys.try_collect().await.map_err(ClusterError::unavailable)
        })
        .await?;
        Ok(keys.iter().map(|key| subjects::name(key)).collect())
    }

    /// Every room that exists, with its newest sequence number.
    ///
    /// # Errors
    /// NATS did not answer.
    pub async fn rooms_with_last_seq(&self) -> Result<Vec<(String, u64)>, ClusterError> {
        let mut rooms = Vec::new();
        for room in self.rooms().await? {
            let last = self.last_seq(&room).await?;
            rooms.push((room, last));
        }
        Ok(rooms)
    }

    /// Creates `room` unless it exists; returns whether it was created.
    ///
    /// # Errors
    /// NATS did not answer.
    pub async fn create_room(&self, room: &str) -> Result<bool, ClusterError> {
        match self.rooms.create(subjects::token(room), Bytes::new()).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(ClusterError::unavailable(e)),
        }
    }

    /// Whether `room` exists.
    ///
    /// # Errors
    /// NATS did not answer.
    pub async fn room_exists(&self, room: &str) -> Result<bool, ClusterError> {
        let key = subjects::token(room);
        crate::patiently(|| async {
            let entry = self.rooms.get(key.as_str()).await;
            Ok(entry.map_err(ClusterError::unavailable)?.is_some())
        })
        .await
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

fn decode(message: &jetstream::Message) -> Result<Stored, ClusterError> {
    let seq = message.info().map_err(ClusterError::unavailable)?.stream_sequence;
    Ok(Stored { seq, message: postcard::from_bytes(&message.payload)? })
}
