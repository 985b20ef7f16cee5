//! `chat-bench requests`: a connection that joins as fast as it can, against a bystander.
//!
//! A release `chat-node` with `general` holding `--history` messages. A bystander member of
//! `general` sends 50 messages a second and times each from its send to its own copy coming
//! back. Three phases of `--seconds` each: quiet; a flood with the node's request budget off
//! (`--requests-per-second 0`: how many joins one connection can make the node do, and what
//! each costs it); and the same flood against the default budget, where the flooder, speaking
//! the protocol by hand, ignores `SlowDown`, is closed, and tries to connect again at once
//! (its address is barred for `rate_limited_bar_secs`). Each join
//! is a fresh `Join` (the newest page of 50) read to its `HistoryEnd`, then the stream closed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chat_client::{Client, RoomEvent};
use chat_proto::io::{FrameReader, write_frame};
use chat_proto::{ClientFrame, NodeFrame, codec, codes};
use hdrhistogram::Histogram;

use crate::process::{self, ServerProcess};

/// Joins in flight at once on the flooding connection, each on its own stream.
const IN_FLIGHT: usize = 16;
/// The bystander's sends per second.
const BYSTANDER_RATE: u64 = 50;

pub async fn run(history: usize, seconds: f64) -> anyhow::Result<()> {
    let phase = Duration::from_secs_f64(seconds);
    println!(
        "requests: {IN_FLIGHT} rooms of {history} messages; a bystander in the first sends \
         {BYSTANDER_RATE}/s; {seconds} s per phase; the flood keeps a join in flight in each room"
    );
    let rooms: Vec<String> = (0..IN_FLIGHT).map(|i| format!("r{i}")).collect();
    for (label, flags) in
        [("no budget", &["--requests-per-second", "0"][..]), ("default budget", &[])]
    {
        let dir = tempfile::tempdir()?;
        let server = process::node(dir.path(), &rooms, flags, &[])?;
        let options = process::node_options(&server.addr, dir.path(), "bystander".into());
        process::wait_until_up(&options).await?;
        fill(&server, dir.path(), &rooms, history).await?;
        let bystander = Client::connect(options).await?;
        let mut room = bystander.join(&rooms[0], Some(u64::MAX)).await?;
        if label == "no budget" {
            measure(&mut room, &server, phase, None).await?.print("quiet");
        }
        let flood = Flood::start(&server, dir.path(), rooms.clone());
        let outcome = measure(&mut room, &server, phase, Some(&flood)).await?;
        flood.stop();
        outcome.print(&format!("join flood, {label}"));
    }
    Ok(())
}

/// Stores `count` messages in each of `rooms`.
async fn fill(
    server: &ServerProcess,
    dir: &std::path::Path,
    rooms: &[String],
    count: usize,
) -> anyhow::Result<()> {
    let client = Client::connect(process::node_options(&server.addr, dir, "filler".into())).await?;
    for room in rooms {
        let sender = client.join(room, Some(u64::MAX)).await?.sender();
        let mut acks = Vec::with_capacity(count);
        for i in 0..count {
            acks.push(sender.post(format!("history message {i} of the bench's room")).await?);
        }
        for ack in acks {
            ack.acked().await?;
        }
    }
    client.close().await;
    Ok(())
}

/// What a phase measured.
struct Phase {
    latency_us: Histogram<u64>,
    joins: u64,
    refused: u64,
    closed: u64,
    seconds: f64,
    cpu: f64,
}

impl Phase {
    fn print(&self, label: &str) {
        let q = |q| self.latency_us.value_at_quantile(q) as f64 / 1000.0;
        print!(
            "{label}: bystander p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} sends); node CPU {:.0}%",
            q(0.5),
            q(0.99),
            self.latency_us.max() as f64 / 1000.0,
            self.latency_us.len(),
            self.cpu * 100.0 / self.seconds
        );
        if self.joins + self.refused > 0 {
            print!(
                "; {:.0} joins/s served ({:.0} µs of node CPU each, refusals included), {:.0} \
                 refused/s, {} connections closed or refused",
                self.joins as f64 / self.seconds,
                self.cpu * 1e6 / self.joins.max(1) as f64,
                self.refused as f64 / self.seconds,
                self.closed
            );
        }
        println!();
    }
}

/// Times the bystander's own messages for `length` while `flood` (if any) runs.
async fn measure(
    room: &mut chat_client::Room,
    server: &ServerProcess,
    length: Duration,
    flood: Option<&Flood>,
) -> anyhow::Result<Phase> {
    let sender = room.sender();
    let cpu_before = server.cpu_seconds()?;
    let counted = flood.map(Flood::counts).unwrap_or_default();
    let began = Instant::now();
    let mut latency_us = Histogram::<u64>::new(3)?;
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / BYSTANDER_RATE));
    let mut sent: std::collections::HashMap<String, Instant> = std::collections::HashMap::new();
    let mut n = 0u64;
    while began.elapsed() < length {
        tokio::select! {
            _ = tick.tick() => {
                n += 1;
                let body = format!("bystander {n}");
                sent.insert(body.clone(), Instant::now());
                drop(sender.post(body).await?);
            }
            event = room.next() => match event {
                Some(RoomEvent::Message { message, .. }) => {
                    if let Some(at) = sent.remove(&message.body) {
                        latency_us.record(at.elapsed().as_micros() as u64)?;
                    }
                }
                Some(_) => {}
                None => anyhow::bail!("the bystander's room ended"),
            }
        }
    }
    let seconds = began.elapsed().as_secs_f64();
    let cpu = server.cpu_seconds()? - cpu_before;
    let now = flood.map(Flood::counts).unwrap_or_default();
    Ok(Phase {
        latency_us,
        joins: now.0 - counted.0,
        refused: now.1 - counted.1,
        closed: now.2 - counted.2,
        seconds,
        cpu,
    })
}

/// The flooding connection, connecting again whenever the node closes it.
struct Flood {
    stop: Arc<AtomicBool>,
    /// Joins served, refused, and connections the node closed.
    counts: Arc<[AtomicU64; 3]>,
    task: tokio::task::JoinHandle<()>,
}

impl Flood {
    fn start(server: &ServerProcess, dir: &std::path::Path, rooms: Vec<String>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let counts: Arc<[AtomicU64; 3]> = Arc::default();
        let (addr, trust) =
            (server.addr.clone(), chat_certs::Trust::CaFile(dir.join("certs/ca.pem")));
        let task = tokio::spawn({
            let (stop, counts) = (Arc::clone(&stop), Arc::clone(&counts));
            async move {
                let mut round = 0;
                while !stop.load(Ordering::Relaxed) {
                    round += 1;
                    if flood_once(&addr, &trust, round, &rooms, &counts, &stop).await.is_err() {
                        counts[2].fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
        Self { stop, counts, task }
    }

    fn counts(&self) -> (u64, u64, u64) {
        let [a, b, c] = &*self.counts;
        (a.load(Ordering::Relaxed), b.load(Ordering::Relaxed), c.load(Ordering::Relaxed))
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.abort();
    }
}

/// One flooding connection: joins each of `rooms` on a stream of its own, again and again,
/// until the node closes it.
async fn flood_once(
    addr: &str,
    trust: &chat_certs::Trust,
    round: u64,
    rooms: &[String],
    counts: &Arc<[AtomicU64; 3]>,
    stop: &Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let endpoint = chat_client::quic_endpoint(
        trust,
        codes::ALPN,
        "127.0.0.1:0".parse()?,
        chat_client::transport(),
    )?;
    let connection = endpoint.connect(addr.parse()?, "localhost")?.await?;
    let hello = ClientFrame::Hello { name: format!("flood{round}"), resume: None, login: None };
    let _control = crate::connections::request(&connection, &hello).await?;
    let mut joins = tokio::task::JoinSet::new();
    // A connection is in a room once: a join in flight per room.
    for room in rooms {
        let (connection, counts, stop) = (connection.clone(), Arc::clone(counts), Arc::clone(stop));
        let room = room.clone();
        joins.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let (mut send, recv) = connection.open_bi().await?;
                let join = ClientFrame::Join { room: room.clone(), after: None, limit: 50 };
                write_frame(&mut send, &join, codec::MAX_NODE_FRAME_LEN).await?;
                let mut reader = FrameReader::new(recv, codec::MAX_NODE_FRAME_LEN);
                loop {
                    match reader.read::<NodeFrame>().await? {
                        Some(NodeFrame::HistoryEnd(_)) => {
                            counts[0].fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        Some(NodeFrame::Error(e)) if e.code == chat_proto::ErrorCode::SlowDown => {
                            counts[1].fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        Some(NodeFrame::Error(e)) => anyhow::bail!("the join failed: {e}"),
                        None => anyhow::bail!("the join's stream ended early"),
                        Some(_) => {}
                    }
                }
                // The node ends the stream once it has let the member go: only then may
                // the connection join the room again.
                let _ = send.finish();
                while reader.read::<NodeFrame>().await?.is_some() {}
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = joins.join_next().await {
        done??;
    }
    Ok(())
}
