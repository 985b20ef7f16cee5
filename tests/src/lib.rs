//! Helpers for the end-to-end tests: a node on a loopback port with its history in a
//! temporary directory, clients that trust it, and the paths of the built programs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chat_client::{Client, ConnectOptions, Room, RoomEvent, Trust};
use chat_node::{Node, NodeConfig, Settings};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long a test waits for something that should happen at once.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A node running in this process.
pub struct TestNode {
    pub addr: std::net::SocketAddr,
    pub ca: PathBuf,
    pub data_dir: PathBuf,
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
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(node.run(async {
            let _ = stopped.await;
        }));
        Self { addr, ca, data_dir: data_dir.to_path_buf(), _owned_dir: None, stop, task }
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

/// The next message event in `room`, failing the test after [`PATIENCE`].
pub async fn next_message(room: &mut Room) -> (chat_client::ChatMessage, bool) {
    match tokio::time::timeout(PATIENCE, room.next()).await {
        Ok(Some(RoomEvent::Message { message, history })) => (message, history),
        other => panic!("expected a message in {}, got {other:?}", room.name()),
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
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the programs first (`cargo build --workspace --bins`)",
        path.display()
    );
    path
}

/// A bare QUIC connection to `node` speaking `alpn`, for talking the protocol by hand.
///
/// # Errors
/// The handshake failed.
pub async fn raw_connection(
    node: &TestNode,
    alpn: &[u8],
) -> Result<(quinn::Connection, quinn::Endpoint), quinn::ConnectionError> {
    let tls = chat_certs::client_config(&Trust::CaFile(node.ca.clone()), alpn).expect("tls");
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic tls");
    let mut endpoint =
        quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
    endpoint.set_default_client_config(quinn::ClientConfig::new(std::sync::Arc::new(crypto)));
    let connection = endpoint.connect(node.addr, "localhost").expect("connect").await?;
    Ok((connection, endpoint))
}
