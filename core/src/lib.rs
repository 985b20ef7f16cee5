//! The room core: who is online, who is in which room, and the order in which a room's
//! messages reach its members, as a state machine with no I/O.
//!
//! The node feeds it events (a hello, a join, a send, a message the history has stored, a
//! disconnect) as method calls and carries out what they return. Nothing here reads a clock,
//! opens a socket or touches the disk, so every rule can be tested deterministically, the way
//! quinn-proto tests QUIC without a network.
//!
//! # Layout
//! - [`accounts`]: who may use a registered name, password rules, the failed-login limiter.
//! - [`moderation`]: rooms' owners and operators, bans, mutes, invitations and topics.
//! - [`names`]: the rules for user and room names, and how they compare.
//! - [`presence`]: name claims and session tokens (one connection per name).
//! - [`room`]: one room's members and its in-order delivery.
//! - [`rate`]: the token bucket that limits how fast a connection sends.
//! - [`core`](Core): everything above behind the events the node feeds it.
//! - [`control`]: a connection's control stream: the hello, then listings and who requests,
//!   as what was [`Received`] and the [`ControlAction`] to take.
//! - `stream`: a room stream: its [`opening`] join, then its sends as inputs
//!   ([`StreamInput`]) and the actions the core answers them with ([`StreamAction`]).
//!
//! Architecture invariant: this crate never imports tokio, quinn, fjall or the node. Members
//! are reached through the [`Mailbox`] trait, which the node implements with bounded queues.

pub mod accounts;
pub mod control;
mod core;
pub mod moderation;
pub mod names;
pub mod presence;
pub mod rate;
pub mod room;
mod stream;

pub use crate::core::{
    Admitted, Connected, Core, Joined, Outgoing, Refusal, ReplyOverflow, RoomSummary, Share,
};
use accounts::{AccountsMode, LoginRules};
pub use chat_proto::{ErrorCode, LeftReason, Seq, SessionToken};
pub use control::{ControlAction, Received};
pub use names::{RoomName, UserName};
pub use rate::{Rate, RateLimit, Verdict};
pub use room::{Full, Mailbox};
pub use stream::{Opening, StreamAction, StreamInput, opening};

/// One client connection, as the node numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// One membership: a connection's stream in one room, as the node numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemberId(pub u64);

/// The rules the core enforces, from the node's configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rules {
    /// Longest message body in bytes.
    pub max_message_len: usize,
    /// Most rooms one connection may be in at once.
    pub max_rooms_per_connection: usize,
    /// How fast one connection may send; `None` for no limit.
    pub rate: Option<Rate>,
    /// How fast one connection may make requests (joins, history pages, room lists, who);
    /// `None` for no limit.
    pub requests: Option<Rate>,
    /// Most messages in a page of history.
    pub max_history_page: usize,
    /// Rooms with more members than this get no arrivals and departures.
    pub presence_limit: usize,
    /// Who may make rooms.
    pub room_creation: moderation::RoomCreation,
    /// Most rooms (not counting direct conversations) a node keeps.
    pub max_rooms: usize,
    /// Whether guests may go online, or only accounts.
    pub accounts: AccountsMode,
    /// How many failed logins an account and an address get.
    pub logins: LoginRules,
}

/// The default [`Rules::presence_limit`]. Announcing costs a frame to every member per
/// arrival, so a room whose members all come back at once (after a node restart) costs the
/// square of its size: 250,000 frames for 500 members, what the node delivers in about half
/// a second; 4,000,000 for 2,000 (where Ergo's operators see IRC's JOIN/QUIT traffic hurt).
pub const PRESENCE_LIMIT: usize = 500;

/// Most bytes of text (senders and bodies) in a page of history; a page holds at least one
/// message whatever its length. With the node's frame limit of 4 MiB, a page of one message
/// at the 1 MiB length limit fits.
pub const PAGE_BYTES: usize = 256 << 10;

impl Rules {
    /// The limits with no send rate limit.
    pub fn new(max_message_len: usize, max_rooms_per_connection: usize) -> Self {
        Self {
            max_message_len,
            max_rooms_per_connection,
            rate: None,
            requests: None,
            max_history_page: 500,
            presence_limit: PRESENCE_LIMIT,
            room_creation: moderation::RoomCreation::Anyone,
            max_rooms: 10_000,
            accounts: AccountsMode::Open,
            logins: LoginRules::new(5, std::time::Duration::from_secs(60)),
        }
    }

    /// These rules with guests allowed or not, and failed logins limited by `logins`.
    #[must_use]
    pub fn with_accounts(self, accounts: AccountsMode, logins: LoginRules) -> Self {
        Self { accounts, logins, ..self }
    }

    /// These rules with rooms made by `who`, up to `max_rooms` in all.
    #[must_use]
    pub fn with_room_creation(self, who: moderation::RoomCreation, max_rooms: usize) -> Self {
        Self { room_creation: who, max_rooms, ..self }
    }

    /// These rules with arrivals and departures announced in rooms of at most `members`.
    #[must_use]
    pub fn with_presence_limit(self, members: usize) -> Self {
        Self { presence_limit: members, ..self }
    }

    /// These rules with requests at `per_second` in bursts of `burst`; 0 means no limit.
    #[must_use]
    pub fn with_request_rate(self, per_second: u32, burst: u32) -> Self {
        Self { requests: Rate::per_connection(per_second, burst), ..self }
    }

    /// These rules with pages of history of at most `messages`.
    #[must_use]
    pub fn with_history_page(self, messages: usize) -> Self {
        Self { max_history_page: messages.max(1), ..self }
    }

    /// The messages a page asked for with `limit` may hold.
    pub fn page_len(&self, limit: u32) -> usize {
        (limit as usize).min(self.max_history_page)
    }

    /// These rules with a send rate of `messages_per_second` in bursts of `burst`; a rate
    /// of 0 means no limit.
    #[must_use]
    pub fn with_rate(self, messages_per_second: u32, burst: u32) -> Self {
        Self { rate: Rate::per_connection(messages_per_second, burst), ..self }
    }
}

/// The sends of one room stream that may wait for the history at once, for a member whose
/// queue holds `member_queue` frames: their acks and echoes come back in bursts and must
/// fit the sender's own queue, so a quarter of it.
pub fn sends_in_flight(member_queue: usize) -> usize {
    (member_queue / 4).max(1)
}

/// The room a sender's queue must have free before its next send is read: the echoes and
/// acks of a full window of sends in flight. An ack is queued when the send is durable,
/// not when it is written, so without this a sender whose replies the node writes more
/// slowly than it takes its sends would be dropped as too slow by its own acks; with it,
/// the node stops reading its sends until its queue drains, and the stream's flow control
/// slows the sender down.
pub fn room_before_send(member_queue: usize) -> usize {
    (2 * sends_in_flight(member_queue)).min(member_queue)
}
