//! The floor: the same fan-out done by a bare QUIC relay, with no history, no names and no
//! rules. Whatever a publisher writes on its stream (length-prefixed frames) goes to every
//! subscriber stream of the same room, through the same kind of bounded queue the node uses,
//! on the node's transport and threads (an endpoint per thread, `chat_node::lanes`). What
//! the node costs beyond this is the price of its history and its rules.
//!
//! A client opens one bidirectional stream and writes a header: a role byte (0 subscribe,
//! 1 publish) and the room as a big-endian `u32`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context;
use bytes::Bytes;
use quinn::{RecvStream, SendStream};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

pub const ALPN: &[u8] = b"relay/1";
pub const SUBSCRIBE: u8 = 0;
pub const PUBLISH: u8 = 1;
/// Frames queued per subscriber before it is dropped, as the node's `member_queue`.
const QUEUE: usize = 1024;
/// Largest frame the relay forwards.
const MAX_FRAME: usize = 1 << 20;

type Rooms = Arc<Mutex<HashMap<u32, Vec<mpsc::Sender<Bytes>>>>>;

/// Serves until killed. Its CA goes to `dir/ca.pem` for the harness to trust.
pub async fn serve(listen: SocketAddr, dir: &Path) -> anyhow::Result<()> {
    let files = chat_certs::ensure_node_files(dir, &[])?;
    let chain = chat_certs::load_certs(&files.node_cert)?;
    let key = chat_certs::load_key(&files.node_key)?;
    let tls = chat_certs::server_config(chain, key, ALPN)?;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    // The node's ACK frequency and first congestion window.
    let transport = chat_node::fan_out_transport(quinn::TransportConfig::default());
    server.transport_config(Arc::new(transport));
    // Served as the node serves its port: an endpoint per thread, each with its connections,
    // and a fan-out's wakes of other threads' subscribers handed over once per thread.
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    // Its ids are random all the same; the key only signs them, and a relay has no restart
    // to recognise its last run's connections after.
    let secret = [0; 32];
    let lanes = chat_node::lanes::Lanes::bind(listen, threads, |lane, socket| {
        quinn::Endpoint::new_with_abstract_socket(
            chat_node::endpoint_config(&secret, lane),
            Some(server.clone()),
            chat_node::lanes::udp_socket(socket)?,
            Arc::new(quinn::TokioRuntime),
        )
    })
    .context("binding the relay")?;
    let rooms = Rooms::default();
    let accepting: Vec<_> = lanes
        .iter()
        .map(|lane| lane.runtime.spawn(accept(lane.endpoint.clone(), Arc::clone(&rooms))))
        .collect();
    for accepted in accepting {
        accepted.await?;
    }
    Ok(())
}

/// Takes `endpoint`'s connections and their streams, on the endpoint's thread.
async fn accept(endpoint: quinn::Endpoint, rooms: Rooms) {
    while let Some(incoming) = endpoint.accept().await {
        let rooms = Arc::clone(&rooms);
        tokio::spawn(async move {
            let Ok(connection) = incoming.await else { return };
            while let Ok((send, recv)) = connection.accept_bi().await {
                chat_node::wakes::spawn(stream(Arc::clone(&rooms), send, recv));
            }
        });
    }
}

async fn stream(rooms: Rooms, send: SendStream, mut recv: RecvStream) -> anyhow::Result<()> {
    let role = recv.read_u8().await?;
    let room = recv.read_u32().await?;
    if role == SUBSCRIBE {
        let (queue, queued) = mpsc::channel(QUEUE);
        rooms.lock().unwrap_or_else(PoisonError::into_inner).entry(room).or_default().push(queue);
        return write(send, queued).await;
    }
    loop {
        let len = recv.read_u32().await? as usize;
        anyhow::ensure!(len <= MAX_FRAME, "frame too long");
        let mut frame = vec![0; 4 + len];
        frame[..4].copy_from_slice(&(len as u32).to_be_bytes());
        recv.read_exact(&mut frame[4..]).await?;
        let frame = Bytes::from(frame);
        chat_node::wakes::holding(|| {
            let mut rooms = rooms.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(subscribers) = rooms.get_mut(&room) {
                // A full or closed queue drops that subscriber, as the node drops a slow member.
                subscribers.retain(|queue| queue.try_send(frame.clone()).is_ok());
            }
        });
    }
}

/// Drains a subscriber's queue into its stream, several frames per write.
async fn write(mut send: SendStream, mut queued: mpsc::Receiver<Bytes>) -> anyhow::Result<()> {
    let mut batch = Vec::with_capacity(64);
    while queued.recv_many(&mut batch, 64).await > 0 {
        send.write_chunk(chat_proto::io::concat(&mut batch)).await?;
    }
    Ok(())
}

/// A client endpoint that trusts the relay's CA in `dir`.
pub fn client(dir: &Path) -> anyhow::Result<quinn::Endpoint> {
    let trust = chat_certs::Trust::CaFile(dir.join("ca.pem"));
    Ok(chat_client::quic_endpoint(&trust, ALPN, "127.0.0.1:0".parse()?, chat_client::transport())?)
}

/// Opens a stream to the relay in `role` for `room`.
pub async fn open(
    connection: &quinn::Connection,
    role: u8,
    room: u32,
) -> anyhow::Result<(SendStream, RecvStream)> {
    let (mut send, recv) = connection.open_bi().await?;
    let mut header = vec![role];
    header.extend_from_slice(&room.to_be_bytes());
    send.write_all(&header).await?;
    Ok((send, recv))
}
