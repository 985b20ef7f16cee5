//! The chat itself over real QUIC on loopback: history on join, fan-out, acks, rooms.

use chat_client::RoomEvent;
use chat_proto::io::FrameReader;
use chat_proto::{ClientFrame, NodeFrame, codec};
use chat_tests::{
    PATIENCE, TestNode, encoded, expect_joined, hello_with, next_frame, next_message, take_messages,
};

#[tokio::test]
async fn a_joiner_gets_the_history_in_order_then_live_messages() {
    let node = TestNode::start(|_| {}).await;
    let ada = node.connect("ada").await;
    let room = ada.join("general", None).await.expect("joins");
    for i in 1..=5 {
        assert_eq!(room.sender().send(format!("m{i}")).await.expect("acked"), i);
    }

    let bob = node.connect("bob").await;
    let mut bobs = bob.join("general", None).await.expect("joins");
    assert_eq!(bobs.history_until(), 5);
    for i in 1..=5u64 {
        let (m, history) = next_message(&mut bobs).await;
        assert_eq!(
            (m.seq, m.body.as_str(), m.sender.as_str(), history),
            (i, format!("m{i}").as_str(), "ada", true)
        );
    }
    room.sender().send("live").await.expect("acked");
    let (m, history) = next_message(&mut bobs).await;
    assert_eq!((m.seq, m.body.as_str(), history), (6, "live", false));
    assert!(m.timestamp_ms > 0);
    node.stop().await;
}

#[tokio::test]
async fn three_members_each_get_every_message_once_in_one_order_and_acks_carry_the_seq() {
    let node = TestNode::start(|_| {}).await;
    let names = ["ada", "bob", "cy"];
    let mut clients = Vec::new();
    let mut rooms = Vec::new();
    for name in names {
        let client = node.connect(name).await;
        rooms.push(client.join("general", None).await.expect("joins"));
        clients.push(client);
    }
    // All three send at once, each several messages with many in flight.
    let mut sends = tokio::task::JoinSet::new();
    for (i, room) in rooms.iter().enumerate() {
        let sender = room.sender();
        sends.spawn(async move {
            let mut acks = Vec::new();
            for j in 0..20 {
                let body = format!("{}-{j}", names[i]);
                acks.push((sender.send(body.clone()).await.expect("acked"), body));
            }
            acks
        });
    }
    let mut acked = Vec::new();
    while let Some(acks) = sends.join_next().await {
        acked.extend(acks.expect("sender task"));
    }
    acked.sort();
    assert_eq!(acked.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(), (1..=60).collect::<Vec<_>>());

    let mut seen = Vec::new();
    for room in &mut rooms {
        seen.push(take_messages(room, 60).await);
    }
    assert_eq!(seen[0], seen[1]);
    assert_eq!(seen[1], seen[2]);
    let by_seq: Vec<(u64, String)> =
        seen[0].iter().map(|(seq, _, body)| (*seq, body.clone())).collect();
    assert_eq!(by_seq, acked, "each member saw every message once, under the seq its ack named");
    node.stop().await;
}

#[tokio::test]
async fn two_rooms_on_one_connection_are_independent() {
    let node = TestNode::start(|c| {
        c.member_queue = 256;
        c.messages_per_second = 0; // the flood below is the point, not the rate limit
    })
    .await;
    let ada = node.connect("ada").await;
    let mut stalled = ada.join("general", None).await.expect("joins");
    let mut random = ada.join("random", None).await.expect("joins");
    let bob = node.connect("bob").await;
    let mut bobs_general = bob.join("general", None).await.expect("joins");
    let bobs_random = bob.join("random", None).await.expect("joins");
    let sender = bobs_general.sender();
    // Bob reads his copy of the flood as it comes.
    let bob_reads = tokio::spawn(async move { while bobs_general.next().await.is_some() {} });

    // Ada never reads "general" while far more than its queue and buffers go through it.
    let flood = 5_000;
    let body = "x".repeat(1000);
    let mut window: std::collections::VecDeque<
        tokio::task::JoinHandle<Result<u64, chat_client::ClientError>>,
    > = std::collections::VecDeque::with_capacity(32);
    for _ in 0..flood {
        if window.len() == 32 {
            let ack: tokio::task::JoinHandle<_> = window.pop_front().expect("full window");
            ack.await.expect("task").expect("the stalled member does not hold up the sender");
        }
        window.push_back(tokio::spawn(sender.send_unchecked(body.clone()).await.expect("written")));
    }
    for ack in window {
        ack.await.expect("task").expect("acked");
    }
    // The other room on the same connection still flows.
    for i in 1..=3u64 {
        bobs_random.sender().send(format!("r{i}")).await.expect("acked");
        let (m, _) = next_message(&mut random).await;
        assert_eq!((m.seq, m.body), (i, format!("r{i}")));
    }
    // The stalled room was dropped as too slow, and says where to resume.
    let mut last = 0;
    let ended = tokio::time::timeout(PATIENCE, async {
        while let Some(event) = stalled.next().await {
            match event {
                RoomEvent::Message { message, .. } => last = message.seq,
                RoomEvent::Error(error) => return Some(error),
                _ => {}
            }
        }
        None
    })
    .await
    .expect("in time")
    .expect("a too-slow error ends the stalled room");
    assert_eq!(ended.code, chat_client::ErrorCode::TooSlow);
    assert_eq!(ended.last_seq, Some(last), "the error names the last message delivered");
    assert!(last < flood);
    // Rejoining after it resumes exactly there.
    let mut resumed = ada.join("general", Some(last)).await.expect("rejoins");
    let (m, _) = next_message(&mut resumed).await;
    assert_eq!(m.seq, last + 1);
    bob_reads.abort();
    node.stop().await;
}

/// A sender that writes a burst of sends faster than it takes their replies (each send comes
/// back to it twice: its own copy of the message and the ack) is slowed down, not dropped:
/// the node stops reading its sends while its queue could not take their replies.
#[tokio::test]
async fn a_sender_that_reads_its_replies_late_is_slowed_down_not_dropped() {
    let node = TestNode::start(|c| {
        c.member_queue = 64;
        c.messages_per_second = 0;
    })
    .await;
    // The sender's stream takes 1 KiB of replies at a time: about 30 frames, while its burst
    // brings 600 of them back, ten times what its queue holds.
    let mut transport = quinn::TransportConfig::default();
    transport.stream_receive_window(1024u32.into());
    let ada = hello_with(&node, "ada", transport).await;
    let connection = &ada.connection;

    let burst = 300;
    let mut bytes = encoded(&ClientFrame::Join { room: "general".into(), after: None, limit: 50 });
    for client_id in 1..=burst {
        bytes.extend(encoded(&ClientFrame::Send { client_id, body: format!("m{client_id}") }));
    }
    let bob = node.connect("bob").await;
    let mut bobs = bob.join("general", None).await.expect("joins");
    let (mut send, recv) = connection.open_bi().await.expect("room stream");
    // The node reads the burst while it may; the rest waits in QUIC's flow control.
    let writing = tokio::spawn(async move {
        send.write_all(&bytes).await.expect("the burst is written");
        send
    });
    // Not one reply is read until the node has stopped storing the burst: until then, Bob
    // sees message after message, and no event says when the node stops, so a quiet spell
    // in Bob's room stands for it. (If it comes early, the test proves less, never fails.)
    let quiet = std::time::Duration::from_millis(300);
    let mut seen = 0;
    while seen < burst {
        match tokio::time::timeout(quiet, bobs.next()).await {
            Ok(Some(RoomEvent::Message { message, .. })) => seen = message.seq,
            Ok(Some(_)) => {}
            Ok(None) => panic!("bob's room ended"),
            Err(_) => break,
        }
    }
    assert!(seen < burst, "the node stored the whole burst while its replies waited ({seen})");
    let mut reader = FrameReader::new(recv, codec::MAX_NODE_FRAME_LEN);
    expect_joined(&mut reader).await;
    let (mut acked, mut echoed) = (Vec::new(), Vec::new());
    while acked.len() < burst as usize || echoed.len() < burst as usize {
        match next_frame(&mut reader).await {
            Some(NodeFrame::Ack { client_id, seq }) => acked.push((client_id, seq)),
            Some(NodeFrame::Message(m)) => echoed.push((m.seq, m.body)),
            other => panic!("expected acks and messages only, got {other:?}"),
        }
    }
    let expected_acks: Vec<_> = (1..=burst).map(|i| (i, i)).collect();
    assert_eq!(acked, expected_acks, "every send acked once, in order");
    let expected_echoes: Vec<_> = (1..=burst).map(|i| (i, format!("m{i}"))).collect();
    assert_eq!(echoed, expected_echoes, "every message came back once, in order");
    drop(writing.await.expect("the burst was written"));
    assert_eq!(
        take_messages(&mut bobs, (burst - seen) as usize).await.len(),
        (burst - seen) as usize
    );
    node.stop().await;
}

#[tokio::test]
async fn rooms_and_who_list_what_is_there() {
    let node = TestNode::start(|_| {}).await;
    let ada = node.connect("Ada").await;
    let _room = ada.join("general", None).await.expect("joins");
    let bob = node.connect("bob").await;
    let _bobs = bob.join("general", None).await.expect("joins");
    let rooms = bob.rooms().await.expect("rooms");
    let names: Vec<&str> = rooms.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["general", "random"]);
    assert_eq!(rooms[0].members, 2);
    assert_eq!(bob.who("general").await.expect("who"), ["Ada", "bob"]);
    assert!(bob.who("random").await.expect("who").is_empty());

    // Dropping a room and every sender of it leaves it; a sender kept keeps it joined.
    let sender = _room.sender();
    drop(_room);
    let adas_random = ada.join("random", None).await.expect("joins");
    assert_eq!(bob.who("random").await.expect("who"), ["Ada"]);
    drop(adas_random);
    let deadline = std::time::Instant::now() + chat_tests::PATIENCE;
    while !bob.who("random").await.expect("who").is_empty() {
        assert!(std::time::Instant::now() < deadline, "a dropped room was never left");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(bob.who("general").await.expect("who"), ["Ada", "bob"]);
    assert!(sender.send("still in").await.is_ok());
    node.stop().await;
}

/// A new connection may open a few room streams, and more each time it uses them all (quinn
/// keeps state for every stream allowed): one connection still gets into 40 rooms.
#[tokio::test]
async fn one_connection_is_in_forty_rooms() {
    let names: Vec<String> = (0..40).map(|i| format!("room{i}")).collect();
    let node = TestNode::start(|c| c.rooms = names.clone()).await;
    let ada = node.connect("ada").await;
    let mut rooms = Vec::new();
    for name in &names {
        let joining = tokio::time::timeout(PATIENCE, ada.join(name, None));
        rooms.push(joining.await.expect("the node allows another stream").expect("joins"));
    }
    let bob = node.connect("bob").await;
    for name in &names {
        let sender = bob.join(name, Some(u64::MAX)).await.expect("joins").sender();
        sender.send(format!("hello {name}")).await.expect("acked");
    }
    for (room, name) in rooms.iter_mut().zip(&names) {
        let (m, _) = next_message(room).await;
        assert_eq!((m.seq, m.body), (1, format!("hello {name}")));
    }
    node.stop().await;
}
