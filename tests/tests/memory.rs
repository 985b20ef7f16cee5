//! What hostile peers can make a node hold, measured from the node process's /proc (issue
//! 19, items 1, 3, 4 and 5): room streams that never read a big room's history, connections
//! that never say hello and push data, frames left half-sent at the 1 MiB length limit, and
//! a flood of Initials never answered, as from spoofed sources. Each stays within the bounds
//! the README states, a newcomer still gets in, and a bystander's round trips are printed (a
//! figure, not an assertion).

use std::time::{Duration, Instant};

use chat_client::{Client, Trust};
use chat_proto::{ClientFrame, codec, codes};
use chat_tests::{NodeProcess, encoded};

const MIB: u64 = 1024;

/// A bare QUIC connection to the node process, its endpoint kept with it.
async fn raw(node: &NodeProcess) -> (quinn::Connection, quinn::Endpoint) {
    raw_with(node, quinn::TransportConfig::default()).await
}

/// A bare QUIC connection with `transport` of its own.
async fn raw_with(
    node: &NodeProcess,
    transport: quinn::TransportConfig,
) -> (quinn::Connection, quinn::Endpoint) {
    let addr = node.addr.parse().expect("the node's address");
    let connected = chat_tests::raw_connection_to(node.ca.as_ref(), addr, codes::ALPN, transport);
    connected.await.expect("handshake")
}

/// A bare connection that said hello, with its control stream kept open.
async fn welcomed(
    node: &NodeProcess,
    name: &str,
    transport: quinn::TransportConfig,
) -> (quinn::Connection, quinn::Endpoint, quinn::SendStream, quinn::RecvStream) {
    let (connection, endpoint) = raw_with(node, transport).await;
    let (mut send, mut recv) = connection.open_bi().await.expect("control stream");
    let hello = ClientFrame::Hello { name: name.into(), resume: None, login: None };
    send.write_all(&encoded(&hello)).await.expect("hello");
    let mut reader = chat_proto::io::FrameReader::new(&mut recv, codec::MAX_NODE_FRAME_LEN);
    let welcome = reader.read::<chat_proto::NodeFrame>().await.expect("a welcome");
    assert!(matches!(welcome, Some(chat_proto::NodeFrame::Welcome(_))), "{welcome:?}");
    drop(reader);
    (connection, endpoint, send, recv)
}

/// `connections` connections with small windows, each joining room `big` and asking for 40
/// more pages of it, reading none: the pages stay in the node. What they hold is returned.
async fn pages_nobody_reads(node: &NodeProcess, connections: usize) -> Vec<impl Sized> {
    let mut held = Vec::new();
    for c in 0..connections {
        let mut small = quinn::TransportConfig::default();
        small.stream_receive_window(16_000u32.into()).receive_window(64_000u32.into());
        let (connection, endpoint, send, recv) = welcomed(node, &format!("unread{c}"), small).await;
        let (mut room_send, room_recv) = connection.open_bi().await.expect("a room stream");
        let join = ClientFrame::Join { room: "big".into(), after: None, limit: 500 };
        room_send.write_all(&encoded(&join)).await.expect("join");
        for request_id in 0..40 {
            let anchor = chat_proto::Anchor::After(request_id);
            let page = ClientFrame::History { request_id, anchor, limit: 500 };
            room_send.write_all(&encoded(&page)).await.expect("a history request");
        }
        held.push((connection, endpoint, send, recv, room_send, room_recv));
    }
    held
}

/// The node's resident memory now, in KiB.
fn rss(node: &NodeProcess) -> u64 {
    node.memory_kib().expect("the node's /proc status").0
}

/// A newcomer connects and joins, and a member's round trips are timed: printed.
async fn bystander(node: &NodeProcess, what: &str, member: &chat_client::Room) {
    let newcomer = Client::connect(node.options(&format!("newcomer{}", what.len()))).await;
    let newcomer =
        newcomer.unwrap_or_else(|e| panic!("a newcomer did not get in during {what}: {e}"));
    let _room = newcomer.join("general", Some(u64::MAX)).await.expect("the newcomer joins");
    let mut times = Vec::new();
    for i in 0..20 {
        let started = Instant::now();
        member.sender().send(format!("round trip {i}")).await.expect("acked");
        times.push(started.elapsed());
    }
    times.sort();
    println!("{what}: the bystander's acks p50 {:?}, max {:?}", times[10], times[19]);
    newcomer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_hold_what_the_readme_says_and_no_more() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = NodeProcess::start(
        dir.path(),
        &[
            "--room",
            "general",
            "--room",
            "big",
            "--messages-per-second",
            "0",
            "--max-message-len",
            "1048576",
            "--max-connections-per-ip",
            "1000",
        ],
    );
    // A room of 640 messages of 4 KiB, as in the scenario (10,000 there: a join sends
    // one page however long the room is).
    let filler = Client::connect(node.options("filler")).await.expect("connects");
    let big = filler.join("big", Some(u64::MAX)).await.expect("joins");
    let body = "x".repeat(4000);
    let mut acks = Vec::new();
    for _ in 0..640 {
        acks.push(big.sender().post(body.clone()).await.expect("posted"));
    }
    for ack in acks {
        ack.acked().await.expect("stored");
    }
    let member = Client::connect(node.options("member")).await.expect("connects");
    let mut room = member.join("general", Some(u64::MAX)).await.expect("joins");
    bystander(&node, "quiet", &room).await;

    // 1. 50 connections join the big room and ask for 40 more pages of it, and read none of
    //    them: their windows are small, so the pages stay in the node.
    let before = rss(&node);
    let held = pages_nobody_reads(&node, 50).await;
    bystander(&node, "pages nobody reads", &room).await;
    let unread = rss(&node).saturating_sub(before);
    println!(
        "2,050 pages of a 4 KiB-message room asked for and never read: the node grew by {unread} KiB"
    );
    // Bound: 4 pages in hand per connection (256 KiB of text and their frames, each), quinn's
    // own state and the allocator's slack: 90 MiB. Before, every page asked for waited in the
    // node: 2,050 x 260 KiB (546 MiB measured).
    assert!(unread < 90 * MIB, "{unread} KiB");
    drop(held);

    // 3. 200 connections that never say hello each push a megabyte down their control
    //    stream.
    let before = rss(&node);
    let mut pushers = Vec::new();
    for _ in 0..200 {
        let (connection, endpoint) = raw(&node).await;
        pushers.push(tokio::spawn(async move {
            let Ok((mut send, _recv)) = connection.open_bi().await else {
                return (connection, endpoint);
            };
            let megabyte = vec![0u8; 1 << 20];
            let _ =
                tokio::time::timeout(Duration::from_millis(500), send.write_all(&megabyte)).await;
            (connection, endpoint)
        }));
    }
    let mut pushed = Vec::new();
    for pusher in pushers {
        pushed.push(pusher.await.expect("pushed"));
    }
    bystander(&node, "200 hello-less pushers", &room).await;
    let hello_less = rss(&node).saturating_sub(before);
    println!("200 hello-less connections pushing 1 MiB each: the node grew by {hello_less} KiB");
    // Bound: two frames' worth unread each (2 x 1 MiB + a little at this length limit) and
    // quinn's state: 200 x 2.1 MiB = 420 MiB at most; before it was 1,052 MiB at 1.25 MB a
    // stream and 4 KiB messages.
    assert!(hello_less < 420 * MIB, "{hello_less} KiB");
    drop(pushed);

    // 4. 10 connections leave a 1 MiB frame half-sent on each of up to 32 streams (the
    //    first frame of each, the join, announced at the limit).
    let before = rss(&node);
    let mut halves = Vec::new();
    for c in 0..10 {
        let (connection, endpoint, send, recv) =
            welcomed(&node, &format!("half{c}"), Default::default()).await;
        let mut writes = Vec::new();
        for _ in 0..32 {
            // Flow control stops a connection that has filled its window: it opens no more.
            let opened = tokio::time::timeout(Duration::from_millis(500), connection.open_bi());
            let Ok(Ok((mut send, recv))) = opened.await else { break };
            writes.push(tokio::spawn(async move {
                let mut half = (1u32 << 20).to_be_bytes().to_vec();
                half.resize(4 + (1 << 19), b'x');
                let _ =
                    tokio::time::timeout(Duration::from_millis(500), send.write_all(&half)).await;
                (send, recv)
            }));
        }
        let mut streams = Vec::new();
        for write in writes {
            streams.push(write.await.expect("written"));
        }
        halves.push((connection, endpoint, send, recv, streams));
    }
    let streams: usize = halves.iter().map(|(.., streams)| streams.len()).sum();
    bystander(&node, "half-sent frames", &room).await;
    let half_sent = rss(&node).saturating_sub(before);
    println!(
        "{streams} half-sent 1 MiB frames on 10 connections: the node grew by {half_sent} KiB"
    );
    // Bound: per connection two long frames in progress (its budget), and what quinn holds
    // unread, at most its receive window (twice a stream's: 4 MiB at this length limit): 10
    // x 6 MiB. Before, the node read on and gave the connection more credit: 16 MiB each.
    assert!(half_sent < 65 * MIB, "{half_sent} KiB");
    drop(halves);

    bystander_is_fine(&mut room).await;
}

/// The node's budget for pages in hand (`--page-memory-mib`): 10 connections that read
/// nothing ask for 410 pages of a big room, far more than the budget; the node holds the
/// budget's worth, and a newcomer's join waits until their streams are reset for making no
/// progress (`--write-timeout-secs`), then gets its page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_nobody_reads_hold_the_node_budget_and_no_more() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = NodeProcess::start(
        dir.path(),
        &["--room", "big", "--page-memory-mib", "4", "--write-timeout-secs", "2"],
    );
    let filler = Client::connect(node.options("filler")).await.expect("connects");
    let big = filler.join("big", Some(u64::MAX)).await.expect("joins");
    let mut acks = Vec::new();
    for _ in 0..256 {
        acks.push(big.sender().post("x".repeat(4000)).await.expect("posted"));
    }
    for ack in acks {
        ack.acked().await.expect("stored");
    }
    let before = rss(&node);
    let held = pages_nobody_reads(&node, 10).await;
    // The newcomer's join waits for room in the budget.
    let started = Instant::now();
    let newcomer = Client::connect(node.options("newcomer")).await.expect("connects");
    let joining = tokio::spawn(async move {
        let room = newcomer.join("big", None).await.expect("the newcomer joins");
        (newcomer, room, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let grown = rss(&node).saturating_sub(before);
    let (_newcomer, mut room, waited) = joining.await.expect("joined");
    let Some(chat_client::RoomEvent::Message { message, history: true }) = room.next().await else {
        panic!("the newcomer's page of history");
    };
    println!(
        "410 pages asked for and never read, against a budget of 4 MiB: the node grew by \
         {grown} KiB; a newcomer's join waited {waited:?}, then got seq {}",
        message.seq
    );
    // Bound: the budget, quinn's state for 11 connections and the allocator's slack. With no
    // budget, the 40 pages in hand of each connection (4 with only the connection's turns).
    assert!(grown < 16 * MIB, "{grown} KiB");
    drop(held);
}

async fn bystander_is_fine(room: &mut chat_client::Room) {
    let seq = room.sender().send("still fine").await.expect("acked");
    assert!(seq > 0);
}

/// Initials that are never answered, as from spoofed sources (issue 19, item 5): 100
/// loopback addresses send fresh Initials, about a thousand a second, and never reply. With a
/// node of 200 places, a legitimate client got in once in 10 tries, and 4,900 half-open
/// handshakes held 350 MiB. Now, past `retry_above_handshakes` in progress, an unproven
/// address gets a Retry, which a spoofed source never answers: it takes no place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_initials_take_no_place_and_a_client_still_gets_in() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = NodeProcess::start(dir.path(), &["--max-connections", "200"]);
    let base = rss(&node);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let (stop, ca, addr) = (stop.clone(), node.ca.clone(), node.addr.clone());
        std::thread::spawn(move || spoof_initials(&ca, &addr, &stop))
    };
    let mut got_in = 0;
    let mut times = Vec::new();
    for i in 0..10 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = Instant::now();
        match Client::connect(node.options(&format!("legit{i}"))).await {
            Ok(client) => {
                times.push(started.elapsed());
                got_in += 1;
                client.close().await;
            }
            Err(e) => println!("try {i}: {e}"),
        }
    }
    let grown = rss(&node).saturating_sub(base);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = flood.join().expect("the flood ran");
    println!(
        "{sent} spoofed Initials: the client got in {got_in} of 10 times (connect {times:?}); \
         the node grew by {grown} KiB"
    );
    assert_eq!(got_in, 10, "a legitimate client gets in every time");
    assert!(grown < 64 * MIB, "{grown} KiB");
}

/// Sends fresh Initials from 127.0.0.2 to 127.0.0.101 until `stop`, never answering what
/// comes back; returns how many were sent.
fn spoof_initials(ca: &str, addr: &str, stop: &std::sync::atomic::AtomicBool) -> usize {
    let tls = chat_certs::client_config(&Trust::CaFile(ca.into()), codes::ALPN).expect("tls");
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic tls");
    let config = quinn::ClientConfig::new(std::sync::Arc::new(crypto));
    let server: std::net::SocketAddr = addr.parse().expect("the node's address");
    let sockets: Vec<std::net::UdpSocket> = (2..=101)
        .map(|last| {
            std::net::UdpSocket::bind(("127.0.0.".to_owned() + &last.to_string(), 0))
                .expect("bound")
        })
        .collect();
    let mut endpoint = quinn_proto::Endpoint::new(
        std::sync::Arc::new(quinn_proto::EndpointConfig::default()),
        None,
        false,
        None,
    );
    let (mut sent, mut buf) = (0, Vec::new());
    let started = Instant::now();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        // About a thousand a second, spread over the addresses.
        while sent < (started.elapsed().as_secs_f64() * 1000.0) as usize {
            let now = std::time::Instant::now();
            let (_, mut connection) =
                endpoint.connect(now, config.clone(), server, "localhost").expect("an Initial");
            buf.clear();
            if let Some(transmit) = connection.poll_transmit(now, 1, &mut buf) {
                let _ = sockets[sent % sockets.len()].send_to(&buf[..transmit.size], server);
            }
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    sent
}
