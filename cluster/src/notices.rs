//! What nodes tell each other outside the stream (core NATS: nothing of it is kept).
//!
//! - Arrivals and departures: a node publishes its own members' on the room's notice subject
//!   (`chat.notice.<room>`), and each node that follows the room tells its members there.
//!   They are not ordered with the room's messages across nodes (those come through the
//!   stream), and one published while NATS is unreachable is lost: the members bucket, which
//!   `Who` reads, is what stays right.
//! - Direct messages for a user online on another node: the node that stored one publishes
//!   its frame on `chat.inbox.<user>`, and the user's node pushes it to them. One lost is
//!   still in the history, and the conversation in the user's listing.

use chat_core::LeftReason;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::ClusterError;
use crate::subjects::token;

/// A member of a room arrived (`left: None`) or left, on some node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    pub name: String,
    pub left: Option<LeftReason>,
}

/// A direct message for `to` (a user's name in lower case), stored in `room` under `seq`;
/// `frame` is the message as its members receive it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Direct {
    pub to: String,
    pub room: String,
    pub seq: u64,
    pub frame: Vec<u8>,
}

/// What goes on the wire: the node that told, so that it can skip its own.
#[derive(Serialize, Deserialize)]
struct Told<T> {
    node: u64,
    told: T,
}

/// Publishes and hears notices.
pub struct Notices {
    client: async_nats::Client,
    node: u64,
}

fn subject(room: &str) -> String {
    format!("chat.notice.{}", token(room))
}

impl Notices {
    pub(crate) fn new(client: async_nats::Client) -> Self {
        Self { client, node: crate::random_id() }
    }

    /// Tells every other node following `room`.
    ///
    /// # Errors
    /// The notice cannot be encoded or handed to the NATS client.
    pub async fn publish(&self, room: &str, notice: Notice) -> Result<(), ClusterError> {
        self.tell(subject(room), notice).await
    }

    /// Hands a direct message to the node of the user it is for.
    ///
    /// # Errors
    /// As for [`publish`](Self::publish).
    pub async fn publish_direct(&self, direct: Direct) -> Result<(), ClusterError> {
        self.tell(format!("chat.inbox.{}", token(&direct.to)), direct).await
    }

    async fn tell<T: Serialize>(&self, subject: String, told: T) -> Result<(), ClusterError> {
        let told = postcard::to_stdvec(&Told { node: self.node, told })?;
        self.client.publish(subject, told.into()).await.map_err(ClusterError::unavailable)
    }

    /// Every direct message other nodes hand on from now on, for any user: the node keeps
    /// those for its own.
    ///
    /// # Errors
    /// NATS refused the subscription.
    pub async fn hear_direct(&self) -> Result<BoxStream<'static, Direct>, ClusterError> {
        self.hear_on("chat.inbox.*".into()).await
    }

    /// The notices other nodes publish for `room` from now on (undecodable ones skipped).
    ///
    /// # Errors
    /// NATS refused the subscription.
    pub async fn hear(&self, room: &str) -> Result<BoxStream<'static, Notice>, ClusterError> {
        self.hear_on(subject(room)).await
    }

    async fn hear_on<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        subject: String,
    ) -> Result<BoxStream<'static, T>, ClusterError> {
        let node = self.node;
        let heard = self.client.subscribe(subject).await.map_err(ClusterError::unavailable)?;
        // So that the server has the interest before the first member joins.
        self.client.flush().await.map_err(ClusterError::unavailable)?;
        Ok(heard
            .filter_map(move |message| {
                let told = postcard::from_bytes::<Told<T>>(&message.payload).ok();
                std::future::ready(told.filter(|t| t.node != node).map(|t| t.told))
            })
            .boxed())
    }
}
