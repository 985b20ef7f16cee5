//! The writer thread: group commit of appends, room changes and flushes.
//!
//! The thread owns the in-memory copy of every room's numbering. It drains whatever requests
//! queued up, applies them to one write batch, commits it once, and only then publishes the
//! new numbering and hands every stored message to the subscriber, in request order. The
//! completions run once the batch is synced (see `syncer.rs`), or at once without
//! [`Durability::Sync`]. When the commit fails, none of the batch's numbers were used: the
//! copy is left as it was and every request in the batch gets the error. The database is then
//! closed and reopened (see the crate's "Failed writes").

use std::collections::HashMap;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use fjall::PersistMode;

use crate::syncer::{self, Committed, Outcome};
use crate::{Completion, Durability, Handles, HistoryError, Message, RoomState, Seq, Store};

/// Most requests committed in one batch.
const MAX_BATCH: usize = 4096;
/// How often a database closed by a failed write is tried again.
const REOPEN_INTERVAL: Duration = Duration::from_secs(1);

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

pub(crate) fn spawn(
    store: Arc<Store>,
    queue: mpsc::Receiver<Command>,
) -> Result<std::thread::JoinHandle<()>, HistoryError> {
    let rooms = store.all_rooms()?.into_iter().collect();
    let syncer = match store.durability {
        Durability::Sync => Some(syncer::spawn(Arc::clone(&store))?),
        Durability::Buffered => None,
    };
    std::thread::Builder::new()
        .name("history-writer".into())
        .spawn(move || Writer { store, rooms, next_reopen: None, syncer }.run(&queue))
        .map_err(|e| HistoryError::io("start its writer thread", e))
}

struct Writer {
    store: Arc<Store>,
    rooms: HashMap<String, RoomState>,
    /// Set while the database is closed after a failed write or sync: when to try opening it
    /// again, and what went wrong.
    next_reopen: Option<(Instant, String)>,
    /// Where committed batches go to be synced, with [`Durability::Sync`].
    syncer: Option<(mpsc::SyncSender<Committed>, std::thread::JoinHandle<()>)>,
}

impl Writer {
    fn run(mut self, queue: &mpsc::Receiver<Command>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Ok(first) = queue.recv() {
            batch.push(first);
            batch.extend(queue.try_iter().take(MAX_BATCH - 1));
            let stop = batch.iter().any(|c| matches!(c, Command::Shutdown { .. }));
            self.commit(batch.drain(..));
            if stop {
                break;
            }
        }
        // Every completion of the shutdown's batch has run once the syncer is done.
        if let Some((sender, thread)) = self.syncer.take() {
            drop(sender);
            let _ = thread.join();
        }
        // Anything still queued arrived after the shutdown.
        for command in queue.try_iter() {
            command.fail(HistoryError::Closed);
        }
    }

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

    fn commit(&mut self, commands: impl Iterator<Item = Command>) {
        let handles = match self.handles() {
            Ok(handles) => handles,
            Err(error) => {
                for command in commands {
                    match command {
                        Command::Flush { done } | Command::Shutdown { done } => done(Ok(true)),
                        other => other.fail(error.clone()),
                    }
                }
                return;
            }
        };
        // The batch reaches the operating system at commit (so a killed process loses
        // nothing); with `Durability::Sync` it is synced after the subscriber had it.
        let mut batch = handles.db.batch().durability(Some(PersistMode::Buffer));
        // Numbering changed by this batch; published only once it has committed.
        let mut changed: HashMap<String, RoomState> = HashMap::new();
        let mut stored = Vec::new();
        let mut outcomes = Vec::new();
        for command in commands {
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
        match &self.syncer {
            Some((syncer, _)) => {
                if let Err(mpsc::SendError(committed)) = syncer.send(committed) {
                    for mut outcome in committed.outcomes {
                        outcome.fail(&HistoryError::Closed);
                        outcome.run();
                    }
                }
            }
            None => committed.outcomes.into_iter().for_each(Outcome::run),
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
