//! Cluster mode: the history, fan-out and presence of many stateless nodes, kept in NATS
//! JetStream instead of in one node's process.
//!
//! - [`log`]: one JetStream stream, `CHAT`, with a subject per room (`chat.room.<room>`). A
//!   message's sequence number is its stream sequence: it increases in each room, but with
//!   gaps (the rooms share the numbering). The stream is replicated, keeps
//!   `max_messages_per_subject` = the history cap, and doubles as the fan-out bus: it
//!   republishes each message it stores on a plain subject per room, to which every node
//!   with clients in the room subscribes (no consumer per room).
//! - [`notices`]: arrivals and departures, published to every node on core NATS.
//! - [`presence`]: key-value buckets for the names online (claimed with an atomic create),
//!   who is in which room, and the nodes running. Names and nodes expire unless their node
//!   refreshes them, so a dead node's names and memberships go on their own.
//!
//! NATS keeps no state of a node that the node needs back: a node can die and its clients
//! carry on at any other one.

#[cfg(feature = "local")]
pub mod local;
pub mod log;
mod mirror;
pub mod notices;
pub mod presence;
pub mod records;
mod subjects;

use std::time::Duration;

use async_nats::jetstream;

pub use log::{Live, Log};
pub use notices::{Direct, Notice, Notices};
pub use presence::{Claim, Directory, Lost};
pub use records::Records;

/// How to reach NATS and how to keep the chat's data there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// NATS server URLs; the client moves to another one when its server goes away.
    pub urls: Vec<String>,
    /// Copies of the history and of the key-value buckets (at most the servers in the NATS
    /// cluster; 3 survives the loss of one server).
    pub replicas: usize,
    /// Messages each room retains.
    pub history_cap: u64,
    /// Messages each direct conversation retains.
    pub direct_history_cap: u64,
    /// Age after which messages are dropped, whatever the cap; `None` keeps them.
    pub max_age: Option<Duration>,
    /// How long a name, or a membership, outlives the last refresh of its node.
    pub presence_ttl: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "cannot reach NATS at {urls}: {detail}. Is nats-server running there, with JetStream on (`-js`)?"
    )]
    Connect { urls: String, detail: String },
    #[error("NATS refused to set up {what}: {detail}")]
    Setup { what: String, detail: String },
    #[error("NATS did not answer: {0}; it may be electing a new leader, try again shortly")]
    Unavailable(String),
    #[error("a message in the history cannot be decoded: {0}")]
    Corrupt(#[from] postcard::Error),
}

impl ClusterError {
    fn unavailable(e: impl std::fmt::Display) -> Self {
        Self::Unavailable(e.to_string())
    }

    fn setup(what: &str, e: impl std::fmt::Display) -> Self {
        Self::Setup { what: what.to_owned(), detail: e.to_string() }
    }
}

/// A connection to NATS with the chat's stream and buckets ready.
pub struct Cluster {
    pub log: Log,
    pub directory: Directory,
    pub notices: Notices,
    /// The accounts, one record per registered name.
    pub accounts: Records,
    /// Rooms' rules (owner, operators, bans, mutes), one record per room that has them.
    pub room_rules: Records,
    /// Read markers, one record per account.
    pub markers: Records,
    client: async_nats::Client,
    /// Counts the moments after which messages meant for this node may have been missed.
    lapses: tokio::sync::watch::Receiver<u64>,
    /// Moves the connection off a NATS server that cannot reach the stream's leader.
    health: tokio::task::JoinHandle<()>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.health.abort();
    }
}

/// How often the NATS client pings its server: one that answers none of three pings (frozen,
/// or cut off by the network) is given up for another after about three intervals, where the
/// client's default of a minute kept a node on a dead server for minutes.
pub const PING_INTERVAL: Duration = Duration::from_secs(1);

/// How often the node checks that its NATS server reaches the stream's leader, and how many
/// checks in a row may fail before it moves to another server. A server cut off from the
/// others still answers pings, but not for the stream.
pub const HEALTH_CHECK: Duration = Duration::from_secs(1);
const HEALTH_FAILURES: u32 = 3;

impl Cluster {
    /// Connects to NATS and creates the stream and buckets if they are missing. NATS started
    /// at the same moment (its servers still electing their JetStream leaders) is waited for
    /// up to [`STARTUP_PATIENCE`].
    ///
    /// # Errors
    /// NATS cannot be reached, or refuses the stream or a bucket (fewer servers than
    /// replicas, JetStream off).
    pub async fn connect(config: &ClusterConfig) -> Result<Self, ClusterError> {
        let urls = config.urls.join(",");
        let servers = urls
            .split(',')
            .map(|url| url.trim().parse::<async_nats::ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ClusterError::Connect { urls: urls.clone(), detail: e.to_string() })?;
        let deadline = std::time::Instant::now() + STARTUP_PATIENCE;
        loop {
            match Self::try_connect(config, &urls, servers.clone()).await {
                Err(e) if std::time::Instant::now() < deadline => {
                    tracing::info!(error = %e, "waiting for NATS");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                done => return done,
            }
        }
    }

    async fn try_connect(
        config: &ClusterConfig,
        urls: &str,
        servers: Vec<async_nats::ServerAddr>,
    ) -> Result<Self, ClusterError> {
        let (lapsed, lapses) = tokio::sync::watch::channel(0u64);
        let last_tried = std::sync::Mutex::new(None);
        let client = async_nats::ConnectOptions::new()
            // The process id tells the nodes of one machine apart in NATS's monitoring.
            .name(format!("chat-node {}", std::process::id()))
            // A server cut off the network holds a connection attempt this long.
            .connection_timeout(Duration::from_secs(2))
            .request_timeout(Some(Duration::from_secs(5)))
            .ping_interval(PING_INTERVAL)
            .reconnect_to_server_callback(move |pool, _| {
                std::future::ready(next_server(&last_tried, pool))
            })
            .event_callback(move |event| {
                use async_nats::Event;
                // A new connection may follow messages lost on the old one, and a subscription
                // that overflowed has dropped some.
                if matches!(event, Event::Connected | Event::SlowConsumer(_)) {
                    lapsed.send_modify(|n| *n += 1);
                }
                async move {
                    match event {
                        Event::SlowConsumer(_) => tracing::warn!(%event, "NATS connection"),
                        event => tracing::info!(%event, "NATS connection"),
                    }
                }
            })
            .connect(servers)
            .await
            .map_err(|e| ClusterError::Connect { urls: urls.to_owned(), detail: e.to_string() })?;
        let js = jetstream::new(client.clone());
        let log = Log::open(&js, config, lapses.clone()).await?;
        let directory = Directory::open(&js, config).await?;
        let notices = Notices::new(client.clone());
        let accounts =
            Records::open(&js, config, records::ACCOUNTS_BUCKET, "chat accounts").await?;
        let room_rules =
            Records::open(&js, config, records::ROOM_RULES_BUCKET, "chat rooms' rules").await?;
        let markers =
            Records::open(&js, config, records::MARKERS_BUCKET, "chat read markers").await?;
        let health =
            tokio::spawn(keep_healthy(client.clone(), lapses.clone(), log.stream_info_probe()));
        Ok(Self { log, directory, notices, accounts, room_rules, markers, client, lapses, health })
    }

    /// Changes whenever messages meant for this node may have been missed: the connection to
    /// NATS was made again (after a server was lost), or a subscription overflowed.
    pub fn lapses(&self) -> tokio::sync::watch::Receiver<u64> {
        self.lapses.clone()
    }

    /// Sends whatever the client still buffers, waiting at most [`FLUSH_PATIENCE`] (a node
    /// that stops while NATS is unreachable would otherwise wait for it forever).
    ///
    /// # Errors
    /// The connection is gone.
    pub async fn flush(&self) -> Result<(), ClusterError> {
        let flushed = async { self.client.flush().await.map_err(ClusterError::unavailable) };
        within(FLUSH_PATIENCE, flushed).await
    }
}

/// How long a request keeps being retried while NATS recovers: a stream's leader election
/// after a server dies takes a few seconds. A client waits that long at most for its answer.
pub const PATIENCE: Duration = Duration::from_secs(15);

/// The longest a stopping node waits for NATS to take what it still has to send.
pub const FLUSH_PATIENCE: Duration = Duration::from_secs(5);

/// How long a starting node waits for NATS to come up and take the stream and buckets.
pub const STARTUP_PATIENCE: Duration = Duration::from_secs(60);

/// Runs `attempt` until it succeeds, or fails other than by NATS not answering, or
/// [`PATIENCE`] runs out. `attempt` must be safe to repeat.
pub(crate) async fn patiently<T, F, Fut>(mut attempt: F) -> Result<T, ClusterError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ClusterError>>,
{
    let deadline = std::time::Instant::now() + PATIENCE;
    let mut backoff = Duration::from_millis(25);
    loop {
        match attempt().await {
            Err(ClusterError::Unavailable(e)) if std::time::Instant::now() + backoff < deadline => {
                tracing::debug!(error = %e, "NATS did not answer; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
            }
            done => return done,
        }
    }
}

/// The longest a read (a direct get's answers) may take before it is asked again (a server
/// that dies mid-read would otherwise be waited for).
pub(crate) const READ_TIMEOUT: Duration = Duration::from_secs(3);

/// `attempt`, failed as unavailable if it takes longer than `limit`.
pub(crate) async fn within<T>(
    limit: Duration,
    attempt: impl Future<Output = Result<T, ClusterError>>,
) -> Result<T, ClusterError> {
    tokio::time::timeout(limit, attempt)
        .await
        .unwrap_or_else(|_| Err(ClusterError::Unavailable(format!("no answer in {limit:?}"))))
}

/// Checks every [`HEALTH_CHECK`] that the server the client is connected to reaches the
/// stream's leader, and moves the client to another server after [`HEALTH_FAILURES`] checks
/// in a row fail. After a move it waits a few checks longer, so that a cluster without a
/// majority (every server failing the check) is not hopped around quickly. Failures counted
/// before the client connected again (it left a frozen server on its own) are forgotten: they
/// were the old server's.
async fn keep_healthy(
    client: async_nats::Client,
    mut lapses: tokio::sync::watch::Receiver<u64>,
    probe: impl Fn() -> futures_util::future::BoxFuture<'static, Result<(), ClusterError>>,
) {
    let mut failures = 0;
    let mut patience = HEALTH_FAILURES;
    let mut tick = tokio::time::interval(HEALTH_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if client.connection_state() != async_nats::connection::State::Connected {
            failures = 0; // The client is moving already.
            continue;
        }
        let checked = within(HEALTH_CHECK, probe()).await;
        if lapses.has_changed().unwrap_or(false) {
            lapses.borrow_and_update();
            failures = 0;
            continue;
        }
        match checked {
            Ok(()) => (failures, patience) = (0, HEALTH_FAILURES),
            Err(e) => {
                failures += 1;
                if failures >= patience {
                    let server = client.server_info().server_name;
                    tracing::warn!(%server, error = %e, "the NATS server does not reach the stream's leader; moving to another server");
                    if let Err(e) = client.force_reconnect().await {
                        tracing::warn!(error = %e, "could not move to another NATS server");
                    }
                    (failures, patience) = (0, (patience * 2).min(8 * HEALTH_FAILURES));
                }
            }
        }
    }
}

/// The server to connect to next: never the one tried last while the pool has another, so
/// that a move away from a frozen or cut-off server (which may still take connections, and
/// whose failures the client has not counted) goes to another one; among the rest, those
/// that failed least, at random between equals.
fn next_server(
    last_tried: &std::sync::Mutex<Option<async_nats::ServerAddr>>,
    pool: Vec<async_nats::Server>,
) -> Option<async_nats::ReconnectToServer> {
    let mut last_tried = last_tried.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let others: Vec<_> = pool.iter().filter(|s| Some(&s.addr) != last_tried.as_ref()).collect();
    let candidates = if others.is_empty() { pool.iter().collect() } else { others };
    let fewest = candidates.iter().map(|s| s.failed_attempts).min()?;
    let least_failed: Vec<_> = candidates.iter().filter(|s| s.failed_attempts == fewest).collect();
    let pick = least_failed[random_id() as usize % least_failed.len()].addr.clone();
    *last_tried = Some(pick.clone());
    // No delay of our own: the client's backoff (growing with the attempts since the last
    // connection) applies.
    Some(async_nats::ReconnectToServer { addr: pick, delay: None })
}

/// A random id for this process, to tell apart what different nodes write.
fn random_id() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(url: &str, failed_attempts: usize) -> async_nats::Server {
        async_nats::Server {
            addr: url.parse().expect("a server address"),
            failed_attempts,
            did_connect: true,
            is_discovered: false,
            last_error: None,
        }
    }

    #[test]
    fn the_next_server_is_never_the_one_tried_last_while_there_is_another() {
        let last_tried = std::sync::Mutex::new(None);
        let pool = || vec![server("nats://a:4222", 0), server("nats://b:4222", 0)];
        let mut picks = Vec::new();
        for _ in 0..20 {
            picks.push(next_server(&last_tried, pool()).expect("a server").addr);
        }
        assert!(picks.windows(2).all(|w| w[0] != w[1]), "{picks:?}");
        let alone = vec![server("nats://a:4222", 3)];
        let again = next_server(&last_tried, alone.clone()).expect("the only server");
        assert_eq!(next_server(&last_tried, alone).expect("again").addr, again.addr);
    }

    #[test]
    fn among_the_others_the_least_failed_server_is_picked() {
        let last_tried = std::sync::Mutex::new(Some("nats://a:4222".parse().expect("address")));
        for _ in 0..20 {
            let pool = vec![
                server("nats://a:4222", 0),
                server("nats://b:4222", 2),
                server("nats://c:4222", 1),
            ];
            let pick = next_server(&last_tried, pool).expect("a server").addr;
            assert_eq!(pick, "nats://c:4222".parse().expect("address"));
            *last_tried.lock().expect("lock") = Some("nats://a:4222".parse().expect("address"));
        }
    }
}
