//! `chat-bench nats-floor`: what cluster mode's NATS path costs with no chat node in it, the
//! floor under `fanout --cluster`. Three NATS servers (replicas 3) with the chat's streams;
//! one NATS connection publishes to a room as a node appends (message id, one publish after
//! another, acks awaited alongside), a second one subscribes to the room's republished
//! messages as a following node does. Prints the publish-to-ack and publish-to-arrival
//! latency percentiles at a fixed rate, or with `window` the messages a second that NATS
//! takes with that many unacknowledged (as the node publishes: one after the other, acks
//! awaited alongside).

use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_cluster::{Cluster, ClusterConfig};
use futures_util::StreamExt;
use tokio::sync::Semaphore;

pub async fn run(messages: usize, rate: u64, window: Option<usize>) -> anyhow::Result<()> {
    let install_dir = std::env::current_exe()?.with_file_name("..").join("nats-server");
    let nats = chat_cluster::local::LocalNats::start(3, &install_dir)?;
    let config = ClusterConfig {
        urls: vec![nats.urls()],
        replicas: 3,
        history_cap: 10_000,
        direct_history_cap: 10_000,
        max_age: None,
        presence_ttl: Duration::from_secs(15),
    };
    let (publisher, follower) =
        (Cluster::connect(&config).await?, Cluster::connect(&config).await?);
    publisher.log.create_room("floor").await?;
    let mut live = follower.log.live("floor").await?;
    let started = Instant::now();
    let stamp = |at: Instant| at.duration_since(started).as_nanos().to_string();
    let arrivals = tokio::spawn(async move {
        let mut took = Vec::with_capacity(messages);
        while took.len() < messages {
            let Some(Ok(message)) = live.next().await else { break };
            let sent: u128 = message.stored.message.body.parse().unwrap_or(0);
            took.push(started.elapsed().as_nanos().saturating_sub(sent));
        }
        took
    });
    let mut acks = tokio::task::JoinSet::new();
    let gap = Duration::from_secs_f64(1.0 / rate as f64);
    // Without a window every message may be unacknowledged: the rate alone paces them.
    let unacknowledged = Arc::new(Semaphore::new(window.unwrap_or(messages)));
    for i in 0..messages {
        if window.is_none() {
            tokio::time::sleep_until((started + gap * i as u32).into()).await;
        }
        let turn = Arc::clone(&unacknowledged).acquire_owned().await?;
        let sent = Instant::now();
        let message =
            chat_history::Message { sender: "floor".into(), timestamp_ms: 0, body: stamp(sent) };
        let ack = publisher.log.publish("floor", &message, &format!("floor:{i}")).await?;
        acks.spawn(async move {
            let took = ack.await.map(|_| sent.elapsed().as_nanos());
            drop(turn);
            took
        });
    }
    let mut acked = Vec::with_capacity(messages);
    while let Some(ack) = acks.join_next().await {
        acked.push(ack??);
    }
    let all_acked = started.elapsed();
    let arrived = tokio::time::timeout(Duration::from_secs(30), arrivals).await??;
    let all_arrived = started.elapsed();
    if let Some(window) = window {
        let per_second = |took: Duration| messages as f64 / took.as_secs_f64();
        println!(
            "window {window}: {:.0} messages/s acknowledged, {:.0} messages/s arrived",
            per_second(all_acked),
            per_second(all_arrived)
        );
    }
    for (what, mut took) in [("publish to ack", acked), ("publish to arrival", arrived)] {
        took.sort_unstable();
        let at = |q: f64| took[((took.len() - 1) as f64 * q) as usize] as f64 / 1e3;
        println!(
            "{what}: p50 {:.0} µs, p90 {:.0}, p99 {:.0}, max {:.0} ({} messages)",
            at(0.5),
            at(0.9),
            at(0.99),
            at(1.0),
            took.len()
        );
    }
    Ok(())
}
