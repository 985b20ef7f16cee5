//! The chat node: a QUIC server that checks names and rooms, relays every message to everyone
//! in the room, and writes it to the history before acknowledging it.
//!
//! # Layout
//! - [`config`]: the settings, from a TOML file, `CHAT_*` variables and flags.
//! - [`seams`]: the history, fan-out and directory traits with their single-node
//!   implementations.
//! - `cluster`: the same seams on NATS JetStream, for cluster mode.
//! - `admission`: how many connections the node takes, in all and per IP address.
//! - `metrics`: the Prometheus counters and their `/metrics` endpoint.
//! - `mailbox`: the bounded queue between the room core and a member's stream.
//! - `login`: accounts at the node: a hello's credentials checked with the store, and the
//!   requests that change an account (password hashes a few at a time).
//! - `moderation`: rooms' rules at the node: moderations judged, stored and carried out,
//!   joins checked against them, owners recorded.
//! - `connection`: one client connection: the hello on the control stream, then room
//!   listings and who-is-online, and a task per room stream.
//! - `room`: one room stream: the join, then sends checked with the core and handed to the
//!   history, and their acks.
//! - `member`: the writing half of a room stream: the history up to the join, then the
//!   member's queue.
//! - `reply`: the frames the node answers with (below `connection` and `room`).
//! - `web`: browsers: the WebTransport endpoint, its certificates, and the page.
//! - `http`: the tiny HTTP listener of `/metrics` and of the page.
//! - [`lanes`]: the port's endpoints, one per thread, each with its connections.
//! - [`wakes`]: a fan-out's wakes of other lanes' tasks, handed over once per lane.
//! - [`Node`]: the lanes, the accept loops and the orderly shutdown.
//!
//! All room rules (names, membership, order, limits) live in `chat_core`, which knows nothing
//! of sockets; this crate carries its decisions out.

mod admission;
mod cids;
mod cluster;
pub mod config;
mod connection;
mod http;
pub mod lanes;
mod login;
mod mailbox;
mod member;
mod metrics;
mod moderation;
mod pages;
mod reply;
mod room;
pub mod seams;
pub mod wakes;
mod web;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::Context;
use chat_cluster::Cluster;
use chat_core::accounts::{AccountsMode, LoginRules};
use chat_core::names::DIRECT_PREFIX;
use chat_core::{ConnId, Core, Refusal, RoomName, Rules};
use chat_history::History;
use chat_proto::{Limits, codec, codes};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use admission::Admission;
pub use chat_core::moderation::RoomCreation;
pub use config::{Accounts, NodeConfig, Settings};
use mailbox::Outbox;
use metrics::Metrics;
use seams::{AccountStore, Directory, FanOut, HistoryStore, LocalDirectory, LocalFanOut};

/// How long the shutdown waits for the clients' streams to drain before closing them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Room streams a new connection may have open at once, until it uses them all (see
/// `connection::run`). quinn keeps state for every stream it allows; allowing all of
/// `max_rooms_per_connection` from the start cost 5 KiB per idle connection.
const FIRST_ROOM_STREAMS: u32 = 4;

/// How much a connection may send the node before the node reads it: per stream and in all,
/// once it has said hello, and in all before (a hello's worth: see `endpoint`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReceiveWindows {
    pub(crate) stream: u32,
    pub(crate) welcomed: u32,
    pub(crate) before_hello: u32,
}

impl ReceiveWindows {
    /// A stream's reader stops while its sends in flight wait for the history; the window
    /// holds that many frames at the length limit, so that a sender that keeps to the rules
    /// never waits for flow control, and at most quinn's default otherwise.
    fn new(config: &NodeConfig) -> Self {
        const QUINN_DEFAULT: u64 = 1_250_000;
        let frame = u64::from(config.max_message_len) + codec::FRAME_OVERHEAD as u64;
        let in_flight = chat_core::sends_in_flight(config.member_queue) as u64;
        let stream = (frame * in_flight).clamp(2 * frame, QUINN_DEFAULT.max(2 * frame));
        let narrow = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
        Self {
            stream: narrow(stream),
            welcomed: narrow(2 * stream),
            before_hello: narrow(2 * frame),
        }
    }
}

/// What quinn keeps of the node's writes to one connection (sent or not, until the client
/// acknowledges them): a client that grants much credit and acknowledges little would have
/// it hold quinn's default of 10 MB, and every connection of the node that much. 256 KiB is a
/// history page's text, and 2.5 MB/s at a round trip of 100 ms; the saturated fan-out is no
/// slower than with 2 MiB (benches/RESULTS.md).
const SEND_WINDOW: u64 = 256 << 10;

/// A connection that has said hello, as its room streams see it.
pub(crate) struct Conn {
    pub id: ConnId,
    /// Shared, not cloned: a session handle is about a KiB.
    pub connection: Arc<web_transport_quinn::Session>,
    pub name: chat_core::UserName,
    /// The session's token: an account's session while it is one.
    pub token: chat_core::SessionToken,
    /// Its place among the node's connections (see `admission`).
    pub slot: u64,
    /// What its long frames in progress may hold: two frames at the length limit.
    pub frames: Arc<tokio::sync::Semaphore>,
    /// Its turns for pages of history in hand (`pages::PAGES_PER_CONNECTION`).
    pub pages: Arc<tokio::sync::Semaphore>,
    pub flavor: connection::Flavor,
}

/// What every connection task shares.
pub(crate) struct Shared {
    /// A `std` mutex, not tokio's: it is never held across an await, and the history's
    /// writers take it too (whoever writes an append hands it to the fan-out), so nothing
    /// appends while holding it.
    core: Arc<Mutex<Core<Outbox>>>,
    history: Arc<dyn HistoryStore>,
    fanout: Arc<dyn FanOut>,
    directory: Arc<dyn Directory>,
    accounts: Arc<dyn AccountStore>,
    /// Turns for password hashes (`login::HASHES_AT_ONCE`).
    hashing: tokio::sync::Semaphore,
    config: NodeConfig,
    limits: Limits,
    windows: ReceiveWindows,
    /// What the long frames in progress of every connection may hold together.
    frames: Arc<tokio::sync::Semaphore>,
    /// What the pages of history on their way to clients may hold together.
    pages: pages::PageMemory,
    /// Open connections by id, so that a session taken over can be closed.
    connections: Mutex<HashMap<ConnId, (Arc<web_transport_quinn::Session>, u64)>>,
    next_id: AtomicU64,
    /// Turns true when the node starts shutting down: stop reading requests.
    stopping: watch::Receiver<bool>,
    admission: Arc<Admission>,
    /// Connections between their first Initial and the end of their handshake.
    handshaking: std::sync::atomic::AtomicUsize,
    metrics: Arc<Metrics>,
}

impl Shared {
    fn core(&self) -> MutexGuard<'_, Core<Outbox>> {
        self.core.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn connections(
        &self,
    ) -> MutexGuard<'_, HashMap<ConnId, (Arc<web_transport_quinn::Session>, u64)>> {
        self.connections.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Creates `room` in the history if it is missing (on a blocking thread), and on a single
    /// node in the core, which knows every room from the start (in cluster mode a room enters
    /// the core when the node follows it); returns whether it was created.
    async fn create_room(&self, room: &RoomName) -> Result<bool, String> {
        let (history, name) = (Arc::clone(&self.history), room.clone());
        let created = match tokio::task::spawn_blocking(move || history.create_room(&name)).await {
            Ok(created) => created.map_err(|e| e.to_string())?,
            Err(e) => return Err(e.to_string()),
        };
        if self.config.cluster.is_none() {
            self.core().add_room(room.clone(), 0);
        }
        if created {
            info!(%room, "created room");
        }
        Ok(created)
    }

    /// `connection` was closed for ignoring "slow down": its address may not connect again
    /// for `rate_limited_bar` (else a new connection would have a fresh budget at once).
    fn bar(&self, connection: &web_transport_quinn::Session) {
        let ip = connection.remote_address().ip();
        info!(%ip, secs = self.config.rate_limited_bar.as_secs(), "barred an address that ignored its limit");
        self.admission.bar(ip, self.config.rate_limited_bar);
    }

    /// Whether a new connection may start its handshake now. Past `max_handshakes` in
    /// progress its Initial is dropped unanswered (costing nothing more); past
    /// `retry_above_handshakes` a client that has not proven its address is sent a Retry,
    /// and comes back with a token that proves it (a spoofed source never does), before it
    /// takes a slot.
    fn validate(&self, incoming: quinn::Incoming) -> Option<quinn::Incoming> {
        let handshaking = self.handshaking.load(Ordering::Relaxed);
        if handshaking >= self.config.max_handshakes {
            self.metrics.refused("too_many_handshakes");
            incoming.ignore();
            return None;
        }
        if handshaking >= self.config.retry_above_handshakes
            && !incoming.remote_address_validated()
            && incoming.may_retry()
        {
            self.metrics.refused("address_validation");
            match incoming.retry() {
                Ok(()) => return None,
                Err(e) => return Some(e.into_incoming()),
            }
        }
        Some(incoming)
    }

    /// The names of every room, read on a blocking thread.
    async fn room_names(&self) -> Result<Vec<String>, Refusal> {
        let history = Arc::clone(&self.history);
        let names = tokio::task::spawn_blocking(move || history.room_names()).await;
        let names = names.map_err(|e| Refusal::Unanswerable(e.to_string()))?;
        names.map_err(|e| Refusal::Unanswerable(e.to_string()))
    }

    /// Whether `room` exists.
    async fn room_exists(&self, room: &RoomName) -> Result<bool, Refusal> {
        Ok(self.room_names().await?.iter().any(|name| *name == room.as_str()))
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// A node bound to its address, ready to [`run`](Node::run).
pub struct Node {
    lanes: lanes::Lanes,
    /// Cluster mode's watch on rooms' rules, for as long as the node runs.
    _rules_watch: Option<AbortOnDrop>,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    ca_cert: Option<PathBuf>,
    metrics_listener: Option<tokio::net::TcpListener>,
    web: Option<web::Web>,
}

impl Node {
    /// Opens the history, creates the configured rooms, loads (or makes) the certificate and
    /// binds the UDP socket (the disk work on a blocking thread).
    ///
    /// # Errors
    /// A history that cannot be opened, a certificate that cannot be read or made, an
    /// address that cannot be bound.
    pub async fn start(config: NodeConfig) -> anyhow::Result<Self> {
        let max_message_len = config.max_message_len as usize;
        anyhow::ensure!(
            max_message_len <= codec::MAX_MESSAGE_LEN_LIMIT,
            "max_message_len is {max_message_len} bytes, over the {} that the protocol carries; \
             lower it",
            codec::MAX_MESSAGE_LEN_LIMIT
        );
        let cluster = match &config.cluster {
            Some(cluster) => Some(Arc::new(connect_cluster(cluster).await?)),
            None => None,
        };
        let prepared = {
            let (config, cluster) = (config.clone(), cluster.clone());
            tokio::task::spawn_blocking(move || prepare(&config, cluster)).await??
        };
        let metrics = Arc::new(Metrics::new());
        metrics.rooms.set(prepared.rooms.len() as i64);
        let core = Arc::new(Mutex::new(room_core(&config, prepared.rooms, cluster.is_some())));
        let history = prepared.history;
        let (fanout, directory) = seams(&config, cluster.as_ref(), &core, history.as_ref())?;
        let secret = node_secret(&config.data_dir)?;
        let web = match config.web_listen {
            Some(addr) => Some(
                web::bind(
                    addr,
                    config.tls.as_ref(),
                    &prepared.tls,
                    web_transport(&config)?,
                    endpoint_config(&secret, 0),
                )
                .await?,
            ),
            None => None,
        };
        let lanes = lanes(&config, prepared.tls, &secret)?;
        let metrics_listener = match config.metrics_listen {
            Some(addr) => Some(metrics::bind(addr).await?),
            None => None,
        };
        let (stop, stopping) = watch::channel(false);
        let shared = Arc::new(Shared {
            fanout,
            directory,
            accounts: prepared.accounts,
            hashing: tokio::sync::Semaphore::new(login::HASHES_AT_ONCE),
            core,
            history,
            limits: limits(&config),
            windows: ReceiveWindows::new(&config),
            frames: Arc::new(tokio::sync::Semaphore::new(
                config.frame_memory.max(limits(&config).max_frame_len as usize),
            )),
            pages: pages::PageMemory::new(config.page_memory, page_reserve(&limits(&config))),
            connections: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            stopping,
            admission: Admission::new(
                config.max_connections,
                config.max_connections_per_ip,
                config.handshake_timeout,
            ),
            handshaking: std::sync::atomic::AtomicUsize::new(0),
            metrics,
            config,
        });
        let rules_watch = match &cluster {
            Some(cluster) => Some(AbortOnDrop(tokio::spawn(cluster::follow_room_rules(
                Arc::clone(cluster),
                Arc::clone(&shared.core),
            )))),
            None => {
                moderation::load(&shared).await?;
                None
            }
        };
        Ok(Self {
            lanes,
            _rules_watch: rules_watch,
            shared,
            stop,
            ca_cert: prepared.ca_cert,
            metrics_listener,
            web,
        })
    }

    /// The address the node listens on (with the real port when 0 was asked for).
    ///
    /// # Errors
    /// The socket's address cannot be read.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.lanes.first().local_addr()
    }

    /// The address of the `/metrics` endpoint, when the node serves one.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The CA certificate that signed the node's certificate, when the node made it.
    pub fn ca_cert(&self) -> Option<&std::path::Path> {
        self.ca_cert.as_deref()
    }

    /// Serves clients until `shutdown` completes, then stops accepting, lets the acks in
    /// flight reach their clients, closes every connection with the going-away code and
    /// flushes the history.
    ///
    /// # Errors
    /// The history could not be flushed at the end.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Self { lanes, shared, stop, metrics_listener, _rules_watch, web, .. } = self;
        let _metrics = metrics_listener.map(|listener| {
            AbortOnDrop(tokio::spawn(metrics::serve(listener, Arc::clone(&shared.metrics))))
        });
        // Each lane serves its endpoint's connections on its own thread; browsers' on this
        // runtime.
        let mut serving: Vec<_> = lanes
            .iter()
            .enumerate()
            .map(|(number, lane)| {
                let (endpoint, name) = (lane.endpoint.clone(), number.to_string());
                let serving =
                    serve(endpoint, name, Arc::clone(&shared), connection::Flavor::Native);
                lane.runtime.spawn(serving)
            })
            .collect();
        let (web_endpoint, _page, _rotation) = match web {
            Some(web::Web { endpoint, page, page_tls, pinned }) => {
                let addr = endpoint.local_addr()?;
                let page_serving = http::serve(page, page_tls, web::page(addr, pinned.clone()));
                let rotation = pinned.map(|pinned| AbortOnDrop(tokio::spawn(web::rotate(pinned))));
                let browsers = endpoint.clone();
                let browsers =
                    serve(browsers, "web".into(), Arc::clone(&shared), connection::Flavor::Browser);
                serving.push(tokio::spawn(browsers));
                (Some(endpoint), Some(AbortOnDrop(tokio::spawn(page_serving))), rotation)
            }
            None => (None, None, None),
        };
        let _refresh = shared.config.cluster.as_ref().map(|cluster| {
            AbortOnDrop(tokio::spawn(refresh_names(Arc::clone(&shared), cluster.presence_ttl / 3)))
        });
        let _migrations = AbortOnDrop(tokio::spawn(follow_migrations(Arc::clone(&shared))));
        shutdown.await;

        info!("shutting down: no new connections; finishing the acks in flight");
        for endpoint in lanes.iter().map(|lane| &lane.endpoint).chain(&web_endpoint) {
            endpoint.set_server_config(None);
        }
        shared.core().stop_announcing();
        stop.send_replace(true);
        let history = Arc::clone(&shared.history);
        let flushed = tokio::task::spawn_blocking(move || history.flush()).await?;
        for served in serving {
            let _ = served.await;
        }
        // Whatever a lane still runs ends with its runtime, before the history closes.
        tokio::task::spawn_blocking(move || lanes.join()).await?;
        let history = Arc::clone(&shared.history);
        tokio::task::spawn_blocking(move || history.close()).await??;
        flushed?;
        info!("stopped");
        Ok(())
    }
}

/// Admits and serves `endpoint`'s connections (counted under `name`) until the node stops;
/// then lets them finish (the acks in flight reach their clients) for `DRAIN_TIMEOUT` at
/// most, closes every one with the going-away code and waits for the endpoint to be idle.
async fn serve(
    endpoint: quinn::Endpoint,
    name: String,
    shared: Arc<Shared>,
    flavor: connection::Flavor,
) {
    let open = shared.metrics.endpoint_connections(name);
    let mut tasks = JoinSet::new();
    let mut stop = shared.stopping.clone();
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => incoming,
            () = stopping(&mut stop) => break,
        };
        let Some(incoming) = incoming else { break };
        while tasks.try_join_next().is_some() {}
        let Some(incoming) = shared.validate(incoming) else { continue };
        let remote = incoming.remote_address();
        let slot = match shared.admission.admit(remote.ip()) {
            Ok(slot) => slot,
            Err(full) => {
                // Debug, not warn: a flood of refusals must not flood the log too (the
                // metrics count them).
                debug!(%remote, reason = full.as_str(), "refused a connection: at the connection limit");
                shared.metrics.refused(full.as_str());
                incoming.refuse();
                continue;
            }
        };
        let (served, open) = (Arc::clone(&shared), open.clone());
        open.inc();
        tasks.spawn(async move {
            connection::serve(served, Box::new(incoming), slot, flavor).await;
            open.dec();
        });
    }
    if tokio::time::timeout(DRAIN_TIMEOUT, async { while tasks.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        warn!("some clients did not drain in time; closing them");
    }
    endpoint.close(codes::close::GOING_AWAY.into(), b"the node is shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
}

/// `chat-node set-password`: registers `name` with `password`, or sets a new password for
/// its account and ends every session of it. Returns a sentence saying which.
///
/// # Errors
/// An invalid name or password, a single node's data directory in use (the node runs), or
/// a store that fails.
pub async fn set_password(
    config: &NodeConfig,
    name: &str,
    password: &str,
) -> anyhow::Result<String> {
    let user = chat_core::UserName::parse(name).with_context(|| format!("the name {name:?}"))?;
    chat_core::accounts::check_password(password).context("the password")?;
    let cluster = match &config.cluster {
        Some(cluster) => Some(Arc::new(connect_cluster(cluster).await?)),
        None => None,
    };
    let accounts = open_accounts(config, cluster.as_ref())?;
    let password = password.to_owned();
    let hash =
        tokio::task::spawn_blocking(move || chat_accounts::hash_password(&password)).await??;
    // No session survives: the token kept is one nobody holds.
    let nobody: chat_core::SessionToken = ring::rand::generate(&ring::rand::SystemRandom::new())
        .map_err(|_| anyhow::anyhow!("no randomness"))?
        .expose();
    let new_hash = hash.clone();
    let change: seams::AccountChange =
        Arc::new(move |account| account.set_password(new_hash.clone(), &nobody));
    if let Some(ended) = accounts.update(user.key(), change).await? {
        return Ok(format!("{user}: a new password; {ended} session(s) ended"));
    }
    let mut account = chat_accounts::Account::new(hash, nobody);
    account.end_session(&nobody);
    if accounts.create(user.key(), account).await? {
        Ok(format!("{user}: registered"))
    } else {
        anyhow::bail!("{user} was registered meanwhile; run this again to set its password")
    }
}

/// The accounts store: `data_dir/accounts` on a single node (which fails while another
/// process has it), or the cluster's buckets.
fn open_accounts(
    config: &NodeConfig,
    cluster: Option<&Arc<Cluster>>,
) -> anyhow::Result<Arc<dyn AccountStore>> {
    Ok(match cluster {
        Some(cluster) => Arc::new(cluster::ClusterAccounts(Arc::clone(cluster))),
        None => {
            let path = config.data_dir.join("accounts");
            let store = chat_accounts::LocalAccounts::open(&path)
                .with_context(|| format!("opening the accounts in {}", path.display()))?;
            Arc::new(Arc::new(store))
        }
    })
}

/// Connects to NATS for cluster mode.
async fn connect_cluster(config: &chat_cluster::ClusterConfig) -> anyhow::Result<Cluster> {
    let cluster = Cluster::connect(config).await?;
    if config.replicas < 3 {
        warn!(
            replicas = config.replicas,
            "NATS keeps fewer than 3 copies of the history: losing a NATS server can lose \
             acknowledged messages; set replicas = 3 on a cluster of 3 NATS servers"
        );
    }
    info!(nats = %config.urls.join(","), replicas = config.replicas, "cluster mode");
    Ok(cluster)
}

/// Renews this node's names in the cluster's presence before they expire, and closes the
/// connections whose users have taken their names to another node meanwhile.
/// How often the node looks for connections that moved to another address.
const MIGRATION_SWEEP: Duration = Duration::from_secs(2);

/// Counts each welcomed connection against the address it is at now (QUIC lets a client's
/// address change under its connection), and closes one that moved to an address that has
/// its most connections. Once a sweep, not per packet: quinn tells no one of a migration.
async fn follow_migrations(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(MIGRATION_SWEEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let open: Vec<(Arc<web_transport_quinn::Session>, u64)> =
            shared.connections().values().cloned().collect();
        for (connection, slot) in open {
            let remote = connection.remote_address();
            if let Err(full) = shared.admission.moved(slot, remote.ip()) {
                info!(%remote, reason = full.as_str(), "closed a connection that moved to an address at its limit");
                shared.metrics.refused(full.as_str());
                connection.close(
                    codes::close::REFUSED,
                    b"this connection moved to an address that has its most connections",
                );
            }
        }
    }
}

async fn refresh_names(shared: Arc<Shared>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let Some(refresh) = shared.directory.refresh() else { return };
        for conn in refresh.await {
            if let Some((connection, _)) = shared.connections().remove(&conn) {
                info!(conn = conn.0, "session resumed on another node; closing this one");
                connection
                    .close(codes::close::SESSION_REPLACED, b"this session was resumed elsewhere");
            }
        }
    }
}

/// What the node reads or makes on disk before it serves: its blocking part.
struct Prepared {
    history: Arc<dyn HistoryStore>,
    accounts: Arc<dyn AccountStore>,
    rooms: Vec<(RoomName, chat_core::Seq)>,
    tls: rustls::ServerConfig,
    ca_cert: Option<PathBuf>,
}

/// The room core with the node's rules. A single node knows its rooms from the start; in
/// cluster mode a room enters the core when this node starts following it.
fn room_core(
    config: &NodeConfig,
    rooms: Vec<(RoomName, chat_core::Seq)>,
    cluster: bool,
) -> Core<Outbox> {
    let rules =
        Rules::new(config.max_message_len as usize, config.max_rooms_per_connection as usize)
            .with_rate(config.messages_per_second, config.message_burst)
            .with_request_rate(config.requests_per_second, config.request_burst)
            .with_history_page(config.max_history_page as usize)
            .with_presence_limit(config.presence_limit as usize)
            .with_room_creation(config.room_creation, config.max_rooms)
            .with_accounts(
                match config.accounts {
                    Accounts::Open => AccountsMode::Open,
                    Accounts::Required => AccountsMode::Required,
                },
                LoginRules::new(config.max_login_failures, config.login_failure_forgiven),
            );
    let mut core = Core::new(rules);
    core.set_node_operators(config.operators.iter().cloned());
    if !cluster {
        for (room, last_seq) in rooms {
            core.add_room(room, last_seq);
        }
    }
    core
}

/// The fan-out and the directory, on the core (and on NATS in cluster mode).
fn seams(
    config: &NodeConfig,
    cluster: Option<&Arc<Cluster>>,
    core: &Arc<Mutex<Core<Outbox>>>,
    history: &dyn HistoryStore,
) -> anyhow::Result<(Arc<dyn FanOut>, Arc<dyn Directory>)> {
    Ok(match cluster {
        Some(cluster) => {
            let ttl = config.cluster.as_ref().map_or(Duration::ZERO, |c| c.presence_ttl);
            let runtime = tokio::runtime::Handle::current();
            (
                Arc::new(cluster::ClusterFanOut::new(Arc::clone(cluster), Arc::clone(core))),
                Arc::new(cluster::ClusterDirectory::new(Arc::clone(cluster), runtime, ttl)),
            )
        }
        None => {
            // The log is the bus: every stored message reaches the core through here.
            let fanout = Arc::new(LocalFanOut(Arc::clone(core)));
            history.subscribe(Arc::clone(&fanout) as Arc<dyn chat_history::Subscriber>)?;
            (fanout, Arc::new(LocalDirectory(Arc::clone(core))))
        }
    })
}

/// The QUIC endpoints on the configured address, a lane each. Their connection ids and
/// stateless resets come from the data dir's secret, so that a restarted node recognises its
/// previous run's.
fn lanes(
    config: &NodeConfig,
    tls: rustls::ServerConfig,
    secret: &[u8],
) -> anyhow::Result<lanes::Lanes> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server_config.transport_config(Arc::new(transport(config)?));
    no_address_tokens(&mut server_config);
    lanes::Lanes::bind(config.listen, config.quic_threads, |lane, socket| {
        quinn::Endpoint::new_with_abstract_socket(
            endpoint_config(secret, lane),
            Some(server_config.clone()),
            lanes::udp_socket(socket)?,
            Arc::new(quinn::TokioRuntime),
        )
    })
}

/// No NEW_TOKEN frames: the node proves addresses with a Retry when it is busy (see
/// `Shared::validate`), and a token log would hold memory for tokens nobody needs.
pub(crate) fn no_address_tokens(server: &mut quinn::ServerConfig) {
    let mut tokens = quinn::ValidationTokenConfig::default();
    tokens.log(Arc::new(quinn_proto::NoneTokenLog)).sent(0);
    server.validation_token_config(tokens);
}

/// The browsers' transport: the native one, with room for a WebTransport session's own
/// streams (its CONNECT request, HTTP/3's control stream and QPACK's two), the one packet
/// of datagrams that HTTP/3 with WebTransport must offer, and keep-alives.
fn web_transport(config: &NodeConfig) -> anyhow::Result<quinn::TransportConfig> {
    let mut transport = transport(config)?;
    transport
        .max_concurrent_bidi_streams(2u8.into())
        .max_concurrent_uni_streams(3u8.into())
        .datagram_receive_buffer_size(Some(web::DATAGRAM_BUFFER))
        // Browsers send no keep-alives of their own: the node does, so that a quiet tab is
        // not taken for a dead one.
        .keep_alive_interval(Some(config.idle_timeout / 3));
    Ok(transport)
}

/// The native connections' transport.
fn transport(config: &NodeConfig) -> anyhow::Result<quinn::TransportConfig> {
    let windows = ReceiveWindows::new(config);
    let mut transport = quinn::TransportConfig::default();
    // Until its welcome a connection may open its control stream only, and have a hello's
    // worth unread (`connection::run` then allows room streams and the full window), so one
    // that never says hello holds next to nothing. No datagrams: the protocol has none.
    transport
        .max_concurrent_bidi_streams(1u8.into())
        .max_concurrent_uni_streams(0u8.into())
        .receive_window(windows.before_hello.into())
        .stream_receive_window(windows.stream.into())
        .datagram_receive_buffer_size(None)
        .send_window(SEND_WINDOW)
        .max_idle_timeout(Some(config.idle_timeout.try_into()?));
    Ok(fan_out_transport(transport))
}

/// `transport` with the node's ACK frequency and first congestion window (below): what its
/// fan-out's latency depends on, shared with the floor's relay in `chat-bench` so that the
/// two are measured on the same transport.
pub fn fan_out_transport(mut transport: quinn::TransportConfig) -> quinn::TransportConfig {
    transport
        .ack_frequency_config(Some(ack_frequency()))
        .congestion_controller_factory(Arc::new(congestion()));
    transport
}

/// Packets a peer may take before it must acknowledge them.
const ACK_AFTER: u32 = 16;

/// Peers acknowledge every 16th packet (or after their ack delay, 25 ms by default) rather
/// than every other: a member that only receives otherwise sends an ACK for every second
/// message, a UDP packet that it and the node both pay for. A gap in the packet numbers is
/// still acknowledged at once (the reordering threshold), so loss is found as fast as before.
fn ack_frequency() -> quinn::AckFrequencyConfig {
    let mut ack = quinn::AckFrequencyConfig::default();
    ack.ack_eliciting_threshold((ACK_AFTER - 1).into());
    ack
}

/// A first congestion window of `2 * ACK_AFTER` packets of QUIC's smallest size (38,400
/// bytes; Chromium's QUIC starts with 32 packets too) instead of quinn's 10 packets: with
/// fewer in flight than a peer waits for before it acknowledges, every round of slow start
/// waited for the peer's ack delay, and a burst to a fresh member filled its queue and had
/// it dropped as too slow (benches/RESULTS.md).
fn congestion() -> quinn::congestion::CubicConfig {
    let mut cubic = quinn::congestion::CubicConfig::default();
    cubic.initial_window(u64::from(2 * ACK_AFTER) * 1200);
    cubic
}

/// Connection ids (naming `lane`, for [`lanes`]' steering) and stateless resets from
/// `secret`: the node's is its data dir's (see `node_secret`).
#[must_use]
pub fn endpoint_config(secret: &[u8], lane: u8) -> quinn::EndpointConfig {
    let mut endpoint_config =
        quinn::EndpointConfig::new(Arc::new(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret)));
    let secret = secret.to_vec();
    endpoint_config.cid_generator(move || Box::new(cids::SignedConnectionIds::new(&secret, lane)));
    endpoint_config
}

/// The most a page of history can be once encoded: its text (or one message longer than
/// that), and each message's frame around it.
fn page_reserve(limits: &Limits) -> u32 {
    let text = (chat_core::PAGE_BYTES as u32).max(limits.max_message_len);
    let framing = chat_core::names::MAX_ROOM_NAME_LEN + chat_core::names::MAX_USER_NAME_LEN + 32;
    text + limits.max_history_page * framing as u32
}

/// The limits the welcome announces.
fn limits(config: &NodeConfig) -> Limits {
    Limits {
        max_message_len: config.max_message_len,
        max_frame_len: config.max_message_len + codec::FRAME_OVERHEAD as u32,
        max_rooms_per_connection: config.max_rooms_per_connection,
        history_cap: config.history_cap,
        direct_history_cap: config.direct_history_cap,
        messages_per_second: config.messages_per_second,
        message_burst: config.message_burst,
        max_history_page: config.max_history_page,
        requests_per_second: config.requests_per_second,
        request_burst: config.request_burst,
        presence_limit: config.presence_limit,
    }
}

/// Opens the history and the accounts (or, in cluster mode, wraps NATS), creates the
/// configured rooms and loads (or makes) the certificate.
fn prepare(config: &NodeConfig, cluster: Option<Arc<Cluster>>) -> anyhow::Result<Prepared> {
    let history: Arc<dyn HistoryStore> = match cluster.clone() {
        Some(cluster) => {
            Arc::new(cluster::ClusterHistory::new(cluster, tokio::runtime::Handle::current()))
        }
        None => Arc::new(
            History::open(chat_history::Config {
                path: config.data_dir.join("history"),
                cap: config.history_cap,
                cap_by_prefix: vec![(DIRECT_PREFIX.into(), config.direct_history_cap)],
                durability: config.durability,
            })
            .with_context(|| format!("opening the history in {}", config.data_dir.display()))?,
        ),
    };
    let accounts = open_accounts(config, cluster.as_ref())?;
    for name in &config.rooms {
        let room = RoomName::parse(name).with_context(|| format!("configured room {name:?}"))?;
        if history.create_room(&room)? {
            info!(%room, "created room");
        }
    }
    let mut rooms = Vec::new();
    for (name, last_seq) in history.rooms()? {
        match RoomName::parse(&name) {
            Ok(room) => rooms.push((room, last_seq)),
            Err(e) => warn!(%name, error = %e, "skipping a room whose name is no longer valid"),
        }
    }
    let (tls, ca_cert) = tls_config(config)?;
    Ok(Prepared { history, accounts, rooms, tls, ca_cert })
}

/// The node's TLS configuration, and the CA file when the node made its own certificate.
fn tls_config(config: &NodeConfig) -> anyhow::Result<(rustls::ServerConfig, Option<PathBuf>)> {
    let (cert, key, ca) = match &config.tls {
        Some((cert, key)) => (cert.clone(), key.clone(), None),
        None => {
            let dir = config.data_dir.join("certs");
            let files = chat_certs::ensure_node_files(&dir, &[])?;
            let ca_fingerprint = first_fingerprint(&chat_certs::load_certs(&files.ca_cert)?);
            info!(
                ca = %files.ca_cert.display(),
                sha256 = %ca_fingerprint,
                "{} local CA; clients trust it with --ca {}",
                if files.created { "created a" } else { "using the" },
                files.ca_cert.display()
            );
            (files.node_cert, files.node_key, Some(files.ca_cert))
        }
    };
    let chain = chat_certs::load_certs(&cert)?;
    let fingerprint = first_fingerprint(&chain);
    info!(
        cert = %cert.display(),
        sha256 = %fingerprint,
        "node certificate; clients can pin it instead of a CA with --fingerprint {fingerprint}"
    );
    let key = chat_certs::load_key(&key)?;
    Ok((chat_certs::server_config(chain, key, codes::ALPN)?, ca))
}

/// The SHA-256 fingerprint of the first certificate of a chain (the node's own, or the CA).
fn first_fingerprint(chain: &[rustls::pki_types::CertificateDer<'_>]) -> String {
    chain.first().map(|der| chat_certs::fingerprint(der)).unwrap_or_default()
}

/// The secret behind the node's connection ids and QUIC stateless resets, kept in the data
/// dir so that a restarted node recognises the connection ids of its previous run and tells
/// those clients at once that their connections are gone (instead of leaving them to wait
/// for the idle timeout).
fn node_secret(data_dir: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    let path = data_dir.join("reset.key");
    let secret = match std::fs::read(&path) {
        Ok(secret) if secret.len() == 32 => secret,
        _ => {
            let secret: [u8; 32] = ring::rand::generate(&ring::rand::SystemRandom::new())
                .map_err(|_| anyhow::anyhow!("no randomness for the reset key"))?
                .expose();
            std::fs::create_dir_all(data_dir)?;
            std::fs::write(&path, secret).with_context(|| format!("writing {}", path.display()))?;
            secret.to_vec()
        }
    };
    Ok(secret)
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A task that ends when its handle is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Completes once the node starts shutting down.
pub(crate) async fn stopping(stopping: &mut watch::Receiver<bool>) {
    let _ = stopping.wait_for(|stop| *stop).await.map(|_| ());
}
