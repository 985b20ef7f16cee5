//! `chat-bench connections N`: opens N connections to a `chat-node` process, each saying
//! hello and joining a room, then idles; prints the handshakes per second reached while
//! connecting and the node's memory per connection.
//!
//! The clients share one QUIC endpoint (one UDP socket) and speak the protocol by hand, so
//! that this process can hold far more connections than it has file descriptors.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use chat_proto::io::{FrameReader, write_frame};
use chat_proto::{ClientFrame, NodeFrame, codec, codes};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::process;

/// Handshakes in progress at once: enough to keep the node busy, few enough that this
/// process (which does the client half of every handshake) answers each in time.
const CONCURRENT: usize = 64;

pub async fn run(count: usize, node_args: &[String]) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = process::node(dir.path(), &["bench".into()], &[], node_args)?;
    process::wait_until_up(&process::node_options(&server.addr, dir.path(), "probe".into()))
        .await?;
    let (before, _) = server.memory_kib()?;
    let cpu_before = server.cpu_seconds()?;

    let trust = chat_certs::Trust::CaFile(dir.path().join("certs/ca.pem"));
    let mut transport = chat_client::transport();
    transport.keep_alive_interval(Some(Duration::from_secs(10)));
    let endpoint =
        chat_client::quic_endpoint(&trust, codes::ALPN, "127.0.0.1:0".parse()?, transport)?;
    let addr: std::net::SocketAddr = server.addr.parse()?;

    let permits = Arc::new(Semaphore::new(CONCURRENT));
    let mut opening = JoinSet::new();
    let began = Instant::now();
    for i in 0..count {
        let permit = Arc::clone(&permits).acquire_owned().await?;
        let endpoint = endpoint.clone();
        opening.spawn(async move {
            let held = open(&endpoint, addr, i).await;
            drop(permit);
            held
        });
    }
    let mut held = Vec::with_capacity(count);
    while let Some(connection) = opening.join_next().await {
        held.push(connection??);
    }
    let seconds = began.elapsed().as_secs_f64();
    let cpu = server.cpu_seconds()? - cpu_before;
    // Let the node settle before reading its memory.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (after, peak) = server.memory_kib()?;
    println!(
        "connections: {count} open and joined in {seconds:.2} s: {:.0} handshakes/s (hello and join included)",
        count as f64 / seconds
    );
    println!(
        "node CPU: {cpu:.2} s, {:.0} µs per connection: {:.0} handshakes per second of node CPU",
        cpu * 1e6 / count.max(1) as f64,
        count as f64 / cpu.max(1e-9)
    );
    println!(
        "node memory: {:.1} MiB before, {:.1} MiB after (peak {:.1} MiB): {:.1} KiB per connection",
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        peak as f64 / 1024.0,
        after.saturating_sub(before) as f64 / count.max(1) as f64
    );
    drop(held);
    Ok(())
}

/// What keeps one connection open and joined.
type Held = (quinn::Connection, [(quinn::SendStream, FrameReader<quinn::RecvStream>); 2]);

/// Connects, says hello as `user{i}` and joins room `bench`.
async fn open(
    endpoint: &quinn::Endpoint,
    addr: std::net::SocketAddr,
    i: usize,
) -> anyhow::Result<Held> {
    let connection = endpoint
        .connect(addr, "localhost")?
        .await
        .map_err(|e| anyhow::anyhow!("handshake of connection {i}: {e}"))?;
    let control = request(
        &connection,
        &ClientFrame::Hello { name: format!("user{i}"), resume: None, login: None },
    )
    .await?;
    let room =
        request(&connection, &ClientFrame::Join { room: "bench".into(), after: None, limit: 0 })
            .await?;
    Ok((connection, [control, room]))
}

/// Opens a stream, sends `frame` and checks that the node welcomed it or joined the room.
pub(crate) async fn request(
    connection: &quinn::Connection,
    frame: &ClientFrame,
) -> anyhow::Result<(quinn::SendStream, FrameReader<quinn::RecvStream>)> {
    let (mut send, recv) = connection.open_bi().await?;
    write_frame(&mut send, frame, codec::MAX_NODE_FRAME_LEN).await?;
    let mut reader = FrameReader::new(recv, codec::MAX_NODE_FRAME_LEN);
    match reader.read::<NodeFrame>().await? {
        Some(NodeFrame::Welcome(_) | NodeFrame::Joined { .. }) => Ok((send, reader)),
        other => bail!("the node answered {other:?}"),
    }
}
