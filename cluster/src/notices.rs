//! Arrivals and departures, heard by every node: a node publishes its own members' on the
//! room's notice subject (`chat.notice.<room>`, core NATS, outside the stream: nothing of
//! them is kept), and each node that follows the room tells its members there.
//!
//! They are not ordered with the room's messages across nodes (those come through the
//! stream), and a notice published while NATS is unreachable is lost: the members bucket,
//! which `Who` reads, is what stays right.

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

/// What goes on the wire: the node that told, so that it can skip its own.
#[derive(Serialize, Deserialize)]
struct Told {
    node: u64,
    notice: Notice,
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
        let told = postcard::to_stdvec(&Told { node: self.node, notice })?;
        self.client.publish(subject(room), told.into()).await.map_err(ClusterError::unavailable)
    }

    /// The notices other nodes publish for `room` from now on (undecodable ones skipped).
    ///
    /// # Errors
    /// NATS refused the subscription.
    pub async fn hear(&self, room: &str) -> Result<BoxStream<'static, Notice>, ClusterError> {
        let node = self.node;
        let heard =
            self.client.subscribe(subject(room)).await.map_err(ClusterError::unavailable)?;
        // So that the server has the interest before the first member joins.
        self.client.flush().await.map_err(ClusterError::unavailable)?;
        Ok(heard
            .filter_map(move |message| {
                let told = postcard::from_bytes::<Told>(&message.payload).ok();
                std::future::ready(told.filter(|t| t.node != node).map(|t| t.notice))
            })
            .boxed())
    }
}
