//! Group commit of appends, room changes and flushes, by whoever is free to write.
//!
//! Requests queue in one inbox. A caller that finds nobody writing writes the batch itself:
//! an append from an idle history reaches the disk and the subscriber without waking another
//! thread (at a moderate rate every append is such a one). Whatever queues meanwhile is
//! handed to the writer thread, which writes until the inbox is empty; so is everything after
//! a commit that took longer than [`SLOW_COMMIT`] (fjall stalls writes when its flushes fall
//! behind, and a caller's thread is an async runtime's) or whose batch the syncer had no room
//! for. One writer at a time, in inbox order.
//!
//! The writer owns the in-memory copy of every room's numbering. It applies the requests to
//! one write batch, commits it once, and only then publishes the new numbering and hands
//! every stored message to the subscriber, in request order. The completions run once the
//! batch is synced (see `syncer.rs`), or at once without [`Durability::Sync`]. When the commit
//! fails, none of the batch's numbers were used: the copy is left as it was and every request
//! in the batch gets the error. The database is then closed and reopened (see the crate's
//! "Failed writes").

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use fjall::PersistMode;

use crate::syncer::{Committed, NotSent, Outcome, Syncer};
use crate::{
    Completion, Durability, Handles, HistoryError, MAX_QUEUED_WRITES, Message, RoomState, Seq,
    Store,
};

/// Most requests committed in one batch.
const MAX_BATCH: usize = 4096;
/// How often a database closed by a failed write is tried again.
const REOPEN_INTERVAL: Duration = Duration::from_secs(1);
/// While requests come closer together than this on average (over 4,000 a second), they are
/// left to the writer thread, so that whatever comes while it writes shares the next batch
/// rather than each caller writing its own (benches/RESULTS.md, "Callers that write").
const BUSY_GAP: Duration = Duration::from_micros(250);
/// A commit slower than this (a write stall, a reopening, a fan-out to very many members)
/// leaves the next one to the writer thread, so that callers' threads stay free.
const SLOW_COMMIT: Duration = Duration::from_millis(2);

pub(crate) enum Command {
    /// `done` runs once the message is durable.
    Append {
        room: String,
        message: Message,
        done: Completion<Seq>,
    },
    CreateRoom {
        room: String,
        done: Completion<bool>,
    },
    DeleteRoom {
        room: String,
        done: Completion<bool>,
    },
    Flush {
        done: Completion<bool>,
    },
    Shutdown {
        done: Completion<bool>,
    },
}

impl Command {
    pub(crate) fn fail(self, error: HistoryError) {
        match self {
            Self::Append { done, .. } => done(Err(error)),
            Self::CreateRoom { done, .. }
            | Self::DeleteRoom { done, .. }
            | Self::Flush { done }
            | Self::Shutdown { done } => done(Err(error)),
        }
    }
}

/// The inbox, the writer, and the thread that writes when no caller can.
pub(crate) struct Writes {
    inbox: Mutex<Inbox>,
    /// Wakes the writer thread when it has the turn, and at shutdown.
    thread_turn: Condvar,
    writer: Mutex<Writer>,
}

#[derive(Default)]
struct Inbox {
    queued: VecDeque<Command>,
    turn: Turn,
    /// The last commit was slow, or the syncer had no room for it: the next batch is the
    /// thread's.
    slowed: bool,
    /// When the last request that found nobody writing came, and the mean gap between such
    /// requests (a moving average over about the last eight). Those queued behind a writer
    /// are not counted: they share its batches anyway.
    last_request: Option<Instant>,
    mean_gap: Duration,
    /// A batch committed by a caller that the syncer had no room for; the writer thread
    /// queues it for the syncer, waiting, before it writes anything else.
    unsynced: Option<Committed>,
    /// The last batch's emptied vector, so that a batch costs no allocation.
    spare: Vec<Command>,
    closed: bool,
    /// Every handle on the history is gone: the writer thread stops once idle.
    dropped: bool,
}

#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum Turn {
    #[default]
    Idle,
    Caller,
    Thread,
}

impl Inbox {
    fn has_work(&self) -> bool {
        !self.queued.is_empty() || self.unsynced.is_some()
    }
}

/// The history's hold on its writes: when the last clone goes, the writer thread finishes
/// what is queued and stops.
pub(crate) struct Writing {
    writes: Arc<Writes>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Writing {
    pub(crate) fn submit(&self, command: Command) {
        self.writes.submit(command);
    }

    /// Waits for the writer thread to stop, after the shutdown's batch.
    pub(crate) fn join(&self) {
        let thread = self.thread.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

impl Drop for Writing {
    fn drop(&mut self) {
        self.writes.inbox().dropped = true;
        self.writes.thread_turn.notify_all();
    }
}

/// Starts the writer thread (and the syncer's, with [`Durability::Sync`]).
pub(crate) fn start(store: Arc<Store>) -> Result<Writing, HistoryError> {
    let rooms = store.all_rooms()?.into_iter().collect();
    let syncer = match store.durability {
        Durability::Sync => Some(Syncer::spawn(Arc::clone(&store))?),
        Durability::Buffered => None,
    };
    let writer = Writer { store, rooms, next_reopen: None, syncer };
    let writes = Arc::new(Writes {
        inbox: Mutex::default(),
        thread_turn: Condvar::new(),
        writer: Mutex::new(writer),
    });
    let thread = {
        let writes = Arc::clone(&writes);
        std::thread::Builder::new()
            .name("history-writer".into())
            .spawn(move || writes.run_thread())
            .map_err(|e| HistoryError::io("start its writer thread", e))?
    };
    Ok(Writing { writes, thread: Mutex::new(Some(thread)) })
}

impl Writes {
    fn inbox(&self) -> MutexGuard<'_, Inbox> {
        self.inbox.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `command`, and writes it at once on this thread if nobody is writing. Never
    /// waits for another writer; a full inbox fails at once with [`HistoryError::Busy`].
    pub(crate) fn submit(&self, command: Command) {
        let mut inbox = self.inbox();
        if inbox.closed {
            drop(inbox);
            return command.fail(HistoryError::Closed);
        }
        if inbox.queued.len() >= MAX_QUEUED_WRITES {
            drop(inbox);
            return command.fail(HistoryError::Busy);
        }
        inbox.queued.push_back(command);
        if inbox.turn != Turn::Idle {
            return;
        }
        let now = Instant::now();
        if let Some(last) = inbox.last_request.replace(now) {
            inbox.mean_gap = (inbox.mean_gap * 7 + (now - last)) / 8;
        }
        if inbox.slowed || inbox.mean_gap < BUSY_GAP {
            inbox.turn = Turn::Thread;
            self.thread_turn.notify_one();
            return;
        }
        inbox.turn = Turn::Caller;
        self.write(inbox, Turn::Caller);
    }

    fn run_thread(&self) {
        let mut inbox = self.inbox();
        loop {
            if inbox.turn == Turn::Thread {
                self.write(inbox, Turn::Thread);
                inbox = self.inbox();
            } else if inbox.closed {
                return;
            } else if inbox.dropped {
                // Nothing is queued while nobody has the turn.
                drop(inbox);
                self.writer.lock().unwrap_or_else(PoisonError::into_inner).stop_syncer();
                return;
            } else {
                inbox = self.thread_turn.wait(inbox).unwrap_or_else(PoisonError::into_inner);
            }
        }
    }

    /// Writes batches while `who` has the turn: a caller writes one, the thread until the
    /// inbox is empty.
    fn write<'a>(&'a self, mut inbox: MutexGuard<'a, Inbox>, who: Turn) {
        let turn = TurnHeld(self);
        loop {
            let mut batch = std::mem::take(&mut inbox.spare);
            let take = inbox.queued.len().min(MAX_BATCH);
            batch.extend(inbox.queued.drain(..take));
            let unsynced = inbox.unsynced.take();
            drop(inbox);
            let started = Instant::now();
            let mut writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(committed) = unsynced {
                writer.to_syncer(committed);
            }
            // Empty when the thread only had a caller's unsynced batch to hand on.
            let written = if batch.is_empty() {
                Written { stopped: false, unsynced: None }
            } else {
                writer.commit(&mut batch, who == Turn::Thread)
            };
            drop(writer);
            inbox = self.inbox();
            inbox.spare = batch;
            inbox.slowed = started.elapsed() > SLOW_COMMIT || written.unsynced.is_some();
            inbox.unsynced = written.unsynced;
            if written.stopped {
                std::mem::forget(turn);
                return self.close(inbox);
            }
            if !inbox.has_work() {
                inbox.turn = Turn::Idle;
                break;
            }
            if who == Turn::Caller {
                inbox.turn = Turn::Thread;
                self.thread_turn.notify_one();
                break;
            }
        }
        std::mem::forget(turn);
    }

    /// After the shutdown's batch: everything still queued came after it.
    fn close(&self, mut inbox: MutexGuard<'_, Inbox>) {
        inbox.closed = true;
        inbox.turn = Turn::Idle;
        let late: Vec<Command> = inbox.queued.drain(..).collect();
        drop(inbox);
        self.thread_turn.notify_all();
        for command in late {
            command.fail(HistoryError::Closed);
        }
    }
}

/// Held by whoever writes; a writer that panics closes the history rather than leave the
/// turn taken forever.
struct TurnHeld<'a>(&'a Writes);

impl Drop for TurnHeld<'_> {
    fn drop(&mut self) {
        self.0.close(self.0.inbox());
    }
}

struct Writer {
    store: Arc<Store>,
    rooms: HashMap<String, RoomState>,
    /// Set while the database is closed after a failed write or sync: when to try opening it
    /// again, and what went wrong.
    next_reopen: Option<(Instant, String)>,
    /// Where committed batches go to be synced, with [`Durability::Sync`].
    syncer: Option<Syncer>,
}

/// What a commit left to do.
struct Written {
    /// The batch was the shutdown's: the syncer has finished it.
    stopped: bool,
    /// The batch's completions, for the syncer, which had no room for them.
    unsynced: Option<Committed>,
}

impl Writer {
    /// The open database, reopening it if a failed write or sync closed it and it is time to
    /// retry.
    fn handles(&mut self) -> Result<Arc<Handles>, HistoryError> {
        if self.next_reopen.is_none() {
            match self.store.handles() {
                Ok(handles) => return Ok(handles),
                // The syncer closed it after a failed sync.
                Err(_) => {
                    let why = "a sync to disk failed".to_owned();
                    self.next_reopen = Some((Instant::now() + REOPEN_INTERVAL, why));
                }
            }
        }
        let Some((at, why)) = &self.next_reopen else { return self.store.handles() };
        if Instant::now() < *at {
            return Err(HistoryError::Unavailable(why.clone()));
        }
        let reopened = self.store.reopen().and_then(|handles| {
            self.rooms = self.store.all_rooms()?.into_iter().collect();
            Ok(handles)
        });
        match reopened {
            Ok(handles) => {
                tracing::info!("history reopened; writes go on");
                self.next_reopen = None;
                Ok(handles)
            }
            Err(error) => {
                self.store.close_handles();
                tracing::warn!(%error, "the history cannot be reopened yet");
                self.next_reopen = Some((Instant::now() + REOPEN_INTERVAL, error.to_string()));
                Err(HistoryError::Unavailable(error.to_string()))
            }
        }
    }

    /// Commits `commands` as one batch, emptying it. Its completions go to the syncer; when
    /// the syncer has no room for them, they come back unless `wait_for_syncer`.
    fn commit(&mut self, commands: &mut Vec<Command>, wait_for_syncer: bool) -> Written {
        let stopped = commands.iter().any(|c| matches!(c, Command::Shutdown { .. }));
        let handles = match self.handles() {
            Ok(handles) => handles,
            Err(error) => {
                for command in commands.drain(..) {
                    match command {
                        Command::Flush { done } | Command::Shutdown { done } => done(Ok(true)),
                        other => other.fail(error.clone()),
                    }
                }
                if stopped {
                    self.stop_syncer();
                }
                return Written { stopped, unsynced: None };
            }
        };
        // The batch reaches the operating system at commit (so a killed process loses
        // nothing); with `Durability::Sync` it is synced after the subscriber had it.
        let mut batch = handles.db.batch().durability(Some(PersistMode::Buffer));
        // Numbering changed by this batch; published only once it has committed.
        let mut changed: HashMap<String, RoomState> = HashMap::new();
        let mut stored = Vec::new();
        let mut outcomes = Vec::new();
        for command in commands.drain(..) {
            outcomes.push(match command {
                Command::Append { room, message, done } => {
                    let result = self.append(&handles, &mut batch, &mut changed, &room, &message);
                    stored.push((room, message, outcomes.len()));
                    Outcome::Seq(done, result)
                }
                Command::CreateRoom { room, done } => {
                    Outcome::Bool(done, self.create(&mut changed, room))
                }
                Command::DeleteRoom { room, done } => {
                    Outcome::Bool(done, self.delete(&handles, &mut batch, &mut changed, room))
                }
                Command::Flush { done } | Command::Shutdown { done } => {
                    Outcome::Bool(done, Ok(true))
                }
            });
        }
        let wrote = !batch.is_empty() || !changed.is_empty();
        let committed = (|| {
            // Each changed room's numbering is written once, however many appends it took.
            for (room, state) in &changed {
                batch.insert(&handles.rooms, room.as_bytes(), postcard::to_allocvec(state)?);
            }
            if !batch.is_empty() {
                batch.commit()?;
            }
            Ok::<_, HistoryError>(())
        })();
        let written = match committed {
            Ok(()) => {
                self.rooms.extend(changed);
                wrote
            }
            Err(error) => {
                self.failed(&error, &mut outcomes);
                false
            }
        };
        if let Some(subscriber) = self.store.subscriber.get() {
            for (room, message, at) in &stored {
                if let Some(Outcome::Seq(_, Ok(seq))) = outcomes.get(*at) {
                    subscriber.stored(room, *seq, message);
                }
            }
        }
        let committed = Committed { written_to: written.then_some(handles), outcomes };
        let mut unsynced = None;
        match &self.syncer {
            Some(_) if wait_for_syncer || stopped => self.to_syncer(committed),
            Some(syncer) => match syncer.try_send(committed) {
                Ok(()) => {}
                Err(NotSent::Full(committed)) => unsynced = Some(committed),
                Err(NotSent::Gone(committed)) => closed(committed),
            },
            None => committed.outcomes.into_iter().for_each(Outcome::run),
        }
        if stopped {
            // Every completion of the shutdown's batch has run once the syncer is done.
            self.stop_syncer();
        }
        Written { stopped, unsynced }
    }

    /// Queues a committed batch for the syncer, waiting for room.
    fn to_syncer(&self, committed: Committed) {
        match &self.syncer {
            Some(syncer) => {
                if let Err(committed) = syncer.send(committed) {
                    closed(committed);
                }
            }
            None => committed.outcomes.into_iter().for_each(Outcome::run),
        }
    }

    fn stop_syncer(&mut self) {
        if let Some(syncer) = self.syncer.take() {
            syncer.stop();
        }
    }

    /// A write failed: every request of the batch that had succeeded gets `error`, and a
    /// storage failure closes the database, since fjall refuses all writes after one.
    fn failed(&mut self, error: &HistoryError, outcomes: &mut [Outcome]) {
        tracing::error!(%error, "history write failed; the batch's messages may not be stored");
        if matches!(error, HistoryError::Storage(_)) {
            self.store.close_handles();
            self.next_reopen = Some((Instant::now() + REOPEN_INTERVAL, error.to_string()));
        }
        for outcome in outcomes {
            outcome.fail(error);
        }
    }

    /// The numbering of `room` as this batch sees it.
    fn state(&self, changed: &HashMap<String, RoomState>, room: &str) -> Option<RoomState> {
        changed.get(room).or_else(|| self.rooms.get(room)).copied()
    }

    fn append(
        &self,
        handles: &Handles,
        batch: &mut fjall::OwnedWriteBatch,
        changed: &mut HashMap<String, RoomState>,
        room: &str,
        message: &Message,
    ) -> Result<Seq, HistoryError> {
        let mut state = match self.state(changed, room) {
            Some(state) if !state.deleted => state,
            _ => return Err(HistoryError::UnknownRoom(room.to_owned())),
        };
        let value = postcard::to_allocvec(message)?;
        state.last += 1;
        batch.insert(&handles.messages, key(room, state.last), value);
        let cap = self.store.cap_of(room);
        while state.last + 1 - state.first > cap {
            batch.remove(&handles.messages, key(room, state.first));
            state.first += 1;
        }
        let seq = state.last;
        // The room's name is copied once per batch, not once per append.
        match changed.get_mut(room) {
            Some(changed) => *changed = state,
            None => drop(changed.insert(room.to_owned(), state)),
        }
        Ok(seq)
    }

    fn create(
        &self,
        changed: &mut HashMap<String, RoomState>,
        room: String,
    ) -> Result<bool, HistoryError> {
        if room.is_empty() || room.contains('\0') {
            return Err(HistoryError::InvalidRoomName(room));
        }
        let state = match self.state(changed, &room) {
            Some(state) if !state.deleted => return Ok(false),
            Some(old) => RoomState { first: old.last + 1, last: old.last, deleted: false },
            None => RoomState { first: 1, last: 0, deleted: false },
        };
        changed.insert(room, state);
        Ok(true)
    }

    fn delete(
        &self,
        handles: &Handles,
        batch: &mut fjall::OwnedWriteBatch,
        changed: &mut HashMap<String, RoomState>,
        room: String,
    ) -> Result<bool, HistoryError> {
        let Some(mut state) = self.state(changed, &room).filter(|s| !s.deleted) else {
            return Ok(false);
        };
        for seq in state.first..=state.last {
            batch.remove(&handles.messages, key(&room, seq));
        }
        state = RoomState { first: state.last + 1, last: state.last, deleted: true };
        changed.insert(room, state);
        Ok(true)
    }
}

/// A batch whose syncer is gone.
fn closed(committed: Committed) {
    for mut outcome in committed.outcomes {
        outcome.fail(&HistoryError::Closed);
        outcome.run();
    }
}

/// The key of message `seq` in `room`: the name, a NUL, then the number big-endian, so
/// that a room's messages sort together and in order.
pub(crate) fn key(room: &str, seq: Seq) -> Vec<u8> {
    let mut key = Vec::with_capacity(room.len() + 9);
    key.extend_from_slice(room.as_bytes());
    key.push(0);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// The sequence number at the end of a message key.
pub(crate) fn seq_of(key: &[u8]) -> Seq {
    let mut tail = [0; 8];
    if let Some(bytes) = key.len().checked_sub(8).and_then(|at| key.get(at..)) {
        tail.copy_from_slice(bytes);
    }
    Seq::from_be_bytes(tail)
}
