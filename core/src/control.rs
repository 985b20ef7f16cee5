//! A connection's control stream as events and actions: the frames the node read from it,
//! and what the core says to do about each. The node reads, asks, and carries the answer
//! out, asking the directory (a name claim, a listing) where the answer says so.

use chat_proto::codec::FrameError;
use chat_proto::{ClientFrame, Login, Moderation, Secret, SessionToken};

use std::time::Instant;

use crate::accounts::check_password;
use crate::{ConnId, Core, Mailbox, Refusal, RoomName};

/// What the node's reader got from a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    Frame(ClientFrame),
    /// Bytes that are not a frame; the text says what is wrong with them.
    Malformed(String),
    /// The client finished the stream.
    Ended,
}

impl Received {
    /// What a reader's result says arrived.
    pub fn from_read(read: Result<Option<ClientFrame>, FrameError>) -> Self {
        match read {
            Ok(Some(frame)) => Self::Frame(frame),
            Ok(None) => Self::Ended,
            Err(e) => Self::Malformed(e.to_string()),
        }
    }
}

/// A hello: the name to go online with, the token of the session it resumes, and how it
/// logs in to (or registers) the name's account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub name: String,
    pub resume: Option<SessionToken>,
    pub login: Option<Login>,
}

/// What the node must do about a frame on the control stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlAction {
    /// Answer with the rooms and their members.
    ListRooms,
    /// Answer with who is in `room`.
    Who { room: String },
    /// Create `room` (the core has checked its name and that users may), unless the node
    /// has [`Rules::max_rooms`](crate::Rules) already (see
    /// [`Core::check_room_count`](crate::Core::check_room_count)); answer with
    /// `RoomCreated`.
    CreateRoom { room: RoomName },
    /// Register the connection's name (a guest's) with `password`, once
    /// [`Core::begin_login`] gives the hash a turn; then [`Core::registered`]. Answer with
    /// `Registered`, or `NameRegistered` if another connection registered it first.
    Register { password: Secret },
    /// Check `old` (after [`Core::begin_login`]), set `new` and end the account's other
    /// sessions; answer with `PasswordChanged`.
    ChangePassword { old: Secret, new: Secret },
    /// End this session for good (its token no longer logs in); answer with `LoggedOut`
    /// and close the connection.
    Logout,
    /// Change `room`'s rules with `action` by the connection's user (an account): the node
    /// judges it against the stored rules with
    /// [`moderation::apply`](crate::moderation::apply), stores them and has the core carry
    /// them out ([`Core::install_rules`]); answer with `Moderated`.
    Moderate { room: RoomName, action: Moderation },
    /// Move the account's read marker in `room` (resolved: `@bob` is the conversation) to
    /// `seq`; answer with `Marked`.
    MarkRead { room: String, seq: chat_proto::Seq },
    /// Answer with the refusal and read on.
    Refuse(Refusal),
    /// Answer with the refusal and close the connection with its close code.
    Close(Refusal),
    /// The client is done: close the connection as a normal end.
    Bye,
}

/// The control stream's first frame, which must be a hello. The node then claims the name
/// (in cluster mode in the shared directory first) and hands it to
/// [`Core::connect`](crate::Core::connect), which welcomes or refuses it.
///
/// # Errors
/// Anything but a hello: the connection is refused with [`Refusal::NoHello`].
pub fn greeting(received: Received) -> Result<Hello, Refusal> {
    match received {
        Received::Frame(ClientFrame::Hello { name, resume, login }) => {
            Ok(Hello { name, resume, login })
        }
        _ => Err(Refusal::NoHello),
    }
}

impl<B: Mailbox> Core<B> {
    /// A frame on `conn`'s control stream after the welcome, at `now`: [`request`], with
    /// listings and who requests taken from the connection's request budget.
    pub fn on_control(&mut self, conn: ConnId, received: Received, now: Instant) -> ControlAction {
        let action = request(received);
        if !matches!(
            action,
            ControlAction::ListRooms
                | ControlAction::Who { .. }
                | ControlAction::CreateRoom { .. }
                | ControlAction::Register { .. }
                | ControlAction::ChangePassword { .. }
                | ControlAction::Moderate { .. }
                | ControlAction::MarkRead { .. }
        ) {
            return action;
        }
        match self.check_request(conn, now) {
            Ok(()) => {}
            Err(refusal @ Refusal::RateLimited) => return ControlAction::Close(refusal),
            Err(refusal) => return ControlAction::Refuse(refusal),
        }
        match action {
            // Who is in a conversation is for its two users to ask; `@bob` means one's own.
            ControlAction::Who { room } => match self.admit(conn, &room) {
                Ok(admitted) => ControlAction::Who { room: admitted.room.to_string() },
                Err(refusal) => ControlAction::Refuse(refusal),
            },
            ControlAction::CreateRoom { .. } if !self.may_create_rooms(conn) => {
                ControlAction::Refuse(Refusal::RoomCreationOff(self.rules().room_creation))
            }
            // A conversation is made by writing to someone, not by name.
            ControlAction::CreateRoom { room } if room.direct_pair().is_some() => {
                ControlAction::Refuse(Refusal::CreateDirect)
            }
            ControlAction::Register { .. } if self.is_account(conn) => {
                let name = self.name_of(conn).map(|n| n.to_string()).unwrap_or_default();
                ControlAction::Refuse(Refusal::NameRegistered(name))
            }
            ControlAction::ChangePassword { .. }
            | ControlAction::Moderate { .. }
            | ControlAction::MarkRead { .. }
                if !self.is_account(conn) =>
            {
                ControlAction::Refuse(Refusal::NotLoggedIn)
            }
            ControlAction::MarkRead { room, seq } => match self.admit(conn, &room) {
                Ok(admitted) => ControlAction::MarkRead { room: admitted.room.to_string(), seq },
                Err(refusal) => ControlAction::Refuse(refusal),
            },
            // Direct conversations have no operators.
            ControlAction::Moderate { room, .. } if room.direct_pair().is_some() => {
                ControlAction::Refuse(Refusal::NotOperator)
            }
            ControlAction::Register { password: new } => match check_password(&new.0) {
                Ok(()) => ControlAction::Register { password: new },
                Err(e) => ControlAction::Refuse(Refusal::InvalidPassword(e)),
            },
            ControlAction::ChangePassword { old, new } => match check_password(&new.0) {
                Ok(()) => ControlAction::ChangePassword { old, new },
                Err(e) => ControlAction::Refuse(Refusal::InvalidPassword(e)),
            },
            other => other,
        }
    }
}

/// A frame on the control stream after the welcome.
pub fn request(received: Received) -> ControlAction {
    match received {
        Received::Frame(ClientFrame::ListRooms) => ControlAction::ListRooms,
        Received::Frame(ClientFrame::Who { room }) => ControlAction::Who { room },
        Received::Frame(ClientFrame::CreateRoom { room }) => match RoomName::parse(&room) {
            Ok(room) => ControlAction::CreateRoom { room },
            Err(e) => ControlAction::Refuse(Refusal::InvalidRoomName(e)),
        },
        Received::Frame(ClientFrame::Register { password }) => ControlAction::Register { password },
        Received::Frame(ClientFrame::ChangePassword { old, new }) => {
            ControlAction::ChangePassword { old, new }
        }
        Received::Frame(ClientFrame::Logout) => ControlAction::Logout,
        // `@bob` is resolved by `on_control`, which knows the connection's user.
        Received::Frame(ClientFrame::MarkRead { room, seq }) => {
            ControlAction::MarkRead { room, seq }
        }
        Received::Frame(ClientFrame::Moderate { room, action }) => match RoomName::parse(&room) {
            Ok(room) => ControlAction::Moderate { room, action },
            Err(e) => ControlAction::Refuse(Refusal::InvalidRoomName(e)),
        },
        Received::Frame(other) => ControlAction::Refuse(Refusal::UnexpectedFrame {
            expected: "the control stream takes room listings, who requests, room creations \
                       and account requests",
            got: other.name(),
        }),
        // The reader cannot find the next frame: the stream, and with it the connection,
        // cannot go on.
        Received::Malformed(detail) => ControlAction::Close(Refusal::Malformed(detail)),
        Received::Ended => ControlAction::Bye,
    }
}
