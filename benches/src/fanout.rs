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

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chat_client::{Client, ConnectOptions, RoomEvent, RoomSender, Trust};
use chat_proto::io::FrameReader;
use chat_proto::{ClientFrame, NodeFrame, codes};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::io::AsyncReadExt;
use tokio::task::JoinSet;

use crate::connections::request;
use crate::process::{self, ServerProcess};
use crate::relay;

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

/// What one run measured.
pub struct Outcome {
    pub target: &'static str,
    pub latency_us: Histogram<u64>,
    pub deliveries: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub seconds: f64,
    pub cpu_seconds: f64,
    pub peak_rss_kib: u64,
    /// Time during the run in which some task on the machine (the node's syncs included)
    /// waited for the disk, in ms: far more than the node's own syncs take says the disk
    /// stalled, and then a tail in the node's latency is the disk's.
    pub io_stall_ms: Option<f64>,
}

impl Outcome {
    /// p50, p90, p99, p99.9 and max, in µs.
    fn percentiles(&self) -> [u64; 5] {
        let h = &self.latency_us;
        let q = |q| h.value_at_quantile(q);
        [q(0.5), q(0.9), q(0.99), q(0.999), h.max()]
    }

    fn deliveries_per_second(&self) -> f64 {
        self.deliveries as f64 / self.seconds
    }

    pub fn print(&self) {
        let [p50, p90, p99, p999, max] = self.percentiles();
        let stalls = self
            .io_stall_ms
            .map_or(String::new(), |ms| format!("; waiting on the disk {ms:.0} ms"));
        println!(
            "{:>6}: p50 {p50} µs, p90 {p90}, p99 {p99}, p99.9 {p999}, max {max}; {:.0} deliveries/s; \
             lost {}, duplicated {}; server CPU {:.2} s ({:.2} µs per delivery), peak memory {:.1} MiB{stalls}",
            self.target,
            self.deliveries_per_second(),
            self.lost,
            self.duplicated,
            self.cpu_seconds,
            self.cpu_seconds * 1e6 / self.deliveries.max(1) as f64,
            self.peak_rss_kib as f64 / 1024.0,
        );
    }

    pub fn json(&self, scenario: &Scenario) -> serde_json::Value {
        let [p50, p90, p99, p999, max] = self.percentiles();
        serde_json::json!({
            "target": self.target,
            "members": scenario.members,
            "rooms": scenario.rooms,
            "messages": scenario.messages,
            "size": scenario.size,
            "rate": scenario.rate,
            "window": scenario.rate.is_none().then_some(scenario.window),
            "p50_us": p50, "p90_us": p90, "p99_us": p99, "p999_us": p999, "max_us": max,
            "deliveries_per_s": self.deliveries_per_second().round(),
            "lost": self.lost,
            "duplicated": self.duplicated,
            "cpu_s": self.cpu_seconds,
            "peak_rss_kib": self.peak_rss_kib,
            "io_stall_ms": self.io_stall_ms,
        })
    }
}

/// Of several runs, the one whose p99 is the median (the lower middle one of an even count).
pub fn median_run(mut runs: Vec<Outcome>) -> Option<Outcome> {
    runs.sort_by_key(|run| run.latency_us.value_at_quantile(0.99));
    let middle = runs.len().checked_sub(1)? / 2;
    Some(runs.swap_remove(middle))
}

/// Runs `scenario` against a fresh `chat-node` process, with `node_args` added to its flags.
pub async fn node(scenario: Scenario, node_args: &[String]) -> anyhow::Result<Outcome> {
    let dir = tempfile::tempdir()?;
    let rooms: Vec<String> = (0..scenario.rooms).map(|r| format!("bench{r}")).collect();
    let max_rooms = (scenario.rooms + 1).to_string();
    let flags = ["--max-rooms-per-connection", &max_rooms];
    let server = ServerProcess::node(dir.path(), &rooms, &flags, node_args)?;
    let options = |name: String| process::node_options(&server.addr, dir.path(), name);
    process::wait_until_up(&options("probe".into())).await?;

    let mut subscriptions = Vec::new();
    let bar = progress(&scenario, scenario.members * scenario.rooms, "node: joining");
    for i in 0..scenario.members * scenario.rooms {
        let room = i % scenario.rooms;
        let member = Member::join(&options(format!("member{i}")), &rooms[room]).await?;
        subscriptions.push((room, Subscription::Node(Box::new(member))));
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
    let server = ServerProcess::relay(dir.path())?;
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
        nodes.push(ServerProcess::node(&data_dir, &rooms, &flags, node_args)?);
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

/// One member's stream of message bodies.
enum Subscription {
    Node(Box<Member>),
    Floor { _connection: quinn::Connection, _send: quinn::SendStream, recv: quinn::RecvStream },
}

impl Subscription {
    async fn next(&mut self) -> Option<Vec<u8>> {
        match self {
            Self::Node(member) => loop {
                match member.room.read::<NodeFrame>().await.ok()?? {
                    NodeFrame::Message(message) => return Some(message.body.into_bytes()),
                    NodeFrame::Error(_) => return None,
                    _ => {}
                }
            },
            Self::Floor { recv, .. } => {
                let len = recv.read_u32().await.ok()? as usize;
                let mut body = vec![0; len];
                recv.read_exact(&mut body).await.ok()?;
                Some(body)
            }
        }
    }
}

/// A member of a node's room that speaks the protocol by hand, on a socket of its own, so
/// that its receive task reads the stream itself, as the floor's members do. (The client
/// library's reader task hands each message on to the program through a channel: with a
/// hundred members on two cores, that second hop doubled the harness's queueing in the node's
/// runs alone.)
struct Member {
    _endpoint: quinn::Endpoint,
    _connection: quinn::Connection,
    _streams: [quinn::SendStream; 2],
    _control: FrameReader<quinn::RecvStream>,
    room: FrameReader<quinn::RecvStream>,
}

impl Member {
    /// Connects as `options.name`, says hello and joins `room`.
    async fn join(options: &ConnectOptions, room: &str) -> anyhow::Result<Self> {
        let endpoint = chat_client::quic_endpoint(
            &options.trust,
            codes::ALPN,
            "127.0.0.1:0".parse()?,
            quinn::TransportConfig::default(),
        )?;
        let addr: std::net::SocketAddr = options.server.parse()?;
        let connection = endpoint.connect(addr, "localhost")?.await?;
        let hello = ClientFrame::Hello { name: options.name.clone(), resume: None };
        let (control_send, control) = request(&connection, &hello).await?;
        let join = ClientFrame::Join { room: room.to_owned(), after: None };
        let (room_send, room) = request(&connection, &join).await?;
        Ok(Self {
            _endpoint: endpoint,
            _connection: connection,
            _streams: [control_send, room_send],
            _control: control,
            room,
        })
    }
}

enum Publisher {
    Node { _client: Box<Client>, senders: Vec<RoomSender> },
    Floor { _connection: quinn::Connection, streams: Vec<quinn::SendStream> },
}

impl Publisher {
    /// Sends `body` to `room`; for the node, the task that resolves with its ack.
    async fn send(
        &mut self,
        room: usize,
        body: String,
    ) -> anyhow::Result<Option<tokio::task::JoinHandle<Result<u64, chat_client::ClientError>>>>
    {
        match self {
            Self::Node { senders, .. } => {
                Ok(Some(tokio::spawn(senders[room].send_unchecked(body).await?)))
            }
            Self::Floor { streams, .. } => {
                let mut frame = Vec::with_capacity(4 + body.len());
                frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
                frame.extend_from_slice(body.as_bytes());
                streams[room].write_all(&frame).await?;
                Ok(None)
            }
        }
    }
}

/// Publishes, collects every member's latencies and counts, and reads the costs of the server
/// processes `pids`.
async fn measure(
    target: &'static str,
    pids: &[u32],
    subscriptions: Vec<(usize, Subscription)>,
    mut publisher: Publisher,
    scenario: Scenario,
) -> anyhow::Result<Outcome> {
    let start = Instant::now();
    let padding = "x".repeat(scenario.size.saturating_sub(STAMP + NUMBER));
    let (warm, mut warmed) = tokio::sync::mpsc::channel(1);
    let mut members = JoinSet::new();
    let count = subscriptions.len();
    for (room, subscription) in subscriptions {
        members.spawn(receive(subscription, room, scenario, start, warm.clone()));
    }
    drop(warm);
    for room in 0..scenario.rooms {
        let body = format!("{:0STAMP$}{WARM_UP:0NUMBER$}{padding}", 0);
        if let Some(ack) = publisher.send(room, body).await? {
            ack.await??;
        }
    }
    for _ in 0..count {
        warmed.recv().await.context("a member ended before its warm-up message")?;
    }

    let cpu = || pids.iter().map(|pid| process::cpu_seconds(*pid)).sum::<anyhow::Result<f64>>();
    let cpu_before = cpu()?;
    let stalls_before = process::io_stall_us();
    let began = Instant::now();
    let mut in_flight = std::collections::VecDeque::new();
    let bar = progress(&scenario, scenario.messages, &format!("{target}: sending"));
    for n in 0..scenario.messages {
        bar.inc(1);
        match scenario.rate {
            Some(rate) => {
                let due = began + Duration::from_secs_f64(n as f64 / rate.max(1) as f64);
                tokio::time::sleep_until(due.into()).await;
            }
            None => {
                while in_flight.len() >= scenario.window.max(1) {
                    let ack: tokio::task::JoinHandle<_> =
                        in_flight.pop_front().context("a window")?;
                    ack.await??;
                }
            }
        }
        let body = format!("{:0STAMP$}{n:0NUMBER$}{padding}", start.elapsed().as_nanos() as u64);
        if let Some(ack) = publisher.send(n % scenario.rooms, body).await? {
            in_flight.push_back(ack);
        }
    }
    for ack in in_flight {
        ack.await??;
    }
    bar.finish_and_clear();
    let mut outcome = Outcome {
        target,
        latency_us: latency_histogram()?,
        deliveries: 0,
        lost: 0,
        duplicated: 0,
        seconds: 0.0,
        cpu_seconds: 0.0,
        peak_rss_kib: 0,
        io_stall_ms: None,
    };
    let mut last_receipt = began;
    let mut finished = Vec::with_capacity(count);
    while let Some(member) = members.join_next().await {
        let (member, subscription) = member??;
        finished.push(subscription);
        outcome.latency_us.add(&member.latency_us)?;
        outcome.deliveries += member.deliveries;
        outcome.lost += member.lost;
        outcome.duplicated += member.duplicated;
        last_receipt = last_receipt.max(member.last_receipt);
    }
    outcome.seconds = (last_receipt - began).as_secs_f64().max(1e-6);
    outcome.cpu_seconds = cpu()? - cpu_before;
    outcome.io_stall_ms = stalls_before
        .zip(process::io_stall_us())
        .map(|(before, after)| after.saturating_sub(before) as f64 / 1000.0);
    for pid in pids {
        outcome.peak_rss_kib += process::memory_kib(*pid)?.1;
    }
    drop(publisher);
    Ok(outcome)
}

/// What one member saw.
struct Received {
    latency_us: Histogram<u64>,
    deliveries: u64,
    lost: u64,
    duplicated: u64,
    /// When the last message arrived (not counting a wait for lost ones).
    last_receipt: Instant,
}

fn latency_histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)?)
}

/// Reads a member's messages until it has every one sent to its room, or none comes for
/// `QUIET`. The warm-up message is only reported on `warm`. Returns the subscription to be
/// closed once every member is done: a member that closed while others still receive would
/// put the server's and the harness's teardown work into the last messages' latency.
async fn receive(
    mut subscription: Subscription,
    room: usize,
    scenario: Scenario,
    start: Instant,
    warm: tokio::sync::mpsc::Sender<()>,
) -> anyhow::Result<(Received, Subscription)> {
    let expected: Vec<usize> = (room..scenario.messages).step_by(scenario.rooms).collect();
    let mut seen = vec![0u32; scenario.messages];
    let mut received = Received {
        latency_us: latency_histogram()?,
        deliveries: 0,
        lost: 0,
        duplicated: 0,
        last_receipt: start,
    };
    // The warm-up message comes first, while the publisher waits for every member to have it.
    let first = tokio::time::timeout(QUIET, subscription.next()).await;
    let Ok(Some(body)) = first else { bail!("no warm-up message within {QUIET:?}") };
    anyhow::ensure!(stamp_and_number(&body)?.1 == WARM_UP, "a message before the warm-up");
    warm.send(()).await?;
    // So that the publisher hears of a member that failed before its warm-up, once every
    // other member has reported.
    drop(warm);
    let mut unique = 0;
    while unique < expected.len() {
        let Ok(Some(body)) = tokio::time::timeout(QUIET, subscription.next()).await else { break };
        received.last_receipt = Instant::now();
        let now = (received.last_receipt - start).as_nanos() as u64;
        let (sent, n) = stamp_and_number(&body)?;
        received.latency_us.saturating_record(now.saturating_sub(sent) / 1000);
        received.deliveries += 1;
        let count = seen.get_mut(n as usize).context("a message number out of range")?;
        *count += 1;
        if *count == 1 {
            unique += 1;
        } else {
            received.duplicated += 1;
        }
    }
    received.lost = (expected.len() - unique) as u64;
    Ok((received, subscription))
}

/// The send time (ns after the run's start) and the message number at the head of a body.
fn stamp_and_number(body: &[u8]) -> anyhow::Result<(u64, u64)> {
    let field = |range: std::ops::Range<usize>| -> anyhow::Result<u64> {
        let text = body.get(range).context("a short body")?;
        Ok(std::str::from_utf8(text)?.parse()?)
    };
    Ok((field(0..STAMP)?, field(STAMP..STAMP + NUMBER)?))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn run(p99_us: u64) -> Outcome {
        let mut latency_us = Histogram::new(3).expect("histogram");
        latency_us.record(p99_us).expect("recorded");
        Outcome {
            target: "node",
            latency_us,
            deliveries: 1,
            lost: 0,
            duplicated: 0,
            seconds: 1.0,
            cpu_seconds: 0.0,
            peak_rss_kib: 0,
            io_stall_ms: None,
        }
    }

    #[test]
    fn the_median_run_is_the_middle_p99() {
        let p99 = |runs: Vec<u64>| {
            median_run(runs.into_iter().map(run).collect()).map(|o| o.latency_us.max())
        };
        assert_eq!(p99(vec![500, 100, 300]), Some(300));
        assert_eq!(p99(vec![400, 100, 300, 200]), Some(200), "the lower middle of four");
        assert_eq!(p99(vec![700]), Some(700));
        assert_eq!(p99(vec![]), None);
    }
}
