//! The node's configuration: a TOML file, `CHAT_*` environment variables and flags, in
//! rising order of precedence, over documented defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chat_cluster::ClusterConfig;
use chat_core::moderation::RoomCreation;
use chat_history::Durability;
use serde::Deserialize;

/// The UDP port a node listens on unless told otherwise.
pub const DEFAULT_PORT: u16 = 7700;

/// The shortest idle timeout: longer than the clients' keep-alive interval (3 s), so that a
/// quiet but healthy client is never dropped.
pub const MIN_IDLE_TIMEOUT_SECS: u64 = 5;

/// Every setting, each optional: one of these comes from the file, one from the command line
/// and environment, and [`Settings::resolve`] lays them over the defaults.
#[derive(Debug, Clone, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Address and UDP port to listen on [default: 0.0.0.0:7700]
    #[arg(long, env = "CHAT_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Directory for the history and the generated certificates [default: chat-data]
    #[arg(long, env = "CHAT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Longest message body in bytes [default: 4096]
    #[arg(long, env = "CHAT_MAX_MESSAGE_LEN")]
    pub max_message_len: Option<u32>,
    /// Messages each room retains; older ones are trimmed [default: 10000]
    #[arg(long, env = "CHAT_HISTORY_CAP")]
    pub history_cap: Option<u64>,
    /// Messages each direct conversation retains [default: 10000]
    #[arg(long, env = "CHAT_DIRECT_HISTORY_CAP")]
    pub direct_history_cap: Option<u64>,
    /// `sync` (fsync before every ack, the default) or `buffered` (survives a killed
    /// process, not a power cut)
    #[arg(long, env = "CHAT_DURABILITY", value_parser = parse_durability)]
    pub durability: Option<Durability>,
    /// A room that exists (repeatable; created at start if missing) [default: general]
    #[arg(long = "room", env = "CHAT_ROOMS", value_delimiter = ',')]
    pub rooms: Option<Vec<String>>,
    /// The node's operators: accounts that may moderate every room (repeatable, or
    /// comma-separated) [default: none]
    #[arg(long = "operator", env = "CHAT_OPERATORS", value_delimiter = ',')]
    pub operators: Option<Vec<String>>,
    /// PEM certificate chain; without it the node makes a local CA and certificate in the
    /// data dir
    #[arg(long, env = "CHAT_CERT", requires = "key")]
    pub cert: Option<PathBuf>,
    /// PEM private key of --cert
    #[arg(long, env = "CHAT_KEY", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Most client connections at once [default: 10000]
    #[arg(long, env = "CHAT_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Most client connections at once from one IP address [default: 100]
    #[arg(long, env = "CHAT_MAX_CONNECTIONS_PER_IP")]
    pub max_connections_per_ip: Option<usize>,
    /// Most rooms one connection may be in at once [default: 64]
    #[arg(long, env = "CHAT_MAX_ROOMS_PER_CONNECTION")]
    pub max_rooms_per_connection: Option<u32>,
    /// Frames queued for one member of one room before it is dropped as too slow
    /// [default: 1024]
    #[arg(long, env = "CHAT_MEMBER_QUEUE")]
    pub member_queue: Option<usize>,
    /// Most messages in one page of history, a join's or a history request's
    /// [default: 500]
    #[arg(long, env = "CHAT_MAX_HISTORY_PAGE")]
    pub max_history_page: Option<u32>,
    /// Who may make rooms at runtime (`/create`): `anyone`, `accounts` (registered users),
    /// `operators` (the node's) or `nobody` [default: anyone]
    #[arg(long, env = "CHAT_ROOM_CREATION", value_parser = parse_room_creation)]
    pub room_creation: Option<RoomCreation>,
    /// Most rooms the node keeps, direct conversations not counted [default: 10000]
    #[arg(long, env = "CHAT_MAX_ROOMS")]
    pub max_rooms: Option<usize>,
    /// Handshakes in progress above which a new connection must first prove its address
    /// (a QUIC Retry: one round trip more), so that Initials from spoofed addresses take no
    /// slot; 0: always [default: 64]
    #[arg(long, env = "CHAT_RETRY_ABOVE_HANDSHAKES")]
    pub retry_above_handshakes: Option<usize>,
    /// Handshakes in progress at most; more Initials are dropped unanswered [default: 1024]
    #[arg(long, env = "CHAT_MAX_HANDSHAKES")]
    pub max_handshakes: Option<usize>,
    /// Whether guests may go online under names nobody registered (`open`), or every name
    /// must be a registered account (`required`) [default: open]
    #[arg(long, env = "CHAT_ACCOUNTS", value_parser = parse_accounts)]
    pub accounts: Option<Accounts>,
    /// Failed logins to one account from one address before each further try must wait
    /// (an address gets four times as many over all accounts, an account ten times as many
    /// from everywhere) [default: 5]
    #[arg(long, env = "CHAT_MAX_LOGIN_FAILURES")]
    pub max_login_failures: Option<u32>,
    /// Seconds after which one failed login is forgiven [default: 60]
    #[arg(long, env = "CHAT_LOGIN_FAILURE_FORGIVEN_SECS")]
    pub login_failure_forgiven_secs: Option<u64>,
    /// Rooms with more members than this get no arrivals and departures (each would go to
    /// every member); `Who` still tells [default: 500]
    #[arg(long, env = "CHAT_PRESENCE_LIMIT")]
    pub presence_limit: Option<u32>,
    /// Seconds of silence after which a connection is dropped; at least 5, since clients
    /// send a keep-alive every 3 seconds [default: 30]
    #[arg(long, env = "CHAT_IDLE_TIMEOUT_SECS")]
    pub idle_timeout_secs: Option<u64>,
    /// Seconds a write to a room stream may make no progress (the client reads nothing)
    /// before the stream is reset [default: 30]
    #[arg(long, env = "CHAT_WRITE_TIMEOUT_SECS")]
    pub write_timeout_secs: Option<u64>,
    /// Seconds a frame from a client may take from its first byte to its last before its
    /// stream is given up [default: 30]
    #[arg(long, env = "CHAT_FRAME_TIMEOUT_SECS")]
    pub frame_timeout_secs: Option<u64>,
    /// MiB that the long frames (over 8 KiB) still arriving on all connections may hold in
    /// all; a frame waits for room, unread, within its deadline [default: 256]
    #[arg(long, env = "CHAT_FRAME_MEMORY_MIB")]
    pub frame_memory_mib: Option<u64>,
    /// MiB that the pages of history on their way to clients (read, not yet taken by QUIC)
    /// may hold on all connections together; a page waits for room before it is read
    /// [default: 256]
    #[arg(long, env = "CHAT_PAGE_MEMORY_MIB")]
    pub page_memory_mib: Option<u64>,
    /// Seconds a new connection has for the TLS handshake and its hello, and a new room
    /// stream for its join [default: 10]
    #[arg(long, env = "CHAT_HANDSHAKE_TIMEOUT_SECS")]
    pub handshake_timeout_secs: Option<u64>,
    /// Messages per second one connection may keep up; 0 for no limit [default: 100]
    #[arg(long, env = "CHAT_MESSAGES_PER_SECOND")]
    pub messages_per_second: Option<u32>,
    /// Messages one connection may send at once after a quiet spell [default: 200]
    #[arg(long, env = "CHAT_MESSAGE_BURST")]
    pub message_burst: Option<u32>,
    /// Requests (joins, history pages, room lists, who) per second one connection may keep
    /// up; 0 for no limit [default: 50]
    #[arg(long, env = "CHAT_REQUESTS_PER_SECOND")]
    pub requests_per_second: Option<u32>,
    /// Requests one connection may make at once after a quiet spell [default: 200]
    #[arg(long, env = "CHAT_REQUEST_BURST")]
    pub request_burst: Option<u32>,
    /// Seconds for which an address whose connection was closed for ignoring "slow down"
    /// may not connect again; 0 for none [default: 10]
    #[arg(long, env = "CHAT_RATE_LIMITED_BAR_SECS")]
    pub rate_limited_bar_secs: Option<u64>,
    /// Threads that serve the QUIC port, each with its own endpoint and the connections it
    /// takes (at most 64) [default: one per core]
    #[arg(long, env = "CHAT_QUIC_THREADS")]
    pub quic_threads: Option<usize>,
    /// Address of the Prometheus `/metrics` endpoint (plain HTTP; keep it on loopback or a
    /// private network) [default: off]
    #[arg(long, env = "CHAT_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Address for browsers: WebTransport on its UDP port and the chat's web page on the
    /// same TCP port (HTTPS off loopback, with the node's certificate) [default: off]
    #[arg(long, env = "CHAT_WEB_LISTEN")]
    pub web_listen: Option<SocketAddr>,
    /// Cluster mode: the `[cluster]` table of the file.
    #[command(flatten)]
    #[serde(default)]
    pub cluster: ClusterSettings,
}

/// Cluster mode's settings: with `nats` set, the history, fan-out and presence live in NATS
/// JetStream and any number of nodes serve one chat.
#[derive(Debug, Clone, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct ClusterSettings {
    /// NATS server URLs (comma-separated); set, the node runs in cluster mode [default: off]
    #[arg(long = "nats", env = "CHAT_NATS", value_delimiter = ',')]
    pub nats: Option<Vec<String>>,
    /// Copies NATS keeps of the history and presence; 3 on a three-server NATS cluster
    /// survives the loss of a server [default: 1]
    #[arg(long, env = "CHAT_REPLICAS")]
    pub replicas: Option<usize>,
    /// Days after which messages are dropped whatever the history cap; 0 keeps them
    /// [default: 0]
    #[arg(long, env = "CHAT_MAX_AGE_DAYS")]
    pub max_age_days: Option<u64>,
    /// Seconds a dead node's users stay online before their names come free [default: 15]
    #[arg(long, env = "CHAT_PRESENCE_TTL_SECS")]
    pub presence_ttl_secs: Option<u64>,
}

impl ClusterSettings {
    fn or(self, lower: Self) -> Self {
        Self {
            nats: self.nats.or(lower.nats),
            replicas: self.replicas.or(lower.replicas),
            max_age_days: self.max_age_days.or(lower.max_age_days),
            presence_ttl_secs: self.presence_ttl_secs.or(lower.presence_ttl_secs),
        }
    }

    fn resolve(self, history_cap: u64, direct_history_cap: u64) -> Option<ClusterConfig> {
        let urls = self.nats.filter(|urls| !urls.is_empty())?;
        Some(ClusterConfig {
            urls,
            replicas: self.replicas.unwrap_or(1).max(1),
            history_cap,
            direct_history_cap,
            max_age: match self.max_age_days.unwrap_or(0) {
                0 => None,
                days => Some(Duration::from_secs(days.saturating_mul(86_400))),
            },
            // Refreshed every third of it: at least a few seconds between refreshes.
            presence_ttl: Duration::from_secs(self.presence_ttl_secs.unwrap_or(15).max(3)),
        })
    }
}

/// Whether the node takes guests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accounts {
    /// Guests may use any name nobody registered; registered names need their password.
    #[default]
    Open,
    /// Every name must be registered (a hello may register its own).
    Required,
}

fn parse_accounts(s: &str) -> Result<Accounts, String> {
    match s {
        "open" => Ok(Accounts::Open),
        "required" => Ok(Accounts::Required),
        _ => Err(format!("{s:?}: expected open or required")),
    }
}

fn parse_room_creation(s: &str) -> Result<RoomCreation, String> {
    match s {
        "anyone" => Ok(RoomCreation::Anyone),
        "accounts" => Ok(RoomCreation::Accounts),
        "operators" => Ok(RoomCreation::Operators),
        "nobody" => Ok(RoomCreation::Nobody),
        _ => Err(format!("{s:?}: expected anyone, accounts, operators or nobody")),
    }
}

fn parse_durability(s: &str) -> Result<Durability, String> {
    match s {
        "sync" => Ok(Durability::Sync),
        "buffered" => Ok(Durability::Buffered),
        _ => Err(format!("{s:?} is not a durability; use `sync` or `buffered`")),
    }
}

/// The node's configuration with every default filled in.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub max_message_len: u32,
    pub history_cap: u64,
    pub direct_history_cap: u64,
    pub durability: Durability,
    pub rooms: Vec<String>,
    pub operators: Vec<String>,
    /// Certificate chain and key; `None` makes (or reuses) a local CA in the data dir.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub max_rooms_per_connection: u32,
    pub member_queue: usize,
    pub max_history_page: u32,
    pub presence_limit: u32,
    pub room_creation: RoomCreation,
    pub max_rooms: usize,
    pub retry_above_handshakes: usize,
    pub max_handshakes: usize,
    pub accounts: Accounts,
    pub max_login_failures: u32,
    pub login_failure_forgiven: Duration,
    pub idle_timeout: Duration,
    pub write_timeout: Duration,
    pub frame_timeout: Duration,
    /// Bytes the long frames in progress of every connection may hold together.
    pub frame_memory: usize,
    /// Bytes the pages of history on their way to clients may hold together.
    pub page_memory: usize,
    pub handshake_timeout: Duration,
    /// Sends per second per connection; 0 for no limit.
    pub messages_per_second: u32,
    pub message_burst: u32,
    pub requests_per_second: u32,
    pub request_burst: u32,
    pub rate_limited_bar: Duration,
    /// Threads serving the QUIC port, a QUIC endpoint each (1 to 64: more are 64).
    pub quic_threads: usize,
    /// Where `/metrics` is served; `None` serves none.
    pub metrics_listen: Option<SocketAddr>,
    /// Where browsers connect (UDP) and load the page (TCP); `None` serves no browsers.
    pub web_listen: Option<SocketAddr>,
    /// NATS and how the chat's data is kept there; `None` for a single node.
    pub cluster: Option<ClusterConfig>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Settings::default().resolve()
    }
}

/// A budget given in MiB (256 unless set, at least 1), in bytes.
fn mib_or_256(mib: Option<u64>) -> usize {
    usize::try_from(mib.unwrap_or(256).max(1) << 20).unwrap_or(usize::MAX >> 4)
}

impl Settings {
    /// Reads a TOML config file.
    ///
    /// # Errors
    /// A file that cannot be read, or that is not valid TOML of these keys.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read the config file {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))
    }

    /// `self`, with `lower` filling whatever `self` leaves unset.
    #[must_use]
    pub fn or(self, lower: Self) -> Self {
        Self {
            listen: self.listen.or(lower.listen),
            data_dir: self.data_dir.or(lower.data_dir),
            max_message_len: self.max_message_len.or(lower.max_message_len),
            history_cap: self.history_cap.or(lower.history_cap),
            direct_history_cap: self.direct_history_cap.or(lower.direct_history_cap),
            durability: self.durability.or(lower.durability),
            rooms: self.rooms.or(lower.rooms),
            operators: self.operators.or(lower.operators),
            cert: self.cert.or(lower.cert),
            key: self.key.or(lower.key),
            max_connections: self.max_connections.or(lower.max_connections),
            max_rooms_per_connection: self
                .max_rooms_per_connection
                .or(lower.max_rooms_per_connection),
            member_queue: self.member_queue.or(lower.member_queue),
            max_history_page: self.max_history_page.or(lower.max_history_page),
            presence_limit: self.presence_limit.or(lower.presence_limit),
            room_creation: self.room_creation.or(lower.room_creation),
            max_rooms: self.max_rooms.or(lower.max_rooms),
            retry_above_handshakes: self.retry_above_handshakes.or(lower.retry_above_handshakes),
            max_handshakes: self.max_handshakes.or(lower.max_handshakes),
            accounts: self.accounts.or(lower.accounts),
            max_login_failures: self.max_login_failures.or(lower.max_login_failures),
            login_failure_forgiven_secs: self
                .login_failure_forgiven_secs
                .or(lower.login_failure_forgiven_secs),
            idle_timeout_secs: self.idle_timeout_secs.or(lower.idle_timeout_secs),
            write_timeout_secs: self.write_timeout_secs.or(lower.write_timeout_secs),
            frame_timeout_secs: self.frame_timeout_secs.or(lower.frame_timeout_secs),
            frame_memory_mib: self.frame_memory_mib.or(lower.frame_memory_mib),
            page_memory_mib: self.page_memory_mib.or(lower.page_memory_mib),
            max_connections_per_ip: self.max_connections_per_ip.or(lower.max_connections_per_ip),
            handshake_timeout_secs: self.handshake_timeout_secs.or(lower.handshake_timeout_secs),
            messages_per_second: self.messages_per_second.or(lower.messages_per_second),
            message_burst: self.message_burst.or(lower.message_burst),
            requests_per_second: self.requests_per_second.or(lower.requests_per_second),
            request_burst: self.request_burst.or(lower.request_burst),
            rate_limited_bar_secs: self.rate_limited_bar_secs.or(lower.rate_limited_bar_secs),
            quic_threads: self.quic_threads.or(lower.quic_threads),
            metrics_listen: self.metrics_listen.or(lower.metrics_listen),
            web_listen: self.web_listen.or(lower.web_listen),
            cluster: self.cluster.or(lower.cluster),
        }
    }

    /// Fills in the defaults.
    pub fn resolve(self) -> NodeConfig {
        let history_cap = self.history_cap.unwrap_or(10_000).max(1);
        let direct_history_cap = self.direct_history_cap.unwrap_or(10_000).max(1);
        NodeConfig {
            listen: self.listen.unwrap_or(SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT))),
            data_dir: self.data_dir.unwrap_or_else(|| PathBuf::from("chat-data")),
            max_message_len: self.max_message_len.unwrap_or(4096).max(1),
            history_cap,
            direct_history_cap,
            durability: self.durability.unwrap_or_default(),
            rooms: self.rooms.unwrap_or_else(|| vec!["general".into()]),
            operators: self.operators.unwrap_or_default(),
            tls: self.cert.zip(self.key),
            max_connections: self.max_connections.unwrap_or(10_000).max(1),
            max_rooms_per_connection: self.max_rooms_per_connection.unwrap_or(64).max(1),
            member_queue: self.member_queue.unwrap_or(1024).max(1),
            max_history_page: self.max_history_page.unwrap_or(500).max(1),
            presence_limit: self.presence_limit.unwrap_or(chat_core::PRESENCE_LIMIT as u32),
            room_creation: self.room_creation.unwrap_or_default(),
            max_rooms: self.max_rooms.unwrap_or(10_000),
            retry_above_handshakes: self.retry_above_handshakes.unwrap_or(64),
            max_handshakes: self.max_handshakes.unwrap_or(1024).max(1),
            accounts: self.accounts.unwrap_or_default(),
            max_login_failures: self.max_login_failures.unwrap_or(5).max(1),
            login_failure_forgiven: Duration::from_secs(
                self.login_failure_forgiven_secs.unwrap_or(60).max(1),
            ),
            idle_timeout: Duration::from_secs(
                self.idle_timeout_secs.unwrap_or(30).max(MIN_IDLE_TIMEOUT_SECS),
            ),
            max_connections_per_ip: self.max_connections_per_ip.unwrap_or(100).max(1),
            write_timeout: Duration::from_secs(self.write_timeout_secs.unwrap_or(30).max(1)),
            frame_timeout: Duration::from_secs(self.frame_timeout_secs.unwrap_or(30).max(1)),
            frame_memory: mib_or_256(self.frame_memory_mib),
            page_memory: mib_or_256(self.page_memory_mib),
            handshake_timeout: Duration::from_secs(
                self.handshake_timeout_secs.unwrap_or(10).max(1),
            ),
            messages_per_second: self.messages_per_second.unwrap_or(100),
            message_burst: self.message_burst.unwrap_or(200).max(1),
            requests_per_second: self.requests_per_second.unwrap_or(50),
            request_burst: self.request_burst.unwrap_or(200).max(1),
            rate_limited_bar: Duration::from_secs(self.rate_limited_bar_secs.unwrap_or(10)),
            quic_threads: self
                .quic_threads
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from)),
            metrics_listen: self.metrics_listen,
            web_listen: self.web_listen,
            cluster: self.cluster.resolve(history_cap, direct_history_cap),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_which_overrides_the_defaults() {
        let file: Settings = toml::from_str(
            "listen = \"127.0.0.1:9000\"\nhistory_cap = 5\nrooms = [\"a\", \"b\"]\ndurability = \"buffered\"",
        )
        .expect("valid TOML");
        let flags = Settings { history_cap: Some(7), ..Settings::default() };
        let config = flags.or(file).resolve();
        assert_eq!(config.listen, "127.0.0.1:9000".parse().expect("addr"));
        assert_eq!(config.history_cap, 7);
        assert_eq!(config.rooms, ["a", "b"]);
        assert_eq!(config.durability, Durability::Buffered);
        assert_eq!(config.max_message_len, 4096);
    }

    #[test]
    fn the_example_config_lists_the_defaults() {
        let example: Settings =
            toml::from_str(include_str!("../../examples/node.toml")).expect("example parses");
        let (example, defaults) = (example.resolve(), NodeConfig::default());
        assert_eq!(format!("{example:?}"), format!("{defaults:?}"));
    }

    /// The settings a `chat-node` command line gives.
    fn flags(args: &[&str]) -> Result<Settings, clap::Error> {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            settings: Settings,
        }
        let args = std::iter::once(&"chat-node").chain(args);
        <Cli as clap::Parser>::try_parse_from(args).map(|cli| cli.settings)
    }

    #[test]
    fn flags_parse_as_documented() {
        let settings = flags(&[
            "--listen",
            "127.0.0.1:1234",
            "--room",
            "a",
            "--room",
            "b",
            "--durability",
            "buffered",
            "--history-cap",
            "5",
        ])
        .expect("valid flags");
        let config = settings.resolve();
        assert_eq!(config.rooms, ["a", "b"]);
        assert_eq!(config.durability, Durability::Buffered);
        assert_eq!(config.history_cap, 5);
        assert!(flags(&["--durability", "maybe"]).is_err());
        assert!(flags(&["--cert", "c.pem"]).is_err(), "--cert needs --key");
    }

    #[test]
    fn the_cluster_table_and_flags_turn_cluster_mode_on() {
        let file: Settings = toml::from_str(
            "history_cap = 50\n[cluster]\nnats = [\"nats://a:4222\"]\nreplicas = 3\nmax_age_days = 365",
        )
        .expect("valid TOML");
        let cluster = file.clone().resolve().cluster.expect("cluster mode");
        assert_eq!(cluster.urls, ["nats://a:4222"]);
        assert_eq!((cluster.replicas, cluster.history_cap), (3, 50));
        assert_eq!(cluster.max_age, Some(Duration::from_secs(365 * 86_400)));
        assert_eq!(cluster.presence_ttl, Duration::from_secs(15));

        let settings = flags(&["--nats", "nats://b:4222,nats://c:4222"]).expect("valid flags");
        let cluster = settings.or(file).resolve().cluster.expect("cluster mode");
        assert_eq!(cluster.urls, ["nats://b:4222", "nats://c:4222"], "flags win");
        assert_eq!(cluster.replicas, 3, "the file fills in the rest");
        assert!(NodeConfig::default().cluster.is_none(), "a single node by default");
    }

    #[test]
    fn an_unknown_key_is_an_error() {
        assert!(toml::from_str::<Settings>("listn = \"127.0.0.1:1\"").is_err());
    }
}
