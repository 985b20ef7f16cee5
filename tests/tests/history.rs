//! The history as clients see it: the cap, restarts, rejoining after a sequence number,
//! gaps, and taking a name back after a dropped connection.

use chat_client::{Client, ClientError};
use chat_tests::{TestNode, next_message, take_messages};

#[tokio::test]
async fn the_cap_keeps_the_newest_messages() {
    let node = TestNode::start(|c| c.history_cap = 3).await;
    let ada = node.connect("ada").await;
    let room = ada.join("general", None).await.expect("joins");
    for i in 1..=5 {
        room.sender().send(format!("m{i}")).await.expect("acked");
    }
    let bob = node.connect("bob").await;
    let mut bobs = bob.join("general", Some(2)).await.expect("joins");
    assert_eq!(bobs.gap(), None, "after 2, nothing retained was trimmed");
    let got = take_messages(&mut bobs, 3).await;
    assert_eq!(
        got.iter().map(|(seq, _, body)| (*seq, body.as_str())).collect::<Vec<_>>(),
        [(3, "m3"), (4, "m4"), (5, "m5")]
    );
    node.stop().await;
}

#[tokio::test]
async fn a_restarted_node_keeps_the_history_and_continues_the_numbering() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start_in(dir.path(), |_| {}).await;
    let ada = node.connect("ada").await;
    let room = ada.join("general", None).await.expect("joins");
    for i in 1..=3 {
        room.sender().send(format!("before {i}")).await.expect("acked");
    }
    node.stop().await;

    let node = TestNode::start_in(dir.path(), |_| {}).await;
    let ada = node.connect("ada").await;
    let mut room = ada.join("general", None).await.expect("joins");
    assert_eq!(room.history_until(), 3);
    let history = take_messages(&mut room, 3).await;
    assert_eq!(
        history.iter().map(|(_, _, b)| b.as_str()).collect::<Vec<_>>(),
        ["before 1", "before 2", "before 3"]
    );
    assert_eq!(room.sender().send("after").await.expect("acked"), 4, "no number is reused");
    node.stop().await;
}

/// Members get a message before its sync ends, so after a power cut a client may have seen
/// numbers the node's history never kept, and the node numbers its next messages from there
/// again. The client library then follows the node's numbering.
#[tokio::test]
async fn a_rejoin_after_numbers_the_node_never_kept_follows_the_nodes_numbering() {
    let node = TestNode::start(|_| {}).await;
    let ada = node.connect("ada").await;
    let sender = ada.join("general", None).await.expect("joins").sender();
    for i in 1..=3 {
        sender.send(format!("m{i}")).await.expect("acked");
    }
    let bob = node.connect("bob").await;
    let mut bobs = bob.join("general", Some(7)).await.expect("joins");
    assert_eq!((bobs.history_until(), bobs.last_seen()), (3, 3));
    assert_eq!(sender.send("m4").await.expect("acked"), 4);
    let got = take_messages(&mut bobs, 1).await;
    assert_eq!((got[0].0, got[0].2.as_str()), (4, "m4"));
    assert_eq!(bobs.last_seen(), 4, "a later rejoin starts after 4, not after 7");
    node.stop().await;
}

#[tokio::test]
async fn rejoining_after_a_seq_gets_only_what_was_missed_and_a_trimmed_seq_is_a_gap() {
    let node = TestNode::start(|c| c.history_cap = 5).await;
    let ada = node.connect("ada").await;
    let sender = ada.join("general", None).await.expect("joins").sender();
    for i in 1..=4 {
        sender.send(format!("m{i}")).await.expect("acked");
    }
    let bob = node.connect("bob").await;
    let mut bobs = bob.join("general", Some(2)).await.expect("joins");
    assert_eq!((bobs.gap(), bobs.history_until()), (None, 4));
    assert_eq!(take_messages(&mut bobs, 2).await.iter().map(|m| m.0).collect::<Vec<_>>(), [3, 4]);
    bobs.leave().await;

    // Six more: the cap of five now holds 6..=10, so 3..=5 are gone for a reader after 2.
    for i in 5..=10 {
        sender.send(format!("m{i}")).await.expect("acked");
    }
    let mut rejoined = bob.join("general", Some(2)).await.expect("rejoins");
    let gap = rejoined.gap().expect("a gap is reported");
    assert_eq!((gap.first, gap.last), (3, 5));
    let got = take_messages(&mut rejoined, 5).await;
    assert_eq!(got.iter().map(|m| m.0).collect::<Vec<_>>(), [6, 7, 8, 9, 10]);
    node.stop().await;
}

#[tokio::test]
async fn a_reconnect_with_the_session_token_takes_the_name_back() {
    let node = TestNode::start(|_| {}).await;
    let old = node.connect("ada").await;
    let mut old_room = old.join("general", None).await.expect("joins");

    // Without the token the name is still taken...
    assert!(matches!(Client::connect(node.options("ada")).await, Err(ClientError::NameTaken(_))));
    // ...with it, the new connection takes the name, and the old one is closed.
    let new = old.reconnect().await.expect("the token takes the name back");
    assert!(matches!(old.closed().await, ClientError::Replaced));
    while old_room.next().await.is_some() {} // The old room stream ends too.
    let mut room = new.join("general", None).await.expect("joins");
    room.sender().send("back").await.expect("acked");
    assert_eq!(next_message(&mut room).await.0.body, "back");
    assert_eq!(new.who("general").await.expect("who"), ["ada"]);
    node.stop().await;
}

#[tokio::test]
async fn a_shutdown_acknowledges_every_message_it_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start_in(dir.path(), |c| c.messages_per_second = 0).await;
    let ada = node.connect("ada").await;
    let sender = ada.join("general", Some(u64::MAX)).await.expect("joins").sender();
    let mut acks = Vec::new();
    for i in 0..2000 {
        acks.push(tokio::spawn(sender.send_unchecked(format!("m{i}")).await.expect("written")));
    }
    let mut acked = std::collections::BTreeSet::new();
    acked.insert(acks.remove(0).await.expect("task").expect("the first is acknowledged"));
    node.stop().await; // While most of the others are in flight.
    for ack in acks {
        if let Ok(seq) = ack.await.expect("task") {
            acked.insert(seq);
        }
    }

    let node = TestNode::start_in(dir.path(), |_| {}).await;
    let reader = node.connect("reader").await;
    let mut room = reader.join("general", Some(0)).await.expect("joins");
    let stored: std::collections::BTreeSet<u64> = {
        let n = room.history_until() as usize;
        take_messages(&mut room, n).await.into_iter().map(|m| m.0).collect()
    };
    assert!(acked.len() < 2000, "the stop came too late to test anything");
    assert_eq!(stored, acked, "every stored message was acknowledged, and only those");
    node.stop().await;
}
