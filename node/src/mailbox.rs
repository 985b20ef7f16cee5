//! A member's outbox: the bounded queue between the room core and the task that writes the
//! member's room stream.
//!
//! The core offers each message without waiting; when the queue is full the member is
//! dropped from the room instead of slowing everyone else down, and the writer learns, through
//! the eviction signal, to tell the client where it stopped.

use std::sync::Arc;

use bytes::Bytes;
use chat_core::{Full, Mailbox, Seq};
use chat_proto::NodeFrame;
use tokio::sync::{mpsc, watch};

use crate::pages::PageRoom;

/// One frame on its way to a member's room stream.
#[derive(Debug)]
pub enum Outgoing {
    /// A room message; the writer tracks the last sequence number it wrote.
    Message(Seq, Bytes),
    /// Any other frame (an ack, an error).
    Frame(Bytes),
    /// A page of history, with its room in the node's page budget until it is written.
    /// Boxed: every slot of every member's queue is as large as the largest variant.
    Page(Box<(Bytes, PageRoom)>),
}

/// Why the core ended a member's stream.
#[derive(Debug, Clone)]
pub enum Ending {
    /// Dropped for falling behind; the last sequence number offered.
    TooSlow(Seq),
    /// Removed by an operator; the error frame that says so.
    Removed(Bytes),
}

/// The core's handle on one member; a clone goes with each of its sends to queue the ack.
#[derive(Clone)]
pub struct Outbox {
    pub queue: mpsc::Sender<Outgoing>,
    /// Where the core ends a member; `None` for a connection's inbox, which the core never
    /// ends (a full inbox misses a push only), so that no connection pays for one.
    pub evicted: Option<Arc<watch::Sender<Option<Ending>>>>,
}

impl Mailbox for Outbox {
    type Message = Bytes;

    fn encode(frame: &NodeFrame) -> Bytes {
        crate::reply::encode(frame)
    }

    fn offer(&self, seq: Seq, frame: &Bytes) -> Result<(), Full> {
        self.queue.try_send(Outgoing::Message(seq, frame.clone())).map_err(|_| Full)
    }

    fn reply(&self, frame: Bytes) -> Result<(), Full> {
        self.queue.try_send(Outgoing::Frame(frame)).map_err(|_| Full)
    }

    fn space(&self) -> usize {
        self.queue.capacity()
    }

    fn evict(&self, last_seq: Seq) {
        self.end(Ending::TooSlow(last_seq));
    }

    fn remove(&self, frame: Bytes) {
        self.end(Ending::Removed(frame));
    }
}

impl Outbox {
    fn end(&self, ending: Ending) {
        if let Some(evicted) = &self.evicted {
            evicted.send_replace(Some(ending));
        }
    }
}
