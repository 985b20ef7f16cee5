//! `chat-bench soak`: many clients for many minutes against a `chat-node` process, printing
//! the node's memory over time. Clients send at a steady rate, every member reads, and one
//! client a second leaves and comes back (fresh connection, rejoin after its last seq), so
//! that a leak per connection, per message or per join shows up as growth.
//!
//! The node is the release-built `chat-node` next to this program, run as a user runs it,
//! so its resident memory is its own.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chat_client::{Client, ConnectOptions, RoomEvent};

use crate::process;

pub struct Soak {
    pub clients: usize,
    pub rooms: usize,
    pub minutes: f64,
    /// Messages per second per client.
    pub rate: f64,
    pub size: usize,
    pub report_secs: u64,
}

pub async fn run(soak: Soak) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let rooms: Vec<String> = (0..soak.rooms.max(1)).map(|r| format!("soak{r}")).collect();
    let node = process::node(dir.path(), &rooms, &["--history-cap", "1000"], &[])?;
    let pid = node.pid();
    let options = |name: String| process::node_options(&node.addr, dir.path(), name);
    process::wait_until_up(&options("probe".into())).await?;

    let delivered = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let mut members = Vec::with_capacity(soak.clients);
    for i in 0..soak.clients {
        let room = rooms[i % rooms.len()].clone();
        let task = Member {
            options: options(format!("soak{i}")),
            room,
            last_seq: None,
            delivered: Arc::clone(&delivered),
            sent: Arc::clone(&sent),
            rate: soak.rate,
            body: "x".repeat(soak.size),
        };
        members.push(Some(tokio::spawn(task.run())));
    }
    println!(
        "soak: {} clients in {} rooms, {} msg/s each, {} B, for {} min; node pid {pid}",
        soak.clients, soak.rooms, soak.rate, soak.size, soak.minutes
    );
    println!("{:>8} {:>10} {:>12} {:>12}", "seconds", "rss MiB", "sent/s", "delivered/s");

    let began = Instant::now();
    let length = Duration::from_secs_f64(soak.minutes * 60.0);
    let mut samples = Vec::new();
    let mut churn = tokio::time::interval(Duration::from_secs(1));
    let mut report = tokio::time::interval(Duration::from_secs(soak.report_secs.max(1)));
    let (mut last_sent, mut last_delivered, mut last_report) = (0, 0, Instant::now());
    let mut turn = 0;
    while began.elapsed() < length {
        tokio::select! {
            _ = churn.tick() => {
                // One member leaves and comes back as a new connection.
                turn = (turn + 1) % members.len();
                if let Some(task) = members[turn].take() {
                    task.abort();
                    let _ = task.await;
                }
                let task = Member {
                    options: options(format!("soak{turn}")),
                    room: rooms[turn % rooms.len()].clone(),
                    last_seq: Some(u64::MAX),
                    delivered: Arc::clone(&delivered),
                    sent: Arc::clone(&sent),
                    rate: soak.rate,
                    body: "x".repeat(soak.size),
                };
                members[turn] = Some(tokio::spawn(task.run()));
            }
            _ = report.tick() => {
                let (rss, _) = node.memory_kib()?;
                let (s, d) = (sent.load(Ordering::Relaxed), delivered.load(Ordering::Relaxed));
                let secs = last_report.elapsed().as_secs_f64();
                println!(
                    "{:>8.0} {:>10.1} {:>12.0} {:>12.0}",
                    began.elapsed().as_secs_f64(),
                    rss as f64 / 1024.0,
                    (s - last_sent) as f64 / secs,
                    (d - last_delivered) as f64 / secs,
                );
                samples.push(rss);
                (last_sent, last_delivered, last_report) = (s, d, Instant::now());
            }
        }
    }
    for task in members.into_iter().flatten() {
        task.abort();
    }
    verdict(&samples);
    Ok(())
}

/// Compares the memory of the second half of the run with that after the warm-up (the first
/// quarter): a steady node does not grow.
fn verdict(samples: &[u64]) {
    if samples.len() < 4 {
        println!("too short a run to judge growth");
        return;
    }
    let warm = samples[samples.len() / 4];
    let late = samples[samples.len() / 2..].iter().copied().max().unwrap_or(warm);
    let growth = late as f64 / warm as f64 - 1.0;
    println!(
        "memory after warm-up {:.1} MiB, highest in the second half {:.1} MiB: {:+.1}%",
        warm as f64 / 1024.0,
        late as f64 / 1024.0,
        growth * 100.0
    );
}

/// One client: connects, joins, reads everything and sends at its rate, until aborted.
struct Member {
    options: ConnectOptions,
    room: String,
    last_seq: Option<u64>,
    delivered: Arc<AtomicU64>,
    sent: Arc<AtomicU64>,
    rate: f64,
    body: String,
}

impl Member {
    async fn run(self) {
        // The previous connection under this name may still be closing: retry briefly.
        let client = loop {
            match Client::connect(self.options.clone()).await {
                Ok(client) => break client,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        let Ok(mut room) = client.join(&self.room, self.last_seq).await else { return };
        let sender = room.sender();
        let period = Duration::from_secs_f64(1.0 / self.rate.max(1e-3));
        let mut tick = tokio::time::interval(period);
        loop {
            tokio::select! {
                event = room.next() => match event {
                    Some(RoomEvent::Message { .. }) => {
                        self.delivered.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(_) => {}
                    None => return,
                },
                _ = tick.tick(), if self.rate > 0.0 => {
                    // Written, not awaited: the ack arrives while this task goes on reading.
                    if sender.send_unchecked(self.body.clone()).await.is_err() {
                        return;
                    }
                    self.sent.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}
