//! Cluster mode: the node's seams on NATS JetStream (`chat_cluster`), so that any number of
//! nodes, none holding state of its own, serve one chat.
//!
//! - [`ClusterHistory`]: an append is a publish to the room's subject, complete once the
//!   stream has it on a majority of its replicas; pages are direct batch gets.
//! - [`ClusterFanOut`]: the stream is the bus. An append's completion publishes nothing;
//!   the stream republishes each message it stores on the room's live subject, and a room's
//!   first join on this node starts a follower there that hands the core every message of the
//!   room in stream order, from whichever node it came, reading from the stream what it
//!   missed.
//! - [`ClusterDirectory`]: names and memberships in expiring key-value entries that this
//!   node refreshes while its connections last.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chat_accounts::Account;
use chat_cluster::records::Change;
use chat_cluster::{Claim, Cluster, ClusterError, Direct, Notice};
use chat_core::moderation::RoomRules;
use chat_core::{ConnId, Core, MemberId, Refusal, RoomName, Seq, SessionToken, Share, UserName};
use chat_history::{Anchor, Completion, HistoryError, HistoryPage, Message, PageLimit, Subscriber};
use chat_proto::{NodeFrame, RoomInfo};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::AbortOnDrop;
use crate::mailbox::Outbox;
use crate::reply::message_frame;
use crate::seams::{
    AccountChange, AccountStore, AccountsStoreError, Directory, DirectoryError, FanOut,
    FollowError, HistoryStore, Pending, RulesChange, decode_rules, encode_rules,
};

fn remote(e: ClusterError) -> HistoryError {
    HistoryError::Remote(Arc::new(e))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The history in the JetStream stream.
pub(crate) struct ClusterHistory {
    cluster: Arc<Cluster>,
    runtime: Handle,
    /// Appends waiting to be published, in the order made (see [`publish_in_order`]).
    appends: mpsc::Sender<Append>,
    /// Appends waiting for their acknowledgement, so that a flush can wait for them.
    in_flight: watch::Sender<usize>,
}

/// An append on its way to the stream: its room, the message, its id and its completion.
type Append = (String, Message, String, Completion<Seq>);

/// Appends queued for publishing before more are refused as `Busy`, as the single node's
/// history queue holds.
const APPENDS_QUEUED: usize = 65_536;

impl ClusterHistory {
    pub(crate) fn new(cluster: Arc<Cluster>, runtime: Handle) -> Self {
        let (appends, queued) = mpsc::channel(APPENDS_QUEUED);
        let in_flight = watch::Sender::new(0);
        runtime.spawn(publish_in_order(Arc::clone(&cluster), queued, in_flight.clone()));
        Self { cluster, runtime, appends, in_flight }
    }
}

/// Publishes the node's appends one after the other, so that the stream stores them in the
/// order they were made (one sender's messages in its order; a task per append would race),
/// then waits for each acknowledgement alongside the others.
async fn publish_in_order(
    cluster: Arc<Cluster>,
    mut queued: mpsc::Receiver<Append>,
    in_flight: watch::Sender<usize>,
) {
    while let Some((room, message, id, durable)) = queued.recv().await {
        let acked = cluster.log.publish(&room, &message, &id).await;
        let in_flight = in_flight.clone();
        tokio::spawn(async move {
            let seq = match acked {
                // Not acknowledged in time: it may have been stored all the same.
                Ok(acked) => acked.await.map_err(|e| HistoryError::Unconfirmed(Arc::new(e))),
                Err(e) => Err(remote(e)),
            };
            durable(seq);
            in_flight.send_modify(|n| *n -= 1);
        });
    }
}

impl HistoryStore for ClusterHistory {
    fn append(&self, room: &RoomName, message: Message, id: String, durable: Completion<Seq>) {
        self.in_flight.send_modify(|n| *n += 1);
        if let Err(full) = self.appends.try_send((room.to_string(), message, id, durable)) {
            let (_, _, _, durable) = full.into_inner();
            durable(Err(HistoryError::Busy));
            self.in_flight.send_modify(|n| *n -= 1);
        }
    }

    fn subscribe(&self, _subscriber: Arc<dyn Subscriber>) -> Result<(), HistoryError> {
        Ok(()) // Every node's followers of the stream relay its messages, this one's too.
    }

    /// Direct batch gets by subject (`Log::range` and `Log::before`), no consumer. Any
    /// replica may answer one, and one a moment behind the leader holds a shorter prefix of
    /// the stream: a page it answered is read again unless it shows that the replica reaches
    /// the page's far end (see [`complete`]).
    fn page(
        &self,
        room: &RoomName,
        anchor: Anchor,
        limit: PageLimit,
    ) -> Result<HistoryPage, HistoryError> {
        /// Reads of a page from a replica that is behind, before giving up.
        const ATTEMPTS: usize = 20;
        let (log, room) = (&self.cluster.log, room.as_str());
        let read = async {
            let last = log.last_seq(room).await?;
            let n = limit.messages;
            let mut attempt = 0;
            loop {
                attempt += 1;
                let (older, newer) = match anchor {
                    Anchor::Latest => {
                        (log.before(room, last.saturating_add(1), n).await?, Vec::new())
                    }
                    Anchor::Before(seq) => (log.before(room, seq, n).await?, Vec::new()),
                    Anchor::After(seq) => {
                        (Vec::new(), log.range(room, seq.saturating_add(1), u64::MAX, n).await?)
                    }
                    Anchor::Around(seq) => {
                        let older = log.before(room, seq, n / 2).await?;
                        let newer = log.range(room, seq, u64::MAX, n - older.len()).await?;
                        (older, newer)
                    }
                };
                // Past a `Before` page's end: whether the replica holds anything there.
                let beyond = match anchor {
                    Anchor::Before(seq) if last >= seq => {
                        Some(!log.range(room, seq, u64::MAX, 1).await?.is_empty())
                    }
                    _ => None,
                };
                if attempt < ATTEMPTS && !complete(anchor, last, &older, &newer, n, beyond) {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
                let first = log.first_seq(room).await?.unwrap_or(last.saturating_add(1));
                return Ok(chat_history::assemble(anchor, older, newer, first, last, limit));
            }
        };
        self.runtime.block_on(read).map_err(remote)
    }

    fn rooms(&self) -> Result<Vec<(String, Seq)>, HistoryError> {
        self.runtime.block_on(self.cluster.log.rooms_with_last_seq()).map_err(remote)
    }

    fn room_names(&self) -> Result<Vec<String>, HistoryError> {
        self.runtime.block_on(self.cluster.log.rooms()).map_err(remote)
    }

    fn create_room(&self, room: &RoomName) -> Result<bool, HistoryError> {
        self.runtime.block_on(self.cluster.log.create_room(room.as_str())).map_err(remote)
    }

    fn delete_room(&self, room: &RoomName) -> Result<bool, HistoryError> {
        self.runtime.block_on(self.cluster.log.delete_room(room.as_str())).map_err(remote)
    }

    fn flush(&self) -> Result<(), HistoryError> {
        let mut in_flight = self.in_flight.subscribe();
        let _ = self.runtime.block_on(in_flight.wait_for(|n| *n == 0));
        Ok(())
    }

    fn close(&self) -> Result<(), HistoryError> {
        self.flush()?;
        self.runtime.block_on(self.cluster.flush()).map_err(remote)
    }
}

/// Whether a page read at `anchor` from some replica (`older` and `newer` than the anchor,
/// `limit` in all) is what the leader, whose newest message in the room is `last`, holds.
/// A replica holds a prefix of the stream, so the page is complete once the replica shows a
/// message of the room at or past the page's far end: the room's newest (`last`) where the
/// page covers it, else a full page, or (`beyond`, for a `Before` page) one past its anchor.
fn complete(
    anchor: Anchor,
    last: Seq,
    older: &[chat_history::Stored],
    newer: &[chat_history::Stored],
    limit: usize,
    beyond: Option<bool>,
) -> bool {
    let has_last =
        |page: &[chat_history::Stored]| last == 0 || page.last().is_some_and(|s| s.seq == last);
    match anchor {
        Anchor::Latest => has_last(older),
        Anchor::Before(seq) if last < seq => has_last(older),
        Anchor::Before(_) => beyond.unwrap_or(false),
        Anchor::After(seq) => last <= seq || newer.len() == limit || has_last(newer),
        Anchor::Around(seq) if last < seq => has_last(older),
        Anchor::Around(_) => newer.len() == limit - older.len() || has_last(newer),
    }
}

/// Fan-out through the stream's republished messages: a follower per room this node's
/// clients are in, subscribed to the room's live subject (plain NATS, no consumer), which
/// also hears the other nodes' arrivals and departures there.
pub(crate) struct ClusterFanOut {
    cluster: Arc<Cluster>,
    core: Arc<Mutex<Core<Outbox>>>,
    /// The rooms followed. Each entry is set once its follower runs; a room's first joins
    /// wait for its entry alone, never for another room's.
    followed: Arc<Mutex<HashMap<RoomName, Arc<tokio::sync::OnceCell<Follower>>>>>,
    /// Publishes this node's notices; hears the direct messages for its users; looks for
    /// messages the followers missed.
    _tasks: [AbortOnDrop; 3],
}

/// A room's follower: its task, and the newest number the stream is known to hold in the
/// room, which the task catches up to when it is raised.
struct Follower {
    stream_holds: watch::Sender<Seq>,
    _task: AbortOnDrop,
}

type Followed = Arc<Mutex<HashMap<RoomName, Arc<tokio::sync::OnceCell<Follower>>>>>;

/// What this node tells the others and has not published yet. A burst beyond it (a node
/// whose NATS is gone) loses notices, not memory: a lost arrival is still in `Who`, a lost
/// direct message still in the history.
const NOTICES_QUEUED: usize = 4096;

/// A notice on its way to the other nodes.
enum Telling {
    Presence(RoomName, Notice),
    Direct(Direct),
}

impl ClusterFanOut {
    pub(crate) fn new(cluster: Arc<Cluster>, core: Arc<Mutex<Core<Outbox>>>) -> Self {
        let (queue, mut queued) = mpsc::channel::<Telling>(NOTICES_QUEUED);
        lock(&core).share_with_other_nodes(move |share| {
            let telling = match share {
                Share::Presence { room, frame: NodeFrame::Arrived { name } } => {
                    Telling::Presence(room.clone(), Notice { name: name.clone(), left: None })
                }
                Share::Presence { room, frame: NodeFrame::Left { name, reason } } => {
                    let notice = Notice { name: name.clone(), left: Some(*reason) };
                    Telling::Presence(room.clone(), notice)
                }
                Share::Presence { .. } => return,
                Share::Direct { to, room, seq, message } => Telling::Direct(Direct {
                    to: to.to_owned(),
                    room: room.to_string(),
                    seq,
                    frame: message.to_vec(),
                }),
            };
            if queue.try_send(telling).is_err() {
                debug!("a notice for the other nodes was dropped: too many waiting");
            }
        });
        let publishing = Arc::clone(&cluster);
        let publisher = tokio::spawn(async move {
            while let Some(telling) = queued.recv().await {
                let published = match telling {
                    Telling::Presence(room, notice) => {
                        publishing.notices.publish(room.as_str(), notice).await
                    }
                    Telling::Direct(direct) => publishing.notices.publish_direct(direct).await,
                };
                if let Err(e) = published {
                    debug!(error = %e, "a notice for the other nodes was not published");
                }
            }
        });
        let hearer = tokio::spawn(hear_direct(Arc::clone(&cluster), Arc::clone(&core)));
        let followed = Followed::default();
        let sweeper = tokio::spawn(look_for_missed(
            Arc::clone(&cluster),
            Arc::clone(&core),
            Arc::clone(&followed),
        ));
        Self {
            cluster,
            core,
            followed,
            _tasks: [AbortOnDrop(publisher), AbortOnDrop(hearer), AbortOnDrop(sweeper)],
        }
    }

    /// Starts following `room`: its live messages from now on, and the other nodes' notices.
    async fn start_following(&self, room: &RoomName) -> Result<Follower, ClusterError> {
        let log = &self.cluster.log;
        let live = log.live(room.as_str()).await?;
        let notices = self.cluster.notices.hear(room.as_str()).await?;
        // Subscribed first, then read: a message stored in between comes live, and the core
        // skips what is at or below `last`.
        let last = log.last_seq(room.as_str()).await?;
        lock(&self.core).add_room(room.clone(), last);
        debug!(%room, last, "following the room");
        let (stream_holds, holds) = watch::channel(last);
        let task = tokio::spawn(deliver(
            Arc::clone(&self.cluster),
            Arc::clone(&self.core),
            room.clone(),
            live,
            notices,
            holds,
        ));
        Ok(Follower { stream_holds, _task: AbortOnDrop(task) })
    }
}

/// Pushes the direct messages other nodes stored for this node's users.
async fn hear_direct(cluster: Arc<Cluster>, core: Arc<Mutex<Core<Outbox>>>) {
    let mut heard = loop {
        match cluster.notices.hear_direct().await {
            Ok(heard) => break heard,
            Err(e) => warn!(error = %e, "cannot hear direct messages from other nodes yet"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    while let Some(direct) = heard.next().await {
        let frame = bytes::Bytes::from(direct.frame);
        lock(&core).heard_direct(&direct.to, &direct.room, direct.seq, &frame);
    }
}

impl FanOut for ClusterFanOut {
    fn follow<'a>(&'a self, room: &'a str) -> Pending<'a, Result<(), FollowError>> {
        Box::pin(async move {
            let Ok(room) = RoomName::parse(room) else { return Ok(()) };
            let entry = Arc::clone(lock(&self.followed).entry(room.clone()).or_default());
            if entry.initialized() {
                return Ok(());
            }
            if !self.cluster.log.room_exists(room.as_str()).await? {
                return Ok(());
            }
            entry.get_or_try_init(|| self.start_following(&room)).await?;
            Ok(())
        })
    }
}

/// How often the followed rooms are checked against the stream when nothing suggests that a
/// message was missed: the backstop for a loss nothing reported (a server that was cut off
/// from the stream's leader for a while, say). One request covers a thousand rooms.
const SWEEP: Duration = Duration::from_secs(30);

/// Finds the followed rooms in which the stream holds more than this node delivered, and
/// raises their followers' marks: at once when a message may have been missed (a new
/// connection to NATS, a subscription that overflowed, a new leader of the stream, which may
/// have stored messages its predecessor never republished), else every [`SWEEP`].
async fn look_for_missed(
    cluster: Arc<Cluster>,
    core: Arc<Mutex<Core<Outbox>>>,
    followed: Followed,
) {
    let mut lapses = cluster.lapses();
    lapses.borrow_and_update();
    let mut leaders = cluster.log.leader_changes().await.ok();
    loop {
        let why = tokio::select! {
            _ = lapses.changed() => "messages may have been missed",
            Some(()) = async { leaders.as_mut()?.next().await } => "the stream has a new leader",
            () = tokio::time::sleep(SWEEP) => "",
        };
        let rooms: Vec<(RoomName, watch::Sender<Seq>)> = lock(&followed)
            .iter()
            .filter_map(|(room, f)| Some((room.clone(), f.get()?.stream_holds.clone())))
            .collect();
        if rooms.is_empty() {
            continue;
        }
        let names: Vec<&str> = rooms.iter().map(|(room, _)| room.as_str()).collect();
        let lasts = match cluster.log.last_seqs(&names).await {
            Ok(lasts) => lasts,
            Err(e) => {
                warn!(error = %e, "cannot check the followed rooms against the stream yet");
                continue;
            }
        };
        for (room, stream_holds) in &rooms {
            let Some(&last) = lasts.get(room.as_str()) else { continue };
            if lock(&core).delivered(room).is_some_and(|delivered| delivered < last) {
                if !why.is_empty() {
                    info!(%room, last, why, "catching up with the stream");
                }
                stream_holds
                    .send_if_modified(|holds| std::mem::replace(holds, last.max(*holds)) < last);
            }
        }
    }
}

/// Hands every message of `room` to the core, in order and once, for as long as the node
/// runs, and what the other nodes tell of their members arriving and leaving.
///
/// A live message whose predecessor in the room was not delivered shows a loss: what is
/// missing is read from the stream first. So is anything below `stream_holds` when
/// [`look_for_missed`] raises it. Messages at or below the delivered number are skipped.
async fn deliver(
    cluster: Arc<Cluster>,
    core: Arc<Mutex<Core<Outbox>>>,
    room: RoomName,
    mut live: BoxStream<'static, Result<chat_cluster::Live, ClusterError>>,
    mut notices: BoxStream<'static, Notice>,
    mut stream_holds: watch::Receiver<Seq>,
) {
    loop {
        tokio::select! {
            message = live.next() => match message {
                Some(Ok(live)) => {
                    if let Err(stored) = hand_over_next(&core, &room, live) {
                        catch_up(&cluster, &core, &room, stored.previous).await;
                        hand_over(&core, &room, stored.stored);
                    }
                }
                Some(Err(e)) => warn!(%room, error = %e, "following the room: NATS trouble"),
                None => {
                    live = loop {
                        match cluster.log.live(room.as_str()).await {
                            Ok(live) => break live,
                            Err(e) => warn!(%room, error = %e, "cannot follow the room again yet"),
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    };
                    let last = cluster.log.last_seq(room.as_str()).await.unwrap_or(0);
                    catch_up(&cluster, &core, &room, last).await;
                }
            },
            Some(notice) = notices.next() => {
                lock(&core).heard(room.as_str(), &notice.name, notice.left);
            }
            Ok(()) = stream_holds.changed() => {
                let holds = *stream_holds.borrow_and_update();
                catch_up(&cluster, &core, &room, holds).await;
            }
        }
    }
}

/// Messages read from the stream at a time when catching up.
const CATCH_UP_PAGE: usize = 256;
/// Reads of a page from a replica that does not have it yet, before the catch-up gives up
/// (and the next live message or check tries again).
const CATCH_UP_ATTEMPTS: usize = 50;
/// How long catching up waits for a member's queue to have room: a healthy member takes a
/// backlog at its own pace, and one too slow for that is dropped.
const CATCH_UP_PATIENCE: Duration = Duration::from_secs(2);

/// Reads from the stream and hands over every message of `room` after the delivered one up
/// to `to`, a page at a time, each page once the members' queues have room for it.
async fn catch_up(cluster: &Cluster, core: &Mutex<Core<Outbox>>, room: &RoomName, to: Seq) {
    let mut attempts = 0;
    loop {
        let Some(delivered) = lock(core).delivered(room) else { return };
        if delivered >= to {
            return;
        }
        let page = cluster.log.range(room.as_str(), delivered + 1, to + 1, CATCH_UP_PAGE).await;
        let read = page.as_ref().map(Vec::len);
        tracing::debug!(%room, delivered, to, ?read, "catching up: a page");
        let page = match page {
            Ok(page) => page,
            Err(e) => {
                warn!(%room, error = %e, "cannot read the messages missed yet");
                return;
            }
        };
        // A replica a moment behind may not hold the page's end yet; one the history cap
        // trimmed never will.
        let complete = page.len() == CATCH_UP_PAGE || page.last().is_some_and(|s| s.seq == to);
        if !complete && attempts < CATCH_UP_ATTEMPTS {
            attempts += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        if page.is_empty() {
            warn!(%room, after = delivered, to, "the stream did not give the messages missed: trimmed by the cap, or the replica read is behind");
            return;
        }
        for stored in page {
            wait_for_room(core, room).await;
            hand_over(core, room, stored);
        }
        attempts = 0;
    }
}

/// Waits, up to [`CATCH_UP_PATIENCE`], until every member of `room` can take one more
/// message. A member still full then is dropped by the next message, as one that falls
/// behind live messages is.
async fn wait_for_room(core: &Mutex<Core<Outbox>>, room: &RoomName) {
    let deadline = tokio::time::Instant::now() + CATCH_UP_PATIENCE;
    while lock(core).room_space(room) == Some(0) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn hand_over(core: &Mutex<Core<Outbox>>, room: &RoomName, stored: chat_history::Stored) {
    let frame = message_frame(room.as_str(), stored.seq, &stored.message);
    let gone =
        crate::wakes::holding(|| lock(core).committed_in_order(room.as_str(), stored.seq, frame));
    report_dropped(room, gone);
}

/// Hands `live` over, under one lock of the core, when its predecessor in the room was
/// delivered (the common case); gives it back when messages before it are missing.
fn hand_over_next(
    core: &Mutex<Core<Outbox>>,
    room: &RoomName,
    live: chat_cluster::Live,
) -> Result<(), chat_cluster::Live> {
    let frame = message_frame(room.as_str(), live.stored.seq, &live.stored.message);
    let mut core = lock(core);
    if core.delivered(room).is_some_and(|delivered| delivered < live.previous) {
        return Err(live);
    }
    let gone = crate::wakes::holding(move || {
        let gone = core.committed_in_order(room.as_str(), live.stored.seq, frame);
        drop(core); // before the wakes are handed over
        gone
    });
    report_dropped(room, gone);
    Ok(())
}

fn report_dropped(room: &RoomName, gone: Vec<chat_core::room::Evicted>) {
    for gone in gone {
        info!(member = gone.member.0, last_seq = gone.last_seq, %room, "dropped a member that fell behind");
    }
}

/// Presence and rooms in NATS key-value buckets.
pub(crate) struct ClusterDirectory {
    cluster: Arc<Cluster>,
    runtime: Handle,
    /// The names this node holds, by connection.
    claims: Mutex<HashMap<ConnId, Claim>>,
    /// Joins and leaves, recorded in order by [`record_members`].
    memberships: mpsc::UnboundedSender<Membership>,
    _recorder: AbortOnDrop,
}

/// A change to this node's members, for the members bucket.
enum Membership {
    Entered(MemberId, RoomName, String),
    Left(MemberId),
}

impl ClusterDirectory {
    pub(crate) fn new(cluster: Arc<Cluster>, runtime: Handle, ttl: Duration) -> Self {
        // Unbounded, yet bounded by the members: each queues at most a join and a leave.
        let (memberships, changes) = mpsc::unbounded_channel();
        let recorder = runtime.spawn(record_members(Arc::clone(&cluster), changes, ttl / 3));
        Self {
            cluster,
            runtime,
            claims: Mutex::new(HashMap::new()),
            memberships,
            _recorder: AbortOnDrop(recorder),
        }
    }
}

/// Writes this node's joins and leaves to the members bucket in the order they happened
/// (so that a quick leave never overtakes its join), and every `refresh` says that the node
/// runs, which keeps its memberships counting, and writes again those NATS did not take.
async fn record_members(
    cluster: Arc<Cluster>,
    mut changes: mpsc::UnboundedReceiver<Membership>,
    refresh: Duration,
) {
    let directory = &cluster.directory;
    // Room, user name and the entry's revision, once it was written.
    let mut members: HashMap<MemberId, (RoomName, String, Option<u64>)> = HashMap::new();
    let mut tick = tokio::time::interval(refresh);
    loop {
        tokio::select! {
            change = changes.recv() => match change {
                Some(Membership::Entered(member, room, name)) => {
                    let revision = directory.enter(room.as_str(), &name).await;
                    if let Err(e) = &revision {
                        debug!(error = %e, "a membership was not recorded; the refresh retries");
                    }
                    members.insert(member, (room, name, revision.ok()));
                }
                Some(Membership::Left(member)) => {
                    let Some((room, name, Some(revision))) = members.remove(&member) else {
                        continue;
                    };
                    if let Err(e) = directory.leave(room.as_str(), &name, revision).await {
                        debug!(error = %e, "a membership was not removed; it goes with the node");
                    }
                }
                None => return,
            },
            _ = tick.tick() => {
                if let Err(e) = directory.alive().await {
                    warn!(error = %e, "could not say that this node runs; retrying");
                }
                for (room, name, revision) in members.values_mut().filter(|m| m.2.is_none()) {
                    match directory.enter(room.as_str(), name).await {
                        Ok(written) => *revision = Some(written),
                        Err(e) => warn!(error = %e, "could not record a membership; retrying"),
                    }
                }
            }
        }
    }
}

impl Directory for ClusterDirectory {
    fn claim<'a>(
        &'a self,
        conn: ConnId,
        name: &'a UserName,
        token: SessionToken,
        resume: Option<SessionToken>,
        owner: bool,
    ) -> Pending<'a, Result<bool, DirectoryError>> {
        Box::pin(async move {
            let claim = self.cluster.directory.claim(&name.key(), token, resume, owner).await;
            match claim? {
                Some(claim) => {
                    lock(&self.claims).insert(conn, claim);
                    Ok(true)
                }
                None => Ok(false),
            }
        })
    }

    fn release(&self, conn: ConnId) {
        if let Some(claim) = lock(&self.claims).remove(&conn) {
            let cluster = Arc::clone(&self.cluster);
            self.runtime.spawn(async move {
                if let Err(e) = cluster.directory.release(&claim).await {
                    debug!(error = %e, "a name could not be freed; it expires by itself");
                }
            });
        }
    }

    fn entered(&self, member: MemberId, room: &RoomName, name: &UserName) {
        let _ = self.memberships.send(Membership::Entered(member, room.clone(), name.to_string()));
    }

    fn left(&self, member: MemberId) {
        let _ = self.memberships.send(Membership::Left(member));
    }

    fn who<'a>(
        &'a self,
        room: &'a str,
    ) -> Pending<'a, Result<Result<Vec<String>, Refusal>, DirectoryError>> {
        Box::pin(async move {
            let room = match RoomName::parse(room) {
                Ok(room) => room,
                Err(e) => return Ok(Err(Refusal::InvalidRoomName(e))),
            };
            if !self.cluster.log.room_exists(room.as_str()).await? {
                return Ok(Err(Refusal::UnknownRoom(room.to_string())));
            }
            Ok(Ok(self.cluster.directory.who(room.as_str()).await?))
        })
    }

    fn rooms<'a>(
        &'a self,
        user: &'a UserName,
    ) -> Pending<'a, Result<Vec<RoomInfo>, DirectoryError>> {
        Box::pin(async move {
            let (log, directory) = (&self.cluster.log, &self.cluster.directory);
            let counts = directory.member_counts().await?;
            let rooms = log.rooms_with_last_seq().await?;
            Ok(rooms
                .into_iter()
                .filter(|(name, last_seq)| {
                    RoomName::parse(name).is_ok_and(|room| room.listed_for(user, *last_seq))
                })
                .map(|(name, last_seq)| {
                    let members = counts.get(&name).copied().unwrap_or(0) as u32;
                    // The topic is the core's (`connection::with_topics`).
                    RoomInfo { name, last_seq, members, topic: String::new(), unread: None }
                })
                .collect())
        })
    }

    fn refresh(&self) -> Option<Pending<'_, Vec<ConnId>>> {
        Some(Box::pin(async move {
            let claims: Vec<(ConnId, Claim)> =
                lock(&self.claims).iter().map(|(c, claim)| (*c, claim.clone())).collect();
            let mut lost = Vec::new();
            for (conn, mut claim) in claims {
                match self.cluster.directory.refresh(&mut claim).await {
                    Ok(Ok(())) => {
                        if let Some(held) = lock(&self.claims).get_mut(&conn) {
                            *held = claim;
                        }
                    }
                    Ok(Err(chat_cluster::Lost)) => {
                        lock(&self.claims).remove(&conn);
                        lost.push(conn);
                    }
                    Err(e) => warn!(error = %e, "could not refresh a name; retrying"),
                }
            }
            lost
        }))
    }
}

/// The accounts in the cluster's `chat_accounts` bucket: a registration is an atomic create
/// and every change a compare-and-set, so a name registered (or a password changed) on one
/// node holds on every node at once.
pub(crate) struct ClusterAccounts(pub(crate) Arc<Cluster>);

/// Rooms whose markers one account keeps in cluster mode (one record each); the ones read
/// longest ago give way.
const MARKED_ROOMS: usize = 4096;

impl AccountStore for ClusterAccounts {
    fn markers(
        &self,
        account: String,
    ) -> Pending<'_, Result<Vec<(String, Seq)>, AccountsStoreError>> {
        Box::pin(async move {
            let Some((bytes, _)) = self.0.markers.get(&account).await? else {
                return Ok(Vec::new());
            };
            Ok(decode_markers(Some(&bytes))?.into_iter().collect())
        })
    }

    fn mark(
        &self,
        account: String,
        room: String,
        seq: Seq,
    ) -> Pending<'_, Result<Seq, AccountsStoreError>> {
        Box::pin(async move {
            let marked = self.0.markers.change(&account, |current| {
                let mut markers = decode_markers(current)?;
                let at = markers.entry(room.clone()).or_default();
                if *at >= seq {
                    return Ok(Change::Leave(*at));
                }
                *at = seq;
                while markers.len() > MARKED_ROOMS {
                    let oldest =
                        markers.iter().min_by_key(|(_, seq)| **seq).map(|(r, _)| r.clone());
                    oldest.map(|room| markers.remove(&room));
                }
                let bytes = postcard::to_stdvec(&markers)
                    .map_err(|e| AccountsStoreError::Local(e.into()))?;
                Ok(Change::Write(bytes.into(), seq))
            });
            marked.await?
        })
    }

    fn all_room_rules(&self) -> Pending<'_, Result<Vec<(String, RoomRules)>, AccountsStoreError>> {
        // Cluster mode reads a room's rules at each join instead.
        Box::pin(std::future::ready(Ok(Vec::new())))
    }

    fn room_rules(
        &self,
        room: String,
    ) -> Pending<'_, Result<Option<RoomRules>, AccountsStoreError>> {
        Box::pin(async move {
            match self.0.room_rules.get(&room).await? {
                Some((bytes, _)) => Ok(Some(decode_rules(&bytes)?)),
                None => Ok(None),
            }
        })
    }

    fn update_room_rules(
        &self,
        room: String,
        change: RulesChange,
    ) -> Pending<'_, Result<Result<RoomRules, Refusal>, AccountsStoreError>> {
        Box::pin(async move {
            let changed = self.0.room_rules.change(&room, |current| {
                let mut rules = match current {
                    Some(bytes) => decode_rules(bytes).map_err(Err)?,
                    None => RoomRules::default(),
                };
                change(&mut rules).map_err(Ok)?;
                Ok(Change::Write(encode_rules(&rules).map_err(Err)?.into(), rules))
            });
            match changed.await? {
                Ok(rules) => Ok(Ok(rules)),
                Err(Ok(refusal)) => Ok(Err(refusal)),
                Err(Err(e)) => Err(e),
            }
        })
    }

    fn get(&self, key: String) -> Pending<'_, Result<Option<Account>, AccountsStoreError>> {
        Box::pin(async move {
            match self.0.accounts.get(&key).await? {
                Some((bytes, _)) => Ok(Some(Account::decode(&bytes)?)),
                None => Ok(None),
            }
        })
    }

    fn create(
        &self,
        key: String,
        account: Account,
    ) -> Pending<'_, Result<bool, AccountsStoreError>> {
        Box::pin(async move { Ok(self.0.accounts.create(&key, account.encode()?.into()).await?) })
    }

    fn update(
        &self,
        key: String,
        change: AccountChange,
    ) -> Pending<'_, Result<Option<usize>, AccountsStoreError>> {
        Box::pin(async move {
            let changed = self.0.accounts.change(&key, |current| {
                let Some(bytes) = current else { return Ok(Change::Leave(None)) };
                let mut account = Account::decode(bytes)?;
                let out = change(&mut account);
                Ok::<_, AccountsStoreError>(Change::Write(account.encode()?.into(), Some(out)))
            });
            changed.await?
        })
    }
}

/// An account's read markers as cluster mode keeps them (none for no record).
fn decode_markers(
    bytes: Option<&bytes::Bytes>,
) -> Result<BTreeMap<String, Seq>, AccountsStoreError> {
    let Some(bytes) = bytes else { return Ok(BTreeMap::new()) };
    postcard::from_bytes(bytes).map_err(|e| AccountsStoreError::Local(e.into()))
}

/// Carries out rooms' rules as any node changes them: a kick, ban or mute made on another
/// node reaches this node's members at once (the core ignores revisions it has, such as its
/// own). The watch starts with every room's rules as they stand, so the core knows each
/// room's topic for listings. Watches again after NATS fails, every second until it can.
pub(crate) async fn follow_room_rules(cluster: Arc<Cluster>, core: Arc<Mutex<Core<Outbox>>>) {
    loop {
        match cluster.room_rules.watch().await {
            Ok(changes) => {
                let mut changes = std::pin::pin!(changes);
                while let Some((room, bytes)) = changes.next().await {
                    let (Ok(room), Ok(rules)) = (RoomName::parse(&room), decode_rules(&bytes))
                    else {
                        continue;
                    };
                    let now = std::time::Instant::now();
                    lock(&core).install_rules(&room, rules, now, crate::now_ms());
                }
                debug!("the room rules' watch ended; watching again");
            }
            Err(e) => warn!(error = %e, "cannot watch rooms' rules; retrying"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
