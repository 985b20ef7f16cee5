//! The node's seams: the history and the fan-out, each a trait with the embedded
//! implementation that a single node uses. A cluster mode implements them again (on a
//! replicated log and a message bus) without touching the connection code.
//!
//! Presence (one connection per user name) lives in the room core for a single node; a
//! cluster adds a shared claim in front of `Core::connect`.

use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use chat_core::{Core, RoomName, Seq};
use chat_history::{Completion, History, HistoryError, Message, Page};

use crate::mailbox::Outbox;

/// The rooms' message log.
pub trait HistoryStore: Send + Sync + 'static {
    /// Appends `message`; `done` gets its sequence number once it is durable. Must not block.
    fn append(&self, room: &RoomName, message: Message, done: Completion<Seq>);
    /// Retained messages after `after`, at most `limit`. May block: call it from
    /// `spawn_blocking`.
    fn read(&self, room: &RoomName, after: Option<Seq>, limit: usize)
    -> Result<Page, HistoryError>;
    /// Every room with its newest sequence number.
    fn rooms(&self) -> Result<Vec<(String, Seq)>, HistoryError>;
    /// Creates a room if it is missing; returns whether it was created.
    fn create_room(&self, room: &RoomName) -> Result<bool, HistoryError>;
    /// Waits until every append made so far is durable and its completion has run.
    fn flush(&self) -> Result<(), HistoryError>;
    /// Flushes and releases the store.
    fn close(&self) -> Result<(), HistoryError>;
}

impl HistoryStore for History {
    fn append(&self, room: &RoomName, message: Message, done: Completion<Seq>) {
        History::append(self, room.as_str(), message, done);
    }
    fn read(
        &self,
        room: &RoomName,
        after: Option<Seq>,
        limit: usize,
    ) -> Result<Page, HistoryError> {
        History::read(self, room.as_str(), after, limit)
    }
    fn rooms(&self) -> Result<Vec<(String, Seq)>, HistoryError> {
        Ok(History::rooms(self)?.into_iter().map(|(name, state)| (name, state.last)).collect())
    }
    fn create_room(&self, room: &RoomName) -> Result<bool, HistoryError> {
        History::create_room(self, room.as_str())
    }
    fn flush(&self) -> Result<(), HistoryError> {
        History::flush(self)
    }
    fn close(&self) -> Result<(), HistoryError> {
        History::close(self)
    }
}

/// Carries a stored message to every member of its room.
pub trait FanOut: Send + Sync + 'static {
    /// `frame` is the encoded message, shared by every member. Must not block.
    fn publish(&self, room: &RoomName, seq: Seq, frame: Bytes);
}

/// The single node's fan-out: straight into the room core, which offers the frame to each
/// member's queue in sequence order.
pub struct LocalFanOut(pub Arc<Mutex<Core<Outbox>>>);

impl FanOut for LocalFanOut {
    fn publish(&self, room: &RoomName, seq: Seq, frame: Bytes) {
        let evicted =
            self.0.lock().unwrap_or_else(PoisonError::into_inner).committed(room, seq, frame);
        for gone in evicted {
            tracing::info!(member = gone.member.0, last_seq = gone.last_seq, %room, "dropped a member that fell behind");
        }
    }
}
