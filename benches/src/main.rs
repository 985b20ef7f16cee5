//! `chat-bench`: measures the node's fan-out latency, from a publisher's send to the receipt
//! at every member of the room, over real QUIC on loopback with a durable history.
//!
//! Publisher and members live in this one process, so one clock times every delivery. The
//! node runs in-process too, on its own runtime threads. `soak` runs a `chat-node` process
//! for many minutes and prints its memory over time.

mod soak;

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chat_client::{Client, ConnectOptions, RoomEvent, Trust};
use chat_history::{Config as HistoryConfig, Durability, History, Message};
use chat_node::{Node, Settings};
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;

#[derive(Parser)]
#[command(version, about = "Fan-out latency benchmarks of the chat node")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One publisher sends to a room of members at a fixed rate; prints latency percentiles.
    Fanout {
        /// Members of the room (the publisher is not one of them)
        #[arg(long, default_value_t = 10)]
        members: usize,
        /// Messages to send
        #[arg(long, default_value_t = 2000)]
        messages: usize,
        /// Messages per second (open loop)
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        /// Bytes per message body
        #[arg(long, default_value_t = 100)]
        size: usize,
        /// Skip the fsync before each ack (`durability = "buffered"`)
        #[arg(long)]
        buffered: bool,
        /// Extra members that join and never read, to see that they do not slow the others
        #[arg(long, default_value_t = 0)]
        stalled: usize,
    },
    /// Many clients for many minutes against a release `chat-node` process: prints the
    /// node's memory over time (build it first: `cargo build --release -p chat-node`).
    Soak {
        /// Client connections, each a member of one room
        #[arg(long, default_value_t = 500)]
        clients: usize,
        /// Rooms the clients are spread over
        #[arg(long, default_value_t = 10)]
        rooms: usize,
        /// Length of the run
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
        /// Messages per second each client sends
        #[arg(long, default_value_t = 0.2)]
        rate: f64,
        /// Bytes per message body
        #[arg(long, default_value_t = 100)]
        size: usize,
        /// Seconds between memory reports
        #[arg(long, default_value_t = 10)]
        report_secs: u64,
    },
    /// Durable appends straight to the history (no network): messages per second with many
    /// appends in flight, to see group commit at work.
    Appends {
        /// Messages to append
        #[arg(long, default_value_t = 100_000)]
        messages: usize,
        /// Appends in flight at once
        #[arg(long, default_value_t = 1000)]
        window: usize,
        /// Bytes per message body
        #[arg(long, default_value_t = 100)]
        size: usize,
        /// Skip the fsync (`durability = "buffered"`)
        #[arg(long)]
        buffered: bool,
    },
}

/// Width of the send time at the start of each body: nanoseconds since the run's start.
const STAMP: usize = 20;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Fanout { members, messages, rate, size, buffered, stalled } => {
            fanout(members, messages, rate, size, buffered, stalled).await
        }
        Command::Appends { messages, window, size, buffered } => {
            appends(messages, window, size, buffered)
        }
        Command::Soak { clients, rooms, minutes, rate, size, report_secs } => {
            soak::run(soak::Soak { clients, rooms, minutes, rate, size, report_secs }).await
        }
    }
}

fn appends(messages: usize, window: usize, size: usize, buffered: bool) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let durability = durability(buffered);
    let history =
        History::open(HistoryConfig { path: dir.path().into(), cap: 10_000, durability })?;
    history.create_room("bench")?;
    let in_flight = Arc::new((Mutex::new(0usize), Condvar::new()));
    let message = Message { sender: "bench".into(), timestamp_ms: 0, body: "x".repeat(size) };
    let began = Instant::now();
    for _ in 0..messages {
        let (count, freed) = &*in_flight;
        let mut n = freed
            .wait_while(count.lock().map_err(|_| anyhow::anyhow!("poisoned"))?, |n| *n >= window)
            .map_err(|_| anyhow::anyhow!("poisoned"))?;
        *n += 1;
        drop(n);
        let done = Arc::clone(&in_flight);
        history.append(
            "bench",
            message.clone(),
            Box::new(move |stored| {
                if stored.is_err() {
                    eprintln!("an append failed: {stored:?}");
                }
                let (count, freed) = &*done;
                if let Ok(mut n) = count.lock() {
                    *n -= 1;
                }
                freed.notify_one();
            }),
        );
    }
    history.flush()?;
    let elapsed = began.elapsed().as_secs_f64();
    println!(
        "appends: {messages} of {size} B, {window} in flight, {:?} durability: {elapsed:.2} s, {:.0} messages/s",
        durability,
        messages as f64 / elapsed
    );
    history.close()?;
    Ok(())
}

async fn fanout(
    members: usize,
    messages: usize,
    rate: u64,
    size: usize,
    buffered: bool,
    stalled: usize,
) -> anyhow::Result<()> {
    if size < STAMP {
        bail!("--size must be at least {STAMP} bytes (the send time travels in the body)");
    }
    let dir = tempfile::tempdir()?;
    let mut config = Settings::default().resolve();
    config.listen = "127.0.0.1:0".parse()?;
    config.data_dir = dir.path().to_path_buf();
    config.rooms = vec!["bench".into()];
    config.max_connections = members + stalled + 16;
    config.durability = durability(buffered);
    config.max_connections_per_ip = members + stalled + 16;
    config.messages_per_second = 0; // the publisher sends at the rate it is told
    let node = Node::start(config).await?;
    let addr = node.local_addr()?.to_string();
    let ca = node.ca_cert().context("the node made no CA")?.to_path_buf();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(node.run(async {
        let _ = stopped.await;
    }));
    let options = |name: String| ConnectOptions::new(addr.clone(), name, Trust::CaFile(ca.clone()));

    let start = Instant::now();
    let mut receivers = Vec::with_capacity(members);
    for i in 0..members {
        let client = Client::connect(options(format!("member{i}"))).await?;
        let mut room = client.join("bench", None).await?;
        receivers.push(tokio::spawn(async move {
            let mut latencies = Histogram::<u64>::new(3).context("histogram")?;
            for _ in 0..messages {
                let event = tokio::time::timeout(Duration::from_secs(30), room.next()).await;
                let Ok(Some(RoomEvent::Message { message, .. })) = event else {
                    bail!("member {i} lost a message");
                };
                let sent: u64 = message.body[..STAMP].parse()?;
                let now = start.elapsed().as_nanos() as u64;
                latencies.record(now.saturating_sub(sent) / 1000)?;
            }
            drop(client);
            Ok(latencies)
        }));
    }

    let mut stalled_members = Vec::with_capacity(stalled);
    for i in 0..stalled {
        let client = Client::connect(options(format!("stalled{i}"))).await?;
        let room = client.join("bench", None).await?;
        stalled_members.push((client, room));
    }

    let publisher = Client::connect(options("publisher".into())).await?;
    let sender = publisher.join("bench", Some(u64::MAX)).await?.sender();
    let interval = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let mut acks = Vec::with_capacity(messages);
    let padding = "x".repeat(size - STAMP);
    let began = Instant::now();
    for n in 0..messages {
        tokio::time::sleep_until((began + interval * n as u32).into()).await;
        let body = format!("{:0STAMP$}{padding}", start.elapsed().as_nanos() as u64);
        acks.push(tokio::spawn(sender.send_unchecked(body).await?));
    }
    for ack in acks {
        ack.await??;
    }
    let mut all = Histogram::<u64>::new(3)?;
    for receiver in receivers {
        all.add(receiver.await??)?;
    }
    let elapsed = began.elapsed().as_secs_f64();
    println!(
        "fanout: {members} members, {messages} messages of {size} B at {rate}/s, {:?} history",
        durability(buffered)
    );
    println!(
        "latency µs: p50 {} p90 {} p99 {} p99.9 {} max {}",
        all.value_at_quantile(0.5),
        all.value_at_quantile(0.9),
        all.value_at_quantile(0.99),
        all.value_at_quantile(0.999),
        all.max()
    );
    println!("deliveries: {} in {elapsed:.2} s ({:.0}/s)", all.len(), all.len() as f64 / elapsed);
    if stalled > 0 {
        let mut dropped = 0;
        for (_client, mut room) in stalled_members {
            while let Ok(Some(event)) =
                tokio::time::timeout(Duration::from_secs(5), room.next()).await
            {
                if let RoomEvent::Error(_) = event {
                    dropped += 1;
                    break;
                }
            }
        }
        println!("stalled members: {stalled}, dropped as too slow: {dropped}");
    }
    let _ = stop.send(());
    running.await??;
    Ok(())
}

fn durability(buffered: bool) -> Durability {
    if buffered { Durability::Buffered } else { Durability::Sync }
}
