//! A member's room stream as events and actions: what the node's reader saw arrive, and what
//! the core says to do about it. The node only reads frames and carries the action out.

use std::time::Instant;

use chat_proto::{Anchor, ClientFrame};

use crate::control::Received;
use crate::core::{Core, Outgoing, Refusal};
use crate::{Mailbox, MemberId, Seq};

/// What a room stream's first frame asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opening {
    /// Join `room`, with at most `limit` messages of history: after `after`, or the newest.
    Join { room: String, after: Option<Seq>, limit: u32 },
    /// Answer with the refusal and end the stream.
    Refuse(Refusal),
    /// The client finished the stream before joining: nothing to answer.
    Ended,
}

/// A room stream's first frame, which must be a join.
pub fn opening(received: Received) -> Opening {
    match received {
        Received::Frame(ClientFrame::Join { room, after, limit }) => {
            Opening::Join { room, after, limit }
        }
        Received::Frame(other) => Opening::Refuse(Refusal::UnexpectedFrame {
            expected: "a room stream starts with a join",
            got: other.name(),
        }),
        Received::Malformed(detail) => Opening::Refuse(Refusal::Malformed(detail)),
        Received::Ended => Opening::Ended,
    }
}

/// What arrived on a member's room stream, as the node's reader saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamInput {
    /// A send.
    Send { client_id: u64, body: String },
    /// A history request.
    History { request_id: u64, anchor: Anchor, limit: u32 },
    /// A frame of another kind; `frame` names it ("a join").
    Other { frame: &'static str },
    /// A frame over the length limit, skipped unread; its client id if its first bytes
    /// told it.
    Oversized { len: usize, client_id: Option<u64> },
    /// Bytes that are not a frame. `skippable` when the reader could step over them to the
    /// next frame; otherwise the stream cannot go on.
    Malformed { detail: String, skippable: bool },
}

/// What the node must do about a [`StreamInput`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamAction {
    /// Hand the message to the history (once a place among the stream's sends in flight is
    /// free); its ack answers `client_id`.
    Append { client_id: u64, outgoing: Outgoing, body: String },
    /// Read a page of the room's history at `anchor`, of at most `messages` messages and
    /// [`PAGE_BYTES`](crate::PAGE_BYTES), and answer `request_id` with it.
    Page { request_id: u64, anchor: Anchor, messages: usize },
    /// Answer with the refusal (about `client_id` if given) and read on.
    Refuse { refusal: Refusal, client_id: Option<u64> },
    /// Answer with the refusal and end the stream: the reader cannot find the next frame.
    RefuseAndEnd(Refusal),
    /// Stop reading and close the whole connection with the refusal's close code, once the
    /// stream's answers so far are out.
    Close(Refusal),
}

impl<B: Mailbox> Core<B> {
    /// Decides what to do about what arrived on `member`'s room stream at `now`.
    pub fn on_stream(
        &mut self,
        member: MemberId,
        input: StreamInput,
        now: Instant,
    ) -> StreamAction {
        match input {
            StreamInput::Send { client_id, body } => match self.check_send(member, &body, now) {
                Ok(outgoing) => StreamAction::Append { client_id, outgoing, body },
                Err(refusal @ Refusal::RateLimited) => StreamAction::Close(refusal),
                Err(refusal) => StreamAction::Refuse { refusal, client_id: Some(client_id) },
            },
            StreamInput::History { request_id, anchor, limit } => {
                match self.check_member_request(member, now) {
                    Ok(()) => {
                        let messages = self.rules().page_len(limit);
                        StreamAction::Page { request_id, anchor, messages }
                    }
                    Err(refusal @ Refusal::RateLimited) => StreamAction::Close(refusal),
                    Err(refusal) => StreamAction::Refuse { refusal, client_id: Some(request_id) },
                }
            }
            StreamInput::Other { frame } => StreamAction::Refuse {
                refusal: Refusal::UnexpectedFrame {
                    expected: "a room stream takes sends",
                    got: frame,
                },
                client_id: None,
            },
            StreamInput::Oversized { len, client_id } => {
                StreamAction::Refuse { refusal: self.oversized(len), client_id }
            }
            StreamInput::Malformed { detail, skippable: true } => {
                StreamAction::Refuse { refusal: Refusal::Malformed(detail), client_id: None }
            }
            StreamInput::Malformed { detail, skippable: false } => {
                StreamAction::RefuseAndEnd(Refusal::Malformed(detail))
            }
        }
    }
}
