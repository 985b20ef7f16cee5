//! `chat-bench fanout`: the time from a publisher's send to the receipt at every member,
//! against a release `chat-node` process (durable history) and, with `--floor`, against the
//! bare QUIC relay driven by the same harness.
//!
//! Members and publisher live in this process, so one clock times every delivery: each body
//! starts with the send time and the message's number, which also finds lost and duplicated
//! deliveries. The publisher sends open-loop at `--rate` messages a second (message `n` to
//! room `n % rooms`), or with `--window` as fast as acks allow with that many unacknowledged.
//!
//! Before the clock starts, one warm-up message goes to every room and every member waits for
//! it: the first delivery to each member costs the harness fresh memory (page faults across a
//! thousand members took both cores for a third of a second) and the server its first
//! buffers. Runs measure the steady state, and the node and the floor start equally warm.
//!
//! # Layout
//! - this file: the scenarios, and a run against the node, the floor or the cluster;
//! - `members`: the members and the publisher, and the measurement of every delivery;
//! - `outcome`: what a run measured, printed, and the median of several runs.

use std::time::{Duration, Instant};

use anyhow::bail;
use chat_client::{Client, ConnectOptions, RoomEvent, Trust};
use indicatif::{ProgressBar, ProgressStyle};

use crate::process::{self, ServerProcess};
use crate::relay;

mod members;
mod outcome;

use members::{Member, Publisher, Subscription, measure};
pub use outcome::{Outcome, median_run};

/// Width of the send time (ns since the run's start) and of the message number in a body.
const STAMP: usize = 20;
const NUMBER: usize = 10;
/// How long a member waits for a message before counting the rest lost.
const QUIET: Duration = Duration::from_secs(10);
/// The message number of the warm-up message, which is not counted.
const WARM_UP: u64 = 10u64.pow(NUMBER as u32) - 1;
/// Latencies above this (µs) are recorded as this: the histograms are sized once, up front.
const MAX_LATENCY_US: u64 = 60_000_000;

#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    pub members: usize,
    pub rooms: usize,
    pub messages: usize,
    pub size: usize,
    /// Messages per second, open loop; `None` saturates with `window` in flight.
    pub rate: Option<u64>,
    pub window: usize,
    /// Extra members of the first room that never read (node only).
    pub stalled: usize,
    /// Progress bars on stderr while connecting and sending (when it is a terminal).
    pub progress: bool,
    /// The node's members go through the client library rather than speaking the protocol
    /// by hand, to measure what the library costs a member.
    pub library: bool,
}

impl Scenario {
    /// A short name for files and titles: `100m-1r-100B-1000ps`, or `...-w1000` saturated.
    pub fn name(&self) -> String {
        let pace = self.rate.map_or(format!("w{}", self.window), |rate| format!("{rate}ps"));
        format!("{}m-{}r-{}B-{pace}", self.members, self.rooms, self.size)
    }

    fn at_rate(members: usize, rooms: usize, messages: usize, size: usize, rate: u64) -> Self {
        Self {
            members,
            rooms,
            messages,
            size,
            rate: Some(rate),
            window: 0,
            stalled: 0,
            progress: true,
            library: false,
        }
    }
}

/// The scenarios of `chat-bench matrix`, each with whether to run the floor beside it.
pub fn matrix() -> Vec<(Scenario, bool)> {
    vec![
        (Scenario::at_rate(1, 1, 5000, 100, 1000), true),
        (Scenario::at_rate(10, 1, 5000, 100, 1000), true),
        (Scenario::at_rate(100, 1, 5000, 100, 1000), true),
        (Scenario::at_rate(100, 1, 5000, 1024, 1000), true),
        (Scenario::at_rate(1000, 1, 500, 100, 100), true),
        (Scenario::at_rate(10, 100, 5000, 100, 1000), true),
        (Scenario { rate: None, window: 1000, ..Scenario::at_rate(100, 1, 20_000, 100, 0) }, false),
    ]
}

/// Runs `scenario` against a fresh `chat-node` process, with `node_args` added to its flags.
pub async fn node(scenario: Scenario, node_args: &[String]) -> anyhow::Result<Outcome> {
    let dir = tempfile::tempdir()?;
    let rooms: Vec<String> = (0..scenario.rooms).map(|r| format!("bench{r}")).collect();
    let max_rooms = (scenario.rooms + 1).to_string();
    let flags = ["--max-rooms-per-connection", &max_rooms];
    let server = process::node(dir.path(), &rooms, &flags, node_args)?;
    let options = |name: String| process::node_options(&server.addr, dir.path(), name);
    process::wait_until_up(&options("probe".into())).await?;

    let mut subscriptions = Vec::new();
    let bar = progress(&scenario, scenario.members * scenario.rooms, "node: joining");
    for i in 0..scenario.members * scenario.rooms {
        let room = i % scenario.rooms;
        let options = options(format!("member{i}"));
        let subscription = if scenario.library {
            let client = Client::connect(options).await?;
            let room = Box::new(client.join(&rooms[room], None).await?);
            Subscription::Library { _client: Box::new(client), room }
        } else {
            Subscription::Node(Box::new(Member::join(&options, &rooms[room]).await?))
        };
        subscriptions.push((room, subscription));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let mut stalled = Vec::new();
    for i in 0..scenario.stalled {
        let client = Client::connect(options(format!("stalled{i}"))).await?;
        let joined = client.join(&rooms[0], None).await?;
        stalled.push((client, joined));
    }
    let client = Client::connect(options("publisher".into())).await?;
    let mut senders = Vec::new();
    for room in &rooms {
        senders.push(client.join(room, Some(u64::MAX)).await?.sender());
    }
    let publisher = Publisher::Node { _client: Box::new(client), senders };
    let outcome = measure("node", &[server.pid()], subscriptions, publisher, scenario).await?;
    if scenario.stalled > 0 {
        let mut dropped = 0;
        for (_client, mut room) in stalled {
            // What it has buffered, then the error that dropped it, if it was dropped.
            let quiet = Duration::from_secs(2);
            while let Ok(Some(event)) = tokio::time::timeout(quiet, room.next()).await {
                if let RoomEvent::Error(_) = event {
                    dropped += 1;
                    break;
                }
            }
        }
        println!("stalled members: {}, dropped as too slow: {dropped}", scenario.stalled);
    }
    Ok(outcome)
}

/// Runs `scenario` against a fresh relay process: the floor.
pub async fn floor(scenario: Scenario) -> anyhow::Result<Outcome> {
    anyhow::ensure!(scenario.rate.is_some(), "the floor has no acks to pace a window: use --rate");
    let dir = tempfile::tempdir()?;
    let server = process::relay(dir.path())?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !dir.path().join("ca.pem").exists() {
        anyhow::ensure!(Instant::now() < deadline, "the relay did not come up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let addr: std::net::SocketAddr = server.addr.parse()?;
    // Each client binds its own socket, as the node's do (and as users' would).
    let connect = || async {
        let endpoint = relay::client(dir.path())?;
        for _ in 0..100 {
            if let Ok(connection) = endpoint.connect(addr, "localhost")?.await {
                return Ok(connection);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("the relay did not answer")
    };

    let mut subscriptions = Vec::new();
    let bar = progress(&scenario, scenario.members * scenario.rooms, "floor: joining");
    for i in 0..scenario.members * scenario.rooms {
        let room = i % scenario.rooms;
        let connection = connect().await?;
        let (send, recv) = relay::open(&connection, relay::SUBSCRIBE, room as u32).await?;
        subscriptions
            .push((room, Subscription::Floor { _connection: connection, _send: send, recv }));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let connection = connect().await?;
    let mut streams = Vec::new();
    for room in 0..scenario.rooms {
        streams.push(relay::open(&connection, relay::PUBLISH, room as u32).await?.0);
    }
    // Subscriptions exist once their header has arrived: give the relay a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let publisher = Publisher::Floor { _connection: connection, streams };
    measure("floor", &[server.pid()], subscriptions, publisher, scenario).await
}

/// Runs `scenario` against two `chat-node` processes in cluster mode on a three-server NATS
/// cluster (history replicated three times). Members alternate between the nodes; the
/// publisher is on the first. The CPU and memory are those of all five processes.
pub async fn cluster(scenario: Scenario, node_args: &[String]) -> anyhow::Result<Outcome> {
    let dir = tempfile::tempdir()?;
    let install_dir = std::env::current_exe()?.with_file_name("..").join("nats-server");
    let nats = chat_cluster::local::LocalNats::start(3, &install_dir)?;
    let files = chat_certs::ensure_node_files(&dir.path().join("certs"), &[])?;
    let rooms: Vec<String> = (0..scenario.rooms).map(|r| format!("bench{r}")).collect();
    let max_rooms = (scenario.rooms + 1).to_string();
    let (cert, key) = (files.node_cert.display().to_string(), files.node_key.display().to_string());
    let flags = [
        "--nats",
        &nats.urls(),
        "--replicas",
        "3",
        "--cert",
        &cert,
        "--key",
        &key,
        "--max-rooms-per-connection",
        &max_rooms,
    ];
    let mut nodes = Vec::new();
    for i in 0..2 {
        let data_dir = dir.path().join(format!("node{i}"));
        nodes.push(process::node(&data_dir, &rooms, &flags, node_args)?);
    }
    let options = |node: usize, name: String| {
        ConnectOptions::new(&nodes[node].addr, name, Trust::CaFile(files.ca_cert.clone()))
    };
    for node in 0..2 {
        process::wait_until_up(&options(node, format!("probe{node}"))).await?;
    }

    let mut subscriptions = Vec::new();
    let bar = progress(&scenario, scenario.members * scenario.rooms, "cluster: joining");
    for i in 0..scenario.members * scenario.rooms {
        let room = i % scenario.rooms;
        let member = Member::join(&options(i % 2, format!("member{i}")), &rooms[room]).await?;
        subscriptions.push((room, Subscription::Node(Box::new(member))));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let client = Client::connect(options(0, "publisher".into())).await?;
    let mut senders = Vec::new();
    for room in &rooms {
        senders.push(client.join(room, Some(u64::MAX)).await?.sender());
    }
    let publisher = Publisher::Node { _client: Box::new(client), senders };
    let pids: Vec<u32> = nodes.iter().map(ServerProcess::pid).chain(nats.pids()).collect();
    measure("cluster", &pids, subscriptions, publisher, scenario).await
}

/// A progress bar of `len` steps on stderr; hidden unless the scenario shows progress and
/// stderr is a terminal.
fn progress(scenario: &Scenario, len: usize, what: &str) -> ProgressBar {
    if !scenario.progress {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template("{msg:>18} [{bar:40}] {pos}/{len} {elapsed}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    ProgressBar::new(len as u64).with_style(style).with_message(what.to_owned())
}

/// The minimum body: the send time and the message number.
pub const MIN_SIZE: usize = STAMP + NUMBER;

pub fn check(scenario: &Scenario) -> anyhow::Result<()> {
    if scenario.size < MIN_SIZE {
        bail!(
            "--size must be at least {MIN_SIZE} bytes (the send time and number travel in the body)"
        );
    }
    anyhow::ensure!(
        scenario.rooms > 0 && scenario.members > 0,
        "--rooms and --members must be positive"
    );
    Ok(())
}
