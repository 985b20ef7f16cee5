//! The run itself: members and a publisher that speak the protocol (or the floor's) by hand,
//! each member reading its own stream in its own task, and the measurement of every
//! delivery's latency, losses and repeats.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chat_client::{Client, ConnectOptions, Room, RoomEvent, RoomSender};
use chat_proto::io::FrameReader;
use chat_proto::{ClientFrame, NodeFrame, codes};
use hdrhistogram::Histogram;
use tokio::io::AsyncReadExt;
use tokio::task::JoinSet;

use super::{MAX_LATENCY_US, NUMBER, Outcome, QUIET, STAMP, Scenario, WARM_UP, progress};
use crate::connections::request;
use crate::process;

/// One member's stream of message bodies.
pub(super) enum Subscription {
    Node(Box<Member>),
    /// A member through the client library, as a program would be one (`--library`).
    Library {
        _client: Box<Client>,
        room: Box<Room>,
    },
    Floor {
        _connection: quinn::Connection,
        _send: quinn::SendStream,
        recv: quinn::RecvStream,
    },
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
            Self::Library { room, .. } => loop {
                match room.next().await? {
                    RoomEvent::Message { message, .. } => {
                        return Some(message.body.into_bytes());
                    }
                    RoomEvent::Error(_) => return None,
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
pub(super) struct Member {
    _endpoint: quinn::Endpoint,
    _connection: quinn::Connection,
    _streams: [quinn::SendStream; 2],
    _control: FrameReader<quinn::RecvStream>,
    room: FrameReader<quinn::RecvStream>,
}

impl Member {
    /// Connects as `options.name`, says hello and joins `room`.
    pub(super) async fn join(options: &ConnectOptions, room: &str) -> anyhow::Result<Self> {
        let endpoint = chat_client::quic_endpoint(
            &options.trust,
            codes::ALPN,
            "127.0.0.1:0".parse()?,
            chat_client::transport(),
        )?;
        let addr: std::net::SocketAddr = options.server.parse()?;
        let connection = endpoint.connect(addr, "localhost")?.await?;
        let hello = ClientFrame::Hello { name: options.name.clone(), resume: None, login: None };
        let (control_send, control) = request(&connection, &hello).await?;
        let join = ClientFrame::Join { room: room.to_owned(), after: None, limit: 0 };
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

pub(super) enum Publisher {
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
pub(super) async fn measure(
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
    let harness_cpu_before = process::cpu_seconds(std::process::id())?;
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
        harness_cpu_seconds: 0.0,
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
    outcome.harness_cpu_seconds = process::cpu_seconds(std::process::id())? - harness_cpu_before;
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
