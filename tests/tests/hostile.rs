//! Overload and hostile peers: a name race, floods of sends and streams, too many
//! connections, garbage on the wire. Each gets a typed error or close, and a well-behaved
//! client on the same node notices nothing.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chat_client::{Client, ClientError, ConnectOptions, ErrorCode, RoomEvent};
use chat_proto::io::FrameReader;
use chat_proto::{ClientFrame, NodeFrame, codec, codes};
use chat_tests::{
    PATIENCE, TestNode, encoded, expect_joined, hello, hello_with, next_frame, next_message,
    raw_connection,
};

/// A bystander's check: a send is acknowledged and comes back as the room's next message.
async fn bystander_is_fine(room: &mut chat_client::Room) {
    let seq = room.sender().send("still fine").await.expect("acked");
    let (message, _) = next_message(room).await;
    assert_eq!((message.seq, message.body.as_str()), (seq, "still fine"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_connections_race_for_one_name_and_exactly_one_wins() {
    // 49 refused hellos from one address would bar it: not here.
    let node = TestNode::start(|config| config.rate_limited_bar = Duration::ZERO).await;
    let attempts: Vec<_> = (0..50)
        .map(|i| {
            // The same name, spelled with different cases: names compare case-insensitively.
            let name = if i % 2 == 0 { "racer" } else { "RACER" };
            tokio::spawn(Client::connect(node.options(name)))
        })
        .collect();
    let (mut welcomed, mut taken) = (Vec::new(), 0);
    for attempt in attempts {
        match attempt.await.expect("task") {
            Ok(client) => welcomed.push(client),
            Err(ClientError::NameTaken(_)) => taken += 1,
            Err(other) => panic!("expected a welcome or name-taken, got {other}"),
        }
    }
    assert_eq!((welcomed.len(), taken), (1, 49));
    node.stop().await;
}

#[tokio::test]
async fn guessing_at_an_online_names_session_token_bars_the_address() {
    let node = TestNode::start(|_| {}).await;
    let ada = node.connect("ada").await;
    // 20 refused hellos within a minute (the node's HELLO_STRIKES) from one address...
    for guess in 0..20u8 {
        let options = ConnectOptions { resume: Some([guess; 16]), ..node.options("ada") };
        match Client::connect(options).await {
            Err(ClientError::NameTaken(_)) => {}
            Err(other) => panic!("guess {guess}: expected name taken, got {other}"),
            Ok(_) => panic!("guess {guess} took ada's name"),
        }
    }
    // ...and its next connection is refused before the handshake, whatever its name.
    match Client::connect(node.options("bob")).await {
        Err(ClientError::NodeFull(_)) => {}
        Err(other) => panic!("expected a refused connection, got {other}"),
        Ok(_) => panic!("a barred address got in"),
    }
    assert_eq!(ada.who("general").await.expect("ada's session goes on"), Vec::<String>::new());
    node.stop().await;
}

#[tokio::test]
async fn a_flood_of_sends_is_told_to_slow_down_then_closed() {
    let node = TestNode::start(|config| {
        config.messages_per_second = 10;
        config.message_burst = 5;
    })
    .await;
    let bob = node.connect("bob").await;
    let mut bobs = bob.join("general", None).await.expect("joins");
    let flooder = node.connect("flooder").await;
    let sender = flooder.join("general", Some(u64::MAX)).await.expect("joins").sender();

    // Unpaced sends: the burst is stored, then "slow down", then the connection is closed.
    let mut acks = Vec::new();
    for i in 0..200 {
        match sender.send_unchecked(format!("flood {i}")).await {
            Ok(ack) => acks.push(ack),
            Err(_) => break,
        }
    }
    let (mut stored, mut slow_down, mut lost) = (0, 0, 0);
    for ack in acks {
        match ack.await {
            Ok(_) => stored += 1,
            Err(ClientError::SlowDown(text)) => {
                assert!(text.contains("10 messages a second"), "{text}");
                slow_down += 1;
            }
            Err(_) => lost += 1,
        }
    }
    // How many, by the clock, is the core's rule and tested there (core/tests/stream.rs);
    // this proves the wiring: refusals with the rate's sentence, then the close.
    assert!(
        stored >= 5,
        "the burst is stored ({stored} stored, {slow_down} slowed down, {lost} lost)"
    );
    assert!(slow_down >= 1, "told to slow down first ({slow_down})");
    let closed = tokio::time::timeout(PATIENCE, flooder.closed()).await.expect("closed");
    assert!(matches!(closed, ClientError::RateLimited), "{closed:?}");
    assert_eq!(closed.exit_code(), 10);

    for _ in 0..stored {
        let (message, _) = next_message(&mut bobs).await;
        assert!(message.body.starts_with("flood"));
    }
    bystander_is_fine(&mut bobs).await;
    node.stop().await;
}

#[tokio::test]
async fn a_flood_of_requests_is_told_to_slow_down_then_closed() {
    let node = TestNode::start(|config| {
        config.requests_per_second = 10;
        config.request_burst = 5;
    })
    .await;
    let bob = node.connect("bob").await;
    let mut bobs = bob.join("general", None).await.expect("joins");

    // The client library waits its turn; by hand, 100 who requests in one write.
    let (connection, _endpoint) = raw_connection(&node, codes::ALPN).await.expect("handshake");
    let (mut send, recv) = connection.open_bi().await.expect("control stream");
    let mut bytes =
        encoded(&ClientFrame::Hello { name: "flooder".into(), resume: None, login: None });
    for _ in 0..100 {
        bytes.extend(encoded(&ClientFrame::Who { room: "general".into() }));
    }
    send.write_all(&bytes).await.expect("written");
    let mut reader = FrameReader::new(recv, codec::MAX_NODE_FRAME_LEN);
    assert!(matches!(next_frame(&mut reader).await, Some(NodeFrame::Welcome(_))));
    let (mut answered, mut slowed) = (0, 0);
    loop {
        match reader.read::<NodeFrame>().await {
            Ok(Some(NodeFrame::Members { .. })) => answered += 1,
            Ok(Some(NodeFrame::Error(e))) if e.message.contains("requests") => {
                assert_eq!(e.code, ErrorCode::SlowDown);
                assert!(e.message.contains("10 a second"), "{}", e.message);
                slowed += 1;
            }
            Ok(Some(NodeFrame::Error(e))) => {
                assert!(e.message.contains("kept sending"), "the last word: {}", e.message);
            }
            Ok(Some(other)) => panic!("expected answers and refusals, got {other:?}"),
            Ok(None) | Err(_) => break,
        }
    }
    assert!(answered >= 5, "the burst is answered ({answered})");
    assert!(slowed >= 1, "then told to slow down ({slowed})");
    let closed = tokio::time::timeout(PATIENCE, connection.closed()).await.expect("closed");
    assert!(
        matches!(&closed, quinn::ConnectionError::ApplicationClosed(c)
            if c.error_code.into_inner() == u64::from(codes::close::RATE_LIMITED)),
        "{closed:?}"
    );
    // Connecting again at once would bring a fresh budget: the address is barred a while.
    let again = raw_connection(&node, codes::ALPN).await.map(drop);
    assert!(
        matches!(&again, Err(quinn::ConnectionError::ConnectionClosed(c))
            if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED),
        "{again:?}"
    );
    bystander_is_fine(&mut bobs).await;
    node.stop().await;
}

#[tokio::test]
async fn the_client_keeps_to_the_rate_by_itself() {
    let node = TestNode::start(|config| {
        config.messages_per_second = 20;
        config.message_burst = 5;
    })
    .await;
    let ada = node.connect("ada").await;
    let sender = ada.join("general", Some(u64::MAX)).await.expect("joins").sender();
    let started = Instant::now();
    for i in 0..30 {
        sender.send(format!("paced {i}")).await.expect("never told to slow down");
    }
    // 5 at once, then 25 at 20 a second.
    assert!(started.elapsed() >= Duration::from_millis(1200), "{:?}", started.elapsed());
    node.stop().await;
}

#[tokio::test]
async fn connections_are_limited_per_address() {
    let node = TestNode::start(|config| config.max_connections_per_ip = 2).await;
    let ada = node.connect("ada").await;
    let _bob = node.connect("bob").await;
    let refused = Client::connect(node.options("cid")).await.err().expect("refused");
    assert!(matches!(refused, ClientError::NodeFull(_)), "{refused:?}");
    assert!(refused.to_string().contains("try again later"), "{refused}");
    ada.close().await;
    // The place is free once the node has seen the goodbye.
    let deadline = Instant::now() + PATIENCE;
    while Client::connect(node.options("cid")).await.is_err() {
        assert!(Instant::now() < deadline, "the freed place was never given out");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    node.stop().await;
}

/// Connections that said hello and then sat idle held every place of a full node, and
/// nobody else got in (issue 19). Now the one idle longest (past the handshake timeout)
/// makes room; a member never does.
#[tokio::test]
async fn a_full_node_makes_room_by_closing_connections_that_joined_nothing() {
    let node = TestNode::start(|config| {
        config.max_connections = 3;
        config.handshake_timeout = Duration::from_secs(1);
    })
    .await;
    let member = node.connect("member").await;
    let mut room = member.join("general", None).await.expect("joined");
    let older = node.connect("older").await;
    let newer = node.connect("newer").await;
    let refused = Client::connect(node.options("early")).await.err().expect("refused");
    assert!(matches!(refused, ClientError::NodeFull(_)), "within the grace: {refused:?}");

    // Past the grace, a newcomer gets in, and the connection idle longest is closed.
    let connect_when_room = |name: &'static str| {
        let options = node.options(name);
        async move {
            let deadline = Instant::now() + PATIENCE;
            loop {
                match Client::connect(options.clone()).await {
                    Ok(client) => return client,
                    Err(ClientError::NodeFull(_)) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => panic!("{name} never got in: {e}"),
                }
            }
        }
    };
    let first = connect_when_room("first").await;
    let closed = tokio::time::timeout(PATIENCE, older.closed()).await.expect("older closed");
    assert!(closed.to_string().contains("had joined no room"), "{closed}");
    let _first_room = first.join("general", None).await.expect("the newcomer joins");
    let second = connect_when_room("second").await;
    let closed = tokio::time::timeout(PATIENCE, newer.closed()).await.expect("newer closed");
    assert!(closed.to_string().contains("had joined no room"), "{closed}");
    let _second_room = second.join("general", None).await.expect("joins");

    // Only members are left: the next one is refused, and the member never noticed.
    let refused = Client::connect(node.options("late")).await.err().expect("refused");
    assert!(matches!(refused, ClientError::NodeFull(_)), "{refused:?}");
    bystander_is_fine(&mut room).await;
    node.stop().await;
}

/// Two connections that migrated away still counted against their old address, and the new
/// one carried four under a limit of two (issue 19, item 8). Now the count moves with them,
/// and a connection that moves to an address at its limit is closed.
#[tokio::test]
async fn a_connection_that_migrates_counts_against_its_new_address() {
    let node = TestNode::start(|config| config.max_connections_per_ip = 2).await;
    let mut movers = vec![hello(&node, "mover1").await, hello(&node, "mover2").await];
    let refused = Client::connect(node.options("third")).await.err().expect("refused");
    assert!(matches!(refused, ClientError::NodeFull(_)), "{refused:?}");
    let elsewhere = |mut options: ConnectOptions| {
        options.local_ip = Some(IpAddr::from([127, 0, 0, 2]));
        options
    };

    // Both rebind to 127.0.0.2, as a client does on a new network, and are answered there.
    for mover in &mut movers {
        move_to_127_0_0_2(mover).await;
    }
    let deadline = Instant::now() + PATIENCE;
    let _back_home = loop {
        match Client::connect(node.options("home1")).await {
            Ok(client) => break client,
            Err(ClientError::NodeFull(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("127.0.0.1 was never freed: {e}"),
        }
    };
    let refused = Client::connect(elsewhere(node.options("there"))).await.err().expect("refused");
    assert!(matches!(refused, ClientError::NodeFull(_)), "127.0.0.2 has two: {refused:?}");

    // A third moving there is closed; the two that moved first go on.
    let mut third = hello(&node, "mover3").await;
    move_to_127_0_0_2(&mut third).await;
    let closed = tokio::time::timeout(PATIENCE, third.connection.closed()).await.expect("closed");
    let quinn::ConnectionError::ApplicationClosed(close) = closed else { panic!("{closed:?}") };
    assert_eq!(close.error_code, codes::close::REFUSED.into());
    assert!(String::from_utf8_lossy(&close.reason).contains("moved to an address"), "{close:?}");
    for mover in &mut movers {
        rooms_answered(mover).await;
    }
    node.stop().await;
}

/// Rebinds a bare connection's endpoint to 127.0.0.2 and has the node answer it there.
async fn move_to_127_0_0_2(greeted: &mut chat_tests::Greeted) {
    let socket = std::net::UdpSocket::bind("127.0.0.2:0").expect("bound");
    greeted.endpoint.rebind(socket).expect("rebound");
    rooms_answered(greeted).await;
}

async fn rooms_answered(greeted: &mut chat_tests::Greeted) {
    let (send, reader) = &mut greeted.control;
    send.write_all(&encoded(&ClientFrame::ListRooms)).await.expect("asked");
    let answer = next_frame(reader).await;
    assert!(matches!(answer, Some(NodeFrame::Rooms { .. })), "{answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_streams_at_once_each_get_an_answer() {
    // The stream limit is under test here, not the request budget (tested below).
    let node = TestNode::start(|config| config.requests_per_second = 0).await;
    let bob = node.connect("bob").await;
    let mut bobs = bob.join("general", None).await.expect("joins");
    let greeted = hello(&node, "hydra").await;

    // Every stream joins general; the node lets 65 be open at once and answers each.
    let join =
        encoded(&ClientFrame::Join { room: "general".into(), after: Some(u64::MAX), limit: 50 });
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..10_000 {
        let (connection, join) = (greeted.connection.clone(), join.clone());
        tasks.spawn(async move {
            let (mut send, recv) = connection.open_bi().await.expect("stream");
            send.write_all(&join).await.expect("join");
            let mut reader = FrameReader::new(recv, codec::MAX_NODE_FRAME_LEN);
            let first = reader.read::<NodeFrame>().await.expect("a frame");
            // Keep the one joined stream open until every other has its answer.
            (first, send, reader)
        });
    }
    let (mut joined, mut already, mut kept) = (0, 0, Vec::new());
    while let Some(result) =
        tokio::time::timeout(PATIENCE * 3, tasks.join_next()).await.expect("answered in time")
    {
        let (first, send, reader) = result.expect("task");
        match first {
            Some(NodeFrame::Joined { .. }) => {
                joined += 1;
                kept.push((send, reader));
            }
            Some(NodeFrame::Error(e)) if e.code == ErrorCode::AlreadyJoined => already += 1,
            other => panic!("expected joined or already-joined, got {other:?}"),
        }
    }
    assert_eq!((joined, already), (1, 9_999));
    bystander_is_fine(&mut bobs).await;
    node.stop().await;
}

#[tokio::test]
async fn random_bytes_and_truncated_frames_get_errors_and_harm_no_one() {
    let node = TestNode::start(|_| {}).await;
    let bob = node.connect("bob").await;
    let mut bobs = bob.join("general", None).await.expect("joins");

    // Random bytes as the first thing on a connection: a protocol-violation close.
    let mut random = 0x9e37_79b9_7f4a_7c15_u64;
    for round in 0..20 {
        let (connection, _endpoint) = raw_connection(&node, codes::ALPN).await.expect("handshake");
        let (mut send, _recv) = connection.open_bi().await.expect("stream");
        let garbage: Vec<u8> = (0..64 + round * 50)
            .map(|_| {
                random ^= random << 13;
                random ^= random >> 7;
                random ^= random << 17;
                random as u8
            })
            .collect();
        send.write_all(&garbage).await.expect("written");
        let _ = send.finish();
        let closed = tokio::time::timeout(PATIENCE, connection.closed()).await.expect("closed");
        assert!(
            matches!(&closed, quinn::ConnectionError::ApplicationClosed(c)
                if [codes::close::PROTOCOL_VIOLATION, codes::close::HELLO_TIMEOUT]
                    .contains(&(c.error_code.into_inner() as u32))),
            "round {round}: {closed:?}"
        );
    }
    bystander_is_fine(&mut bobs).await;

    // A frame cut short by the end of its stream, after a hello and on a room stream.
    let greeted = hello(&node, "ada").await;
    let mut bytes =
        encoded(&ClientFrame::Join { room: "general".into(), after: Some(u64::MAX), limit: 50 });
    let send_frame = encoded(&ClientFrame::Send { client_id: 1, body: "cut short".into() });
    bytes.extend_from_slice(&send_frame[..send_frame.len() - 3]);
    let (mut send, recv) = greeted.connection.open_bi().await.expect("stream");
    send.write_all(&bytes).await.expect("written");
    send.finish().expect("finished");
    let mut reader = FrameReader::new(recv, codec::MAX_NODE_FRAME_LEN);
    expect_joined(&mut reader).await;
    match next_frame(&mut reader).await {
        Some(NodeFrame::Error(e)) => assert_eq!(e.code, ErrorCode::ProtocolViolation),
        other => panic!("expected an error for the cut frame, got {other:?}"),
    }
    assert_eq!(next_frame(&mut reader).await, None, "the stream ends");
    bystander_is_fine(&mut bobs).await;
    node.stop().await;
}

#[tokio::test]
async fn a_connection_that_never_says_hello_is_closed() {
    let node = TestNode::start(|config| config.handshake_timeout = Duration::from_secs(1)).await;
    let (connection, _endpoint) = raw_connection(&node, codes::ALPN).await.expect("handshake");
    let closed = tokio::time::timeout(PATIENCE, connection.closed()).await.expect("closed");
    assert!(
        matches!(&closed, quinn::ConnectionError::ApplicationClosed(c)
            if c.error_code.into_inner() == u64::from(codes::close::HELLO_TIMEOUT)),
        "{closed:?}"
    );
    node.stop().await;
}

/// Before its hello a connection can open its control stream and nothing else, so streams
/// the node would not read yet cannot park data in it; the welcome opens the room streams.
/// Datagrams, which the protocol does not use, are refused from the start.
#[tokio::test]
async fn before_its_hello_a_connection_can_open_no_room_stream_and_send_no_datagram() {
    let node = TestNode::start(|_| {}).await;
    let (connection, _endpoint) = raw_connection(&node, codes::ALPN).await.expect("handshake");
    assert_eq!(connection.max_datagram_size(), None, "the node takes no datagrams");
    let (mut send, recv) = connection.open_bi().await.expect("the control stream");
    // quinn opens a stream at once when the node's limit allows it, and waits otherwise.
    let early = tokio::time::timeout(Duration::from_millis(300), connection.open_bi()).await;
    assert!(early.is_err(), "a second stream opened before the hello");

    let frame = ClientFrame::Hello { name: "ada".into(), resume: None, login: None };
    send.write_all(&encoded(&frame)).await.expect("hello");
    let mut reader = FrameReader::new(recv, codec::MAX_NODE_FRAME_LEN);
    assert!(matches!(next_frame(&mut reader).await, Some(NodeFrame::Welcome(_))));
    let opened = tokio::time::timeout(PATIENCE, connection.open_bi()).await.expect("in time");
    let (mut room, room_recv) = opened.expect("a room stream after the welcome");
    let join = ClientFrame::Join { room: "general".into(), after: None, limit: 50 };
    room.write_all(&encoded(&join)).await.expect("join");
    let mut room_reader = FrameReader::new(room_recv, codec::MAX_NODE_FRAME_LEN);
    expect_joined(&mut room_reader).await;
    node.stop().await;
}

/// A client that stops reading a room stream it has let fill: the node's write to it makes no
/// progress, and after `write_timeout` the node resets the stream instead of holding it, its
/// buffers and its task until the client reads again (its queue never filled, so it was never
/// dropped as too slow).
#[tokio::test]
async fn a_write_that_makes_no_progress_is_given_up_and_the_stream_reset() {
    let node = TestNode::start(|config| {
        config.messages_per_second = 0;
        config.write_timeout = Duration::from_secs(1);
    })
    .await;
    let bob = node.connect("bob").await;
    let mut bobs = bob.join("general", None).await.expect("joins");
    let mut transport = quinn::TransportConfig::default();
    transport.stream_receive_window(16_384u32.into());
    let stalled = hello_with(&node, "stalled", transport).await;
    let (mut room, room_recv) = stalled.connection.open_bi().await.expect("room stream");
    let join = ClientFrame::Join { room: "general".into(), after: Some(u64::MAX), limit: 0 };
    room.write_all(&encoded(&join)).await.expect("join");
    let mut room_reader = FrameReader::new(room_recv, codec::MAX_NODE_FRAME_LEN);
    expect_joined(&mut room_reader).await;

    // 100 KB for a stream that takes 16 KiB, and far fewer frames than its queue holds.
    let ada = node.connect("ada").await;
    let adas = ada.join("general", Some(u64::MAX)).await.expect("joins").sender();
    let padding = "x".repeat(240);
    for i in 0..400 {
        adas.send(format!("{i} {padding}")).await.expect("acked");
    }
    let reset = tokio::time::timeout(PATIENCE, room_reader.get_mut().received_reset()).await;
    let reset = reset.expect("the node gave the write up in time").expect("a reset");
    assert_eq!(reset, Some(codes::reset::TOO_SLOW.into()));
    for i in 0..400 {
        assert!(next_message(&mut bobs).await.0.body.starts_with(&format!("{i} ")));
    }
    bystander_is_fine(&mut bobs).await;
    node.stop().await;
}

/// A frame begun and never finished: the node gives its stream up after `frame_timeout`,
/// instead of holding it (and its buffer) for as long as the connection lasts.
#[tokio::test]
async fn a_frame_that_never_finishes_arriving_ends_its_stream() {
    let node = TestNode::start(|config| config.frame_timeout = Duration::from_secs(1)).await;
    let bob = node.connect("bob").await;
    let mut bobs = bob.join("general", None).await.expect("joins");
    let greeted = hello(&node, "halfway").await;
    let (mut room, room_recv) = greeted.connection.open_bi().await.expect("room stream");
    let join = ClientFrame::Join { room: "general".into(), after: Some(u64::MAX), limit: 0 };
    room.write_all(&encoded(&join)).await.expect("join");
    let mut room_reader = FrameReader::new(room_recv, codec::MAX_NODE_FRAME_LEN);
    expect_joined(&mut room_reader).await;
    // A send announced as 100 bytes, of which 10 come; then nothing, the stream left open.
    let send = encoded(&ClientFrame::Send { client_id: 7, body: "x".repeat(90) });
    room.write_all(&send[..14]).await.expect("a frame's start");
    let answer = tokio::time::timeout(PATIENCE, async {
        loop {
            match room_reader.read::<NodeFrame>().await {
                Ok(Some(NodeFrame::Error(e))) => return Some(e),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return None,
            }
        }
    });
    let error = answer.await.expect("in time").expect("an error before the stream ends");
    assert_eq!(error.code, ErrorCode::ProtocolViolation);
    assert!(error.message.contains("to arrive whole"), "{}", error.message);
    assert!(next_frame(&mut room_reader).await.is_none(), "then the stream ends");
    bystander_is_fine(&mut bobs).await;
    node.stop().await;
}

/// A member that stops reading while 99 others receive 10,000 messages: the 99 get every
/// one, the slow member is dropped from the room with the last seq it got and resumes from
/// there, and the node's memory stays bounded.
#[test]
fn a_member_that_stops_reading_loses_only_its_room() {
    const MESSAGES: usize = 10_000;
    const READERS: usize = 99;
    let dir = tempfile::tempdir().expect("tempdir");
    let node = chat_tests::NodeProcess::start(
        dir.path(),
        &["--messages-per-second", "0", "--max-connections-per-ip", "200"],
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let slow = Client::connect(node.options("slow")).await.expect("connects");
        let mut stalled = slow.join("general", None).await.expect("joins");
        let mut readers = tokio::task::JoinSet::new();
        let mut joined = Vec::new();
        for i in 0..READERS {
            let client = Client::connect(node.options(&format!("reader{i}"))).await.expect("ok");
            let room = client.join("general", None).await.expect("joins");
            joined.push((client, room));
        }
        let progress: Vec<Arc<AtomicU64>> =
            (0..READERS).map(|_| Arc::new(AtomicU64::new(0))).collect();
        for ((client, mut room), progress) in joined.into_iter().zip(progress.iter().cloned()) {
            readers.spawn(async move {
                let mut last = 0;
                for _ in 0..MESSAGES {
                    let (message, _) = next_message(&mut room).await;
                    assert_eq!(message.seq, last + 1, "in order, none missing");
                    last = message.seq;
                    progress.store(last, Ordering::Relaxed);
                }
                drop(client);
                last
            });
        }
        let sender = Client::connect(node.options("sender")).await.expect("connects");
        let sending = sender.join("general", Some(u64::MAX)).await.expect("joins").sender();
        let window = Arc::new(tokio::sync::Semaphore::new(256));
        let mut acks = tokio::task::JoinSet::new();
        // Big enough that the stalled member's stream and queue fill well before the end.
        let padding = "x".repeat(240);
        for i in 0..MESSAGES {
            // The 99 readers share this process's two cores with the sender: keep the sender
            // from running far ahead of the slowest of them, so that only the stalled member
            // falls behind.
            if i % 64 == 0 {
                let slowest = || progress.iter().map(|p| p.load(Ordering::Relaxed)).min();
                while (i as u64).saturating_sub(slowest().unwrap_or(0)) > 512 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            let permit = Arc::clone(&window).acquire_owned().await.expect("window");
            let body = format!("message {i} {padding}");
            let ack = sending.send_unchecked(body).await.expect("sent");
            acks.spawn(async move {
                ack.await.expect("acked");
                drop(permit);
            });
        }
        while let Some(ack) = acks.join_next().await {
            ack.expect("ack task");
        }
        while let Some(last) = readers.join_next().await {
            assert_eq!(last.expect("reader"), MESSAGES as u64);
        }

        // The stalled member: what it had, then the too-slow error with where to resume.
        let mut last_seen = 0;
        let resume_after = loop {
            match tokio::time::timeout(PATIENCE, stalled.next()).await.expect("in time") {
                Some(RoomEvent::Message { message, .. }) => last_seen = message.seq,
                Some(RoomEvent::HistoryEnd(_) | RoomEvent::Arrived { .. }) => {}
                Some(RoomEvent::Error(e)) if e.code == ErrorCode::TooSlow => {
                    break e.last_seq.expect("the last seq it got");
                }
                other => panic!("expected messages then too-slow, got {other:?}"),
            }
        };
        assert_eq!(resume_after, last_seen, "it got everything up to the seq named");
        assert!(resume_after < MESSAGES as u64, "it was dropped before the end");
        let mut resumed = slow.join("general", Some(resume_after)).await.expect("rejoins");
        for seq in resume_after + 1..=MESSAGES as u64 {
            assert_eq!(next_message(&mut resumed).await.0.seq, seq, "resumes with no gap");
        }
    });
    let peak = node.peak_rss_kib();
    println!("node peak memory after {READERS} x {MESSAGES} deliveries: {} MiB", peak / 1024);
    assert!(peak < 256 * 1024, "the node's memory stayed bounded: {peak} KiB");
}
