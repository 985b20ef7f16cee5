//! The syncer thread: makes committed batches durable while writes go on.
//!
//! With [`Durability::Sync`](crate::Durability::Sync) the writer commits each batch to the
//! operating system, hands its messages to the subscriber and its completions here.
//! The syncer takes every batch that queued up while it was busy, syncs once (fdatasync) and
//! runs their completions in order. A slow sync thus delays acknowledgements only: meanwhile the
//! next batches are written, numbered and relayed. While appends come faster than syncs, a
//! sync also waits a little for more ([`Grouping`]).
//!
//! The sync goes through a file handle of its own on fjall's active journal rather than
//! `Database::persist`, which holds the journal's lock for the whole sync, so that every commit
//! would wait for it. fdatasync flushes a file whichever handle asks, and fjall syncs a journal
//! fully before it starts the next one, so syncing the newest journal after a batch was
//! committed covers the batch. The handle stays open from one sync to the next: fjall names a
//! new journal with the next number (`n.jnl`, then `n+1.jnl`) and creates it before writing
//! to it, so a sync after a batch was committed checks that `n+1.jnl` does not exist (one
//! `stat`) and looks for the newest journal again only if it does. Should fjall ever keep its
//! journals elsewhere, the syncer falls back to `persist`.

use std::collections::VecDeque;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use fjall::PersistMode;

use crate::{Completion, Handles, HistoryError, Seq, Store};

/// Committed batches that may wait for a sync; past it, the writer thread waits for the
/// syncer (a caller that wrote hands its batch to the writer thread instead).
pub(crate) const MAX_UNSYNCED_BATCHES: usize = 256;

/// While appends come faster than syncs, how long after one sync's start the next may wait
/// for company (see [`Grouping`]). A sync costs the whole machine more than the node's own CPU
/// shows (on the project's VM, benches/RESULTS.md, "Syncs that wait for company"); 5 ms caps
/// them at 200 a second at a moderate rate, and an ack 5 ms later is not one a person sees.
const GROUP_WINDOW: Duration = Duration::from_millis(5);

/// Requests enough for one sync: its cost is theirs to share, and a sync waits no longer.
const GROUP_ENOUGH: usize = 64;

/// A request's last completion with its outcome: an append's `durable`, or the one
/// completion of a room change or a flush.
pub(crate) enum Outcome {
    Seq(Completion<Seq>, Result<Seq, HistoryError>),
    Bool(Completion<bool>, Result<bool, HistoryError>),
}

impl Outcome {
    /// Turns a success into `error`; a failure keeps its own error.
    pub(crate) fn fail(&mut self, error: &HistoryError) {
        match self {
            Self::Seq(_, r @ Ok(_)) => *r = Err(error.clone()),
            Self::Bool(_, r @ Ok(_)) => *r = Err(error.clone()),
            _ => {}
        }
    }

    pub(crate) fn run(self) {
        match self {
            Self::Seq(done, result) => done(result),
            Self::Bool(done, result) => done(result),
        }
    }
}

/// One committed batch's completions, to run once it is synced.
pub(crate) struct Committed {
    /// The opening of the database the batch was written to; `None` if it wrote nothing.
    pub(crate) written_to: Option<Arc<Handles>>,
    pub(crate) outcomes: Vec<Outcome>,
}

/// The syncer thread and its queue of committed batches. Unlike a channel's, a batch wakes
/// the syncer only when it waits for it: while a sync waits for company, only the batch that
/// makes [`GROUP_ENOUGH`] requests does (at a moderate rate each append is a batch, and a
/// wake-up per append cost the syncer's thread a task switch per message).
pub(crate) struct Syncer {
    queue: Arc<Queue>,
    thread: std::thread::JoinHandle<()>,
}

struct Queue {
    pending: Mutex<Pending>,
    /// Wakes the syncer when it has what it waits for, and at shutdown.
    syncer_wake: Condvar,
    /// Wakes writers waiting for room, once a sync took the queue.
    room: Condvar,
}

#[derive(Default)]
struct Pending {
    batches: VecDeque<Committed>,
    /// Requests in `batches`.
    requests: usize,
    wanted: Wanted,
    /// No more batches will come: the syncer finishes these and stops.
    closed: bool,
    /// The syncer's thread ended (it panicked): nothing sent would be synced.
    gone: bool,
}

/// What the syncer waits for, so what wakes it.
#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum Wanted {
    /// Busy syncing or running completions: it looks at the queue when done.
    #[default]
    Nothing,
    /// Idle: any batch.
    Any,
    /// Waiting for company: enough requests (or a full queue).
    Enough,
}

/// Why [`Syncer::try_send`] gave a batch back.
pub(crate) enum NotSent {
    Full(Committed),
    Gone(Committed),
}

impl Syncer {
    pub(crate) fn spawn(store: Arc<Store>) -> Result<Self, HistoryError> {
        let queue = Arc::new(Queue {
            pending: Mutex::default(),
            syncer_wake: Condvar::new(),
            room: Condvar::new(),
        });
        let thread = {
            let queue = Arc::clone(&queue);
            std::thread::Builder::new()
                .name("history-syncer".into())
                .spawn(move || {
                    let _gone = Gone(&queue);
                    run(&store, &queue);
                })
                .map_err(|e| HistoryError::io("start its syncer thread", e))?
        };
        Ok(Self { queue, thread })
    }

    /// Queues `committed`, waiting for room; gives it back if the syncer is gone.
    pub(crate) fn send(&self, committed: Committed) -> Result<(), Committed> {
        let mut pending = self.queue.lock();
        while pending.batches.len() >= MAX_UNSYNCED_BATCHES && !pending.gone {
            pending = self.queue.room.wait(pending).unwrap_or_else(PoisonError::into_inner);
        }
        if pending.gone {
            return Err(committed);
        }
        self.queue.push(pending, committed);
        Ok(())
    }

    /// Queues `committed` if there is room.
    pub(crate) fn try_send(&self, committed: Committed) -> Result<(), NotSent> {
        let pending = self.queue.lock();
        if pending.gone {
            return Err(NotSent::Gone(committed));
        }
        if pending.batches.len() >= MAX_UNSYNCED_BATCHES {
            return Err(NotSent::Full(committed));
        }
        self.queue.push(pending, committed);
        Ok(())
    }

    /// Waits for the syncer to finish what is queued and stop.
    pub(crate) fn stop(self) {
        self.queue.lock().closed = true;
        self.queue.syncer_wake.notify_one();
        let _ = self.thread.join();
    }
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, mut pending: MutexGuard<'_, Pending>, committed: Committed) {
        pending.requests += committed.outcomes.len();
        pending.batches.push_back(committed);
        let wake = match pending.wanted {
            Wanted::Nothing => false,
            Wanted::Any => true,
            Wanted::Enough => {
                pending.requests >= GROUP_ENOUGH || pending.batches.len() >= MAX_UNSYNCED_BATCHES
            }
        };
        if wake {
            pending.wanted = Wanted::Nothing;
            drop(pending);
            self.syncer_wake.notify_one();
        }
    }

    /// Moves the next sync's batches into `batches`: once one has come, those that come
    /// until `until` or until there are enough. `false` once closed and empty.
    fn take(&self, until: Option<Instant>, batches: &mut Vec<Committed>) -> bool {
        let mut pending = self.lock();
        while pending.batches.is_empty() {
            if pending.closed {
                return false;
            }
            pending.wanted = Wanted::Any;
            pending = self.syncer_wake.wait(pending).unwrap_or_else(PoisonError::into_inner);
        }
        if let Some(until) = until {
            while pending.requests < GROUP_ENOUGH
                && pending.batches.len() < MAX_UNSYNCED_BATCHES
                && !pending.closed
            {
                let Some(left) = until.checked_duration_since(Instant::now()) else { break };
                pending.wanted = Wanted::Enough;
                pending = self
                    .syncer_wake
                    .wait_timeout(pending, left)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        }
        pending.wanted = Wanted::Nothing;
        let was_full = pending.batches.len() >= MAX_UNSYNCED_BATCHES;
        batches.extend(pending.batches.drain(..));
        pending.requests = 0;
        drop(pending);
        if was_full {
            self.room.notify_all();
        }
        true
    }

    fn has_pending(&self) -> bool {
        !self.lock().batches.is_empty()
    }
}

/// Marks the queue gone when the syncer's thread ends, so that no writer waits for it.
struct Gone<'a>(&'a Queue);

impl Drop for Gone<'_> {
    fn drop(&mut self) {
        self.0.lock().gone = true;
        self.0.room.notify_all();
    }
}

fn run(store: &Store, queue: &Queue) {
    let mut batches = Vec::new();
    let mut journal = None;
    let mut grouping = Grouping::default();
    while queue.take(grouping.until(), &mut batches) {
        let requests = batches.iter().map(|b| b.outcomes.len()).sum();
        let started = Instant::now();
        // Almost always one opening; after a failed write, batches of the closed one too.
        let mut openings: Vec<Arc<Handles>> = Vec::new();
        for handles in batches.iter().filter_map(|b| b.written_to.as_ref()) {
            if !openings.iter().any(|o| Arc::ptr_eq(o, handles)) {
                openings.push(Arc::clone(handles));
            }
        }
        let failed: Vec<(Arc<Handles>, HistoryError)> = openings
            .into_iter()
            .filter_map(|handles| {
                let error = sync(store, &handles, &mut journal).err()?;
                Some((handles, HistoryError::NotSynced(Arc::new(error))))
            })
            .collect();
        for (handles, error) in &failed {
            tracing::error!(%error, "history sync failed; the messages written since the last sync may be lost");
            // Linux may drop the pages of a failed sync: only a reopening tells what is on disk.
            store.close_handles_if(handles);
        }
        // Looked for before the completions run: a batch that comes after them may be their
        // own appender's next, which is no company.
        let more_came = queue.has_pending();
        for batch in batches.drain(..) {
            let error = batch.written_to.as_ref().and_then(|written| {
                failed.iter().find(|(h, _)| Arc::ptr_eq(h, written)).map(|(_, e)| e)
            });
            for mut outcome in batch.outcomes {
                if let Some(error) = error {
                    outcome.fail(error);
                }
                outcome.run();
            }
        }
        grouping.synced(started, requests, more_came);
    }
}

/// When a sync waits for company. While appends come one at a time, each waiting for its
/// ack before the next (one client typing, or sending in lockstep), a sync starts at once:
/// waiting would only delay them. Once a sync has company (more than one request, or a batch
/// that came while it ran) but fewer than [`GROUP_ENOUGH`] requests, appends are coming
/// faster than syncs, and the next sync waits until [`GROUP_WINDOW`] after the last one
/// started, or until it has `GROUP_ENOUGH`: a few hundred syncs a second at most at a
/// moderate rate, each for everything written meanwhile, at the price of acks up to a window
/// later. At a high rate, where syncs have that many already, none waits, so that a sender's
/// window of sends in flight never waits for the clock.
#[derive(Debug, Default)]
struct Grouping {
    /// When the last sync started, if it had company.
    crowded_since: Option<Instant>,
}

impl Grouping {
    /// Until when a sync whose first batch is here may wait for more, if at all.
    fn until(&self) -> Option<Instant> {
        Some(self.crowded_since? + GROUP_WINDOW)
    }

    /// Records a sync that `started` with `requests` and whether more came while it ran.
    fn synced(&mut self, started: Instant, requests: usize, more_came: bool) {
        let company = requests > 1 || more_came;
        self.crowded_since = (company && requests < GROUP_ENOUGH).then_some(started);
    }
}

/// The journal the last sync went to, kept open for the next.
struct Journal {
    /// The opening of the database it belongs to.
    opening: Weak<Handles>,
    number: u64,
    file: File,
}

impl Journal {
    /// Whether it is still the one `handles` appends to: fjall has not started the next.
    fn is_active(&self, dir: &Path, handles: &Arc<Handles>) -> bool {
        self.opening.upgrade().is_some_and(|opening| Arc::ptr_eq(&opening, handles))
            && matches!(dir.join(journal_name(self.number + 1)).try_exists(), Ok(false))
    }
}

/// Syncs what was committed through `handles`: its journal through a handle of our own while
/// it is the open database, else (closed after a failed write) through fjall.
fn sync(
    store: &Store,
    handles: &Arc<Handles>,
    journal: &mut Option<Journal>,
) -> Result<(), fjall::Error> {
    if store.handles().is_ok_and(|open| Arc::ptr_eq(&open, handles)) {
        if !journal.as_ref().is_some_and(|j| j.is_active(&store.path, handles)) {
            *journal = match active_journal(&store.path) {
                Ok(Some((number, path))) => Some(Journal {
                    opening: Arc::downgrade(handles),
                    number,
                    file: File::open(path)?,
                }),
                _ => None,
            };
        }
        if let Some(journal) = journal {
            return Ok(journal.file.sync_data()?);
        }
    }
    handles.db.persist(PersistMode::SyncData)
}

fn journal_name(number: u64) -> String {
    format!("{number}.jnl")
}

/// The journal fjall appends to, with its number: the highest-numbered `<n>.jnl` in the
/// database's directory.
pub(crate) fn active_journal(dir: &Path) -> std::io::Result<Option<(u64, PathBuf)>> {
    let mut newest: Option<(u64, PathBuf)> = None;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let number = path
            .file_name()
            .and_then(|name| name.to_str()?.strip_suffix(".jnl")?.parse::<u64>().ok());
        if let Some(number) = number
            && newest.as_ref().is_none_or(|(n, _)| number > *n)
        {
            newest = Some((number, path));
        }
    }
    Ok(newest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Config, Durability, History, Message};

    /// The syncer relies on fjall's layout; a fjall that moved its journals would make it fall
    /// back to `persist`, slower but still safe, and fail this test.
    #[test]
    fn the_active_journal_is_where_the_syncer_looks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = Config {
            path: dir.path().to_path_buf(),
            cap: 10,
            cap_by_prefix: Vec::new(),
            durability: Durability::Sync,
        };
        let history = History::open(config).expect("opens");
        history.create_room("a").expect("created");
        let message = Message { sender: "ada".into(), timestamp_ms: 1, body: "hi".into() };
        history.append_blocking("a", message).expect("stored");
        let (_, journal) = active_journal(dir.path()).expect("listed").expect("a journal");
        assert!(journal.starts_with(dir.path()), "{journal:?}");
        assert!(journal.metadata().expect("exists").len() > 0);
    }

    /// After fjall starts a new journal, the syncer follows it. (fjall starts one at a flush
    /// of a memtable, once the journal holds 64 MB.)
    #[test]
    fn the_syncer_follows_fjall_to_a_new_journal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = Config {
            path: dir.path().to_path_buf(),
            cap: 1 << 20,
            cap_by_prefix: Vec::new(),
            durability: Durability::Sync,
        };
        let history = History::open(config).expect("opens");
        history.create_room("a").expect("created");
        let first = active_journal(dir.path()).expect("listed").expect("a journal");
        let (done, durable) = std::sync::mpsc::channel();
        // 92 MB (fjall compresses only values of 4 KiB and more in its journal).
        let body = "x".repeat(4000);
        let count = 23_000;
        for _ in 0..count {
            let message = Message { sender: "ada".into(), timestamp_ms: 1, body: body.clone() };
            let done = done.clone();
            history.append(
                "a",
                message,
                Box::new(move |r| {
                    let _ = done.send(r);
                }),
            );
        }
        for _ in 0..count {
            durable.recv().expect("completion").expect("durable");
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let newest = loop {
            let newest = active_journal(dir.path()).expect("listed").expect("a journal");
            if newest != first || std::time::Instant::now() > deadline {
                break newest;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        assert_ne!(newest, first, "fjall started no new journal");
        let message = Message { sender: "ada".into(), timestamp_ms: 1, body: "after".into() };
        assert_eq!(history.append_blocking("a", message).expect("durable"), count + 1);
    }

    #[test]
    fn a_sync_waits_for_company_only_after_it_has_had_some() {
        let start = Instant::now();
        let ms = Duration::from_millis;
        let mut grouping = Grouping::default();
        assert_eq!(grouping.until(), None, "the first sync starts at once");
        // One append that waited for its ack before the next: no company, no waiting.
        grouping.synced(start, 1, false);
        assert_eq!(grouping.until(), None);
        // Several appends in one sync, or one that came while it ran: appends come faster
        // than syncs, and the next may wait out the window from the last one's start.
        for (requests, more_came) in [(2, false), (1, true)] {
            grouping.synced(start, requests, more_came);
            assert_eq!(grouping.until(), Some(start + GROUP_WINDOW));
        }
        // A sync with enough company already: appends come in crowds that need no waiting.
        grouping.synced(start, GROUP_ENOUGH, true);
        assert_eq!(grouping.until(), None);
        // A quiet sync again: the next starts at once.
        grouping.synced(start, 3, false);
        grouping.synced(start + ms(10), 1, false);
        assert_eq!(grouping.until(), None);
    }

    #[test]
    fn the_newest_journal_is_the_highest_number() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in ["2.jnl", "10.jnl", "9.jnl", "11.jnl.tmp", "lock", "x.jnl"] {
            std::fs::write(dir.path().join(name), b"").expect("written");
        }
        let newest = active_journal(dir.path()).expect("listed");
        assert_eq!(newest, Some((10, dir.path().join(journal_name(10)))));
        let empty = tempfile::tempdir().expect("tempdir");
        assert_eq!(active_journal(empty.path()).expect("listed"), None);
    }
}
