//! The message history: a per-room append-only log on the embedded LSM engine fjall.
//!
//! Three operations serve the node: [`History::append`] a message to a room (the history
//! assigns the next sequence number and trims the room to its cap), [`History::page`] a
//! page of a room's retained messages (the newest, or before, after or around a sequence
//! number), and [`History::rooms`] to list the rooms
//! (with [`History::create_room`] and [`History::delete_room`] to change them).
//!
//! # Layout on disk
//! One fjall database with two keyspaces:
//! - `messages`: key `room | 0x00 | seq` (seq as big-endian `u64`, so a room's range scan
//!   comes out in order), value the postcard-encoded [`Message`];
//! - `rooms`: key the room name, value its [`RoomState`]: the oldest retained and the newest
//!   sequence numbers. It is written in the same batch as the messages, so after a crash the
//!   numbering goes on from what is on disk and no sequence number is used twice.
//!
//! # Durability and group commit
//! Writes are group-committed, one writer at a time (see `writer.rs`): whoever writes takes
//! every request that queued up meanwhile and writes them as one batch, which reaches the
//! operating system at once: from then on a killed process loses none of it. A caller that
//! finds nobody writing writes its own request at once, on its own thread; while requests come
//! fast, or a commit was slow, the history's writer thread takes them instead. Then the
//! history's [`Subscriber`] (the node's fan-out, registered once) is handed every message of
//! the batch with its number, in append order, and each append's completion runs once it is
//! durable: synced with [`Durability::Sync`]. A second thread does the syncs, each covering
//! every batch written while the one before ran, so throughput grows with load, and writes go
//! on meanwhile: a caller can relay a message while its sync runs, even a slow one, and
//! acknowledge it once synced. [`Durability::Buffered`] skips the sync: a power cut or
//! kernel crash can lose the last moments of acknowledged messages.
//!
//! Reads go straight to fjall from the caller's thread; async callers use `spawn_blocking`.
//!
//! # Failed writes
//! fjall refuses every write after one has failed (a full disk, a read-only or failing
//! device), since it cannot know what reached the disk. The writer then closes the database
//! and reopens it, at most once a second, until it opens again (space was freed, the device
//! came back). A failed sync does the same, since Linux may drop the pages it could not
//! write. Meanwhile every request fails at once with [`HistoryError::Unavailable`]. On
//! reopening, the numbering is read back from disk, so no sequence number is used twice; a
//! message whose write was reported failed may still be there if the disk took it after all,
//! and an acknowledged message is never lost.

mod page;
mod syncer;
mod writer;

pub use page::{Anchor, HistoryPage, PageLimit, assemble, weight};

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, PoisonError, RwLock, mpsc};

use fjall::{Database, Keyspace, KeyspaceCreateOptions};
use serde::{Deserialize, Serialize};

use writer::Command;

/// A per-room sequence number, starting at 1.
pub type Seq = u64;

/// Most requests waiting to be written; past it, [`HistoryError::Busy`].
pub const MAX_QUEUED_WRITES: usize = 65_536;

/// Bytes of recent writes the messages keyspace holds in memory before flushing them to a
/// table on disk. fjall's default (64 MiB) lets a busy node's memory climb for many minutes;
/// recent messages are read from the block cache (32 MiB) just as well.
const MEMTABLE_SIZE: u64 = 16 << 20;

/// How far a write goes before it is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Synced to disk (fdatasync) before the completion runs. Survives power loss. While
    /// appends come faster than syncs, a sync may wait up to 5 ms for more to share it.
    #[default]
    Sync,
    /// Handed to the operating system before the completion runs. Survives the process
    /// being killed, not a power cut or kernel crash.
    Buffered,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// The directory of the database; created if missing.
    pub path: PathBuf,
    /// Messages a room retains; older ones are trimmed in the batch that adds a new one.
    pub cap: u64,
    /// Rooms whose names start with one of these prefixes retain as many as it says instead
    /// (the first that matches).
    pub cap_by_prefix: Vec<(String, u64)>,
    pub durability: Durability,
}

/// A message as the history stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub sender: String,
    /// Milliseconds since the Unix epoch, from the node's clock.
    pub timestamp_ms: u64,
    pub body: String,
}

/// A stored message with its sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub seq: Seq,
    pub message: Message,
}

/// A room's numbering: messages `first..=last` are retained (none when `first > last`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomState {
    pub first: Seq,
    pub last: Seq,
    /// A deleted room keeps its numbering so that recreating it never reuses a number.
    pub deleted: bool,
}

#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum HistoryError {
    #[error("there is no room named {0:?}")]
    UnknownRoom(String),
    #[error("{0:?} cannot name a room in the history (empty, or holds a NUL byte)")]
    InvalidRoomName(String),
    #[error(
        "the history could not write to disk: {0}; check the data directory's space and permissions"
    )]
    Storage(Arc<fjall::Error>),
    /// The message was written (and relayed) but the sync after it failed: it may not survive
    /// a power cut, and it may or may not be there after a restart.
    #[error(
        "the history wrote the message but could not sync it to disk: {0}; check the data directory's device"
    )]
    NotSynced(Arc<fjall::Error>),
    #[error("the history holds a record it cannot decode: {0}")]
    Corrupt(#[from] postcard::Error),
    #[error(
        "the history is unavailable after a failed write ({0}); it retries every second: check the data directory's space and permissions"
    )]
    Unavailable(String),
    #[error("the history has {MAX_QUEUED_WRITES} writes queued; try again shortly")]
    Busy,
    #[error("the history is closed")]
    Closed,
    #[error("the history has a subscriber already")]
    SubscribedAlready,
    /// Another process (another node) has the database open.
    #[error(
        "another process holds the history in {0}: a node is already running on this data \
         directory; stop it, or give this node its own --data-dir"
    )]
    InUse(std::path::PathBuf),
    /// A history kept elsewhere did not confirm a write in time: it may have been stored.
    #[error("the history did not confirm the write in time: {0}")]
    Unconfirmed(Arc<dyn std::error::Error + Send + Sync>),
    /// A history kept elsewhere (cluster mode's NATS) failed; its own error says why.
    #[error(transparent)]
    Remote(Arc<dyn std::error::Error + Send + Sync>),
    /// The operating system refused something other than a database write: making the
    /// directory, starting a thread.
    #[error("the history could not {what}: {source}; check the data directory's permissions")]
    Io { what: &'static str, source: Arc<std::io::Error> },
}

impl HistoryError {
    fn io(what: &'static str, source: std::io::Error) -> Self {
        Self::Io { what, source: Arc::new(source) }
    }
}

impl From<fjall::Error> for HistoryError {
    fn from(e: fjall::Error) -> Self {
        Self::Storage(Arc::new(e))
    }
}

/// Called by whoever wrote the request (the caller that submitted it or another, or the
/// writer thread), or for a synced write on the syncer thread, once a write is done (or has
/// failed). It must not block, nor wait for another request to the history.
pub type Completion<T> = Box<dyn FnOnce(Result<T, HistoryError>) + Send>;

/// Told of every message the history stores, once it has its number and the operating
/// system has it (a killed process loses nothing), before its sync: by whoever wrote it, in
/// append order, gap-free per room. The log is the bus: whoever relays messages subscribes
/// once, instead of every append carrying a way back up.
pub trait Subscriber: Send + Sync {
    /// `message` is in `room` under `seq`. Must not block: the next batch waits for it.
    fn stored(&self, room: &str, seq: Seq, message: &Message);
}

/// The history of every room. Cheap to clone; all clones share one inbox of writes.
#[derive(Clone)]
pub struct History {
    store: Arc<Store>,
    writing: Arc<writer::Writing>,
}

/// The database, shared by the readers and the writers.
pub(crate) struct Store {
    path: PathBuf,
    cap: u64,
    cap_by_prefix: Vec<(String, u64)>,
    durability: Durability,
    /// The open database; `None` from a failed write until the writer reopens it.
    open: RwLock<Option<Arc<Handles>>>,
    /// Handed every stored message; set once.
    subscriber: OnceLock<Arc<dyn Subscriber>>,
}

impl Store {
    /// The messages `room` retains.
    pub(crate) fn cap_of(&self, room: &str) -> u64 {
        let special =
            self.cap_by_prefix.iter().find(|(prefix, _)| room.starts_with(prefix.as_str()));
        special.map_or(self.cap, |(_, cap)| *cap)
    }
}

/// The fjall handles of one opening of the database.
pub(crate) struct Handles {
    db: Database,
    messages: Keyspace,
    rooms: Keyspace,
}

impl Handles {
    fn open(path: &Path) -> Result<Self, HistoryError> {
        let db = Database::builder(path).open()?;
        let messages = db.keyspace("messages", || {
            KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_SIZE)
        })?;
        let rooms = db.keyspace("rooms", KeyspaceCreateOptions::default)?;
        Ok(Self { db, messages, rooms })
    }
}

impl History {
    /// Opens (or creates) the history at `config.path`, recovering whatever a crash left.
    ///
    /// # Errors
    /// The directory cannot be created or read, or fjall cannot recover it.
    pub fn open(config: Config) -> Result<Self, HistoryError> {
        std::fs::create_dir_all(&config.path)
            .map_err(|e| HistoryError::io("create its directory", e))?;
        let handles = Handles::open(&config.path).map_err(|e| match e {
            HistoryError::Storage(inner) if matches!(*inner, fjall::Error::Locked) => {
                HistoryError::InUse(config.path.clone())
            }
            e => e,
        })?;
        let store = Arc::new(Store {
            cap: config.cap.max(1),
            cap_by_prefix: config
                .cap_by_prefix
                .into_iter()
                .map(|(prefix, cap)| (prefix, cap.max(1)))
                .collect(),
            durability: config.durability,
            open: RwLock::new(Some(Arc::new(handles))),
            subscriber: OnceLock::new(),
            path: config.path,
        });
        let writing = Arc::new(writer::start(Arc::clone(&store))?);
        Ok(Self { store, writing })
    }

    /// Registers the one [`Subscriber`] that is handed every message stored from now on.
    ///
    /// # Errors
    /// [`HistoryError::SubscribedAlready`] for a second one.
    pub fn subscribe(&self, subscriber: Arc<dyn Subscriber>) -> Result<(), HistoryError> {
        self.store.subscriber.set(subscriber).map_err(|_| HistoryError::SubscribedAlready)
    }

    /// Appends `message` to `room`. Once it is stored the subscriber has it; `durable` runs
    /// once it is as safe as the [`Durability`] asks (with `Sync`, synced: a power cut loses
    /// nothing), on whichever thread wrote it or on the syncer's, with the message's number, or
    /// with the error that kept it from being stored (then no number was used up, and the
    /// subscriber never saw it) or synced ([`HistoryError::NotSynced`], after the subscriber
    /// had it). Completions run in the order of the appends.
    ///
    /// Never waits for another writer: a full queue fails at once with [`HistoryError::Busy`].
    /// When nobody is writing and requests come slowly, it writes the message to the
    /// operating system itself (tens of microseconds, no sync) rather than wake a thread.
    pub fn append(&self, room: &str, message: Message, durable: Completion<Seq>) {
        self.submit(Command::Append { room: room.to_owned(), message, done: durable });
    }

    /// [`append`](Self::append), waiting for the outcome on this thread.
    ///
    /// # Errors
    /// As for `append`.
    pub fn append_blocking(&self, room: &str, message: Message) -> Result<Seq, HistoryError> {
        self.request(|done| Command::Append { room: room.to_owned(), message, done })
    }

    /// Creates `room` if it does not exist; returns whether it was created.
    ///
    /// # Errors
    /// An invalid name, or a failed write.
    pub fn create_room(&self, room: &str) -> Result<bool, HistoryError> {
        self.request(|done| Command::CreateRoom { room: room.to_owned(), done })
    }

    /// Deletes `room` and its messages; returns whether it existed.
    ///
    /// # Errors
    /// A failed write.
    pub fn delete_room(&self, room: &str) -> Result<bool, HistoryError> {
        self.request(|done| Command::DeleteRoom { room: room.to_owned(), done })
    }

    /// Waits until every write submitted before it is durable and its completion has run.
    ///
    /// # Errors
    /// [`HistoryError::Closed`] when the writer is gone.
    pub fn flush(&self) -> Result<(), HistoryError> {
        self.request(|done| Command::Flush { done }).map(|_: bool| ())
    }

    /// Submits a command and waits on this thread for its completion.
    fn request<T: Send + 'static>(
        &self,
        command: impl FnOnce(Completion<T>) -> Command,
    ) -> Result<T, HistoryError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.submit(command(Box::new(move |r| drop(tx.send(r)))));
        rx.recv().unwrap_or(Err(HistoryError::Closed))
    }

    fn submit(&self, command: Command) {
        self.writing.submit(command);
    }

    /// A page of `room`'s retained messages at `anchor`, within `limit`, oldest first. The
    /// numbering is dense, so each side of the anchor is one range read, the older one
    /// backwards from the anchor.
    ///
    /// # Errors
    /// An unknown room, or a failed read.
    pub fn page(
        &self,
        room: &str,
        anchor: Anchor,
        limit: PageLimit,
    ) -> Result<HistoryPage, HistoryError> {
        let state = self.room(room)?.ok_or_else(|| HistoryError::UnknownRoom(room.to_owned()))?;
        let (first, last) = (state.first, state.last);
        let handles = self.store.handles()?;
        // Retained messages `from..=to`, at most `count` of them, nearest the anchor first.
        let read =
            |from: Seq, to: Seq, backwards: bool, count: usize, budget: &mut page::Budget| {
                let mut messages = Vec::new();
                if from > to || count == 0 {
                    return Ok::<_, HistoryError>(messages);
                }
                let range = handles.messages.range(writer::key(room, from)..=writer::key(room, to));
                let items: Box<dyn Iterator<Item = fjall::Guard>> =
                    if backwards { Box::new(range.rev()) } else { Box::new(range) };
                for item in items.take(count) {
                    let (key, value) = item.into_inner()?;
                    let message: Message = postcard::from_bytes(&value)?;
                    if !budget.take(&message) {
                        break;
                    }
                    messages.push(Stored { seq: writer::seq_of(&key), message });
                }
                if backwards {
                    messages.reverse();
                }
                Ok(messages)
            };
        let mut budget = page::Budget::new(limit.bytes);
        let messages = match anchor {
            Anchor::Latest => read(first, last, true, limit.messages, &mut budget)?,
            Anchor::Before(seq) => {
                read(first, seq.saturating_sub(1).min(last), true, limit.messages, &mut budget)?
            }
            Anchor::After(seq) => {
                read(seq.saturating_add(1).max(first), last, false, limit.messages, &mut budget)?
            }
            Anchor::Around(seq) => {
                let mut older_budget = budget.split_half();
                let older_count = limit.messages / 2;
                let below = seq.saturating_sub(1).min(last);
                let mut messages = read(first, below, true, older_count, &mut older_budget)?;
                budget.join(older_budget);
                let newer_count = limit.messages - messages.len();
                messages.extend(read(seq.max(first), last, false, newer_count, &mut budget)?);
                messages
            }
        };
        let mut page = page::finish(anchor, messages, first, last);
        if let Anchor::After(after) = anchor {
            let after = after.min(last);
            page.gap = (after + 1 < first).then(|| (after + 1, first - 1));
        }
        Ok(page)
    }

    /// The numbering of one room, `None` if it does not exist.
    ///
    /// # Errors
    /// A failed read.
    pub fn room(&self, room: &str) -> Result<Option<RoomState>, HistoryError> {
        Ok(self.store.room_state(room)?.filter(|s| !s.deleted))
    }

    /// Every room, by name, with its numbering.
    ///
    /// # Errors
    /// A failed read.
    pub fn rooms(&self) -> Result<Vec<(String, RoomState)>, HistoryError> {
        let mut rooms = self.store.all_rooms()?;
        rooms.retain(|(_, state)| !state.deleted);
        Ok(rooms)
    }

    /// Finishes every queued write, syncs and stops the writer and syncer threads. Later
    /// writes fail with [`HistoryError::Closed`].
    ///
    /// # Errors
    /// The final sync failed.
    pub fn close(&self) -> Result<(), HistoryError> {
        let _ = self.request(|done| Command::Shutdown { done });
        self.writing.join();
        if let Ok(handles) = self.store.handles() {
            handles.db.persist(fjall::PersistMode::SyncAll)?;
        }
        Ok(())
    }
}

impl Store {
    /// The open database.
    ///
    /// # Errors
    /// [`HistoryError::Unavailable`] between a failed write and the reopening.
    pub(crate) fn handles(&self) -> Result<Arc<Handles>, HistoryError> {
        self.open
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| HistoryError::Unavailable("the database is being reopened".into()))
    }

    /// Closes the database after a failed write (once every reader lets go of it).
    pub(crate) fn close_handles(&self) {
        self.open.write().unwrap_or_else(PoisonError::into_inner).take();
    }

    /// Closes the database after a failed sync, unless a failed write closed that opening
    /// already.
    pub(crate) fn close_handles_if(&self, handles: &Arc<Handles>) {
        let mut open = self.open.write().unwrap_or_else(PoisonError::into_inner);
        if open.as_ref().is_some_and(|o| Arc::ptr_eq(o, handles)) {
            open.take();
        }
    }

    /// Opens the database again. A panic in fjall's recovery counts as a failed opening, so
    /// that the writer thread lives to try again.
    pub(crate) fn reopen(&self) -> Result<Arc<Handles>, HistoryError> {
        let path = &self.path;
        let opened = std::panic::catch_unwind(|| Handles::open(path)).map_err(|_| {
            HistoryError::Unavailable("the database panicked while recovering".into())
        })?;
        let handles = Arc::new(opened?);
        *self.open.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(&handles));
        Ok(handles)
    }

    /// Every room's numbering, deleted rooms included, in name order.
    pub(crate) fn all_rooms(&self) -> Result<Vec<(String, RoomState)>, HistoryError> {
        let mut rooms = Vec::new();
        for item in self.handles()?.rooms.iter() {
            let (key, value) = item.into_inner()?;
            rooms.push((String::from_utf8_lossy(&key).into_owned(), postcard::from_bytes(&value)?));
        }
        Ok(rooms)
    }

    fn room_state(&self, room: &str) -> Result<Option<RoomState>, HistoryError> {
        match self.handles()?.rooms.get(room)? {
            Some(bytes) => Ok(Some(postcard::from_bytes(&bytes)?)),
            None => Ok(None),
        }
    }
}
