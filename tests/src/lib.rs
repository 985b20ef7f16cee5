//! Helpers for the end-to-end tests: a node on a loopback port with its history in a
//! temporary directory (in this process or as a `chat-node` process), clients that trust
//! it, and the paths of the built programs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use chat_client::{Client, ConnectOptions, Room, RoomEvent, Trust};
use chat_harness::ServerProcess;
use chat_node::{Node, NodeConfig, Settings};
use chat_proto::io::FrameReader;
use chat_proto::{ClientFrame, NodeFrame, codec, codes};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long a test waits for something that should happen at once.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A node running in this process.
pub struct TestNode {
    pub addr: std::net::SocketAddr,
    pub ca: PathBuf,
    pub data_dir: PathBuf,
    /// Where the node serves `/metrics`, when configured to.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// The temporary data dir of a node made by [`TestNode::start`].
    _owned_dir: Option<tempfile::TempDir>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

/// A node configuration for tests: loopback, a free port, durable history in `data_dir`.
pub fn test_config(data_dir: &Path) -> NodeConfig {
    let mut config = Settings::default().resolve();
    config.listen = "127.0.0.1:0".parse().expect("address");
    config.data_dir = data_dir.to_path_buf();
    config.rooms = vec!["general".into(), "random".into()];
    config
}

impl TestNode {
    /// Starts a node on a fresh temporary data dir, with the test configuration changed by
    /// `configure`.
    pub async fn start(configure: impl FnOnce(&mut NodeConfig)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut node = Self::start_in(dir.path(), configure).await;
        node._owned_dir = Some(dir);
        node
    }

    /// Starts a node on `data_dir` with the test configuration changed by `configure`.
    pub async fn start_in(data_dir: &Path, configure: impl FnOnce(&mut NodeConfig)) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let mut config = test_config(data_dir);
        configure(&mut config);
        let node = Node::start(config).await.expect("node starts");
        let addr = node.local_addr().expect("bound");
        let ca = node.ca_cert().expect("the node made its CA").to_path_buf();
        let metrics_addr = node.metrics_addr();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(node.run(async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            ca,
            data_dir: data_dir.to_path_buf(),
            metrics_addr,
            _owned_dir: None,
            stop,
            task,
        }
    }

    pub fn options(&self, name: &str) -> ConnectOptions {
        ConnectOptions::new(self.addr.to_string(), name, Trust::CaFile(self.ca.clone()))
    }

    pub async fn connect(&self, name: &str) -> Client {
        Client::connect(self.options(name)).await.expect("connects")
    }

    /// Shuts the node down as SIGTERM would, and waits for it.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.expect("node task").expect("node stops cleanly");
    }
}

/// The next message event in `room` (past the end-of-history mark, arrivals and
/// departures), failing the test after [`PATIENCE`].
pub async fn next_message(room: &mut Room) -> (chat_client::ChatMessage, bool) {
    loop {
        match tokio::time::timeout(PATIENCE, room.next()).await {
            Ok(Some(RoomEvent::Message { message, history })) => return (message, history),
            Ok(Some(
                RoomEvent::HistoryEnd(_) | RoomEvent::Arrived { .. } | RoomEvent::Left { .. },
            )) => {}
            other => panic!("expected a message in {}, got {other:?}", room.name()),
        }
    }
}

/// The next `n` messages in `room` as (seq, sender, body).
pub async fn take_messages(room: &mut Room, n: usize) -> Vec<(u64, String, String)> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let (m, _) = next_message(room).await;
        out.push((m.seq, m.sender, m.body));
    }
    out
}

/// A built program of this workspace (`chat`, `chat-node`), next to the test binary's
/// directory. The README's test command builds them before the tests run.
pub fn program(name: &str) -> PathBuf {
    let path = program_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: build the programs first (`cargo build --workspace --bins`)",
        path.display()
    );
    path
}

/// Where cargo puts the built programs (`target/debug`).
pub fn program_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent().and_then(Path::parent).expect("target dir").to_path_buf()
}

/// A NATS cluster of `size` servers for the cluster tests, with `nats-server` installed into
/// `target/nats-server` if need be.
pub fn nats_cluster(size: usize) -> chat_cluster::local::LocalNats {
    let install_dir = program_dir().join("..").join("nats-server");
    chat_cluster::local::LocalNats::start(size, &install_dir)
        .unwrap_or_else(|e| panic!("a NATS cluster of {size}: {e}"))
}

/// A bare QUIC connection to `node` speaking `alpn`, for talking the protocol by hand.
///
/// # Errors
/// The handshake failed.
pub async fn raw_connection(
    node: &TestNode,
    alpn: &[u8],
) -> Result<(quinn::Connection, quinn::Endpoint), quinn::ConnectionError> {
    raw_connection_with(node, alpn, quinn::TransportConfig::default()).await
}

/// [`raw_connection`] with the client's own transport settings.
///
/// # Errors
/// The handshake failed.
pub async fn raw_connection_with(
    node: &TestNode,
    alpn: &[u8],
    transport: quinn::TransportConfig,
) -> Result<(quinn::Connection, quinn::Endpoint), quinn::ConnectionError> {
    raw_connection_to(&node.ca, node.addr, alpn, transport).await
}

/// A bare QUIC connection to the node at `addr` whose CA is the file `ca` (a
/// [`NodeProcess`] as well as a [`TestNode`]).
///
/// # Errors
/// The handshake failed.
pub async fn raw_connection_to(
    ca: &Path,
    addr: std::net::SocketAddr,
    alpn: &[u8],
    transport: quinn::TransportConfig,
) -> Result<(quinn::Connection, quinn::Endpoint), quinn::ConnectionError> {
    let trust = Trust::CaFile(ca.to_path_buf());
    let bind = "127.0.0.1:0".parse().expect("addr");
    let endpoint = chat_client::quic_endpoint(&trust, alpn, bind, transport).expect("endpoint");
    let connection = endpoint.connect(addr, "localhost").expect("connect").await?;
    Ok((connection, endpoint))
}

/// A `chat-node` process on a free loopback port, started once it logs that it listens.
pub struct NodeProcess {
    server: ServerProcess,
    pub ca: String,
    /// Where the `chat` programs of this node keep their session tokens.
    clients: PathBuf,
}

/// Everything of the process: `child`, `addr`, `start_log`, `signal`, its memory.
impl std::ops::Deref for NodeProcess {
    type Target = ServerProcess;
    fn deref(&self) -> &ServerProcess {
        &self.server
    }
}

impl std::ops::DerefMut for NodeProcess {
    fn deref_mut(&mut self) -> &mut ServerProcess {
        &mut self.server
    }
}

impl NodeProcess {
    pub fn start(data_dir: &Path, extra: &[&str]) -> Self {
        Self::start_on(data_dir, &chat_harness::free_addr().expect("a free port"), extra)
    }

    pub fn start_on(data_dir: &Path, addr: &str, extra: &[&str]) -> Self {
        let clients = data_dir.join("clients");
        let mut command = ServerProcess::node_command(&program("chat-node"), addr, data_dir);
        command
            .args(extra)
            .env("RUST_LOG", std::env::var("CHAT_TEST_NODE_LOG").unwrap_or_else(|_| "info".into()));
        // "listening" comes after the history and the certificate are ready.
        let server = ServerProcess::start(command, addr.to_owned(), Some(("listening", PATIENCE)))
            .unwrap_or_else(|e| panic!("{e:#}"));
        let ca = data_dir.join("certs/ca.pem").display().to_string();
        Self { server, ca, clients }
    }

    /// The `chat` program as `name` on this node, keeping its session tokens in the node's
    /// data dir rather than the user's.
    pub fn chat(&self, name: &str, args: &[&str]) -> Command {
        let mut command = Command::new(program("chat"));
        command.args(["--server", &self.addr, "--ca", &self.ca, "--name", name]).args(args);
        command.env("CHAT_CLIENT_DATA_DIR", &self.clients);
        command
    }

    /// Options for a library client of this node.
    pub fn options(&self, name: &str) -> ConnectOptions {
        ConnectOptions::new(self.addr.clone(), name, Trust::CaFile(self.ca.clone().into()))
    }

    /// The node's peak resident memory so far, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        self.memory_kib().expect("the node's /proc status").1
    }

    pub fn signal(&self, signal: &str) {
        self.server.signal(signal).expect("signalled");
    }
}

pub use chat_harness::spawn_line_reader;

/// One HTTP GET by hand over `stream` (plain TCP or TLS): the status line and the body.
pub fn http_get(mut stream: impl std::io::Read + std::io::Write, path: &str) -> (String, String) {
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").expect("request");
    let mut response = String::new();
    // A TLS peer that closes without close_notify ends the read with an error, after the
    // whole response.
    if let Err(e) = stream.read_to_string(&mut response) {
        assert!(!response.is_empty(), "no response: {e}");
    }
    let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
    (head.lines().next().unwrap_or_default().to_owned(), body.to_owned())
}

/// Waits for `child` to exit, failing the test after [`PATIENCE`].
pub fn wait_child(child: &mut Child) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(std::time::Instant::now() < deadline, "the process did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A connection that has said hello, with what must live as long as it does.
pub struct Greeted {
    pub connection: quinn::Connection,
    pub endpoint: quinn::Endpoint,
    pub control: (quinn::SendStream, FrameReader<quinn::RecvStream>),
}

/// A bare connection that has said hello as `name`.
pub async fn hello(node: &TestNode, name: &str) -> Greeted {
    hello_with(node, name, quinn::TransportConfig::default()).await
}

/// [`hello`] over a connection with the client's own transport settings.
pub async fn hello_with(node: &TestNode, name: &str, transport: quinn::TransportConfig) -> Greeted {
    let (connection, endpoint) =
        raw_connection_with(node, codes::ALPN, transport).await.expect("handshake");
    let (mut send, recv) = connection.open_bi().await.expect("control stream");
    let frame = ClientFrame::Hello { name: name.into(), resume: None, login: None };
    send.write_all(&encoded(&frame)).await.expect("hello");
    let mut reader = FrameReader::new(recv, codec::MAX_NODE_FRAME_LEN);
    let welcome = reader.read::<NodeFrame>().await.expect("reads");
    assert!(matches!(welcome, Some(NodeFrame::Welcome(_))), "{welcome:?}");
    Greeted { connection, endpoint, control: (send, reader) }
}

/// A client frame, encoded for writing by hand.
pub fn encoded(frame: &ClientFrame) -> Vec<u8> {
    codec::encode(frame, 1 << 20).expect("encodes").to_vec()
}

/// The next frame on a raw stream, failing the test after [`PATIENCE`].
pub async fn next_frame(reader: &mut FrameReader<quinn::RecvStream>) -> Option<NodeFrame> {
    tokio::time::timeout(PATIENCE, reader.read::<NodeFrame>())
        .await
        .expect("in time")
        .expect("a frame")
}

/// Reads a join's answer on a raw room stream: `Joined`, its page of history and
/// `HistoryEnd`, failing the test on anything else.
pub async fn expect_joined(reader: &mut FrameReader<quinn::RecvStream>) {
    assert!(matches!(next_frame(reader).await, Some(NodeFrame::Joined { .. })));
    loop {
        match next_frame(reader).await {
            Some(NodeFrame::Message(_)) => {}
            Some(NodeFrame::HistoryEnd(_)) => return,
            other => panic!("expected the join's history and its end, got {other:?}"),
        }
    }
}

/// An interactive `chat --json` in room general, fed through a pipe, once it has joined.
pub fn joined_chat(node: &NodeProcess, name: &str) -> (Child, mpsc::Receiver<String>) {
    let mut child = node
        .chat(name, &["--room", "general", "--json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("chat starts");
    let events = spawn_line_reader(child.stdout.take().expect("stdout"));
    wait_for(&events, "the join", |e| e["event"] == "joined");
    (child, events)
}

/// Types `count` numbered lines (`typed line 01`, ...) into `tmux` in one burst, and checks
/// that a member reading `events` (a `chat --json`) got each from `sender` once, in order.
/// Returns the lines.
pub fn type_a_burst(
    tmux: &Tmux,
    events: &mpsc::Receiver<String>,
    sender: &str,
    count: usize,
) -> Vec<String> {
    let lines: Vec<String> = (1..=count).map(|i| format!("typed line {i:02}")).collect();
    let mut keys = Vec::new();
    for line in &lines {
        keys.extend([line.as_str(), "Enter"]);
    }
    tmux.send_keys(&keys);
    let mut seen = Vec::new();
    while seen.len() < lines.len() {
        let got = wait_for(events, "the typed lines", |e| {
            e["event"] == "message" && e["sender"] == sender
        });
        seen.push(got["body"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(seen, lines, "every line once, in the order typed");
    lines
}

/// JSON events from a `chat --json` process, until one matches.
pub fn wait_for(
    events: &mpsc::Receiver<String>,
    what: &str,
    matches: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    loop {
        let line = events.recv_timeout(PATIENCE).unwrap_or_else(|_| panic!("no {what} in time"));
        let event: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON: {line}: {e}"));
        if matches(&event) {
            return event;
        }
    }
}

/// The JSON events of a `chat --json` run's output that have this `event` kind.
pub fn events_of(stdout: &[u8], kind: &str) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["event"] == kind)
        .collect()
}

/// A program running in a detached tmux session on a terminal of its own: keys typed with
/// `send-keys`, the screen read with `capture-pane`. Each has its own tmux server, ended on
/// drop.
pub struct Tmux {
    socket: String,
}

impl Tmux {
    /// Starts `command` (a program and its arguments) on a `width` x `height` terminal.
    pub fn start(command: &Command, width: u16, height: u16) -> Self {
        Self::start_line(&command_line(command), width, height)
    }

    /// Starts `command` as [`Tmux::start`] does; once it exits, the terminal shows
    /// `exited CODE` and the terminal's modes as `stty -a` prints them, to check what the
    /// program gave back.
    pub fn start_reporting_exit(command: &Command, width: u16, height: u16) -> Self {
        let line = format!("{}; echo \"exited $?\"; stty -a; sleep 3600", command_line(command));
        Self::start_line(&line, width, height)
    }

    fn start_line(line: &str, width: u16, height: u16) -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        ensure_tmux();
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmux = Self { socket: format!("chat-test-{}-{n}", std::process::id()) };
        let (width, height) = (width.to_string(), height.to_string());
        tmux.run(&["new-session", "-d", "-s", "chat", "-x", &width, "-y", &height, line]);
        tmux
    }

    /// Runs a tmux command against this session's server.
    pub fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .args(["-L", &self.socket, "-f", "/dev/null"])
            .args(args)
            .output()
            .expect("tmux runs")
    }

    /// Types `keys` in one burst (tmux key names such as `Enter`, or literal text).
    pub fn send_keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "chat"];
        args.extend_from_slice(keys);
        let sent = self.run(&args);
        assert!(sent.status.success(), "send-keys: {}", String::from_utf8_lossy(&sent.stderr));
    }

    /// The screen's text, a row per line.
    pub fn screen(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-t", "chat"]).stdout)
            .into_owned()
    }

    /// Waits until the screen satisfies `ready`, failing the test after [`PATIENCE`].
    pub fn wait_for_screen(&self, what: &str, ready: impl Fn(&str) -> bool) -> String {
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            let screen = self.screen();
            if ready(&screen) {
                return screen;
            }
            assert!(std::time::Instant::now() < deadline, "no {what} on the screen:\n{screen}");
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Resizes the terminal, as a person dragging the window's edge does.
    pub fn resize(&self, width: u16, height: u16) {
        let (width, height) = (width.to_string(), height.to_string());
        let resized = self.run(&["resize-window", "-t", "chat", "-x", &width, "-y", &height]);
        assert!(resized.status.success(), "resize: {}", String::from_utf8_lossy(&resized.stderr));
    }

    /// Whether the program is still running (its session ends with it).
    pub fn running(&self) -> bool {
        self.run(&["has-session", "-t", "chat"]).status.success()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

/// `command` as a shell line, its environment included: `env K=V program args`.
fn command_line(command: &Command) -> String {
    let mut line = vec!["env".to_owned()];
    for (key, value) in command.get_envs() {
        if let Some(value) = value {
            let mut pair = key.to_os_string();
            pair.push("=");
            pair.push(value);
            line.push(shell_quote(pair.as_os_str()));
        }
    }
    line.push(shell_quote(command.get_program()));
    line.extend(command.get_args().map(shell_quote));
    line.join(" ")
}

fn shell_quote(word: &std::ffi::OsStr) -> String {
    format!("'{}'", word.to_string_lossy().replace('\'', r"'\''"))
}

/// Installs tmux with apt-get when it is not there (as on a fresh CI machine).
fn ensure_tmux() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| ensure_program("tmux", "-V", "tmux"));
}

/// Installs Debian's `package` with apt-get when `program` (run with `version_arg`) is not
/// there, as on a fresh CI machine; fails the test if it cannot.
pub fn ensure_program(program: &str, version_arg: &str, package: &str) {
    let have = || Command::new(program).arg(version_arg).output().is_ok_and(|o| o.status.success());
    if have() {
        return;
    }
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    if !apt(&["install", "-y", "-q", package]) {
        apt(&["update", "-q"]);
        apt(&["install", "-y", "-q", package]);
    }
    assert!(have(), "the tests need {program}, and apt-get could not install {package}");
}
