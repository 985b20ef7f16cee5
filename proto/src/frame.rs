//! The frames of the protocol.
//!
//! A connection carries one control stream (the first bidirectional stream the client opens:
//! hello, room list, who is online) and one bidirectional stream per joined room (join, then
//! sends one way and history, live messages and acks the other). Both directions use the
//! same codec; [`ClientFrame`] is what the node accepts, [`NodeFrame`] what it sends.

use serde::{Deserialize, Serialize};

/// A per-room sequence number: assigned by the history, strictly increasing, starting at 1.
pub type Seq = u64;

/// A random token the node hands out in [`Welcome`]; a client that reconnects with it takes
/// its name back from its own stale connection.
pub type SessionToken = [u8; 16];

/// What a client sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientFrame {
    /// First frame on the control stream.
    Hello {
        /// The user name to go online with.
        name: String,
        /// The token of an earlier session of the same user, to take its name over; for a
        /// registered name, a session the account still holds logs in as well as its
        /// password does.
        resume: Option<SessionToken>,
        /// For a registered name: its password, or a password to register the name with.
        login: Option<Login>,
    },
    /// Control stream: list the rooms.
    ListRooms,
    /// Control stream: who is in a room.
    Who { room: String },
    /// First frame on a room stream.
    Join {
        room: String,
        /// The last sequence number the client has seen: the history after it is sent,
        /// oldest first. `None` sends the newest messages instead.
        after: Option<Seq>,
        /// At most this many history messages (the node caps it at
        /// [`Limits::max_history_page`]); [`NodeFrame::HistoryEnd`] then says whether there
        /// are more.
        limit: u32,
    },
    /// Room stream: post a message. The node answers with [`NodeFrame::Ack`] carrying the
    /// same `client_id`, or with [`NodeFrame::Error`] naming it.
    Send { client_id: u64, body: String },
    /// Room stream: a page of the room's history at `anchor`, at most `limit` messages (the
    /// node caps it at [`Limits::max_history_page`], and in bytes). Answered by
    /// [`NodeFrame::Page`] with the same `request_id`.
    History { request_id: u64, anchor: Anchor, limit: u32 },
    /// Control stream: make a room (where the node lets its users). Answered by
    /// [`NodeFrame::RoomCreated`].
    CreateRoom { room: String },
    /// Control stream: register the connection's name (a guest's) with `password`; the
    /// session becomes the account's. Answered by [`NodeFrame::Registered`].
    Register { password: Secret },
    /// Control stream: change the account's password; every other session of the account
    /// ends. Answered by [`NodeFrame::PasswordChanged`].
    ChangePassword { old: Secret, new: Secret },
    /// Control stream: end this session for good (its token no longer logs in). Answered by
    /// [`NodeFrame::LoggedOut`], then the node closes the connection.
    Logout,
    /// Control stream: a moderation action in `room`, for its owner and operators (and the
    /// node's operators). Answered by [`NodeFrame::Moderated`]; the room's members get
    /// [`NodeFrame::RoomEvent`].
    Moderate { room: String, action: Moderation },
    /// Control stream: the account has read `room` up to `seq` (a marker only moves
    /// forward). Answered by [`NodeFrame::Marked`].
    MarkRead { room: String, seq: Seq },
}

/// What a room's owner or operators may do to it and its members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Moderation {
    /// Remove a member now; it may join again.
    Kick {
        name: String,
        reason: String,
    },
    /// Remove a name and keep it out, for `minutes` or for good.
    Ban {
        name: String,
        minutes: Option<u32>,
        reason: String,
    },
    Unban {
        name: String,
    },
    /// Keep a name from sending, for `minutes` or until unmuted.
    Mute {
        name: String,
        minutes: Option<u32>,
    },
    Unmute {
        name: String,
    },
    /// Make a name an operator of the room (the owner and node operators only).
    Op {
        name: String,
    },
    Deop {
        name: String,
    },
    /// Let a name join the room while it is invite-only.
    Invite {
        name: String,
    },
    /// Only operators and invited names may join (`true`), or anyone (`false`).
    InviteOnly(bool),
    /// The room's topic, shown on joining it.
    Topic(String),
    /// Delete the room and its history (the owner and node operators only); its members
    /// are removed, and its name may be made again, as a new room.
    DeleteRoom,
}

/// How a hello proves (or claims) a registered name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Login {
    /// Log in to the account of the name.
    Password(Secret),
    /// Register the name, which must be free, with this password, and log in.
    Register(Secret),
}

/// A password: its `Debug` shows nothing of it, so that no log line holds one.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

/// Where a page of history is taken from, as in IRCv3 `CHATHISTORY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Anchor {
    /// The newest messages.
    Latest,
    /// The newest messages older than this sequence number.
    Before(Seq),
    /// The oldest messages newer than this sequence number.
    After(Seq),
    /// Half the page older than this sequence number, the rest from it on.
    Around(Seq),
}

/// Where a page of history sits in what the room retains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageEnds {
    /// Retained messages older than the page exist: page back with [`Anchor::Before`].
    pub more_before: bool,
    /// Messages newer than the page and older than the live ones exist (a join that missed
    /// more than a page, a page before the newest): page on with [`Anchor::After`].
    pub more_after: bool,
    /// The oldest retained message's number: the history starts there.
    pub first_seq: Seq,
}

impl ClientFrame {
    /// What the frame is, as the sentences about a frame in the wrong place name it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Hello { .. } => "a hello",
            Self::ListRooms => "a room listing",
            Self::Who { .. } => "a who request",
            Self::Join { .. } => "a join",
            Self::Send { .. } => "a send",
            Self::History { .. } => "a history request",
            Self::CreateRoom { .. } => "a room creation",
            Self::Register { .. } => "a registration",
            Self::ChangePassword { .. } => "a password change",
            Self::Logout => "a logout",
            Self::Moderate { .. } => "a moderation",
            Self::MarkRead { .. } => "a read marker",
        }
    }

    /// The client id of a [`ClientFrame::Send`] from the first bytes of its encoding, for
    /// answering a send too long to be read whole.
    pub fn send_id_from_head(head: &[u8]) -> Option<u64> {
        /// `Send`'s position in the enum: postcard encodes it as the variant's varint.
        const SEND_VARIANT: u32 = 4;
        match postcard::take_from_bytes::<(u32, u64)>(head) {
            Ok(((SEND_VARIANT, client_id), _)) => Some(client_id),
            _ => None,
        }
    }
}

/// What the node sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeFrame {
    /// Answer to a hello that was accepted.
    Welcome(Welcome),
    /// Answer to [`ClientFrame::ListRooms`].
    Rooms { rooms: Vec<RoomInfo> },
    /// Answer to [`ClientFrame::Who`].
    Members { room: String, names: Vec<String> },
    /// First frame on a room stream after a successful join. Every message with a sequence
    /// number up to `last_seq` that follows is history; later ones are live.
    Joined {
        room: String,
        last_seq: Seq,
        /// Messages the client asked for that the history no longer retains.
        gap: Option<Gap>,
        /// The room's topic (empty for none).
        topic: String,
    },
    /// A message in a room, from the history or live.
    Message(ChatMessage),
    /// The message with this client id is in the history under `seq`.
    Ack { client_id: u64, seq: Seq },
    /// Something went wrong. With a `client_id`, one send failed and the stream goes on;
    /// otherwise the request or stream it answers has ended.
    Error(ErrorFrame),
    /// After a join's history, before the live messages: the history asked for is all
    /// there, and where it sits.
    HistoryEnd(PageEnds),
    /// The answer to [`ClientFrame::History`]: its messages, oldest first.
    Page { request_id: u64, messages: Vec<ChatMessage>, ends: PageEnds },
    /// Room stream: someone else joined the room. Sent in order with the live messages, in
    /// rooms of at most [`Limits::presence_limit`] members.
    Arrived { name: String },
    /// Room stream: someone left the room, and why; as [`NodeFrame::Arrived`].
    Left { name: String, reason: LeftReason },
    /// Answer to [`ClientFrame::CreateRoom`]: the room exists now; `existed` if it did before.
    RoomCreated { room: String, existed: bool },
    /// Answer to [`ClientFrame::Register`]: the name is the connection's account now.
    Registered { name: String },
    /// Answer to [`ClientFrame::ChangePassword`]: `sessions_ended` other sessions no longer
    /// log in.
    PasswordChanged { sessions_ended: u32 },
    /// Answer to [`ClientFrame::Logout`]: the session's token no longer logs in.
    LoggedOut,
    /// Answer to [`ClientFrame::Moderate`]: done, and the room told.
    Moderated { room: String },
    /// Room stream: an operator `by` did `action` in the room (in order with the messages).
    RoomEvent { by: String, action: Moderation },
    /// Answer to [`ClientFrame::MarkRead`]: the account's marker in `room` is at `seq` (or
    /// further, if it was).
    Marked { room: String, seq: Seq },
}

/// Why a member left a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum LeftReason {
    /// Left the room (closed the room's stream).
    Left,
    /// Closed the connection, or lost it.
    Disconnected,
    /// The connection stopped answering and timed out.
    TimedOut,
    /// The node dropped the member: it fell too far behind, or broke the rules.
    Dropped,
}

impl LeftReason {
    /// The reason as a few words for a person: "ada left (timed out)".
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Left => "left",
            Self::Disconnected => "disconnected",
            Self::TimedOut => "timed out",
            Self::Dropped => "dropped by the node",
        }
    }
}

/// The node's answer to a hello.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The name as the node stored it.
    pub name: String,
    /// Present it in a later hello to take this name back from a dead connection.
    pub token: SessionToken,
    /// Whether the name is a registered account the connection logged in to (else a guest).
    pub account: bool,
    pub limits: Limits,
}

/// The node's limits, announced in the welcome so that a client can check before sending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Largest message body, in bytes of UTF-8.
    pub max_message_len: u32,
    /// Largest encoded frame a client may send, in bytes.
    pub max_frame_len: u32,
    /// Most room streams open at once on one connection.
    pub max_rooms_per_connection: u32,
    /// Messages a room retains.
    pub history_cap: u64,
    /// Messages a direct conversation retains.
    pub direct_history_cap: u64,
    /// Sends per second one connection may keep up (0: no limit); faster sends are refused
    /// with [`ErrorCode::SlowDown`].
    pub messages_per_second: u32,
    /// Sends one connection may make at once after a quiet spell.
    pub message_burst: u32,
    /// Most messages in one page of history (a join's, or a history request's).
    pub max_history_page: u32,
    /// Requests (joins, history pages, room lists, who) per second one connection may keep
    /// up (0: no limit); faster ones are refused with [`ErrorCode::SlowDown`].
    pub requests_per_second: u32,
    /// Requests one connection may make at once after a quiet spell.
    pub request_burst: u32,
    /// Rooms with more members than this (on one node) get no [`NodeFrame::Arrived`] and
    /// [`NodeFrame::Left`]: ask with [`ClientFrame::Who`] instead.
    pub presence_limit: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomInfo {
    pub name: String,
    /// Sequence number of the newest message, 0 for an empty room.
    pub last_seq: Seq,
    /// Members online in the room on this node.
    pub members: u32,
    /// The room's topic (empty for none).
    pub topic: String,
    /// For an account that has read the room: the messages after its read marker, counted
    /// up to [`UNREAD_COUNTED`]; `None` for guests and rooms never marked read.
    pub unread: Option<u32>,
}

/// The most unread messages a room listing counts per room ("500+" beyond).
pub const UNREAD_COUNTED: u32 = 500;

/// Sequence numbers `first..=last` were asked for but have been trimmed from the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    pub first: Seq,
    pub last: Seq,
}

/// A message as every member of the room receives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub room: String,
    pub seq: Seq,
    pub sender: String,
    /// The node's clock when it accepted the message, in milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    pub body: String,
}

/// A [`NodeFrame::Message`] made of borrowed parts, which encodes to the very bytes of the
/// owned frame: the node writes a stored message's frame straight from the history's record,
/// copying its text once, into the frame.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct MessageFrameRef<'a> {
    /// `NodeFrame::Message`'s position in the enum: postcard encodes it as the variant's
    /// varint, as for [`ClientFrame::send_id_from_head`].
    variant: u32,
    room: &'a str,
    seq: Seq,
    sender: &'a str,
    timestamp_ms: u64,
    body: &'a str,
}

impl<'a> MessageFrameRef<'a> {
    pub fn new(room: &'a str, seq: Seq, sender: &'a str, timestamp_ms: u64, body: &'a str) -> Self {
        /// `Message`'s position in [`NodeFrame`].
        const MESSAGE_VARIANT: u32 = 4;
        Self { variant: MESSAGE_VARIANT, room, seq, sender, timestamp_ms, body }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorFrame {
    pub code: ErrorCode,
    /// A sentence for a person: what went wrong and what to do.
    pub message: String,
    /// The send or history request this error answers, if it answers one (a stream's sends
    /// and requests share one numbering).
    pub client_id: Option<u64>,
    /// For [`ErrorCode::TooSlow`]: the last sequence number delivered on this stream.
    pub last_seq: Option<Seq>,
    /// For [`ErrorCode::TooManyLogins`]: how long to wait before trying again.
    pub retry_after_ms: Option<u64>,
}

/// Why a request failed. Stable across versions of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The user name is online already.
    NameTaken,
    /// The user name breaks the naming rules.
    InvalidName,
    /// No room has this name.
    UnknownRoom,
    /// The room name breaks the naming rules.
    InvalidRoomName,
    /// This connection already has a stream in the room.
    AlreadyJoined,
    /// The connection has as many room streams as the node allows.
    TooManyRooms,
    /// The message body is longer than the node's limit.
    MessageTooLong,
    /// The message body is empty.
    EmptyMessage,
    /// The member fell too far behind and was dropped from the room.
    TooSlow,
    /// The history could not store the message (disk full or failing); it was not relayed.
    HistoryUnavailable,
    /// The frame was not valid here.
    ProtocolViolation,
    /// The node is shutting down.
    ShuttingDown,
    /// The connection sends faster than the node allows; the message was not sent. Wait and
    /// send it again. A connection that goes on sending regardless is closed.
    SlowDown,
    /// The room is a direct conversation of two other users, or the node lets nobody (or
    /// not this user) do what was asked.
    NotAllowed,
    /// The name is a registered account: log in with its password.
    LoginRequired,
    /// The password is not the account's.
    WrongPassword,
    /// A password was given for a name that no account has.
    UnknownAccount,
    /// The name is registered already.
    NameRegistered,
    /// Too many failed logins for the account or from the address: wait for
    /// [`ErrorFrame::retry_after_ms`].
    TooManyLogins,
    /// The node takes only registered accounts: register the name first.
    AccountRequired,
    /// The password breaks the node's rules (too short or too long).
    InvalidPassword,
    /// The request needs a logged-in account, and this session is a guest's.
    NotLoggedIn,
    /// The name is banned from the room.
    Banned,
    /// The room is invite-only and the name is not invited.
    InviteOnly,
    /// The name is muted in the room: its sends are refused.
    Muted,
    /// An operator removed the member from the room.
    Kicked,
    /// Only the room's operators (or its owner) may do that.
    NotOperator,
    /// The history did not confirm the message in time: it may have been stored. Sending it
    /// again under the same `client_id` within two minutes stores it at most once.
    MaybeStored,
}

impl ErrorFrame {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            client_id: None,
            last_seq: None,
            retry_after_ms: None,
        }
    }
}

impl std::fmt::Display for ErrorFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<ErrorFrame> for NodeFrame {
    fn from(error: ErrorFrame) -> Self {
        Self::Error(error)
    }
}
