//! History in pages over real connections: a fresh join gets the newest page and the end
//! of history, requests page back, forward and around, a limit is capped, and a resume that
//! missed more than a page still gets everything it missed, once, in order, the client
//! keeping below the node's request budget meanwhile.

use chat_client::{Anchor, Client, PageEnds, RoomEvent};
use chat_tests::{PATIENCE, TestNode, next_message};

const MESSAGES: u64 = 10_000;

/// A node whose room general holds `MESSAGES` messages "m1", "m2", ...
async fn node_with_a_long_history() -> (TestNode, Client) {
    let node = TestNode::start(|config| {
        config.messages_per_second = 0;
        config.history_cap = MESSAGES;
        // Tight enough that paging through the room without pacing would be refused: the
        // client library keeps below it by itself.
        config.requests_per_second = 10;
        config.request_burst = 5;
    })
    .await;
    let ada = node.connect("ada").await;
    let sender = ada.join("general", Some(u64::MAX)).await.expect("joins").sender();
    let mut acks = Vec::new();
    for i in 1..=MESSAGES {
        acks.push(sender.post(format!("m{i}")).await.expect("queued"));
    }
    for (i, ack) in acks.into_iter().enumerate() {
        assert_eq!(ack.acked().await.expect("stored"), i as u64 + 1);
    }
    (node, ada)
}

fn seqs(messages: &[chat_client::ChatMessage]) -> Vec<u64> {
    messages.iter().map(|m| m.seq).collect()
}

#[tokio::test]
async fn a_fresh_join_gets_the_newest_page_then_the_end_of_history_and_pages_back_to_the_start() {
    let (node, _ada) = node_with_a_long_history().await;
    let bob = node.connect("bob").await;
    let mut room = bob.join("general", None).await.expect("joins");
    let mut history = Vec::new();
    let ends = loop {
        match tokio::time::timeout(PATIENCE, room.next()).await.expect("in time") {
            Some(RoomEvent::Message { message, history: true }) => history.push(message),
            Some(RoomEvent::HistoryEnd(ends)) => break ends,
            other => panic!("expected history then its end, got {other:?}"),
        }
    };
    let newest: Vec<u64> = (MESSAGES - 49..=MESSAGES).collect();
    assert_eq!(seqs(&history), newest, "exactly the newest page of 50");
    assert_eq!(ends, PageEnds { more_before: true, more_after: false, first_seq: 1 });

    // Back to the first message, a page at a time; the limit asked for is capped at 500.
    let sender = room.sender();
    let mut seen = seqs(&history);
    let mut oldest = seen[0];
    loop {
        let page = sender.history(Anchor::Before(oldest), 100_000).await.expect("a page");
        assert!(page.messages.len() <= 500, "capped: {}", page.messages.len());
        assert_eq!(page.messages.last().map(|m| m.seq), Some(oldest - 1), "no gap, no overlap");
        seen.splice(0..0, seqs(&page.messages));
        oldest = seen[0];
        if !page.ends.more_before {
            break;
        }
    }
    assert_eq!(seen, (1..=MESSAGES).collect::<Vec<_>>());
    assert_eq!(history[0].body, format!("m{}", MESSAGES - 49));

    // Forward and around a seq; live messages still come after all this.
    let after = sender.history(Anchor::After(5_000), 10).await.expect("a page");
    assert_eq!(seqs(&after.messages), (5_001..=5_010).collect::<Vec<_>>());
    assert!(after.ends.more_before && after.ends.more_after);
    let around = sender.history(Anchor::Around(5_000), 10).await.expect("a page");
    assert_eq!(seqs(&around.messages), (4_995..=5_004).collect::<Vec<_>>());
    let latest = sender.history(Anchor::Latest, 3).await.expect("a page");
    assert_eq!(seqs(&latest.messages), [MESSAGES - 2, MESSAGES - 1, MESSAGES]);
    assert_eq!(sender.send("live").await.expect("acked"), MESSAGES + 1);
    let (live, was_history) = next_message(&mut room).await;
    assert_eq!((live.seq, live.body.as_str(), was_history), (MESSAGES + 1, "live", false));
    node.stop().await;
}

#[tokio::test]
async fn a_resume_that_missed_more_than_a_page_gets_all_of_it_once_in_order() {
    let (node, _ada) = node_with_a_long_history().await;
    let bob = node.connect("bob").await;
    let mut room = bob.join("general", Some(1_000)).await.expect("rejoins");
    // A message sent while bob catches up arrives after what he missed.
    let sender = room.sender();
    let live = tokio::spawn(async move { sender.send("while catching up").await });
    let mut got = Vec::new();
    let mut ended = false;
    while got.last().is_none_or(|&(seq, _)| seq < MESSAGES + 1) {
        match tokio::time::timeout(PATIENCE, room.next()).await.expect("in time") {
            Some(RoomEvent::Message { message, history }) => {
                assert_eq!(history, message.seq <= MESSAGES, "{}", message.seq);
                assert_eq!(ended, !history, "the end of history comes between the two");
                got.push((message.seq, message.body));
            }
            Some(RoomEvent::HistoryEnd(ends)) => {
                assert!(!ends.more_after, "nothing missed is left out");
                ended = true;
            }
            other => panic!("expected messages, got {other:?}"),
        }
    }
    assert_eq!(live.await.expect("task").expect("acked"), MESSAGES + 1);
    let expected: Vec<(u64, String)> = (1_001..=MESSAGES)
        .map(|seq| (seq, format!("m{seq}")))
        .chain([(MESSAGES + 1, "while catching up".to_owned())])
        .collect();
    assert_eq!(got, expected);
    node.stop().await;
}
