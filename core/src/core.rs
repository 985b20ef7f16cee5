//! [`Core`]: presence, connections and rooms behind the events the node feeds it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use crate::accounts::{
    AccountsMode, Attempt, Identity, Logins, Offered, PasswordError, Standing, check_password,
};
use crate::moderation::{RoomEvent, RoomRules};
use crate::names::NameError;
use crate::presence::{Claimed, Presence, Taken};
use crate::rate::{RateLimit, Verdict};
use crate::room::{Evicted, Full, Mailbox, Room};
use crate::{ConnId, ErrorCode, MemberId, RoomName, Rules, Seq, SessionToken, UserName};
use chat_proto::codes::close;
use chat_proto::{LeftReason, Login, NodeFrame};

/// Why the core refused an event. Its text is meant for the user at the other end.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "the name {0:?} is already online; pick another name, or wait for that session to end \
         (if it is yours, register the name with `chat register` so that your logins take it \
         back at once)"
    )]
    NameTaken(String),
    #[error(
        "the name {0:?} is a registered account: log in with its password (`chat --password` \
         or CHAT_PASSWORD), or pick another name"
    )]
    LoginRequired(String),
    #[error("wrong password for {0:?}; try again, or pick another name")]
    WrongPassword(String),
    #[error(
        "no account is named {0:?}; register it with `chat register`, or leave out the password to go online as a guest"
    )]
    UnknownAccount(String),
    #[error("the name {0:?} is registered already; log in with its password, or pick another name")]
    NameRegistered(String),
    #[error(
        "too many failed logins for this account or from your address; try again in {} s",
        retry_after.as_secs().max(1)
    )]
    TooManyLogins { retry_after: Duration },
    #[error(
        "this node takes only registered accounts and {0:?} is not one: register it with \
         `chat register`"
    )]
    AccountRequired(String),
    #[error("{0}; pick another password")]
    InvalidPassword(PasswordError),
    #[error("this session is a guest's: register the name first (/register, `chat register`)")]
    NotLoggedIn,
    #[error(
        "you are banned from room {room} {}; ask one of its operators",
        until_ms.map_or("for good".to_owned(), |ms| format!("until {}", crate::moderation::when(ms)))
    )]
    Banned { room: String, until_ms: Option<u64> },
    #[error("room {0} is invite-only; ask one of its operators to /invite you")]
    InviteOnly(String),
    #[error("you are muted in room {0}: the message was not sent; ask one of its operators")]
    Muted(String),
    #[error("{by} removed you from room {room}{}", if reason.is_empty() { String::new() } else { format!(": {reason}") })]
    Removed { room: String, by: String, reason: String },
    #[error("only the room's operators (and its owner, for operators) may do that")]
    NotOperator,
    #[error("{0} ranks as high as you in this room: you cannot act on them")]
    Outranked(String),
    #[error("room {0} is in the node's config, which makes it at every start; remove it there")]
    ConfiguredRoom(String),
    #[error("the topic is {len} bytes long; the limit is {max}")]
    TopicTooLong { len: usize, max: usize },
    /// The accounts store could not answer; `0` says why.
    #[error("the node cannot check accounts now: {0}")]
    AccountsUnavailable(String),
    #[error("invalid user name: {0}")]
    InvalidName(NameError),
    #[error("invalid room name: {0}")]
    InvalidRoomName(NameError),
    #[error(
        "there is no room named {0:?}; list the rooms with /rooms (`chat rooms`), or make it \
         with /create (`chat create`)"
    )]
    UnknownRoom(String),
    #[error(
        "{room} is the direct conversation of {} and {}; only they can join it",
        room.direct_pair().map_or("", |p| p.0), room.direct_pair().map_or("", |p| p.1)
    )]
    NotInConversation { room: RoomName },
    #[error(
        "{}; ask its operator, or /join one of /rooms",
        match .0 {
            crate::moderation::RoomCreation::Accounts => "on this node only registered users make rooms (register with /register)",
            crate::moderation::RoomCreation::Operators => "on this node only its operators make rooms",
            _ => "this node lets nobody make rooms",
        }
    )]
    RoomCreationOff(crate::moderation::RoomCreation),
    #[error("a direct conversation is made by writing to someone: /msg NAME TEXT")]
    CreateDirect,
    #[error("the node has {0} rooms, the most it keeps; join one of /rooms instead")]
    NodeFullOfRooms(usize),
    #[error("this connection is in room {0:?} already")]
    AlreadyJoined(String),
    #[error("this connection is in {0} rooms already, the most the node allows; leave one first")]
    TooManyRooms(usize),
    #[error("the message is {len} bytes long; the limit is {max} bytes")]
    MessageTooLong { len: usize, max: usize },
    #[error("the message is empty")]
    EmptyMessage,
    #[error("this connection has not said hello")]
    NotConnected,
    #[error("this stream is not in a room (it was closed or dropped)")]
    NotJoined,
    #[error(
        "you are sending faster than the node allows ({per_second} messages a second); the \
         message was not sent: wait {} ms and send it again",
        retry_after.as_millis().max(1)
    )]
    SlowDown { per_second: u64, retry_after: Duration },
    #[error(
        "you are making requests (joins, history pages, room lists, who) faster than the node \
         allows ({per_second} a second); this one was not answered: wait {} ms and ask again",
        retry_after.as_millis().max(1)
    )]
    RequestsTooFast { per_second: u64, retry_after: Duration },
    /// The connection kept sending (or asking) after being told to slow down: it is closed.
    #[error("you kept sending after being told to slow down")]
    RateLimited,
    /// A frame too long to read was skipped.
    #[error(
        "a frame of {len} bytes is over the limit of {max} bytes for a message; it was not sent"
    )]
    FrameTooLong { len: usize, max: usize },
    /// The member read too slowly and was dropped from the room.
    #[error(
        "you fell too far behind in room {room} and were dropped; rejoin after {last_seq} to resume"
    )]
    TooSlow { room: String, last_seq: Seq },
    /// The history could not take the message; `0` says why.
    #[error("the message was not sent: {0}")]
    NotStored(String),
    /// The history did not confirm the message in time; it may have been stored.
    #[error(
        "the message may have been stored ({0}); sending it again with the same client id within two minutes stores it at most once"
    )]
    MaybeStored(String),
    /// The history wrote the message and the room got it, but it could not be made durable:
    /// sending it again would show it twice.
    #[error("the room got the message, but {0}")]
    NotSynced(String),
    /// A frame the stream cannot take where it came: `expected` says what the stream takes
    /// ("a room stream starts with a join"), `got` names the frame ("a send").
    #[error("{expected}, not {got}")]
    UnexpectedFrame { expected: &'static str, got: &'static str },
    #[error("the control stream must start with a hello")]
    NoHello,
    #[error("no join in time")]
    NoJoinInTime,
    /// Bytes that are not a frame; `0` says what is wrong with them.
    #[error("{0}")]
    Malformed(String),
    /// The history could not be read or followed for a join; `0` says why.
    #[error("cannot join room {room:?} now: {detail}")]
    JoinUnavailable { room: String, detail: String },
    /// The history failed while a join was replaying it.
    #[error("the room's history cannot be read now ({0}); join again")]
    HistoryUnreadable(String),
    /// A control request whose answer the store (or NATS) could not give.
    #[error("the node cannot answer now: {0}")]
    Unanswerable(String),
    /// The directory of names (in cluster mode, shared by every node) did not answer.
    #[error("the node cannot check the name now: {0}")]
    DirectoryUnavailable(String),
}

impl Refusal {
    /// The protocol's code for this refusal.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::NameTaken(_) => ErrorCode::NameTaken,
            Self::LoginRequired(_) => ErrorCode::LoginRequired,
            Self::WrongPassword(_) => ErrorCode::WrongPassword,
            Self::UnknownAccount(_) => ErrorCode::UnknownAccount,
            Self::NameRegistered(_) => ErrorCode::NameRegistered,
            Self::TooManyLogins { .. } => ErrorCode::TooManyLogins,
            Self::AccountRequired(_) => ErrorCode::AccountRequired,
            Self::InvalidPassword(_) => ErrorCode::InvalidPassword,
            Self::NotLoggedIn => ErrorCode::NotLoggedIn,
            Self::Banned { .. } => ErrorCode::Banned,
            Self::InviteOnly(_) => ErrorCode::InviteOnly,
            Self::Muted(_) => ErrorCode::Muted,
            Self::Removed { .. } => ErrorCode::Kicked,
            Self::NotOperator | Self::Outranked(_) => ErrorCode::NotOperator,
            Self::ConfiguredRoom(_) => ErrorCode::NotAllowed,
            Self::TopicTooLong { .. } => ErrorCode::MessageTooLong,
            Self::InvalidName(_) => ErrorCode::InvalidName,
            Self::InvalidRoomName(_) => ErrorCode::InvalidRoomName,
            Self::UnknownRoom(_) => ErrorCode::UnknownRoom,
            Self::NotInConversation { .. } | Self::RoomCreationOff(_) => ErrorCode::NotAllowed,
            Self::CreateDirect => ErrorCode::InvalidRoomName,
            Self::NodeFullOfRooms(_) => ErrorCode::TooManyRooms,
            Self::AlreadyJoined(_) => ErrorCode::AlreadyJoined,
            Self::TooManyRooms(_) => ErrorCode::TooManyRooms,
            Self::MessageTooLong { .. } => ErrorCode::MessageTooLong,
            Self::EmptyMessage => ErrorCode::EmptyMessage,
            Self::NotConnected
            | Self::NotJoined
            | Self::UnexpectedFrame { .. }
            | Self::NoHello
            | Self::NoJoinInTime
            | Self::Malformed(_) => ErrorCode::ProtocolViolation,
            Self::JoinUnavailable { .. }
            | Self::HistoryUnreadable(_)
            | Self::Unanswerable(_)
            | Self::DirectoryUnavailable(_)
            | Self::AccountsUnavailable(_)
            | Self::NotStored(_)
            | Self::NotSynced(_) => ErrorCode::HistoryUnavailable,
            Self::MaybeStored(_) => ErrorCode::MaybeStored,
            Self::SlowDown { .. } | Self::RequestsTooFast { .. } | Self::RateLimited => {
                ErrorCode::SlowDown
            }
            Self::FrameTooLong { .. } => ErrorCode::MessageTooLong,
            Self::TooSlow { .. } => ErrorCode::TooSlow,
        }
    }

    /// The code to close the connection with when this refusal ends it (a refused hello,
    /// or a connection that would not slow down).
    pub fn close_code(&self) -> u32 {
        match self {
            Self::NameTaken(_) => close::NAME_TAKEN,
            Self::LoginRequired(_) | Self::AccountRequired(_) => close::LOGIN_REQUIRED,
            Self::WrongPassword(_) | Self::UnknownAccount(_) => close::LOGIN_FAILED,
            Self::TooManyLogins { .. } => close::TOO_MANY_LOGINS,
            Self::RateLimited => close::RATE_LIMITED,
            Self::NotConnected
            | Self::NotJoined
            | Self::UnexpectedFrame { .. }
            | Self::NoHello
            | Self::Malformed(_) => close::PROTOCOL_VIOLATION,
            _ => close::REFUSED,
        }
    }
}

impl Refusal {
    /// How long to wait before trying again, for a refusal that says so.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::TooManyLogins { retry_after }
            | Self::SlowDown { retry_after, .. }
            | Self::RequestsTooFast { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}

/// A reply that did not fit its member's mailbox (see [`Core::reply`]): the member is to be
/// dropped, by handing this to [`Core::reply_overflowed`].
#[must_use = "a reply that does not fit drops its member: hand it to Core::reply_overflowed"]
#[derive(Debug, PartialEq, Eq)]
pub struct ReplyOverflow(MemberId);

/// A hello that was accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connected {
    pub name: UserName,
    /// An earlier connection of the same user that the node must now close.
    pub replaced: Option<ConnId>,
}

/// The room a join or a who request means, and whether the core knows it yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    pub room: RoomName,
    /// False for a direct conversation not yet created, which the node creates (in the
    /// history, and with [`Core::add_room`]) before the join.
    pub known: bool,
}

/// A join that was accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    pub room: RoomName,
    /// Messages up to this one come from the history; later ones arrive in the mailbox.
    pub history_until: Seq,
}

/// A send that passed the rules: what the node should append to the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub room: RoomName,
    pub sender: UserName,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomSummary {
    pub name: RoomName,
    pub last_seq: Seq,
    pub members: usize,
}

struct Connection<B> {
    name: UserName,
    /// Whether the connection logged in to the name's account (else a guest).
    account: bool,
    rooms: HashMap<RoomName, MemberId>,
    /// The send rate limit shared by all its rooms; `None` when unlimited.
    rate: Option<RateLimit>,
    /// The request budget, likewise.
    requests: Option<RateLimit>,
    /// Where direct messages of conversations it is not in are pushed.
    inbox: Option<B>,
    /// The newest direct message pushed, per conversation.
    pushed: HashMap<RoomName, Seq>,
}

/// What the core hands the other nodes (cluster mode), through
/// [`Core::share_with_other_nodes`].
#[derive(Debug)]
pub enum Share<'a, M> {
    /// A member of this node arrived in `room` or left it.
    Presence { room: &'a RoomName, frame: &'a NodeFrame },
    /// A direct message for `to` (a user key), who is not online here.
    Direct { to: &'a str, room: &'a RoomName, seq: Seq, message: &'a M },
}

/// Where the core hands what other nodes must hear.
type ShareWith<M> = dyn FnMut(Share<'_, M>) + Send;

/// Conversations per connection whose pushed direct messages are remembered (so that one
/// heard twice, from this node's follower and from another node, is pushed once).
const PUSHED_ROOMS: usize = 256;

/// The state of one node's chat, with no I/O. See the crate documentation.
pub struct Core<B: Mailbox> {
    rules: Rules,
    presence: Presence,
    logins: Logins,
    /// Rooms' owners, operators, bans and mutes (rooms with none are not here).
    policies: HashMap<RoomName, RoomRules>,
    /// The muted names of the rooms that have any, with the mutes' ends as instants, so that
    /// a send is checked against the clock it is handed (and, with no mutes anywhere, at the
    /// cost of one `is_empty`).
    muted: HashMap<RoomName, HashMap<String, Option<Instant>>>,
    /// Accounts that may do anything in every room.
    node_operators: BTreeSet<String>,
    connections: HashMap<ConnId, Connection<B>>,
    rooms: BTreeMap<RoomName, Room<B>>,
    members: HashMap<MemberId, (ConnId, RoomName)>,
    /// Whether arrivals and departures are announced: not while the node stops.
    announcing: bool,
    /// Hears this node's members' arrivals and departures and the direct messages for users
    /// not online here, for the other nodes (cluster mode).
    sharing: Option<Box<ShareWith<B::Message>>>,
}

impl<B: Mailbox> Core<B> {
    pub fn new(rules: Rules) -> Self {
        Self {
            rules,
            presence: Presence::default(),
            logins: Logins::new(rules.logins),
            policies: HashMap::new(),
            muted: HashMap::new(),
            node_operators: BTreeSet::new(),
            connections: HashMap::new(),
            rooms: BTreeMap::new(),
            members: HashMap::new(),
            announcing: true,
            sharing: None,
        }
    }

    /// The rules this core enforces.
    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// Makes a room known, whose history ends at `last_seq`. Known rooms stay as they are.
    pub fn add_room(&mut self, room: RoomName, last_seq: Seq) {
        self.rooms.entry(room).or_insert_with(|| Room::new(last_seq));
    }

    /// Before the accounts store checks a password (deliberately slow) for `name` from
    /// `from` at `now`: whether the check may run. A hello without a password needs no turn
    /// (`Ok(None)`); a password to register must meet the rules first.
    ///
    /// # Errors
    /// Too many failed logins for the account or from the address, or a password to
    /// register that breaks the rules.
    pub fn begin_login(
        &mut self,
        name: &UserName,
        login: Option<&Login>,
        from: std::net::IpAddr,
        now: Instant,
    ) -> Result<Option<Attempt>, Refusal> {
        let registering = match login {
            None => return Ok(None),
            Some(Login::Password(_)) => false,
            Some(Login::Register(password)) => {
                check_password(&password.0).map_err(Refusal::InvalidPassword)?;
                true
            }
        };
        self.logins
            .begin(&name.key(), from, registering, now)
            .map(Some)
            .map_err(|retry_after| Refusal::TooManyLogins { retry_after })
    }

    /// Who a hello for `name` is, from what it `offered` and what the accounts store found
    /// (`standing`); `attempt` is the turn [`begin_login`](Self::begin_login) gave its
    /// password check, settled here (a success does not count against the limits).
    ///
    /// # Errors
    /// A registered name not logged in to, a wrong password, a password for no account, a
    /// name to register that has an account, or a guest on a node that takes only accounts.
    pub fn authenticate(
        &mut self,
        name: &UserName,
        offered: Offered,
        standing: Standing,
        attempt: Option<&Attempt>,
    ) -> Result<Identity, Refusal> {
        if standing == Standing::Proven
            && let Some(attempt) = attempt
        {
            self.logins.succeeded(attempt);
        }
        let name = || name.as_str().to_owned();
        match (offered, standing) {
            (_, Standing::Proven) => Ok(Identity::Account),
            (Offered::Register, Standing::Unregistered) => Ok(Identity::NewAccount),
            (Offered::Register, _) => Err(Refusal::NameRegistered(name())),
            (Offered::Password, Standing::Unregistered) => Err(Refusal::UnknownAccount(name())),
            (_, Standing::WrongPassword) => Err(Refusal::WrongPassword(name())),
            (_, Standing::Unproven) => Err(Refusal::LoginRequired(name())),
            (Offered::Nothing, Standing::Unregistered) => match self.rules.accounts {
                AccountsMode::Open => Ok(Identity::Guest),
                AccountsMode::Required => Err(Refusal::AccountRequired(name())),
            },
        }
    }

    /// A hello at `now`: `conn` wants to be online as `name`, as `identity`
    /// ([`authenticate`](Self::authenticate)'s answer). `token` is the fresh session
    /// token the node drew for it; `resume` the one the client offered from an earlier
    /// session. An account takes its name over from whichever connection holds it; a guest
    /// only from the session whose token it offers.
    ///
    /// # Errors
    /// An invalid name, or one online on another connection.
    pub fn connect(
        &mut self,
        conn: ConnId,
        name: &str,
        resume: Option<SessionToken>,
        token: SessionToken,
        identity: Identity,
        now: Instant,
    ) -> Result<Connected, Refusal> {
        let name = UserName::parse(name).map_err(Refusal::InvalidName)?;
        let account = identity != Identity::Guest;
        // A name being registered was free of accounts, but a guest may hold it.
        let owner = identity == Identity::Account;
        let claimed = self
            .presence
            .claim(&name, conn, resume, token, owner)
            .map_err(|Taken| Refusal::NameTaken(name.as_str().to_owned()))?;
        let replaced = match claimed {
            Claimed::Fresh => None,
            Claimed::TookOver(old) => {
                // The user's old connection was lost, which is why it reconnected.
                self.drop_memberships(old, LeftReason::Disconnected);
                Some(old)
            }
        };
        let rate = self.rules.rate.map(|rate| RateLimit::new(rate, now));
        let requests = self.rules.requests.map(|rate| RateLimit::new(rate, now));
        let connection = Connection {
            name: name.clone(),
            account,
            rooms: HashMap::new(),
            rate,
            requests,
            inbox: None,
            pushed: HashMap::new(),
        };
        self.connections.insert(conn, connection);
        Ok(Connected { name, replaced })
    }

    /// The connection's name is now its account's (it registered it).
    pub fn registered(&mut self, conn: ConnId) {
        if let Some(connection) = self.connections.get_mut(&conn) {
            connection.account = true;
        }
    }

    /// The name `conn` is online under.
    pub fn name_of(&self, conn: ConnId) -> Option<&UserName> {
        self.connections.get(&conn).map(|c| &c.name)
    }

    /// Whether `conn` is logged in to its name's account.
    pub fn is_account(&self, conn: ConnId) -> bool {
        self.connections.get(&conn).is_some_and(|c| c.account)
    }

    /// The connection is gone, for `reason`: it leaves every room and frees its name.
    pub fn disconnect(&mut self, conn: ConnId, reason: LeftReason) {
        if let Some(connection) = self.drop_memberships(conn, reason) {
            self.presence.release(&connection.name, conn);
        }
    }

    fn drop_memberships(&mut self, conn: ConnId, reason: LeftReason) -> Option<Connection<B>> {
        let connection = self.connections.remove(&conn)?;
        for &member in connection.rooms.values() {
            self.leave(member, reason);
        }
        Some(connection)
    }

    /// Hands `share` every arrival and departure of this node's members from now on, so that
    /// other nodes can tell theirs (whatever the room's size here: each node counts its own),
    /// and every direct message for a user not online here.
    pub fn share_with_other_nodes(
        &mut self,
        share: impl FnMut(Share<'_, B::Message>) + Send + 'static,
    ) {
        self.sharing = Some(Box::new(share));
    }

    /// Another node's member `name` arrived in `room` (`left: None`) or left it: this node's
    /// members there hear it as they would a member of their own.
    pub fn heard(&mut self, room: &str, name: &str, left: Option<LeftReason>) {
        let (Ok(room), Ok(name)) = (RoomName::parse(room), UserName::parse(name)) else { return };
        let name = name.to_string();
        let frame = match left {
            None => NodeFrame::Arrived { name },
            Some(reason) => NodeFrame::Left { name, reason },
        };
        self.tell(&room, None, frame, false);
    }

    /// The node is stopping and every member leaves at once: nobody is told of departures
    /// from now on.
    pub fn stop_announcing(&mut self) {
        self.announcing = false;
    }

    /// `conn` opens a stream, `member`, in `room`, whose messages go to `mailbox`.
    ///
    /// # Errors
    /// An unknown or invalid room, a room this connection is in already, one room too many.
    pub fn join(
        &mut self,
        conn: ConnId,
        member: MemberId,
        room: &str,
        mailbox: B,
    ) -> Result<Joined, Refusal> {
        let room = self.admit(conn, room)?.room;
        let connection = self.connections.get_mut(&conn).ok_or(Refusal::NotConnected)?;
        let Some(state) = self.rooms.get_mut(&room) else {
            return Err(Refusal::UnknownRoom(room.as_str().to_owned()));
        };
        if connection.rooms.contains_key(&room) {
            return Err(Refusal::AlreadyJoined(room.as_str().to_owned()));
        }
        if connection.rooms.len() >= self.rules.max_rooms_per_connection {
            return Err(Refusal::TooManyRooms(connection.rooms.len()));
        }
        let history_until = state.join(member, connection.name.clone(), mailbox);
        let arrived = NodeFrame::Arrived { name: connection.name.to_string() };
        connection.rooms.insert(room.clone(), member);
        self.members.insert(member, (conn, room.clone()));
        self.announce(&room, Some(member), arrived);
        Ok(Joined { room, history_until })
    }

    /// The room `conn` means by `room` (`@bob` is its user's conversation with bob), if its
    /// user may be in it.
    ///
    /// # Errors
    /// An invalid name, a conversation of two others, an unknown connection.
    pub fn admit(&self, conn: ConnId, room: &str) -> Result<Admitted, Refusal> {
        let connection = self.connections.get(&conn).ok_or(Refusal::NotConnected)?;
        let room = RoomName::resolve(room, &connection.name).map_err(Refusal::InvalidRoomName)?;
        if !room.admits(&connection.name) {
            return Err(Refusal::NotInConversation { room });
        }
        Ok(Admitted { known: self.rooms.contains_key(&room), room })
    }

    /// Where `conn`'s pushed frames go (the control stream's queue): the direct messages of
    /// conversations it has not joined.
    pub fn attach_inbox(&mut self, conn: ConnId, inbox: B) {
        if let Some(connection) = self.connections.get_mut(&conn) {
            connection.inbox = Some(inbox);
        }
    }

    /// A message stored in `room`: if it is a direct conversation, each of its two users
    /// online here but not in it gets it in their inbox, and those online elsewhere are
    /// shared with the other nodes.
    fn push_direct(&mut self, room: &RoomName, seq: Seq, message: &B::Message) {
        let Some((a, b)) = room.direct_pair() else { return };
        let (a, b) = (a.to_owned(), b.to_owned());
        for user in [a, b] {
            if !self.push_to(&user, room, seq, message)
                && let Some(share) = &mut self.sharing
            {
                share(Share::Direct { to: &user, room, seq, message });
            }
        }
    }

    /// Pushes a direct message to `user` if online here and not in `room`, once per seq;
    /// returns whether `user` is online here.
    fn push_to(&mut self, user: &str, room: &RoomName, seq: Seq, message: &B::Message) -> bool {
        let Some(conn) = self.presence.holder(user) else { return false };
        let Some(connection) = self.connections.get_mut(&conn) else { return false };
        let Some(inbox) = &connection.inbox else { return true };
        let pushed = connection.pushed.get(room).copied().unwrap_or(0);
        if connection.rooms.contains_key(room) || seq <= pushed {
            return true;
        }
        if connection.pushed.len() >= PUSHED_ROOMS {
            connection.pushed.clear(); // At worst one message is pushed twice.
        }
        connection.pushed.insert(room.clone(), seq);
        // A client that lets its control stream fill misses the push, not the message: the
        // conversation is listed, and joining it shows its history.
        let _ = inbox.offer(seq, message);
        true
    }

    /// A direct message in `room` that another node stored for `user`, as
    /// [`push_direct`](Self::push_direct) would push it here.
    pub fn heard_direct(&mut self, user: &str, room: &str, seq: Seq, message: &B::Message) {
        if let Ok(room) = RoomName::parse(room) {
            self.push_to(&user.to_ascii_lowercase(), &room, seq, message);
        }
    }

    /// The accounts that may do anything in every room (from the node's config).
    pub fn set_node_operators(&mut self, operators: impl IntoIterator<Item = String>) {
        self.node_operators = operators.into_iter().map(|o| o.to_ascii_lowercase()).collect();
    }

    pub fn node_operators(&self) -> &BTreeSet<String> {
        &self.node_operators
    }

    /// Whether `conn` may make rooms, under [`Rules::room_creation`].
    pub fn may_create_rooms(&self, conn: ConnId) -> bool {
        use crate::moderation::RoomCreation;
        let account = self.connections.get(&conn).filter(|c| c.account);
        match self.rules.room_creation {
            RoomCreation::Anyone => true,
            RoomCreation::Accounts => account.is_some(),
            RoomCreation::Operators => {
                account.is_some_and(|c| self.node_operators.contains(&c.name.key()))
            }
            RoomCreation::Nobody => false,
        }
    }

    /// `room`'s topic (empty for none).
    pub fn topic(&self, room: &RoomName) -> String {
        self.policies.get(room).map(|rules| rules.topic.clone()).unwrap_or_default()
    }

    /// Whether `conn` may join `room` at `now_ms` under the room's rules.
    ///
    /// # Errors
    /// Banned, or not invited to an invite-only room.
    pub fn check_rules(&self, conn: ConnId, room: &RoomName, now_ms: u64) -> Result<(), Refusal> {
        let connection = self.connections.get(&conn).ok_or(Refusal::NotConnected)?;
        let Some(rules) = self.policies.get(room) else { return Ok(()) };
        let account = connection.account;
        rules.check_join(room.as_str(), &connection.name, account, &self.node_operators, now_ms)
    }

    /// `room`'s rules are now `rules` (this node's change, or another node's read back), at
    /// `now` (`now_ms` on the wall clock). A newer revision than the one the core has is
    /// carried out: its change is told to the room's members in order with the messages, and
    /// a kicked or banned name's members here are removed (told why, their streams ended).
    pub fn install_rules(&mut self, room: &RoomName, rules: RoomRules, now: Instant, now_ms: u64) {
        // A room the core has no rules for has the default ones, revision 0.
        let known = self.policies.get(room).map_or(0, |rules| rules.revision);
        if rules.revision <= known {
            return;
        }
        let muted: HashMap<_, _> = rules
            .muted
            .iter()
            .map(|(key, until)| {
                let left = until.map(|until| Duration::from_millis(until.saturating_sub(now_ms)));
                (key.clone(), left.map(|left| now + left))
            })
            .collect();
        if muted.is_empty() {
            self.muted.remove(room);
        } else {
            self.muted.insert(room.clone(), muted);
        }
        let event = rules.last.clone();
        self.policies.insert(room.clone(), rules);
        let Some(RoomEvent { by, action }) = event else { return };
        // Whose members go: one name's, or (`None`) everyone's when the room is deleted.
        let removed = match &action {
            chat_proto::Moderation::Kick { name, reason }
            | chat_proto::Moderation::Ban { name, reason, .. } => {
                Some((Some(name.to_ascii_lowercase()), reason.clone()))
            }
            chat_proto::Moderation::DeleteRoom => Some((None, "the room was deleted".to_owned())),
            _ => None,
        };
        self.tell_all(room, NodeFrame::RoomEvent { by: by.clone(), action });
        if let Some((key, reason)) = removed {
            let gone: Vec<MemberId> = self
                .members
                .iter()
                .filter(|(_, (conn, r))| {
                    r == room
                        && key.as_ref().is_none_or(|key| {
                            self.connections.get(conn).is_some_and(|c| c.name.key() == *key)
                        })
                })
                .map(|(member, _)| *member)
                .collect();
            let removed = Refusal::Removed { room: room.to_string(), by, reason };
            let frame = B::encode(&NodeFrame::Error(chat_proto::ErrorFrame::new(
                removed.code(),
                removed.to_string(),
            )));
            for member in gone {
                if let Some(state) = self.rooms.get_mut(room) {
                    state.remove(member, frame.clone());
                }
                self.forget_member(member);
            }
            if key.is_none() {
                self.rooms.remove(room);
            }
        }
    }

    /// Tells every member of `room` here, whatever its size (a moderation, not a presence).
    fn tell_all(&mut self, room: &RoomName, frame: NodeFrame) {
        let Some(state) = self.rooms.get_mut(room) else { return };
        for dropped in state.announce(None, &B::encode(&frame)) {
            self.forget_member(dropped.member);
        }
    }

    /// The member's stream is closed, for `reason`: it leaves the room.
    pub fn leave(&mut self, member: MemberId, reason: LeftReason) {
        let Some((conn, room)) = self.members.remove(&member) else { return };
        if let Some(connection) = self.connections.get_mut(&conn) {
            connection.rooms.remove(&room);
        }
        if let Some(name) = self.rooms.get_mut(&room).and_then(|state| state.leave(member)) {
            self.announce(&room, None, NodeFrame::Left { name: name.to_string(), reason });
        }
    }

    /// Tells the members of `room` but `except` (and the other nodes) that a member of this
    /// node arrived or left.
    fn announce(&mut self, room: &RoomName, except: Option<MemberId>, frame: NodeFrame) {
        self.tell(room, except, frame, true);
    }

    /// Tells the members of `room` but `except` of an arrival or a departure, while the room
    /// has at most [`Rules::presence_limit`] members here, counting the one who came or went
    /// (above that, everyone's every join would be sent to everyone: `Who` tells instead).
    /// Members whose queues cannot take it are dropped, and their departure told in turn.
    /// `ours`: the member was this node's, so the other nodes hear of it too.
    fn tell(&mut self, room: &RoomName, except: Option<MemberId>, frame: NodeFrame, ours: bool) {
        if !self.announcing {
            return;
        }
        let mut frames = vec![(except, frame, ours)];
        while let Some((except, frame, ours)) = frames.pop() {
            if let (true, Some(share)) = (ours, &mut self.sharing) {
                share(Share::Presence { room, frame: &frame });
            }
            let Some(state) = self.rooms.get_mut(room) else { return };
            let gone = usize::from(ours && matches!(frame, NodeFrame::Left { .. }));
            if state.member_count() + gone > self.rules.presence_limit {
                continue;
            }
            for dropped in state.announce(except, &B::encode(&frame)) {
                self.forget_member(dropped.member);
                let name = dropped.name.to_string();
                frames.push((None, NodeFrame::Left { name, reason: LeftReason::Dropped }, true));
            }
        }
    }

    /// Checks a message the member wants to post at `now`, taking it from its connection's
    /// send rate first (a refused body counts against the rate too).
    ///
    /// # Errors
    /// Over the rate ([`Refusal::SlowDown`], or [`Refusal::RateLimited`] when the
    /// connection keeps on regardless and is to be closed), an empty or over-long body, or a
    /// member no longer in its room.
    pub fn check_send(
        &mut self,
        member: MemberId,
        body: &str,
        now: Instant,
    ) -> Result<Outgoing, Refusal> {
        let (conn, room) = self.members.get(&member).ok_or(Refusal::NotJoined)?;
        let connection = self.connections.get_mut(conn).ok_or(Refusal::NotConnected)?;
        if let Some(rate) = &mut connection.rate {
            match rate.check(now) {
                Verdict::Allow => {}
                Verdict::SlowDown { retry_after } => {
                    let per_second = self.rules.rate.map_or(0.0, |r| r.per_second);
                    return Err(Refusal::SlowDown {
                        per_second: per_second.round() as u64,
                        retry_after,
                    });
                }
                Verdict::Disconnect => return Err(Refusal::RateLimited),
            }
        }
        if !self.muted.is_empty()
            && let Some(muted) = self.muted.get(room)
            && let Some(until) = muted.get(&connection.name.key())
            && until.is_none_or(|until| until > now)
        {
            return Err(Refusal::Muted(room.to_string()));
        }
        if body.is_empty() {
            return Err(Refusal::EmptyMessage);
        }
        if body.len() > self.rules.max_message_len {
            return Err(Refusal::MessageTooLong {
                len: body.len(),
                max: self.rules.max_message_len,
            });
        }
        Ok(Outgoing { room: room.clone(), sender: connection.name.clone() })
    }

    /// Takes one request of `conn` at `now` from its budget.
    ///
    /// # Errors
    /// Over the budget ([`Refusal::RequestsTooFast`], or [`Refusal::RateLimited`] when the
    /// connection keeps on regardless and is to be closed), or an unknown connection.
    pub fn check_request(&mut self, conn: ConnId, now: Instant) -> Result<(), Refusal> {
        let connection = self.connections.get_mut(&conn).ok_or(Refusal::NotConnected)?;
        let Some(budget) = &mut connection.requests else { return Ok(()) };
        match budget.check(now) {
            Verdict::Allow => Ok(()),
            Verdict::SlowDown { retry_after } => {
                let per_second = self.rules.requests.map_or(0.0, |r| r.per_second);
                Err(Refusal::RequestsTooFast { per_second: per_second.round() as u64, retry_after })
            }
            Verdict::Disconnect => Err(Refusal::RateLimited),
        }
    }

    /// A request of `member`'s connection; see [`check_request`](Self::check_request).
    pub(crate) fn check_member_request(
        &mut self,
        member: MemberId,
        now: Instant,
    ) -> Result<(), Refusal> {
        let (conn, _) = self.members.get(&member).ok_or(Refusal::NotJoined)?;
        self.check_request(*conn, now)
    }

    /// The answer to a send frame too long to read, `len` bytes: it is skipped.
    pub fn oversized(&self, len: usize) -> Refusal {
        Refusal::FrameTooLong { len, max: self.rules.max_message_len }
    }

    /// The history has stored `message` under `seq` in `room`: hand it to the members in
    /// order. Returns the members dropped for having full mailboxes.
    pub fn committed(&mut self, room: &str, seq: Seq, message: B::Message) -> Vec<Evicted> {
        self.deliver(room, seq, message, |state, message| state.committed(seq, message))
    }

    /// Like [`committed`](Self::committed), for a log that delivers each room's messages in
    /// order with gaps in their numbering (cluster mode's stream).
    pub fn committed_in_order(
        &mut self,
        room: &str,
        seq: Seq,
        message: B::Message,
    ) -> Vec<Evicted> {
        self.deliver(room, seq, message, |state, message| state.committed_in_order(seq, message))
    }

    fn deliver(
        &mut self,
        room: &str,
        seq: Seq,
        message: B::Message,
        deliver: impl FnOnce(&mut Room<B>, B::Message) -> Vec<Evicted>,
    ) -> Vec<Evicted> {
        let direct = match room.starts_with(crate::names::DIRECT_PREFIX) {
            true => self.rooms.get_key_value(room).map(|(name, _)| (name.clone(), message.clone())),
            false => None,
        };
        let Some(state) = self.rooms.get_mut(room) else {
            return Vec::new();
        };
        let evicted = deliver(state, message);
        if let Some((name, message)) = direct {
            self.push_direct(&name, seq, &message);
        }
        for gone in &evicted {
            self.dropped(gone);
        }
        evicted
    }

    /// `gone` was dropped from its room for falling behind: the core forgets it and the
    /// room hears it left.
    fn dropped(&mut self, gone: &Evicted) {
        if let Some((_, room)) = self.members.get(&gone.member) {
            let room = room.clone();
            self.forget_member(gone.member);
            let name = gone.name.to_string();
            self.announce(&room, None, NodeFrame::Left { name, reason: LeftReason::Dropped });
        }
    }

    /// How many more messages every member of `room` can be offered now; `None` for a room
    /// the core does not have. A log catching up paces itself by it.
    pub fn room_space(&self, room: &RoomName) -> Option<usize> {
        self.rooms.get(room).map(Room::space)
    }

    /// The newest sequence number handed to the members of `room`.
    pub fn delivered(&self, room: &RoomName) -> Option<Seq> {
        self.rooms.get(room).map(Room::delivered)
    }

    /// Sends `member`, through its `mailbox`, a frame meant only for it (the ack of its send).
    /// The mailbox is handed in because the ack may come after the member left the room (it
    /// still goes out, while the stream drains).
    ///
    /// It takes no core: the thread that learns a message is durable queues its ack without
    /// waiting for the lock that the fan-out and the readers hold, since a reply that fits
    /// changes nothing here. One that does not fit comes back as a [`ReplyOverflow`] for
    /// [`Core::reply_overflowed`], which drops the member as a room message that does not fit
    /// would: a client that reads too slowly to take its own acks has fallen behind.
    ///
    /// # Errors
    /// [`ReplyOverflow`] when the mailbox is full.
    pub fn reply(member: MemberId, mailbox: &B, message: B::Message) -> Result<(), ReplyOverflow> {
        mailbox.reply(message).map_err(|Full| ReplyOverflow(member))
    }

    /// Drops the member whose reply did not fit, unless it has left the room since (a reply
    /// after leaving drops nobody).
    pub fn reply_overflowed(&mut self, overflow: ReplyOverflow) -> Option<Evicted> {
        self.evict(overflow.0)
    }

    fn evict(&mut self, member: MemberId) -> Option<Evicted> {
        let (_, room) = self.members.get(&member)?;
        let evicted = self.rooms.get_mut(room)?.evict(member)?;
        self.dropped(&evicted);
        Some(evicted)
    }

    fn forget_member(&mut self, member: MemberId) {
        if let Some((conn, room)) = self.members.remove(&member)
            && let Some(connection) = self.connections.get_mut(&conn)
        {
            connection.rooms.remove(&room);
        }
    }

    /// Whether one more room may be made, with `rooms` (not counting direct conversations)
    /// there already.
    ///
    /// # Errors
    /// [`Refusal::NodeFullOfRooms`] at [`Rules::max_rooms`].
    pub fn check_room_count(&self, rooms: usize) -> Result<(), Refusal> {
        if rooms >= self.rules.max_rooms {
            return Err(Refusal::NodeFullOfRooms(rooms));
        }
        Ok(())
    }

    /// The names of the members of a room.
    ///
    /// # Errors
    /// An unknown or invalid room.
    pub fn who(&self, room: &str) -> Result<Vec<String>, Refusal> {
        let room = RoomName::parse(room).map_err(Refusal::InvalidRoomName)?;
        let state = self.rooms.get(&room).ok_or_else(|| Refusal::UnknownRoom(room.to_string()))?;
        Ok(state.names())
    }

    pub fn rooms(&self) -> Vec<RoomSummary> {
        self.rooms
            .iter()
            .map(|(name, room)| RoomSummary {
                name: name.clone(),
                last_seq: room.delivered(),
                members: room.member_count(),
            })
            .collect()
    }
}
