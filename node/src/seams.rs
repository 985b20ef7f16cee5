//! The node's seams: the history, the fan-out, the directory (presence and rooms) and the
//! accounts, each a trait with the embedded implementation that a single node uses. Cluster mode
//! (`crate::cluster`) implements them again on NATS JetStream without touching the
//! connection code.
//!
//! On a single node the room core alone decides who holds a name; in cluster mode the
//! directory's claim comes first, and the core then keeps the same rules for the node's own
//! connections.

use std::future::{Future, ready};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use chat_accounts::{Account, AccountsError, LocalAccounts};
use chat_cluster::ClusterError;
use chat_core::moderation::RoomRules;
use chat_core::{ConnId, Core, MemberId, Refusal, RoomName, Seq, SessionToken, UserName};
use chat_history::{
    Anchor, Completion, History, HistoryError, HistoryPage, Message, PageLimit, Subscriber,
};
use chat_proto::RoomInfo;

use crate::mailbox::Outbox;

/// A seam's answer that may have to wait for the network.
pub type Pending<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why this node could not start receiving a room's messages. Only a fan-out kept elsewhere
/// (cluster mode's NATS) fails; the single node's never does.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct FollowError(#[from] ClusterError);

/// Why the directory could not answer. Only a directory kept elsewhere (cluster mode's NATS)
/// fails; the single node's is the room core and always answers.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct DirectoryError(#[from] ClusterError);

/// The rooms' message log.
pub trait HistoryStore: Send + Sync + 'static {
    /// Appends `message`; `durable` hears its sequence number once it is durable (it may
    /// be acknowledged). Must not block. Members get it through the fan-out. `id` is the
    /// sender's own name for the message (see [`send_id`](crate::room::send_id)): a history
    /// that cannot always tell whether a write landed stores one message per id.
    fn append(&self, room: &RoomName, message: Message, id: String, durable: Completion<Seq>);
    /// Hands every message stored from now on to `subscriber` (the single node's fan-out).
    /// Cluster mode relays through its followers of the stream instead, and ignores it.
    fn subscribe(&self, subscriber: Arc<dyn Subscriber>) -> Result<(), HistoryError>;
    /// A page of retained messages at `anchor`. May block: call it from `spawn_blocking`.
    fn page(
        &self,
        room: &RoomName,
        anchor: Anchor,
        limit: PageLimit,
    ) -> Result<HistoryPage, HistoryError>;
    /// Every room with its newest sequence number.
    fn rooms(&self) -> Result<Vec<(String, Seq)>, HistoryError>;
    /// The names of the rooms that exist, which may cost less than [`rooms`](Self::rooms).
    /// May block.
    fn room_names(&self) -> Result<Vec<String>, HistoryError> {
        Ok(self.rooms()?.into_iter().map(|(name, _)| name).collect())
    }
    /// Creates a room if it is missing; returns whether it was created.
    fn create_room(&self, room: &RoomName) -> Result<bool, HistoryError>;
    /// Deletes a room and its messages; returns whether it existed. May block.
    fn delete_room(&self, room: &RoomName) -> Result<bool, HistoryError>;
    /// Waits until every append made so far is durable and its completion has run.
    fn flush(&self) -> Result<(), HistoryError>;
    /// Flushes and releases the store.
    fn close(&self) -> Result<(), HistoryError>;
}

impl HistoryStore for History {
    fn append(&self, room: &RoomName, message: Message, _id: String, durable: Completion<Seq>) {
        // Its writes are never in doubt while it runs: a failed one fails for certain.
        History::append(self, room.as_str(), message, durable);
    }
    fn subscribe(&self, subscriber: Arc<dyn Subscriber>) -> Result<(), HistoryError> {
        History::subscribe(self, subscriber)
    }
    fn page(
        &self,
        room: &RoomName,
        anchor: Anchor,
        limit: PageLimit,
    ) -> Result<HistoryPage, HistoryError> {
        History::page(self, room.as_str(), anchor, limit)
    }
    fn rooms(&self) -> Result<Vec<(String, Seq)>, HistoryError> {
        Ok(History::rooms(self)?.into_iter().map(|(name, state)| (name, state.last)).collect())
    }
    fn create_room(&self, room: &RoomName) -> Result<bool, HistoryError> {
        History::create_room(self, room.as_str())
    }
    fn delete_room(&self, room: &RoomName) -> Result<bool, HistoryError> {
        History::delete_room(self, room.as_str())
    }
    fn flush(&self) -> Result<(), HistoryError> {
        History::flush(self)
    }
    fn close(&self) -> Result<(), HistoryError> {
        History::close(self)
    }
}

/// Carries every stored message to the members of its room on this node.
pub trait FanOut: Send + Sync + 'static {
    /// Makes sure that this node receives `room`'s messages, before a member joins it. A room
    /// that does not exist is left to the core to refuse.
    fn follow<'a>(&'a self, room: &'a str) -> Pending<'a, Result<(), FollowError>>;
}

/// The single node's fan-out: the history's subscriber, straight into the room core, which
/// offers the frame, encoded once (from the history's record) and shared, to each member's
/// queue in sequence order.
pub struct LocalFanOut(pub Arc<Mutex<Core<Outbox>>>);

impl Subscriber for LocalFanOut {
    fn stored(&self, room: &str, seq: Seq, message: &Message) {
        let frame = crate::reply::message_frame(room, seq, message);
        let evicted = crate::wakes::holding(|| {
            self.0.lock().unwrap_or_else(PoisonError::into_inner).committed(room, seq, frame)
        });
        for gone in evicted {
            tracing::info!(member = gone.member.0, last_seq = gone.last_seq, %room, "dropped a member that fell behind");
        }
    }
}

impl FanOut for LocalFanOut {
    fn follow<'a>(&'a self, _room: &'a str) -> Pending<'a, Result<(), FollowError>> {
        Box::pin(ready(Ok(()))) // Every room's messages pass through this process anyway.
    }
}

/// What every node must agree on: which names are online, who is in which room, and the
/// rooms with their members.
pub trait Directory: Send + Sync + 'static {
    /// Claims `name` for `conn`, whose session token is `token`; `resume` takes it over from
    /// the user's earlier session. `Ok(false)`: someone else holds it.
    /// The name's `owner` (logged in to its account) takes it from whoever holds it.
    fn claim<'a>(
        &'a self,
        conn: ConnId,
        name: &'a UserName,
        token: SessionToken,
        resume: Option<SessionToken>,
        owner: bool,
    ) -> Pending<'a, Result<bool, DirectoryError>>;
    /// `conn` is gone: free its name. Must not block.
    fn release(&self, conn: ConnId);
    /// `member` of `conn`, named `name`, joined `room`. Must not block.
    fn entered(&self, member: MemberId, room: &RoomName, name: &UserName);
    /// `member` left `room`. Must not block.
    fn left(&self, member: MemberId);
    /// Everyone in `room`, or why not (an unknown room).
    fn who<'a>(
        &'a self,
        room: &'a str,
    ) -> Pending<'a, Result<Result<Vec<String>, Refusal>, DirectoryError>>;
    /// Every room with its newest sequence number and its members, and `user`'s own
    /// direct conversations (see [`RoomName::listed_for`]).
    fn rooms<'a>(
        &'a self,
        user: &'a UserName,
    ) -> Pending<'a, Result<Vec<RoomInfo>, DirectoryError>>;
    /// Renews this node's claims; returns the connections whose names were taken over by
    /// the same user's session on another node. `None` when nothing needs renewing.
    fn refresh(&self) -> Option<Pending<'_, Vec<ConnId>>>;
}

/// The single node's directory: the room core, which holds every connection.
pub struct LocalDirectory(pub Arc<Mutex<Core<Outbox>>>);

impl LocalDirectory {
    fn core(&self) -> std::sync::MutexGuard<'_, Core<Outbox>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Directory for LocalDirectory {
    fn claim<'a>(
        &'a self,
        _conn: ConnId,
        _name: &'a UserName,
        _token: SessionToken,
        _resume: Option<SessionToken>,
        _owner: bool,
    ) -> Pending<'a, Result<bool, DirectoryError>> {
        Box::pin(ready(Ok(true))) // `Core::connect` decides.
    }
    fn release(&self, _conn: ConnId) {}
    fn entered(&self, _member: MemberId, _room: &RoomName, _name: &UserName) {}
    fn left(&self, _member: MemberId) {}
    fn who<'a>(
        &'a self,
        room: &'a str,
    ) -> Pending<'a, Result<Result<Vec<String>, Refusal>, DirectoryError>> {
        Box::pin(ready(Ok(self.core().who(room))))
    }
    fn rooms<'a>(
        &'a self,
        user: &'a UserName,
    ) -> Pending<'a, Result<Vec<RoomInfo>, DirectoryError>> {
        let core = self.core();
        let rooms = core
            .rooms()
            .into_iter()
            .filter(|r| r.name.listed_for(user, r.last_seq))
            .map(|r| RoomInfo {
                name: r.name.to_string(),
                last_seq: r.last_seq,
                members: r.members as u32,
                topic: String::new(), // The core's, for either seam (`connection`).
                unread: None,         // The node counts them for accounts (`connection`).
            })
            .collect();
        Box::pin(ready(Ok(rooms)))
    }
    fn refresh(&self) -> Option<Pending<'_, Vec<ConnId>>> {
        None
    }
}

/// Why the accounts store could not answer.
#[derive(Debug, thiserror::Error)]
pub enum AccountsStoreError {
    #[error(transparent)]
    Local(#[from] AccountsError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("the accounts store's thread failed: {0}")]
    Thread(String),
}

/// A change to an account; it returns a count for the answer (sessions ended). Cluster mode
/// may run it more than once, on the newest record, when another node changed it meanwhile.
pub type AccountChange = Arc<dyn Fn(&mut Account) -> usize + Send + Sync>;

/// A change to a room's rules, judged as it is made ([`chat_core::moderation::apply`]).
/// Cluster mode may run it more than once, on the newest record.
pub type RulesChange = Arc<dyn Fn(&mut RoomRules) -> Result<(), Refusal> + Send + Sync>;

/// The registered names, under their keys (the lower-case name), the rooms' rules, and the
/// accounts' read markers.
pub trait AccountStore: Send + Sync + 'static {
    /// `account`'s read markers: each room it marked, and the last sequence number read.
    fn markers(
        &self,
        account: String,
    ) -> Pending<'_, Result<Vec<(String, Seq)>, AccountsStoreError>>;
    /// Moves `account`'s marker in `room` forward to `seq`; returns where it is.
    fn mark(
        &self,
        account: String,
        room: String,
        seq: Seq,
    ) -> Pending<'_, Result<Seq, AccountsStoreError>>;
    /// Every room's rules that has a record (a single node loads them all at start).
    fn all_room_rules(&self) -> Pending<'_, Result<Vec<(String, RoomRules)>, AccountsStoreError>>;
    /// `room`'s rules, if it has a record.
    fn room_rules(
        &self,
        room: String,
    ) -> Pending<'_, Result<Option<RoomRules>, AccountsStoreError>>;
    /// Changes `room`'s rules (the default ones if it has no record); the new rules, or
    /// why the change was refused.
    fn update_room_rules(
        &self,
        room: String,
        change: RulesChange,
    ) -> Pending<'_, Result<Result<RoomRules, Refusal>, AccountsStoreError>>;
    /// The account of `key`, if registered.
    fn get(&self, key: String) -> Pending<'_, Result<Option<Account>, AccountsStoreError>>;
    /// Registers `key` as `account`; `false` when someone registered it first (on any node).
    fn create(
        &self,
        key: String,
        account: Account,
    ) -> Pending<'_, Result<bool, AccountsStoreError>>;
    /// Changes `key`'s account; `None` when it is not registered.
    fn update(
        &self,
        key: String,
        change: AccountChange,
    ) -> Pending<'_, Result<Option<usize>, AccountsStoreError>>;
}

/// Runs `work` on the store on a blocking thread (fjall reads may touch the disk, and each
/// write is synced).
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, AccountsError> + Send + 'static,
) -> Result<T, AccountsStoreError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => Ok(result?),
        Err(e) => Err(AccountsStoreError::Thread(e.to_string())),
    }
}

/// A room's record as the stores keep it.
pub(crate) fn encode_rules(rules: &RoomRules) -> Result<Vec<u8>, AccountsStoreError> {
    postcard::to_stdvec(rules).map_err(|e| AccountsStoreError::Local(e.into()))
}

pub(crate) fn decode_rules(bytes: &[u8]) -> Result<RoomRules, AccountsStoreError> {
    postcard::from_bytes(bytes).map_err(|e| AccountsStoreError::Local(e.into()))
}

impl AccountStore for Arc<LocalAccounts> {
    fn markers(
        &self,
        account: String,
    ) -> Pending<'_, Result<Vec<(String, Seq)>, AccountsStoreError>> {
        let store = Arc::clone(self);
        Box::pin(blocking(move || LocalAccounts::markers(&store, &account)))
    }
    fn mark(
        &self,
        account: String,
        room: String,
        seq: Seq,
    ) -> Pending<'_, Result<Seq, AccountsStoreError>> {
        let store = Arc::clone(self);
        Box::pin(blocking(move || LocalAccounts::mark(&store, &account, &room, seq)))
    }
    fn all_room_rules(&self) -> Pending<'_, Result<Vec<(String, RoomRules)>, AccountsStoreError>> {
        let store = Arc::clone(self);
        Box::pin(async move {
            let records = blocking(move || store.room_records()).await?;
            records.into_iter().map(|(room, bytes)| Ok((room, decode_rules(&bytes)?))).collect()
        })
    }
    fn room_rules(
        &self,
        room: String,
    ) -> Pending<'_, Result<Option<RoomRules>, AccountsStoreError>> {
        let store = Arc::clone(self);
        Box::pin(async move {
            let record = blocking(move || store.room_record(&room)).await?;
            record.map(|bytes| decode_rules(&bytes)).transpose()
        })
    }
    fn update_room_rules(
        &self,
        room: String,
        change: RulesChange,
    ) -> Pending<'_, Result<Result<RoomRules, Refusal>, AccountsStoreError>> {
        let store = Arc::clone(self);
        Box::pin(async move {
            let updated = blocking(move || {
                store.update_room_record(&room, |old| {
                    let mut rules = match old.map(decode_rules).transpose() {
                        Ok(rules) => rules.unwrap_or_default(),
                        Err(e) => return Err(Err(e)),
                    };
                    change(&mut rules).map_err(Ok)?;
                    encode_rules(&rules).map_err(Err)
                })
            })
            .await?;
            match updated {
                Ok(bytes) => Ok(Ok(decode_rules(&bytes)?)),
                Err(Ok(refusal)) => Ok(Err(refusal)),
                Err(Err(e)) => Err(e),
            }
        })
    }
    fn get(&self, key: String) -> Pending<'_, Result<Option<Account>, AccountsStoreError>> {
        let store = Arc::clone(self);
        Box::pin(blocking(move || LocalAccounts::get(&store, &key)))
    }
    fn create(
        &self,
        key: String,
        account: Account,
    ) -> Pending<'_, Result<bool, AccountsStoreError>> {
        let store = Arc::clone(self);
        Box::pin(blocking(move || LocalAccounts::create(&store, &key, &account)))
    }
    fn update(
        &self,
        key: String,
        change: AccountChange,
    ) -> Pending<'_, Result<Option<usize>, AccountsStoreError>> {
        let store = Arc::clone(self);
        Box::pin(blocking(move || LocalAccounts::update(&store, &key, |account| change(account))))
    }
}
